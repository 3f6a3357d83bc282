"""Evaluation of a trained disentanglement run: Table 1's metrics, Table 6's generation quality and the figures.

:func:`evaluate` computes the FactorVAE score and DCI disentanglement (:mod:`mclcore.metrics`, the
disentanglement_lib protocol scaled by ``eval.sample_scale``), FID and LPIPS (the real metrics when their weight
files are configured, else the labelled stand-ins; :mod:`.fid`) and writes
the figures (:mod:`.figures`). It returns the result dict; ``mcl train`` (:func:`mclcore.train.loop.run_seeds`)
adds the call's timings, prints the summary and then writes ``metrics.json``, so a run folder never holds a
``metrics.json`` without its timings (``write=True`` writes it here, for callers outside that lifecycle).
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from mclcore._io import write_json_atomic
from mclcore.studies.disentangle.baseline_config import BASELINE_MODELS
from mclcore.studies.disentangle.config import DIFFUSION_MODELS, RunConfig
from mclcore.losses.monitor import last_measurement
from mclcore.studies.disentangle.run import autocast, load_dataset
from mclcore.train.loop import resolve_device

__all__ = ["representation", "evaluate", "generate_samples", "reconstruct", "weight_paths"]


def representation(model, cfg: RunConfig, device):
    """uint8 (N, 64, 64, 3) -> (N, K) codes: the concept scalars s (diffusion) or the posterior mean (VAEs)."""
    from mclcore.metrics import torch_representation

    enc = model.concept_encoder if cfg.model in DIFFUSION_MODELS else model
    return torch_representation(enc, device=device, batch_size=512)


def weight_paths(cfg: RunConfig) -> dict:
    """The metric weight files of an evaluation: each ``eval.*`` field, else its environment variable
    (``MCLCORE_FID_WEIGHTS``, ``MCLCORE_LPIPS_BACKBONE``, ``MCLCORE_LPIPS_WEIGHTS``), else None (stand-in)."""
    from mclcore.metrics.inception import FID_WEIGHTS_ENV
    from mclcore.metrics.lpips import LPIPS_BACKBONE_ENV, LPIPS_WEIGHTS_ENV

    e = cfg.eval
    return {"fid_weights": e.fid_weights or os.environ.get(FID_WEIGHTS_ENV) or None,
            "lpips_backbone": e.lpips_backbone or os.environ.get(LPIPS_BACKBONE_ENV) or None,
            "lpips_weights": e.lpips_weights or os.environ.get(LPIPS_WEIGHTS_ENV) or None}


def evaluate(model, cfg: RunConfig, out_dir: str, *, cache_dir: str | None = None, progress: bool = True,
             write: bool = False) -> dict:
    """Disentanglement metrics, FID, LPIPS (real or labelled stand-in: ``fid`` / ``fid_standin``, ``lpips`` /
    ``lpips_proxy``, with ``fid_kind`` and ``lpips_kind``) and figures (into ``out_dir/figures``). Returns the dict
    that becomes ``metrics.json`` (written here only with ``write=True``); for MDDiff also the last MCL measurement
    of training (``mcl_weight``, ``mcl_loss``, ``mcl_acc``, ``mcl_acc_generator``, ``mcl_acc_direct``,
    ``mcl_chance``, ``mcl_shortcut_share``, ``mcl_grad_ratio``, ``mcl_step``) when the run logged one.

    ``cache_dir``: where the dataset-trained feature network is cached (default ``out_dir/../cache``, shared by
    the runs of one ``--out``)."""
    from mclcore.data import to_float_nchw
    from mclcore.metrics import evaluate as eval_metrics
    from mclcore.studies.disentangle import fid as fidlib
    from mclcore.studies.disentangle import figures

    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    dataset = load_dataset(cfg)
    e = cfg.eval
    res: dict = {"model": cfg.model, "dataset": cfg.data.dataset, "preset": cfg.preset, "seed": cfg.seed,
                 "data": cfg.data.data_path or "procedural twin", "device": str(device), "seconds": {}}
    if cfg.model == "mddiff":       # the last MCL measurement of training (mcl_diagnostics.json has them all)
        res.update(last_measurement(out_dir))
    t0 = time.perf_counter()
    scores, _ = eval_metrics(dataset, representation(model, cfg, device), ("factorvae", "dci"), seed=cfg.seed,
                             sample_scale=e.sample_scale, dci_model=e.dci_model, progress=progress)
    res.update({"factorvae": scores["factorvae.eval_accuracy"], "dci": scores["dci.disentanglement"],
                "dci_completeness": scores["dci.completeness"],
                "dci_informativeness": scores["dci.informativeness_test"],
                # {factor: test accuracy} of the varying factors: which factors the code holds at all
                "dci_informativeness_per_factor": dict(zip((dataset.factor_names[i] for i in dataset.varying_factors),
                                                           scores["dci.informativeness_test_per_factor"])),
                "factorvae_active_dims": scores["factorvae.num_active_dims"],
                "sample_scale": e.sample_scale})
    res["seconds"]["metrics"] = time.perf_counter() - t0

    # ---- generation quality (Table 6): real FID / LPIPS when their weight files are configured, else the
    # labelled stand-ins (fid_standin, lpips_proxy); see mclcore.studies.disentangle.fid
    t0 = time.perf_counter()
    paths = weight_paths(cfg)
    feats = fidlib.get_feature_net(dataset, cfg.data.dataset + ("-file" if cfg.data.data_path else "-twin"),
                                   cache_dir or os.path.join(out_dir, "..", "cache"),
                                   fidlib.FeatureNetConfig(steps=e.featnet_steps), paths["fid_weights"], device,
                                   progress, lpips_net=e.lpips_net, lpips_backbone=paths["lpips_backbone"],
                                   lpips_weights=paths["lpips_weights"])
    rng = np.random.default_rng([cfg.seed, 1234])
    real = to_float_nchw(dataset.observations_at(dataset.sample_index(e.fid_samples, rng)))      # (N, 3, 64, 64)
    cond = to_float_nchw(dataset.observations_at(dataset.sample_index(e.fid_samples, rng)))
    fake = generate_samples(model, cfg, cond, device, seed=cfg.seed)
    res[feats.fid_key] = fidlib.frechet_distance(feats.features(real.to(device)), feats.features(fake.to(device)))
    res["fid_kind"], res["fid_label"], res["fid_samples"] = feats.fid_kind, feats.fid_label, e.fid_samples
    if paths["fid_weights"]:
        res["fid_weights"] = paths["fid_weights"]
    x = real[: e.recon_samples].to(device)                                                       # (R, 3, 64, 64)
    rec = reconstruct(model, cfg, x, device, seed=cfg.seed)
    d = feats.distance(x, rec)                                                                   # (R,)
    res[feats.lpips_key], res[feats.lpips_key + "_std"] = float(d.mean()), float(d.std())
    res["lpips_kind"], res["lpips_label"] = feats.lpips_kind, feats.lpips_label
    res["recon_mse"] = float((x - rec).pow(2).mean())
    res["seconds"]["generation"] = time.perf_counter() - t0

    if e.figures:
        t0 = time.perf_counter()
        res["figures"] = figures.write_all(model, cfg, dataset, out_dir, device)
        res["seconds"]["figures"] = time.perf_counter() - t0
    if write:
        write_json_atomic(res, os.path.join(out_dir, "metrics.json"), indent=1, sort_keys=False)
    return res


@torch.no_grad()
def generate_samples(model, cfg: RunConfig, cond_images: torch.Tensor, device, seed: int,
                     batch_size: int = 250) -> torch.Tensor:
    """Samples for FID. Diffusion: DDIM from noise conditioned on the concept codes of *other* real images (EncDiff
    needs a code to sample); VAEs: decode z ~ N(0, I). Returns (N, 3, 64, 64) in [0, 1] on the CPU."""
    if cfg.model in BASELINE_MODELS:        # DisDiff, InfoGAN-CR: mclcore.studies.disentangle.baselines
        from mclcore.studies.disentangle import baselines

        return baselines.generate_samples(model, cfg, cond_images, device, seed, batch_size)
    g = torch.Generator(device=device).manual_seed(seed + 777)
    outs = []
    for i in range(0, len(cond_images), batch_size):
        c = cond_images[i:i + batch_size].to(device)
        with autocast(device, cfg):
            if cfg.model in DIFFUSION_MODELS:
                x = model.generate(model.concepts(c), num_steps=cfg.eval.ddim_steps, generator=g)
            else:
                z = model.sample_latents(len(c), g, device)                   # the model's prior (N(0, I))
                x = model.decode(z)
        outs.append(x.float().cpu())
    return torch.cat(outs)


@torch.no_grad()
def reconstruct(model, cfg: RunConfig, x: torch.Tensor, device, seed: int) -> torch.Tensor:
    """Reconstructions in [0, 1]: diffusion models generate from noise conditioned on s = E(x) (EncDiff's
    protocol, the concept code is the only information passed); VAEs decode the posterior mean."""
    if cfg.model in BASELINE_MODELS:        # DisDiff, InfoGAN-CR: mclcore.studies.disentangle.baselines
        from mclcore.studies.disentangle import baselines

        return baselines.reconstruct(model, cfg, x, device, seed)
    g = torch.Generator(device=device).manual_seed(seed + 778)
    with autocast(device, cfg):
        if cfg.model in DIFFUSION_MODELS:
            return model.reconstruct(x, num_steps=cfg.eval.ddim_steps, generator=g).float()
        return model.decode(model(x)).float()
