"""The typed config of a concept-disentanglement run (paper section 5.2, App. D.2/D.4) and its presets.

One dataclass per component, each documented once; the MCL options are the library's
:class:`mclcore.losses.mcl.MCLConfig` (section ``mcl``) with this study's defaults: Algorithm 2's image critic
(only ``critic_hidden[0]`` is used), tau 0.1, clip 10, ``create_graph`` on, projection to 128 dims.

Precedence: defaults <- ``PRESETS[preset]`` (merged with :func:`mclcore.train.config.merge`) <- the per-dataset and
per-model rules of :func:`build_config` (lambda_MCL of App. D.4, the paper's epoch-based step counts, the
pre-rendered Cars3D pool, the beta-TCVAE weight) <- ``--set a.b=v``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from mclcore.losses.mcl import MCLConfig
from mclcore.metrics.dci import DCI_MODELS
from mclcore.studies.disentangle.baseline_config import DisDiffConfig, InfoGANConfig, validate_baselines
from mclcore.studies.disentangle.principle_config import PRINCIPLE_MODELS, PrincipleConfig, validate_principles
from mclcore.train.config import check_numbers, merge

__all__ = ["MODELS", "DIFFUSION_MODELS", "DATASETS", "PRESETS", "DATASET_SIZES", "PAPER_LAMBDA_MCL", "DataConfig",
           "FirstStageConfig", "DiffusionModelConfig", "StagesConfig", "VAEConfig", "EvalConfig", "RunConfig",
           "study_mcl_config", "build_config", "validate", "run_dir_name"]

MODELS = ("mddiff", "encdiff", "betavae", "factorvae", "btcvae", "disdiff", "infogan_cr")   # the last two: baselines.py
MODELS += PRINCIPLE_MODELS      # compvae, mmdvae, qlae, intervae: VAE kinds (mclcore.models.image_principles)
DIFFUSION_MODELS = ("mddiff", "encdiff")
DATASETS = ("shapes3d", "mpi3d", "cars3d")
DATASET_SIZES = {"shapes3d": 480000, "mpi3d": 1036800, "cars3d": 17568}
# App. D.4: lambda_MCL = 1e-3 for Shapes3D and Cars3D, 1e-4 for MPI3D.
PAPER_LAMBDA_MCL = {"shapes3d": 1e-3, "cars3d": 1e-3, "mpi3d": 1e-4}


@dataclass
class DataConfig:
    """Which data. ``pool > 0`` renders/reads ``pool`` random grid points once and trains on them (slow
    renderers such as the Cars3D twin); ``0`` draws fresh grid points every step."""
    dataset: str = "shapes3d"
    data_path: str | None = None
    pool: int = 0


@dataclass
class FirstStageConfig:
    """VQ autoencoder 64x64x3 -> 3x16x16 (:class:`mclcore.models.autoencoder.VQAutoencoder`).

    Ours vs the public MDDiff code (the EncDiff fork that implements MCL: its ``configs/autoencoder/*_vq_4_16.yaml``
    and ``configs/mcl/*.yaml``, read 2026-12):

    * ``ch``: base width. Ours 128 (LDM's VQ-f4 width; what our runs used); theirs **32** (``ddconfig.ch: 32`` on
      every dataset), ``--set first_stage.ch=32``.
    * losses: ours L1 + MSE pixel loss + VQ loss. Theirs taming's ``VQLPIPSWithDiscriminator``: L1 + LPIPS-VGG
      perceptual loss (``perceptual_weight`` 1.0, taming's default) + a hinge-loss PatchGAN discriminator
      (``disc_weight: 0.75`` with taming's adaptive weight, ``disc_start: 0``, 3 layers, 64 filters) + codebook
      loss. Here both are options, off by default (0.0: the perceptual loss needs LPIPS weight files we cannot
      download, and without them the runs stay as they were):

      - ``perceptual_weight`` > 0 adds ``perceptual_weight x LPIPS(x, x_rec)`` with :mod:`mclcore.metrics.lpips`
        (``perceptual_net``: ``"vgg"`` as taming, or ``"alex"``), whose two weight files are
        ``perceptual_backbone`` (torchvision ImageNet weights) and ``perceptual_weights`` (LPIPS v0.1 linear
        layers): required when the weight is > 0;
      - ``adversarial_weight`` > 0 trains :class:`mclcore.models.autoencoder.PatchDiscriminator`
        (``disc_layers``, ``disc_ndf``; Adam at ``lr``, betas 0.5/0.9 as the autoencoder) with the hinge loss and
        adds ``adversarial_weight x w_adapt x (-mean D(x_rec))``, ``w_adapt`` = |grad L_rec| / (|grad L_G| + 1e-4)
        on the decoder's last convolution (taming's adaptive weight, clamped to [0, 1e4]); theirs 0.75.
    """
    ch: int = 128
    ch_mult: tuple = (1, 2, 4)
    num_res_blocks: int = 2
    n_embed: int = 2048
    u_channels: int = 32          # MDDiff: u-feature width per upsampling stage
    steps: int = 50000
    batch_size: int = 32
    lr: float = 1e-4              # Adam
    perceptual_weight: float = 0.0
    perceptual_net: str = "vgg"
    perceptual_backbone: str | None = None
    perceptual_weights: str | None = None
    adversarial_weight: float = 0.0
    disc_layers: int = 3
    disc_ndf: int = 64


@dataclass
class DiffusionModelConfig:
    """EncDiff/MDDiff backbone (App. D.4). UNet attention at downsampling factors ``attention_ds``.

    Ours vs the public MDDiff code (the EncDiff fork implementing MCL, ``configs/latent-diffusion/*-encdiff.yaml``
    and ``configs/mcl/*.yaml``):

    * ``loss``: the diffusion loss on the predicted noise, ``"mse"`` (ours: the DDPM "simple" loss of Ho et al.
      2020, what our runs used) or ``"l1"`` (theirs: ``loss_type: l1`` in every EncDiff/MCL config; LDM's
      ``get_loss``, mean absolute error).
    * ``attention_ds``: the downsampling factors of the 16x16 latent with a transformer block (cross-attention
      to the concept tokens; the middle block always has one). Ours (2, 4, 8) = 8x8, 4x4, 2x2 (our reading of
      App. D.4, "the three downsampled resolutions"); theirs ``attention_resolutions: [1, 2, 4]``, which LDM's
      UNet reads as factors ``ds`` starting at 1, i.e. **16x16**, 8x8 and 4x4 (the config's comment "8, 4, 2" does
      not match that code): ``--set diffusion.attention_ds=1,2,4``. Each entry must be a power of two the U-Net
      reaches (at most ``2 ** (len(unet_mult) - 1)``).
    """
    num_concepts: int = 20
    encoder_hidden: int = 128
    encoder_fc: int = 256
    token_hidden: tuple = (64, 128)
    token_dim: int = 16
    unet_channels: int = 64
    unet_mult: tuple = (1, 2, 4, 4)
    unet_res_blocks: int = 2
    attention_ds: tuple = (2, 4, 8)
    heads: int = 8
    timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0155
    schedule: str = "ldm_linear"
    loss: str = "mse"


@dataclass
class StagesConfig:
    """Two-stage optimisation (App. D.4). Learning rate = base_lr x batch_size (LDM/EncDiff convention).

    ``lambda_recon``, ``lambda_mcl``: the weights of Eq. (19) in stage 2 (MDDiff only); ``mcl_z``: what z is for
    MCL, ``"clean"`` z_0 = E(x) or ``"pred_x0"``; ``mcl_pairing``: z and u of the same image or not (both: see
    :mod:`mclcore.models.encdiff`). The MCL module's own options are the ``mcl`` section.

    ``freeze_decoder``: MDDiff's stage 2 trains the u-decoder (decoder + post_quant_conv) through L_recon and L_MCL
    (ours, False: App. D.4 makes the decoder the generator g(z, u) that MCL regularises). True keeps it frozen, as
    the public MDDiff code does (its ``instantiate_first_stage`` sets ``requires_grad = False`` on the whole first
    stage and ``configure_optimizers`` adds only the U-Net, the concept encoder and the MCL critic and heads): the
    MCL gradient then reaches only the concept encoder and tokenizer (through u), the critic and the heads."""
    batch_size: int = 128
    stage1_steps: int = 37500     # 10 epochs of Shapes3D at batch 128 (set per dataset by build_config)
    stage2_steps: int = 37500
    base_lr1: float = 2e-6
    base_lr2: float = 2e-7
    warmup1: int = 10000
    warmup2: int = 1000
    weight_decay: float = 0.01    # AdamW default
    lambda_recon: float = 0.1
    lambda_mcl: float = 1e-3      # 1e-4 for MPI3D (build_config)
    mcl_z: str = "clean"
    mcl_pairing: str = "paired"
    freeze_decoder: bool = False


@dataclass
class VAEConfig:
    """VAE baselines (:class:`mclcore.models.image_vae.ImageVAE`), disentanglement_lib-style training."""
    latent_dim: int = 20
    hidden: int = 128
    fc: int = 256
    beta: float = 4.0             # betavae: KL weight; btcvae: TC weight (our choice: 6, build_config)
    gamma: float = 10.0           # factorvae: TC weight
    disc_width: int = 1000
    disc_depth: int = 6
    steps: int = 300000
    batch_size: int = 64
    lr: float = 1e-4
    disc_lr: float = 1e-4


@dataclass
class EvalConfig:
    """Evaluation. ``sample_scale`` multiplies every sample count of the disentanglement_lib protocol.
    ``dci_model``: ``gbt`` (disentanglement_lib's gradient-boosted trees, the default since 2026-12-06; the runs in
    experiments/disentanglement/README.md were scored with ``hist_gbt``, whose tie-breaking gives a duplicated code
    no importance: see mclcore.metrics.dci) or ``hist_gbt`` (30x faster at the full protocol).

    Real FID / LPIPS need weight files (never downloaded; each field falls back to its environment variable):
    ``fid_weights`` (``$MCLCORE_FID_WEIGHTS``): pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or a
    TorchScript feature network, labelled as such); ``lpips_backbone`` (``$MCLCORE_LPIPS_BACKBONE``): torchvision's
    ImageNet weights of ``lpips_net`` (``"alex"``, the LPIPS default, or ``"vgg"``); ``lpips_weights``
    (``$MCLCORE_LPIPS_WEIGHTS``): LPIPS v0.1's linear layers for that net. Without them the columns are the
    labelled stand-ins ``fid_standin`` / ``lpips_proxy`` (:mod:`mclcore.studies.disentangle.fid`)."""
    sample_scale: float = 1.0
    dci_model: str = "gbt"
    ddim_steps: int = 50
    fid_samples: int = 10000
    recon_samples: int = 1000
    featnet_steps: int = 3000
    fid_weights: str | None = None
    lpips_net: str = "alex"
    lpips_backbone: str | None = None
    lpips_weights: str | None = None
    figures: bool = True


def study_mcl_config() -> MCLConfig:
    """MDDiff's MCL (App. D.4, Algorithm 2): the image critic (hidden width ``critic_hidden[0]``), tau 0.1,
    clip 10, trained through the mechanism gradient, heads to 128 dims; the rest at the library defaults."""
    return MCLConfig(critic="image", critic_hidden=(256,), tau=0.1, clip=10.0, create_graph=True, proj_dim=128,
                     multi_positive=False)


@dataclass
class RunConfig:
    """Everything a run needs; saved in every checkpoint and as ``config.json``; override with ``--set a.b=v``."""
    model: str = "mddiff"
    preset: str = "paper"
    seed: int = 0
    device: str = "auto"          # auto: cuda if available
    amp: bool = True              # autocast bf16 on CUDA where supported; CPU always fp32
    log_every: int = 50
    ckpt_every: int = 500
    data: DataConfig = field(default_factory=DataConfig)
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    diffusion: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    mcl: MCLConfig = field(default_factory=study_mcl_config)
    vae: VAEConfig = field(default_factory=VAEConfig)
    disdiff: DisDiffConfig = field(default_factory=DisDiffConfig)
    infogan: InfoGANConfig = field(default_factory=InfoGANConfig)
    principles: PrincipleConfig = field(default_factory=PrincipleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ------------------------------------------------------------------------------------------------------ presets
# paper: the App. D.4 sizes are the defaults (its step counts depend on the dataset: build_config).
# cpu-smoke: every network shrunk, protocol sample counts x 0.02, short schedules with larger learning rates (the
# paper's 2e-6 x 128 would not move tiny networks in a few hundred steps). Attention only at the one downsampled
# resolution (8x8) of a two-level U-Net: self-attention over the 256 positions of the 16x16 level would cost ~70% of
# a CPU step.
PRESETS: dict[str, dict] = {
    "cpu-smoke": {
        "log_every": 25, "ckpt_every": 100,
        "first_stage": {"ch": 8, "ch_mult": (1, 2, 2), "num_res_blocks": 1, "u_channels": 8, "steps": 200,
                        "batch_size": 16, "lr": 2e-3},
        "diffusion": {"encoder_hidden": 32, "encoder_fc": 128, "unet_channels": 32, "unet_mult": (1, 2),
                      "unet_res_blocks": 1, "attention_ds": (2,), "heads": 4},
        "stages": {"batch_size": 32, "stage1_steps": 150, "stage2_steps": 30, "base_lr1": 3e-5, "base_lr2": 1e-5,
                   "warmup1": 50, "warmup2": 10},
        "mcl": {"critic_hidden": (64,), "proj_dim": 64},
        "disdiff": {"num_concepts": 6, "pca_samples": 512},
        "vae": {"hidden": 32, "fc": 128, "disc_width": 256, "disc_depth": 3, "steps": 800, "batch_size": 32,
                "lr": 1e-3, "disc_lr": 1e-3},
        "eval": {"sample_scale": 0.02, "ddim_steps": 10, "fid_samples": 300, "recon_samples": 64,
                 "featnet_steps": 300},
    },
    "paper": {},
}


def _deep_merge(base: dict, over: dict) -> dict:
    return {**base, **{k: _deep_merge(base[k], v) if isinstance(v, dict) else v for k, v in over.items()}}


# cpu-long: cpu-smoke's networks, trained until EncDiff's concept encoder starts to learn, <= 60 min per run on one
# core (2-core VM, 2026-12-06): 1000/4000/600 steps on Shapes3D gave EncDiff FactorVAE 0.65, DCI 0.12 (cpu-smoke 0.44,
# 0.04; on two twins its codes collapsed, results/table1). Per step (2 runs on 2 cores): first stage 0.21 s, stage 1
# 0.27 s, stage 2 0.27 s EncDiff / 1.45 s MDDiff (MCL): MDDiff trains ~47 min. Eval at 5x cpu-smoke's sample counts.
PRESETS["cpu-long"] = _deep_merge(PRESETS["cpu-smoke"], {
    "log_every": 100, "ckpt_every": 500,
    "first_stage": {"steps": 1000},
    "stages": {"stage1_steps": 7000, "stage2_steps": 500, "warmup1": 200, "warmup2": 50},
    "vae": {"steps": 8000},
    "eval": {"sample_scale": 0.1},
})


def _check_choices(model: str, dataset: str, preset: str) -> None:
    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    if dataset not in DATASETS:
        raise ValueError(f"--dataset: expected one of {DATASETS}, got {dataset!r}")
    if preset not in PRESETS:
        raise ValueError(f"--preset: expected one of {tuple(PRESETS)}, got {preset!r}")


def build_config(model: str, dataset: str, preset: str, seed: int = 0, data_path: str | None = None) -> RunConfig:
    """The ``paper`` (GPU), ``cpu-smoke`` (minutes on 2 cores) or ``cpu-long`` (<= 60 min per run on one core)
    configuration of one run: ``PRESETS[preset]`` merged onto the defaults, then per-dataset and per-model rules."""
    _check_choices(model, dataset, preset)
    cfg = RunConfig(model=model, preset=preset, seed=seed, data=DataConfig(dataset, data_path))
    cfg = merge(cfg, PRESETS[preset], where=f"PRESETS[{preset!r}]")
    cfg.stages.lambda_mcl = PAPER_LAMBDA_MCL[dataset]
    if model == "btcvae":
        cfg.vae.beta = 6.0
    if preset == "paper":
        epoch = DATASET_SIZES[dataset] // cfg.stages.batch_size
        cfg.stages.stage1_steps = cfg.stages.stage2_steps = 10 * epoch          # 10 + 10 epochs (App. D.4)
    elif dataset == "cars3d":
        cfg.data.pool = 2048                                                    # the Cars3D twin renders slowly
    return cfg


def validate(cfg: RunConfig) -> RunConfig:
    """ValueError naming the first bad choice (model, dataset, preset, ``stages.mcl_z``, ``stages.mcl_pairing``,
    ``mcl.*``, relative MCL weighting without L_recon); returns cfg.

    Called on a config after ``--set`` so a mistake is reported before any training starts."""
    from mclcore.metrics.lpips import LPIPS_NETS
    from mclcore.models.diffusion import LOSSES
    from mclcore.models.encdiff import MCL_PAIRINGS, MCL_Z

    _check_choices(cfg.model, cfg.data.dataset, cfg.preset)
    st, fs = cfg.stages, cfg.first_stage
    for key, value, choices in (("stages.mcl_z", st.mcl_z, MCL_Z), ("stages.mcl_pairing", st.mcl_pairing, MCL_PAIRINGS),
                                ("eval.dci_model", cfg.eval.dci_model, DCI_MODELS),
                                ("diffusion.loss", cfg.diffusion.loss, LOSSES),
                                ("first_stage.perceptual_net", fs.perceptual_net, LPIPS_NETS),
                                ("eval.lpips_net", cfg.eval.lpips_net, LPIPS_NETS)):
        if value not in choices:
            raise ValueError(f"{key}: expected one of {choices}, got {value!r}")
    cfg.mcl.validate()
    if cfg.model == "mddiff" and cfg.mcl.weighting == "relative":
        if not cfg.stages.lambda_recon:
            raise ValueError("mcl.weighting: 'relative' weighs L_MCL against the host loss's gradient on the "
                             "u-decoder, which comes from L_recon; it needs stages.lambda_recon > 0")
        if not cfg.mcl.create_graph:
            raise ValueError("mcl.weighting: 'relative' needs mcl.create_graph=true (without it L_MCL has no "
                             "gradient on the u-decoder to weigh)")
    _validate_options(cfg)
    validate_baselines(cfg)
    validate_principles(cfg)
    check_numbers(cfg)
    return cfg


def _file_option(name: str, path) -> None:
    if path is not None and not (isinstance(path, str) and os.path.isfile(path)):
        raise ValueError(f"{name}: no such file {path!r}")


def _validate_options(cfg: RunConfig) -> None:
    """The options matching the public MDDiff code and the metric weight files (see the section docstrings; the
    choices among names are checked in :func:`validate`)."""
    d, fs, e = cfg.diffusion, cfg.first_stage, cfg.eval
    deepest = 2 ** (len(d.unet_mult) - 1)
    for ds in d.attention_ds:
        if not isinstance(ds, int) or ds < 1 or ds & (ds - 1) or ds > deepest:
            raise ValueError(f"diffusion.attention_ds: {ds!r} is not a downsampling factor of this U-Net (powers of "
                             f"two up to 2 ** (len(unet_mult) - 1) = {deepest}; 1 is the 16x16 latent itself)")
    if cfg.stages.freeze_decoder and cfg.model == "mddiff" and cfg.mcl.weighting == "relative":
        raise ValueError("stages.freeze_decoder: a frozen decoder has no gradient to weigh mcl.weighting='relative' "
                         "against; use mcl.weighting=absolute")
    for name in ("perceptual_weight", "adversarial_weight"):
        if getattr(fs, name) < 0:
            raise ValueError(f"first_stage.{name}: expected >= 0, got {getattr(fs, name)}")
    if fs.perceptual_weight > 0 and not (fs.perceptual_backbone and fs.perceptual_weights):
        raise ValueError("first_stage.perceptual_weight: a perceptual loss needs LPIPS weights: set "
                         "first_stage.perceptual_backbone (torchvision ImageNet weights) and "
                         "first_stage.perceptual_weights (LPIPS v0.1 linear layers)")
    for name in ("disc_layers", "disc_ndf"):
        if getattr(fs, name) < 1:
            raise ValueError(f"first_stage.{name}: expected an int >= 1, got {getattr(fs, name)}")
    if bool(e.lpips_backbone) != bool(e.lpips_weights):
        raise ValueError("eval.lpips_backbone, eval.lpips_weights: real LPIPS needs both files (or neither: the "
                         "labelled stand-in)")
    for name in ("perceptual_backbone", "perceptual_weights"):
        if fs.perceptual_weight > 0:
            _file_option(f"first_stage.{name}", getattr(fs, name))
    for name in ("fid_weights", "lpips_backbone", "lpips_weights"):
        _file_option(f"eval.{name}", getattr(e, name))


def run_dir_name(cfg: RunConfig) -> str:
    """``<model>-<dataset>[-file]-<preset>-seed<seed>``: one folder per run under ``--out``."""
    data = "-file" if cfg.data.data_path else ""
    return f"{cfg.model}-{cfg.data.dataset}{data}-{cfg.preset}-seed{cfg.seed}"
