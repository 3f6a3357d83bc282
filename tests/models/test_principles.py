"""The principle models of the synthetic study (mclcore.models.principles): stacked forward-mode Jacobian against
torch.func.jacfwd, stacked members against one-member stacks, shapes and bad inputs. Tiny sizes: seconds."""
import pytest
import torch

from mclcore.models.principles import (StackedCompVAE, StackedInterVAE, StackedMMDVAE, StackedQLAE,
                                       comp_contrast_of_jacobian, stacked_jacobian)
from mclcore.models.vae import StackedMLP

pytestmark = pytest.mark.usefixtures("one_thread")

DX, DU, DZ = 12, 4, 3


def _mlp(sizes, seeds, dtype=torch.float64):
    mlp = StackedMLP(sizes, [torch.Generator().manual_seed(s) for s in seeds], slope=0.2)
    return mlp.to(dtype)


@pytest.mark.parametrize("n_in", [None, 3])
def test_stacked_jacobian_equals_jacfwd_per_member(n_in):
    torch.manual_seed(0)
    mlp = _mlp([5, 8, 8, 7], [1, 2])
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    y, jac = stacked_jacobian(mlp, x, n_in)
    k = 5 if n_in is None else n_in
    assert y.shape == (2, 6, 7) and jac.shape == (2, 6, k, 7)
    assert torch.allclose(y, mlp(x))
    for m in range(2):
        for b in range(6):
            ref = torch.func.jacfwd(lambda v: mlp.member(m, v[None])[0])(x[m, b])        # (7, 5)
            torch.testing.assert_close(jac[m, b], ref[:, :k].T, rtol=1e-12, atol=1e-12)


def test_comp_contrast_known_answer_and_gradient():
    # disjoint supports: C = 0; J rows (1, 1): sum_{i<j} |J_i||J_j| = 1 per output, 2 outputs -> 2
    disjoint = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])                 # (1, 1, dz=2, dx=2)
    assert comp_contrast_of_jacobian(disjoint).item() == 0.0
    dense = torch.ones(1, 1, 2, 2)
    assert comp_contrast_of_jacobian(dense).item() == 2.0
    three = torch.tensor([[[[1.0], [-2.0], [3.0]]]])                      # 1*2 + 1*3 + 2*3 = 11
    assert comp_contrast_of_jacobian(three).item() == 11.0
    # autograd through the forward-mode Jacobian reaches the weights (float64 finite difference)
    mlp = _mlp([2, 4, 3], [0])
    z = torch.randn(1, 5, 2, dtype=torch.float64)
    c = comp_contrast_of_jacobian(stacked_jacobian(mlp, z)[1]).sum()
    (g,) = torch.autograd.grad(c, mlp.layers[1].weight)
    h = 1e-6
    with torch.no_grad():
        mlp.layers[1].weight[0, 1, 2] += h
        cp = comp_contrast_of_jacobian(stacked_jacobian(mlp, z)[1]).sum()
        mlp.layers[1].weight[0, 1, 2] -= 2 * h
        cm = comp_contrast_of_jacobian(stacked_jacobian(mlp, z)[1]).sum()
    assert g[0, 1, 2].item() == pytest.approx(((cp - cm) / (2 * h)).item(), rel=1e-5)


def _build(name, seeds):
    kw = dict(hidden=16)
    return {"mmdvae": lambda: StackedMMDVAE(DX, DU, DZ, seeds, **kw),
            "qlae": lambda: StackedQLAE(DX, DU, DZ, seeds, **kw),
            "compvae": lambda: StackedCompVAE(DX, DU, DZ, seeds, comp_rows=0, **kw),
            "intervae": lambda: StackedInterVAE(DX, DU, DZ, seeds, **kw)}[name]()


def _extra(model, b, seeds):
    return model.draw(b, [torch.Generator().manual_seed(100 + s) for s in seeds])


@pytest.mark.parametrize("name", ["mmdvae", "qlae", "compvae", "intervae"])
def test_stack_equals_members_one_by_one(name):
    seeds = [3, 4, 3]
    torch.manual_seed(0)
    x, u, eps = torch.randn(3, 10, DX), torch.randn(3, 10, DU), torch.randn(3, 10, DZ)
    x[2], u[2], eps[2] = x[0], u[0], eps[0]                  # members 0 and 2: same seed, same data
    stack = _build(name, seeds)
    extra = _extra(stack, 10, seeds)
    out = stack(x, u, eps) if extra is None else stack(x, u, eps, extra)
    out["loss"].sum().backward()
    grads = {k: p.grad for k, p in stack.named_parameters()}
    for m, s in enumerate(seeds):
        one = _build(name, [s])
        e1 = None if extra is None else extra[m:m + 1]
        o1 = one(x[m:m + 1], u[m:m + 1], eps[m:m + 1]) if e1 is None else one(x[m:m + 1], u[m:m + 1], eps[m:m + 1], e1)
        for k in ("loss", "rec", "kl", "aux"):
            torch.testing.assert_close(out[k][m:m + 1], o1[k], rtol=1e-5, atol=1e-5)
        o1["loss"].sum().backward()
        for k, p in one.named_parameters():
            torch.testing.assert_close(grads[k][m:m + 1], p.grad, rtol=1e-4, atol=1e-5)
    assert out["loss"][0].item() == pytest.approx(out["loss"][2].item(), rel=1e-6)
    assert out["loss"][0].item() != out["loss"][1].item()


def test_qlae_quantises_to_the_codebook_and_passes_gradients_straight_through():
    q = StackedQLAE(DX, DU, DZ, [0], hidden=16, n_values=5)
    zc = torch.tensor([[[-0.9, 0.1, 0.3], [0.26, -0.24, 2.0]]])
    zq = q.quantize(zc)
    torch.testing.assert_close(zq, torch.tensor([[[-0.5, 0.0, 0.25], [0.25, -0.25, 0.5]]]))
    x = torch.randn(1, 7, DX)
    out = q(x, torch.zeros(1, 7, DU))
    out["loss"].sum().backward()
    assert q.encoder.layers[0].weight.grad.abs().sum() > 0 and q.codebook.grad.abs().sum() > 0
    groups = q.param_groups(0.1)
    assert groups[0]["weight_decay"] == 0.1 and any(p is q.codebook for p in groups[1]["params"])


def test_intervention_cuts_the_parents_of_the_target_concept():
    iv = StackedInterVAE(DX, DU, DZ, [0, 1], hidden=16)
    with torch.no_grad():
        iv.A.copy_(torch.randn(2, DZ, DZ))
    eps, u = torch.randn(2, 5, DZ), torch.randn(2, 5, DU)
    s, t = iv.context(u).chunk(2, -1)
    obs = iv.head(eps, u)
    A = iv.A * torch.tril(torch.ones(DZ, DZ), -1)
    c = torch.linalg.solve(torch.eye(DZ) - A, eps.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(obs, c * s.exp() + t)
    cut = iv.head(eps, u, torch.tensor([2, -1]))
    torch.testing.assert_close((cut[0, :, 2] - t[0, :, 2]) / s[0, :, 2].exp(), eps[0, :, 2])   # c_2 = eps_2
    torch.testing.assert_close(cut[1], obs[1])                                # member 1 did not intervene
    torch.testing.assert_close(cut[0, :, :2], obs[0, :, :2])                  # ancestors of concept 2 unchanged
    draws = torch.stack([iv.draw(1, [torch.Generator().manual_seed(i)]) for i in range(400)])
    assert 0.4 < (draws >= 0).float().mean().item() < 0.6 and set(draws[draws >= 0].tolist()) == {0, 1, 2}
    x = iv.decoder_member(1)(eps[1], u[1])
    torch.testing.assert_close(x, iv.decode(eps, u)[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make, match", [
    (lambda: StackedMMDVAE(DX, DU, DZ, [0], kernel="cauchy"), "kernel"),
    (lambda: StackedMMDVAE(DX, DU, DZ, [0], prior="student"), "prior"),
    (lambda: StackedMMDVAE(DX, DU, DZ, [0], mmd_weight=-1.0), "mmd_weight"),
    (lambda: StackedMMDVAE(DX, DU, DZ, [0], kernel="rbf", bandwidths=()), "bandwidths"),
    (lambda: StackedQLAE(DX, DU, DZ, [0], n_values=1), "n_values"),
    (lambda: StackedQLAE(DX, DU, DZ, [0], commit_weight=float("nan")), "commit_weight"),
    (lambda: StackedCompVAE(DX, DU, DZ, [0], comp_rows=-2), "comp_rows"),
    (lambda: StackedCompVAE(DX, DU, DZ, [0], comp_lambda=-0.1), "comp_lambda"),
    (lambda: StackedInterVAE(DX, DU, DZ, [0], inter_prob=1.5), "inter_prob"),
    (lambda: StackedInterVAE(DX, DU, 0, [0]), "dz"),
    (lambda: StackedQLAE(DX, DU, DZ, []), "init_seeds"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()
