"""The conditional generators: shapes, seed control, the App. D.3 construction (conditioning, FiLM range)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mclcore.models.generators import (
    FiLMGenerator,
    GMDGenerator,
    MLPGenerator,
    SmoothLeakyReLU,
    _cond,
    condition_threshold,
    make_activation,
)


def test_smooth_leaky_relu_formula_and_limits():
    act = SmoothLeakyReLU(0.2)
    x = torch.linspace(-30, 30, 61, dtype=torch.float64, requires_grad=True)
    y = act(x)
    torch.testing.assert_close(y, 0.2 * x + 0.8 * F.softplus(x))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert abs(float(g[0]) - 0.2) < 1e-9 and abs(float(g[-1]) - 1.0) < 1e-9  # slopes of the leaky ReLU it smooths
    with pytest.raises(ValueError, match="slope"):
        SmoothLeakyReLU(1.5)


@pytest.mark.parametrize("name,cls", [("tanh", nn.Tanh), ("gelu", nn.GELU), ("smooth_leaky", SmoothLeakyReLU),
                                      ("leaky_relu", nn.LeakyReLU), ("softplus", nn.Softplus)])
def test_make_activation(name, cls):
    assert isinstance(make_activation(name), cls)
    with pytest.raises(ValueError, match="activation: expected one of"):
        make_activation("swish")


def test_mlp_generator_shapes_and_seed():
    G = MLPGenerator(3, 7, du=2, widths=(8, 5), activation="silu", seed=4)
    z, u = torch.randn(6, 3), torch.randn(6, 2)
    assert G(z, u).shape == (6, 7)
    assert [m.out_features for m in G.net if isinstance(m, nn.Linear)] == [8, 5, 7]
    assert G.net[0].in_features == 5  # z and u concatenated into the first layer
    same, other = MLPGenerator(3, 7, du=2, widths=(8, 5), activation="silu", seed=4), MLPGenerator(3, 7, du=2, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), same.state_dict().values()))
    assert not torch.equal(G.net[0].weight[:5], other.net[0].weight[:5])
    torch.manual_seed(0)
    a = MLPGenerator(3, 7, seed=1).net[0].weight.clone()
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, MLPGenerator(3, 7, seed=1).net[0].weight)
    with pytest.raises(ValueError, match="u: this MLPGenerator is conditional"):
        G(z)
    assert MLPGenerator(3, 4, seed=0)(z).shape == (6, 4)


def test_condition_threshold_is_a_percentile_of_ivae_draws():
    t25 = condition_threshold(16, 16, 400)
    t75 = condition_threshold(16, 16, 400, 75.0)
    assert 1.0 < t25 < t75
    assert condition_threshold(16, 16, 400) == t25  # cached, deterministic


@pytest.mark.parametrize("dz,activation", [(3, "leaky_relu"), (5, "smooth_leaky")])
def test_gmd_generator_matches_appendix_d3(dz, activation):
    G = GMDGenerator(dz, n_alphabet=6, activation=activation, seed=3, cond_draws=300)
    w = max(64, 4 * dz)
    lin = [m for m in G.h if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in lin] == [(w, dz), (w, w), (w, w)] and all(m.bias is None for m in lin)
    acts = [m for m in G.h if not isinstance(m, nn.Linear)]
    assert len(acts) == 2 and isinstance(acts[0], SmoothLeakyReLU if activation == "smooth_leaky" else nn.LeakyReLU)
    slopes = [a.negative_slope if activation == "leaky_relu" else a.slope for a in acts]
    assert slopes == [0.2, 0.2]
    for m in lin:  # iVAE mixing matrices: unit-norm rows, condition number below the 25th percentile of draws
        W = m.weight.detach().double()
        torch.testing.assert_close(W.norm(dim=1), torch.ones(W.shape[0], dtype=torch.float64))
        assert float(_cond(W)) < condition_threshold(W.shape[0], W.shape[1], 300)
    assert torch.linalg.matrix_rank(lin[0].weight.detach().double()) == dz  # full column rank: h injective
    assert G.alphabet.shape == (6, 16) and G.dx == w
    scale, shift = G.film(G.alphabet)
    assert scale.shape == shift.shape == (6, dz)
    assert float(scale.min()) >= math.exp(-1) and float(scale.max()) <= math.e  # m(u) kept away from 0
    assert float(scale.log().std(dim=0).mean()) > 0.2  # m(u^(n)) varies meaningfully across n
    z = torch.randn(4, dz)
    u = G.alphabet[:4]
    torch.testing.assert_close(G(z, u), G.h(z * scale[:4] + shift[:4]))


def test_gmd_generator_seed_control_and_sampling():
    a, b = GMDGenerator(4, n_alphabet=5, seed=7, cond_draws=300), GMDGenerator(4, n_alphabet=5, seed=7, cond_draws=300)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = GMDGenerator(4, n_alphabet=5, seed=8, cond_draws=300)
    assert not torch.equal(a.alphabet, c.alphabet)
    d = a.sample(4000, seed=1)
    assert d["z"].shape == (4000, 4) and d["x"].shape == (4000, 64) and d["u"].shape == (4000, 16)
    assert set(d["u_index"].tolist()) == set(range(5))
    torch.testing.assert_close(d["u"], a.alphabet[d["u_index"]])
    assert abs(float((d["x"] - d["x_clean"]).std()) - 0.1) < 0.005  # noise variance 0.01
    assert torch.equal(a.sample(10, seed=2)["x"], a.sample(10, seed=2)["x"])


def test_film_generator_protocol_and_errors():
    h = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 4))
    G = FiLMGenerator(h, nn.Linear(3, 2), nn.Linear(3, 2), scale_bound=0.5)
    s, _ = G.film(torch.randn(10, 3))
    assert float(s.max()) <= math.exp(0.5) and float(s.min()) >= math.exp(-0.5)
    with pytest.raises(TypeError, match="h: expected an nn.Sequential"):
        FiLMGenerator(nn.Linear(2, 2), nn.Linear(3, 2), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="activation: expected 'leaky_relu'"):
        GMDGenerator(3, activation="tanh")
    with pytest.raises(ValueError, match="width: expected >= dz"):
        GMDGenerator(8, width=4)


def test_building_generators_leaves_the_global_rng_alone():
    from mclcore.models.generators import GMDGenerator, MLPGenerator

    state = torch.random.get_rng_state()
    GMDGenerator(dz=3, n_alphabet=4, seed=1)
    MLPGenerator(dz=3, dx=5, du=2, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
