"""The README's Table 1 / Table 6 / wall times of the disentanglement study are exactly what make_tables.py builds
from the committed run files (experiments/disentanglement/results/table1, written by collect_table1.py from the
pre-registered table1.sh runs); the MCL ablation's table likewise from its committed metrics; every committed
image run (Table 1, principles, MCL ablation) has its figures."""
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


def test_mcl_ablation_table_is_regenerated_from_committed_metrics(tmp_path):
    """mcl_ablation/table.md is what mcl_ablation_report.py builds from the committed per-run metrics.json (laid
    out as the run folders mcl_ablation.sh writes), and the README shows its rows unedited."""
    import json
    import shutil

    res = os.path.join(EXP, "mcl_ablation")
    for arm in ("default", "lambda0"):
        for name in sorted(os.listdir(res)):
            if name.startswith(f"{arm}-seed") and name.endswith("-metrics.json"):
                m = json.load(open(os.path.join(res, name)))
                run = tmp_path / "runs" / arm / f"mddiff-mpi3d-cpu-smoke-seed{m['seed']}"
                os.makedirs(run)
                shutil.copyfile(os.path.join(res, name), run / "metrics.json")
    out = tmp_path / "res"
    subprocess.run([sys.executable, os.path.join(EXP, "mcl_ablation_report.py"), str(tmp_path / "runs"),
                    "--results", str(out)], capture_output=True, text=True, check=True)
    text = open(out / "table.md").read()
    assert text == open(os.path.join(res, "table.md")).read()
    readme = open(os.path.join(EXP, "README.md"), encoding="utf-8").read()
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            assert line in readme, line


def test_every_committed_run_of_the_other_image_tables_has_its_figures():
    runs = [os.path.join(EXP, "results", "principles", d, "figures")
            for d in os.listdir(os.path.join(EXP, "results", "principles"))
            if os.path.isdir(os.path.join(EXP, "results", "principles", d))]
    abl = os.path.join(EXP, "mcl_ablation")
    runs += [os.path.join(abl, n[:-len("-metrics.json")] + "-figures") for n in os.listdir(abl)
             if n.endswith("-metrics.json")]
    assert len(runs) == 35 + 6
    for figs in runs:
        assert {"fig6_swap.jpg", "fig8_traversals.jpg"} <= set(os.listdir(figs)), figs
        assert all(os.path.getsize(os.path.join(figs, f)) < 200_000 for f in os.listdir(figs)), figs
