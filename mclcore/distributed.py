"""More than one process: PyTorch's own ``torch.distributed``, started by ``torchrun``, never a home-made launcher.

Every trainer asks :func:`context` who it is. Without torchrun (no ``WORLD_SIZE`` in the environment) that is rank 0
of a world of 1 and nothing is initialised, so a single process behaves exactly as it did before this module
existed. Under torchrun, :func:`init` starts the default process group from the environment torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when the run's device is CUDA,
gloo otherwise.

Conventions every study follows (the why is in the README's "More than one GPU"):

* rank 0 alone writes logs, checkpoints, metrics and figures (:attr:`Context.is_main`);
* :func:`check_same` compares a value that must agree on every rank (the config) by an all-gather of its hash and
  raises on *every* rank, naming the ranks that differ, so no rank is left waiting in a collective.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Context", "launched", "env_world", "init", "context", "check_same", "barrier", "destroy"]


@dataclass(frozen=True)
class Context:
    """Who this process is: ``rank`` of ``world_size`` (``local_rank`` on its node); ``is_main`` = rank 0."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer in the environment (set by torchrun), got {raw!r}") from None


def launched() -> bool:
    """True when this process was started by torchrun (or anything that sets ``WORLD_SIZE``)."""
    return os.environ.get("WORLD_SIZE") not in (None, "")


def env_world() -> Context:
    """The rank, world size and local rank torchrun put in the environment; (0, 1, 0) without torchrun."""
    ctx = Context(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size:
        raise ValueError(f"RANK/WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got RANK={ctx.rank}, "
                         f"WORLD_SIZE={ctx.world_size}")
    return ctx


def init(device: str | torch.device = "cpu", backend: str | None = None) -> Context:
    """Start the default process group if torchrun launched this process and none exists yet; returns
    :func:`context`. ``backend``: None = "nccl" for a CUDA ``device``, "gloo" otherwise. A CUDA device is
    ``cuda:LOCAL_RANK`` (each rank its own GPU): the caller passes that device to its model."""
    ctx = env_world()
    if ctx.world_size == 1 or (dist.is_available() and dist.is_initialized()):
        return context()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build; run without torchrun")
    dev = torch.device(device)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=backend)
    return context()


def context() -> Context:
    """This process's :class:`Context` from the initialised process group, else from the environment (torchrun's
    variables before :func:`init`; rank 0 of 1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return env_world()


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same(value, what: str) -> None:
    """Raise ValueError on every rank unless ``value`` (JSON-serialisable; other objects by ``repr``) is the same on
    all ranks; the message names ``what`` and the ranks whose value differs from rank 0's. No-op in one process."""
    ctx = context()
    if not ctx.distributed:
        return
    if not dist.is_initialized():
        raise RuntimeError(f"{what}: WORLD_SIZE={ctx.world_size} but no process group; call mclcore.distributed.init")
    mine = _digest(value)
    every = [None] * ctx.world_size
    dist.all_gather_object(every, mine)
    bad = [r for r, h in enumerate(every) if h != every[0]]
    if bad:
        raise ValueError(f"{what}: differs between ranks (rank 0 vs rank(s) {', '.join(map(str, bad))}); every rank "
                         "must be started with the same command line and config")


def barrier() -> None:
    """``dist.barrier()`` when distributed; nothing in one process."""
    if context().distributed:
        dist.barrier()


def destroy() -> None:
    """Tear the process group down (end of a torchrun run); nothing when none was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
