"""Training and evaluation for the concept-disentanglement study (paper section 5.2, App. D.2/D.4, Tables 1 and 6).

Models (``MODELS``): ``mddiff`` (EncDiff + u-conditioned decoder + MCL), ``encdiff``, and the VAE baselines
``betavae``, ``factorvae``, ``btcvae``. Datasets: shapes3d, mpi3d, cars3d (the real file with ``data_path``, the
procedural twin otherwise).

Phases, run top to bottom by :func:`train` (each phase resumes from ``checkpoint.pt`` if the run was killed):

* diffusion models: ``first_stage`` (the VQ autoencoder, unconditional path) -> ``stage1`` (diffusion loss only,
  AdamW, lr = base_lr1 x batch with linear warm-up, App. D.4) -> ``stage2`` (MDDiff: + lambda_recon L_recon +
  lambda_MCL L_MCL at base_lr2 x batch; EncDiff: the same number of steps with the diffusion loss only, so both
  models see the same optimisation budget);
* VAEs: ``vae`` (Adam, plus the discriminator's Adam for FactorVAE).

Every step's randomness (batch indices, diffusion t and noise, VAE noise) comes from generators seeded by
``(seed, phase, step)``, so a resumed run equals an uninterrupted one.

:func:`evaluate` computes the FactorVAE score and DCI disentanglement (:mod:`mclcore.metrics`, the
disentanglement_lib protocol scaled by ``eval.sample_scale``), FID and the LPIPS stand-in (:mod:`mclcore.train.fid`)
and writes the figures (:mod:`mclcore.train.figures`) and ``metrics.json``.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mclcore._io import write_json_atomic
from mclcore.train import config as _config
from mclcore.train.config import load_checkpoint, save_checkpoint

__all__ = ["MODELS", "DATASETS", "PRESETS", "RunConfig", "preset_config", "apply_overrides", "build_model",
           "train", "evaluate", "run_dir_name", "load_checkpoint", "PHASES"]

MODELS = ("mddiff", "encdiff", "betavae", "factorvae", "btcvae")
DIFFUSION_MODELS = ("mddiff", "encdiff")
DATASETS = ("shapes3d", "mpi3d", "cars3d")
PRESETS = ("cpu-smoke", "paper")
DATASET_SIZES = {"shapes3d": 480000, "mpi3d": 1036800, "cars3d": 17568}
# App. D.4: lambda_MCL = 1e-3 for Shapes3D and Cars3D, 1e-4 for MPI3D.
PAPER_LAMBDA_MCL = {"shapes3d": 1e-3, "cars3d": 1e-3, "mpi3d": 1e-4}


# ------------------------------------------------------------------------------------------------------- configs
@dataclass
class DataConfig:
    """Which data. ``pool > 0`` renders/reads ``pool`` random grid points once and trains on them (slow
    renderers such as the Cars3D twin); ``0`` draws fresh grid points every step."""
    dataset: str = "shapes3d"
    data_path: str | None = None
    pool: int = 0


@dataclass
class FirstStageConfig:
    """VQ autoencoder 64x64x3 -> 3x16x16 (:class:`mclcore.models.autoencoder.VQAutoencoder`)."""
    ch: int = 128
    ch_mult: tuple = (1, 2, 4)
    num_res_blocks: int = 2
    n_embed: int = 2048
    u_channels: int = 32          # MDDiff: u-feature width per upsampling stage
    steps: int = 50000
    batch_size: int = 32
    lr: float = 1e-4              # Adam


@dataclass
class DiffusionModelConfig:
    """EncDiff/MDDiff backbone (App. D.4). UNet attention at downsampling factors ``attention_ds``."""
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


@dataclass
class StagesConfig:
    """Two-stage optimisation (App. D.4). Learning rate = base_lr x batch_size (LDM/EncDiff convention)."""
    batch_size: int = 128
    stage1_steps: int = 37500     # 10 epochs of Shapes3D at batch 128 (set per dataset by the preset)
    stage2_steps: int = 37500
    base_lr1: float = 2e-6
    base_lr2: float = 2e-7
    warmup1: int = 10000
    warmup2: int = 1000
    weight_decay: float = 0.01    # AdamW default
    lambda_recon: float = 0.1
    lambda_mcl: float = 1e-3      # 1e-4 for MPI3D (preset)
    mcl_tau: float = 0.1
    mcl_clip: float = 10.0
    mcl_create_graph: bool = True
    mcl_z: str = "clean"          # "clean" z_0 = E(x) or "pred_x0" (see mclcore.models.encdiff)
    critic_hidden: int = 256
    proj_dim: int = 128


@dataclass
class VAEConfig:
    """VAE baselines (:class:`mclcore.models.image_vae.ImageVAE`), disentanglement_lib-style training."""
    latent_dim: int = 20
    hidden: int = 128
    fc: int = 256
    beta: float = 4.0             # betavae: KL weight; btcvae: TC weight (our choice: 6)
    gamma: float = 10.0           # factorvae: TC weight
    disc_width: int = 1000
    disc_depth: int = 6
    steps: int = 300000
    batch_size: int = 64
    lr: float = 1e-4
    disc_lr: float = 1e-4


@dataclass
class EvalConfig:
    """Evaluation. ``sample_scale`` multiplies every sample count of the disentanglement_lib protocol."""
    sample_scale: float = 1.0
    dci_model: str = "hist_gbt"
    ddim_steps: int = 50
    fid_samples: int = 10000
    recon_samples: int = 1000
    featnet_steps: int = 3000
    fid_weights: str | None = None
    figures: bool = True


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
    vae: VAEConfig = field(default_factory=VAEConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def preset_config(model: str, dataset: str, preset: str, seed: int = 0, data_path: str | None = None) -> RunConfig:
    """The ``paper`` (full sizes, GPU) or ``cpu-smoke`` (tiny networks, minutes on 2 cores) configuration."""
    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    if dataset not in DATASETS:
        raise ValueError(f"--dataset: expected one of {DATASETS}, got {dataset!r}")
    if preset not in PRESETS:
        raise ValueError(f"--preset: expected one of {PRESETS}, got {preset!r}")
    cfg = RunConfig(model=model, preset=preset, seed=seed, data=DataConfig(dataset, data_path))
    cfg.stages.lambda_mcl = PAPER_LAMBDA_MCL[dataset]
    if model == "btcvae":
        cfg.vae.beta = 6.0
    if preset == "paper":
        epoch = DATASET_SIZES[dataset] // cfg.stages.batch_size
        cfg.stages.stage1_steps = cfg.stages.stage2_steps = 10 * epoch          # 10 + 10 epochs (App. D.4)
        return cfg
    # cpu-smoke: every network shrunk, protocol sample counts x 0.02, short schedules with larger learning rates
    # (the paper's 2e-6 x 128 would not move tiny networks in a few hundred steps).
    cfg.log_every, cfg.ckpt_every = 25, 100
    cfg.data.pool = 2048 if dataset == "cars3d" else 0
    fs = cfg.first_stage
    fs.ch, fs.ch_mult, fs.num_res_blocks, fs.u_channels = 8, (1, 2, 2), 1, 8
    fs.steps, fs.batch_size, fs.lr = 200, 16, 2e-3
    d = cfg.diffusion
    d.encoder_hidden, d.encoder_fc = 32, 128
    # attention only at the one downsampled resolution (8x8) of a two-level U-Net: self-attention over the 256
    # positions of the 16x16 level would cost ~70% of a CPU step
    d.unet_channels, d.unet_mult, d.unet_res_blocks, d.attention_ds, d.heads = 32, (1, 2), 1, (2,), 4
    st = cfg.stages
    st.batch_size, st.stage1_steps, st.stage2_steps = 32, 150, 30
    st.base_lr1, st.base_lr2, st.warmup1, st.warmup2 = 3e-5, 1e-5, 50, 10
    st.critic_hidden, st.proj_dim = 64, 64
    v = cfg.vae
    v.hidden, v.fc, v.disc_width, v.disc_depth, v.steps, v.batch_size, v.lr, v.disc_lr = 32, 128, 256, 3, 800, 32, \
        1e-3, 1e-3
    e = cfg.eval
    e.sample_scale, e.ddim_steps, e.fid_samples, e.recon_samples, e.featnet_steps = 0.02, 10, 300, 64, 300
    return cfg


def apply_overrides(cfg: RunConfig, overrides) -> RunConfig:
    """``["stages.lambda_mcl=1e-4", "seed=3", "diffusion.unet_mult=1,2"]`` -> cfg modified in place."""
    return _config.apply_overrides(cfg, overrides, example="stages.lambda_mcl=1e-4")


def config_from_dict(d: dict) -> RunConfig:
    """Inverse of ``asdict`` (lists back to tuples)."""
    return _config.from_dict(RunConfig, d)


def run_dir_name(cfg: RunConfig) -> str:
    data = "-file" if cfg.data.data_path else ""
    return f"{cfg.model}-{cfg.data.dataset}{data}-{cfg.preset}-seed{cfg.seed}"


# -------------------------------------------------------------------------------------------------- building
def resolve_device(cfg: RunConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {cfg.device!r} requested but CUDA is not available")
    return dev


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The model of ``cfg.model`` with freshly initialised weights (seeded by the caller)."""
    from mclcore.models.autoencoder import VQAutoencoder
    from mclcore.models.encdiff import EncDiff, MDDiff
    from mclcore.models.image_vae import ImageVAE

    if cfg.model in DIFFUSION_MODELS:
        d, fs, st = cfg.diffusion, cfg.first_stage, cfg.stages
        u_dim = d.num_concepts * d.token_dim if cfg.model == "mddiff" else 0
        ae = VQAutoencoder(fs.ch, fs.ch_mult, fs.num_res_blocks, 3, fs.n_embed, u_dim, fs.u_channels)
        kw = dict(num_concepts=d.num_concepts, encoder_hidden=d.encoder_hidden, encoder_fc=d.encoder_fc,
                  token_hidden=d.token_hidden, token_dim=d.token_dim,
                  unet=dict(channels=d.unet_channels, channel_mult=d.unet_mult, num_res_blocks=d.unet_res_blocks,
                            attention_ds=d.attention_ds, heads=d.heads),
                  diffusion=dict(num_timesteps=d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end,
                                 schedule=d.schedule))
        if cfg.model == "encdiff":
            return EncDiff(ae, **kw)
        mcl = dict(tau=st.mcl_tau, clip=st.mcl_clip or None, create_graph=st.mcl_create_graph,
                   critic_hidden=(st.critic_hidden,), proj_dim=st.proj_dim)
        return MDDiff(ae, mcl=mcl, **kw)
    v = cfg.vae
    return ImageVAE(cfg.model, v.latent_dim, v.hidden, v.fc, v.beta, v.gamma, v.disc_width, v.disc_depth)


def phases(cfg: RunConfig) -> list[tuple[str, int]]:
    """[(phase name, steps)] in order."""
    if cfg.model in DIFFUSION_MODELS:
        return [("first_stage", cfg.first_stage.steps), ("stage1", cfg.stages.stage1_steps),
                ("stage2", cfg.stages.stage2_steps)]
    return [("vae", cfg.vae.steps)]


PHASES = ("first_stage", "stage1", "stage2", "vae")


def set_trainable(model, cfg: RunConfig, phase: str) -> list[torch.nn.Parameter]:
    """Set requires_grad for ``phase`` and return the parameters its optimiser updates."""
    for p in model.parameters():
        p.requires_grad_(False)
    if phase == "first_stage":
        mods = [model.first_stage]
    elif phase == "stage1":
        mods = [model.concept_encoder, model.tokenizer, model.unet]
    elif phase == "stage2":
        mods = [model.concept_encoder, model.tokenizer, model.unet]
        if cfg.model == "mddiff":   # u-decoder (through L_recon and L_MCL) and the MCL critic + heads
            mods += [model.first_stage.decoder, model.first_stage.post_quant_conv, model.mcl]
    else:
        mods = [model]
    params = []
    for m in mods:
        for p in m.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def make_optimizers(model, cfg: RunConfig, phase: str, params) -> tuple[list, list]:
    """(optimizers, schedulers) of a phase; see the module docstring for the choices."""
    if phase == "first_stage":
        return [torch.optim.Adam(params, lr=cfg.first_stage.lr, betas=(0.5, 0.9))], []
    if phase in ("stage1", "stage2"):
        st = cfg.stages
        base, warm = (st.base_lr1, st.warmup1) if phase == "stage1" else (st.base_lr2, st.warmup2)
        opt = torch.optim.AdamW(params, lr=base * st.batch_size, weight_decay=st.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warm)))
        return [opt], [sched]
    v = cfg.vae
    vae_params = [p for p in model.vae_parameters() if p.requires_grad]
    opts = [torch.optim.Adam(vae_params, lr=v.lr, betas=(0.9, 0.999))]
    if model.discriminator is not None:
        opts.append(torch.optim.Adam(model.discriminator.parameters(), lr=v.disc_lr, betas=(0.5, 0.9)))
    return opts, []


# ------------------------------------------------------------------------------------------------------ data
class Batches:
    """Deterministic training batches: batch ``step`` of ``phase`` depends only on (seed, phase, step)."""

    def __init__(self, dataset, cfg: RunConfig, device):
        self.dataset, self.device, self.seed = dataset, device, cfg.seed
        self.pool = None
        if cfg.data.pool:
            from tqdm import tqdm

            idx = dataset.sample_index(cfg.data.pool, np.random.default_rng([cfg.seed, 99]))
            chunks = [dataset.observations_at(idx[i:i + 256])
                      for i in tqdm(range(0, idx.size, 256), desc="render pool", leave=False)]
            self.pool = np.concatenate(chunks)

    def get(self, phase: str, step: int, batch_size: int) -> torch.Tensor:
        from mclcore.data import to_float_nchw

        rng = np.random.default_rng([self.seed, PHASES.index(phase), step])
        if self.pool is not None:
            obs = self.pool[rng.integers(0, len(self.pool), size=batch_size)]
        else:
            obs = self.dataset.observations_at(self.dataset.sample_index(batch_size, rng))
        return to_float_nchw(obs).to(self.device)            # (B, 3, 64, 64) in [0, 1]


def step_generator(device, seed: int, phase: str, step: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.default_rng([seed, PHASES.index(phase), step, 1]).integers(0, 2 ** 62)))
    return g


def load_dataset(cfg: RunConfig):
    from mclcore.data import get_dataset

    if cfg.data.data_path is not None and not os.path.exists(cfg.data.data_path):
        raise FileNotFoundError(f"--data-path: no such file or folder {cfg.data.data_path!r}")
    return get_dataset(cfg.data.dataset, path=cfg.data.data_path)


# ------------------------------------------------------------------------------------------------ checkpoints
def _autocast(device: torch.device, cfg: RunConfig):
    if device.type == "cuda" and cfg.amp and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# --------------------------------------------------------------------------------------------------- training
def train(cfg: RunConfig, out_dir: str, *, resume: bool = True, stop_after: int | None = None,
          progress: bool = True, log: bool = True):
    """Train ``cfg`` into ``out_dir`` (checkpoint.pt, config.json, tb/). Returns ``(model, finished)``.

    ``stop_after``: return after that many optimisation steps in this call (for tests and time slicing; the run
    resumes from the checkpoint written at the stop).
    """
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "checkpoint.pt")
    state = None
    if resume and os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path)
        saved = config_from_dict(state["config"])
        if asdict(saved) != asdict(cfg):
            diff = _config.config_diff(asdict(saved), asdict(cfg))
            print(f"resuming {out_dir} with its saved config (ignoring differences: {diff})", file=sys.stderr)
        cfg = saved
    device = resolve_device(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    done: list[str] = []
    cur_phase, cur_step, opt_states = None, 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        done, cur_phase, cur_step, opt_states = state["done"], state["phase"], state["step"], state["optim"]
    write_json_atomic(asdict(cfg), os.path.join(out_dir, "config.json"), indent=1, sort_keys=False)
    dataset = load_dataset(cfg)
    batches = Batches(dataset, cfg, device)
    writer = None
    if log:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(out_dir, "tb"))
    budget = math.inf if stop_after is None else int(stop_after)
    global_offset = sum(n for p, n in phases(cfg) if p in done)

    for phase, n_steps in phases(cfg):
        if phase in done:
            continue
        start = cur_step if phase == cur_phase else 0
        params = set_trainable(model, cfg, phase)
        opts, scheds = make_optimizers(model, cfg, phase, params)
        if phase == cur_phase and opt_states is not None:
            for o, s in zip(opts, opt_states["opt"]):
                o.load_state_dict(s)
            for sc, s in zip(scheds, opt_states["sched"]):
                sc.load_state_dict(s)
        model.train()

        def snapshot(step, finished_phase=False):
            save_checkpoint(ckpt_path, {
                "config": asdict(cfg), "model": model.state_dict(),
                "done": done + ([phase] if finished_phase else []),
                "phase": phase, "step": step,
                "optim": {"opt": [o.state_dict() for o in opts], "sched": [s.state_dict() for s in scheds]},
            })

        bar = tqdm(range(start, n_steps), desc=f"{cfg.model}/{phase}", disable=not progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        for step in bar:
            if budget <= 0:
                snapshot(step)
                bar.close()
                return model, False
            logs = train_step(model, cfg, phase, step, batches, opts, scheds, device)
            budget -= 1
            if step % cfg.log_every == 0 or step == n_steps - 1:
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
                if writer is not None:
                    for k, v in logs.items():
                        writer.add_scalar(f"{phase}/{k}", v, global_offset + step)
            if (step + 1) % cfg.ckpt_every == 0 and step + 1 < n_steps:
                snapshot(step + 1)
        if phase == "first_stage":
            # LDM's scale_by_std: unit-variance diffusion latents (a fixed, seeded batch).
            model.first_stage.set_scale_from(batches.get(phase, n_steps, 256))
        done.append(phase)
        global_offset += n_steps
        snapshot(n_steps)
        if progress:
            print(f"{cfg.model}/{phase}: {n_steps - start} steps in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if writer is not None:
        writer.close()
    model.eval()
    return model, True


def train_step(model, cfg: RunConfig, phase: str, step: int, batches: Batches, opts, scheds, device) -> dict:
    """One optimisation step of ``phase``; returns scalar logs."""
    gen = step_generator(device, cfg.seed, phase, step)
    if phase == "first_stage":
        x = batches.get(phase, step, cfg.first_stage.batch_size)             # (B, 3, 64, 64)
        with _autocast(device, cfg):
            out = model.first_stage.loss(x)                                  # unconditional path (u = None)
    elif phase in ("stage1", "stage2"):
        st = cfg.stages
        x = batches.get(phase, step, st.batch_size)                          # (B, 3, 64, 64)
        extra = dict(lambda_recon=st.lambda_recon, lambda_mcl=st.lambda_mcl, mcl_z=st.mcl_z) \
            if phase == "stage2" and cfg.model == "mddiff" else {}
        with _autocast(device, cfg):
            out = model.losses(x, generator=gen, **extra)                    # Eq. (19) terms
    else:
        x = batches.get(phase, step, cfg.vae.batch_size)
        with _autocast(device, cfg):
            out = model.losses(x, generator=gen)
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{cfg.model}/{phase} step {step}: non-finite loss {loss.item()}")
    opts[0].zero_grad(set_to_none=True)
    loss.backward()
    opts[0].step()
    for s in scheds:
        s.step()
    logs = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}
    if phase == "vae" and model.discriminator is not None:                  # FactorVAE discriminator step
        with _autocast(device, cfg):
            d_loss = model.discriminator_loss(out["z"], generator=gen)
        opts[1].zero_grad(set_to_none=True)
        d_loss.backward()
        opts[1].step()
        logs["disc"] = float(d_loss.detach())
    if phase in ("stage1", "stage2"):
        logs["lr"] = opts[0].param_groups[0]["lr"]
    return logs


# ------------------------------------------------------------------------------------------------- evaluation
def representation(model, cfg: RunConfig, device):
    """uint8 (N, 64, 64, 3) -> (N, K) codes: the concept scalars s (diffusion) or the posterior mean (VAEs)."""
    from mclcore.metrics import torch_representation

    enc = model.concept_encoder if cfg.model in DIFFUSION_MODELS else model
    return torch_representation(enc, device=device, batch_size=512)


def evaluate(model, cfg: RunConfig, out_dir: str, *, cache_dir: str | None = None, progress: bool = True) -> dict:
    """Disentanglement metrics, FID, the LPIPS stand-in and figures; writes ``metrics.json``. Returns the dict."""
    from mclcore.data import to_float_nchw
    from mclcore.metrics import evaluate as eval_metrics
    from mclcore.train import fid as fidlib
    from mclcore.train import figures

    device = resolve_device(cfg)
    model = model.to(device).eval()
    dataset = load_dataset(cfg)
    e = cfg.eval
    res: dict = {"model": cfg.model, "dataset": cfg.data.dataset, "preset": cfg.preset, "seed": cfg.seed,
                 "data": cfg.data.data_path or "procedural twin", "device": str(device), "seconds": {}}
    t0 = time.perf_counter()
    scores, secs = eval_metrics(dataset, representation(model, cfg, device), ("factorvae", "dci"), seed=cfg.seed,
                                sample_scale=e.sample_scale, dci_model=e.dci_model, progress=progress)
    res.update({"factorvae": scores["factorvae.eval_accuracy"], "dci": scores["dci.disentanglement"],
                "dci_completeness": scores["dci.completeness"],
                "dci_informativeness": scores["dci.informativeness_test"],
                "factorvae_active_dims": scores["factorvae.num_active_dims"],
                "sample_scale": e.sample_scale})
    res["seconds"]["metrics"] = time.perf_counter() - t0

    # ---- generation quality (Table 6)
    t0 = time.perf_counter()
    feats = fidlib.get_feature_net(dataset, cfg.data.dataset + ("-file" if cfg.data.data_path else "-twin"),
                                   cache_dir or os.path.join(out_dir, "..", "cache"),
                                   fidlib.FeatureNetConfig(steps=e.featnet_steps), e.fid_weights, device, progress)
    rng = np.random.default_rng([cfg.seed, 1234])
    real = to_float_nchw(dataset.observations_at(dataset.sample_index(e.fid_samples, rng)))      # (N, 3, 64, 64)
    cond = to_float_nchw(dataset.observations_at(dataset.sample_index(e.fid_samples, rng)))
    fake = generate_samples(model, cfg, cond, device, seed=cfg.seed)
    res["fid"] = fidlib.frechet_distance(feats.features(real.to(device)), feats.features(fake.to(device)))
    res["fid_label"], res["fid_samples"] = feats.fid_label, e.fid_samples
    x = real[: e.recon_samples].to(device)
    rec = reconstruct(model, cfg, x, device, seed=cfg.seed)
    d = fidlib.feature_distance(feats.layer_net, x, rec)
    res["lpips_proxy"], res["lpips_proxy_std"] = float(d.mean()), float(d.std())
    res["lpips_label"] = feats.lpips_label
    res["recon_mse"] = float((x - rec).pow(2).mean())
    res["seconds"]["generation"] = time.perf_counter() - t0

    if e.figures:
        t0 = time.perf_counter()
        res["figures"] = figures.write_all(model, cfg, dataset, out_dir, device)
        res["seconds"]["figures"] = time.perf_counter() - t0
    write_json_atomic(res, os.path.join(out_dir, "metrics.json"), indent=1, sort_keys=False)
    return res


@torch.no_grad()
def generate_samples(model, cfg: RunConfig, cond_images: torch.Tensor, device, seed: int,
                     batch_size: int = 250) -> torch.Tensor:
    """Samples for FID. Diffusion: DDIM from noise conditioned on the concept codes of *other* real images (EncDiff
    needs a code to sample); VAEs: decode z ~ N(0, I). Returns (N, 3, 64, 64) in [0, 1] on the CPU."""
    g = torch.Generator(device=device).manual_seed(seed + 777)
    outs = []
    for i in range(0, len(cond_images), batch_size):
        c = cond_images[i:i + batch_size].to(device)
        with _autocast(device, cfg):
            if cfg.model in DIFFUSION_MODELS:
                x = model.generate(model.concepts(c), num_steps=cfg.eval.ddim_steps, generator=g)
            else:
                z = torch.randn(len(c), cfg.vae.latent_dim, generator=g, device=device)
                x = model.decode(z)
        outs.append(x.float().cpu())
    return torch.cat(outs)


@torch.no_grad()
def reconstruct(model, cfg: RunConfig, x: torch.Tensor, device, seed: int) -> torch.Tensor:
    """Reconstructions in [0, 1]: diffusion models generate from noise conditioned on s = E(x) (EncDiff's
    protocol, the concept code is the only information passed); VAEs decode the posterior mean."""
    g = torch.Generator(device=device).manual_seed(seed + 778)
    with _autocast(device, cfg):
        if cfg.model in DIFFUSION_MODELS:
            return model.reconstruct(x, num_steps=cfg.eval.ddim_steps, generator=g).float()
        return model.decode(model(x)).float()
