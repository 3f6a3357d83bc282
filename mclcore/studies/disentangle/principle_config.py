"""Config section ``principles`` of the four principle models of issue #23 on images (``compvae``, ``mmdvae``,
``qlae``, ``intervae``; :mod:`mclcore.models.image_principles`). They are VAE-baseline kinds: the ``vae`` section
gives their sizes (``latent_dim``, ``hidden``, ``fc``), steps, batch and learning rate, exactly as beta-VAE's; this
section holds only what each principle adds. Why each default: the model module's doc and
experiments/disentanglement/README.md, "Principles side by side (image CPU preset)"."""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PRINCIPLE_MODELS", "PrincipleConfig", "validate_principles"]

PRINCIPLE_MODELS = ("compvae", "mmdvae", "qlae", "intervae")


@dataclass
class PrincipleConfig:
    """Options of the principle models (each used by one model only).

    compvae: ``comp_lambda`` (0.1: the synthetic model's default; at a beta-VAE decoder after 800 cpu-smoke steps C
    was 1,845, so 0.1 C ~ 185 nats ~ 2.4% of the reconstruction term), ``comp_beta`` (KL weight, 1: a plain VAE
    host), ``comp_rows`` (rows of each batch the Jacobian is taken at, 8), ``comp_pool`` (average-pool factor of the
    logits before the Jacobian, 1 = all 12,288 outputs: pooling by 4 saved only ~20% of a step, 483 vs 386 ms at the
    cpu-smoke sizes, measured 2026-12-06).
    mmdvae: ``mmd_weight`` (100), ``mmd_rows`` (128; 0: the whole batch).
    qlae: ``qlae_values`` (10 per dimension), ``qlae_range`` (codebook initialised on [-r, r], 0.5), ``quant_weight``
    and ``commit_weight`` (10 each, not the paper's 0.01: at 0.01 the encoder ran away from the codebook, commitment
    RMS per dimension 10.7 after 800 cpu-smoke steps against a code spacing of 0.11; at 1 it was 0.15, at 10 0.041,
    within half a spacing; MPI3D twin, seed 0, 2026-12-06; README "Principles side by side"),
    ``qlae_weight_decay`` (AdamW on encoder and decoder, 0.1: the paper's).
    intervae: ``inter_prob`` (probability of an intervention per step, 0.5)."""
    comp_lambda: float = 0.1
    comp_beta: float = 1.0
    comp_rows: int = 8
    comp_pool: int = 1
    mmd_weight: float = 100.0
    mmd_rows: int = 128
    qlae_values: int = 10
    qlae_range: float = 0.5
    quant_weight: float = 10.0
    commit_weight: float = 10.0
    qlae_weight_decay: float = 0.1
    inter_prob: float = 0.5


def _number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def validate_principles(cfg) -> None:
    """ValueError naming the first bad ``principles.*`` option."""
    p = cfg.principles
    for name in ("comp_lambda", "comp_beta", "mmd_weight", "quant_weight", "commit_weight", "qlae_weight_decay"):
        v = getattr(p, name)
        if not _number(v) or v < 0:
            raise ValueError(f"principles.{name}: expected a finite number >= 0, got {v!r}")
    if not _number(p.qlae_range) or p.qlae_range <= 0:
        raise ValueError(f"principles.qlae_range: expected a finite number > 0, got {p.qlae_range!r}")
    if not _number(p.inter_prob) or not 0 <= p.inter_prob <= 1:
        raise ValueError(f"principles.inter_prob: expected a probability in [0, 1], got {p.inter_prob!r}")
    for name, lo in (("comp_rows", 1), ("comp_pool", 1), ("qlae_values", 2)):
        v = getattr(p, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"principles.{name}: expected an integer >= {lo}, got {v!r}")
    if isinstance(p.mmd_rows, bool) or not isinstance(p.mmd_rows, int) or p.mmd_rows < 0 or p.mmd_rows == 1:
        raise ValueError(f"principles.mmd_rows: expected 0 (the whole batch) or an integer >= 2, got {p.mmd_rows!r}")
    if 64 % p.comp_pool:
        raise ValueError(f"principles.comp_pool: expected a divisor of 64 (the image side), got {p.comp_pool!r}")
