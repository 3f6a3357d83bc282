"""Collect ``metrics.json`` of every run under a folder into Table 1 and Table 6 of the paper, ours beside theirs.

    python experiments/disentanglement/make_tables.py runs/disentanglement [--preset cpu-smoke] [--out tables.md]

The tables, the paper's numbers and the options live in :mod:`mclcore.studies.disentangle.report`.
"""
from __future__ import annotations

import sys

from mclcore.studies.disentangle.report import main

if __name__ == "__main__":
    sys.exit(main())
