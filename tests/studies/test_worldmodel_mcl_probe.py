"""experiments/worldmodel/mcl_probe.py: the fresh-critic probe of a world model's one-step generator reads a finished
run (every probe, deterministic, the model untouched), refuses folders that hold none in one line (exit 2), and
tabulates runs with their paired differences."""
import importlib.util
import json
import os

import numpy as np
import pytest
from test_worldmodel import tiny

from mclcore.studies.worldmodel.run import train

EXP = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "worldmodel")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)


def load_probe():
    spec = importlib.util.spec_from_file_location("wm_mcl_probe", os.path.join(EXP, "mcl_probe.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("variant", ["acg", "lacg"])
def test_probe_reads_a_finished_run_deterministically_and_leaves_it_unchanged(variant, tmp_path):
    probe = load_probe()
    run = str(tmp_path / variant)
    train(tiny(variant, False), run, progress=False, log=False)
    ck = os.path.join(run, "checkpoint.pt")
    before, files = open(ck, "rb").read(), os.listdir(run)
    a, b = probe.mcl_probe(run, 0.004), probe.mcl_probe(run, 0.004)
    assert a == b                                                       # seeded batches, noise and initialisation
    assert list(a["probes"]) == ["/".join(p) for p in probe.PROBES]
    assert a["samples"]["steps"] == 4 and a["samples"]["eval_batches"] == 2 and not a["mcl"]
    for name, p in a["probes"].items():
        assert 0 < p["chance"] <= 1 and len(p["per_batch"]["acc_generator"]) == 2
        assert all(0 <= v <= 1 for v in p["per_batch"]["acc_generator"] + [p["acc"], p["acc_generator"]])
        assert (p["acc_direct"] is None) == name.startswith("x/")     # a critic of x alone has no direct term
        assert np.isfinite(p["loss_first"]) and np.isfinite(p["loss_last"])
    assert open(ck, "rb").read() == before and sorted(os.listdir(run)) == sorted(files)   # only reads the run


def test_probe_refuses_folders_without_a_finished_run_in_one_line(tmp_path, capsys):
    probe = load_probe()
    assert probe.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no checkpoint.pt" in err and "missing" in err
    run = str(tmp_path / "part")
    train(tiny("acg", False), run, progress=False, log=False, stop_before="dynamics")
    assert probe.main([run]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has not finished training" in err
    assert probe.main(["--table", str(tmp_path / "t.md"), "acg=" + str(tmp_path / "missing")]) == 2
    assert "NAME=RUN" in capsys.readouterr().err
    for bad, why in ((["--probes", "x/own/nope"], "--probes"), (["--file", "../x.json"], "--file"),
                     (["--critic-hidden", "64,0"], "--critic-hidden"),
                     (["--critic-hidden", "wide"], "--critic-hidden")):
        assert probe.main([run, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and why in err


def test_a_subset_of_probes_and_a_killed_run_resumed_give_the_cells_of_the_full_run(tmp_path, probe_calls):
    probe = load_probe()
    run = str(tmp_path / "acg")
    train(tiny("acg", False), run, progress=False, log=False)
    assert probe.main([run, "--sample-scale", "0.004"]) == 0
    # killed during the third probe, then started again: only the last two probes run, the file is the same
    calls = probe_calls(probe, 4, kill_at=probe.PROBES[2])             # args[4:7]: the probe's name
    with pytest.raises(KeyboardInterrupt):
        probe.main([run, "--sample-scale", "0.004", "--file", "resumed.json"])
    assert calls == list(probe.PROBES[:2]) and not os.path.exists(os.path.join(run, "resumed.json"))
    calls.clear()
    probe_calls(probe, 4)
    assert probe.main([run, "--sample-scale", "0.004", "--file", "resumed.json"]) == 0
    assert calls == list(probe.PROBES[2:]) and not os.path.exists(os.path.join(run, "resumed.partial.json"))
    assert open(os.path.join(run, "resumed.json")).read() == open(os.path.join(run, probe.FILE)).read()
    assert probe.main([run, "--sample-scale", "0.004", "--probes", "x/own/independent", "--file", "sub.json"]) == 0
    full, sub = (json.load(open(os.path.join(run, f))) for f in (probe.FILE, "sub.json"))
    assert list(sub["probes"]) == ["x/own/independent"]
    assert sub["probes"]["x/own/independent"] == full["probes"]["x/own/independent"]
    out = str(tmp_path / "sub.md")                                  # a subset's table has the subset's columns
    assert probe.main(["--table", out, "--file", "sub.json", f"acg={run}"]) == 0
    assert "| run | variant | MCL | seed | x/own/independent |" in open(out).read()
    # another probe critic than training's: recorded, used (another cell), named in the table
    assert probe.main([run, "--sample-scale", "0.004", "--probes", "x/own/independent", "--file", "wide.json",
                       "--critic-hidden", "24,24"]) == 0
    wide = json.load(open(os.path.join(run, "wide.json")))
    assert wide["samples"]["critic_hidden"] == [24, 24] and "critic_hidden" not in full["samples"]
    assert wide["probes"]["x/own/independent"]["losses"] != full["probes"]["x/own/independent"]["losses"]
    assert probe.main(["--table", out, "--file", "wide.json", f"acg={run}"]) == 0
    assert "Probe critic: hidden widths [24, 24], not training's." in open(out).read()
    assert probe.main(["--table", out, "--file", "sub.json", f"acg={run}", f"b={tmp_path}"]) == 2   # no file there


def test_table_pairs_runs_with_mcl_against_runs_without_by_seed(tmp_path):
    probe = load_probe()
    runs = {}
    for seed in (0, 1):
        for mcl in (False, True):
            name = f"acg{'-mcl' if mcl else ''}-s{seed}"
            runs[name] = str(tmp_path / name)
            train(tiny("acg", mcl, seed=seed), runs[name], progress=False, log=False)
            assert probe.main([runs[name], "--sample-scale", "0.004"]) == 0
    out = str(tmp_path / "probe.md")
    assert probe.main(["--table", out] + [f"{k}={v}" for k, v in runs.items()]) == 0
    lines = open(out).read().splitlines()
    assert [ln.split(" | ")[0] for ln in lines if ln.startswith("| acg-")] == ["| acg-s0", "| acg-mcl-s0", "| acg-s1",
                                                                               "| acg-mcl-s1"]
    diffs = [ln.split(" | ") for ln in lines if ln.startswith("| acg |")]
    assert [d[1] for d in diffs] == ["0", "1", "mean over 0,1"]
    own = {k: json.load(open(os.path.join(v, probe.FILE))) for k, v in runs.items()}
    name = "x/own/independent"
    col = 2 + ["/".join(p) for p in probe.PROBES].index(name)

    def mean(run):
        return np.mean(own[run]["probes"][name]["per_batch"]["acc_generator"])

    per_seed = [mean(f"acg-mcl-s{s}") - mean(f"acg-s{s}") for s in (0, 1)]
    got = [float(d[col].split()[0]) for d in diffs]
    assert got == pytest.approx(per_seed + [np.mean(per_seed)], abs=1e-3)
