"""Evaluation of a trained world model (paper Table 2, Fig. 7): open-loop rollouts on the held-out splits.

:func:`evaluate` returns the metrics (SSIM, PSNR, MSE, SSIM-L per eval split, :mod:`mclcore.metrics.video`, plus
reference rows) and writes ``table.md`` (Table 2's layout, the paper's row beside ours), ``rollouts.npz`` (the first
episodes' frames, for :mod:`~mclcore.studies.worldmodel.report`) and ``figures/rollout.png``. It does not write
``metrics.json``: :func:`mclcore.train.loop.run_seeds` adds the call's timings, prints the summary and then writes
it, so a ``metrics.json`` always belongs to a finished, completely evaluated run.

With ``eval.following`` (default) it also runs the action-following evaluation of
:mod:`~mclcore.studies.worldmodel.following` (one-step and open-loop predictions with right / shuffled / zero actions
and copy baselines, whole-frame and moving-region metrics per episode, paired gaps with bootstrap intervals):
``metrics["following"]``, ``following.json``, ``following.md``, ``figures/following_rollout.png`` and
``figures/per_frame.png``.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from mclcore._io import write_text_atomic
from mclcore.losses.monitor import last_measurement
from mclcore.studies.worldmodel.config import RunConfig, method_name
from mclcore.studies.worldmodel import following as fol
from mclcore.studies.worldmodel import following_eval as fev
from mclcore.studies.worldmodel.data import Episodes, load_splits
from mclcore.studies.worldmodel.report import SPLITS, rollout_figure, table_markdown
from mclcore.studies.worldmodel.run import default_cache_dir
from mclcore.train.loop import resolve_device

__all__ = ["rollouts", "evaluate"]


ROLLOUT_MODES = ("right", "shuffled", "zero")


@torch.no_grad()
def rollouts(model, cfg: RunConfig, eps: Episodes, device, lacg_source: str,
             shuffle: bool = False, mode: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, gt), each (N, H, 3, 64, 64) in [0, 1]; the sampling noise is seeded by ``cfg.seed`` (the same noise
    whatever drives the rollout).

    ``mode`` (default "right"): "shuffled" (also ``shuffle=True``) drives episode i with the actions of episode i+1
    (mod N) -- for LACG/idm, the IDM reads episode i+1's frames -- while starting from episode i's first frame (an
    action-following check); "zero" drives it with the zero action (ACG: the recorded action 0; LACG: the zero
    latent action, through :func:`~mclcore.studies.worldmodel.following_eval.open_loop`, as the model's rollout computes
    its latent actions itself)."""
    mode = mode or ("shuffled" if shuffle else "right")
    if mode not in ROLLOUT_MODES or (shuffle and mode != "shuffled"):
        raise ValueError(f"mode: expected one of {ROLLOUT_MODES} (shuffle=True means 'shuffled'), got {mode!r}")
    shuffle = mode == "shuffled"
    if shuffle:
        other = eps.subset(np.roll(np.arange(len(eps)), -1))
    e = cfg.eval
    horizon = min(e.horizon, eps.actions.shape[1])
    g = torch.Generator(device=device).manual_seed(cfg.seed + fol.NOISE_SEED_OFFSET)
    preds, gts = [], []
    for i in range(0, len(eps), e.batch_size):
        sl = slice(i, i + e.batch_size)
        frames = eps.float_frames(sl).to(device)                                 # (b, T+1, 3, 64, 64)
        actions = torch.from_numpy((other if shuffle else eps).actions[sl]).to(device)   # (b, T, 4)
        emb = torch.from_numpy(eps.embodiment[sl]).to(device)
        idm_frames = other.float_frames(sl).to(device) if shuffle else None
        if mode == "zero" and model.variant != "acg":
            lat = fev._encode(model, frames, horizon)                            # (b, H+1, C, h, w)
            u = fev.conditioning(model, lat, actions, emb, "zero")               # (b, H, d_u) zeros
            preds.append(fev.open_loop(model, lat, u, steps=e.sample_steps, method=e.sampler, generator=g).cpu())
        else:
            if mode == "zero":
                actions = torch.zeros_like(actions)
            preds.append(model.rollout(frames, actions, emb, horizon, steps=e.sample_steps, method=e.sampler,
                                       lacg_source=lacg_source, generator=g, idm_frames=idm_frames).cpu())
        gts.append(frames[:, 1: horizon + 1].cpu())
    return torch.cat(preds), torch.cat(gts)


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def evaluate(model, cfg: RunConfig, out_dir: str, *, cache_dir: str | None = None) -> dict:
    """Table 2 metrics on the target and transfer splits (the metrics.json dict, returned, not written); writes
    table.md, figures/rollout.png and rollouts.npz into ``out_dir``.

    Keys: ``target``/``transfer`` (the table's rows; LACG with ``eval.lacg_actions``), for LACG also
    ``<split>_<other source>`` (e.g. ``target_regressor``) for the other latent-action source,
    ``<split>_shuffled_actions`` (action-following check), ``<split>_ae_recon`` and ``<split>_copy_first_frame``
    (references), ``<split>_success`` (with ``eval.success_probe_steps`` > 0 on simulator data), and ``seconds``;
    with ``--mcl`` the last MCL measurement of training (``mcl_acc``, ``mcl_acc_generator``, ``mcl_grad_ratio``, ...:
    :func:`mclcore.losses.monitor.last_measurement`) when the run logged one.
    """
    from mclcore.metrics.video import video_metrics

    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    splits = load_splits(cfg, cache_dir or default_cache_dir(out_dir))
    res: dict = {"method": method_name(cfg), "variant": cfg.variant, "mcl": cfg.use_mcl, "preset": cfg.preset,
                 "seed": cfg.seed, "device": str(device), "horizon": min(cfg.eval.horizon, cfg.data.episode_len),
                 "sample_steps": cfg.eval.sample_steps, "sampler": cfg.eval.sampler,
                 "data": cfg.data.path or f"{cfg.data.source} (generated)", "seconds": {}}
    if cfg.use_mcl:                 # the last MCL measurement of training (mcl_diagnostics.json has them all)
        res.update(last_measurement(out_dir))
    sources = [cfg.eval.lacg_actions] if cfg.variant == "acg" else ["idm", "regressor"]
    keep, probe, follow = {}, None, {}
    if cfg.eval.success_probe_steps > 0 and cfg.data.source == "tabletop":
        from mclcore.studies.worldmodel.probe import train_probe

        t0 = time.perf_counter()
        probe = train_probe(splits["train"].frames, splits["train"].states, steps=cfg.eval.success_probe_steps,
                            seed=cfg.seed, device=device)
        res["seconds"]["success_probe"] = time.perf_counter() - t0
    for split in SPLITS:
        eps = splits[split]
        t0 = time.perf_counter()
        for src in sources:
            pred, gt = rollouts(model, cfg, eps, device, src)
            m = video_metrics(pred, gt)
            m["episodes"] = len(eps)
            key = split if (cfg.variant == "acg" or src == cfg.eval.lacg_actions) else f"{split}_{src}"
            res[key] = m
            if key == split:
                k = cfg.eval.figure_episodes
                keep[split] = (pred[:k], gt[:k], eps.states[:k])
                right = pred
            if probe is not None and pred.shape[1] == eps.actions.shape[1]:     # the rollout reaches the episode end
                from mclcore.studies.worldmodel.probe import success_report

                task = cfg.data.task if split == "target" else cfg.data.transfer_task
                res[f"{key}_success"] = success_report(probe, pred[:, -1], gt[:, -1], eps.states[:, -1], task)
        # action-following: the same start frames driven by another episode's actions (worse metrics = the model
        # follows the actions; equal metrics = it ignores them)
        shuffled, gt = rollouts(model, cfg, eps, device, cfg.eval.lacg_actions, shuffle=True)
        res[f"{split}_shuffled_actions"] = video_metrics(shuffled, gt)
        # reference: the autoencoder's own reconstruction of the GT frames (an upper bound on what the model can reach)
        gt_frames = eps.float_frames()[:, 1: res["horizon"] + 1].to(device)
        with torch.no_grad():       # (--eval-only loads a model whose parameters all require grad)
            rec = torch.stack([model.ae.decode(model.ae.encode(f)) for f in gt_frames.unbind(1)], dim=1).cpu()
        res[f"{split}_ae_recon"] = video_metrics(rec, gt_frames.cpu())
        # reference: "nothing moves" -- the first GT frame repeated (what a model ignoring the action could reach)
        first = eps.float_frames()[:, :1].expand_as(gt_frames)
        res[f"{split}_copy_first_frame"] = video_metrics(first.contiguous(), gt_frames.cpu())
        res["seconds"][split] = time.perf_counter() - t0
        if cfg.eval.following:      # action following: one-step and open-loop, right / shuffled / zero, moving region
            t0 = time.perf_counter()
            follow[split] = fev.split_following(model, cfg, eps, device, ae_recon=rec,
                                                open_loop_preds={"right": right, "shuffled": shuffled})
            res["seconds"][f"{split}_following"] = time.perf_counter() - t0
        del right, shuffled
    if cfg.variant == "lacg":       # how much of the true action the latent action carries (ridge probe R^2)
        from mclcore.studies.worldmodel.latent_probe import latent_action_probe

        t0 = time.perf_counter()
        res["latent_action_probe"] = {s: latent_action_probe(model, splits["train"], splits[s], device=device)
                                      for s in SPLITS}
        res["seconds"]["latent_action_probe"] = time.perf_counter() - t0
    os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
    np.savez_compressed(os.path.join(out_dir, "rollouts.npz"), **{
        f"{s}_{n}": a for s, (p, g, st) in keep.items() for n, a in
        (("pred", _to_u8(p)), ("gt", _to_u8(g)), ("states", st))})
    t0 = time.perf_counter()
    res["figure"] = rollout_figure({"GT": keep["target"][1], method_name(cfg): keep["target"][0]},
                                   keep["target"][2], os.path.join(out_dir, "figures", "rollout.png"),
                                   cfg.eval.figure_frames)
    res["seconds"]["figure"] = time.perf_counter() - t0
    if follow:
        t0 = time.perf_counter()
        res.update(moving_threshold=cfg.eval.moving_threshold, moving_dilate=cfg.eval.moving_dilate,
                   lacg_actions=cfg.eval.lacg_actions)
        res["following"] = fol.summarize_following(follow)
        fol.write_following(out_dir, res, follow, res["following"])
        fr = follow["target"]["_frames"]
        rollout_figure({"GT": fr["gt"], "right actions": fr["right"], "other episode's actions": fr["shuffled"]},
                       splits["target"].states[: len(fr["gt"])],
                       os.path.join(out_dir, "figures", "following_rollout.png"), cfg.eval.figure_frames)
        fol.per_frame_figure({s: r["per_frame"] for s, r in follow.items()},
                             os.path.join(out_dir, "figures", "per_frame.png"))
        res["seconds"]["following_outputs"] = time.perf_counter() - t0
    write_text_atomic(os.path.join(out_dir, "table.md"), table_markdown([res]))
    return res
