"""The one training loop of every study, and the per-seed run lifecycle around it.

A study supplies its pieces as a *study object* (a module or class; see :class:`Study` for the full list) and
:func:`train` runs them top to bottom::

    model = study.build_model(cfg)                        # fresh weights, torch seeded with cfg.seed
    data = study.setup(model, cfg, device)                # datasets, data-dependent buffers
    for phase, steps in study.phases(cfg):                # e.g. first_stage -> stage1 -> stage2
        params = study.trainable(model, cfg, phase)       # requires_grad set, the phase's parameters
        opts, scheds = study.optimizers(model, cfg, phase, params)
        for step in range(steps):
            out = study.train_step(model, cfg, phase, step, data, ctx)   # {"loss": scalar, logs...}
            # finite-loss check, backward, grad clip, opts[0].step(), schedulers, study.after_update(...)
            # TensorBoard every cfg.log_every steps, an atomic checkpoint every cfg.ckpt_every steps

What the loop owns: resume from the checkpoint (model, optimisers, schedulers, phase and step, the study's extra
state), seeding (``torch.manual_seed(cfg.seed)`` before the model is built; :class:`StepContext` gives each step
generators seeded by ``(seed, phase, step)``, so a resumed run equals an uninterrupted one), phase trainability and
optimisers, the step budget (``stop_after``), the finite-loss check, TensorBoard and atomic checkpoints.

:func:`train_or_resume` and :func:`run_seeds` are the lifecycle of ``mcl train``: one run folder per seed,
resumed or skipped, then evaluated, printed and written (``metrics.json``).

More than one process (``torchrun --nproc-per-node N -m mclcore train ...``; :mod:`mclcore.distributed`). Without
torchrun nothing below happens and one process runs exactly the code it always ran. Under torchrun:

* **data parallel, global batch.** A config's batch sizes are the *global* batch: each of the N ranks draws
  ``ctx.per_rank(B) = B / N`` rows per step, so one step sees B rows whatever N (a B that N does not divide is a
  ValueError at start naming both, on every rank). The study says which config keys are batch sizes
  (``Study.batch_sizes``) so the loop can check them before anything trains.
* **sharding: per-rank seeded sampling, not a DistributedSampler.** The studies draw every batch afresh from the
  step's streams (``ctx.rng`` indices into a dataset or episode pool, with replacement; ``ctx.generator`` noise);
  there are no epochs to partition. Rank r of N gets its own child streams of the same ``(seed, phase, step)``
  (``SeedSequence(spawn_key=(N, r))``), so the ranks' shards are independent, a resumed step draws what the
  uninterrupted one did, and a world of 1 keeps the streams of a single process.
* **gradients: PyTorch's DistributedDataParallel.** Each phase wraps, once its trainable set is fixed, a thin
  module that owns the model and whose ``forward`` is the study's ``train_step`` (``_Step``) in
  ``DistributedDataParallel(find_unused_parameters=True, no buffer sync before each forward, device_ids=None)``
  and runs every step through it: DDP's reducer hooks average the gradients of the phase's trainable parameters
  over ranks during ``loss.backward()`` (bucketed, overlapping the backward pass), before the clip and the update
  -- the gradient of the global batch's mean loss, so every replica takes the same step. Why the adapter: the
  studies call model methods (``model.losses``, ``model.ae.loss``), not ``model.forward``, and DDP syncs only
  the gradients of a forward run through its wrapper (measured: calling a method of a DDP-wrapped model trains
  silently unsynchronised replicas). Why per phase: DDP hooks the parameters that require a gradient when it is
  built, and the trainable set changes between phases (``first_stage -> stage1 -> stage2``). Why
  ``find_unused_parameters``: every model with MCL has parameters that get no gradient in a step (the critic's
  output bias does not enter ``grad_z critic``); one unused on every rank keeps ``grad = None`` (the optimiser
  skips it, as in one process), one unused on some ranks counts as 0 there. MCL's double backward
  (``autograd.grad(create_graph=True)`` inside the step) goes through DDP unchanged: ``autograd.grad`` does not
  fire the reducer's hooks, the outer backward does. (PyTorch prints once per rank that it "did not find any
  unused parameters" in a phase without any, such as the beta-VAE's: harmless.)
  **Where DDP cannot serve: a second optimiser** that a study steps in ``after_update`` on a backward of its own
  (FactorVAE's discriminator): that backward runs outside DDP's forward, where the reducer ignores its hooks, so
  the loop registers a step pre-hook on every optimiser but the first that averages its parameters' gradients
  (:func:`mclcore.distributed.average_gradients`, one all-reduce of a flat copy) before it steps.
* **batch statistics.** Only the world model's optional IDM BatchNorm (``model.idm_norm``) has any: each rank
  normalises with its shard's statistics (as DDP without SyncBatchNorm); the running statistics saved and
  evaluated are rank 0's (DDP syncs no buffers per step here; the loop broadcasts rank 0's at the phase's end). Losses that couple the rows of a batch -- MCL's InfoNCE
  negatives (unless ``mcl.gather``), beta-TC-VAE's minibatch TC estimate, FactorVAE's permuted codes -- see their
  rank's shard only; the rest are per-row means, for which the global step equals one process's step on all N shards.
* **one writer.** Rank 0 alone writes ``config.json``, checkpoints (with the world size), TensorBoard (the logged
  scalars are means over ranks) and progress; a checkpoint is written inside :func:`mclcore.distributed.together`,
  so the other ranks wait for it and a failed write stops every rank. ``study.setup`` runs on rank 0 first (a
  cache it fills is then read by the others). The given config is checked to be the same on every rank
  (:func:`mclcore.distributed.check_same`), then the point each rank resumes from; parameters and buffers are
  broadcast from rank 0 at the start and at each phase's begin and end.
* **resume.** Every rank reads ``checkpoint.pt`` (``--out`` must be on a filesystem every node sees); a run resumed
  with another world size says once what changes (the shards; the global batch does not).
* **evaluation** (:func:`run_seeds`): after every seed has trained, rank 0 evaluates them alone; the others exit.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from mclcore import distributed
from mclcore._io import load_checkpoint, save_checkpoint, write_json_atomic
from mclcore.train.config import apply_overrides, config_diff, from_dict, to_dict

__all__ = ["Study", "StepContext", "train", "resolve_device", "check_finite", "train_or_resume", "run_seeds",
           "fork_run"]


class Study(Protocol):
    """What a study gives :func:`train` (optional hooks may be left out).

    ``PHASES``: every phase name the study can have, in a fixed order: a phase's position seeds its steps, so it
    must never change for a published study. ``cfg`` needs ``seed``, ``device``, ``log_every``, ``ckpt_every``.
    """

    PHASES: tuple

    def build_model(self, cfg) -> torch.nn.Module: ...
    def phases(self, cfg) -> list[tuple[str, int]]: ...
    def setup(self, model, cfg, device) -> Any: ...
    def trainable(self, model, cfg, phase: str) -> list[torch.nn.Parameter]: ...
    def optimizers(self, model, cfg, phase: str, params) -> tuple[list, list]: ...
    def train_step(self, model, cfg, phase: str, step: int, data, ctx: "StepContext") -> dict: ...
    # optional: begin_phase(model, cfg, phase, data), end_phase(model, cfg, phase, data),
    #   after_update(model, cfg, phase, step, data, ctx, out, opts) -> dict of extra logs,
    #   grad_clip(cfg, phase) -> float (0: none), extra_state(data) -> dict, load_extra_state(data, state),
    #   batch_sizes(cfg) -> {config key: global batch size} (needed under torchrun: train_step draws
    #   ctx.per_rank(size) rows of each),
    #   fork_fields(cfg) -> {phase: config keys (or "section." prefixes) that no earlier phase reads}
    #   (``mcl train --fork-from``: :func:`fork_run`)


@dataclass
class StepContext:
    """The randomness of one step, a function of ``(seed, phase index, step)`` only -- and, under torchrun, of this
    process's ``rank`` of ``world_size``. Each stream is made once per step (on first use) and then shared, so hooks
    that draw after ``train_step`` continue the same stream."""

    seed: int
    phase_index: int
    step: int
    device: torch.device
    rank: int = 0
    world_size: int = 1

    def _seeds(self, *extra: int) -> np.random.SeedSequence:
        # one process: the sequence of [seed, phase, step] exactly as always (spawn_key ()); rank r of N: a child
        # sequence of it (spawn_key (N, r)), independent of every other rank's and of the one-process stream
        shard = () if self.world_size == 1 else (self.world_size, self.rank)
        return np.random.SeedSequence([self.seed, self.phase_index, self.step, *extra], spawn_key=shard)

    @functools.cached_property
    def rng(self) -> np.random.Generator:
        """numpy stream of the step (batch indices)."""
        return np.random.default_rng(self._seeds())

    @functools.cached_property
    def generator(self) -> torch.Generator:
        """torch stream of the step on the run's device (noise, diffusion times)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(int(np.random.default_rng(self._seeds(1)).integers(0, 2 ** 62)))
        return g

    def per_rank(self, batch_size: int) -> int:
        """This rank's share of a global batch of ``batch_size`` rows (``batch_size`` itself in one process)."""
        if batch_size % self.world_size:
            raise ValueError(f"batch size: the global batch {batch_size} is not divisible by the world size "
                             f"{self.world_size}")
        return batch_size // self.world_size


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; an explicit CUDA device without CUDA is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: expected cpu, cuda, cuda:N or auto, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} requested but CUDA is not available on this machine")
    return dev


def check_finite(loss: torch.Tensor, where: str, hint: str | Callable[[], str] = "") -> None:
    """FloatingPointError naming ``where`` when the scalar ``loss`` is NaN or infinite (one host sync).

    ``hint``: text appended to the message, or a callable giving it (evaluated only on failure)."""
    if not bool(torch.isfinite(loss).all()):
        hint = hint() if callable(hint) else hint
        raise FloatingPointError(f"{where}: non-finite loss {loss.detach().flatten()[:4].tolist()}"
                                 + (f"; {hint}" if hint else ""))


def train(study, cfg, out_dir: str | None, *, checkpoint: str = "checkpoint.pt", write_config: bool = True,
          log: bool = True, resume: bool = True, stop_after: int | None = None, stop_before: str | None = None,
          progress: bool = True,
          on_step: Callable[[int], None] | None = None, config_mismatch: str = "warn", label: str = "run",
          seed: int | None = None, device: str | None = None, log_every: int | None = None,
          ckpt_every: int | None = None):
    """Train ``cfg`` with ``study`` into ``out_dir``; returns ``(model, cfg, data, finished)``.

    Args:
        study: the study object (:class:`Study`).
        cfg: its config; on resume the checkpoint's config wins (``config_mismatch="warn"`` says what differs on
            stderr; ``"error"`` raises ValueError naming the differing fields).
        out_dir: holds ``checkpoint`` (a file name in it), ``config.json`` (``write_config``) and ``tb/`` (``log``);
            None: nothing is written and nothing resumed.
        resume: continue from the checkpoint if it exists. stop_after: return (with a checkpoint) after that many
            optimisation steps in this call; ``finished`` is then False. stop_before: a phase name; return (with a
            checkpoint, ``finished`` False) on reaching it, before its first step: where a fork starts
            (:func:`fork_run`). Unlike ``stop_after`` it is idempotent: a rerun stops at the same point.
        progress: a progress bar per phase. on_step: called with the number of steps done (progress of a caller),
            after each step's checkpoint (if any) is written; on resume first with the steps already done.
        label: names the run in messages.
        seed, device, log_every, ckpt_every: default to the config's fields of those names (a study whose config
            has no such field passes them here).

    Under torchrun every rank calls this with the same arguments (see the module doc); rank 0 alone writes.
    """
    from tqdm import tqdm

    call_t0 = time.perf_counter()
    seed = cfg.seed if seed is None else seed
    log_every = cfg.log_every if log_every is None else log_every
    ckpt_every = cfg.ckpt_every if ckpt_every is None else ckpt_every
    world = distributed.context()                     # rank 0 of 1 without torchrun
    ckpt_path = None
    if out_dir is not None:
        ckpt_path = os.path.join(out_dir, checkpoint)
    else:
        write_config = log = False
    if world.distributed:
        if not hasattr(study, "batch_sizes"):         # said before any rank waits for another
            raise ValueError(f"{label}: this study does not say which config fields are batch sizes "
                             f"(Study.batch_sizes), so it cannot be split over {world.world_size} processes; run it "
                             "without torchrun")
        # the process group runs on this rank's device (cuda:LOCAL_RANK or the CPU: NCCL or gloo); the config of
        # this call is checked to be every rank's before any file is read (raises on every rank)
        run_device = distributed.device_for(resolve_device(cfg.device if device is None else device))
        distributed.init(run_device)
        distributed.check_same(to_dict(cfg), "config")
        if not world.is_main:                         # rank 0 alone writes and shows progress
            write_config = log = progress = False
    state = None
    if resume and ckpt_path is not None and os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path)
        saved = from_dict(type(cfg), state["config"], where=f"{ckpt_path}: config")
        diff = config_diff(to_dict(saved), to_dict(cfg))
        if diff and config_mismatch == "error":
            raise ValueError(f"checkpoint: {ckpt_path} was written for a different run ({'; '.join(diff)}); "
                             f"delete it or use another output folder")
        if diff and world.is_main:
            print(f"resuming {out_dir} with its saved config (ignoring differences: {diff})", file=sys.stderr)
        cfg = saved
    if world.distributed:
        # every rank must go on from the same checkpoint (a file some nodes cannot see would split the run), and
        # every global batch must split into equal shards
        at = None if state is None else [state["done"], state["phase"], state["step"], state["config"]]
        distributed.check_same(at, "checkpoint (each rank read a different one or none: is --out on a filesystem "
                                   "every node sees?)")
        _check_global_batches(study, cfg, world.world_size)
        device = run_device
    else:
        device = resolve_device(cfg.device if device is None else device)
    if stop_before is not None and stop_before not in [p for p, _ in study.phases(cfg)]:   # before anything loads
        raise ValueError(f"--stop-before: {stop_before!r} is not a phase of this run (its phases: "
                         f"{', '.join(p for p, _ in study.phases(cfg))})")
    torch.manual_seed(seed)
    model = study.build_model(cfg).to(device)
    # rank 0 first: a cache the study fills (generated episodes) is then read by the other ranks, and a failure on
    # any rank (a missing data file) is raised on all of them
    data = distributed.together(lambda: study.setup(model, cfg, device), f"{label}: loading the data",
                                rank0_first=True)
    if out_dir is not None and world.is_main:   # created once the data loaded: a bad --data-path leaves no folder
        os.makedirs(out_dir, exist_ok=True)
    done: list[str] = []
    cur_phase, cur_step, opt_states = None, 0, None
    # Wall seconds of the calls that made the checkpointed state, summed over resumes (steps lost to a kill after
    # the last checkpoint are not counted; they are counted when redone): what one uninterrupted run would take.
    # None: the checkpoint predates this record, so the sum is unknown.
    seconds_before = 0.0 if state is None else state.get("train_seconds")
    if state is not None:
        model.load_state_dict(state["model"])
        done, cur_phase, cur_step, opt_states = state["done"], state["phase"], state["step"], state["optim"]
        if hasattr(study, "load_extra_state"):
            study.load_extra_state(data, state.get("extra"))
    distributed.broadcast_module(model)               # the replicas start equal (nothing in one process)
    if write_config:
        write_json_atomic(to_dict(cfg), os.path.join(out_dir, "config.json"), indent=1, sort_keys=False)
    writer = None
    if log:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(out_dir, "tb"))
    budget = math.inf if stop_after is None else int(stop_after)
    plan = study.phases(cfg)
    global_offset = sum(n for p, n in plan if p in done)
    if on_step is not None and state is not None:
        on_step(global_offset + (cur_step if cur_phase not in done else 0))
    saved_world = state.get("world_size", 1) if state is not None else world.world_size
    if saved_world != world.world_size and world.is_main and budget > 0 and any(p not in done for p, _ in plan):
        print(_world_change(study, cfg, out_dir, saved_world, world.world_size), file=sys.stderr)

    try:
        for phase, n_steps in plan:
            if phase in done:
                continue
            start = cur_step if phase == cur_phase else 0
            model.train()
            if hasattr(study, "begin_phase"):
                study.begin_phase(model, cfg, phase, data)
            distributed.broadcast_module(model)       # a hook may have set buffers (scales) on each rank's device
            params = study.trainable(model, cfg, phase)
            opts, scheds = study.optimizers(model, cfg, phase, params)
            if phase == cur_phase and opt_states is not None:
                for o, s in zip(opts, opt_states["opt"]):
                    o.load_state_dict(s)
                for sc, s in zip(scheds, opt_states["sched"]):
                    sc.load_state_dict(s)
            clip = study.grad_clip(cfg, phase) if hasattr(study, "grad_clip") else 0.0
            forward = functools.partial(study.train_step, model)     # one process: the study's step as it is
            if world.distributed:
                # DistributedDataParallel around the step (wrapped anew each phase: its trainable set); a second
                # optimiser a study steps in after_update (FactorVAE's discriminator) averages in a pre-hook
                forward = _data_parallel(study, model)
                for o in opts[1:]:
                    o.register_step_pre_hook(lambda opt, args, kwargs: distributed.average_gradients(_optimised(opt)))

            def snapshot(step: int) -> None:
                if ckpt_path is None or not world.is_main:
                    return
                extra = study.extra_state(data) if hasattr(study, "extra_state") else None
                ckpt = {
                    "config": to_dict(cfg), "model": model.state_dict(), "done": list(done), "phase": phase,
                    "step": step, "extra": extra,
                    "train_seconds": None if seconds_before is None else
                    seconds_before + time.perf_counter() - call_t0,
                    "optim": {"opt": [o.state_dict() for o in opts], "sched": [s.state_dict() for s in scheds]},
                }
                if world.distributed:                 # what a resume with another world size reports
                    ckpt["world_size"] = world.world_size
                save_checkpoint(ckpt_path, ckpt)

            def checkpoint_now(step: int) -> None:  # rank 0 writes, the others wait; a failed write stops all
                distributed.together(lambda: snapshot(step), f"{label}/{phase}: writing the checkpoint")

            index = study.PHASES.index(phase)
            if phase == stop_before:                  # the first iteration checkpoints and returns
                budget = 0
            bar = tqdm(range(start, n_steps), desc=f"{label}/{phase}", disable=not progress, dynamic_ncols=True)
            t0 = time.perf_counter()
            for step in bar:
                if budget <= 0:
                    checkpoint_now(step)
                    bar.close()
                    return model, cfg, data, False
                ctx = StepContext(seed, index, step, device, world.rank, world.world_size)
                out = forward(cfg, phase, step, data, ctx)
                loss = out["loss"]                    # under torchrun: the mean over this rank's shard
                # under torchrun the global batch's loss, so that a NaN on any rank stops every rank
                check_finite(distributed.mean(loss), f"{label}/{phase} step {step}", out.get("hint", ""))
                opts[0].zero_grad(set_to_none=True)
                loss.backward()                       # under torchrun: DDP leaves the global batch's gradient
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                opts[0].step()
                for s in scheds:
                    s.step()
                extra_logs = study.after_update(model, cfg, phase, step, data, ctx, out, opts) \
                    if hasattr(study, "after_update") else {}
                budget -= 1
                if log_every and (step % log_every == 0 or step == n_steps - 1):
                    logs = {k: float(v.detach()) for k, v in {**out, **extra_logs}.items()
                            if torch.is_tensor(v) and v.ndim == 0}
                    logs = distributed.mean_scalars(logs, device)    # the global batch's (means over ranks)
                    if scheds:
                        logs["lr"] = opts[0].param_groups[0]["lr"]
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
                    if writer is not None:
                        for k, v in logs.items():
                            writer.add_scalar(f"{phase}/{k}", v, global_offset + step)
                if ckpt_every and (step + 1) % ckpt_every == 0 and step + 1 < n_steps:
                    checkpoint_now(step + 1)
                if on_step is not None:
                    on_step(1)
            if hasattr(study, "end_phase"):
                study.end_phase(model, cfg, phase, data)
            distributed.broadcast_module(model)
            done.append(phase)
            global_offset += n_steps
            checkpoint_now(n_steps)
            if progress:
                print(f"{label}/{phase}: {n_steps - start} steps in {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)
    finally:
        if writer is not None:
            writer.close()
    model.eval()
    return model, cfg, data, True


class _Step(torch.nn.Module):
    """The study's ``train_step`` as the forward of a module that owns the model: what DistributedDataParallel wraps,
    since its reducer syncs the gradients of a forward run through the wrapper only (the studies call model methods,
    ``model.losses``, ``model.ae.loss``, not ``model.forward``)."""

    def __init__(self, study, model: torch.nn.Module):
        super().__init__()
        self.study, self.model = study, model

    def forward(self, cfg, phase: str, step: int, data, ctx: StepContext) -> dict:
        return self.study.train_step(self.model, cfg, phase, step, data, ctx)


def _data_parallel(study, model: torch.nn.Module) -> Callable:
    """``(cfg, phase, step, data, ctx) -> out``: the step through DistributedDataParallel over the parameters that
    require a gradient now (the phase's: :meth:`Study.trainable` set them). ``find_unused_parameters``: a step
    leaves some without a gradient (the MCL critic's output bias); one unused on every rank
    keeps ``grad = None``, as in one process. No buffer sync before each forward (``forward_sync_buffers=False``,
    ``broadcast_buffers=False`` before torch 2.13): each rank keeps its own running statistics during a phase (the
    replicas' buffers are made equal at each phase's begin and end, rank 0's saved). ``device_ids=None``: the inputs
    (the study's data, kept where the study put it, on the CPU or the GPU) are passed as they are, not copied."""
    if not any(p.requires_grad for p in model.parameters()):
        return functools.partial(study.train_step, model)       # nothing to sync (DDP refuses such a module)
    ddp = torch.nn.parallel.DistributedDataParallel
    no_buffer_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                      else "broadcast_buffers")
    return ddp(_Step(study, model), device_ids=None, find_unused_parameters=True, **{no_buffer_sync: False})


def _optimised(opt) -> list[torch.nn.Parameter]:
    """The parameters an optimiser steps, in its order."""
    return [p for group in opt.param_groups for p in group["params"]]


def _check_global_batches(study, cfg, world_size: int) -> dict:
    """The study's global batch sizes ``{config key: rows}``; ValueError naming the key and both numbers when
    ``world_size`` does not divide one (the same on every rank: the configs were checked to be equal)."""
    sizes = study.batch_sizes(cfg)
    for key, rows in sizes.items():
        if rows % world_size:
            raise ValueError(f"{key}: the global batch {rows} is not divisible by the world size {world_size} "
                             f"(torchrun --nproc-per-node x --nnodes); use a multiple of {world_size}")
    return sizes


def _world_change(study, cfg, out_dir, before: int, now: int) -> str:
    """The one line said when a run resumes with another number of processes."""
    sizes = study.batch_sizes(cfg) if hasattr(study, "batch_sizes") else {}
    split = ", ".join(f"{k} {n} = {now} x {n // now} (was {before} x {n // before})" for k, n in sizes.items()
                      if n % now == 0)
    return (f"{out_dir}: resuming a run written by {before} process(es) with {now}: the global batch is unchanged"
            f"{' (' + split + ')' if split else ''}, but every step now draws {now} shard(s) of its own, so the "
            f"remaining steps see other samples than an uninterrupted {before}-process run would")


# ------------------------------------------------------------------------------------------------ run lifecycle
def train_or_resume(out: str, args, train_fn) -> tuple[str, object]:
    """The run lifecycle of ``mcl train`` for one run folder ``out``.

    ``train_fn(resume=..., stop_after=..., progress=..., log=...) -> (model, finished)`` trains the run (resuming
    from ``out/checkpoint.pt`` when asked). ``args`` are the ``mcl train`` arguments:

    * ``--eval-only``: the run must have a finished checkpoint, which is loaded without training;
    * otherwise a run with ``metrics.json`` is finished and skipped, unless ``--no-resume`` (which deletes it and
      starts over); ``--stop-after N`` stops with a checkpoint.

    Returns ``("ok", model)`` when the model is trained and ready to evaluate, ``("skip", None)`` when there is nothing
    more to do for this run (said on stdout, by rank 0 alone under torchrun), ``("error", None)`` after an error said
    on stderr (exit code 2).
    """
    main = distributed.context().is_main
    metrics = os.path.join(out, "metrics.json")
    if args.eval_only:
        if not os.path.exists(os.path.join(out, "checkpoint.pt")):
            print(f"--eval-only: no checkpoint in {out}", file=sys.stderr)
            return "error", None
        model, finished = train_fn(resume=True, stop_after=0, progress=False, log=False)
        if not finished:
            print(f"--eval-only: the run in {out} has not finished training", file=sys.stderr)
            return "error", None
        return "ok", model
    if os.path.exists(metrics) and not args.no_resume:
        if main:
            print(f"{out}: finished and evaluated (use --eval-only to re-evaluate, --no-resume to retrain)")
        return "skip", None
    if args.no_resume and os.path.exists(metrics) and main:
        os.remove(metrics)
    stop_before = getattr(args, "stop_before", None)
    model, finished = train_fn(resume=not args.no_resume, stop_after=args.stop_after, progress=not args.quiet,
                               log=True, **({"stop_before": stop_before} if stop_before else {}))
    if not finished:
        if main:
            where = f"at the start of {stop_before}" if stop_before else f"after {args.stop_after} steps"
            print(f"{out}: stopped {where} (checkpoint saved; re-run to continue)")
        return "skip", None
    return "ok", model


def run_identity_diff(out: str, cfg, ignore: tuple = ("device",)) -> list[str]:
    """Where the run already in ``out`` (its ``config.json``) differs from ``cfg``: ``"key: saved X vs given Y"``
    for every differing leaf outside the ``ignore`` prefixes; [] for a new folder. A run folder is named by model,
    dataset, preset and seed only, so this is what keeps a rerun with another ``--set`` from silently reusing (or
    resuming) the run of another config. A config.json that cannot be read raises ValueError naming it."""
    import json

    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable run config ({err}); delete the run folder to start over") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not a run config (a JSON object was expected)")
    try:        # fields added since the run was written take their defaults, which keep the old behaviour
        saved = to_dict(from_dict(type(cfg), saved, where=path, strict=False))
    except (ValueError, TypeError):
        pass    # not rebuildable: compare as saved, the differences below name it
    return [d for d in config_diff(saved, to_dict(cfg)) if not d.split(":")[0].startswith(tuple(ignore))]


FORK_FILE = "fork.json"


def fork_run(src: str, out: str, cfg, *, phases: list[tuple[str, int]], fields: dict[str, tuple],
             ignore: tuple = ("device",)) -> dict:
    """Start the new run ``out`` of ``cfg`` from run ``src``'s checkpoint (``mcl train --fork-from``).

    Two arms of an ablation that differ only in what a late phase reads (MDDiff and MDDiff with lambda_MCL = 0
    differ from stage 2 on) train the same earlier phases bit for bit, since every step's randomness is a function
    of (seed, phase, step) (:class:`StepContext`). A fork trains those phases once: ``src`` is stopped where the
    runs begin to differ (``--stop-before``), its checkpoint is copied into ``out`` with ``cfg`` as the config, and
    both runs go on from there. The copy equals what ``cfg`` alone would have trained up to that point on the
    same device and thread count (a test checks it bit for bit; another thread count reorders float sums, and
    such runs drift apart from the first steps), so the fork saves time and changes no result.

    What may differ: the config keys the study lists per phase in ``fields`` (``{phase: keys}``, a key ending in
    "." is a section prefix; the study's ``fork_fields(cfg)``), the ``eval`` section and the ``ignore`` prefixes.
    The first phase whose keys differ is where the runs part; ``src`` must not have trained a step of it or of a
    later phase. The same config (one arm of a grid whose shared phases were trained with its values) is a copy.
    ``out`` gets ``fork.json`` (the source, its phase and step, the differing fields) beside the copied checkpoint
    and TensorBoard logs; the checkpoint's training seconds are the source's, so a forked run
    reports what one uninterrupted run of ``cfg`` would have taken. Returns fork.json's record.

    Raises ValueError naming ``--fork-from`` and what was expected: no checkpoint in ``src``, a differing key no
    phase lists, or a source that trained past the parting phase (the message gives the ``--stop-before`` to use).
    """
    ck_path = os.path.join(src, "checkpoint.pt")
    if not os.path.isfile(ck_path):
        raise ValueError(f"--fork-from: no checkpoint in {src} (expected the folder of a run of the same model, "
                         f"dataset, preset and seed)")
    state = load_checkpoint(ck_path)
    try:        # fields added since the source was written take their defaults (as run_identity_diff)
        saved = to_dict(from_dict(type(cfg), state["config"], where=ck_path, strict=False))
    except (ValueError, TypeError):
        saved = state["config"]
    skip = tuple(ignore) + ("eval.",)
    diff = [d for d in config_diff(saved, to_dict(cfg)) if not d.split(":")[0].startswith(skip)]
    order = [p for p, _ in phases]

    def phase_of(key: str):
        for p in order:
            if any(key == f or (f.endswith(".") and key.startswith(f)) for f in fields.get(p, ())):
                return p
        return None

    parts = [len(order)]            # the same config (outside eval.*): a copy, valid wherever the source stands
    for d in diff:
        p = phase_of(d.split(":")[0])
        if p is None:
            allowed = "; ".join(f"{p}: {', '.join(fields[p])}" for p in order if fields.get(p)) or "none"
            raise ValueError(f"--fork-from: {src} differs from this run in {d}, which training reads before the "
                             f"runs could part; a fork may change only ({allowed}) and eval.*")
        parts.append(order.index(p))
    first = min(parts)
    before = sum(n for _, n in phases[:first])
    # where the source stands, as (phase index, step): a finished phase counts as past its last step
    at = max([(order.index(p), math.inf) for p in state["done"] if p in order]
             + ([(order.index(state["phase"]), state["step"])] if state["phase"] in order else []), default=(0, 0))
    if first < len(order) and at > (first, 0):
        raise ValueError(f"--fork-from: {src} has trained into {order[first]} (its checkpoint: {state['phase']} "
                         f"step {state['step']}), where the runs differ ({diff[0]}); fork from a run stopped "
                         f"before it: train the source with --stop-before {order[first]} (or --stop-after "
                         f"{before} from scratch), fork, then resume the source")
    record = {"from": os.path.abspath(src), "phase": state["phase"], "step": state["step"],
              "done": list(state["done"]), "parts_at": order[first] if first < len(order) else None, "differs": diff,
              "train_seconds_before": state.get("train_seconds")}
    os.makedirs(out, exist_ok=True)
    if os.path.isdir(os.path.join(src, "tb")):          # the shared phases' curves, then this run's own
        shutil.copytree(os.path.join(src, "tb"), os.path.join(out, "tb"), dirs_exist_ok=True)
    write_json_atomic(record, os.path.join(out, FORK_FILE), indent=1, sort_keys=False)
    save_checkpoint(os.path.join(out, "checkpoint.pt"), {**state, "config": to_dict(cfg)})   # last: marks it done
    return record


# What a user's mistake or a damaged file raises on the way through a run; said in one line (``--debug``: traceback).
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def run_seeds(args, *, out_root: str, config_for_seed: Callable[[int], Any], run_dir: Callable[[Any], str],
              train_fn: Callable, evaluate: Callable, summary: Callable,
              eval_config: Callable[[Any], Any] | None = None, identity_ignore: tuple = ("device",),
              phases: Callable[[Any], list] | None = None, fork_fields: Callable[[Any], dict] | None = None) -> int:
    """"Train, evaluate, write metrics" for every seed of ``args.seeds``: the body of ``mcl train``.

    ``config_for_seed(seed)`` -> cfg; ``run_dir(cfg)`` -> folder name under ``out_root``;
    ``train_fn(cfg, out, **kw) -> (model, finished)``; evaluation uses the checkpoint's config with this call's
    ``--set eval.*`` fields, then ``eval_config(cfg)`` if given (a study's own evaluation-only overrides);
    ``evaluate(model, cfg, out) -> dict``;
    ``summary(out, res) -> str`` is printed before ``metrics.json`` is written (a failed write loses nothing).

    A run folder that holds a run of another config (:func:`run_identity_diff`; ``identity_ignore`` prefixes and,
    with ``--eval-only``, the ``eval`` section may differ) is refused with the differing fields, unless
    ``--no-resume`` retrains it with the given config. Errors of :data:`USER_ERRORS` end the command with one line
    on stderr and exit code 2 (``--debug`` re-raises them). Returns the exit code.

    ``--fork-from ROOT`` (``args.fork_from``; needs ``phases(cfg)`` and ``fork_fields(cfg)``, the study's): a run
    folder without a checkpoint starts from ``ROOT/<run_dir(cfg)>``'s (:func:`fork_run`); one with a checkpoint
    resumes as always.

    Under torchrun every rank trains every seed; then rank 0 evaluates the trained runs alone (reloading each from
    its checkpoint, as ``--eval-only`` does) while the other ranks return 0: nothing keeps them waiting in a
    collective for the length of an evaluation. ``--eval-only`` is rank 0's alone from the start.
    """
    world = distributed.context()
    if world.distributed and args.eval_only:
        if not world.is_main:
            return 0                        # nothing to train: rank 0 evaluates alone, the others are done
        with distributed.alone():
            return run_seeds(args, out_root=out_root, config_for_seed=config_for_seed, run_dir=run_dir,
                             train_fn=train_fn, eval_config=eval_config, evaluate=evaluate, summary=summary,
                             identity_ignore=identity_ignore)
    trained = []                            # under torchrun: (cfg, out, t0, train_s) of runs rank 0 evaluates last
    for seed in args.seeds:
        cfg = config_for_seed(seed)
        out = os.path.join(out_root, run_dir(cfg))
        try:
            ignore = tuple(identity_ignore) + (("eval",) if args.eval_only else ())
            diff = [] if args.no_resume else run_identity_diff(out, cfg, ignore)
            if diff:
                print(f"--out: {out} holds a run of a different config ({'; '.join(diff)}); use another --out, or "
                      f"--no-resume to retrain it with this config", file=sys.stderr)
                return 2
            fork_from = getattr(args, "fork_from", None)
            if fork_from and not os.path.exists(os.path.join(out, "checkpoint.pt")):
                if phases is None or fork_fields is None:
                    raise ValueError("--fork-from: this study's runs cannot be forked (it lists no fields a fork "
                                     "may change)")
                if world.distributed:       # one file copy: no process group is needed for it
                    raise ValueError("--fork-from: fork in one process (without torchrun, e.g. with "
                                     "--stop-after 0), then resume the forked run under torchrun")
                src = os.path.join(fork_from, run_dir(cfg))
                rec = fork_run(src, out, cfg, phases=phases(cfg), fields=fork_fields(cfg), ignore=identity_ignore)
                print(f"{out}: forked from {src} at {rec['phase']} step {rec['step']} (differs: "
                      f"{'; '.join(rec['differs']) or 'nothing, a copy'})", file=sys.stderr)
            t0 = time.perf_counter()
            status, model = train_or_resume(out, args, lambda **kw: train_fn(cfg, out, **kw))
            if status == "error":
                return 2
            if status == "skip":
                continue
            train_s = time.perf_counter() - t0
            if args.no_eval:
                if world.is_main:
                    print(f"{out}: trained in {train_s:.0f} s")
                continue
            if world.distributed:
                trained.append((cfg, out, t0, train_s))
                continue
            _evaluate_run(args, model, cfg, out, t0, train_s, eval_config, evaluate, summary)
        except USER_ERRORS as err:
            return _user_error(args, out, err)
        except distributed.PeerError as err:     # another rank's mistake (said there): end with its exit code
            if getattr(args, "debug", False):
                raise
            print(f"mcl train: {out}: {err}", file=sys.stderr)
            return 2 if err.user_error else 1
    if not trained or not world.is_main:
        return 0
    with distributed.alone():
        for cfg, out, t0, train_s in trained:
            try:
                model, _ = train_fn(cfg, out, resume=True, stop_after=0, progress=False, log=False)
                _evaluate_run(args, model, cfg, out, t0, train_s, eval_config, evaluate, summary)
            except USER_ERRORS as err:
                return _user_error(args, out, err)
    return 0


def _user_error(args, out: str, err: Exception) -> int:
    """A user's mistake in run ``out``: one line on stderr and exit code 2 (``--debug``: the traceback)."""
    if getattr(args, "debug", False):
        raise err
    print(f"mcl train: {out}: {type(err).__name__ + ': ' if isinstance(err, OSError) else ''}{err}", file=sys.stderr)
    return 2


def _evaluate_run(args, model, cfg, out: str, t0: float, train_s: float, eval_config, evaluate, summary) -> None:
    """Evaluate the trained run in ``out`` (its checkpoint's config with this call's ``--set eval.*`` fields,
    ``eval_config``-adjusted), print the summary
    line, then write ``metrics.json`` (with the seconds of this call; ``--eval-only`` keeps the training call's;
    ``train_all_calls``: the training seconds summed over every call that made the checkpoint, when it records
    them)."""
    import json

    saved = type(cfg)
    ckpt = load_checkpoint(os.path.join(out, "checkpoint.pt"))
    # the checkpoint's config with this call's --set eval.* fields (the identity check lets the eval section differ
    # on --eval-only, e.g. to re-score a run at another protocol; on a training call they equal the saved ones)
    eval_sets = [s for s in getattr(args, "set", None) or () if s.split("=", 1)[0].strip().startswith("eval.")]
    cfg = apply_overrides(from_dict(saved, ckpt["config"]), eval_sets)
    if eval_config is not None:
        cfg = eval_config(cfg)
    previous = None
    metrics_path = os.path.join(out, "metrics.json")
    if args.eval_only and os.path.exists(metrics_path):
        with open(metrics_path) as f:
            previous = json.load(f).get("seconds", {})
        previous = previous.get("training_run", previous)
    res = evaluate(model, cfg, out)
    res.setdefault("seconds", {})
    res["seconds"]["train_call"] = train_s
    res["seconds"]["total_call"] = time.perf_counter() - t0
    if previous is not None:        # keep the timing of the call that trained the run
        res["seconds"]["training_run"] = previous
    if ckpt.get("train_seconds") is not None:   # training summed over every call, resumes included (see train)
        res["seconds"]["train_all_calls"] = ckpt["train_seconds"]
    fork = os.path.join(out, FORK_FILE)
    if os.path.exists(fork):                    # a forked run says so (and where from) in its metrics
        with open(fork) as f:
            res["forked_from"] = json.load(f)
    print(summary(out, res), flush=True)
    write_json_atomic(res, metrics_path, indent=1, sort_keys=False)
