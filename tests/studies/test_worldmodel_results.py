"""The world-model tables in experiments/worldmodel/cpu/ are regenerated from the committed run files.

Every number of the ``cpu`` preset's Table 2, action-following, MCL-effect and latent-probe tables in
experiments/worldmodel/README.md comes from ``report.md`` files written by ``python -m
mclcore.studies.worldmodel.report`` from the small per-run files committed next to them (config.json, metrics.json,
following.json). This test reruns the report on those files and compares the tables byte for byte, so a table can
neither drift from its runs nor be edited by hand.
"""
import glob
import os

from mclcore.studies.worldmodel import report as wm_report

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "worldmodel", "cpu")
RUNS = sorted(glob.glob(os.path.join(ROOT, "worldmodel-*-cpu-seed*")))
TABLES = ("table.md", "details.md", "following.md", "table2.md", "gaps.md", "mcl_effect.md", "latent_probe.md")


def test_committed_tables_are_regenerated_from_the_committed_runs(tmp_path):
    assert RUNS, f"no committed world-model runs under {ROOT}"
    for d in RUNS:
        for f in ("config.json", "metrics.json", "following.json"):
            assert os.path.exists(os.path.join(d, f)), f"{d}: {f} missing"
    out = wm_report.report(RUNS, str(tmp_path))
    for name in TABLES:
        committed = os.path.join(ROOT, name)
        assert os.path.exists(committed), f"{committed} not committed"
        assert open(os.path.join(tmp_path, name)).read() == open(committed).read(), \
            f"{name} differs from the report of the committed runs: rerun the command in experiments/worldmodel/README.md"
    assert not any(k.startswith(("ACG", "LACG")) for k in out)          # no rollouts.npz committed: no figures


def test_committed_idm_ceiling_table_is_regenerated_from_its_json():
    """experiments/worldmodel/cpu/idm_ceiling.md (pasted into the README) is the table of the committed
    idm_ceiling.json, every pre-registered cell present."""
    import importlib.util
    import json

    path = os.path.join(ROOT, "..", "idm_ceiling.py")
    spec = importlib.util.spec_from_file_location("idm_ceiling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = json.load(open(os.path.join(ROOT, "idm_ceiling.json")))
    cells = {(r["seed"], r["inputs"], r["steps"], r["split"]) for r in data["rows"]}
    assert cells == {(s, i, n, sp) for s in mod.SEEDS for i in mod.INPUTS for n in mod.STEPS for sp in mod.SPLITS}
    lacg = {int(k): v for k, v in data["lacg"].items()}
    assert mod.table(data["rows"], lacg) == open(os.path.join(ROOT, "idm_ceiling.md")).read()


def test_mcl_diagnostics_table_shows_the_independent_readout_only_where_logged():
    """Runs from before ``acc_generator_independent`` keep the committed table's columns; once a run logged it, the
    table gains its column, with "–" for runs that did not."""
    import json

    from mclcore.studies.worldmodel.seeds import mcl_diagnostics_markdown

    results = [json.load(open(os.path.join(d, "metrics.json"))) for d in RUNS]
    mcl_runs = [r for r in results if r.get("mcl")]
    assert len(mcl_runs) >= 2
    before = mcl_diagnostics_markdown(results).splitlines()
    assert "z from another row" not in before[0] and len(before) == len(mcl_runs) + 2
    mcl_runs[0]["mcl_acc_generator_independent"] = 0.8125
    after = mcl_diagnostics_markdown(results).splitlines()
    head = [c.strip() for c in after[0].split("|")]
    col = head.index("acc generator term, z from another row")
    assert head[col - 1] == "acc generator term" and after[1].count("---") == len(head) - 2
    cells = [ln.split("|")[col].strip() for ln in after[2:]]
    assert cells.count("0.812") == 1 and cells.count("–") == len(mcl_runs) - 1
    assert all(len(ln.split("|")) == len(head) for ln in after)


def test_committed_readout_checks_are_regenerated_from_their_diagnostics(capsys):
    """experiments/worldmodel/readout/readout.txt (pasted into the README) is what readout.sh's last loop prints from
    the committed mcl_diagnostics.json files: `mcl inspect-mcl DIR --last 10` for each check, in its order."""
    from mclcore.cli import main

    here = os.path.join(ROOT, "..", "readout")
    names = ("acg-mcl", "acg-mcl-critic-x", "lacg-mcl")
    for name in names:
        assert main(["inspect-mcl", os.path.join(here, name), "--last", "10"]) == 0
    text = capsys.readouterr().out
    assert text == open(os.path.join(here, "readout.txt")).read()
    readme = open(os.path.join(ROOT, "..", "README.md")).read()
    assert all(line in readme for line in text.splitlines() if line.strip().startswith("mean"))


def test_committed_mcl_probe_tables_are_regenerated_from_their_runs(tmp_path):
    """experiments/worldmodel/readout/probe/table.md, table_x3.md and table_w256.md (pasted into the README) are
    mcl_probe.py --table of the committed probe files (mcl_probe.json; the longer check's mcl_probe_x3.json; the wider
    probe critic's mcl_probe_w256.json), the folders sorted by name as mcl_probe.sh lists them."""
    import importlib.util

    here = os.path.join(ROOT, "..", "readout", "probe")
    spec = importlib.util.spec_from_file_location("wm_mcl_probe", os.path.join(ROOT, "..", "mcl_probe.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    readme = open(os.path.join(ROOT, "..", "README.md")).read()
    for table, file in (("table.md", "mcl_probe.json"), ("table_x3.md", "mcl_probe_x3.json"),
                        ("table_w256.md", "mcl_probe_w256.json")):
        runs = sorted(d for d in os.listdir(here) if os.path.isfile(os.path.join(here, d, file)))
        assert runs and all("-seed" in d for d in runs)
        out = str(tmp_path / table)
        args = ["--table", out, "--file", file] + [f"{d}={os.path.join(here, d)}" for d in runs]
        assert probe.main(args) == 0
        text = open(out).read()
        assert text == open(os.path.join(here, table)).read()
        assert text.strip() in readme
