"""LPIPS v0.1 of mclcore.metrics.lpips: the backbones' keys and shapes are torchvision's (a table written from the
published AlexNet / VGG16 layer lists), the linear layers are the reference's ``lin{k}.model.1.weight``, random
weights in those formats load strictly, LPIPS(x, x) = 0, it is symmetric and grows with distortion, the v0.1
scaling constants, and one-line errors for bad files."""
import pytest
import torch

from mclcore.metrics.lpips import LPIPS, SCALE, SHIFT, load_lpips

pytestmark = pytest.mark.usefixtures("one_thread")

# torchvision's features.* (index: (out, in, k)), from torchvision's alexnet / vgg16 layer lists
ALEX = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
_VGG = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256), (14, 256, 256),
        (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
VGG = {i: (o, c, 3) for i, o, c in _VGG}
LIN = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def _backbone_sd(net: str, g: torch.Generator, classifier: bool = True) -> dict:
    sd = {}
    for i, (o, c, k) in (ALEX if net == "alex" else VGG).items():
        sd[f"features.{i}.weight"] = torch.randn(o, c, k, k, generator=g) * (2 / (c * k * k)) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(o, generator=g) * 0.01
    if classifier:                                    # a whole torchvision checkpoint: the head is ignored
        sd["classifier.1.weight"] = torch.zeros(8, 4)
    return sd


def _lin_sd(net: str, g: torch.Generator) -> dict:
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(LIN[net])}


def _files(tmp_path, net, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, w = tmp_path / f"{net}_backbone.pth", tmp_path / f"{net}_lin.pth"
    torch.save(_backbone_sd(net, g), b)
    torch.save(_lin_sd(net, g), w)
    return str(b), str(w)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_keys_and_shapes_are_torchvisions_and_the_references(net):
    m = LPIPS(net)
    g = torch.Generator().manual_seed(0)
    want = {"net." + k: list(v.shape) for k, v in _backbone_sd(net, g, classifier=False).items()}
    want.update({k: list(v.shape) for k, v in _lin_sd(net, g).items()})
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == want
    assert [c.weight.shape[1] for c in m.lins] == list(LIN[net])
    assert torch.allclose(m.shift.flatten(), torch.tensor(SHIFT)) and torch.allclose(m.scale.flatten(),
                                                                                      torch.tensor(SCALE))
    assert SHIFT == (-0.030, -0.088, -0.188) and SCALE == (0.458, 0.448, 0.450)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_random_weights_load_strictly_and_lpips_is_a_distance(tmp_path, net):
    b, w = _files(tmp_path, net)
    m = load_lpips(net, b, w)
    sd = torch.load(b)
    assert torch.equal(m.state_dict()["net.features.0.weight"], sd["features.0.weight"])
    assert torch.equal(m.lin0.model[1].weight, torch.load(w)["lin0.model.1.weight"])
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 64, 64, generator=g)
    y = torch.rand(3, 3, 64, 64, generator=g)
    d_xx, d_xy, d_yx = m(x, x), m(x, y), m(y, x)
    assert d_xx.shape == (3,) and torch.equal(d_xx, torch.zeros(3))
    assert torch.allclose(d_xy, d_yx, rtol=1e-5) and (d_xy > 0).all()
    near = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (m(x, near) < d_xy).all()                                       # a small change is closer
    # the distance is differentiable in its input (the perceptual loss), the weights are frozen
    xr = x.clone().requires_grad_(True)
    m(xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in m.parameters())


def test_lpips_formula_by_hand(tmp_path):
    # one layer's term equals sum_c w_c * mean_hw (a_hat - b_hat)^2, with unit-normalised activations
    b, w = _files(tmp_path, "alex", seed=1)
    m = load_lpips("alex", b, w)
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    want = torch.zeros(2)
    for a, c, lin in zip(m.layers(x), m.layers(y), m.lins):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        c = c / (c.norm(dim=1, keepdim=True) + 1e-10)
        want += ((a - c) ** 2 * lin.weight.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    assert torch.allclose(m(x, y), want, rtol=1e-5)
    # the scaling layer: the backbone sees ((2x - 1) - shift) / scale
    seen = {}
    m.net.features[0].register_forward_hook(lambda mod, a, o: seen.update(inp=a[0]))
    m.layers(x)
    assert torch.allclose(seen["inp"], ((2 * x - 1) - torch.tensor(SHIFT).view(1, 3, 1, 1))
                          / torch.tensor(SCALE).view(1, 3, 1, 1))


def test_bad_files_give_one_line_errors(tmp_path, monkeypatch):
    from mclcore.metrics.lpips import LPIPS_BACKBONE_ENV, LPIPS_WEIGHTS_ENV

    monkeypatch.delenv(LPIPS_BACKBONE_ENV, raising=False)
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    b, w = _files(tmp_path, "alex")
    vb, vw = _files(tmp_path, "vgg")
    for args, what in (((b, None), "eval.lpips_weights"), ((str(tmp_path / "no.pth"), w), "eval.lpips_backbone"),
                       ((vb, w), "eval.lpips_backbone"),            # VGG16 weights for AlexNet
                       ((b, vw), "eval.lpips_weights")):            # VGG linear layers for AlexNet
        with pytest.raises(ValueError) as e:
            load_lpips("alex", *args)
        msg = str(e.value)
        assert what in msg and len(msg.splitlines()) == 1, msg
    with pytest.raises(ValueError, match="net: expected one of"):
        LPIPS("squeeze")
    monkeypatch.setenv(LPIPS_BACKBONE_ENV, b)
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, w)
    assert load_lpips("alex").net_name == "alex"                   # the environment variables as fallback
