"""MCL diagnostics and scale-free weighting (mclcore.losses.diagnostics) on cases whose answer is known."""
import math

import pytest
import torch
import torch.nn as nn

import mclcore
from mclcore.losses.diagnostics import PROBE_KEYS, MCLWeight, gradient_norms, probe, readout

F64 = torch.float64


def _data(B=96, n_u=4, dz=3, du=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    alphabet = torch.randn(n_u, du, generator=g, dtype=F64)
    ids = torch.arange(B) % n_u
    return torch.randn(B, dz, generator=g, dtype=F64), alphabet[ids], ids


def _train_heads(mcl, G, z, u, ids, steps=150):
    """Fit the projection heads only (create_graph=False: the generator and critic stay as they are)."""
    opt = torch.optim.Adam([*mcl.Pi_g.parameters(), *mcl.Pi_u.parameters()], lr=1e-2)
    for _ in range(steps):
        loss = mcl(G, z, u, groups=ids)
        opt.zero_grad()
        loss.backward()
        opt.step()


class ShortcutCritic(nn.Module):
    """c(x, z, u) = z . (A u): its z-gradient is A u, a function of u alone; it ignores x, so the generator term
    J^T grad_x c is zero. InfoNCE is solved entirely through the critic: a known shortcut."""

    def __init__(self, dz, du):
        super().__init__()
        self.A = nn.Parameter(torch.randn(dz, du, dtype=F64))

    def forward(self, x, z, u):
        return (z * (u @ self.A.T)).sum(1) + 0 * x.flatten(1).sum(1)


def test_readout_reports_a_known_shortcut():
    torch.manual_seed(0)
    z, u, ids = _data()
    W = torch.randn(3, 8, dtype=F64)
    G = lambda z, u: torch.tanh(z @ W)                                          # noqa: E731 - ignores u
    mcl = mclcore.MCL(3, 8, 4, critic=ShortcutCritic(3, 4), proj_dim=8, create_graph=False,
                      contrast="total").double()                                # Algorithm 1: the shortcut is open
    _train_heads(mcl, G, z, u, ids)
    r = readout(mcl, G, z, u, groups=ids)
    assert r["chance"] == pytest.approx(0.25)
    assert r["acc_direct"] > 0.9 and r["acc"] > 0.9                           # the critic alone solves it
    assert r["acc_generator"] <= 0.3 and r["shortcut_share"] == pytest.approx(1.0)


def test_readout_reports_a_generator_that_carries_the_contrast():
    # the critic sees x only (c(x) = |x|^2-like); u reshapes the generator, so J^T grad_x c carries u
    torch.manual_seed(0)
    z, u, ids = _data()
    W, V = torch.randn(3, 8, dtype=F64), torch.randn(4, 8, dtype=F64)
    G = lambda z, u: torch.tanh(z @ W * (1 + u @ V))                            # noqa: E731
    mcl = mclcore.MCL(3, 8, 4, critic_input="x", critic_hidden=(16, 16), proj_dim=8, create_graph=False).double()
    _train_heads(mcl, G, z, u, ids)
    r = readout(mcl, G, z, u, groups=ids)
    assert math.isnan(r["acc_direct"]) and r["acc_generator"] == r["acc"] > 2 * r["chance"]
    assert r["shortcut_share"] == 0.0


def test_readout_with_z_from_another_row_separates_z_giving_u_away_from_the_generator_using_u():
    """z determined by u (an encoder's z of the sample whose condition is u) lets a u-blind generator's term read u
    when z and u are paired, not when z comes from another row; a generator that uses u reads it either way."""
    torch.manual_seed(0)
    z_free, u, ids = _data()
    W = torch.randn(3, 8, dtype=F64)
    z_of_u = u[:, :3] + 0.05 * z_free                                           # z gives u away
    blind = lambda z, u: torch.tanh(z @ W)                                      # noqa: E731 - ignores u
    mcl = mclcore.MCL(3, 8, 4, critic_input="x", critic_hidden=(16, 16), proj_dim=8, create_graph=False).double()
    _train_heads(mcl, blind, z_of_u, u, ids)
    r = readout(mcl, blind, z_of_u, u, groups=ids)
    assert r["acc_generator"] > 2 * r["chance"] and r["acc_generator_independent"] < r["chance"] + 0.1
    V = torch.randn(4, 8, dtype=F64)
    uses_u = lambda z, u: torch.tanh(z @ W * (1 + u @ V))                       # noqa: E731
    mcl = mclcore.MCL(3, 8, 4, critic_input="x", critic_hidden=(16, 16), proj_dim=8, create_graph=False).double()
    _train_heads(mcl, uses_u, z_free, u, ids)
    r = readout(mcl, uses_u, z_free, u, groups=ids)
    assert r["acc_generator_independent"] > 2 * r["chance"] and r["acc_generator"] > 2 * r["chance"]
    rolled = readout(mcl, uses_u, z_free.roll(1, 0), u, groups=ids)            # the same as rolling by hand
    assert r["acc_generator_independent"] == rolled["acc_generator"]
    one = readout(mcl, uses_u, z_free[:1], u[:1])
    assert math.isnan(one["acc_generator_independent"])


def test_probe_trains_a_fresh_module_then_reads_held_out_batches():
    """diagnostics.probe (the studies' fresh-critic probe): the loss falls, u is read from a generator that uses it
    well above chance on held-out batches, and a NaN generator is refused (ValueError)."""
    torch.manual_seed(0)
    W, V = torch.randn(3, 8, dtype=F64), torch.randn(4, 8, dtype=F64)
    G = lambda z, u: torch.tanh(z @ W * (1 + u @ V))                            # noqa: E731 - uses u
    _, u, _ = _data()
    g = torch.Generator().manual_seed(1)

    def batch():                                   # fresh z each call, the same 4 conditions: chance 1/4
        return G, torch.randn(len(u), 3, generator=g, dtype=F64), u

    mcl = mclcore.MCL(3, 8, 4, critic_input="x", critic_hidden=(16, 16), proj_dim=8).double()
    opt = torch.optim.Adam(mcl.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    r = probe(mcl, opt, sched, batch, batch, 60, 3)
    assert set(PROBE_KEYS) <= set(r) and r["acc_direct"] is None and len(r["per_batch"]["acc_generator"]) == 3
    assert r["chance"] == pytest.approx(0.25) and r["acc_generator"] > 0.5
    assert r["loss_last"] < r["loss_first"] and r["loss_every"] == 6 and len(r["losses"]) == 10

    def bad():
        _, z, u_ = batch()
        return (lambda z, u: G(z, u) * float("nan")), z, u_

    with pytest.raises(ValueError, match="not finite|non-finite"):   # MCL's own check, or the probe's on the loss
        probe(mcl, opt, sched, bad, batch, 2, 2, name="toy")


def test_relative_weight_matches_the_host_gradient_norm():
    torch.manual_seed(0)
    z, u, ids = _data(B=32)
    dec = nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 8)).double()
    G = lambda z, u: dec(torch.cat([z, u], 1))                                  # noqa: E731
    mcl = mclcore.MCL(3, 8, 4, critic_hidden=(16, 16), proj_dim=8).double()
    host = 1e3 * (G(z, u) - 1).pow(2).sum()                                     # a host loss of a large scale
    l_mcl = mcl(G, z, u, groups=ids)
    params = list(dec.parameters())
    for lam in (0.1, 1.0):
        w = MCLWeight(lam, "relative", every=10)
        assert w.due(0) and not MCLWeight(lam, "absolute").due(0)
        w.update(l_mcl, host, params)
        n = gradient_norms(w.weight() * l_mcl, host, params)
        assert float(n["ratio"]) == pytest.approx(lam, rel=1e-9)                # |grad w L_MCL| = lam |grad host|
        assert not w.due(5) and w.due(10)
    once = MCLWeight(1.0, "relative", every=0)
    assert once.due(0)
    once.update(l_mcl, host, params)
    assert not any(once.due(s) for s in (1, 50, 100))                       # every=0: measured once
    assert float(MCLWeight(0.3, "absolute").weight()) == 0.3


def test_stacked_members_get_their_own_norms():
    torch.manual_seed(0)
    p = torch.randn(3, 5, requires_grad=True)
    host = (p * torch.tensor([[1.0], [2.0], [3.0]])).sum()                      # member m's host gradient: m + 1
    mcl_term = (p ** 2).sum()
    n = gradient_norms(mcl_term, host, [p], members=3)
    assert n["grad_host"].tolist() == pytest.approx([math.sqrt(5) * k for k in (1, 2, 3)])
    assert n["grad_mcl"].shape == (3,)


@pytest.mark.parametrize("kw, match", [(dict(lam=-1.0), "lambda"), (dict(lam=float("nan")), "lambda"),
                                       (dict(lam=0.1, weighting="scaled"), "weighting"),
                                       (dict(lam=0.1, every=-1), "every")])
def test_bad_weights_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        MCLWeight(**kw)


def test_relative_weight_needs_a_host_loss_that_trains_the_generator():
    p = torch.randn(4, requires_grad=True)
    q = torch.randn(4, requires_grad=True)
    with pytest.raises(ValueError, match="host_loss: has no gradient on the generator"):
        MCLWeight(1.0, "relative").update((p ** 2).sum(), (q ** 2).sum() + 0 * p.sum(), [p])
    with pytest.raises(ValueError, match="mcl.weighting"):
        mclcore.MCLConfig(weighting="scaled").validate()
    with pytest.raises(ValueError, match="mcl.diagnose_every"):
        mclcore.MCLConfig(diagnose_every=-1).validate()


def test_the_default_contrast_closes_the_shortcut():
    # the same shortcut critic, but the default contrasts the generator term only: nothing left to read u from
    torch.manual_seed(0)
    z, u, ids = _data()
    W = torch.randn(3, 8, dtype=F64)
    G = lambda z, u: torch.tanh(z @ W)                                          # noqa: E731
    mcl = mclcore.MCL(3, 8, 4, critic=ShortcutCritic(3, 4), proj_dim=8, create_graph=False).double()
    assert mcl.contrast == "generator"
    _train_heads(mcl, G, z, u, ids)
    r = readout(mcl, G, z, u, groups=ids)
    assert r["acc"] == r["acc_generator"] <= 0.3                               # not solvable through the critic
