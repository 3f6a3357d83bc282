"""The README's Table 1 / Table 6 / wall times of the disentanglement study are exactly what make_tables.py builds
from the committed run files (experiments/disentanglement/results/table1, written by collect_table1.py from the
pre-registered table1.sh runs), and every committed run has its figures."""
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
EXP = os.path.join(ROOT, "experiments", "disentanglement")
RESULTS = os.path.join(EXP, "results", "table1")
BEGIN = "<!-- make_tables: begin -->"
END = "<!-- make_tables: end -->"


def _readme_block() -> str:
    text = open(os.path.join(EXP, "README.md"), encoding="utf-8").read()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "README must hold one make_tables block"
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def test_readme_tables_are_regenerated_from_committed_results():
    out = subprocess.run([sys.executable, os.path.join(EXP, "make_tables.py"), RESULTS, "--preset", "cpu-smoke"],
                         capture_output=True, text=True, check=True).stdout
    assert _readme_block() == out.strip("\n")


def test_every_committed_run_is_complete_and_in_the_pre_registered_grid():
    script = open(os.path.join(EXP, "table1.sh")).read()
    datasets = re.search(r"for d in ([a-z0-9 ]+); do", script).group(1).split()
    models = re.search(r"for m in ([a-z_ ]+); do", script).group(1).split()
    expected = {f"{m}-{d}-cpu-smoke-seed0" for d in datasets for m in models}
    runs = set(os.listdir(RESULTS))
    assert runs == expected, (sorted(expected - runs), sorted(runs - expected))
    for run in runs:
        figs = os.listdir(os.path.join(RESULTS, run, "figures"))
        assert {"fig6_swap.jpg", "fig8_traversals.jpg"} <= set(figs), run
        assert all(os.path.getsize(os.path.join(RESULTS, run, "figures", f)) < 200_000 for f in figs), run
