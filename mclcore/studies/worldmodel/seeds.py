"""Table 2 over several seeds, the MCL effect and the LACG probes (issue #19 item 4): the seed-pooled tables of
:mod:`~mclcore.studies.worldmodel.report`.

Reads only what runs wrote (``metrics.json`` dicts and :func:`~mclcore.studies.worldmodel.following.load_following`
data); imports no training code.

* :func:`pooled_table_markdown` -- Table 2's whole-frame metrics of the open-loop rollouts with the right actions
  (the same samples as ``metrics.json``'s rows, kept per episode in ``following.json``), mean of the per-seed means
  with a hierarchical 95% bootstrap interval (seeds, then episodes:
  :func:`~mclcore.studies.worldmodel.following.pool_seeds`);
* :func:`gaps_markdown` -- the issue's targets in one table: per method and split, the moving-region PSNR gaps
  (right − shuffled one-step and open loop, open loop − copy-first, one-step − copy-last), pooled the same way;
* :func:`mcl_effect` / :func:`mcl_effect_markdown` -- X+MCL − X per variant, paired by seed and episode (the
  evaluation episodes and the sampling noise are the same in every run), on the Table 2 metrics and on the
  action-following gap (right − shuffled);
* :func:`mcl_diagnostics_markdown` -- the MCL runs' last diagnostics; :func:`probe_markdown` -- the LACG runs'
  latent-action probes (:mod:`~mclcore.studies.worldmodel.latent_probe`).
"""
from __future__ import annotations

import numpy as np

from mclcore.studies.worldmodel.following import format_interval as _ci, paired_gap, pool_seeds
from mclcore.studies.worldmodel.report import _FMT, _ORDER, METRIC_KEYS, PAPER_TABLE2, SPLITS, _sorted

__all__ = ["pooled_table_markdown", "gaps_markdown", "mcl_effect", "mcl_effect_markdown", "mcl_diagnostics_markdown",
           "probe_markdown"]
def _groups(runs: list[tuple[dict, dict]]) -> dict:
    """(metrics.json, following data) pairs -> {(method, preset): {seed: (metrics, following)}}."""
    groups: dict = {}
    for r, f in runs:
        groups.setdefault((r["method"], r["preset"]), {})[r["seed"]] = (r, f)
    return groups


def pooled_table_markdown(runs: list[tuple[dict, dict]]) -> str:
    """Table 2 pooled over seeds: per method and preset, the paper's Wan row, then ours: SSIM, PSNR, MSE of the
    open-loop rollouts with the right actions (per episode from ``following.json``; mean of the seed means [95%
    hierarchical bootstrap over seeds and episodes]) and SSIM-L (only an aggregate in ``metrics.json``: mean over
    seeds [min, max of the seeds]); n = seeds x episodes."""
    head = ("| Method | seeds | n | Target SSIM ↑ | PSNR ↑ | MSE ↓ | SSIM-L ↑ "
            "| Transfer SSIM ↑ | PSNR ↑ | MSE ↓ | SSIM-L ↑ |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for (method, preset), seeds in sorted(_groups(runs).items(), key=lambda kv: (_ORDER.get(kv[0][0], 9), kv[0][1])):
        paper = PAPER_TABLE2.get(f"Wan-{method}")
        if paper is not None:
            rows.append(f"| Wan-{method} (paper) | – | – | " + " | ".join(
                f.format(v) for part in paper for f, v in zip(_FMT, part)) + " |")
        cells, n = [], 0
        for split in SPLITS:
            pes = [f["splits"][split]["per_episode"]["open_loop"]["right"] for _, f in seeds.values()]
            for k, fmt in zip(METRIC_KEYS[:3], _FMT[:3]):
                pooled = pool_seeds([pe[k] for pe in pes])
                cells.append(_ci(pooled, fmt))
                n = pooled["n"]
            ssim_l = [r[split]["ssim_l"] for r, _ in seeds.values()]
            cells.append(f"{np.mean(ssim_l):.3f} [{min(ssim_l):.3f}, {max(ssim_l):.3f}]" if len(ssim_l) > 1
                         else f"{ssim_l[0]:.3f}")
        rows.append(f"| {method} (ours, {preset}) | {','.join(str(s) for s in sorted(seeds))} | {n} | "
                    + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


# the targets' columns: (header, mode, (a, b)) of moving-region PSNR paired gaps a - b
_GAP_COLUMNS = (("one-step right − shuffled", "one_step", ("right", "shuffled")),
                ("open-loop right − shuffled", "open_loop", ("right", "shuffled")),
                ("open-loop right − copy (frame 0 repeated)", "open_loop", ("right", "copy_first")),
                ("one-step right − copy-last", "one_step", ("right", "copy_last")))


def gaps_markdown(runs: list[tuple[dict, dict]]) -> str:
    """Per method, preset and split: the moving-region PSNR gaps of :data:`_GAP_COLUMNS`, each a per-episode paired
    difference pooled over seeds (mean [95% hierarchical interval]); n = seeds x episodes with motion."""
    out = ["| Method | preset | seeds | split | n | " + " | ".join(h for h, _, _ in _GAP_COLUMNS) + " |",
           "|---|---|---|---|---|" + "---|" * len(_GAP_COLUMNS)]
    for (method, preset), seeds in sorted(_groups(runs).items(), key=lambda kv: (_ORDER.get(kv[0][0], 9), kv[0][1])):
        for split in SPLITS:
            if not all(split in f["splits"] for _, f in seeds.values()):
                continue
            cells, n = [], 0
            for _, kind, (a, b) in _GAP_COLUMNS:
                pes = [f["splits"][split]["per_episode"][kind] for _, f in seeds.values()]
                pooled = pool_seeds([paired_gap(pe[a]["moving_psnr"], pe[b]["moving_psnr"]) for pe in pes])
                cells.append(_ci(pooled, "{:+.3f}"))
                n = pooled["n"]
            out.append(f"| {method} | {preset} | {','.join(str(s) for s in sorted(seeds))} | {split} | {n} | "
                       + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# what mcl_effect compares: (label, mode, quantity a or gap a-b, metric)
_EFFECT_ROWS = tuple(("open-loop rollout, right actions (Table 2)", "open_loop", "right", m)
                     for m in ("ssim", "psnr", "mse", "moving_psnr")) + (
    ("action-following gap right − shuffled, one-step", "one_step", ("right", "shuffled"), "moving_psnr"),
    ("action-following gap right − shuffled, open-loop", "open_loop", ("right", "shuffled"), "moving_psnr"),
    ("action-following gap right − shuffled, open-loop", "open_loop", ("right", "shuffled"), "psnr"))


def mcl_effect(runs: list[tuple[dict, dict]]) -> list[dict]:
    """X+MCL − X for every variant X with both methods at one preset, over the seeds both have: per seed, the
    per-episode paired difference of each quantity of :data:`_EFFECT_ROWS` (a row value, or a paired gap), pooled
    over seeds by :func:`pool_seeds` (hierarchical). Rows: {"variant", "preset", "seeds", "split", "label",
    "mode", "quantity", "metric", "base", "mcl", "diff"} with base/mcl/diff pooled summaries."""
    groups, out = _groups(runs), []
    for (method, preset), base in sorted(groups.items(), key=lambda kv: (_ORDER.get(kv[0][0], 9), kv[0][1])):
        if method.endswith("+MCL") or (f"{method}+MCL", preset) not in groups:
            continue
        mcl = groups[(f"{method}+MCL", preset)]
        seeds = sorted(set(base) & set(mcl))
        if not seeds:
            continue
        for split in SPLITS:
            if not all(split in d[s][1]["splits"] for d in (base, mcl) for s in seeds):
                continue

            def value(runs_, s, kind, q, m, split=split):
                pe = runs_[s][1]["splits"][split]["per_episode"][kind]
                return pe[q][m] if isinstance(q, str) else paired_gap(pe[q[0]][m], pe[q[1]][m])
            for label, kind, q, m in _EFFECT_ROWS:
                b = [value(base, s, kind, q, m) for s in seeds]
                c = [value(mcl, s, kind, q, m) for s in seeds]
                out.append({"variant": method, "preset": preset, "seeds": seeds, "split": split, "label": label,
                            "mode": kind, "quantity": q if isinstance(q, str) else f"{q[0]}-{q[1]}", "metric": m,
                            "base": pool_seeds(b), "mcl": pool_seeds(c),
                            "diff": pool_seeds([paired_gap(ci, bi) for bi, ci in zip(b, c)])})
    return out


_MFMT = {"ssim": "{:.4f}", "psnr": "{:.3f}", "mse": "{:.5f}", "moving_psnr": "{:.3f}", "moving_mse": "{:.5f}"}


def mcl_effect_markdown(rows: list[dict]) -> str:
    """:func:`mcl_effect` as a table: X, X+MCL and the paired difference X+MCL − X [95% interval]."""
    if not rows:
        return "No variant has runs with and without MCL at one preset.\n"
    out = ["| variant | preset | seeds | split | quantity | metric | n | X | X+MCL | X+MCL − X |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = _MFMT[r["metric"]]
        out.append(f"| {r['variant']} | {r['preset']} | {','.join(str(s) for s in r['seeds'])} | {r['split']} | "
                   f"{r['label']} | {r['metric'].replace('_', ' ')} | {r['diff']['n']} | "
                   f"{_ci(r['base'], f)} | {_ci(r['mcl'], f)} | {_ci(r['diff'], f)} |")
    return "\n".join(out) + "\n"


def mcl_diagnostics_markdown(results: list[dict]) -> str:
    """The MCL runs' last logged diagnostics (metrics.json ``mcl_*``, :mod:`mclcore.losses.diagnostics`): InfoNCE
    loss, top-1 readout accuracy of the contrasted mechanism gradient, of the generator term alone and of the
    critic's direct term alone (chance = 1 / batch), the shortcut share and the MCL / host gradient-norm ratio on the
    forward model. Where a run logged it, also the generator term's with z from another row
    (``mcl_acc_generator_independent``; a column only then, so tables of runs from before it keep their shape)."""
    rows = [r for r in _sorted(results) if r.get("mcl") and "mcl_acc" in r]
    if not rows:
        return ""
    ind = any("mcl_acc_generator_independent" in r for r in rows)
    out = ["| Method | preset | seed | step | λ | L_MCL | top-1 acc | acc generator term | "
           + ("acc generator term, z from another row | " if ind else "")
           + "acc direct term | chance | shortcut share | grad ratio MCL/host |",
           "|---|---|---|---|---|---|---|---|" + ("---|" if ind else "") + "---|---|---|---|"]
    for r in rows:
        other = r.get("mcl_acc_generator_independent")
        extra = "" if not ind else "– | " if other is None else f"{other:.3f} | "
        out.append(f"| {r['method']} | {r['preset']} | {r['seed']} | {r['mcl_step']} | {r['mcl_weight']:g} | "
                   f"{r['mcl_loss']:.3f} | {r['mcl_acc']:.3f} | {r['mcl_acc_generator']:.3f} | {extra}"
                   f"{r['mcl_acc_direct']:.3f} | {r['mcl_chance']:.3f} | {r['mcl_shortcut_share']:.3f} | "
                   f"{r['mcl_grad_ratio']:.3f} |")
    return "\n".join(out) + "\n"


def probe_markdown(results: list[dict]) -> str:
    """The LACG runs' latent-action probes (metrics.json ``latent_action_probe``): per run and split, the
    cross-embodiment R^2 (fitted on all training episodes), per action dimension, the same-embodiment R^2 and the
    IDM's KL; then the mean over seeds per method [min, max]."""
    rows = [r for r in _sorted(results) if "latent_action_probe" in r]
    if not rows:
        return "No LACG run with a latent-action probe.\n"
    out = ["| Method | preset | seed | split | R² (4-d) | R² dx, dy, dz, gripper | R² same embodiment | "
           "R² same emb. dx, dy, dz, gripper | KL (nats) |", "|---|---|---|---|---|---|---|---|---|"]
    pooled: dict = {}
    for r in rows:
        for split, p in r["latent_action_probe"].items():
            same = p.get("same_embodiment") or {}
            sr2 = same.get("r2", float("nan"))
            out.append(f"| {r['method']} | {r['preset']} | {r['seed']} | {split} | {p['r2']:.3f} | "
                       + ", ".join(f"{v:.2f}" for v in p["r2_per_dim"]) + f" | {sr2:.3f} | "
                       + (", ".join(f"{v:.2f}" for v in same["r2_per_dim"]) if same else "–")
                       + f" | {p['kl_total']:.2f} |")
            pooled.setdefault((r["method"], r["preset"], split), []).append((p["r2"], sr2))
    out += ["", "| Method | preset | split | seeds | R² mean [min, max] | R² same embodiment mean [min, max] |",
            "|---|---|---|---|---|---|"]
    for (m, pr, split), v in sorted(pooled.items(), key=lambda kv: (_ORDER.get(kv[0][0], 9), kv[0][1:])):
        a = np.asarray(v, np.float64)
        out.append(f"| {m} | {pr} | {split} | {len(v)} | {a[:, 0].mean():.3f} [{a[:, 0].min():.3f}, "
                   f"{a[:, 0].max():.3f}] | {a[:, 1].mean():.3f} [{a[:, 1].min():.3f}, {a[:, 1].max():.3f}] |")
    return "\n".join(out) + "\n"

