"""Training of the action-conditioned world model (paper section 5.3, App. D.5): the study object of
:func:`mclcore.train.loop.train`.

    mcl train worldmodel --variant acg --preset cpu-smoke            # ACG
    mcl train worldmodel --variant lacg --mcl --preset cpu-smoke     # LACG + MCL
    python -m mclcore.studies.worldmodel.report runs/worldmodel/worldmodel-*-seed0 --out experiments/worldmodel

Phases (``PHASES``, in this order; the loop resumes each from ``checkpoint.pt`` if the run was killed):

* ``autoencoder`` (stage 1): the frame autoencoder on single frames (MSE), then frozen; at its end the latent scale
  is set from a fixed seeded batch of frames (LDM's scale_by_std);
* ``dynamics`` (stage 2): IDM (LACG) + action interface + forward dynamics (+ MCL critic and heads), jointly, on
  transitions (v_t, a_t, v_{t+1}) with ``L_rec + beta L_KL + lambda_adv L_GRL + lambda_MCL L_MCL`` (App. D.5). The
  frozen AE's latents of every training frame are computed once when the phase begins -- also after a resume, from
  the saved weights -- and fix the scale of the frame changes (``delta_scale``).

With ``--mcl`` the MCL term of the ``dynamics`` phase is weighted and watched by an
:class:`~mclcore.losses.monitor.MCLMonitor` (``TrainData.mcl``): weight ``dynamics.lambda_mcl``
(``mcl.weighting="absolute"``) or relative to the rest of the stage-2 loss by gradient norm on the generator's
parameters (forward dynamics model + action interface; ``"relative"``); every ``mcl.diagnose_every`` steps the
readout accuracies, shortcut share and gradient ratio are logged (TensorBoard ``dynamics/mcl/...``), kept in the
checkpoint and written to ``<run_dir>/mcl_diagnostics.json`` (``mcl inspect-mcl RUN_DIR``).

Every step's randomness comes from the loop's :class:`~mclcore.train.loop.StepContext` (seeded by
``(seed, phase, step)``), so a resumed run equals an uninterrupted one and a seed fixes the result. The batch sizes
are global: under torchrun each rank draws ``ctx.per_rank(batch_size)`` transitions from its own streams
(``batch_sizes`` names them for the loop's check).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from mclcore import distributed
from mclcore.losses.monitor import MCLMonitor
from mclcore.studies.worldmodel.config import PHASES, VARIANTS, RunConfig
from mclcore.studies.worldmodel.data import Episodes, encode_episodes, load_splits
from mclcore.train import loop

__all__ = ["WorldModelStudy", "TrainData", "build_model", "train", "default_cache_dir"]


def default_cache_dir(out_dir: str) -> str:
    """Generated simulator episodes are shared by the runs of one ``--out`` root: ``<out>/../cache/tabletop``."""
    return os.path.join(out_dir, "..", "cache", "tabletop")


def build_model(cfg: RunConfig):
    """The :class:`~mclcore.models.worldmodel.WorldModel` of ``cfg`` (fresh weights; seeded by the caller)."""
    from mclcore.models.worldmodel import ForwardDynamics, FrameAutoencoder, WorldModel

    if cfg.variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {cfg.variant!r}")
    m, dy = cfg.model, cfg.dynamics
    ae = FrameAutoencoder(cfg.autoencoder.latent_channels, cfg.autoencoder.ch)
    if m.backbone == "dit":
        fdm = ForwardDynamics(ae.latent_shape, 1, m.dim, m.depth, m.heads, m.patch)
    elif m.backbone == "wan":
        from mclcore.models.worldmodel.wan_adapter import WanForwardModel, tiny_wan_config

        if m.wan_path:
            fdm = WanForwardModel(ae.latent_shape, 1, cond_dim=m.dim, pretrained=m.wan_path)
        else:
            fdm = WanForwardModel(ae.latent_shape, 1, cond_dim=m.dim, config=tiny_wan_config(
                ae.latent_channels, m.wan_layers, m.wan_heads, m.wan_head_dim))
    else:
        raise ValueError(f"model.backbone: expected 'dit' or 'wan', got {m.backbone!r}")
    return WorldModel(cfg.variant, action_dim=4, latent_action_dim=m.latent_action_dim, num_embodiments=2, ae=ae,
                      fdm=fdm, idm_ch=m.idm_ch, idm_hidden=m.idm_hidden, grl_scale=dy.grl_scale,
                      mcl=cfg.mcl if cfg.use_mcl else None, residual=m.residual, prediction=m.prediction,
                      idm_logvar_init=m.idm_logvar_init, idm_norm=m.idm_norm, idm_inputs=m.idm_inputs)


@dataclass
class TrainData:
    """What the steps read: the training episodes, on the run's device where indexed every step."""
    train: Episodes
    frames_u8: torch.Tensor        # (N, T+1, 64, 64, 3) uint8, CPU (moved per batch)
    actions: torch.Tensor          # (N, T, 4) on device
    embodiment: torch.Tensor       # (N,) on device
    device: torch.device
    latents: torch.Tensor | None = None   # (N, T+1, C, 16, 16) frozen-AE latents, set when "dynamics" begins
    mcl: MCLMonitor | None = None          # --mcl: the MCL term's weight and diagnostics

    @property
    def n_eps(self) -> int:
        return self.actions.shape[0]

    @property
    def T(self) -> int:
        return self.actions.shape[1]


def _frames(data: TrainData, ei: np.ndarray, ti: np.ndarray) -> torch.Tensor:
    """Frames (episode ei[k], time ti[k]) as (B, 3, 64, 64) floats in [0, 1] on the run's device."""
    return data.frames_u8[ei, ti].to(data.device).permute(0, 3, 1, 2).float().div_(255.0)


class WorldModelStudy:
    """The world model's pieces for :func:`mclcore.train.loop.train` (see :class:`mclcore.train.loop.Study`).

    ``cache_dir``: where generated simulator episodes are kept (shared across runs)."""

    PHASES = PHASES

    def __init__(self, cache_dir: str):
        self.cache_dir = cache_dir

    build_model = staticmethod(build_model)

    @staticmethod
    def phases(cfg: RunConfig) -> list[tuple[str, int]]:
        return [("autoencoder", cfg.autoencoder.steps), ("dynamics", cfg.dynamics.steps)]

    @staticmethod
    def batch_sizes(cfg: RunConfig) -> dict[str, int]:
        """The global batch of each phase by config key (under torchrun each rank draws its share of it)."""
        return {"autoencoder.batch_size": cfg.autoencoder.batch_size, "dynamics.batch_size": cfg.dynamics.batch_size}

    def setup(self, model, cfg: RunConfig, device) -> TrainData:
        """The training episodes; the action standardisation buffers from them (saved with the weights)."""
        train_eps = load_splits(cfg, self.cache_dir)["train"]
        acts = torch.from_numpy(train_eps.actions).reshape(-1, 4)
        model.action_mean.copy_(acts.mean(0))
        model.action_std.copy_(acts.std(0).clamp_min(1e-3))
        return TrainData(train_eps, torch.from_numpy(train_eps.frames), torch.from_numpy(train_eps.actions).to(device),
                         torch.from_numpy(train_eps.embodiment).to(device), torch.device(device),
                         mcl=MCLMonitor(cfg.dynamics.lambda_mcl, cfg.mcl) if cfg.use_mcl else None)

    @staticmethod
    def extra_state(data: TrainData) -> dict:
        """What a checkpoint keeps beyond the weights: the MCL weight's last scale and the diagnostics so far."""
        return {"mcl": data.mcl.state_dict() if data.mcl is not None else None}

    @staticmethod
    def load_extra_state(data: TrainData, state: dict | None) -> None:
        if data.mcl is not None and state:
            data.mcl.load_state_dict(state.get("mcl"))

    @staticmethod
    def begin_phase(model, cfg: RunConfig, phase: str, data: TrainData) -> None:
        """Stage 2 reads latents of a frozen AE, so they are computed once here (on a resume too, from the saved
        AE: the same values) instead of every step; the AE stays in eval mode while it is frozen."""
        if phase == "dynamics":
            data.latents = encode_episodes(model, data.train, data.device)            # frozen AE
            delta = (data.latents[:, 1:] - data.latents[:, :-1]).std()               # scale of the frame changes
            model.set_delta_scale(1.0 / float(delta.clamp_min(1e-6)))
        model.ae.train(phase == "autoencoder")

    @staticmethod
    def trainable(model, cfg: RunConfig, phase: str) -> list[torch.nn.Parameter]:
        """Stage 1 trains the autoencoder; stage 2 everything else (the autoencoder frozen)."""
        for p in model.parameters():
            p.requires_grad_(False)
        mods = [model.ae] if phase == "autoencoder" else [c for n, c in model.named_children() if n != "ae"]
        params = [p for mod in mods for p in mod.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    @staticmethod
    def optimizers(model, cfg: RunConfig, phase: str, params) -> tuple[list, list]:
        """Stage 1: Adam. Stage 2: AdamW with a linear warm-up (stepped once per optimisation step)."""
        if phase == "autoencoder":
            return [torch.optim.Adam(params, lr=cfg.autoencoder.lr)], []
        dy = cfg.dynamics
        opt = torch.optim.AdamW(params, lr=dy.lr, weight_decay=dy.weight_decay)
        return [opt], [torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, dy.warmup)))]

    @staticmethod
    def grad_clip(cfg: RunConfig, phase: str) -> float:
        """``dynamics.grad_clip`` on stage 2's parameters; stage 1 (the AE, Adam) has no clip option and none."""
        return cfg.dynamics.grad_clip if phase == "dynamics" else 0.0

    @staticmethod
    def train_step(model, cfg: RunConfig, phase: str, step: int, data: TrainData, ctx: loop.StepContext) -> dict:
        """The forward pass of one step ({"loss", logs...}); the loop does backward, clip and update. Batch
        indices come from ``ctx.rng``, the flow's noise and times from ``ctx.generator`` (both per (seed, phase,
        step)), so a resumed step draws what the uninterrupted one did."""
        rng = ctx.rng
        if phase == "autoencoder":
            b = ctx.per_rank(cfg.autoencoder.batch_size)                                # this rank's rows
            ei, ti = rng.integers(0, data.n_eps, b), rng.integers(0, data.T + 1, b)
            return model.ae.loss(_frames(data, ei, ti))                                 # MSE on (B, 3, 64, 64)
        dy = cfg.dynamics
        b = ctx.per_rank(dy.batch_size)                                                 # this rank's rows
        ei, ti = rng.integers(0, data.n_eps, b), rng.integers(0, data.T, b)
        ei_t, ti_t = torch.from_numpy(ei).to(data.device), torch.from_numpy(ti).to(data.device)
        v_t, v_next = data.latents[ei_t, ti_t], data.latents[ei_t, ti_t + 1]            # (B, C, 16, 16) x 2
        self_context = None
        if dy.self_context > 0:     # scheduled sampling: the model's own prediction of frame t as context (t >= 1)
            use = torch.from_numpy((rng.random(b) < dy.self_context) & (ti >= 1)).to(data.device)
            prev = (ti_t - 1).clamp_min(0)
            self_context = (data.latents[ei_t, prev], data.actions[ei_t, prev], use)
        logs: dict = {}
        weigh = data.mcl.weigher(step, model.mcl, logs) if data.mcl is not None else None
        out = model.losses(v_t, v_next, data.actions[ei_t, ti_t], data.embodiment[ei_t],   # App. D.5 terms
                           beta=dy.beta, lambda_adv=dy.lambda_adv, context_noise=dy.context_noise,
                           kl_free_bits=dy.kl_free_bits, self_context=self_context,
                           lambda_mcl=dy.lambda_mcl if cfg.use_mcl else 0.0, generator=ctx.generator,
                           mcl_weight=weigh)
        out.update(logs)                                                                 # measured steps only
        return out

    @staticmethod
    def end_phase(model, cfg: RunConfig, phase: str, data: TrainData) -> None:
        """After stage 1: fix the latent scale, before the phase's final checkpoint saves it."""
        if phase == "autoencoder":
            # unit-variance latents for the flow (LDM's scale_by_std), from a fixed seeded batch of frames: the
            # stream of the step after the last one (seed, "autoencoder", steps)
            rng = loop.StepContext(cfg.seed, PHASES.index(phase), cfg.autoencoder.steps, data.device).rng
            ei, ti = rng.integers(0, data.n_eps, 256), rng.integers(0, data.T + 1, 256)
            model.ae.set_scale_from(_frames(data, ei, ti))


def train(cfg: RunConfig, out_dir: str, *, cache_dir: str | None = None, **kw):
    """Train ``cfg`` into ``out_dir`` (checkpoint.pt, config.json, tb/; ``--mcl``: mcl_diagnostics.json); returns
    ``(model, finished)``.

    ``kw``: :func:`mclcore.train.loop.train`'s options (``resume``, ``stop_after``, ``progress``, ``log``, ...).
    On resume the checkpoint's config wins. ``cache_dir``: generated episodes (default ``<out>/../cache/tabletop``).
    """
    study = WorldModelStudy(cache_dir or default_cache_dir(out_dir))
    model, _cfg, data, finished = loop.train(study, cfg, out_dir, label=f"worldmodel-{cfg.variant}", **kw)
    if data.mcl is not None and distributed.context().is_main:   # the measurements so far (restored on resume):
        data.mcl.write(out_dir)                                    # mcl inspect-mcl RUN_DIR; rank 0's shard
    return model, finished
