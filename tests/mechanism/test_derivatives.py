"""mclcore.mechanism.derivatives: the fast (op) path agrees with the general torch.func path on every supported
generator family, unsupported modules fall back (or fail clearly with path='op'), degeneracy is reported."""
import warnings

import pytest
import torch
import torch.nn as nn

from mclcore.mechanism import DegenerateGeneratorWarning, UnsupportedGeneratorError, derivatives, mlp_spec
from mclcore.models.generators import GMDGenerator, MLPGenerator, SmoothLeakyReLU
from python import mech_derivs as ref

F64 = torch.float64


def rel_err(a, b):
    return float(((a - b).abs().amax(dim=1) / b.abs().amax(dim=1)).max())


def both_paths(G, z, u):
    fast = derivatives(G, z, u, dtype=F64)
    slow = derivatives(G, z, u, dtype=F64, path="torch.func")
    assert fast.path == "op" and slow.path == "torch.func"
    return fast, slow


def test_mlp_generator_fast_path_matches_torch_func():
    G = MLPGenerator(3, 8, du=2, widths=(10, 9), activation="gelu", seed=1)
    g = torch.Generator().manual_seed(0)
    z, u = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    fast, slow = both_paths(G, z, u)
    assert fast.V.shape == (5, 6) and fast.V.dtype == F64 and not fast.degenerate
    assert rel_err(fast.V, slow.V) <= 1e-8
    torch.testing.assert_close(fast.log_volume, slow.log_volume, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.m1, fast.V[:, :3])
    torch.testing.assert_close(fast.m2, fast.V[:, 3:])
    # ... and the python/ reference on the same float64 weights, u as a per-sample first-layer bias
    net = G.double().net
    W0 = net[0].weight
    Vr, _ = ref.mech_derivs(z.double(), [W0[:, :3], net[2].weight, net[4].weight], [net[0].bias, net[2].bias,
                            net[4].bias], in_bias=u.double() @ W0[:, 3:].T, activation="gelu", batched=True)
    assert rel_err(fast.V, Vr) <= 1e-8


def test_sequential_fed_z_and_u_with_mixed_activations():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(5, 12), nn.Softplus(beta=2.0), nn.Linear(12, 12), SmoothLeakyReLU(0.3),
                        nn.Linear(12, 7), nn.Linear(7, 6), nn.Tanh()).double()
    g = torch.Generator().manual_seed(1)
    z, u = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 2, generator=g, dtype=F64)
    fast, slow = both_paths(seq, z, u)
    assert rel_err(fast.V, slow.V) <= 1e-8
    spec = mlp_spec(seq)
    assert spec.activations == ["softplus", "smooth_leaky", "identity", "tanh"] and spec.final_activation
    z1 = torch.randn(4, 5, generator=g, dtype=F64)  # unconditional: the Sequential is fed z alone
    fast, slow = both_paths(seq, z1, None)
    assert rel_err(fast.V, slow.V) <= 1e-8


def test_film_generator_fast_path_matches_torch_func():
    G = GMDGenerator(4, n_alphabet=9, activation="smooth_leaky", seed=2, cond_draws=200)
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    fast, slow = both_paths(G, z, G.alphabet[:6])
    assert rel_err(fast.V, slow.V) <= 1e-8
    torch.testing.assert_close(fast.log_volume, slow.log_volume, rtol=1e-10, atol=1e-10)
    assert G.alphabet.dtype == torch.float32  # the caller's module is not converted in place
    # one condition (du,) broadcast to every sample
    one = derivatives(G, z, G.alphabet[0], dtype=F64)
    torch.testing.assert_close(one.V, derivatives(G, z, G.alphabet[0].expand(6, 16), dtype=F64).V)


def test_float32_compute():
    G = GMDGenerator(3, n_alphabet=4, activation="smooth_leaky", seed=4, cond_draws=200)
    z = torch.randn(8, 3, generator=torch.Generator().manual_seed(5))
    r32, r64 = derivatives(G, z, G.alphabet[:2].repeat(4, 1)), derivatives(G, z, G.alphabet[:2].repeat(4, 1), dtype=F64)
    assert r32.V.dtype == torch.float32 and r32.path == "op"
    assert rel_err(r32.V.double(), r64.V) <= 1e-4


def test_unsupported_module_falls_back_or_fails_clearly():
    seq = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 4)).double()
    z = torch.randn(3, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    res = derivatives(seq, z)
    assert res.path == "torch.func" and res.V.shape == (3, 6) and torch.isfinite(res.V).all()
    with pytest.raises(UnsupportedGeneratorError, match=r"G\[1\]: LayerNorm is not supported"):
        derivatives(seq, z, path="op")
    approx = nn.Sequential(nn.Linear(3, 6), nn.GELU(approximate="tanh"), nn.Linear(6, 4))
    assert derivatives(approx, z).path == "torch.func"

    class Custom(nn.Module):  # any module G(z, u) -> x, with an image-shaped output
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 8)

        def forward(self, z, u):
            return torch.tanh(self.lin(torch.cat([z, u], -1))).reshape(-1, 2, 4)

    u = torch.randn(3, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    res = derivatives(Custom(), z, u, dtype=F64)
    assert res.path == "torch.func" and res.V.shape == (3, 6)
    with pytest.raises(UnsupportedGeneratorError, match="Custom is not an MLPGenerator"):
        derivatives(Custom(), z, u, path="op")
    # a plain callable works too
    res_fn = derivatives(lambda zz, uu: torch.sin(zz).repeat(1, 2) + uu.sum(-1, keepdim=True), z, u)
    assert res_fn.path == "torch.func" and torch.isfinite(res_fn.V).all()


def test_piecewise_linear_generators_are_degenerate_on_both_paths():
    G = GMDGenerator(3, n_alphabet=4, activation="leaky_relu", seed=8, cond_draws=200)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(9))
    u = G.alphabet[torch.arange(5) % 4]
    for path in ("auto", "torch.func"):
        with pytest.warns(DegenerateGeneratorWarning, match="piecewise linear"):
            res = derivatives(G, z, u, path=path)
        assert res.degenerate and "piecewise linear" in res.reason and torch.equal(res.V, torch.zeros_like(res.V))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert derivatives(G, z, u, warn=False).degenerate
        assert not derivatives(MLPGenerator(3, 5, widths=(6,), activation="tanh"), z).degenerate


def test_results_carry_no_autograd_graph():
    G = MLPGenerator(2, 4, du=1, widths=(5,), seed=0)
    assert all(p.requires_grad for p in G.parameters())
    res = derivatives(G, torch.randn(3, 2), torch.randn(3, 1))
    assert not res.V.requires_grad and not res.log_volume.requires_grad


@pytest.mark.parametrize("call,err,match", [
    (lambda G: derivatives(G, torch.randn(3)), ValueError, r"z: expected a 2-D tensor"),
    (lambda G: derivatives(G, torch.randn(3, 2), torch.randn(4, 1)), ValueError, r"u: expected shape \(3, du\)"),
    (lambda G: derivatives(G, torch.randn(3, 2), torch.randn(3, 4)), ValueError,
     r"first Linear layer takes 3 inputs, but it is fed dz \+ du = 2 \+ 4"),
    (lambda G: derivatives(G, torch.randn(3, 2), torch.randn(3, 1), path="fast"), ValueError, r"path: expected"),
    (lambda G: derivatives(G, torch.randn(3, 2), torch.randn(3, 1), dtype=torch.float16), TypeError, r"dtype"),
    (lambda G: derivatives(42, torch.randn(3, 2)), TypeError, r"G: expected an nn.Module or a callable"),
    (lambda G: derivatives(MLPGenerator(4, 3, widths=(5,)), torch.randn(3, 4)), ValueError, r"dx = 3 < dz = 4"),
    (lambda G: derivatives(MLPGenerator(4, 3, widths=(5,)), torch.randn(3, 4), path="torch.func"), ValueError,
     r"dx = 3 < dz = 4"),
    (lambda G: derivatives(GMDGenerator(2, n_alphabet=2, cond_draws=100), torch.randn(3, 2)), ValueError,
     r"FiLM-conditioned"),
])
def test_bad_inputs(call, err, match):
    G = MLPGenerator(2, 4, du=1, widths=(5,), seed=0)
    with pytest.raises(err, match=match):
        call(G)


def test_singular_jacobian_and_non_finite_latents_agree_across_paths():
    # a zero input column makes J rank-deficient at every sample: the op documents V = NaN, L = -inf; the torch.func
    # path used to raise a raw LinAlgError. NaN latents: the op raised, torch.func returned NaN silently.
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6)).double()
    with torch.no_grad():
        G[0].weight[:, 0] = 0
    z = torch.randn(4, 3, dtype=torch.float64)
    for path in ("op", "torch.func"):
        r = derivatives(G, z, path=path, warn=False)
        assert torch.isnan(r.V).all() and torch.isneginf(r.log_volume).all(), path
        with pytest.raises(ValueError, match="z: contains NaN"):
            derivatives(G, z.masked_fill(torch.eye(4, 3, dtype=torch.bool), float("nan")), path=path)
