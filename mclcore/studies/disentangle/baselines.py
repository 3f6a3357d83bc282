"""The Table 1 baselines DisDiff and InfoGAN-CR as a study object of :mod:`mclcore.train.loop`, beside the main
study object :mod:`mclcore.studies.disentangle.run` (which hands ``disdiff`` / ``infogan_cr`` runs to this module:
:func:`run.train`, :func:`run.phases`, :func:`run.build_model`, :func:`run.batch_sizes`), and their evaluation
hooks (:func:`generate_samples`, :func:`reconstruct`, called by :mod:`.evaluate`).

* ``disdiff`` (:mod:`mclcore.models.disdiff`): phases ``first_stage -> stage1 -> stage2`` with the diffusion
  models' step counts, batches and optimisers. ``first_stage`` is exactly EncDiff's (every hook delegates to
  :mod:`.run`: the VQ autoencoder, its optional perceptual/adversarial losses, ``scale_by_std``); ``stage1``
  pretrains the unconditional DPM (U-Net + its constant context token; AdamW at base_lr1 x batch with warm-up);
  ``stage2`` trains DisDiff's encoder and gradient-field decoder with the DPM frozen (AdamW at base_lr2 x batch),
  and at its end fits the per-concept PCA of the scored representation on ``disdiff.pca_samples`` training images
  (a fixed draw, seeded like :func:`run.end_phase`'s batch).
* ``infogan_cr`` (:mod:`mclcore.models.infogan`): one phase ``gan`` of ``vae.steps`` steps at ``vae.batch_size``:
  the generator's Adam is the loop's first optimiser; :func:`after_update` steps the discriminator + Q and the CR
  discriminator on the step's samples, and at the schedule's switch (``infogan.cr_start`` of the steps)
  re-initialises the CR discriminator and its Adam state (seeded by the run's seed).

Randomness: batches from ``ctx.rng``, everything else from ``ctx.generator`` (seeded by (seed, phase, step)), so
a resumed run equals an uninterrupted one. ``PHASES`` extends :data:`run.PHASES` at its end, so the shared phases
keep their indices (and seeds).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from mclcore.studies.disentangle import run as base
from mclcore.studies.disentangle.baseline_config import BASELINE_MODELS
from mclcore.train import loop

__all__ = ["PHASES", "BASELINE_MODELS", "build_model", "phases", "batch_sizes", "setup", "trainable", "optimizers",
           "train_step", "after_update", "end_phase", "train", "generate_samples", "reconstruct", "cr_start_step"]

PHASES = base.PHASES + ("gan",)     # appended: the shared phases keep their seeds; never reorder


def _check(cfg) -> None:
    if cfg.model not in BASELINE_MODELS:
        raise ValueError(f"model: expected one of {BASELINE_MODELS} here, got {cfg.model!r}")


def disdiff_concepts(cfg) -> int:
    return cfg.disdiff.num_concepts or cfg.diffusion.num_concepts


def build_model(cfg) -> torch.nn.Module:
    """DisDiff on the diffusion models' first stage, U-Net and Encoder4 sizes, or InfoGAN-CR at the VAEs' sizes."""
    _check(cfg)
    if cfg.model == "infogan_cr":
        from mclcore.models.infogan import InfoGANCR

        v, g = cfg.vae, cfg.infogan
        return InfoGANCR(v.latent_dim, g.noise_dim, v.hidden, v.fc, g.q_hidden, g.info_weight, g.cr_weight)
    from mclcore.models.autoencoder import VQAutoencoder
    from mclcore.models.disdiff import DisDiff

    d, fs, dd = cfg.diffusion, cfg.first_stage, cfg.disdiff
    ae = VQAutoencoder(fs.ch, fs.ch_mult, fs.num_res_blocks, 3, fs.n_embed, 0, fs.u_channels)   # EncDiff's
    diffusion = dict(num_timesteps=d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end, schedule=d.schedule)
    if hasattr(d, "loss"):
        diffusion["loss"] = d.loss
    model = DisDiff(ae, num_concepts=disdiff_concepts(cfg), concept_dim=dd.concept_dim,
                    encoder_hidden=d.encoder_hidden, encoder_fc=d.encoder_fc, context_dim=d.token_dim,
                    unet=dict(channels=d.unet_channels, channel_mult=d.unet_mult, num_res_blocks=d.unet_res_blocks,
                              attention_ds=d.attention_ds, heads=d.heads),
                    diffusion=diffusion, dis_weight=dd.dis_weight, dis_loss_type=dd.dis_loss_type)
    if getattr(fs, "adversarial_weight", 0) > 0:      # the first stage's PatchGAN, as run.build_model adds it
        from mclcore.models.autoencoder import PatchDiscriminator

        model.first_stage_disc = PatchDiscriminator(3, fs.disc_ndf, fs.disc_layers)
    return model


def phases(cfg) -> list[tuple[str, int]]:
    _check(cfg)
    if cfg.model == "disdiff":
        return [("first_stage", cfg.first_stage.steps), ("stage1", cfg.stages.stage1_steps),
                ("stage2", cfg.stages.stage2_steps)]
    return [("gan", cfg.vae.steps)]


def batch_sizes(cfg) -> dict[str, int]:
    if cfg.model == "disdiff":
        return {"first_stage.batch_size": cfg.first_stage.batch_size, "stages.batch_size": cfg.stages.batch_size}
    return {"vae.batch_size": cfg.vae.batch_size}


def setup(model, cfg, device):
    """:func:`run.setup`'s data (dataset, deterministic batches); DisDiff also gets the first stage's LPIPS when
    ``first_stage.perceptual_weight > 0`` (run.setup loads it for its own diffusion models only)."""
    data = base.setup(model, cfg, device)
    fs = cfg.first_stage
    if cfg.model == "disdiff" and getattr(fs, "perceptual_weight", 0) > 0 and data.perceptual is None:
        from mclcore.metrics.lpips import load_lpips

        data.perceptual = load_lpips(fs.perceptual_net, fs.perceptual_backbone, fs.perceptual_weights, device,
                                     what="first_stage.perceptual").to(device)
    return data


def _enable(params) -> list:
    out = []
    for p in params:
        p.requires_grad_(True)
        out.append(p)
    return out


def trainable(model, cfg, phase: str) -> list[torch.nn.Parameter]:
    if phase == "first_stage":
        return base.trainable(model, cfg, phase)
    for p in model.parameters():
        p.requires_grad_(False)
    if phase == "stage1":                       # the DPM to be frozen later
        return _enable([*model.dpm.parameters(), model.null_context])
    if phase == "stage2":                       # DisDiff: encoder + gradient-field decoder (their cond_stage_trainable)
        return _enable([*model.decoder.parameters(), *model.concept_encoder.parameters()])
    return _enable(model.generator.parameters())    # gan: the generator (opts[0]); discriminators in optimizers()


def optimizers(model, cfg, phase: str, params) -> tuple[list, list]:
    """The diffusion phases: :func:`run.optimizers` (Adam for the first stage; AdamW at base_lr x batch with
    warm-up). ``gan``: Adam (betas 0.5/0.999) for the generator, then the discriminator + Q, then the CR
    discriminator (their learning rates: ``infogan.*_lr``)."""
    if phase != "gan":
        return base.optimizers(model, cfg, phase, params)
    g = cfg.infogan
    d_params = _enable(model.discriminator.parameters())
    cr_params = _enable(model.cr_discriminator.parameters())
    return [torch.optim.Adam(params, lr=g.g_lr, betas=(0.5, 0.999)),
            torch.optim.Adam(d_params, lr=g.d_lr, betas=(0.5, 0.999)),
            torch.optim.Adam(cr_params, lr=g.cr_lr, betas=(0.5, 0.999))], []


def cr_start_step(cfg) -> int:
    """The first ``gan`` step whose generator loss includes the contrastive regulariser."""
    return int(round(cfg.infogan.cr_start * cfg.vae.steps))


def train_step(model, cfg, phase: str, step: int, data, ctx: loop.StepContext) -> dict:
    if phase == "first_stage":
        return base.train_step(model, cfg, phase, step, data, ctx)
    if phase in ("stage1", "stage2"):
        x = data.batches.get(ctx.rng, ctx.per_rank(cfg.stages.batch_size))     # (B, 3, 64, 64)
        with base.autocast(data.device, cfg):
            if phase == "stage1":
                return model.pretrain_losses(x, generator=ctx.generator)
            return model.losses(x, generator=ctx.generator)
    x = data.batches.get(ctx.rng, ctx.per_rank(cfg.vae.batch_size))
    with base.autocast(data.device, cfg):
        out = model.generator_losses(len(x), cr_on=step >= cr_start_step(cfg), generator=ctx.generator)
    out["x"] = x
    return out


def _reset_cr_discriminator(model, cfg, opt) -> None:
    """Their schedule re-initialises the CR discriminator and its optimiser when the regulariser switches on;
    seeded by the run's seed so a resumed run re-initialises identically."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, PHASES.index("gan"), 7]).generate_state(1)[0]))
        for m in model.cr_discriminator.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    opt.state.clear()


def after_update(model, cfg, phase: str, step: int, data, ctx: loop.StepContext, out: dict, opts: list) -> dict:
    if phase == "first_stage":
        return base.after_update(model, cfg, phase, step, data, ctx, out, opts)
    if phase != "gan":
        return {}
    with base.autocast(data.device, cfg):
        d_loss = model.discriminator_loss(out["x"], out["fake"], out["codes"])
    opts[1].zero_grad(set_to_none=True)         # also drops what the generator's backward left on these weights
    d_loss.backward()
    opts[1].step()
    with base.autocast(data.device, cfg):
        cr_loss, cr_acc = model.cr_loss(out["pair_a"], out["pair_b"], out["pair_label"])
    opts[2].zero_grad(set_to_none=True)
    cr_loss.backward()
    opts[2].step()
    if step + 1 == cr_start_step(cfg) and cfg.infogan.cr_weight:
        _reset_cr_discriminator(model, cfg, opts[2])
    return {"disc": d_loss.detach(), "crd": cr_loss.detach(), "crd_acc": cr_acc}


def end_phase(model, cfg, phase: str, data) -> None:
    """first_stage: :func:`run.end_phase` (scale_by_std). stage2: DisDiff's PCA on a fixed draw of
    ``disdiff.pca_samples`` training images."""
    if phase == "first_stage":
        base.end_phase(model, cfg, phase, data)
    elif phase == "stage2":
        rng = np.random.default_rng([cfg.seed, PHASES.index(phase), cfg.stages.stage2_steps])
        was = model.training
        model.eval()
        model.fit_pca(data.batches.get(rng, cfg.disdiff.pca_samples))
        model.train(was)


def train(cfg, out_dir: str, **kw):
    """Train a ``disdiff`` / ``infogan_cr`` run with :func:`mclcore.train.loop.train`; ``(model, finished)``."""
    _check(cfg)
    model, _, _, finished = loop.train(sys.modules[__name__], cfg, out_dir, label=cfg.model, **kw)
    return model, finished


# ------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def generate_samples(model, cfg, cond_images: torch.Tensor, device, seed: int, batch_size: int = 250) -> torch.Tensor:
    """Samples for FID, (N, 3, 64, 64) in [0, 1] on the CPU. DisDiff: DDIM guided by the full codes of other real
    images (as EncDiff's protocol); InfoGAN-CR: G(z, c) with noise and codes from their U(-1, 1) priors."""
    _check(cfg)
    g = torch.Generator(device=device).manual_seed(seed + 777)
    outs = []
    for i in range(0, len(cond_images), batch_size):
        c = cond_images[i:i + batch_size].to(device)
        with base.autocast(device, cfg):
            if cfg.model == "disdiff":
                x = model.generate_codes(model.codes(c), num_steps=cfg.eval.ddim_steps, generator=g)
            else:
                x = model.render(*model.sample_latents(len(c), g, device))
        outs.append(x.float().cpu())
    return torch.cat(outs)


@torch.no_grad()
def reconstruct(model, cfg, x: torch.Tensor, device, seed: int) -> torch.Tensor:
    """Reconstructions in [0, 1]: DisDiff generates from noise guided by the codes of x; InfoGAN-CR (no encoder
    for the noise) decodes Q's code estimate with the noise at its prior mean."""
    _check(cfg)
    g = torch.Generator(device=device).manual_seed(seed + 778)
    with base.autocast(device, cfg):
        if cfg.model == "disdiff":
            return model.reconstruct(x, num_steps=cfg.eval.ddim_steps, generator=g).float()
        return model.decode(model(x)).float()
