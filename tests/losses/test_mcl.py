"""mcl_loss / MCL against the pure-autograd Algorithm 1 (python/mcl.py)."""
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import mclcore
from mclcore.losses.mcl import ImageCritic, MLPCritic, MLPProj, condition_groups
from python import mcl as ref

F64 = torch.float64


class Gen(nn.Module):
    """Smooth MLP generator (z, u) -> x with z of any shape and x reshaped to x_shape."""

    def __init__(self, z_shape, du, x_shape, width=24, act=nn.Tanh):
        super().__init__()
        self.x_shape = x_shape
        self.net = nn.Sequential(nn.Linear(math.prod(z_shape) + du, width), act(), nn.Linear(width, width), act(),
                                 nn.Linear(width, math.prod(x_shape)))

    def forward(self, z, u):
        return self.net(torch.cat([z.flatten(1), u], 1)).view(-1, *self.x_shape)


def setup(B=9, z_shape=(5,), du=4, x_shape=(12,), n_u=3, seed=0, critic="mlp", dtype=F64, **mcl_kw):
    torch.manual_seed(seed)
    G = Gen(z_shape, du, x_shape)
    mcl = mclcore.MCL(z_shape, x_shape, du, critic=critic, critic_hidden=(32, 32), proj_dim=16, **mcl_kw)
    G, mcl = G.to(dtype), mcl.to(dtype)
    z = torch.randn(B, *z_shape, dtype=dtype)
    u = torch.randn(n_u, du, dtype=dtype)[torch.arange(B) % n_u]
    return G, mcl, z, u


def params(G, mcl):
    return [*G.parameters(), *mcl.parameters()]


def grads(loss, ps):
    return torch.autograd.grad(loss, ps, allow_unused=True, materialize_grads=True)


def compare(G, mcl, z, u, tol=1e-10, **kw):
    loss = mcl(G, z, u, **{k: v for k, v in kw.items() if k in ("u_key", "groups")})
    ref_kw = dict(tau=mcl.tau, clip=mcl.clip, create_graph=mcl.create_graph, critic_input=mcl.critic_input,
                  contrast=mcl.contrast, **kw)
    if mcl.multi_positive and kw.get("groups") is None:
        ref_kw["groups"] = condition_groups(kw.get("u_key", u))
    expected = ref.mcl_loss(G, z, u, critic=mcl.critic, Pi_g=mcl.Pi_g, Pi_u=mcl.Pi_u, **ref_kw)
    assert abs(loss.item() - expected.item()) <= tol * max(1.0, abs(expected.item()))
    ps = params(G, mcl)
    for name_p, a, b in zip([n for n, _ in [*G.named_parameters(), *mcl.named_parameters()]], grads(loss, ps),
                            grads(expected, ps)):
        if a.numel():                                  # a left-out critic input leaves a (hidden, 0) weight
            assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item()), name_p
    return loss


@pytest.mark.parametrize("activation", ["gelu", "silu", "tanh", "softplus", "relu"])
def test_mlp_critic_matches_algorithm1_float64(activation):
    G, mcl, z, u = setup(activation=activation)
    compare(G, mcl, z, u)


def test_gradients_reach_every_parameter_and_the_encoder():
    G, mcl, _, u = setup()
    enc = nn.Linear(3, 5).double()
    z = enc(torch.randn(9, 3, dtype=F64))  # z produced by an "encoder": MCL must train it too
    loss = mcl(G, z, u)
    gs = grads(loss, [*params(G, mcl), *enc.parameters()])
    names = [n for n, _ in G.named_parameters()] + [n for n, _ in mcl.named_parameters()] + ["enc.w", "enc.b"]
    for n, g in zip(names, gs):
        if n.endswith("critic.layers.2.bias"):
            assert g.abs().max() == 0  # the critic's output bias never enters a gradient
        else:
            assert g.abs().max() > 0, n


@pytest.mark.parametrize("clip", [None, 0.05])
def test_clip_and_separate_key_and_groups(clip):
    G, mcl, z, u = setup(clip=clip)
    u_key = torch.randn(9, 7, dtype=F64)
    mcl.Pi_u = MLPProj(7, 16).double()
    compare(G, mcl, z, u, u_key=u_key)
    compare(G, mcl, z, u, u_key=u_key, groups=torch.arange(9) % 3)


def test_multi_positive_from_equal_rows():
    G, mcl, z, u = setup(multi_positive=True)
    compare(G, mcl, z, u)
    # with 3 distinct conditions in 9 rows, groups derive from equal rows of u
    assert condition_groups(u).unique().numel() == 3


def test_any_latent_and_image_shape_with_image_critic():
    G, mcl, z, u = setup(B=4, z_shape=(2, 3, 3), x_shape=(3, 8, 8), critic="image")
    assert isinstance(mcl.critic, ImageCritic)
    compare(G, mcl, z, u)


def test_user_callable_critic():
    lin = nn.Linear(5 + 12 + 4, 1).double()
    G, mcl, z, u = setup(critic=lambda x, z, u: torch.tanh(lin(torch.cat([z, x, u], 1))).squeeze(1) ** 2)
    compare(G, mcl, z, u)


def test_create_graph_false_trains_only_heads():
    G, mcl, z, u = setup(create_graph=False)
    loss = mcl(G, z, u)
    gs = grads(loss, params(G, mcl))
    n_gen = len(list(G.parameters()))
    n_critic = len(list(mcl.critic.parameters()))
    assert all(g.abs().max() == 0 for g in gs[: n_gen + n_critic])
    assert all(g.abs().max() > 0 for g in gs[n_gen + n_critic:] if g.dim() == 2)
    compare(G, mcl, z, u)


def test_float32_close_to_float64():
    G, mcl, z, u = setup()
    l64 = mcl(G, z, u).item()
    G32, mcl32 = G.float(), mcl.float()
    l32 = mcl32(G32, z.float(), u.float())
    assert l32.dtype == torch.float32 and abs(l32.item() - l64) < 1e-4


def test_autocast_loss_is_float32():
    G, mcl, z, u = setup(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mcl(G, z, u)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


@given(seed=st.integers(0, 1000), B=st.integers(2, 12))
def test_properties_nonnegative_and_batch_permutation_invariant(seed, B):
    G, mcl, z, u = setup(B=B, seed=seed)
    loss = mcl(G, z, u)
    assert loss.item() >= -1e-12
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    assert abs(mcl(G, z[perm], u[perm]).item() - loss.item()) < 1e-10


def test_bad_inputs_raise_clear_errors():
    G, mcl, z, u = setup()
    with pytest.raises(ValueError, match="z: expected at least 2 dimensions"):
        mcl(G, torch.randn(5, dtype=F64), u[:5])
    with pytest.raises(ValueError, match="batch of at least 2"):
        mcl(G, z[:1], u[:1])
    with pytest.raises(ValueError, match="u: expected batch size 9"):
        mcl(G, z, u[:4])
    with pytest.raises(ValueError, match="tau"):
        mclcore.mcl_loss(G, z, u, critic=mcl.critic, Pi_g=mcl.Pi_g, Pi_u=mcl.Pi_u, tau=0.0)
    with pytest.raises(ValueError, match="tau"):
        mclcore.mcl_loss(G, z, u, critic=mcl.critic, Pi_g=mcl.Pi_g, Pi_u=mcl.Pi_u, tau=float("nan"))
    with pytest.raises(ValueError, match="z: contains NaN"):
        mcl(G, z.masked_fill(torch.eye(9, 5, dtype=torch.bool), float("nan")), u)
    with pytest.raises(ValueError, match="groups: expected an integer tensor of shape"):
        mcl(G, z, u, groups=torch.arange(4))
    with pytest.raises(ValueError, match="does not depend on z"):
        mclcore.MCL(5, 12, 4).double()(lambda z, u: G(torch.zeros_like(z), u), z, u)
    with pytest.raises(ValueError, match="dG/dz is exactly zero"):
        mclcore.MCL(5, 12, 4).double()(lambda z, u: 0 * G(z, u), z, u)
    with pytest.raises(ValueError, match="critic: expected one score per sample"):
        mclcore.mcl_loss(G, z, u, critic=lambda x, z, u: x, Pi_g=mcl.Pi_g, Pi_u=mcl.Pi_u)
    with pytest.raises(ValueError, match="critic: expected 'mlp'"):
        mclcore.MCL(5, 12, 4, critic="conv")


def test_user_mistakes_get_errors_naming_what_to_change():
    # each of these once gave a raw error, a misleading message or a silently wrong loss
    G, mcl, z, u = setup()
    for bad in (-5.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="clip: expected a finite number >= 0"):
            mclcore.MCL(5, 12, 4, clip=bad)
        with pytest.raises(ValueError, match="clip"):
            mclcore.mcl_loss(G, z, u, critic=mcl.critic, Pi_g=mcl.Pi_g, Pi_u=mcl.Pi_u, clip=bad)
    for bad in (True, False):
        with pytest.raises(TypeError, match="tau"):
            mclcore.MCL(5, 12, 4, tau=bad)
    with torch.no_grad(), pytest.raises(ValueError, match="autograd is disabled"):
        mcl(G, z, u)
    with torch.inference_mode(), pytest.raises(ValueError, match="autograd is disabled"):
        mcl(G, z, u)
    with pytest.raises(ValueError, match="saturated"):             # tanh(1e6 x): dG/dz underflows to 0 everywhere
        mclcore.MCL(5, 12, 4).double()(lambda z, u: torch.tanh(1e6 * (G(z, u) + 1)), z.abs() + 1, u)
    with pytest.raises(ValueError, match=r"u: expected shape \(B, d\)"):
        mcl(G, z, u[:, 0])
    with pytest.raises(ValueError, match="u_key: expected 4 features per sample"):
        mcl(G, z, u, u_key=torch.randn(9, 7, dtype=F64))
    with pytest.raises(ValueError, match="u: expected 4 features per sample"):
        mclcore.MCL(5, 12, 4, critic_hidden=(8, 8)).double()(lambda z, u: G(z, u[:, :4]), z, torch.randn(9, 6, dtype=F64))
    with pytest.raises(ValueError, match="mechanism gradient is not finite"):
        mcl(lambda z, u: G(z, u) * torch.tensor(float("nan"), dtype=F64), z, u)


def test_half_precision_module_runs():
    G, mcl, z, u = setup(dtype=torch.float32)
    loss = mcl.half()(lambda z, u: G(z.float(), u.float()).half(), z.half(), u.half())
    assert torch.isfinite(loss)                                     # the InfoNCE op accumulates in float32
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in mcl.parameters())


@pytest.mark.parametrize("fullgraph, trace, z_grad", [(False, False, False), (False, False, True),
                                                     (False, True, False), (True, True, False), (True, True, True)])
def test_torch_compile_of_a_model_with_mcl_inside_equals_eager(fullgraph, trace, z_grad, monkeypatch):
    # default mode: MCL runs eagerly between compiled graphs unless dynamo may trace torch.autograd.grad;
    # fullgraph=True needs that switch (torch._dynamo.config.trace_autograd_ops), and then traces all of it
    monkeypatch.setattr(torch._dynamo.config, "trace_autograd_ops", trace)
    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.dec = nn.Sequential(nn.Linear(5 + 4, 32), nn.Tanh(), nn.Linear(32, 12))
            self.mcl = mclcore.MCL(5, 12, 4, critic_hidden=(16, 16), proj_dim=8)

        def forward(self, z, u):
            return self.mcl(lambda z, u: self.dec(torch.cat([z, u], 1)), z, u)

    torch.manual_seed(0)
    host = Host()
    z, u = torch.randn(16, 5, requires_grad=z_grad), torch.randn(16, 4)
    host(z, u)                                                      # eager first call: the one-off generator check
    eager = host(z, u)
    eager.backward()
    grads = [p.grad.clone() for p in host.parameters()]
    host.zero_grad()
    torch._dynamo.reset()
    out = torch.compile(host, fullgraph=fullgraph)(z, u)
    out.backward()
    assert torch.allclose(out, eager, atol=1e-5)
    for p, g in zip(host.parameters(), grads):
        assert torch.allclose(p.grad, g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("critic", ["mlp", "image"])
@pytest.mark.parametrize("critic_input", ["xzu", "xz", "x"])
@pytest.mark.parametrize("contrast", ["total", "generator"])
def test_mechanism_gradient_choices_equal_the_pure_autograd_twin(critic, critic_input, contrast):
    # every (what the critic sees) x (which term is contrasted) choice, native op path (mlp) and autograd path
    # (image critic), loss and every parameter gradient in float64 against python/mcl.py
    shapes = dict(B=4, z_shape=(2, 3, 3), x_shape=(3, 8, 8)) if critic == "image" else {}
    G, mcl, z, u = setup(critic=critic, critic_input=critic_input, contrast=contrast, **shapes)
    compare(G, mcl, z, u)
    compare(G, mcl, z.clone().requires_grad_(True), u)                         # gradients into z as well


def test_image_critic_without_z_or_u_builds_silently():
    # critic_input="x" gives the image critic zero-width z and u embeddings: no "zero-element tensor" warning for
    # the user; the embeddings add a zero bias
    import warnings

    from mclcore.losses.mcl import ImageCritic

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        critic = ImageCritic((0,), 0, hidden=8)
    x = torch.randn(2, 3, 8, 8)
    s = critic(x, torch.empty(2, 0), torch.empty(2, 0))
    assert s.shape == (2,) and torch.equal(critic.z_fc.bias, torch.zeros(8))


def test_choices_differ_where_they_should():
    G, mcl, z, u = setup(critic_input="xzu", contrast="total")
    from mclcore.losses.mcl import mechanism_terms

    direct, gen = mechanism_terms(G, z, u, mcl.critic, create_graph=False)
    assert direct is not None and direct.abs().max() > 0 and gen.abs().max() > 0
    total = mclcore.losses.mcl.mechanism_gradient(G, z, u, mcl.critic, create_graph=False, contrast="total")
    only = mclcore.losses.mcl.mechanism_gradient(G, z, u, mcl.critic, create_graph=False)       # the default
    assert torch.allclose(total, direct + gen) and torch.equal(only, gen)
    _, mcl_x, _, _ = setup(critic_input="x")
    assert mcl_x.critic.in_dim == 12                                           # the critic sees x alone
    direct, _ = mechanism_terms(G, z, u, mcl_x.critic, create_graph=False, critic_input="x")
    assert direct is None
    with pytest.raises(ValueError, match="critic_input"):
        mclcore.MCL(5, 12, 4, critic_input="zu")
    with pytest.raises(ValueError, match="contrast"):
        mclcore.MCL(5, 12, 4, contrast="direct")
