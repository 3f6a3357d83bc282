"""``mcl inspect-mcl RUN_DIR``: what MCL did over training, from the diagnostics a run logged.

    mcl inspect-mcl runs/synthetic-quick            # every MD-VAE+MCL unit of a synthetic study
    mcl inspect-mcl runs/synthetic-quick --unit gmd-leaky_relu-dz5-U8-mdvae_mcl
    mcl inspect-mcl runs/worldmodel-cpu/worldmodel-acg-mcl-cpu-seed0 --last 10     # the last 10 and their mean

Reads the ``mcl_diagnostics`` of a synthetic study's unit records (``units/*.json``) or the ``mcl_diagnostics.json``
of an ``mcl train`` run folder, and prints per measurement: the MCL weight, L_MCL, the InfoNCE top-1 accuracy of
the condition read from the contrasted mechanism gradient, from its generator term and from the critic's direct
term, the generator term's with z from another row (``acc_gen_ind``; NaN in records from before it was
logged), chance, the shortcut share and |grad w L_MCL| / |grad host| on the generator (medians over a unit's members;
:mod:`mclcore.losses.diagnostics` defines each).

``--last N`` prints the last N measurements and their mean (NaNs left out). Why: one readout is the top-1 accuracy
on one batch (32 rows at the world model's cpu preset: steps of 1/32), so a single measurement is coarse; the mean
of the last N reads the end of training on N batches.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics

COLUMNS = (("step", "step", "{:>6}"), ("weight", "weight", "{:>9.3g}"), ("mcl", "L_MCL", "{:>7.3f}"),
           ("acc", "acc", "{:>6.3f}"), ("acc_generator", "acc_gen", "{:>7.3f}"), ("acc_direct", "acc_dir", "{:>7.3f}"),
           ("acc_generator_independent", "acc_gen_ind", "{:>11.3f}"), ("chance", "chance", "{:>6.3f}"),
           ("shortcut_share", "shortcut", "{:>8.2f}"), ("grad_ratio", "|gMCL|/|ghost|", "{:>14.3g}"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a synthetic study's --out, or an mcl train run folder")
    p.add_argument("--unit", default=None, help="only this unit of a synthetic study")
    p.add_argument("--last", type=int, default=None, metavar="N",
                   help="only the last N measurements, followed by their mean")


def _median(v) -> float:
    if not isinstance(v, list):
        return float("nan") if v is None else float(v)
    vals = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(vals) if vals else float("nan")


def _mean(values) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _sources(run_dir: str, unit: str | None) -> list[tuple[str, list]]:
    if not os.path.isdir(run_dir):
        raise ValueError(f"run_dir: no such folder {run_dir!r}")
    single = os.path.join(run_dir, "mcl_diagnostics.json")
    paths = [single] if os.path.exists(single) else sorted(glob.glob(os.path.join(run_dir, "units", "*.json")))
    out = []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable record ({err})") from None
        name = os.path.basename(run_dir.rstrip("/")) if path == single else data.get("uid", path)
        records = data if path == single else data.get("mcl_diagnostics") or []
        if records and (unit is None or name == unit):
            out.append((name, records))
    return out


def run(args: argparse.Namespace) -> int:
    import sys

    if args.last is not None and args.last < 1:
        print(f"mcl inspect-mcl: --last: expected a positive number of measurements, got {args.last}", file=sys.stderr)
        return 2
    sources = _sources(args.run_dir, args.unit)
    if not sources:
        what = f"unit {args.unit!r}" if args.unit else "any run"
        print(f"mcl inspect-mcl: no MCL diagnostics for {what} in {args.run_dir} (only MCL runs log them, every "
              f"mcl.diagnose_every steps)", file=sys.stderr)
        return 2
    head = " ".join(f"{title:>{len(fmt.format(1)) if key != 'step' else 6}}" for key, title, fmt in COLUMNS)
    for name, records in sources:
        shown = records if args.last is None else records[-args.last:]
        print(f"{name}  ({len(records)} measurements{'' if args.last is None else f', the last {len(shown)}'}; "
              f"medians over members)")
        print(head)
        rows = [[r["step"] if key == "step" else _median(r.get(key)) for key, _, _ in COLUMNS] for r in shown]
        for row in rows:
            print(" ".join(fmt.format(v) for v, (_, _, fmt) in zip(row, COLUMNS)))
        if args.last is not None:
            print(" ".join(f"{'mean':>6}" if key == "step" else fmt.format(_mean(col))
                           for col, (key, _, fmt) in zip(zip(*rows), COLUMNS)))
        print()
    return 0
