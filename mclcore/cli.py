"""The ``mcl`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; this file only
lists them, so adding a command touches one line here.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("mclcore.demo", "train a small conditional generator with MCL and print the loss falling"),
    "synthetic": ("mclcore.studies.synthetic.cli", "synthetic identifiability study (paper 5.1, Fig. 5, Table 5): MCC"),
    "eval": ("mclcore.metrics.cli", "disentanglement metrics of a saved representation, JSON out"),
    "train": ("mclcore.studies.train_cli", "train and evaluate a model of a study (mddiff, encdiff, VAE baselines, worldmodel)"),
    "certify": ("mclcore.mechanism.cli", "check the sufficient-GMD condition (Assumption 2) of a generator"),
    "tabletop": ("mclcore.data.tabletop.cli", "tabletop manipulation episodes (place_a2b_left/right, two arms)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcl", description="Mechanistic Contrastive Learning tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
