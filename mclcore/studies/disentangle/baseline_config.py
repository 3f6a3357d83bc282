"""Config sections of the Table 1 baselines added after the study's first models: DisDiff (section ``disdiff``) and
InfoGAN-CR (section ``infogan``). They live here, not in ``config.py``, so the study adapter
(:mod:`mclcore.studies.disentangle.baselines`) and its options stay in files of their own; ``config.py`` nests the
two sections in :class:`~mclcore.studies.disentangle.config.RunConfig` and calls :func:`validate_baselines`.

Budgets are shared with the existing models so every row of Table 1 sees the same optimisation budget:

* DisDiff: the diffusion models' sections -- ``first_stage`` (the same VQ autoencoder), ``diffusion`` (U-Net,
  Encoder4 and schedule sizes; ``diffusion.num_concepts`` unless ``disdiff.num_concepts`` is set) and ``stages``
  (``stage1``: pretraining the unconditional DPM for ``stage1_steps`` at base_lr1; ``stage2``: DisDiff's encoder and
  gradient-field decoder for ``stage2_steps`` at base_lr2, the same batch, warm-ups and AdamW);
* InfoGAN-CR: the VAE baselines' section -- ``vae.steps`` at ``vae.batch_size``, ``vae.latent_dim`` codes, widths
  ``vae.hidden`` / ``vae.fc`` (the same network sizes as the VAEs' Encoder4) -- plus the GAN options below.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BASELINE_MODELS", "DisDiffConfig", "InfoGANConfig", "validate_baselines"]

BASELINE_MODELS = ("disdiff", "infogan_cr")


@dataclass
class DisDiffConfig:
    """DisDiff (:mod:`mclcore.models.disdiff`; defaults from the public DisDiff code, see there).

    ``num_concepts``: N concept representations (None: ``diffusion.num_concepts``, the paper's N = 20; cpu-smoke 6,
    DisDiff's own Shapes3D value, because the decoder runs once per concept: at N = 20 a cpu-smoke stage-2 step took
    ~29 s on one loaded core against ~6 s at N = 6). ``concept_dim``: width of each (32). ``dis_weight`` (1.0),
    ``dis_loss_type`` (``"IM"``: per-sample weight from the image distance, or ``"Z"``: latent distance): the
    disentangling loss. ``pca_samples``: training images the per-concept PCA(1) of the scored representation is fit
    on at the end of training (their evaluation fits it on the whole dataset)."""
    num_concepts: int | None = None
    concept_dim: int = 32
    dis_weight: float = 1.0
    dis_loss_type: str = "IM"
    pca_samples: int = 10000


@dataclass
class InfoGANConfig:
    """InfoGAN-CR (:mod:`mclcore.models.infogan`; defaults from the public InfoGAN-CR dSprites config).

    ``noise_dim`` (5), ``q_hidden`` (128), ``info_weight`` (0.05, generator and discriminator), ``cr_weight`` (2.0
    once on), ``cr_start``: the fraction of ``vae.steps`` after which the contrastive regulariser is switched on
    and the CR discriminator re-initialised (theirs 288,000 of 322,560 batches = 0.893); ``g_lr``, ``d_lr``,
    ``cr_lr``: Adam learning rates (betas 0.5/0.999) of the generator, discriminator + Q, CR discriminator."""
    noise_dim: int = 5
    q_hidden: int = 128
    info_weight: float = 0.05
    cr_weight: float = 2.0
    cr_start: float = 0.893
    g_lr: float = 1e-3
    d_lr: float = 2e-3
    cr_lr: float = 2e-3


def validate_baselines(cfg) -> None:
    """ValueError naming the first bad ``disdiff.*`` / ``infogan.*`` option of a run config."""
    from mclcore.models.disdiff import DIS_LOSS_TYPES

    d, g = cfg.disdiff, cfg.infogan
    if d.num_concepts is not None and (not isinstance(d.num_concepts, int) or d.num_concepts < 1):
        raise ValueError(f"disdiff.num_concepts: expected an int >= 1 or none, got {d.num_concepts!r}")
    if not isinstance(d.concept_dim, int) or d.concept_dim < 1:
        raise ValueError(f"disdiff.concept_dim: expected an int >= 1, got {d.concept_dim!r}")
    if d.dis_loss_type not in DIS_LOSS_TYPES:
        raise ValueError(f"disdiff.dis_loss_type: expected one of {DIS_LOSS_TYPES}, got {d.dis_loss_type!r}")
    if d.dis_weight < 0:
        raise ValueError(f"disdiff.dis_weight: expected >= 0, got {d.dis_weight!r}")
    if not isinstance(d.pca_samples, int) or d.pca_samples < 2:
        raise ValueError(f"disdiff.pca_samples: expected an int >= 2 (a PCA needs two points), got {d.pca_samples!r}")
    if cfg.model == "infogan_cr" and cfg.vae.latent_dim < 2:
        raise ValueError(f"vae.latent_dim: InfoGAN-CR's CR discriminator needs >= 2 codes, got {cfg.vae.latent_dim}")
    if not 0 <= g.cr_start <= 1:
        raise ValueError(f"infogan.cr_start: expected a fraction of vae.steps in [0, 1], got {g.cr_start!r}")
    for name in ("noise_dim", "q_hidden"):
        v = getattr(g, name)
        if not isinstance(v, int) or v < (0 if name == "noise_dim" else 1):
            raise ValueError(f"infogan.{name}: expected an int >= {0 if name == 'noise_dim' else 1}, got {v!r}")
    for name in ("info_weight", "cr_weight"):
        if getattr(g, name) < 0:
            raise ValueError(f"infogan.{name}: expected >= 0, got {getattr(g, name)!r}")
    for name in ("g_lr", "d_lr", "cr_lr"):
        if not getattr(g, name) > 0:
            raise ValueError(f"infogan.{name}: expected > 0, got {getattr(g, name)!r}")
