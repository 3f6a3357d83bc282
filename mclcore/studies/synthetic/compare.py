"""Paired comparisons of the synthetic study's models, with 95% bootstrap intervals, and the landscape report.

A cell's seeds are paired across models: seed s draws the dataset of every model of the cell (and each model's own
initialisation), so ``MCC(MD-VAE, s) - MCC(beta-VAE, s)`` is a per-seed difference and its interval
(:func:`mclcore.metrics.stats.bootstrap_ci` of the mean) excludes the spread the seeds share. This module reads
result rows only (no training code), like :mod:`mclcore.studies.synthetic.report`, which calls it.

The landscape (``--preset landscape``; StudyConfig axes ``mixings`` x ``decoder_vars`` x ``shift_scales``) is
reported as ``landscape.md`` (one line per cell: SNR, u-blind ceiling, each model's mean MCC with its interval,
the paired differences, active dimensions and KL) and ``landscape.png`` (heat maps of the paired differences,
one panel per shift scale, mixing family x decoder variance, each cell annotated with mean and interval; a
frame marks an interval that excludes 0).
"""
from __future__ import annotations

import math
import os

import numpy as np

from mclcore._io import save_figure, write_text_atomic
from mclcore.metrics.stats import summarize

__all__ = ["PAIRS", "cell_key", "paired", "unpaired", "fmt_ci", "landscape"]

MODEL_NAMES = {"betavae": "β-VAE", "ivae": "iVAE", "mdvae": "MD-VAE", "mdvae_mcl": "MD-VAE+MCL",
               "compvae": "CompVAE", "mmdvae": "MMD-VAE", "qlae": "QLAE", "intervae": "InterVAE"}
# One colour per model for every plot of the study (report.py's and this module's).
COLORS = {"betavae": "#8c8c8c", "ivae": "#4c72b0", "mdvae": "#dd8452", "mdvae_mcl": "#c44e52",
          "compvae": "#55a868", "mmdvae": "#8172b3", "qlae": "#937860", "intervae": "#da8bc3"}
# (a, b): report a - b, paired by seed, where both models ran
PAIRS = (("mdvae", "betavae"), ("mdvae", "ivae"), ("mdvae_mcl", "mdvae"))
# The paper's §5.1 medians at dz = 5, |U| = 8 (the magnitudes the landscape looks for; report.py keeps the rest).
PAPER_DZ5 = {"betavae": 0.53, "ivae": 0.80, "mdvae": 0.96}


def cell_key(r: dict) -> tuple:
    """(process, dz, |U|, mixing, decoder_var, decoder_var_learned, shift_scale) of a result row (rows written
    before these fields existed get the defaults they ran with)."""
    return (r["process"], r["dz"], r["n_alphabet"], r.get("mixing", "leaky_relu"), float(r.get("decoder_var", 0.01)),
            bool(r.get("decoder_var_learned", False)), float(r.get("shift_scale", 1.0)))


def paired(by_seed_a: dict, by_seed_b: dict) -> dict | None:
    """Summary (n, mean, median, lo, hi) of ``a - b`` over the seeds both have; None when they share none."""
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    if not seeds:
        return None
    return summarize([by_seed_a[s] - by_seed_b[s] for s in seeds])


def unpaired(a: list, b: list, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> dict | None:
    """Summary of ``mean(a) - mean(b)`` for two independent groups (two cells: different data), its percentile
    bootstrap interval resampling each group on its own; None when a group has fewer than 2 values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return None
    rng = np.random.default_rng(seed)
    d = a[rng.integers(0, a.size, (n_boot, a.size))].mean(1) - b[rng.integers(0, b.size, (n_boot, b.size))].mean(1)
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return {"n": int(min(a.size, b.size)), "mean": float(a.mean() - b.mean()), "median": float("nan"),
            "lo": float(lo), "hi": float(hi)}


def fmt_ci(s: dict | None, signed: bool = False, n: bool = True) -> str:
    """``0.62 [0.58, 0.66]`` (mean and 95% interval), with ``n=`` when asked; ``–`` for nothing."""
    if not s or not s["n"]:
        return "–"
    f = "{:+.2f}" if signed else "{:.2f}"
    out = f.format(s["mean"])
    if not math.isnan(s["lo"]):
        out += f" [{f.format(s['lo'])}, {f.format(s['hi'])}]"
    return out + (f" (n={s['n']})" if n else "")


def _excludes_zero(s: dict | None) -> bool:
    return bool(s) and not math.isnan(s["lo"]) and (s["lo"] > 0 or s["hi"] < 0)


def _group(runs: list[dict], key: str) -> dict:
    """cell -> model -> {seed: value of ``key``}."""
    out: dict = {}
    for r in runs:
        if r.get(key) is not None:
            out.setdefault(cell_key(r), {}).setdefault(r["model"], {})[r["seed"]] = r[key]
    return out


def _cert(certs: dict, c: tuple) -> dict | None:
    """The certificate of cell ``c`` (the true generator does not depend on the decoder variance)."""
    for v in (certs or {}).values():
        if (v.get("process"), v.get("dz"), v.get("n_alphabet"), v.get("mixing", "leaky_relu"),
                float(v.get("shift_scale", 1.0))) == (c[0], c[1], c[2], c[3], c[6]):
            return v
    return None


def _cert_str(cert: dict | None) -> str:
    if not cert:
        return "–"
    return f"{100 * cert['gmd_pass']:.0f}%" + (" (V degenerate)" if cert["gmd_degenerate"] else "")


def landscape(study, runs: list[dict], out: str, key: str = "mcc", certs: dict | None = None) -> dict:
    """Write ``landscape.md``, ``landscape.csv`` (one row per cell and model pair), ``landscape.png`` (heat maps)
    and, for at most 8 cells, ``cells.png`` (every seed, mean and interval per model and cell, ceiling dashed);
    return their paths. ``key``: the MCC column (``mcc`` Pearson or ``mcc_spearman``). ``certs``: the study's
    certificates (cell id -> record), shown as the GMD pass rate of each cell's true generator."""
    vals, ceil = _group(runs, key), _group(runs, "mcc_ceiling")
    snr, active, kl = _group(runs, "snr"), _group(runs, "active_dims"), _group(runs, "kl")
    models = [m for m in study.models if any(m in v for v in vals.values())]
    pairs = [(a, b) for a, b in PAIRS if a in models and b in models]
    cells = sorted(vals, key=lambda c: (c[0], c[1], c[2], _order(study.mixings, c[3]),
                                        c[4], c[5], c[6]))
    lines = ["# Landscape: the protocol choices the paper leaves open (mixing x decoder variance x shift scale)", "",
             f"Mean {key.replace('mcc', 'MCC').replace('_', ' ')} over seeds with its 95% bootstrap interval "
             "[lo, hi]; differences are paired by seed (the same dataset on both sides). n = seeds per cell. "
             "GMD certificate: share of 64 latents where Assumption 2 holds for the cell's true generator "
             "(first seed). Ceiling: the u-blind oracle MCC (median over seeds). SNR = mean var(x_clean) / noise var. Active: "
             "latent dimensions with KL > 0.01 nats (median over seeds); KL: total nats (median). Paper order: "
             "β-VAE < iVAE < MD-VAE in means (`means`) and with both paired intervals above 0 (`yes`). "
             f"Max |Δ paper|: the largest distance of a model's mean from the paper's dz = 5 medians "
             f"({', '.join(f'{MODEL_NAMES[m]} {v:.2f}' for m, v in PAPER_DZ5.items())}; only for dz = 5, |U| = 8).",
             "",
             "| process | dz | \\|U\\| | mixing | decoder var | shift | GMD certificate | SNR | ceiling | "
             + " | ".join(MODEL_NAMES[m] for m in models) + " | "
             + " | ".join(f"{MODEL_NAMES[a]} − {MODEL_NAMES[b]}" for a, b in pairs)
             + " | active (" + " / ".join(MODEL_NAMES[m] for m in models) + ") | KL (" + " / ".join(
                 MODEL_NAMES[m] for m in models) + ") | paper order | max \\|Δ paper\\| |",
             "|" + "---|" * (9 + len(models) + len(pairs) + 4)]
    csv_lines = ["process,dz,n_alphabet,mixing,decoder_var,decoder_var_learned,shift_scale,a,b,n,mean,lo,hi"]
    summary: dict = {}
    for c in cells:
        process, dz, U, mixing, dv, learned, ss = c
        per = {m: summarize(list(vals[c][m].values())) for m in models if m in vals[c]}
        diffs = {(a, b): paired(vals[c].get(a, {}), vals[c].get(b, {})) for a, b in pairs}
        summary[c] = {"models": per, "diffs": diffs}
        for (a, b), s in diffs.items():
            if s:
                csv_lines.append(f"{process},{dz},{U},{mixing},{dv:g},{learned},{ss:g},{a},{b},{s['n']},"
                                 f"{s['mean']:.6g},{s['lo']:.6g},{s['hi']:.6g}")

        def med(group, m=None):
            d = group.get(c, {})
            v = [x for mm, seeds in d.items() if m is None or mm == m for x in seeds.values()]
            return float(np.median(v)) if v else float("nan")
        order = "–"
        if all(m in per for m in ("betavae", "ivae", "mdvae")):
            means_ok = per["betavae"]["mean"] < per["ivae"]["mean"] < per["mdvae"]["mean"]
            d_mi, d_ib = diffs.get(("mdvae", "ivae")), paired(vals[c]["ivae"], vals[c]["betavae"])
            order = "yes" if (means_ok and _excludes_zero(d_mi) and _excludes_zero(d_ib)) else \
                ("means" if means_ok else "no")
        dpaper = "–"
        if dz == 5 and U == 8 and all(m in per for m in PAPER_DZ5):
            dpaper = f"{max(abs(per[m]['mean'] - v) for m, v in PAPER_DZ5.items()):.2f}"
        dvs = f"{dv:g}" + (" (learnt)" if learned else "")
        lines.append(
            f"| {process} | {dz} | {U} | {mixing} | {dvs} | {ss:g} | {_cert_str(_cert(certs, c))} | "
            f"{med(snr):.3g} | {med(ceil):.2f} | "
            + " | ".join(fmt_ci(per.get(m), n=False) for m in models) + " | "
            + " | ".join(("**" if _excludes_zero(s) else "") + fmt_ci(s, signed=True) + ("**" if _excludes_zero(s)
                                                                                         else "")
                         for s in diffs.values())
            + " | " + " / ".join(f"{med(active, m):g}" for m in models) + " | "
            + " / ".join(f"{med(kl, m):.1f}" for m in models) + f" | {order} | {dpaper} |")
    lines += ["", "Bold: the paired interval excludes 0."]
    if len(cells) == 2:              # a two-cell contrast (the demo): the second cell against the first
        c1, c0 = cells[0], cells[1]
        what = ", ".join(f"{n} {c1[k]} vs {c0[k]}" for k, n in enumerate(
            ("process", "dz", "|U|", "mixing", "decoder var", "learnt", "shift")) if c1[k] != c0[k])
        lines += ["", f"## Contrast between the two cells ({what})", "",
                  "Difference of means, first cell − second, 95% bootstrap interval resampling each cell's seeds "
                  "independently (different data in the two cells).", "",
                  "| quantity | first − second |", "|---|---|"]
        for m in models:
            lines.append(f"| {MODEL_NAMES[m]} MCC | " + fmt_ci(unpaired(list(vals[c1].get(m, {}).values()),
                                                                   list(vals[c0].get(m, {}).values())), True) + " |")
        for a_, b_ in pairs:
            d1 = [vals[c1][a_][s] - vals[c1][b_][s] for s in sorted(set(vals[c1].get(a_, {})) & set(vals[c1].get(b_, {})))]
            d0 = [vals[c0][a_][s] - vals[c0][b_][s] for s in sorted(set(vals[c0].get(a_, {})) & set(vals[c0].get(b_, {})))]
            lines.append(f"| ({MODEL_NAMES[a_]} − {MODEL_NAMES[b_]}) advantage | {fmt_ci(unpaired(d1, d0), True)} |")
    paths = {"landscape": os.path.join(out, "landscape.md"), "landscape_csv": os.path.join(out, "landscape.csv")}
    write_text_atomic(paths["landscape"], "\n".join(lines) + "\n")
    write_text_atomic(paths["landscape_csv"], "\n".join(csv_lines) + "\n")
    if pairs and cells:
        paths["landscape_plot"] = os.path.join(out, "landscape.png")
        _heatmaps(study, summary, [p for p in pairs if p[1] != "mdvae"] or pairs, paths["landscape_plot"])
    if cells and len(cells) <= 8:
        paths["cells_plot"] = os.path.join(out, "cells.png")
        _cells_plot(cells, vals, ceil, models, certs, paths["cells_plot"])
    return paths


def _cells_plot(cells: list, vals: dict, ceil: dict, models: list, certs: dict | None, path: str) -> None:
    """x = cell, per model every seed's MCC (dots), its mean with the 95% interval (bar); dashed: the cell's
    u-blind ceiling (median over seeds). Cell labels name what varies and the GMD certificate's pass rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = COLORS
    varying = [i for i in range(7) if len({c[i] for c in cells}) > 1]
    names = ("process", "dz", "|U|", "mixing", "dec. var", "learnt", "shift")
    fig, ax = plt.subplots(figsize=(1.2 + 1.9 * len(cells), 3.6))
    width = 0.8 / len(models)
    for i, c in enumerate(cells):
        for j, m in enumerate(models):
            v = list(vals[c].get(m, {}).values())
            if not v:
                continue
            pos = i + (j - (len(models) - 1) / 2) * width
            ax.scatter([pos - width * 0.2] * len(v), v, s=7, color=colors[m], alpha=0.7, zorder=3)
            s = summarize(v)
            if not math.isnan(s["lo"]):
                ax.errorbar([pos + width * 0.15], [s["mean"]], yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]],
                            fmt="s", ms=4, mfc=colors[m], color="k", capsize=3, lw=1.0, zorder=4)
        cv = [x for seeds in ceil.get(c, {}).values() for x in seeds.values()]
        if cv:
            ax.plot([i - 0.45, i + 0.45], [float(np.median(cv))] * 2, color="k", ls="--", lw=1.0, zorder=5)
    labels = ["\n".join(f"{names[k]} {c[k]:g}" if isinstance(c[k], float) else f"{names[k]} {c[k]}"
                        for k in varying) + f"\nGMD cert. {_cert_str(_cert(certs, c))}" for c in cells]
    ax.set_xticks(range(len(cells)), labels, fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("MCC")
    ax.grid(axis="y", alpha=0.3)
    handles = [plt.Line2D([0], [0], marker="o", ls="", color=colors[m]) for m in models]
    handles += [plt.Line2D([0], [0], marker="s", color="k", ls=""), plt.Line2D([0, 1], [0, 0], color="k", ls="--")]
    ax.legend(handles, [MODEL_NAMES[m] for m in models] + ["mean, 95% CI", "u-blind ceiling"], fontsize=7,
              loc="lower left", ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)


def _order(values, v) -> int:
    return list(values).index(v) if v in values else len(values)


def _heatmaps(study, summary: dict, pairs: list, path: str) -> None:
    """Per (process, dz, |U|, learnt) and pair a row of panels, one per shift scale: mixing (rows) x decoder
    variance (columns), colour = mean paired difference (diverging, 0 white), text = mean and interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(c[0], c[1], c[2], c[5]) for c in summary})
    shifts = sorted({c[6] for c in summary})
    mixings = sorted({c[3] for c in summary}, key=lambda m: _order(study.mixings, m))
    dvs = sorted({c[4] for c in summary})
    rows = [(g, p) for g in groups for p in pairs]
    fig, axes = plt.subplots(len(rows), len(shifts), figsize=(1.6 + 1.55 * len(dvs) * len(shifts),
                                                              0.4 + (0.9 + 0.8 * len(mixings)) * len(rows)),
                             squeeze=False, layout="constrained")
    vmax = max([abs(s["diffs"][p]["mean"]) for s in summary.values() for p in pairs if s["diffs"].get(p)] + [0.05])
    im = None
    for i, ((process, dz, U, learned), (a, b)) in enumerate(rows):
        for j, ss in enumerate(shifts):
            ax = axes[i][j]
            grid = np.full((len(mixings), len(dvs)), np.nan)
            for yi, mx in enumerate(mixings):
                for xi, dv in enumerate(dvs):
                    s = summary.get((process, dz, U, mx, dv, learned, ss), {}).get("diffs", {}).get((a, b))
                    if not s:
                        continue
                    grid[yi, xi] = s["mean"]
                    txt = f"{s['mean']:+.2f}" + ("" if math.isnan(s["lo"]) else f"\n[{s['lo']:+.2f},{s['hi']:+.2f}]")
                    ax.text(xi, yi, txt, ha="center", va="center", fontsize=6.5)
                    if _excludes_zero(s):
                        ax.add_patch(plt.Rectangle((xi - 0.48, yi - 0.48), 0.96, 0.96, fill=False, lw=1.2, ec="k"))
            im = ax.imshow(grid, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
            ax.set_xticks(range(len(dvs)), [f"{v:g}" for v in dvs], fontsize=7)
            ax.set_yticks(range(len(mixings)), mixings if j == 0 else [""] * len(mixings), fontsize=7)
            ax.set_xlabel("decoder variance" + (" (learnt from)" if learned else ""), fontsize=7)
            ax.set_title(f"{MODEL_NAMES[a]} − {MODEL_NAMES[b]}, shift {ss:g}\n{process.upper()}, dz={dz}, |U|={U}",
                         fontsize=7.5)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="paired Δ MCC (mean over seeds)")
    save_figure(fig, path, dpi=130)
