"""The FID Inception of mclcore.metrics.inception agrees with the published weights file's format (without the
file): its state dict equals the key/shape table written from the published architecture
(tests/metrics/data/fid_inception_keys.json, made by make_fid_inception_keys.py from torchvision's constructor
arguments, not from this module), a random state dict in that format loads strictly (with or without BatchNorm
counters), features are (N, 2048), bad files give one-line errors; and the Frechet distance formula against known
answers."""
import json
import os

import numpy as np
import pytest
import torch

from mclcore.metrics.inception import FID_WEIGHTS_ENV, FIDInceptionV3, load_fid_inception
from mclcore.studies.disentangle.fid import frechet_distance, frechet_distance_from_stats

pytestmark = pytest.mark.usefixtures("one_thread")

TABLE = json.load(open(os.path.join(os.path.dirname(__file__), "data", "fid_inception_keys.json")))


def _random_file_state_dict(with_counters: bool, seed: int = 0) -> dict:
    """A state dict in the published file's format, built from the table alone (not from the module)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in TABLE["params"].items():
        sd[k] = torch.randn(shape, generator=g) * 0.05
    for k, shape in TABLE["buffers"].items():
        sd[k] = torch.rand(shape, generator=g) + 0.5 if k.endswith("running_var") else torch.randn(shape, generator=g)
    if with_counters:
        for k in TABLE["buffers"]:
            if k.endswith("running_mean"):
                sd[k.replace("running_mean", "num_batches_tracked")] = torch.tensor(0)
    return sd


def test_state_dict_matches_the_published_key_and_shape_table():
    net = FIDInceptionV3()
    own = {k: list(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert own == {**TABLE["params"], **TABLE["buffers"]}                      # same keys, same shapes
    assert {k: list(p.shape) for k, p in net.named_parameters()} == TABLE["params"]
    n = sum(p.numel() for p in net.parameters())
    assert n == TABLE["n_parameters"] == 23_850_960
    assert net.fc.weight.numel() + net.fc.bias.numel() == 2_065_392              # 2048 -> 1008 classes
    counters = [k for k in net.state_dict() if k.endswith("num_batches_tracked")]
    assert len(counters) == TABLE["n_batchnorms"] == 94
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("with_counters", [True, False])
def test_a_file_in_the_published_format_loads_strictly_and_gives_2048_features(tmp_path, with_counters):
    sd = _random_file_state_dict(with_counters)
    path = str(tmp_path / "pt_inception.pth")
    torch.save(sd, path)
    net = load_fid_inception(path)
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    f = net(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()   # after ReLU + average pool
    net.train()
    assert not net.training                                                         # never batch statistics


def test_pooling_differences_of_the_fid_blocks():
    # Blocks A, C, E_1 average-pool without counting the zero padding; E_2 (Mixed_7c) max-pools. On a positive
    # constant input, TF's pool leaves the border unchanged while count_include_pad=True would shrink it, and the
    # max pool of a ramp differs from its mean.
    net = FIDInceptionV3()
    from mclcore.metrics import inception as inc

    x = torch.full((1, 4, 5, 5), 2.0)
    assert torch.allclose(inc._avg_pool_tf(x), x)
    ramp = torch.arange(25.0).view(1, 1, 5, 5).repeat(1, 2048, 1, 1)
    e2, e1 = net.Mixed_7c, net.Mixed_7b
    assert e2.pool == "max" and e1.pool == "avg_tf"
    seen = {}
    e2.branch_pool.register_forward_hook(lambda m, a, o: seen.update(inp=a[0]))
    e2(ramp)
    assert torch.equal(seen["inp"][0, 0], torch.nn.functional.max_pool2d(ramp, 3, 1, 1)[0, 0])


def test_missing_or_wrong_files_give_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    cases = []
    with pytest.raises(ValueError) as e:
        load_fid_inception(str(tmp_path / "none.pth"))
    cases.append(e)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError) as e:
        load_fid_inception(str(tmp_path / "junk.pth"))
    cases.append(e)
    sd = _random_file_state_dict(False)
    sd.pop("Mixed_6c.branch7x7_2.conv.weight")
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="1 key\\(s\\) missing") as e:
        load_fid_inception(str(tmp_path / "missing.pth"))
    cases.append(e)
    sd = _random_file_state_dict(False)
    sd["fc.weight"] = torch.zeros(1000, 2048)                                # torchvision's ImageNet head
    torch.save(sd, tmp_path / "imagenet.pth")
    with pytest.raises(ValueError, match="wrong shape, e.g. fc.weight") as e:
        load_fid_inception(str(tmp_path / "imagenet.pth"))
    cases.append(e)
    with pytest.raises(ValueError, match=FID_WEIGHTS_ENV) as e:                # nothing given at all
        load_fid_inception(None)
    cases.append(e)
    for e in cases:
        msg = str(e.value)
        assert "--fid-weights" in msg and len(msg.splitlines()) == 1, msg
    # the environment variable is the fallback path
    torch.save(_random_file_state_dict(True), tmp_path / "env.pth")
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(tmp_path / "env.pth"))
    assert isinstance(load_fid_inception(None), FIDInceptionV3)


def test_frechet_distance_known_answers():
    from scipy import linalg

    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b), eps=0) == pytest.approx(want, rel=1e-10)
    # full covariances against the formula with scipy's sqrtm directly
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = A @ A.T + np.eye(4), B @ B.T + 0.5 * np.eye(4)
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance_from_stats(m1, s1, m2, s2, eps=0) == pytest.approx(ref, rel=1e-9)
    # symmetric, and from samples: N(0, I) vs N(m, 4 I) in 2-D -> |m|^2 + 2 (2 - 1)^2
    assert frechet_distance_from_stats(m2, s2, m1, s1, eps=0) == pytest.approx(ref, rel=1e-9)
    x = rng.normal(size=(20000, 2))
    y = 2 * rng.normal(size=(20000, 2)) + [3.0, 0.0]
    assert frechet_distance(x, y) == pytest.approx(9 + 2, rel=0.03)
    with pytest.raises(ValueError, match="mu1, s1, mu2, s2"):
        frechet_distance_from_stats(m1, s1, m2[:3], s2)
