"""Table 2 and the rollout figures of the world-model study, from finished runs (paper section 5.3, Fig. 7).

    python -m mclcore.studies.worldmodel.report runs/worldmodel/worldmodel-*-seed* --out experiments/worldmodel

Reads only what a run wrote (``metrics.json``, ``following.json``, ``rollouts.npz``) and imports no training code, so
reports can be rebuilt anywhere the run folders are; without ``rollouts.npz`` (the small files committed under
``experiments/worldmodel/``) every table is rebuilt and only the rollout figures are skipped. The paper's numbers
live here and only here (:data:`PAPER_TABLE2`).

Seeds. ``table.md`` lists every run; ``table2.md`` (Table 2 pooled over seeds with intervals), ``mcl_effect.md``
(X+MCL − X paired by seed and episode, with the MCL diagnostics) and ``latent_probe.md`` are built by
:mod:`~mclcore.studies.worldmodel.seeds`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from mclcore._io import save_figure, write_text_atomic
from mclcore.studies.worldmodel.following import following_markdown, load_following, pool_runs

__all__ = ["PAPER_TABLE2", "SPLITS", "METRIC_KEYS", "table_markdown", "details_markdown", "rollout_figure",
           "following_report_markdown", "report", "main"]

SPLITS = ("target", "transfer")
METRIC_KEYS = ("ssim", "psnr", "mse", "ssim_l")
# Paper, Table 2 (Robotwin, low-data target embodiment): (target task, transfer task) x (SSIM, PSNR, MSE, SSIM-L).
PAPER_TABLE2 = {
    "Wan-ACG": ((0.763, 18.61, 0.0138, 0.735), (0.763, 18.45, 0.0143, 0.732)),
    "Wan-ACG+MCL": ((0.765, 18.73, 0.0134, 0.737), (0.765, 18.58, 0.0138, 0.739)),
    "Wan-LACG": ((0.769, 18.98, 0.0127, 0.744), (0.782, 19.31, 0.0117, 0.752)),
    "Wan-LACG+MCL": ((0.772, 18.99, 0.0125, 0.749), (0.784, 19.33, 0.0115, 0.758)),
}
_FMT = ("{:.3f}", "{:.2f}", "{:.4f}", "{:.3f}")          # SSIM, PSNR, MSE, SSIM-L
_ORDER = {m: i for i, m in enumerate(("ACG", "ACG+MCL", "LACG", "LACG+MCL"))}


def _sorted(results: list[dict]) -> list[dict]:
    return sorted(results, key=lambda r: (_ORDER.get(r["method"], 9), r["seed"]))


def table_markdown(results: list[dict]) -> str:
    """Table 2's layout: for each of our runs (metrics.json dicts), the paper's Wan row of the same method beside
    ours."""
    head = ("| Method | Target SSIM ↑ | PSNR ↑ | MSE ↓ | SSIM-L ↑ "
            "| Transfer SSIM ↑ | PSNR ↑ | MSE ↓ | SSIM-L ↑ |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in _sorted(results):
        paper = PAPER_TABLE2[f"Wan-{r['method']}"]
        rows.append(f"| Wan-{r['method']} (paper) | " + " | ".join(
            f.format(v) for part in paper for f, v in zip(_FMT, part)) + " |")
        ours = [r[s][k] for s in SPLITS for k in METRIC_KEYS]
        rows.append(f"| {r['method']} (ours, {r['preset']}, seed {r['seed']}) | " + " | ".join(
            f.format(v) for f, v in zip(_FMT * 2, ours)) + " |")
    return head + "\n".join(rows) + "\n"


def details_markdown(results: list[dict]) -> str:
    """Our runs with their reference rows (AE reconstruction, first frame repeated), LACG's regressor-conditioned
    rollouts, the probe-based success where measured, and the wall times -- all read from metrics.json."""
    head = ("| Run | rows | Target SSIM | PSNR | MSE | SSIM-L | Transfer SSIM | PSNR | MSE | SSIM-L |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in _sorted(results):
        for label, suffix in (("model", ""), ("model, regressor latent actions", "_regressor"),
                              ("model, actions of another episode", "_shuffled_actions"),
                              ("AE reconstruction of GT", "_ae_recon"),
                              ("first GT frame repeated", "_copy_first_frame")):
            if f"target{suffix}" not in r:
                continue
            vals = [r[f"{s}{suffix}"][k] for s in SPLITS for k in METRIC_KEYS]
            rows.append(f"| {r['method']} | {label} | " + " | ".join(f.format(v) for f, v in zip(_FMT * 2, vals))
                        + " |")
    out = head + "\n".join(rows) + "\n"
    succ = [(r["method"], s, r[f"{s}_success"]) for r in results for s in SPLITS if f"{s}_success" in r]
    if succ:
        out += ("\n| Run | split | true success | probe on GT | probe on predicted | probe/GT agreement |\n"
                "|---|---|---|---|---|---|\n")
        out += "\n".join(f"| {m} | {s} | {v['true']:.3f} | {v['probe_on_gt']:.3f} | {v['probe_on_pred']:.3f} | "
                         f"{v['probe_gt_agreement']:.3f} |" for m, s, v in succ) + "\n"

    def secs(r):      # an --eval-only re-evaluation keeps the timing of the call that trained the run
        return r["seconds"].get("training_run", r["seconds"])
    out += ("\n| Run | training call (s) | total training call incl. its evaluation (s) | device |\n"
            "|---|---|---|---|\n" +
            "\n".join(f"| {r['method']} | {secs(r).get('train_call', float('nan')):.0f} | "
                      f"{secs(r).get('total_call', float('nan')):.0f} | {r['device']} |"
                      for r in sorted(results, key=lambda r: _ORDER.get(r["method"], 9))) + "\n")
    return out


def following_report_markdown(runs: list[tuple[dict, dict]]) -> str:
    """The action-following table across runs: (metrics.json dict, :func:`load_following` data) pairs grouped by
    method and preset, each group's seeds pooled (:func:`~mclcore.studies.worldmodel.following.pool_runs`,
    hierarchical bootstrap: seeds, then episodes within seeds), with n (episodes) and 95% intervals; the rows,
    the paired gaps and the copy baselines of every split and mode."""
    groups: dict = {}
    for r, f in runs:
        groups.setdefault((r["method"], r["preset"]), []).append((r["seed"], f))
    out = ("# Action following, runs pooled over seeds\n\n"
           "Per method: per-episode metrics of every run (one per seed) pooled by a hierarchical bootstrap (seeds "
           "resampled, then episodes within each seed; the estimate is the mean of the per-seed means; one seed = "
           "the episode bootstrap); mean [95% interval], n = episodes of all seeds (moving-region columns leave out "
           "episodes without motion). **gap** a − b: paired per-episode differences (right − shuffled = the "
           "action-following gap: > 0 in SSIM/PSNR and < 0 in MSE when the model follows its actions). One-step: "
           "frame t+1 from GT frame t; open-loop: from frame 0 (copy-last = copy-first there).\n\n")
    first = True
    for (method, preset), members in sorted(groups.items(), key=lambda kv: (_ORDER.get(kv[0][0], 9), kv[0][1])):
        members.sort(key=lambda m: m[0])
        lead = {"Method": method, "preset": preset, "seeds": ",".join(str(s) for s, _ in members)}
        out += following_markdown(pool_runs([f for _, f in members]), lead, header=first)
        first = False
    return out


def _gripper_pixels(states: np.ndarray):
    """(T+1, S) states -> (T+1, 2) pixel coordinates of the end-effector, or None without the simulator."""
    try:
        from mclcore.data import tabletop

        return np.asarray(tabletop.project(states[:, :3]), dtype=np.float64)[:, :2]
    except Exception:  # noqa: BLE001 - the simulator's projection is optional for the figure
        return None


def rollout_figure(rows: dict, states: np.ndarray, path: str, n_frames: int = 8, dpi: int = 110) -> str:
    """Rows of frames (name -> (E, H, 3, 64, 64) in [0, 1] or uint8 (E, H, 3, 64, 64)) for E episodes, ``n_frames``
    evenly spaced columns; the ground-truth gripper path (dashed yellow, from ``states`` (E, T+1, S)) is drawn on
    every row up to each column's time. Written atomically; returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    first = rows[names[0]]
    n_eps, horizon = first.shape[:2]
    cols = np.unique(np.linspace(0, horizon - 1, min(n_frames, horizon)).round().astype(int))
    fig, axes = plt.subplots(n_eps * len(names), len(cols), figsize=(1.3 * len(cols), 1.35 * n_eps * len(names)),
                             squeeze=False)
    for e in range(n_eps):
        path_px = _gripper_pixels(np.asarray(states[e]))
        for r, name in enumerate(names):
            frames = rows[name][e]
            frames = frames.float() / 255 if isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8 else \
                torch.as_tensor(frames).float() / (255.0 if np.asarray(frames).dtype == np.uint8 else 1.0)
            for c, t in enumerate(cols):
                ax = axes[e * len(names) + r, c]
                ax.imshow(frames[t].permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, 64, 64, 0))
                if path_px is not None:       # predicted frame t is time t+1 of the episode
                    ax.plot(path_px[: t + 2, 0], path_px[: t + 2, 1], "--", color="yellow", lw=0.8)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_xlim(0, 64), ax.set_ylim(64, 0)
                if c == 0:
                    ax.set_ylabel(name, fontsize=7)
                if e == 0 and r == 0:
                    ax.set_title(f"t={t + 1}", fontsize=7)
    fig.tight_layout(pad=0.2)
    save_figure(fig, path, dpi=dpi)
    return path


def report(run_dirs: list[str], out_dir: str) -> dict:
    """Combine finished runs: ``table.md`` (all runs, the paper beside), ``details.md``, and, from the runs'
    ``following.json`` (where some run has one): ``following.md`` (the action-following table pooled over the seeds
    of each method), ``table2.md`` (Table 2 pooled over seeds with intervals), ``gaps.md`` (the moving-region
    gaps of issue #19's targets), ``mcl_effect.md`` (X+MCL − X, paired);
    ``latent_probe.md`` when a LACG run has a probe; ``rollout_acg.png`` / ``rollout_lacg.png`` (GT / X / X+MCL on
    the same target-task episodes, each method's lowest seed) from the runs that kept ``rollouts.npz``.
    Returns {name: path}."""
    from mclcore.studies.worldmodel.seeds import (gaps_markdown, mcl_diagnostics_markdown, mcl_effect,
                                                  mcl_effect_markdown, pooled_table_markdown, probe_markdown)

    results, rolls, follows = [], {}, []
    for d in run_dirs:
        with open(os.path.join(d, "metrics.json")) as f:
            r = json.load(f)
        results.append(r)
        npz = os.path.join(d, "rollouts.npz")
        if os.path.exists(npz) and (r["method"] not in rolls or r["seed"] < rolls[r["method"]][0]):
            rolls[r["method"]] = (r["seed"], npz)
        f = load_following(d)       # None: evaluated before the action-following evaluation, or with it off
        if f is not None:
            follows.append((r, f))
    if not results:
        raise ValueError("run_dirs: no finished runs given")
    os.makedirs(out_dir, exist_ok=True)
    out = {"table": os.path.join(out_dir, "table.md"), "details": os.path.join(out_dir, "details.md")}
    write_text_atomic(out["table"], table_markdown(results))
    write_text_atomic(out["details"], details_markdown(results))
    if follows:
        diag = mcl_diagnostics_markdown(results)
        for name, text in (("following", following_report_markdown(follows)),
                           ("table2", pooled_table_markdown(follows)),
                           ("gaps", gaps_markdown(follows)),
                           ("mcl_effect", mcl_effect_markdown(mcl_effect(follows))
                            + (f"\nMCL diagnostics at the end of training:\n\n{diag}" if diag else ""))):
            out[name] = os.path.join(out_dir, f"{name}.md")
            write_text_atomic(out[name], text)
    if any("latent_action_probe" in r for r in results):
        out["latent_probe"] = os.path.join(out_dir, "latent_probe.md")
        write_text_atomic(out["latent_probe"], probe_markdown(results))
    for v in ("ACG", "LACG"):
        have = [m for m in (v, f"{v}+MCL") if m in rolls]
        if not have:
            continue
        npz = {m: np.load(rolls[m][1]) for m in have}
        rows = {"GT": npz[have[0]]["target_gt"], **{m: npz[m]["target_pred"] for m in have}}
        out[v] = rollout_figure(rows, npz[have[0]]["target_states"],
                                os.path.join(out_dir, f"rollout_{v.lower()}.png"), dpi=80)
    return out


def main(argv=None) -> int:
    """``python -m mclcore.studies.worldmodel.report RUN_DIR... --out DIR``; a missing or unfinished run folder is
    one line on stderr and exit code 2."""
    p = argparse.ArgumentParser(prog="python -m mclcore.studies.worldmodel.report",
                                description="combine finished world-model runs into Table 2 and the rollout figures")
    p.add_argument("runs", nargs="+", help="run folders (with metrics.json; following.json and rollouts.npz "
                                           "where they exist)")
    p.add_argument("--out", required=True, help="folder for table.md, details.md, following.md, table2.md, "
                                                "mcl_effect.md, latent_probe.md and rollout_*.png")
    a = p.parse_args(argv)
    missing = [os.path.join(d, "metrics.json") for d in a.runs if not os.path.exists(os.path.join(d, "metrics.json"))]
    if missing:
        print(f"runs: not finished and evaluated (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    for k, v in report(a.runs, a.out).items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
