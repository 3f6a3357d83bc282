"""Report the pre-registered cpu-long grid (cpu_long.sh, issue #22 item 1): every run, per arm the mean [95%
bootstrap interval] over seeds, and the paired per-seed differences the grid was registered for:

* EncDiff - beta-VAE (does EncDiff's concept encoder learn? target: FactorVAE >= beta-VAE's),
* MDDiff - EncDiff and MDDiff - MDDiff(lambda_MCL = 0),

plus the per-factor DCI informativeness (which factors each arm's code holds; runs evaluated before it was recorded
lack it: re-evaluate them with ``mcl train ... --eval-only``, which keeps the training call's seconds), beside it the
first-stage ceiling of the diffusion runs where first_stage_probe.py wrote one, the code-use rows where
code_use.py wrote one (how much the denoiser uses the code, per factor; its u-decoder gap is also a column, so
it gets paired differences), and MDDiff's MCL diagnostics (last measurement, per seed). Arms: ``encdiff``, ``betavae``, ``mddiff`` from
``OUT/main``, ``mddiff_l0`` from ``OUT/lambda0``. A difference uses the seeds both arms finished (n says how many);
an arm with unfinished seeds is reported with the ones it has, and the table lists what is missing.

    python experiments/disentanglement/cpu_long_report.py /tmp/cpulong/runs --results experiments/disentanglement/results/cpu_long
    python experiments/disentanglement/cpu_long_report.py experiments/disentanglement/results/cpu_long --from-results

The first form copies each finished run's ``metrics.json`` (and ``mcl_diagnostics.json``) and its figures as
half-size JPEGs into ``RESULTS/<arm>/<run>/`` and writes ``RESULTS/table.md``; ``--from-results`` rebuilds the table
from such a folder alone (what the test does).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from _runs import (CODE_USE_FILE, MCL_PROBE_FILE, code_use_table, copy_run, diagnostics_table,  # noqa: E402
                   interval_cell, mcl_probe_table, read_json, report_args, runs_by_seed, train_minutes)
from collect_table1 import copy_figures  # noqa: E402
from mclcore._io import write_text_atomic  # noqa: E402
from mclcore.studies.disentangle.kinds import fid_of, lpips_of  # noqa: E402



@dataclass(frozen=True)
class Grid:
    """A pre-registered grid of cpu-long runs: its arms ``(arm, folder under OUT, model)``, the paired differences
    it was registered for, its seeds, the arms whose MCL diagnostics are tabulated ``(arm, label)``, and the first
    line of its table. mcl_dose_report.py reports mcl_dose.sh with another Grid."""

    title: str
    arms: tuple
    pairs: tuple
    diagnostics: tuple
    seeds: tuple = (0, 1, 2)


CPU_LONG = Grid(
    title="cpu-long preset, Shapes3D twin, pre-registered grid experiments/disentanglement/cpu_long.sh",
    arms=(("encdiff", "main", "encdiff"), ("betavae", "main", "betavae"), ("mddiff", "main", "mddiff"),
          ("mddiff_l0", "lambda0", "mddiff")),
    pairs=(("encdiff", "betavae"), ("mddiff", "encdiff"), ("mddiff", "mddiff_l0")),
    diagnostics=(("mddiff", "MDDiff"),))
# "u-dec. gap": code_use.py's relative conditioning gap of MDDiff's u-decoder (another image's u instead of its own)
METRICS = (("factorvae", "FactorVAE"), ("dci", "DCI dis."), ("dci_completeness", "DCI comp."),
           ("dci_informativeness", "DCI inf."), ("factorvae_active_dims", "active dims"), ("recon_mse", "recon MSE"),
           ("fid", "FID"), ("lpips", "LPIPS"), ("u_gap", "u-dec. gap"), ("minutes", "train min"))
PER_FACTOR = "dci_informativeness_per_factor"
PROBE_FILE = "first_stage_probe.json"       # first_stage_probe.py's, where it was run


def _value(run: str, m: dict, key: str):
    if key == "u_gap":
        u = read_json(run, CODE_USE_FILE)
        return u["decoder"]["rel_gap"] if u and "decoder" in u else None
    if key == "fid":
        return fid_of(m)[0]
    if key == "lpips":
        return lpips_of(m)[0]
    if key == "minutes":
        return train_minutes(m)
    v = m.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def load(root: str, from_results: bool = False, grid: Grid = CPU_LONG) -> dict:
    """{arm: {seed: (run folder, metrics)}} of the finished cpu-long runs under ``root``: the grid's
    ``<folder>/<run>`` folders (cpu_long.sh: ``{main,lambda0}``), or with ``from_results`` a ``--results`` folder's
    ``<arm>/<run>``."""
    return {arm: runs_by_seed(os.path.join(root, arm, "*") if from_results else
                              os.path.join(root, folder, f"{model}-shapes3d-cpu-long-seed*"))
            for arm, folder, model in grid.arms}


def table(arms: dict, grid: Grid = CPU_LONG) -> str:
    lines = [f"{grid.title}, seeds {list(grid.seeds)}. Mean [95% bootstrap interval] over the finished seeds (n); "
             "differences paired by seed.",
             "", "| arm | n | " + " | ".join(lab for _, lab in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for arm, _, _ in grid.arms:
        runs = arms[arm]
        cells = []
        for key, _ in METRICS:
            vals = [v for s in sorted(runs) if (v := _value(*runs[s], key)) is not None]
            cells.append(interval_cell(vals) + (f" (n={len(vals)})" if 0 < len(vals) < len(runs) else ""))
        lines.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "| difference | seeds | " + " | ".join(lab for _, lab in METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    for a, b in grid.pairs:
        seeds = sorted(set(arms[a]) & set(arms[b]))
        cells = []
        for key, _ in METRICS:
            d = [x - y for s in seeds if (x := _value(*arms[a][s], key)) is not None
                 and (y := _value(*arms[b][s], key)) is not None]
            fewer = f" (n={len(d)})" if 1 < len(d) < len(seeds) else ""   # e.g. times missing for some seeds
            cells.append(interval_cell(d, diff=True) + fewer)
        lines.append(f"| {a} − {b} | {','.join(map(str, seeds)) or '–'} | " + " | ".join(cells) + " |")
    factors = [f for runs in arms.values() for _, m in runs.values() for f in m.get(PER_FACTOR, {})]
    factors = list(dict.fromkeys(factors))
    if factors:
        lines += ["", "Per-factor DCI informativeness (test accuracy of the factor's classifier on the code), mean "
                  "over the seeds whose metrics.json has it (n):", "",
                  "| arm | n | " + " | ".join(factors) + " |", "|---|---|" + "---|" * len(factors)]
        probes = {}
        for arm, _, _ in grid.arms:
            per = [m[PER_FACTOR] for _, m in arms[arm].values() if PER_FACTOR in m]
            if per:
                lines.append(f"| {arm} | {len(per)} | " + " | ".join(
                    f"{np.mean([p[f] for p in per if f in p]):.3f}" for f in factors) + " |")
            probes[arm] = [pr for run, _ in arms[arm].values() if (pr := read_json(run, PROBE_FILE))]
        for arm, prs in probes.items():
            if prs:
                lines.append(f"| {arm}: first-stage latent, linear probe | {len(prs)} | " + " | ".join(
                    f"{np.mean([p['probe'][f] for p in prs if f in p['probe']]):.3f}" for f in factors) + " |")
        if any(probes.values()):
            lines += ["", "The first-stage rows are the ceiling beside the concept code (first_stage_probe.py): what "
                      "the latent the diffusion model denoises carries, read by a linear probe (a weaker reader than "
                      "DCI's trees on the code). First-stage reconstruction MSE: " + "; ".join(
                          f"{arm} {np.mean([p['recon_mse'] for p in prs]):.4f}" for arm, prs in probes.items() if prs)
                      + "."]
        uses = {arm: [u for run, _ in arms[arm].values() if (u := read_json(run, CODE_USE_FILE))]
                for arm, _, _ in grid.arms}
        if any(uses.values()):
            lines += ["", *code_use_table(uses, factors)]
    missing = [f"{arm} seed {s}" for arm, _, _ in grid.arms for s in grid.seeds if s not in arms[arm]]
    kinds = sorted({f"FID {fid_of(m)[1]}, LPIPS {lpips_of(m)[1]}" for runs in arms.values() for _, m in runs.values()})
    lines += ["", "Kinds of the FID / LPIPS columns: " + "; ".join(kinds) + " (stand-in: a network trained on the "
              "twin's labels, not comparable with Inception FID).",
              "", "Not finished: " + (", ".join(missing) if missing else "none") + "."]
    for arm, label in grid.diagnostics:
        lines += ["", f"{label}'s MCL diagnostics (last measurement, per seed):", "",
                  *diagnostics_table(arms[arm], sorted(arms[arm]))]
    probe = mcl_probe_table({arm: {s: r for s, (run, _) in arms[arm].items() if (r := read_json(run, MCL_PROBE_FILE))}
                             for arm, _, _ in grid.arms}, grid.pairs)
    if probe:
        lines += ["", *probe]
    return "\n".join(lines) + "\n"


def main(argv=None, grid: Grid = CPU_LONG, description: str = __doc__.split("\n")[0],
         root_help: str = "cpu_long.sh's OUT folder (main/, lambda0/), or a --results folder with --from-results"
         ) -> int:
    a = report_args(description, root_help, argv)
    try:
        arms = load(a.root, a.from_results, grid)
        if not any(arms.values()):
            print(f"root: no finished cpu-long run under {a.root!r}", file=sys.stderr)
            return 2
        text = table(arms, grid)
    except ValueError as err:           # a stale measurement file (_runs.read_json)
        print(err, file=sys.stderr)
        return 2
    if a.results and not a.from_results:
        for arm, runs in arms.items():
            for s, (run, _) in runs.items():
                dst = os.path.join(a.results, arm, os.path.basename(run))
                copy_run(run, dst, ("metrics.json", "mcl_diagnostics.json", PROBE_FILE, CODE_USE_FILE,
                                   MCL_PROBE_FILE))
                copy_figures(run, os.path.join(dst, "figures"))
        write_text_atomic(os.path.join(a.results, "table.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
