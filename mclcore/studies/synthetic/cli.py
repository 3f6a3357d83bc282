"""``mcl synthetic``: the synthetic identifiability study of the paper's §5.1 and App. F.1 (Fig. 5, Table 5).

    mcl synthetic --preset demo --out runs/synthetic-demo            # the README demo: a few minutes on a CPU
    mcl synthetic --preset quick --out runs/synthetic-quick          # both processes, all four models + MCL
    mcl synthetic --preset landscape --out runs/synthetic-landscape  # the protocol levers, ~1 h on 2 cores
    mcl synthetic --preset principles --out runs/synthetic-principles # CompVAE, MMD-VAE, QLAE, InterVAE vs the VAEs
    mcl synthetic --preset paper --out runs/synthetic-paper          # 30 seeds x 200 epochs x 15 cells: a GPU job
    mcl synthetic --preset quick --dzs 5 10 --epochs 40 --out DIR    # any field from the command line
    mcl synthetic --preset quick --set train.mcl.tau=0.07 --out DIR  # or any field by its dotted path
    mcl synthetic --config experiments/synthetic/configs/home_ground.json --out DIR
    torchrun --nproc-per-node 4 -m mclcore synthetic --preset paper --out DIR  # units over 4 GPUs (or processes)

Precedence: defaults <- ``--preset`` <- ``--config`` <- flags and ``--set``. Every field of
:class:`~mclcore.studies.synthetic.config.StudyConfig` has a flag (``--dzs``; the train section's fields without
its name, ``--epochs``, ``--mcl-tau``), generated from the dataclasses. The study itself is
:func:`mclcore.studies.synthetic.run.run_study`.

Under torchrun every rank runs the same command: the unfinished units are split over the ranks by estimated cost
(each rank its own GPU, ``cuda:LOCAL_RANK``, or the CPU with ``--threads``; ``--workers N``: N processes per
rank), rank 0 writes the tables once all are done, and a study resumes with any number of ranks
(experiments/synthetic/README.md, "More than one process").
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mclcore.studies.synthetic.config import PER_UNIT, PRESETS, StudyConfig, preset
from mclcore.train.config import add_config_flags, apply_overrides, flag_overrides, merge

__all__ = ["add_arguments", "resolve", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="demo: the README demo (minutes); quick: all models + MCL (minutes); landscape: the "
                        "protocol levers (about an hour on 2 cores); principles: four disentanglement principles "
                        "beside the VAEs (issue #23); cpu-paper: Fig. 5 / Table 5 at a CPU budget; "
                        "paper: the paper's grid (a GPU job)")
    p.add_argument("--config", default=None, help="JSON file of StudyConfig fields (applied after --preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field by its dotted path, e.g. train.mcl.tau=0.07 or seeds=10 (repeatable)")
    p.add_argument("--out", default=None, help="output directory (default runs/synthetic-<preset or custom>)")
    p.add_argument("--dump-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(p, StudyConfig, flatten=("train",), skip=tuple(f"train.{k}" for k in PER_UNIT),
                     title="study (StudyConfig; see help(mclcore.studies.synthetic.config.StudyConfig))")


def resolve(args: argparse.Namespace) -> StudyConfig:
    """defaults <- --preset <- --config <- explicit flags <- --set."""
    study = preset(args.preset) if args.preset else StudyConfig()
    if args.config:
        try:
            with open(args.config) as f:
                extra = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--config: cannot read {args.config}: {err}") from None
        if not isinstance(extra, dict):
            raise ValueError(f"--config: expected a JSON object of StudyConfig fields, got {type(extra).__name__}")
        study = merge(study, extra, where=f"--config {args.config}")
    study = merge(study, flag_overrides(args), where="flags")
    return apply_overrides(study, args.set, example="train.mcl.tau=0.07")


def run(args: argparse.Namespace) -> int:
    from mclcore.distributed import env_world
    from mclcore.studies.synthetic.ranks import RankFailed
    from mclcore.studies.synthetic.run import OutDirMismatch, run_study

    try:
        study = resolve(args).validate()
    except (ValueError, TypeError) as err:
        print(f"mcl synthetic: {err}", file=sys.stderr)
        return 2
    if args.dump_config:
        print(json.dumps(study.to_dict(), indent=1, sort_keys=True))
        return 0
    out = args.out or os.path.join("runs", f"synthetic-{args.preset or 'custom'}")
    try:
        paths = run_study(study, out, progress=not args.no_progress)
    except (OutDirMismatch, ValueError, OSError, FloatingPointError) as err:   # a mistake or a damaged file: one line
        if getattr(args, "debug", False):
            raise
        kind = f"{type(err).__name__}: " if isinstance(err, OSError) else ""
        print(f"mcl synthetic: {kind}{err}", file=sys.stderr)
        return 2
    except RankFailed as err:     # under torchrun: another rank's error, already printed in full by that rank
        if getattr(args, "debug", False):
            raise
        print(f"mcl synthetic: {err}", file=sys.stderr)
        return 2 if err.user_error else 1
    if not env_world().is_main:   # under torchrun rank 0 prints the results, once
        return 0
    print(f"mcl synthetic: done. MCC table: {paths['table']}")
    if "violin" in paths:
        print(f"  violin plot (Fig. 5 style): {paths['violin']}")
    if "cells_plot" in paths:
        print(f"  every seed, means and 95% intervals per cell, u-blind ceilings: {paths['cells_plot']}")
    if "landscape_plot" in paths:
        print(f"  heat maps of paired differences: {paths['landscape_plot']}")
    if "table5_plot" in paths:
        print(f"  |U| sweep plot (Table 5): {paths['table5_plot']}")
    print(f"  every run: {paths['csv']}" + (f"; certificates: {paths['certificates']}" if "certificates" in paths
                                            else ""))
    with open(paths["table"]) as f:
        print(f.read())
    return 0
