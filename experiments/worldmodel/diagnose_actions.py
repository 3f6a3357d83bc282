"""Does a trained world model follow its actions? Measured on the held-out evaluation episodes of a run.

    python experiments/worldmodel/diagnose_actions.py RUN_DIR [RUN_DIR ...] [--split target] [--horizon 32]
        [--sample-steps N] [--threshold 0.05] [--json out.json]

For every run folder (a finished ``mcl train worldmodel`` checkpoint) and split, on every evaluation episode:

* **one-step, teacher-forced**: from the GT frame t, predict frame t+1 (the run's flow sampler, ``eval.sample_steps``
  unless ``--sample-steps``) with the *right* action a_t, the action of *another* episode (episode i+1 mod N, step t;
  LACG: the IDM mean on that episode's GT frame pair) and the *zero* action (ACG: the raw 4-vector 0 = no motion and
  gripper command 0; LACG: latent 0, the prior mean), plus *copy-last-frame* (predict GT frame t);
* **open loop**: roll out ``--horizon`` steps from GT frame 0 with right / other / zero actions, plus
  *copy-last-frame* (GT frame 0 repeated: the last frame the model saw);
* *ae*: the autoencoder's reconstruction of the GT frame (the decoder's ceiling; the same in both modes).

Score: **moving-region PSNR**, PSNR over the pixels that change between consecutive GT frames (max over RGB of
``|GT_{t+1} - GT_t| > --threshold``), pooled over an episode's steps (one MSE per episode -> one PSNR), so a model that
never moves cannot hide behind the static table. Also the whole-frame PSNR. The same sampling noise is used for all
action conditions (paired), so a difference comes from the action alone. Reported per condition: the mean over
episodes; per pair (right - other, right - zero, right - copy): the mean per-episode gap with a 95% percentile-bootstrap
interval (:func:`mclcore.metrics.stats.bootstrap_ci`).

Also, per run, the **size of the action's contribution** to the conditioning vector ``c = TimeEmbed(tau) + A(u)``:
``|A(u) - mean A(u)|`` against ``|TimeEmbed(tau)|`` and, at tau = 0.5, the relative change of the network's x0
prediction when the action is swapped for another episode's (one-step sensitivity). For LACG also the latent-action
probe (:func:`mclcore.studies.worldmodel.latent_probe.latent_action_probe`) and the KL per latent dimension.

This script imports the library and is never imported by it. ``--use-following`` also runs the library's own
action-following evaluation (:mod:`mclcore.studies.worldmodel.following_eval`, the one ``evaluate`` writes into
``following.json``: same modes, its moving mask is dilated by ``eval.moving_dilate``) and prints its gaps beside.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

from mclcore._io import load_checkpoint
from mclcore.metrics.stats import bootstrap_ci
from mclcore.studies.worldmodel.config import RunConfig
from mclcore.studies.worldmodel.data import load_splits
from mclcore.studies.worldmodel.run import build_model
from mclcore.train.config import from_dict

CONDITIONS = ("right", "other", "zero")


def load_run(run_dir: str):
    ck = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    cfg = from_dict(RunConfig, ck["config"])
    torch.manual_seed(0)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(ck["model"], strict=False)
    # runs trained while the IDM saved its own copy of delta_scale (the model's copy is loaded either way)
    if missing or set(unexpected) - {"idm.delta_scale"}:
        raise RuntimeError(f"{run_dir}: checkpoint does not fit the model (missing {missing}, unexpected {unexpected})")
    return model.eval(), cfg


def _cache_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "..", "cache", "tabletop")


@torch.no_grad()
def _conditions(model, lat, actions, emb, other_lat, other_actions, t):
    """{condition: u} at step t: lat (B, T+1, C, H, W) latents, actions (B, T, 4)."""
    right = model.latent_actions(lat[:, t], lat[:, t + 1], actions[:, t], emb, "idm")
    other = model.latent_actions(other_lat[:, t], other_lat[:, t + 1], other_actions[:, t], emb, "idm")
    if model.variant == "acg":
        zero = model.normalize_actions(torch.zeros_like(actions[:, t]))
    else:
        zero = torch.zeros_like(right)
    return {"right": right, "other": other, "zero": zero}


def _sq_err(pred, gt, mask):
    """Per episode: (sum of squared error over moving pixels, count of moving pixels, whole-frame squared error
    sum, pixel count). pred/gt (B, 3, H, W), mask (B, 1, H, W) bool."""
    se = (pred - gt).pow(2)                                   # (B, 3, H, W)
    m = mask.expand_as(se).float()
    return (se * m).flatten(1).sum(1), m.flatten(1).sum(1), se.flatten(1).sum(1), torch.full_like(m[:, 0, 0, 0],
                                                                                                  se[0].numel())


def _psnr(se_sum, n):
    mse = np.asarray(se_sum) / np.maximum(np.asarray(n), 1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


@torch.no_grad()
def measure(model, cfg: RunConfig, eps, *, horizon: int, sample_steps: int, threshold: float, seed: int = 0,
            batch: int = 16) -> dict:
    """The one-step and open-loop moving-region PSNRs per episode for every condition (see the module docstring)."""
    n = len(eps)
    other_idx = np.roll(np.arange(n), -1)
    T = eps.actions.shape[1]
    horizon = min(horizon, T)
    acc = {mode: {c: np.zeros((n, 4)) for c in CONDITIONS + ("copy", "ae")} for mode in ("one_step", "open_loop")}
    per_step = {c: np.zeros((horizon, 2)) for c in CONDITIONS + ("copy",)}   # open loop, pooled over episodes
    method = cfg.eval.sampler
    for i0 in range(0, n, batch):
        sl = np.arange(i0, min(n, i0 + batch))
        frames = eps.float_frames(sl)                                          # (b, T+1, 3, 64, 64)
        oframes = eps.float_frames(other_idx[sl])
        actions = torch.from_numpy(eps.actions[sl])
        oactions = torch.from_numpy(eps.actions[other_idx[sl]])
        emb = torch.from_numpy(eps.embodiment[sl])
        b = len(sl)
        lat = model.ae.encode(frames.flatten(0, 1)).unflatten(0, (b, T + 1))
        olat = model.ae.encode(oframes.flatten(0, 1)).unflatten(0, (b, T + 1))
        state = {c: lat[:, 0] for c in CONDITIONS}                            # open-loop latents
        for t in range(T):
            gt_next, gt_now = frames[:, t + 1], frames[:, t]
            mask = (gt_next - gt_now).abs().amax(1, keepdim=True) > threshold  # (b, 1, 64, 64)
            us = _conditions(model, lat, actions, emb, olat, oactions, t)
            # one-step, teacher-forced; the same noise for every condition (paired)
            for c in CONDITIONS:
                g = torch.Generator().manual_seed(seed * 1_000_003 + i0 * 1000 + t)
                v = model.predict_next(lat[:, t], us[c], steps=sample_steps, method=method, generator=g)
                r = _sq_err(model.ae.decode(v).clamp(0, 1), gt_next, mask)
                acc["one_step"][c][sl] += torch.stack(r, 1).numpy()
            acc["one_step"]["copy"][sl] += torch.stack(_sq_err(gt_now, gt_next, mask), 1).numpy()
            ae = torch.stack(_sq_err(model.ae.decode(lat[:, t + 1]).clamp(0, 1), gt_next, mask), 1).numpy()
            acc["one_step"]["ae"][sl] += ae                                    # the decoder's ceiling
            if t < horizon:
                acc["open_loop"]["ae"][sl] += ae
            if t < horizon:
                for c in CONDITIONS:
                    g = torch.Generator().manual_seed(seed * 1_000_003 + 7 + i0 * 1000 + t)
                    state[c] = model.predict_next(state[c], us[c], steps=sample_steps, method=method, generator=g)
                    r = _sq_err(model.ae.decode(state[c]).clamp(0, 1), gt_next, mask)
                    acc["open_loop"][c][sl] += torch.stack(r, 1).numpy()
                    per_step[c][t] += [float(r[0].sum()), float(r[1].sum())]
                r = _sq_err(frames[:, 0], gt_next, mask)
                acc["open_loop"]["copy"][sl] += torch.stack(r, 1).numpy()
                per_step["copy"][t] += [float(r[0].sum()), float(r[1].sum())]
    out = {"episodes": n, "horizon": horizon, "sample_steps": sample_steps, "threshold": threshold}
    for mode, d in acc.items():
        per = {c: {"moving_psnr": _psnr(a[:, 0], a[:, 1]), "psnr": _psnr(a[:, 2], a[:, 3])} for c, a in d.items()}
        res = {c: {k: float(v.mean()) for k, v in p.items()} for c, p in per.items()}
        for c in ("other", "zero", "copy"):
            gap = per["right"]["moving_psnr"] - per[c]["moving_psnr"]
            lo, hi = bootstrap_ci(gap)
            res[f"gap_right_minus_{c}"] = {"mean": float(gap.mean()), "lo": lo, "hi": hi, "n": int(gap.size)}
        res["per_episode_moving_psnr"] = {c: p["moving_psnr"].round(3).tolist() for c, p in per.items()}
        out[mode] = res
    out["open_loop"]["per_step_moving_psnr"] = {c: _psnr(a[:, 0], a[:, 1]).round(2).tolist()
                                                for c, a in per_step.items()}
    return out


@torch.no_grad()
def conditioning_size(model, cfg: RunConfig, eps, n: int = 256, seed: int = 0) -> dict:
    """How big the action's part of the conditioning vector is, and how much the x0 prediction moves with it."""
    g = torch.Generator().manual_seed(seed)
    N, T = eps.actions.shape[:2]
    ei, ti = torch.randint(0, N, (n,), generator=g), torch.randint(0, T, (n,), generator=g)
    frames_t = eps.float_frames()[ei, ti]
    frames_n = eps.float_frames()[ei, ti + 1]
    v_t, v_n = model.ae.encode(frames_t), model.ae.encode(frames_n)
    acts, emb = torch.from_numpy(eps.actions[ei.numpy(), ti.numpy()]), torch.from_numpy(eps.embodiment[ei.numpy()])
    u = model.latent_actions(v_t, v_n, acts, emb, "idm")
    perm = torch.roll(torch.arange(n), 1)
    a_emb = model.interface(u)                                               # (n, D)
    tau = torch.full((n,), 0.5)
    from mclcore.models.worldmodel.modules import timestep_embedding
    fdm = model.fdm
    out = {"action_embedding_spread": float((a_emb - a_emb.mean(0)).norm(dim=1).mean()),
           "action_embedding_norm": float(a_emb.norm(dim=1).mean())}
    if hasattr(fdm, "time"):
        t_emb = fdm.time(timestep_embedding(tau, fdm.dim))
        out["time_embedding_norm"] = float(t_emb.norm(dim=1).mean())
        # the AdaLN modulation (shift, scale, gate of every block): how much of it the action moves
        c_right, c_other = t_emb + a_emb, t_emb + a_emb[perm]
        rel = []
        for blk in getattr(fdm, "blocks", []):
            m_r, m_o = blk.ada(c_right), blk.ada(c_other)
            rel.append(round(float((m_r - m_o).norm() / m_r.norm().clamp_min(1e-12)), 4))
        out["adaln_change_other_action_rel"] = rel
        out["adaln_norm"] = [round(float(blk.ada(c_right).norm(dim=1).mean()), 3)
                             for blk in getattr(fdm, "blocks", [])]
    x0 = model.to_flow(v_n, v_t)
    eps_n = torch.randn(x0.shape, generator=g)
    x_tau = (1 - 0.5) * x0 + 0.5 * eps_n
    p_right = model.predict_x0(x_tau, tau, v_t, u)
    p_other = model.predict_x0(x_tau, tau, v_t, u[perm])
    out["x0_change_other_action_rel"] = float((p_right - p_other).norm() / p_right.norm().clamp_min(1e-12))
    out["x0_err_right"] = float((p_right - x0).pow(2).mean())
    out["x0_err_other"] = float((p_other - x0).pow(2).mean())
    out["x0_target_var"] = float(x0.pow(2).mean())
    if model.variant == "lacg":
        mu, logvar = model.idm(v_t, v_n, sample=False)[1:]
        kl_dim = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).mean(0)
        out["kl_per_dim"] = [round(float(k), 4) for k in kl_dim]
        out["kl_total"] = float(kl_dim.sum())
    return out


def library_following(model, cfg: RunConfig, eps, split: str) -> dict:
    """The same measurement by the library's action-following evaluation (its own mask dilation and noise seeds):
    {mode: {gap: {"mean", "lo", "hi"}}} on the moving-region PSNR."""
    from mclcore.studies.worldmodel import following as fol
    from mclcore.studies.worldmodel import following_eval as fev

    summary = fol.summarize_following({split: fev.split_following(model, cfg, eps, "cpu")})[split]
    out = {}
    for mode in ("one_step", "open_loop"):
        out[mode] = {k: {q: round(float(v["moving_psnr"][q]), 3) for q in ("mean", "lo", "hi")}
                     for k, v in summary[mode].items() if "-" in k}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--split", default="target", choices=("target", "transfer"))
    p.add_argument("--horizon", type=int, default=32)
    p.add_argument("--sample-steps", type=int, default=None)
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--use-following", action="store_true",
                   help="also run the library's evaluation (mclcore.studies.worldmodel.following_eval."
                        "split_following, eval.* settings of the run) and print its moving-region gaps")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    allres = {}
    for run in args.runs:
        t0 = time.perf_counter()
        model, cfg = load_run(run)
        splits = load_splits(cfg, _cache_dir(run))
        steps = args.sample_steps or cfg.eval.sample_steps
        res = measure(model, cfg, splits[args.split], horizon=args.horizon, sample_steps=steps,
                      threshold=args.threshold)
        res["conditioning"] = conditioning_size(model, cfg, splits[args.split])
        if cfg.variant == "lacg":
            from mclcore.studies.worldmodel.latent_probe import latent_action_probe
            res["latent_probe"] = latent_action_probe(model, splits["train"], splits[args.split])
        if args.use_following:
            res["following"] = library_following(model, cfg, splits[args.split], args.split)
        res["seconds"] = time.perf_counter() - t0
        allres[run] = res
        print(f"== {run} ({cfg.variant}, split {args.split}, n={res['episodes']}, sample_steps {steps}, "
              f"{res['seconds']:.0f} s)")
        for mode in ("one_step", "open_loop"):
            r = res[mode]
            cells = " ".join(f"{c} {r[c]['moving_psnr']:.2f}" for c in CONDITIONS + ("copy", "ae"))
            gaps = " ".join(f"right-{c} {r['gap_right_minus_' + c]['mean']:+.3f} "
                            f"[{r['gap_right_minus_' + c]['lo']:+.3f}, {r['gap_right_minus_' + c]['hi']:+.3f}]"
                            for c in ("other", "zero", "copy"))
            print(f"  {mode:9s} moving PSNR: {cells} | {gaps}")
        ps = res["open_loop"]["per_step_moving_psnr"]
        print("  open-loop per step (1, 2, 4, 8, 16, 32):", " | ".join(
            f"{c} " + " ".join(f"{ps[c][k - 1]:.1f}" for k in (1, 2, 4, 8, 16, 32) if k <= len(ps[c])) for c in ps))
        print("  conditioning:", json.dumps({k: v for k, v in res["conditioning"].items()}))
        if "following" in res:
            print("  library following (moving PSNR gaps, mean [95% CI]):", json.dumps(res["following"]))
        if "latent_probe" in res:
            print("  latent probe:", json.dumps(res["latent_probe"]))
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(allres, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
