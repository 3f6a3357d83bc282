"""Reports of the synthetic study: runs.csv, tuning.csv, table.md (the paper's numbers beside ours), the Fig. 5
violin plot, the Table 5 sweep plot and certificates.md. The paper's numbers live here and only here; this module
imports no training code (it reads the unit records written by :mod:`mclcore.studies.synthetic.run`).
"""
from __future__ import annotations

import csv
import io
import os
import statistics

from mclcore._io import save_figure, write_text_atomic
from mclcore.metrics.stats import summarize
from mclcore.studies.synthetic.compare import COLORS, MODEL_NAMES, PAIRS, fmt_ci, landscape, paired
from mclcore.studies.synthetic.principles import principles_table
from mclcore.studies.synthetic.config import StudyConfig

__all__ = ["PAPER", "MODEL_NAMES", "write_report"]

# --------------------------------------------------------------------------------------------------------------
# The paper's numbers (median MCC over 30 seeds), with where they come from.
#   Fig. 5 is an image; its numbers are quoted in the text of §5.1 ("Results"): "MD-VAE attains median MCC
#   {0.96, 0.87, 0.81} [dz = 5, 10, 20], exceeding iVAE, i.e., 0.80 to 0.65, and beta-VAE, i.e., 0.53 to 0.39".
#   We read "0.80 to 0.65" as dz = 5 -> dz = 20; the dz = 10 values of iVAE and beta-VAE are not in the text.
#   Table 5 (App. F.1) gives MD-VAE at |U| in {2, 4, 8, 16, 32}; note its |U| = 8 column (0.96, 0.84, 0.71)
#   disagrees with §5.1 (0.96, 0.87, 0.81) at dz = 10 and 20, although both claim the default settings.
#   The paper never ran MD-VAE+MCL on synthetic data.
# --------------------------------------------------------------------------------------------------------------
PAPER = {
    "fig5": {  # (model, dz) -> median MCC, GMD process, |U| = 8
        ("mdvae", 5): 0.96, ("mdvae", 10): 0.87, ("mdvae", 20): 0.81,
        ("ivae", 5): 0.80, ("ivae", 20): 0.65,
        ("betavae", 5): 0.53, ("betavae", 20): 0.39,
    },
    "table5": {  # (dz, |U|) -> MD-VAE median MCC
        (5, 2): 0.51, (5, 4): 0.79, (5, 8): 0.96, (5, 16): 0.97, (5, 32): 0.97,
        (10, 2): 0.43, (10, 4): 0.62, (10, 8): 0.84, (10, 16): 0.93, (10, 32): 0.94,
        (20, 2): 0.39, (20, 4): 0.51, (20, 8): 0.71, (20, 16): 0.86, (20, 32): 0.92,
    },
}

# --------------------------------------------------------------------------------------------------------------
# Reports: CSV, markdown tables, violin plot
# --------------------------------------------------------------------------------------------------------------
_CSV_COLUMNS = ["process", "mixing", "dz", "n_alphabet", "model", "seed", "lambda_mcl", "split", "mcc",
                "mcc_spearman", "neg_elbo", "rec", "kl", "mcl_loss", "epochs", "steps", "members", "unit",
                "unit_seconds", "mcl_weight", "mcl_acc", "mcl_acc_generator", "mcl_acc_direct",
                "mcl_acc_generator_independent", "mcl_chance",
                "mcl_shortcut_share", "mcl_grad_ratio", "mcc_ceiling", "active_dims", "kl_per_dim", "snr",
                "decoder_var", "decoder_var_learned", "decoder_var_final", "shift_scale", "modulation_range",
                "objective", "principle_loss", "lps", "lps_max", "infomec_m", "infomec_e", "infomec_c",
                "dci_d", "dci_c", "mig", "sap", "factorvae", "factorvae_train"]


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):        # kl_per_dim: ";"-joined
        return ";".join(_cell(x) for x in v)
    return f"{v:.6g}" if isinstance(v, float) else v


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in _CSV_COLUMNS})
    return buf.getvalue()


def _ceilings(runs: list[dict]) -> dict:
    """(process, dz, |U|) -> the u-blind ceiling of each seed (the data of a seed is shared by every model of the
    cell, so each seed counts once). Rows from before the ceiling existed are skipped."""
    per: dict = {}
    for r in runs:
        if r.get("mcc_ceiling") is not None:
            per.setdefault((r["process"], r["dz"], r["n_alphabet"]), {})[r["seed"]] = r["mcc_ceiling"]
    return {k: list(v.values()) for k, v in per.items()}


def _median_str(v: list | None, fmt: str = "{:.2f}") -> str:
    return fmt.format(statistics.median(v)) if v else "–"


def _quantiles(v: list[float]) -> tuple[float, float, float]:
    import numpy as np

    q = np.quantile(np.asarray(v, dtype=float), [0.25, 0.5, 0.75])
    return float(q[0]), float(q[1]), float(q[2])


def _fmt(v: list[float] | None) -> str:
    """``**median** [q1, q3]; mean 0.58 [0.55, 0.61] (n=5)``: the paper's statistic (median, quartiles) and the
    mean with its 95% bootstrap interval over seeds."""
    if not v:
        return "–"
    q1, med, q3 = _quantiles(v)
    return f"**{med:.2f}** [{q1:.2f}, {q3:.2f}]; mean {fmt_ci(summarize(v))}"


def _main_alphabet(study: StudyConfig) -> int:
    return 8 if 8 in study.alphabets else study.alphabets[0]


def write_report(study: StudyConfig, out: str, records: list[dict], certs: dict, wall: float | None) -> dict:
    """Write runs.csv, tuning.csv, table.md, violin.png, table5.png and certificates.md; return their paths."""
    key = "mcc" if study.mcc_method == "pearson" else "mcc_spearman"
    runs = [dict(r, unit=rec["uid"], unit_seconds=round(rec["seconds"], 1)) for rec in records if not rec["tune"]
            for r in rec["rows"]]
    tunes = [dict(r, unit=rec["uid"], unit_seconds=round(rec["seconds"], 1)) for rec in records if rec["tune"]
             for r in rec["rows"]]
    paths = {"csv": os.path.join(out, "runs.csv"), "table": os.path.join(out, "table.md"),
             "violin": os.path.join(out, "violin.png")}
    write_text_atomic(paths["csv"], _csv_text(runs))
    if tunes:
        paths["tuning"] = os.path.join(out, "tuning.csv")
        write_text_atomic(paths["tuning"], _csv_text(tunes))

    if study.axis_cells() != [()]:          # a landscape: its own table and heat maps (cells differ by the axes)
        paths = {"csv": paths["csv"], **landscape(study, runs, out, key, certs)}
        paths["table"] = paths["landscape"]
        if certs:
            paths["certificates"] = _write_certificates(certs, out)
        if wall is not None:
            with open(paths["table"]) as f:
                text = f.read()
            write_text_atomic(paths["table"], text + f"\nWall time of this invocation: {wall / 60:.1f} min.\n")
        return paths
    vals: dict = {}
    byseed: dict = {}
    active: dict = {}
    for r in runs:
        vals.setdefault((r["process"], r["dz"], r["n_alphabet"], r["model"]), []).append(r[key])
        byseed.setdefault((r["process"], r["dz"], r["n_alphabet"], r["model"]), {})[r["seed"]] = r[key]
        if r.get("active_dims") is not None:
            active.setdefault((r["process"], r["dz"], r["n_alphabet"], r["model"]), []).append(r["active_dims"])
    ceil = _ceilings(runs)
    tcfg = study.train_config(dz=study.dzs[0])
    U0 = _main_alphabet(study)
    lines = ["# Synthetic identifiability study: median MCC (paper §5.1 Fig. 5, App. F.1 Table 5)", "",
             f"{study.mcc_method.capitalize()} MCC of posterior means vs true z on the test split (20%): "
             f"**median** [25th, 75th percentile]; mean [95% bootstrap interval] (n = seeds). Differences are "
             f"paired by seed (the same dataset on both sides). Protocol: N = {tcfg.n}, {tcfg.epochs} epochs, "
             f"batch {tcfg.batch_size}, Adam {tcfg.lr:g}, mixing {tcfg.mixing}, noise variance {tcfg.noise_var:g}; "
             f"{study.seeds} seed(s) per cell from {study.first_seed}.",
             "Paper numbers: Fig. 5 values as quoted in the text of §5.1 (dz = 10 for iVAE / β-VAE is not given "
             "there); Table 5 of App. F.1. The paper never ran MD-VAE+MCL on synthetic data.", ""]
    axes = [f"{k} {getattr(tcfg, k):g}" for k in ("modulation_range", "shift_scale")
            if getattr(tcfg, k) != getattr(type(tcfg)(), k)]
    if axes:
        lines[-2] += " Non-default data axes: " + ", ".join(axes) + "."
    if ceil:
        lines += ["u-blind ceiling: median over seeds of the oracle MCC of y = z ⊙ m(u) + b(u) (the true "
                  "generator's FiLM maps) against z on the same split, the best a model blind to u in the mixing "
                  "can reach (1 for LRD, where y = z). Active dims: median number of latent dimensions with mean "
                  "KL(q || prior) > 0.01 nats on that split, of dz.", ""]
    if wall is not None:
        lines += [f"Wall time of this invocation: {wall / 60:.1f} min.", ""]
    for process in study.processes:
        title = ("GMD process (App. D.3: z ⟂ u, u reshapes the generator)" if process == "gmd"
                 else "LRD process (iVAE: u shifts p(z|u), fixed mixing)")
        lines += [f"## {title}, |U| = {U0}" + (" — Fig. 5" if process == "gmd" else ""), ""]
        head = "| model | " + " | ".join(f"dz = {dz}" + (" | paper" if process == "gmd" else "")
                                          for dz in study.dzs) + " |"
        lines += [head, "|" + "---|" * (1 + len(study.dzs) * (2 if process == "gmd" else 1))]
        for model in study.models:
            cells = []
            for dz in study.dzs:
                cells.append(_fmt(vals.get((process, dz, U0, model))))
                if process == "gmd":
                    p = PAPER["fig5"].get((model, dz)) if U0 == 8 else None
                    cells.append(f"{p:.2f}" if p is not None else "–")
            lines.append(f"| {MODEL_NAMES[model]} | " + " | ".join(cells) + " |")
        for a, b in PAIRS:
            if a in study.models and b in study.models:
                lines.append(f"| {MODEL_NAMES[a]} − {MODEL_NAMES[b]} (paired by seed: mean [95% CI]) | " + " | ".join(
                    fmt_ci(paired(byseed.get((process, dz, U0, a), {}), byseed.get((process, dz, U0, b), {})),
                           signed=True) + (" | –" if process == "gmd" else "") for dz in study.dzs) + " |")
        if any((process, dz, U0) in ceil for dz in study.dzs):
            cells = []
            for dz in study.dzs:
                cells.append(_median_str(ceil.get((process, dz, U0))))
                if process == "gmd":
                    cells.append("–")
            lines.append("| u-blind ceiling | " + " | ".join(cells) + " |")
        if any((process, dz, U0, model) in active for dz in study.dzs for model in study.models):
            lines += ["", "Active latent dimensions (KL > 0.01 nats), median over seeds:", "",
                      "| model | " + " | ".join(f"dz = {dz}" for dz in study.dzs) + " |",
                      "|" + "---|" * (1 + len(study.dzs))]
            for model in study.models:
                lines.append(f"| {MODEL_NAMES[model]} | " + " | ".join(
                    _median_str(active.get((process, dz, U0, model)), "{:g}") + f" / {dz}" for dz in study.dzs) + " |")
        lines.append("")
    sweep = [a for a in study.alphabets]
    if len(sweep) > 1:
        for process in study.processes:
            for model in study.models:
                if not any((process, dz, a, model) in vals for dz in study.dzs for a in sweep):
                    continue
                paper_t5 = process == "gmd" and model == "mdvae"
                lines += [f"## Effect of |U| ({'Table 5, ' if paper_t5 else ''}{MODEL_NAMES[model]}, "
                          f"{process.upper()} process): **median**; mean [95% CI] of MCC over {study.seeds} "
                          f"seeds" + (" — ours (paper's median)" if paper_t5 else ""), "",
                          "| dz | " + " | ".join(f"|U| = {a}" for a in sweep) + " |",
                          "|" + "---|" * (1 + len(sweep))]
                for dz in study.dzs:
                    cells = []
                    for a in sweep:
                        v = vals.get((process, dz, a, model))
                        s = f"**{statistics.median(v):.2f}**; {fmt_ci(summarize(v), n=False)}" if v else "–"
                        if paper_t5 and (dz, a) in PAPER["table5"]:
                            s += f" ({PAPER['table5'][(dz, a)]:.2f})"
                        cells.append(s)
                    lines.append(f"| {dz} | " + " | ".join(cells) + " |")
                lines.append("")
            if any((process, dz, a) in ceil for dz in study.dzs for a in sweep):
                lines += [f"## Effect of |U| ({process.upper()} process): u-blind ceiling (median over seeds)", "",
                          "| dz | " + " | ".join(f"|U| = {a}" for a in sweep) + " |",
                          "|" + "---|" * (1 + len(sweep))]
                for dz in study.dzs:
                    lines.append(f"| {dz} | " + " | ".join(_median_str(ceil.get((process, dz, a))) for a in sweep)
                                 + " |")
                lines.append("")
    sel = [rec for rec in records if rec.get("selection")]
    if sel:
        lines += ["## λ_MCL selection (median validation MCC per λ; validation = "
                  f"{study.tune_val_frac:g} of N held out of the training split, {study.tune_seeds} seed(s))", "",
                  "| cell | " + " | ".join(f"λ = {v:g}" for v in study.lambda_grid) + " | chosen |",
                  "|" + "---|" * (2 + len(study.lambda_grid))]
        for rec in sel:
            med = rec["selection"]["val_mcc_median"]
            lines.append(f"| {rec['uid'].rsplit('-mdvae_mcl', 1)[0]} | "
                         + " | ".join(f"{med[str(float(v))]:.3f}" if str(float(v)) in med else "–"
                                      for v in study.lambda_grid)
                         + f" | {rec['selection']['lambda']:g} |")
        lines.append("")
    if certs:
        lines += ["## Identifiability certificates of the true data process (first seed; details in "
                  "certificates.md)", "", "| cell | Assumption 2 (GMD) passes | V degenerate | "
                  "Assumption 1 (LRD) passes |", "|---|---|---|---|"]
        for cid, c in certs.items():
            lines.append(f"| {cid} | {100 * c['gmd_pass']:.0f}% (median rank {c['gmd_rank_median']:g} of "
                         f"{2 * c['dz']}) | {'yes' if c['gmd_degenerate'] else 'no'} | {100 * c['lrd_pass']:.0f}% "
                         f"(median rank {c['lrd_rank_median']:g} of {2 * c['dz']}) |")
        lines.append("")
        paths["certificates"] = _write_certificates(certs, out)
    write_text_atomic(paths["table"], "\n".join(lines))
    principles = principles_table(runs)
    if principles:
        paths["principles"] = os.path.join(out, "principles.md")
        write_text_atomic(paths["principles"], principles)
    if runs:
        _violin(study, vals, U0, paths["violin"], ceil)
        if len(sweep) > 1:
            paths["table5_plot"] = os.path.join(out, "table5.png")
            _sweep_plot(study, vals, paths["table5_plot"])
    return paths


def _write_certificates(certs: dict, out: str) -> str:
    """certificates.md: every cell's certificate summaries; returns its path."""
    cert_lines = ["# Certificates of each cell's true data process", "",
                  "Assumption 2 (sufficient GMD) of the true generator x = g(z, u) and Assumption 1 (sufficient "
                  "LRD) of the true prior p(z | u), at latents z ~ N(0, I), over the cell's alphabet "
                  "(mclcore.mechanism.certify / certify_lrd).", ""]
    for cid, c in certs.items():
        cert_lines += [f"## {cid} (seed {c['seed']})", "", "```", c["gmd_summary"], c["lrd_summary"], "```", ""]
    path = os.path.join(out, "certificates.md")
    write_text_atomic(path, "\n".join(cert_lines))
    return path


def _violin(study: StudyConfig, vals: dict, U0: int, path: str, ceil: dict | None = None) -> None:
    """Fig. 5 style: per process a panel, x = dz, one violin per model (median marked), |U| = U0; dashed per dz:
    the u-blind ceiling (median over seeds) when ``ceil`` has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = COLORS
    fig, axes = plt.subplots(1, len(study.processes), figsize=(4.2 * len(study.processes), 3.4), squeeze=False)
    width = 0.8 / len(study.models)
    for ax, process in zip(axes[0], study.processes):
        for j, model in enumerate(study.models):
            for i, dz in enumerate(study.dzs):
                v = vals.get((process, dz, U0, model))
                if not v:
                    continue
                pos = i + (j - (len(study.models) - 1) / 2) * width
                if len(v) > 1 and max(v) > min(v):
                    parts = ax.violinplot([v], positions=[pos], widths=width * 0.95, showextrema=False)
                    for b in parts["bodies"]:
                        b.set_facecolor(colors[model])
                        b.set_alpha(0.55)
                ax.scatter([pos] * len(v), v, s=6, color=colors[model], alpha=0.8, zorder=3)
                ax.plot([pos - width * 0.35, pos + width * 0.35], [statistics.median(v)] * 2, color="k", lw=1.5,
                        zorder=4)
        for i, dz in enumerate(study.dzs):
            c = (ceil or {}).get((process, dz, U0))
            if c:
                ax.plot([i - 0.45, i + 0.45], [statistics.median(c)] * 2, color="k", ls="--", lw=1.0, zorder=5)
        ax.set_xticks(range(len(study.dzs)), [f"$d_z$={dz}" for dz in study.dzs])
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("MCC" if study.mcc_method == "pearson" else "MCC (Spearman)")
        ax.set_title(f"{process.upper()} process, |U| = {U0}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[m], alpha=0.6) for m in study.models]
    names = [MODEL_NAMES[m] for m in study.models]
    if ceil:
        handles.append(plt.Line2D([0, 1], [0, 0], color="k", ls="--", lw=1.0))
        names.append("u-blind ceiling")
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(fig, path, dpi=130)


def _sweep_plot(study: StudyConfig, vals: dict, path: str) -> None:
    """Median MCC against |U| per dz and model (Table 5 as curves); dashed: the paper's MD-VAE (Table 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = COLORS
    styles = {"gmd": "-", "lrd": ":"}
    fig, axes = plt.subplots(1, len(study.dzs), figsize=(3.6 * len(study.dzs), 3.2), squeeze=False)
    for ax, dz in zip(axes[0], study.dzs):
        for model in study.models:
            for process in study.processes:
                pts = [(a, statistics.median(vals[(process, dz, a, model)])) for a in study.alphabets
                       if (process, dz, a, model) in vals]
                if pts:
                    ax.plot(*zip(*pts), styles[process], marker="o", ms=4, color=colors[model],
                            label=f"{MODEL_NAMES[model]} ({process.upper()})")
        paper = [(a, PAPER["table5"][(dz, a)]) for a in study.alphabets if (dz, a) in PAPER["table5"]]
        if paper and "gmd" in study.processes:
            ax.plot(*zip(*paper), "k--", marker="x", label="MD-VAE, paper Table 5")
        if min(study.alphabets) <= 2 * dz + 1 <= max(study.alphabets):
            ax.axvline(2 * dz + 1, color="0.6", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(study.alphabets), [str(a) for a in study.alphabets])
        ax.minorticks_off()
        ax.set_xlabel("|U|  (grey line: 2dz+1)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"$d_z$ = {dz}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("median MCC")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
