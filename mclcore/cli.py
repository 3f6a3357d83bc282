"""The ``mcl`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; this file only
lists them, so adding a command touches one line here. It also adds ``--debug`` to every command and turns a user's
mistake that escapes a command (:data:`USER_ERRORS`) into one line and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import pickle
import sys
import zipfile

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("mclcore.demo", "train a small conditional generator with MCL and print the loss falling"),
    "synthetic": ("mclcore.studies.synthetic.cli", "synthetic identifiability study (paper 5.1, Fig. 5, Table 5): MCC"),
    "eval": ("mclcore.metrics.cli", "disentanglement metrics of a saved representation, JSON out"),
    "train": ("mclcore.studies.train_cli", "train and evaluate a model of a study (mddiff, encdiff, VAE baselines, worldmodel)"),
    "certify": ("mclcore.mechanism.cli", "check the sufficient-GMD condition (Assumption 2) of a generator"),
    "tabletop": ("mclcore.data.tabletop.cli", "tabletop manipulation episodes (place_a2b_left/right, two arms)"),
    "inspect-mcl": ("mclcore.studies.inspect_mcl", "what MCL did over a run: readout accuracies, shortcut share, "
                                                   "gradient ratio"),
}


# What a user's mistake or a damaged input file raises (a missing or corrupt file, a bad value): one line on stderr
# and exit code 2 instead of a traceback; ``--debug`` shows the traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcl", description="Mechanistic Contrastive Learning tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    return parser


def _process_group_started() -> bool:
    """Whether a torch.distributed process group exists (without importing torch for commands that never did)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # under torchrun (`torchrun ... -m mclcore train ...`) the training loop starts the process group: the command
    # that started it ends it; a caller that brought its own group (the tests) keeps it
    had_group = _process_group_started()
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except USER_ERRORS as err:
        if args.debug:
            raise
        kind = f"{type(err).__name__}: " if isinstance(err, (OSError, EOFError, pickle.UnpicklingError,
                                                              zipfile.BadZipFile)) else ""
        print(f"mcl {args.command}: {kind}{err}", file=sys.stderr)
        return 2
    finally:
        if not had_group and _process_group_started():
            sys.modules["torch.distributed"].destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
