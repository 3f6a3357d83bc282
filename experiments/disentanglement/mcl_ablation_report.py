"""Report the pre-registered MDDiff MCL ablation (mcl_ablation.sh): every run, and the paired per-seed differences
default - (lambda_MCL = 0) with 95% bootstrap intervals (n = seeds), plus the MCL diagnostics of the default arm.

    python experiments/disentanglement/mcl_ablation_report.py runs/mcl-ablation --results experiments/disentanglement/mcl_ablation
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mclcore._io import write_text_atomic  # noqa: E402
from mclcore.metrics.stats import summarize  # noqa: E402
from mclcore.studies.disentangle.kinds import fid_of  # noqa: E402

from _runs import copy_files, diagnostics_table, runs_by_seed  # noqa: E402  (next to this file)
from collect_table1 import copy_figures  # noqa: E402  (half-size JPEGs of a run's figures)

METRICS = ("factorvae", "dci", "fid", "lpips_proxy", "recon_mse")


def _metric(m: dict, k: str) -> float:
    """metrics.json value of ``k``; FID through kinds.fid_of (stand-in runs write ``fid_standin``, real ones
    ``fid``), so both old and new result files are read."""
    return fid_of(m)[0] if k == "fid" else m[k]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="the folder mcl_ablation.sh wrote (default/ and lambda0/)")
    p.add_argument("--results", required=True, help="where table.md, the runs' metrics.json and their figures go")
    a = p.parse_args(argv)
    arms = {name: runs_by_seed(os.path.join(a.out, name, "mddiff-*-seed*")) for name in ("default", "lambda0")}
    seeds = sorted(set(arms["default"]) & set(arms["lambda0"]))
    if not seeds:
        print(f"mcl_ablation_report: no paired finished runs under {a.out}", file=sys.stderr)
        return 2
    os.makedirs(a.results, exist_ok=True)
    lines = [f"MDDiff, cpu-smoke preset, MPI3D twin, seeds {seeds} (n = {len(seeds)}, paired). Δ = default − "
             f"(λ_MCL = 0) per seed, mean [95% bootstrap interval]. Run by experiments/disentanglement/"
             f"mcl_ablation.sh.", "", "| metric | default (per seed) | λ_MCL = 0 (per seed) | Δ mean [95% CI] |",
             "|---|---|---|---|"]
    for k in METRICS:
        d = [_metric(arms["default"][s][1], k) for s in seeds]
        z = [_metric(arms["lambda0"][s][1], k) for s in seeds]
        st = summarize([x - y for x, y in zip(d, z)])
        kinds = {fid_of(arms[a][s][1])[1] for a in ("default", "lambda0") for s in seeds} if k == "fid" else set()
        if len(kinds) > 1:       # a real FID and a stand-in are different quantities: never differenced
            print(f"mcl_ablation_report: runs mix FID kinds {sorted(kinds)}; re-evaluate them alike", file=sys.stderr)
            return 2
        label = f"fid ({kinds.pop()})" if kinds else k
        lines.append(f"| {label} | {', '.join(f'{v:.4g}' for v in d)} | {', '.join(f'{v:.4g}' for v in z)} | "
                     f"{st['mean']:+.4g} [{st['lo']:+.4g}, {st['hi']:+.4g}] |")
    lines += ["", "MCL diagnostics of the default arm (last measurement, per seed):", "",
              *diagnostics_table(arms["default"], seeds)]
    for name, runs in arms.items():
        for s in seeds:
            copy_files(runs[s][0], a.results, ("metrics.json",), lambda f, name=name, s=s: f"{name}-seed{s}-{f}")
            copy_figures(runs[s][0], os.path.join(a.results, f"{name}-seed{s}-figures"))
    write_text_atomic(os.path.join(a.results, "table.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
