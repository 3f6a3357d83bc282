"""The synthetic study under torchrun: which device a rank trains on, its process group, and how the ranks learn of
each other's failures (:func:`mclcore.studies.synthetic.run.run_study` uses them; the split of the units is
:func:`mclcore.studies.synthetic.units.rank_shares`).

The ranks do not train together: each trains its own units alone, so the only traffic between them is a few Python
objects at fixed points (:func:`exchange`). Without torchrun :func:`world` is a world of one and nothing here
starts a process group.
"""
from __future__ import annotations

import contextlib
import datetime
import os

from mclcore import distributed
from mclcore.cli import USER_ERRORS     # what mcl reports as one line and exit code 2: what a peer's error counts as

__all__ = ["RankFailed", "world", "exchange", "same_view", "all_seen"]

# How long a rank waits in a collective of the study's own group: at the end of its share it waits for the others
# to finish theirs, which can take as long as the whole study (a rank with nothing left to train waits for all of
# it). A rank that dies is not waited for this long: torchrun stops the others when one exits. (30 days: checked
# to be kept by gloo, whose timeouts are 64-bit milliseconds.)
WAIT = datetime.timedelta(days=30)


class RankFailed(RuntimeError):
    """Another rank of a torchrun run failed (its error is in the message). ``user_error``: that error was a
    user's mistake or a damaged file (mcl's exit code 2), not a bug."""

    def __init__(self, message: str, user_error: bool):
        super().__init__(message)
        self.user_error = user_error


def _rank_device(device: str, ctx: distributed.Context) -> str:
    """A CUDA device is ``cuda:LOCAL_RANK`` whatever index was asked for (each rank of a node its own GPU, as
    ``mcl train`` under torchrun: :func:`mclcore.distributed.device_for`); the CPU is unchanged."""
    import torch

    if torch.device(device).type != "cuda":
        return device
    if ctx.local_rank >= torch.cuda.device_count():
        raise ValueError(f"--device: rank {ctx.rank} has LOCAL_RANK {ctx.local_rank} but this node has "
                         f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node "
                         f"(torchrun --nproc-per-node)")
    return f"cuda:{ctx.local_rank}"


@contextlib.contextmanager
def world(device: str, mcl_device: str):
    """``(ctx, group, device, mcl_device)`` of this process for the study: without torchrun a world of one
    (group None, the devices as given); under torchrun its rank (the default process group started from
    torchrun's variables if none is, and torn down at the end), a gloo group of its own for :func:`exchange`
    (it carries a few Python objects and may wait for days, :data:`WAIT`: NCCL's watchdog would end the wait),
    and the rank's devices."""
    ctx = distributed.env_world()
    if not ctx.distributed:
        yield ctx, None, device, mcl_device
        return
    import torch.distributed as dist

    device, mcl_device = _rank_device(device, ctx), _rank_device(mcl_device, ctx)
    started = not dist.is_initialized()
    ctx = distributed.init(device)
    try:
        yield ctx, dist.new_group(backend="gloo", timeout=WAIT), device, mcl_device
    finally:
        if started:
            distributed.destroy()


def exchange(ctx: distributed.Context, group, err: BaseException | None, payload=None) -> list:
    """Every rank's ``payload`` (a list by rank), once every rank has learnt whether any rank failed: a rank with
    an error raises it; the others raise :class:`RankFailed` naming the lowest failed rank and its message.
    Collective: every rank calls it at the same point, failed or not, so none is left waiting for a rank that
    stopped. One process: raises ``err`` or returns ``[payload]``."""
    if not ctx.distributed:
        if err is not None:
            raise err
        return [payload]
    import torch.distributed as dist

    mine = (None if err is None else (f"{type(err).__name__}: {err}", isinstance(err, USER_ERRORS)), payload)
    every = [None] * ctx.world_size
    dist.all_gather_object(every, mine, group=group)
    if err is not None:
        raise err
    failed = [(r, e) for r, (e, _) in enumerate(every) if e is not None]
    if failed:
        (rank, (message, user)), more = failed[0], len(failed) - 1
        raise RankFailed(f"rank {rank} failed" + (f" (and {more} other rank(s))" if more else "") + f": {message}",
                         user)
    return [p for _, p in every]


def same_view(seen: list, out: str) -> None:
    """``seen``: every rank's sorted list of the finished units it found in ``out`` (from :func:`exchange`, so
    the same on every rank, and so is the error): ranks that see different ones do not share ``out``, and
    splitting the rest between them would train some units twice and others never."""
    differ = [str(r) for r, s in enumerate(seen) if s != seen[0]]
    if differ:
        raise ValueError(f"--out: rank(s) {', '.join(differ)} see other finished units in "
                         f"{os.path.join(out, 'units')} than rank 0; every rank must see the same --out (on several "
                         f"nodes: a shared file system)")


def all_seen(trained: list, records: list, paths: list) -> None:
    """On rank 0 after every share is done: ``trained`` holds the unit indices each rank trained (from
    :func:`exchange`), ``records[i]`` the record rank 0 read from ``paths[i]`` (None: not found). A unit another
    rank trained whose record rank 0 cannot read means that the ranks do not share ``out``."""
    for rank, share in enumerate(trained):
        for i in share:
            if records[i] is None:
                raise ValueError(f"--out: rank {rank} trained the unit of {paths[i]}, which rank 0 does not see; "
                                 f"every rank must see the same --out (on several nodes: a shared file system)")
