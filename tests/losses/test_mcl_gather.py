"""``MCLConfig(gather=True)``: MCL across ranks (mclcore/losses/mcl.py, the infonce op's rectangular mode).

Two gloo processes on the CPU (torch.multiprocessing.spawn, a FileStore in tmp_path: no port to race for), float64.
Each rank holds half of a batch, computes the MCL loss with the keys of both ranks, and DistributedDataParallel
averages the parameter gradients; the mean of the two losses and every averaged gradient must equal one process's
loss and gradients on the concatenated batch (gather=False), to 1e-10. Both workers write what they saw to tmp_path
and the test compares in the parent process. One spawn runs every two-process case (starting the workers is most
of the time).
"""
from __future__ import annotations

import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import mclcore
from mclcore.losses.mcl import GATHER_NEEDS_GROUP, MCLConfig, StackedMCL

F64 = torch.float64
B_LOCAL, DZ, DU, DX, N_U = 6, 4, 3, 7, 4
CASES = {  # name: MCLConfig fields (explicit groups: passed to the call)
    "diagonal": dict(),
    "multi-positive": dict(multi_positive=True),
    "explicit-groups": dict(multi_positive=True),
    "total-contrast": dict(contrast="total", clip=None),
}


class Step(nn.Module):
    """The generator and the MCL regulariser in one module (what DDP wraps): forward = the MCL loss."""

    def __init__(self, cfg: MCLConfig, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.G = nn.Sequential(nn.Linear(DZ + DU, 16), nn.Tanh(), nn.Linear(16, DX))
        self.mcl = mclcore.MCL.from_config(cfg, z_dim=DZ, x_dim=DX, u_dim=DU)
        self.to(F64)

    def forward(self, z, u, groups=None):
        return self.mcl(lambda zz, uu: self.G(torch.cat([zz, uu], 1)), z, u, groups=groups)


def batch(world: int, seed: int = 1):
    """The whole batch (world * B_LOCAL rows): z, u from a small alphabet (repeated conditions), explicit ids."""
    gen = torch.Generator().manual_seed(seed)
    n = world * B_LOCAL
    z = torch.randn(n, DZ, generator=gen, dtype=F64)
    ids = torch.randint(0, N_U, (n,), generator=gen)
    u = torch.randn(N_U, DU, generator=gen, dtype=F64)[ids]
    return z, u, ids * 10 + 3  # explicit ids: any integers meaning the same on every rank


def single_process(name: str, world: int):
    """Loss and gradients of one process on the concatenated batch (gather=False)."""
    step = Step(MCLConfig(**CASES[name], critic_hidden=(16, 16), proj_dim=8), seed=0)
    z, u, ids = batch(world)
    loss = step(z, u, ids if name == "explicit-groups" else None)
    grads = torch.autograd.grad(loss, list(step.parameters()), allow_unused=True)
    return loss.detach(), [None if g is None else g.detach() for g in grads]


def _relative_norms(step: Step, w, z, u) -> dict:
    """``MCLWeight.update`` on the generator for the MCL loss and a host loss (mean squared output) of (z, u)."""
    mcl = step(z, u)
    host = step.G(torch.cat([z, u], 1)).pow(2).mean()
    n = w.update(mcl, host, list(step.G.parameters()))
    return {"grad_mcl": n["grad_mcl"], "grad_host": n["grad_host"], "weight": w.weight()}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    try:
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
        torch.set_num_threads(1)
        z, u, ids = batch(world)
        rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        results = {}
        for name, fields in CASES.items():
            step = Step(MCLConfig(**fields, critic_hidden=(16, 16), proj_dim=8, gather=True), seed=0)
            # find_unused_parameters: the critic's last bias never reaches the mechanism gradient (no gradient).
            ddp = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
            loss = ddp(z[rows], u[rows], ids[rows] if name == "explicit-groups" else None)
            loss.backward()
            results[name] = (loss.detach(), [None if p.grad is None else p.grad.clone() for p in step.parameters()])
        # The relative weight's gradient norms under a process group: measured on the rank's half, averaged over
        # the ranks (what DDP applies), the same on every rank.
        from mclcore.losses.diagnostics import MCLWeight

        step = Step(MCLConfig(critic_hidden=(16, 16), proj_dim=8), seed=0)
        w = MCLWeight(0.5, "relative", every=10)
        results["relative"] = _relative_norms(step, w, z[rows], u[rows])
        # Unequal local batch sizes: every rank raises, naming each rank's size.
        step = Step(MCLConfig(critic_hidden=(16, 16), proj_dim=8, gather=True), seed=0)
        n = B_LOCAL + 2 * rank
        try:
            step(z[:n], u[:n])
            results["unequal"] = "no error"
        except ValueError as err:
            results["unequal"] = str(err)
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    except Exception:  # noqa: BLE001 - reported to the parent through the file it reads
        with open(os.path.join(out, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(world: int, tmp, limit: float = 300.0, grace: float = 30.0) -> list[dict]:
    """Run the workers; their results are what they saved. A worker still alive ``grace`` seconds after every rank
    saved its results is terminated: in one full-suite run (2026-12-06) a worker hung for 7 minutes in its exit,
    after both ranks had written their files (not reproduced alone); the results were complete, only the exit hung.
    Nothing saved after ``limit`` seconds is a failure."""
    import time

    out = str(tmp)
    ctx = mp.spawn(_worker, args=(world, os.path.join(out, "store"), out), nprocs=world, join=False)
    start, saved_at = time.monotonic(), None
    files = [os.path.join(out, f"rank{r}.pt") for r in range(world)]
    while not ctx.join(timeout=1):
        now = time.monotonic()
        if saved_at is None and all(os.path.exists(f) for f in files):
            saved_at = now
        if (saved_at is not None and now - saved_at > grace) or now - start > limit:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.terminate()
            break
    errs = [f for f in os.listdir(out) if f.endswith(".err")]
    assert not errs, open(os.path.join(out, errs[0])).read()
    assert all(os.path.exists(f) for f in files), f"workers saved no results within {limit:.0f} s"
    return [torch.load(f) for f in files]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _spawn(2, tmp_path_factory.mktemp("gather2"))


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process_on_the_whole_batch(two_ranks, name):
    want_loss, want_grads = single_process(name, world=2)
    losses = [r[name][0] for r in two_ranks]
    assert abs(sum(losses).item() / 2 - want_loss.item()) <= 1e-10 * max(1.0, abs(want_loss.item()))
    # Each rank's own loss is its half of the batch: the two differ (a test that cannot confuse them with the mean).
    assert abs(losses[0].item() - losses[1].item()) > 1e-6
    for rank in range(2):
        got = two_ranks[rank][name][1]
        assert len(got) == len(want_grads)
        for i, (a, b) in enumerate(zip(got, want_grads)):
            if b is None:  # the critic's last bias: no gradient in one process, none (or zero) across ranks
                assert a is None or not bool(a.any()), i
                continue
            assert a is not None, i
            err = (a - b).abs().max().item()
            assert err <= 1e-10 * max(1.0, b.abs().max().item()), (name, rank, i, err)


def test_unequal_local_batches_raise_on_every_rank(two_ranks):
    for rank in range(2):
        msg = two_ranks[rank]["unequal"]
        assert "mcl.gather: every rank needs the same local batch size" in msg, msg
        assert f"rank 0: {B_LOCAL}" in msg and f"rank 1: {B_LOCAL + 2}" in msg, msg


def test_world_of_one_equals_no_gather(tmp_path):
    # A process group of one, in this process (torn down again, so the other tests see none).
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        z, u, _ = batch(1)
        res = {}
        for gather in (False, True):
            step = Step(MCLConfig(multi_positive=True, critic_hidden=(16, 16), proj_dim=8, gather=gather), seed=0)
            loss = step(z, u)
            grads = torch.autograd.grad(loss, list(step.parameters()), allow_unused=True)
            res[gather] = [loss.detach()] + [g for g in grads if g is not None]
    finally:
        dist.destroy_process_group()
    assert len(res[True]) == len(res[False]) > 1
    for a, b in zip(res[True], res[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_size_check_reads_the_host_only_outside_graph_capture():
    """Eager: a ValueError naming each rank's size. During CUDA-graph capture no host read is allowed: the check is
    torch._assert_async on the gathered sizes (on a CPU tensor it raises at once, which this test relies on)."""
    from mclcore.losses.mcl import _check_sizes

    ok, bad = [torch.tensor([4]), torch.tensor([4])], [torch.tensor([4]), torch.tensor([3])]
    _check_sizes(ok, 4, capturing=False)
    _check_sizes(ok, 4, capturing=True)
    with pytest.raises(ValueError, match="rank 0: 4, rank 1: 3"):
        _check_sizes(bad, 4, capturing=False)
    with pytest.raises(RuntimeError):
        _check_sizes(bad, 4, capturing=True)


def test_gather_without_a_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    step = Step(MCLConfig(critic_hidden=(16, 16), proj_dim=8, gather=True), seed=0)
    z, u, _ = batch(1)
    with pytest.raises(ValueError, match="mcl.gather: needs an initialised torch.distributed process group") as err:
        step(z, u)
    assert str(err.value) == GATHER_NEEDS_GROUP


def test_config_field_is_validated_and_reaches_the_module():
    with pytest.raises(ValueError, match="mcl.gather: expected true or false"):
        MCLConfig(gather=1).validate()
    mcl = mclcore.MCL.from_config(MCLConfig(gather=True), z_dim=DZ, x_dim=DX, u_dim=DU)
    assert mcl.gather is True and "gather=True" in repr(mcl)
    assert mclcore.MCL.from_config(MCLConfig(), z_dim=DZ, x_dim=DX, u_dim=DU).gather is False


def test_stacked_mcl_refuses_gather():
    members = [mclcore.MCL(DZ, DX, DU, critic_hidden=(8,), proj_dim=4, gather=True) for _ in range(2)]
    with pytest.raises(ValueError, match="mcl.gather: StackedMCL"):
        StackedMCL.from_members(members)
    assert StackedMCL.from_members([mclcore.MCL(DZ, DX, DU, critic_hidden=(8,), proj_dim=4)]).members == 1


def test_relative_weight_uses_the_rank_averaged_gradients_on_every_rank(two_ranks):
    """Under a process group the relative weight's norms are those of the gradients averaged over the ranks (what
    DDP applies): equal on both ranks, and equal to one process's average of the two halves' gradients (1e-12); a
    rank's own half alone gives other norms (so the test can tell)."""
    from mclcore.losses.diagnostics import MCLWeight

    z, u, _ = batch(2)
    grads = {"mcl": [], "host": []}
    for r in range(2):
        step = Step(MCLConfig(critic_hidden=(16, 16), proj_dim=8), seed=0)
        rows = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
        params = list(step.G.parameters())
        grads["mcl"].append(torch.autograd.grad(step(z[rows], u[rows]), params, retain_graph=True))
        host = step.G(torch.cat([z[rows], u[rows]], 1)).pow(2).mean()
        grads["host"].append(torch.autograd.grad(host, params))

    def norm(k):
        return torch.stack([((a + b) / 2).pow(2).sum() for a, b in zip(*grads[k])]).sum().sqrt()
    want_mcl, want_host = norm("mcl"), norm("host")
    for res in (two_ranks[0]["relative"], two_ranks[1]["relative"]):
        assert torch.allclose(res["grad_mcl"], want_mcl, rtol=1e-12, atol=0)
        assert torch.allclose(res["grad_host"], want_host, rtol=1e-12, atol=0)
        assert torch.allclose(torch.as_tensor(res["weight"]), 0.5 * want_host / want_mcl, rtol=1e-12, atol=0)
    alone = _relative_norms(Step(MCLConfig(critic_hidden=(16, 16), proj_dim=8), seed=0), MCLWeight(0.5, "relative"),
                            z[:B_LOCAL], u[:B_LOCAL])
    assert not torch.allclose(alone["grad_mcl"], want_mcl, rtol=1e-6, atol=0)
