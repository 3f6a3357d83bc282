"""Table 1 and Table 6 of the paper from finished runs, ours beside theirs (the paper's numbers live here only).

    python experiments/disentanglement/make_tables.py runs/disentanglement [--preset cpu-smoke] [--out tables.md]

Reads the ``metrics.json`` of every run folder under a root and imports no training code, so tables can be built
on any machine from copied run folders. Rows are (model, dataset) with mean +- std over the seeds found (sample
std, ddof=1; "n=1" when only one seed ran). The paper's numbers (mean +- std over 15 runs) are copied from its
Table 1 and Table 6.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from mclcore.studies.disentangle.kinds import fid_of, lpips_of

__all__ = ["DATASETS", "NAMES", "PAPER_T1", "PAPER_T6", "ROWS", "load", "fmt", "table1", "table6", "table_seconds",
           "tables", "main"]

DATASETS = ("cars3d", "shapes3d", "mpi3d")
NAMES = {"cars3d": "Cars3D", "shapes3d": "Shapes3D", "mpi3d": "MPI3D"}

# Paper Table 1: (FV score, DCI) per dataset as "mean ± std" strings, order Cars3D, Shapes3D, MPI3D.
PAPER_T1 = {
    "FactorVAE": ("0.906 ± 0.052", "0.161 ± 0.019", "0.840 ± 0.066", "0.611 ± 0.082", "0.152 ± 0.025", "0.240 ± 0.051"),
    "β-TCVAE": ("0.855 ± 0.082", "0.140 ± 0.019", "0.873 ± 0.074", "0.613 ± 0.114", "0.179 ± 0.017", "0.237 ± 0.056"),
    "InfoGAN-CR": ("0.411 ± 0.013", "0.020 ± 0.011", "0.587 ± 0.058", "0.478 ± 0.055", "0.439 ± 0.061", "0.241 ± 0.075"),
    "LatentDisco": ("0.852 ± 0.039", "0.216 ± 0.072", "0.805 ± 0.064", "0.380 ± 0.062", "0.391 ± 0.039", "0.196 ± 0.038"),
    "GANspace": ("0.932 ± 0.018", "0.209 ± 0.031", "0.788 ± 0.091", "0.284 ± 0.034", "0.465 ± 0.036", "0.229 ± 0.042"),
    "DisCo": ("0.855 ± 0.074", "0.271 ± 0.037", "0.877 ± 0.031", "0.708 ± 0.048", "0.371 ± 0.030", "0.292 ± 0.024"),
    "DisDiff": ("0.976 ± 0.018", "0.232 ± 0.019", "0.902 ± 0.043", "0.723 ± 0.013", "0.617 ± 0.070", "0.337 ± 0.057"),
    "EncDiff": ("0.773 ± 0.060", "0.279 ± 0.022", "0.999 ± 0.000", "0.969 ± 0.030", "0.872 ± 0.049", "0.685 ± 0.044"),
    "MDDiff": ("0.985 ± 0.048", "0.493 ± 0.025", "1.000 ± 0.000", "0.993 ± 0.030", "0.930 ± 0.049", "0.679 ± 0.010"),
}
# Paper Table 6: (FID, LPIPS) per dataset, order Cars3D, Shapes3D, MPI3D.
PAPER_T6 = {
    "EncDiff": ("62.31 ± 3.28", "0.07 ± 0.03", "5.33 ± 0.68", "0.01 ± 0.01", "4.06 ± 0.60", "0.01 ± 0.01"),
    "MDDiff": ("39.32 ± 6.67", "0.03 ± 0.02", "5.52 ± 0.78", "0.01 ± 0.01", "7.10 ± 2.12", "0.01 ± 0.01"),
}
# (type, display name, our model name or None when not implemented)
ROWS = [
    ("VAE", "β-VAE", "betavae"), ("VAE", "FactorVAE", "factorvae"), ("VAE", "β-TCVAE", "btcvae"),
    ("GAN", "InfoGAN-CR", "infogan_cr"), ("GAN", "LatentDisco", None), ("GAN", "GANspace", None), ("GAN", "DisCo", None),
    ("Diffusion", "DisDiff", "disdiff"), ("Diffusion", "EncDiff", "encdiff"), ("Diffusion", "MDDiff", "mddiff"),
]


def load(root: str, preset: str | None) -> dict:
    """{(model, dataset): [metrics dict per run]} from ``root/*/metrics.json`` (only ``preset``'s if given)."""
    runs: dict = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "metrics.json"))):
        with open(path) as f:
            r = json.load(f)
        if preset and r.get("preset") != preset:
            continue
        runs.setdefault((r["model"], r["dataset"]), []).append(r)
    return runs


def fmt(values, digits=3) -> str:
    """"mean ± std (n=N)" (sample std), "x (n=1)" for one value, "–" for none."""
    if not values:
        return "–"
    a = np.asarray(values, dtype=float)
    if a.size == 1:
        return f"{a[0]:.{digits}f} (n=1)"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f} (n={a.size})"


def table1(runs: dict) -> str:
    """Table 1 (FactorVAE score, DCI disentanglement) as Markdown: a paper row and an ours row per method."""
    head = "| Type | Method | source | " + " | ".join(f"{NAMES[d]} FV ↑ | {NAMES[d]} DCI ↑" for d in DATASETS) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(DATASETS))]
    for typ, name, model in ROWS:
        paper = PAPER_T1.get(name)
        lines.append(f"| {typ} | {name} | paper | " + (" | ".join(paper) if paper else " | ".join(["–"] * 6)) + " |")
        if model is None:
            lines.append(f"| {typ} | {name} | ours | " + " | ".join(["not implemented"] * 6) + " |")
            continue
        cells = []
        for d in DATASETS:
            rs = runs.get((model, d), [])
            cells += [fmt([r["factorvae"] for r in rs]), fmt([r["dci"] for r in rs])]
        lines.append(f"| {typ} | {name} | ours | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(rs: list, of, digits: int) -> str:
    """One Table-6 cell: the runs' values of one kind; a stand-in value is marked "(stand-in)" and runs of
    different kinds are never averaged together."""
    vals = [of(r) for r in rs]
    vals = [(v, k) for v, k in vals if v is not None]
    kinds = {k for _, k in vals}
    if len(kinds) > 1:
        return "mixed kinds: " + ", ".join(sorted(kinds))
    cell = fmt([v for v, _ in vals], digits)
    return cell + " (stand-in)" if kinds == {"standin"} else cell


def table6(runs: dict) -> str:
    """Table 6 (FID, LPIPS) as Markdown, with a note naming our FID network and LPIPS (real or stand-in)."""
    labels = sorted({(r["fid_label"], r["lpips_label"]) for rs in runs.values() for r in rs})
    head = "| Method | source | " + " | ".join(f"{NAMES[d]} FID ↓ | {NAMES[d]} LPIPS ↓" for d in DATASETS) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(DATASETS))]
    for name, model in (("EncDiff", "encdiff"), ("MDDiff", "mddiff"), ("β-VAE", "betavae"),
                        ("FactorVAE", "factorvae"), ("β-TCVAE", "btcvae"),
                        ("DisDiff", "disdiff"), ("InfoGAN-CR", "infogan_cr")):
        if name in PAPER_T6:
            lines.append(f"| {name} | paper (Inception FID, LPIPS) | " + " | ".join(PAPER_T6[name]) + " |")
        cells = []
        for d in DATASETS:
            rs = runs.get((model, d), [])
            cells += [_cell(rs, fid_of, 2), _cell(rs, lpips_of, 4)]
        if any(c != "–" for c in cells):
            lines.append(f"| {name} | ours | " + " | ".join(cells) + " |")
    note = "; ".join(f"ours: FID = {a}, LPIPS column = {b}" for a, b in labels)
    return "\n".join(lines) + (f"\n\n{note}." if note else "")


def table_seconds(runs: dict) -> str:
    """Wall time of each (model, dataset): ``seconds.total_call`` of the runs' ``metrics.json`` (training, metrics,
    generation and figures of one ``mcl train`` call), mean ± std over the runs, in seconds."""
    models = [(name, model) for _, name, model in ROWS if model is not None]
    lines = ["| Method | " + " | ".join(NAMES[d] for d in DATASETS) + " |", "|" + "---|" * (1 + len(DATASETS))]
    for name, model in models:
        cells = [fmt([r["seconds"]["total_call"] for r in runs.get((model, d), [])
                      if "total_call" in r.get("seconds", {})], 0) for d in DATASETS]
        if any(c != "–" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(runs: dict) -> str:
    """Table 1, Table 6 and the wall times as one Markdown text."""
    return "### Table 1 (disentanglement)\n\n" + table1(runs) + "\n\n### Table 6 (generation quality)\n\n" + \
        table6(runs) + "\n\n### Wall time per run (seconds, one `mcl train` call)\n\n" + table_seconds(runs) + "\n"


def main(argv=None) -> int:
    """Print the tables of the runs under ROOT (and write them to ``--out``); 1 when there are none."""
    from mclcore._io import write_text_atomic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder holding the run folders (e.g. runs/disentanglement)")
    p.add_argument("--preset", default=None, help="only runs of this preset")
    p.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    args = p.parse_args(argv)
    runs = load(args.root, args.preset)
    if not runs:
        print(f"root: no */metrics.json under {args.root!r}", file=sys.stderr)
        return 1
    text = tables(runs)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0
