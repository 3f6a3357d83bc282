"""The concept-disentanglement study (paper section 5.2, App. D.2/D.4) as a study object of
:mod:`mclcore.train.loop`: this module *is* the object (``PHASES``, :func:`build_model`, :func:`phases`,
:func:`setup`, :func:`trainable`, :func:`optimizers`, :func:`train_step`, :func:`after_update`, :func:`end_phase`),
and :func:`train` hands it to the loop.

Models (``MODELS``): ``mddiff`` (EncDiff + u-conditioned decoder + MCL), ``encdiff``, and the VAE baselines
``betavae``, ``factorvae``, ``btcvae``. Phases, top to bottom (each resumes from ``checkpoint.pt``):

* diffusion models: ``first_stage`` (the VQ autoencoder, unconditional path; at its end LDM's ``scale_by_std`` on a
  fixed batch) -> ``stage1`` (diffusion loss only, AdamW, lr = base_lr1 x batch with linear warm-up, App. D.4) ->
  ``stage2`` (MDDiff: + lambda_recon L_recon + lambda_MCL L_MCL at base_lr2 x batch; EncDiff: the same number of
  steps with the diffusion loss only, so both models see the same optimisation budget);
* VAEs: ``vae`` (Adam; FactorVAE's discriminator has its own Adam, stepped in :func:`after_update`).

MCL in MDDiff's stage 2 is weighted and watched by an :class:`~mclcore.losses.monitor.MCLMonitor`
(``StudyData.mcl``): the weight is ``stages.lambda_mcl`` (``mcl.weighting="absolute"``, the paper's) or relative to
the host loss ``L_diffusion + lambda_recon L_recon`` by gradient norm on the u-decoder (``"relative"``), and every
``mcl.diagnose_every`` stage-2 steps the readout accuracies, shortcut share and gradient ratio are measured on the
step's (z, u), logged to TensorBoard (``stage2/mcl/...``), kept in the checkpoint (:func:`extra_state`) and written
to ``<run_dir>/mcl_diagnostics.json`` when :func:`train` returns (``mcl inspect-mcl RUN_DIR`` prints them).

Randomness: the batch of a step comes from the loop's ``ctx.rng`` and the diffusion/VAE noise from
``ctx.generator``, both seeded by ``(seed, PHASES.index(phase), step)``; FactorVAE's discriminator step draws from the
same generator after the VAE loss, as it always has. ``PHASES`` therefore never changes order. The batch sizes of the
config are global: under torchrun each rank draws ``ctx.per_rank(batch_size)`` rows from its own streams
(:func:`batch_sizes` names them for the loop's check).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from mclcore import distributed
from mclcore.studies.disentangle.baseline_config import BASELINE_MODELS
from mclcore.studies.disentangle.config import DIFFUSION_MODELS, MODELS, RunConfig, run_dir_name
from mclcore.studies.disentangle.principle_config import PRINCIPLE_MODELS
from mclcore.losses.monitor import MCLMonitor
from mclcore.train import loop

__all__ = ["PHASES", "MODELS", "build_model", "phases", "batch_sizes", "load_dataset", "Batches", "StudyData", "setup",
           "trainable", "optimizers", "train_step", "after_update", "end_phase", "extra_state", "load_extra_state",
           "autocast", "train", "run_dir_name"]

PHASES = ("first_stage", "stage1", "stage2", "vae")   # a phase's index seeds its steps: never reorder


# -------------------------------------------------------------------------------------------------- building
def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The model of ``cfg.model`` with freshly initialised weights (the loop seeds torch with ``cfg.seed``)."""
    if cfg.model in BASELINE_MODELS:        # DisDiff, InfoGAN-CR: their own study object (baselines.py)
        return _baselines().build_model(cfg)
    from mclcore.models.autoencoder import PatchDiscriminator, VQAutoencoder
    from mclcore.models.encdiff import EncDiff, MDDiff
    from mclcore.models.image_vae import ImageVAE

    if cfg.model in DIFFUSION_MODELS:
        d, fs = cfg.diffusion, cfg.first_stage
        u_dim = d.num_concepts * d.token_dim if cfg.model == "mddiff" else 0
        ae = VQAutoencoder(fs.ch, fs.ch_mult, fs.num_res_blocks, 3, fs.n_embed, u_dim, fs.u_channels)
        kw = dict(num_concepts=d.num_concepts, encoder_hidden=d.encoder_hidden, encoder_fc=d.encoder_fc,
                  token_hidden=d.token_hidden, token_dim=d.token_dim,
                  unet=dict(channels=d.unet_channels, channel_mult=d.unet_mult, num_res_blocks=d.unet_res_blocks,
                            attention_ds=d.attention_ds, heads=d.heads),
                  diffusion=dict(num_timesteps=d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end,
                                 schedule=d.schedule, loss=d.loss))
        model = EncDiff(ae, **kw) if cfg.model == "encdiff" else MDDiff(ae, mcl=cfg.mcl, **kw)
        if fs.adversarial_weight > 0:     # the first stage's PatchGAN (trained in first_stage only; checkpointed)
            model.first_stage_disc = PatchDiscriminator(3, fs.disc_ndf, fs.disc_layers)
        return model
    v = cfg.vae
    if cfg.model in PRINCIPLE_MODELS:       # compvae, mmdvae, qlae, intervae: ImageVAE's architecture
        from mclcore.models.image_principles import build_image_principle

        return build_image_principle(cfg.model, v.latent_dim, v.hidden, v.fc, cfg.principles)
    return ImageVAE(cfg.model, v.latent_dim, v.hidden, v.fc, v.beta, v.gamma, v.disc_width, v.disc_depth)


def phases(cfg: RunConfig) -> list[tuple[str, int]]:
    """[(phase name, steps)] in order."""
    if cfg.model in BASELINE_MODELS:        # DisDiff, InfoGAN-CR: their own study object (baselines.py)
        return _baselines().phases(cfg)
    if cfg.model in DIFFUSION_MODELS:
        return [("first_stage", cfg.first_stage.steps), ("stage1", cfg.stages.stage1_steps),
                ("stage2", cfg.stages.stage2_steps)]
    return [("vae", cfg.vae.steps)]


def batch_sizes(cfg: RunConfig) -> dict[str, int]:
    """The global batch of each phase by config key (under torchrun each rank draws its share of it)."""
    if cfg.model in BASELINE_MODELS:        # DisDiff, InfoGAN-CR: their own study object (baselines.py)
        return _baselines().batch_sizes(cfg)
    if cfg.model in DIFFUSION_MODELS:
        return {"first_stage.batch_size": cfg.first_stage.batch_size, "stages.batch_size": cfg.stages.batch_size}
    return {"vae.batch_size": cfg.vae.batch_size}


# What stage 2 alone reads (train_step, trainable, optimizers above; the MCL options except those that shape the
# critic and heads, whose weights a fork copies): two runs differing only here train the first stage and stage 1
# bit for bit at one thread count (measured on the cpu-long grid's MDDiff and lambda_MCL = 0 arms, --threads 1:
# 11 first-stage and 71 stage-1 logged losses equal at each of 3 seeds, 2026-12-07; tests/studies/
# test_disentangle.py checks a fork against a fresh run). Another thread count reorders float sums: runs drift.
_STAGE2_FIELDS = ("stages.stage2_steps", "stages.base_lr2", "stages.warmup2", "stages.lambda_recon",
                  "stages.lambda_mcl", "stages.mcl_z", "stages.mcl_pairing", "stages.freeze_decoder")
_MCL_SHAPE = ("critic", "critic_hidden", "critic_input", "proj_dim", "proj_layernorm")


def fork_fields(cfg: RunConfig) -> dict[str, tuple[str, ...]]:
    """``{phase: config keys}`` that no earlier phase reads (``mcl train --fork-from``,
    :func:`mclcore.train.loop.fork_run`): the diffusion models' stage-2 schedule, MDDiff's MCL weight and options.
    The VAEs (one phase) and the baselines list none."""
    if cfg.model not in DIFFUSION_MODELS:
        return {}
    mcl = tuple(f"mcl.{f.name}" for f in dataclasses.fields(cfg.mcl) if f.name not in _MCL_SHAPE)
    return {"stage2": _STAGE2_FIELDS + (mcl if cfg.model == "mddiff" else ())}


# ------------------------------------------------------------------------------------------------------ data
def load_dataset(cfg: RunConfig):
    """The dataset of ``cfg.data``: the real file at ``data_path``, the procedural twin otherwise."""
    from mclcore.data import get_dataset

    if cfg.data.data_path is not None and not os.path.exists(cfg.data.data_path):
        raise FileNotFoundError(f"--data-path: no such file or folder {cfg.data.data_path!r}")
    return get_dataset(cfg.data.dataset, path=cfg.data.data_path)


class Batches:
    """Deterministic training batches: the batch of a step depends only on the step's numpy stream ``rng``
    (``ctx.rng`` of the loop, seeded by (seed, phase, step)).

    ``pool > 0`` renders that many grid points once (seeded by ``(seed, 99)``) and draws batches from them."""

    def __init__(self, dataset, cfg: RunConfig, device: torch.device):
        self.dataset, self.device, self.seed = dataset, device, cfg.seed
        self.pool = None
        if cfg.data.pool:
            from tqdm import tqdm

            idx = dataset.sample_index(cfg.data.pool, np.random.default_rng([cfg.seed, 99]))
            chunks = [dataset.observations_at(idx[i:i + 256])
                      for i in tqdm(range(0, idx.size, 256), desc="render pool", leave=False)]
            self.pool = np.concatenate(chunks)                          # (pool, 64, 64, 3) uint8

    def get(self, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
        from mclcore.data import to_float_nchw

        if self.pool is not None:
            obs = self.pool[rng.integers(0, len(self.pool), size=batch_size)]
        else:
            obs = self.dataset.observations_at(self.dataset.sample_index(batch_size, rng))
        return to_float_nchw(obs).to(self.device)                       # (B, 3, 64, 64) in [0, 1]


@dataclass
class StudyData:
    """What :func:`setup` gives the loop: the dataset and its deterministic batches, and (MDDiff) the MCL term's
    weight and diagnostics."""
    dataset: object
    batches: Batches
    device: torch.device
    mcl: MCLMonitor | None = None
    perceptual: torch.nn.Module | None = None


def setup(model, cfg: RunConfig, device: torch.device) -> StudyData:
    dataset = load_dataset(cfg)
    monitor = MCLMonitor(cfg.stages.lambda_mcl, cfg.mcl) if cfg.model == "mddiff" else None
    perceptual = None
    fs = cfg.first_stage
    if cfg.model in DIFFUSION_MODELS and fs.perceptual_weight > 0:
        # LPIPS of the first stage's perceptual loss: frozen, kept out of the model (not checkpointed, not trained)
        from mclcore.metrics.lpips import load_lpips

        perceptual = load_lpips(fs.perceptual_net, fs.perceptual_backbone, fs.perceptual_weights, device,
                                what="first_stage.perceptual").to(device)
    return StudyData(dataset, Batches(dataset, cfg, device), device, monitor, perceptual)


def extra_state(data: StudyData) -> dict:
    """What a checkpoint keeps beyond the weights: the MCL weight's last scale and the diagnostics so far."""
    return {"mcl": data.mcl.state_dict() if data.mcl is not None else None}


def load_extra_state(data: StudyData, state: dict | None) -> None:
    if data.mcl is not None and state:
        data.mcl.load_state_dict(state.get("mcl"))


def _baselines():
    from mclcore.studies.disentangle import baselines   # imports this module: imported on first use

    return baselines


# ---------------------------------------------------------------------------------------------------- phases
def trainable(model, cfg: RunConfig, phase: str) -> list[torch.nn.Parameter]:
    """Set requires_grad for ``phase`` and return the parameters its (first) optimiser updates."""
    for p in model.parameters():
        p.requires_grad_(False)
    if phase == "first_stage":
        mods = [model.first_stage]
    elif phase == "stage1":
        mods = [model.concept_encoder, model.tokenizer, model.unet]
    elif phase == "stage2":
        mods = [model.concept_encoder, model.tokenizer, model.unet]
        if cfg.model == "mddiff":   # the MCL critic + heads, and the u-decoder (through L_recon and L_MCL) ...
            mods += [model.mcl]
            if not cfg.stages.freeze_decoder:   # ... unless frozen as in the public MDDiff code
                mods += [model.first_stage.decoder, model.first_stage.post_quant_conv]
    else:
        mods = [model]
    params = []
    for m in mods:
        for p in m.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def optimizers(model, cfg: RunConfig, phase: str, params) -> tuple[list, list]:
    """(optimizers, schedulers) of a phase: Adam (betas 0.5/0.9) for the first stage (+ the PatchGAN's Adam, same
    settings, second in the list, with ``first_stage.adversarial_weight > 0``); AdamW at base_lr x batch
    with a linear warm-up for the two diffusion stages (App. D.4); Adam for the VAEs (+ the FactorVAE
    discriminator's Adam, betas 0.5/0.9, second in the list)."""
    if phase == "first_stage":
        opts = [torch.optim.Adam(params, lr=cfg.first_stage.lr, betas=(0.5, 0.9))]
        disc = getattr(model, "first_stage_disc", None)
        if disc is not None:
            for p in disc.parameters():      # trainable() froze everything outside the first stage
                p.requires_grad_(True)
            opts.append(torch.optim.Adam(disc.parameters(), lr=cfg.first_stage.lr, betas=(0.5, 0.9)))
        return opts, []
    if phase in ("stage1", "stage2"):
        st = cfg.stages
        base, warm = (st.base_lr1, st.warmup1) if phase == "stage1" else (st.base_lr2, st.warmup2)
        opt = torch.optim.AdamW(params, lr=base * st.batch_size, weight_decay=st.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warm)))
        return [opt], [sched]
    v = cfg.vae
    if hasattr(model, "param_groups"):     # qlae: AdamW, weight decay on encoder and decoder, not the codebooks
        return [torch.optim.AdamW(model.param_groups(), lr=v.lr, betas=(0.9, 0.999))], []
    vae_params = [p for p in model.vae_parameters() if p.requires_grad]
    opts = [torch.optim.Adam(vae_params, lr=v.lr, betas=(0.9, 0.999))]
    if model.discriminator is not None:
        opts.append(torch.optim.Adam(model.discriminator.parameters(), lr=v.disc_lr, betas=(0.5, 0.9)))
    return opts, []


def autocast(device: torch.device, cfg: RunConfig):
    """bf16 autocast on CUDA when ``cfg.amp`` and the card supports it; otherwise fp32 (CPU always)."""
    if device.type == "cuda" and cfg.amp and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def train_step(model, cfg: RunConfig, phase: str, step: int, data: StudyData, ctx: loop.StepContext) -> dict:
    """The forward pass of one step: ``{"loss": scalar, logs...}`` (the loop does backward and the update)."""
    device = data.device
    if phase == "first_stage":
        x = data.batches.get(ctx.rng, ctx.per_rank(cfg.first_stage.batch_size))    # (B, 3, 64, 64), B per rank
        fs = cfg.first_stage
        with autocast(device, cfg):                                         # unconditional path (u = None)
            return model.first_stage.loss(x, perceptual=data.perceptual, perceptual_weight=fs.perceptual_weight,
                                          discriminator=getattr(model, "first_stage_disc", None),
                                          adversarial_weight=fs.adversarial_weight)
    if phase in ("stage1", "stage2"):
        st = cfg.stages
        x = data.batches.get(ctx.rng, ctx.per_rank(st.batch_size))          # (B, 3, 64, 64), B per rank
        extra, logs = {}, {}
        if phase == "stage2" and cfg.model == "mddiff":
            extra = dict(lambda_recon=st.lambda_recon, lambda_mcl=st.lambda_mcl, mcl_z=st.mcl_z,
                         mcl_pairing=st.mcl_pairing, mcl_weight=data.mcl.weigher(step, model.mcl, logs))
        with autocast(device, cfg):
            out = model.losses(x, generator=ctx.generator, **extra)         # Eq. (19) terms
        out.update(logs)                                                    # MCL diagnostics on measured steps
        return out
    x = data.batches.get(ctx.rng, ctx.per_rank(cfg.vae.batch_size))
    with autocast(device, cfg):
        return model.losses(x, generator=ctx.generator)


def after_update(model, cfg: RunConfig, phase: str, step: int, data: StudyData, ctx: loop.StepContext, out: dict,
                 opts: list) -> dict:
    """FactorVAE's discriminator step, after the VAE's update, on the step's codes and the same generator; the
    first stage's PatchGAN step (hinge loss on the step's images and detached reconstructions)."""
    if phase == "first_stage" and getattr(model, "first_stage_disc", None) is not None:
        from mclcore.models.autoencoder import hinge_d_loss

        with autocast(data.device, cfg):
            disc = model.first_stage_disc
            d_loss = hinge_d_loss(disc(out["x_real"]), disc(out["x_rec"]))
        opts[1].zero_grad(set_to_none=True)
        d_loss.backward()
        opts[1].step()
        return {"disc": d_loss.detach()}
    if phase != "vae" or model.discriminator is None:
        return {}
    with autocast(data.device, cfg):
        d_loss = model.discriminator_loss(out["z"], generator=ctx.generator)
    opts[1].zero_grad(set_to_none=True)
    d_loss.backward()
    opts[1].step()
    return {"disc": d_loss.detach()}


def end_phase(model, cfg: RunConfig, phase: str, data: StudyData) -> None:
    """After the first stage: LDM's scale_by_std (unit-variance diffusion latents) on a fixed batch of 256, the
    batch a step ``steps`` of the phase would draw."""
    if phase == "first_stage":
        rng = np.random.default_rng([cfg.seed, PHASES.index(phase), cfg.first_stage.steps])
        model.first_stage.set_scale_from(data.batches.get(rng, 256))


# --------------------------------------------------------------------------------------------------- training
def train(cfg: RunConfig, out_dir: str, **kw):
    """Train ``cfg`` into ``out_dir`` (checkpoint.pt, config.json, tb/; MDDiff: mcl_diagnostics.json) with
    :func:`mclcore.train.loop.train`; ``kw``: its ``resume``, ``stop_after``, ``progress``, ``log``. Returns
    ``(model, finished)``."""
    if cfg.model in BASELINE_MODELS:        # DisDiff, InfoGAN-CR: their own study object (baselines.py)
        return _baselines().train(cfg, out_dir, **kw)
    model, _, data, finished = loop.train(sys.modules[__name__], cfg, out_dir, label=cfg.model, **kw)
    _write_diagnostics(data, out_dir)
    return model, finished


def _write_diagnostics(data: StudyData, out_dir: str) -> None:
    """MDDiff: ``<out_dir>/mcl_diagnostics.json`` holds the measurements so far (also after a stop: they are
    restored on resume; [] before any, which also replaces the file of an earlier run retrained in the folder).
    Rank 0's under torchrun (its shard's measurements), written by it alone."""
    if data.mcl is not None and out_dir is not None and distributed.context().is_main:
        data.mcl.write(out_dir)
