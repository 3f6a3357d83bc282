"""More than one process: PyTorch's own ``torch.distributed``, started by ``torchrun``, never a home-made launcher.

Every trainer asks :func:`context` who it is. Without torchrun (no ``WORLD_SIZE`` in the environment) that is rank 0
of a world of 1 and nothing is initialised, so a single process behaves exactly as it did before this module
existed. Under torchrun, :func:`init` starts the default process group from the environment torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when the run's device is CUDA,
gloo otherwise.

Conventions every study follows (the why is in the README's "More than one GPU"):

* rank 0 alone writes logs, checkpoints, metrics and figures (:attr:`Context.is_main`);
* :func:`check_same` compares a value that must agree on every rank (the config) by an all-gather of its hash and
  raises on *every* rank, naming the ranks that differ, so no rank is left waiting in a collective;
* :func:`together` runs a piece that may fail on one rank only (loading data, writing a checkpoint) so that the
  failure is raised on every rank (:class:`PeerError` on the others), ``rank0_first`` to fill a shared cache once;
* the training loop (:mod:`mclcore.train.loop`) runs each step through PyTorch's DistributedDataParallel (the
  loop's docstring says how), averages the gradients of an optimiser a study steps itself after the update
  (FactorVAE's discriminator, outside DDP's forward) with :func:`average_gradients`, checks the global loss with
  :func:`mean`, logs :func:`mean_scalars` and keeps the replicas equal with :func:`broadcast_module`;
* :func:`alone` makes rank 0 act as a world of 1 for a block (evaluation after training: the other ranks have
  exited, so nothing in it may wait for them).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Context", "launched", "env_world", "init", "context", "check_same", "barrier", "destroy", "PeerError",
           "together", "alone", "device_for", "mean", "mean_scalars", "average_gradients", "broadcast_module"]

# Set by alone(): this process acts as rank 0 of a world of 1 (its process group, if any, is left as it is).
_ALONE = False


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
    if _ALONE or ctx.world_size == 1 or (dist.is_available() and dist.is_initialized()):
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
    variables before :func:`init`; rank 0 of 1 without torchrun, or inside :func:`alone`)."""
    if _ALONE:
        return Context(0, 1, _env_int("LOCAL_RANK", 0))
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


# ------------------------------------------------------------------------------------- failures on some ranks only
class PeerError(RuntimeError):
    """Raised on the ranks that did *not* fail when another rank's part of :func:`together` raised; the message names
    that rank and its error. ``user_error``: whether that error was a user's mistake (see :func:`together`), so a
    command can end every rank with the same exit code."""

    def __init__(self, message: str, user_error: bool = False):
        super().__init__(message)
        self.user_error = user_error


# What together() calls a user's mistake on the failing rank (the CLI says these in one line, exit code 2).
USER_ERRORS = (ValueError, OSError, FloatingPointError, EOFError)


def _raise_together(err: Exception | None, what: str, user_errors: tuple) -> None:
    """Every rank learns whether any rank failed (one all-gather); the failing rank re-raises its own error, the
    others raise :class:`PeerError` naming the first failing rank."""
    report = None if err is None else (type(err).__name__, str(err), isinstance(err, user_errors))
    every = [None] * context().world_size
    dist.all_gather_object(every, report)
    if err is not None:
        raise err
    for rank, rep in enumerate(every):
        if rep is not None:
            name, message, user = rep
            raise PeerError(f"{what}: rank {rank} failed ({name}: {message})", user)


def together(fn, what: str, *, rank0_first: bool = False, user_errors: tuple = USER_ERRORS):
    """``fn()`` on every rank, returning its result; an exception on any rank is raised on *every* rank (its own on
    the failing rank, :class:`PeerError` naming it elsewhere), so no rank goes on to wait for it in a collective.
    Also a barrier: no rank returns before every rank has run ``fn``. ``rank0_first``: rank 0 runs ``fn`` before
    the others do (a cache it fills is then read by them, not written by all at once). In one process: ``fn()``."""
    if not context().distributed:
        return fn()
    rounds = (context().is_main, not context().is_main) if rank0_first else (True,)
    result = None
    for mine in rounds:
        err = None
        if mine:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - re-raised below, on this rank as it was
                err = e
        _raise_together(err, what, user_errors)
    return result


@contextlib.contextmanager
def alone():
    """Inside the block this process is rank 0 of a world of 1 (:func:`context`; :func:`check_same`,
    :func:`barrier`, :func:`init` do nothing): for work rank 0 does after the other ranks have left, such as the
    evaluation after training, which must not wait for them."""
    global _ALONE
    before, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = before


# ------------------------------------------------------------------------------------------- the training loop's
def device_for(device: str | torch.device) -> torch.device:
    """The device of this rank: under torchrun a CUDA device is ``cuda:LOCAL_RANK`` whatever index was asked for
    (each rank its own GPU; a saved ``cuda:0`` resumes on every GPU); anything else, and one process, unchanged."""
    dev = torch.device(device)
    ctx = context()
    if ctx.distributed and dev.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return dev


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``t`` (a detached copy; ``t`` itself in one process): the global batch's value of a
    per-rank mean such as the loss."""
    if not context().distributed:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out.div_(context().world_size)


def mean_scalars(values: dict, device: torch.device | str = "cpu") -> dict:
    """``{key: float}`` averaged over ranks (one all-reduce; ``device``: where the collective runs, the run's
    device for NCCL). Every rank must pass the same keys; they are reduced in sorted order."""
    if not context().distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= context().world_size
    return dict(zip(keys, t.tolist()))


def average_gradients(params) -> None:
    """Replace each ``p.grad`` by its mean over ranks (one all-reduce per dtype and device of a flat copy of the
    gradients): after ``loss.backward()`` of a per-rank mean loss this is the gradient of the global batch's mean
    loss, as DistributedDataParallel leaves it (the loop uses this for the gradients DDP does not see: a second
    optimiser's, from a backward outside DDP's forward). A parameter without a gradient on some ranks counts as 0 there;
    one without a gradient on every rank keeps ``grad = None`` (so the optimiser skips it, as in one process).
    Every rank must pass the same parameters in the same order. Nothing in one process."""
    world = context().world_size
    if world == 1:
        return
    groups: dict[tuple, list] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    for (dtype, device), ps in groups.items():
        has = torch.tensor([p.grad is not None for p in ps], dtype=dtype, device=device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps] + [has])
        dist.all_reduce(flat)
        counts = flat[-len(ps):].tolist()           # on how many ranks each parameter had a gradient
        grads = flat[:-len(ps)].div_(world)         # (sum of numel,) mean over ranks
        offset = 0
        for p, count in zip(ps, counts):
            g = grads[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if count == 0:
                continue
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)                     # in place: keeps the gradient's layout


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers (non-persistent ones too) into every rank's ``module``, in place: the
    replicas start each phase equal even where a hook computed a buffer (a latent scale) on each rank's device.
    Nothing in one process."""
    if not context().distributed:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_contiguous():
                dist.broadcast(t.data, 0)
            else:                                   # collectives take dense tensors
                buf = t.detach().contiguous()
                dist.broadcast(buf, 0)
                t.data.copy_(buf)
