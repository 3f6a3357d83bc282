"""The synthetic study's MCL grid tables (experiments/synthetic/mcl_instrument.py) are what its table code builds from
the committed cells.csv, and the README shows them; the column of the readout with z from another row appears only
where a grid logged it."""
import csv
import math
import os
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
EXP = os.path.join(ROOT, "experiments", "synthetic")


def _table(results: str) -> list[str]:
    sys.path.insert(0, EXP)
    try:
        from mcl_instrument import _table as table
    finally:
        sys.path.remove(EXP)
    with open(os.path.join(EXP, results, "cells.csv")) as f:
        rows = list(csv.DictReader(f))
    return table([{k: v if k in ("regime", "cell") else float(v) for k, v in r.items()} for r in rows])


def test_readout_pairing_table_is_regenerated_from_committed_cells_and_in_the_readme():
    lines = _table("mcl_readout_pairing")
    with open(os.path.join(EXP, "mcl_readout_pairing", "table.md"), encoding="utf-8") as f:
        assert "\n".join(lines) in f.read()
    with open(os.path.join(EXP, "README.md"), encoding="utf-8") as f:
        assert "\n".join(lines) in f.read()
    assert "acc (generator term, z of another row) | own z − another's, paired |" in lines[0]
    assert all(len(line.split(" | ")) == len(lines[0].split(" | ")) for line in lines[2:])           # every cell filled
    assert not any(math.isnan(float(c)) for c in lines[3].split(" | ")[4:5])       # a number in the first MCL cell


def test_a_grid_logged_before_the_readout_existed_keeps_its_table():
    lines = _table("mcl_instrument")
    assert "z of another row" not in lines[0]
    with open(os.path.join(EXP, "README.md"), encoding="utf-8") as f:
        assert "\n".join(lines) in f.read()
