"""Action following of the world model (issue #19 items 1 and 5): an evaluation that can *see* whether the model
uses its actions.

Why. Whole-frame metrics of open-loop rollouts (:mod:`~mclcore.studies.worldmodel.evaluate`) cannot tell a model
that ignores its actions from one that follows them: most of a tabletop frame is a static table, and a rollout that
blurs the arm after a few frames scores about the same whatever drives it. Three changes make following visible:

* **The moving region** (:func:`~mclcore.studies.worldmodel.following_eval.moving_mask`): the metrics are also
  computed only on the pixels that change between consecutive ground-truth frames -- the arm and the object it
  carries -- where the action decides the frame.
* **Teacher-forced one-step predictions** (:func:`~mclcore.studies.worldmodel.following_eval.one_step`): frame t+1
  predicted from the GT frame t, for every t, so the error does not compound and the action's effect on one step is
  measured on its own.
* **Action controls on the same frames, masks and sampling noise**: the right actions, another episode's actions
  ("shuffled": episode i gets the actions of episode i+1 at the same t, as ``rollouts(shuffle=True)`` does; for LACG
  with ``eval.lacg_actions=idm`` the IDM reads that episode's frames), and the zero action (ACG: the recorded
  4-vector (dx, dy, dz, gripper_command) = 0 -- in the tabletop simulator "hold the arm still, command the gripper
  closed"; LACG: the zero latent action, the mean of the IDM's N(0, I) prior). Every action mode of one split uses
  the *same* sampling noise (a generator re-seeded with ``cfg.seed + NOISE_SEED_OFFSET``: common random numbers),
  so a difference between modes is the action's doing, not the sampler's.

Reference rows on the same frames and masks: ``copy_last`` (one-step: predict GT frame t for t+1, the natural
baseline -- it scores exactly zero "motion" and is wrong precisely on the moving region), ``copy_first`` (the first
GT frame repeated; for open loop it *is* copy-last: the start frame repeated) and ``ae_recon`` (the frozen
autoencoder's reconstruction of the GT frame: the decoder's ceiling, the same in both modes).

Statistics. Everything is kept per episode (arrays of n_eval values per split, mode, row and metric;
``following.json``). The **action-following gap** is ``metric(right) - metric(shuffled)``, a *paired* per-episode
difference (same start frames, masks and noise on both sides), with a 95% percentile-bootstrap interval over
episodes (:func:`mclcore.metrics.stats.summarize`). Sign: a model that follows its actions has a positive gap in
SSIM/PSNR and a negative one in MSE. Runs of several seeds are pooled by :func:`pool_seeds`.

LACG caveat: with ``eval.lacg_actions=idm`` the "right" latent action is the IDM mean on the GT pair (v_t, v_{t+1}),
so a one-step prediction is conditioned on something computed from its own target (the latent-action protocol; see
:class:`~mclcore.models.worldmodel.WorldModel`). A gap there says the forward model reads its latent action, not
that a controller could drive it; ``eval.lacg_actions=regressor`` is the honest interface.

Split by concern: this module holds the constants, the statistics (paired gaps, bootstrap intervals, seed pooling)
and the outputs (summaries, markdown, figure, ``following.json``); it imports no training code and no model code
(the report reads :func:`load_following` / :func:`pool_runs` from it). The measurement -- the moving region, the
per-frame metrics and everything that runs the model -- is :mod:`~mclcore.studies.worldmodel.following_eval`.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from mclcore._io import save_figure, write_json_atomic, write_text_atomic
from mclcore.metrics.stats import summarize

__all__ = ["ACTION_MODES", "MODES", "ROWS", "METRICS", "GAPS", "NOISE_SEED_OFFSET", "paired_gap", "format_interval",
           "summarize_episodes", "pool_seeds", "summarize_following", "following_markdown", "run_markdown",
           "pool_runs", "per_frame_figure", "write_following", "load_following"]

ACTION_MODES = ("right", "shuffled", "zero")
MODES = ("one_step", "open_loop")
# rows per mode; open-loop copy-last would be the start frame repeated, i.e. copy_first, so it is not repeated
ROWS = {"one_step": ("right", "shuffled", "zero", "copy_last", "copy_first", "ae_recon"),
        "open_loop": ("right", "shuffled", "zero", "copy_first", "ae_recon")}
METRICS = ("ssim", "psnr", "mse", "moving_psnr", "moving_mse")
# paired per-episode differences a - b; "right-shuffled" is the action-following gap
GAPS = {"one_step": (("right", "shuffled"), ("right", "zero"), ("right", "copy_last")),
        "open_loop": (("right", "shuffled"), ("right", "zero"), ("right", "copy_first"))}
# the sampling noise of every action mode: the offset evaluate.rollouts has always used, so the open-loop "right"
# and "shuffled" rollouts of the Table 2 rows and of this evaluation are the same samples
NOISE_SEED_OFFSET = 4321
PSNR_EPS = 1e-10            # MSE floor of the PSNR, as mclcore.metrics.video.psnr (a perfect frame is 100 dB)
_LABEL = {"right": "right actions", "shuffled": "another episode's actions", "zero": "zero action",
          "copy_last": "copy last GT frame", "copy_first": "copy first GT frame", "ae_recon": "AE reconstruction"}


# ------------------------------------------------------------------------------------------------------ statistics
def paired_gap(a, b) -> np.ndarray:
    """Per-episode paired difference ``a - b`` of two (N,) arrays over the same episodes (NaN where either is)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"b: expected the shape of a {a.shape} (one value per episode), got {b.shape}")
    return a - b


def summarize_episodes(values, level: float = 0.95, seed: int = 0) -> dict:
    """:func:`mclcore.metrics.stats.summarize` of the finite values: {"n", "mean", "median", "lo", "hi"} (n counts
    the episodes that entered; NaN episodes -- nothing moved -- are left out)."""
    x = np.asarray(values, np.float64).reshape(-1)
    return summarize(x[np.isfinite(x)], level, seed=seed)


def pool_seeds(per_seed, level: float = 0.95, n_boot: int = 10_000, seed: int = 0,
               method: str = "hierarchical") -> dict:
    """One interval from several runs (one per training seed), each a 1-D array of per-episode values (NaN left
    out). The estimate is the mean of the per-seed means (each run counts once, whatever its n).

    ``method``:

    * ``"hierarchical"`` (default): each bootstrap draw resamples the seeds with replacement, then the episodes
      within each drawn seed -- the interval covers run-to-run (training seed) variation as well as the episodes.
      This is the interval for "does this *method* follow actions". With one seed it is the episode bootstrap.
      With few seeds (2-3) it is wide and coarse, which is honest about what few seeds can say.
    * ``"stratified"``: the seeds are kept, only the episodes within each seed are resampled -- the interval of
      these particular trained models (conditional on the seeds), narrower.

    Returns {"n" (episodes), "n_seeds", "mean", "lo", "hi", "method"}; NaN interval with fewer than 2 episodes in
    total.
    """
    if method not in ("hierarchical", "stratified"):
        raise ValueError(f"method: expected 'hierarchical' or 'stratified', got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    xs = [np.asarray(x, np.float64).reshape(-1) for x in per_seed]
    xs = [x[np.isfinite(x)] for x in xs]
    xs = [x for x in xs if x.size]
    n = int(sum(x.size for x in xs))
    out = {"n": n, "n_seeds": len(xs), "mean": float(np.mean([x.mean() for x in xs])) if xs else float("nan"),
           "lo": float("nan"), "hi": float("nan"), "method": method}
    if n < 2:
        return out
    rng = np.random.default_rng(seed)
    s = len(xs)
    if method == "hierarchical":
        # each draw b fills S slots with seeds picked with replacement; every (draw, slot) gets its own episode
        # resample of its seed (a seed drawn twice in one draw gets two). Only the picked (draw, slot) pairs are
        # resampled: n_boot * S resamples instead of S * S (3 seeds x 32 episodes: 58 -> 24 ms a call on the 2-core
        # VM at load 8, 2026-12-06; the report of the cpu preset makes ~1,000 calls)
        pick = rng.integers(0, s, size=(n_boot, s))                            # (n_boot, S) seed per slot
        slot_means = np.empty((n_boot, s))
        for k, x in enumerate(xs):
            rows, cols = np.nonzero(pick == k)
            if rows.size:
                slot_means[rows, cols] = x[rng.integers(0, x.size, size=(rows.size, x.size))].mean(1)
        means = slot_means.mean(1)
    else:
        means = np.mean([x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1) for x in xs], axis=0)
    a = (1 - level) / 2
    out["lo"], out["hi"] = (float(v) for v in np.quantile(means, [a, 1 - a]))
    return out


def _array(x) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in x], dtype=np.float64)


# ------------------------------------------------------------------------------------------ summaries and outputs
def summarize_following(splits: dict) -> dict:
    """{split: {mode: {row or gap: {metric: summary}}}} from :func:`split_following` results ({split: result}):
    every row's mean with its 95% bootstrap interval over episodes, and the paired gaps of :data:`GAPS` (named
    ``"right-shuffled"`` etc.; ``right-shuffled`` is the action-following gap). Plus ``moving`` per split."""
    out = {}
    for split, r in splits.items():
        s = {"episodes": r["episodes"], "horizon": r["horizon"], "moving": {
            "frames_with_motion": int(sum(r["moving"]["frames_with_motion"])),
            "frames": r["horizon"] * r["episodes"], "pixel_fraction": r["moving"]["pixel_fraction"]}}
        for kind in MODES:
            pe = r["per_episode"][kind]
            s[kind] = {row: {m: summarize_episodes(_array(pe[row][m])) for m in METRICS} for row in ROWS[kind]}
            for a, b in GAPS[kind]:
                s[kind][f"{a}-{b}"] = {m: summarize_episodes(paired_gap(_array(pe[a][m]), _array(pe[b][m])))
                                       for m in METRICS}
        out[split] = s
    return out


_FMT = {"ssim": "{:.3f}", "psnr": "{:.2f}", "mse": "{:.4f}", "moving_psnr": "{:.2f}", "moving_mse": "{:.4f}"}
_HEAD = ("SSIM", "PSNR", "MSE", "moving PSNR", "moving MSE")


def format_interval(s: dict, fmt: str) -> str:
    """``mean [lo, hi]`` of a summary in ``fmt``; the mean alone without an interval, "–" without a mean."""
    if not math.isfinite(s["mean"]):
        return "–"
    if not math.isfinite(s["lo"]):
        return fmt.format(s["mean"])
    return f"{fmt.format(s['mean'])} [{fmt.format(s['lo'])}, {fmt.format(s['hi'])}]"


def _cell(s: dict, metric: str, gap: bool = False) -> str:
    f = _FMT[metric]
    if gap:                 # differences are small: one more decimal
        f = "{:.%df}" % (int(f[-3]) + 1)
    return format_interval(s, f)


def _row_label(row: str) -> str:
    if "-" in row:
        a, b = row.split("-", 1)
        return f"**gap** {a} − {b.replace('_', '-')}"
    return _LABEL.get(row, row)


def following_markdown(summary: dict, lead: dict[str, str] | None = None, header: bool = True) -> str:
    """A markdown table of :func:`summarize_following` (or pooled) summaries: one line per split x mode x row,
    ``mean [lo, hi]`` per metric and the n of the whole-frame PSNR column (moving-region n may be smaller: episodes
    without motion are left out). ``lead``: extra leading columns ({name: value}, e.g. the method and seeds)."""
    lead = lead or {}
    out = []
    if header:
        cols = [*lead, "split", "mode", "row", "n", *_HEAD]
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for split, s in summary.items():
        for kind in MODES:
            for row, v in s[kind].items():
                out.append("| " + " | ".join([*lead.values(), split, kind.replace("_", "-"), _row_label(row),
                                              str(v["psnr"]["n"]), *(_cell(v[m], m, "-" in row) for m in METRICS)])
                           + " |")
    return "\n".join(out) + "\n"


def run_markdown(res: dict, summary: dict) -> str:
    """``following.md`` of one run: what was measured, then the table."""
    return (f"# Action following: {res.get('method', '?')} seed {res.get('seed', '?')} ({res.get('preset', '?')})\n\n"
            "One-step: frame t+1 predicted from GT frame t; open-loop: rollout from frame 0. Rows: right actions, "
            "another episode's actions (episode i+1's), zero action; copy baselines and the AE reconstruction on the "
            "same frames. **gap** a − b: paired per-episode difference (right − shuffled = action-following gap: "
            "> 0 in SSIM/PSNR, < 0 in MSE when the model follows its actions). Moving region: pixels changing "
            f"between consecutive GT frames (threshold {res.get('moving_threshold')}, dilated "
            f"{res.get('moving_dilate')} px); mean [95% bootstrap interval over episodes]; open-loop copy-last = "
            "copy-first.\n\n" + following_markdown(summary))


def pool_runs(runs: list[dict], method: str = "hierarchical") -> dict:
    """Pool the :func:`load_following` data of several runs of one method (one per seed) into the structure of
    :func:`summarize_following`: every row and paired gap (per seed, episode by episode, then pooled) with its
    :func:`pool_seeds` interval. Only splits, modes and rows that every run has are pooled."""
    if not runs:
        raise ValueError("runs: nothing to pool")
    out = {}
    for split in [s for s in runs[0]["splits"] if all(s in r["splits"] for r in runs)]:
        rs = [r["splits"][split] for r in runs]
        s = {"episodes": int(sum(r["episodes"] for r in rs)), "horizon": rs[0]["horizon"]}
        for kind in MODES:
            pes = [r["per_episode"][kind] for r in rs]
            rows = [row for row in ROWS[kind] if all(row in pe for pe in pes)]
            s[kind] = {row: {m: pool_seeds([pe[row][m] for pe in pes], method=method) for m in METRICS}
                       for row in rows}
            for a, b in GAPS[kind]:
                if a in rows and b in rows:
                    s[kind][f"{a}-{b}"] = {m: pool_seeds([paired_gap(pe[a][m], pe[b][m]) for pe in pes],
                                                         method=method) for m in METRICS}
        out[split] = s
    return out


def per_frame_figure(per_frame: dict, path: str, rows=("right", "shuffled", "zero", "copy_last", "copy_first"),
                     dpi: int = 110) -> str:
    """Moving-region PSNR against the predicted frame's index, one panel per split x mode: {split: {mode: {row: (H,)
    list, None where no episode moved}}} (mean over the episodes with motion at that frame). Action modes solid, copy
    baselines dashed (open loop has no separate copy-last: it is copy-first). Written atomically; returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(per_frame)
    fig, axes = plt.subplots(len(splits), len(MODES), figsize=(4.2 * len(MODES), 2.8 * len(splits)), squeeze=False,
                             sharey=True)
    for i, split in enumerate(splits):
        for j, kind in enumerate(MODES):
            ax = axes[i, j]
            for c, row in enumerate(rows):        # one colour per row in every panel
                if row in per_frame[split][kind]:
                    y = _array(per_frame[split][kind][row])
                    ax.plot(np.arange(1, y.size + 1), y, label=_LABEL.get(row, row), lw=1.2, color=f"C{c}",
                            ls="--" if row.startswith("copy") else "-")
            ax.set_title(f"{split}, {kind.replace('_', '-')}", fontsize=8)
            ax.set_xlabel("predicted frame t", fontsize=7)
            if j == 0:
                ax.set_ylabel("moving-region PSNR (dB)", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout(pad=0.3)
    save_figure(fig, path, dpi=dpi)
    return path


def write_following(out_dir: str, res: dict, splits: dict, summary: dict) -> dict:
    """Write ``following.json`` (settings, per-episode arrays, per-frame curves, mask statistics; NaN as null) and
    ``following.md`` into ``out_dir``; returns {name: path}."""
    data = {k: res.get(k) for k in ("method", "variant", "mcl", "preset", "seed", "moving_threshold",
                                    "moving_dilate", "sample_steps", "sampler", "lacg_actions")}
    data["noise_seed"] = res.get("seed", 0) + NOISE_SEED_OFFSET
    data["splits"] = {s: {k: v for k, v in r.items() if not k.startswith("_")} for s, r in splits.items()}
    paths = {"json": os.path.join(out_dir, "following.json"), "md": os.path.join(out_dir, "following.md")}
    write_json_atomic(data, paths["json"], indent=1, sort_keys=False)
    write_text_atomic(paths["md"], run_markdown(res, summary))
    return paths


def load_following(run_dir: str) -> dict | None:
    """A run's ``following.json`` with the per-episode lists turned into float arrays (NaN for null); None when the
    run has none (evaluated before this evaluation existed, or with ``eval.following=false``)."""
    path = os.path.join(run_dir, "following.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    for r in data["splits"].values():
        for kind in r["per_episode"].values():
            for row, ms in kind.items():
                kind[row] = {m: _array(v) for m, v in ms.items()}
    return data
