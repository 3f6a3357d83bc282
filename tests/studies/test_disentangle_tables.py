"""The README's Table 1 / Table 6 / wall times of the disentanglement study are exactly what make_tables.py builds
from the committed run files (experiments/disentanglement/results/table1, written by collect_table1.py from the
pre-registered table1.sh runs); the MCL ablation's table likewise from its committed metrics; every committed
image run (Table 1, principles, MCL ablation) has its figures."""
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
EXP = os.path.join(ROOT, "experiments", "disentanglement")
RESULTS = os.path.join(EXP, "results", "table1")
BEGIN = "<!-- make_tables: begin -->"
END = "<!-- make_tables: end -->"


def _readme_block() -> str:
    with open(os.path.join(EXP, "README.md"), encoding="utf-8") as f:
        text = f.read()
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


def _write_code_use(run, rel_gap: float, random_footprint: float, factors: dict, decoder_gap=None) -> None:
    """A fake code_use.json in ``run``: ``factors`` {name: (resolution, footprint)}, the u-decoder's gap if given."""
    import json

    use = {"denoiser": {"all": {"rel_gap": rel_gap}}, "random": {"footprint": random_footprint},
           "factors": {f: {"resolution": r, "footprint": fp} for f, (r, fp) in factors.items()}}
    if decoder_gap is not None:
        use["decoder"] = {"rel_gap": decoder_gap}
    json.dump(use, open(run / "code_use.json", "w"))


def test_cpu_long_report_pairs_by_seed_lists_missing_runs_and_rebuilds_from_results(tmp_path):
    """cpu_long_report.py on a fake grid (metrics.json only): per-arm cells with n, differences on the seeds both
    arms finished, the unfinished runs named, MCL diagnostics; --from-results on the copied folder gives the same
    table."""
    import json

    base = json.load(open(os.path.join(RESULTS, "mddiff-shapes3d-cpu-smoke-seed0", "metrics.json")))
    fv = {"encdiff": (0.6, 0.7, 0.8), "betavae": (0.5, 0.5, None), "mddiff": (0.7, 0.8, 0.9),
          "mddiff_l0": (0.6, 0.8, 0.8)}
    for arm, vals in fv.items():
        folder, model = ("lambda0", "mddiff") if arm == "mddiff_l0" else ("main", arm)
        for seed, v in enumerate(vals):
            if v is None:
                continue
            run = tmp_path / "runs" / folder / f"{model}-shapes3d-cpu-long-seed{seed}"
            os.makedirs(run)
            m = dict(base, model=model, preset="cpu-long", seed=seed, factorvae=v, mcl_weight=1e-3)
            if arm == "encdiff":   # per-factor informativeness on two seeds; an --eval-only timing on one
                m.pop("dci_informativeness_per_factor", None)
                if seed < 2:
                    m["dci_informativeness_per_factor"] = {"floor_hue": 0.5 + seed / 10, "shape": 0.25}
                if seed == 1:       # an --eval-only call: the training call's seconds are under training_run
                    m["seconds"] = {"train_call": 0.5, "total_call": 60.0,
                                    "training_run": {"train_call": 1800.0, "total_call": 1900.0}}
                if seed == 2:       # a resumed run: training summed over its calls
                    m["seconds"] = dict(m["seconds"], train_all_calls=2400.0)
            # one TensorBoard event file per training call: one for encdiff's seeds, two for betavae seed 1 (resumed
            # before checkpoints recorded their seconds: no minutes)
            os.makedirs(run / "tb")
            for call in range(2 if (arm, seed) == ("betavae", 1) else 1):
                (run / "tb" / f"events.out.tfevents.{call}").write_bytes(b"")
            json.dump(m, open(run / "metrics.json", "w"))
            if arm == "encdiff" and seed == 0:
                json.dump({"recon_mse": 0.01, "probe": {"floor_hue": 1.0, "shape": 0.7}},
                          open(run / "first_stage_probe.json", "w"))
            if arm == "mddiff" and seed < 2:        # code_use.py's file on two seeds
                _write_code_use(run, 0.8 + seed / 10, 2.0, {"floor_hue": (1.0 + seed, 1.0), "shape": (0.1, 0.2)},
                                decoder_gap=0.04 + seed / 100)
    script = os.path.join(EXP, "cpu_long_report.py")
    res = tmp_path / "res"
    out = subprocess.run([sys.executable, script, str(tmp_path / "runs"), "--results", str(res)],
                         capture_output=True, text=True, check=True).stdout
    assert "| encdiff | 3 | 0.700 [" in out and "| betavae | 2 | 0.500 [0.500, 0.500]" in out
    assert "| encdiff − betavae | 0,1 | +0.150 [+0.100, +0.200]" in out
    assert "| mddiff − mddiff_l0 | 0,1,2 | +0.067 [+0.000, +0.100]" in out
    assert "Not finished: betavae seed 2." in out and "| 0 | 0.001 |" in out
    assert "| arm | n | floor_hue | shape |" in out and "| encdiff | 2 | 0.550 | 0.250 |" in out
    # the first-stage ceiling beside the code, where first_stage_probe.py wrote one (copied with --results)
    assert "| encdiff: first-stage latent, linear probe | 1 | 1.000 | 0.700 |" in out
    assert "First-stage reconstruction MSE: encdiff 0.0100." in out
    assert os.path.exists(res / "encdiff" / "encdiff-shapes3d-cpu-long-seed0" / "first_stage_probe.json")
    # how much the denoiser uses the code, where code_use.py wrote one: resolution and footprint per factor
    assert "| mddiff: resolution | 2 | 0.850 | 1.500 | 0.100 |" in out
    assert "| mddiff: footprint | 2 |  | 0.500 | 0.100 |" in out
    assert "relative gap of its pixel MSE, mean over the seeds (n): mddiff 0.045 (n=2)." in out
    assert os.path.exists(res / "mddiff" / "mddiff-shapes3d-cpu-long-seed1" / "code_use.json")
    minutes = float(out.split("| encdiff | 3 |")[1].split("\n")[0].split("|")[1:-1][-1].split()[0])
    # the u-decoder gap as a column: mddiff's two code_use.json files (0.04, 0.05), none for encdiff
    assert "| 0.045 [0.040, 0.050] (n=2) | " in out.split("| mddiff | 3 |")[1].split("\n")[0]
    # seed 0 its train_call, seed 1 training_run's 1800 s (not the evaluation call's), seed 2 all calls' 2400 s
    assert minutes == pytest.approx(np.mean([base["seconds"]["train_call"] / 60, 30.0, 40.0]), abs=1e-3)
    one_call = f"{base['seconds']['train_call'] / 60:.3f}"              # betavae: seed 0's alone
    assert out.split("| betavae | 2 |")[1].split("\n")[0].rstrip(" |").endswith(one_call + " (n=1)")
    info = res / "betavae" / "betavae-shapes3d-cpu-long-seed1" / "run_info.json"
    assert json.load(open(info)) == {"training_calls": 2}
    again = subprocess.run([sys.executable, script, str(res), "--from-results"], capture_output=True, text=True,
                           check=True).stdout
    assert again == out == open(res / "table.md").read() + "\n"
    bad = subprocess.run([sys.executable, script, str(tmp_path / "none")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("root: no such folder")


def test_first_stage_probe_code_use_and_mcl_probe_read_a_diffusion_run_and_refuse_other_runs(tmp_path, capsys,
                                                                                               one_thread, probe_calls):
    """first_stage_probe.py on a tiny EncDiff run whose first stage finished: reconstruction MSE and one linear-probe
    accuracy per Shapes3D factor, written to the run folder; code_use.py on a tiny MDDiff run: the conditioning gap
    per t-range and per factor, and the u-decoder's; mcl_probe.py on it: the four probes, and killed in the third and
    started again, the same file from the last two; a VAE run (an EncDiff run for mcl_probe.py) or a missing folder
    is one line, exit 2. In-process (the scripts' main and mcl's; one_thread restores the thread count they set):
    interpreter starts would triple its time."""
    import importlib.util
    import json

    from mclcore.cli import main as mcl
    from tests.studies.test_disentangle import TINY

    sets = sum((["--set", s] for s in TINY), [])
    for model in ("encdiff", "mddiff", "betavae"):
        assert mcl(["train", model, "--dataset", "shapes3d", "--out", str(tmp_path), "--quiet", "--no-eval",
                    "--threads", "1", *sets]) == 0
    def load(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(EXP, name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    script = load("first_stage_probe")
    run = tmp_path / "encdiff-shapes3d-cpu-smoke-seed0"
    capsys.readouterr()
    assert script.main([str(run), "--sample-scale", "0.1"]) == 0
    res = json.load(open(run / "first_stage_probe.json"))
    assert list(res["probe"]) == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    assert all(0 <= v <= 1 for v in res["probe"].values()) and 0 < res["recon_mse"] < 1
    assert res["latent_dims"] == 3 * 16 * 16 and res["samples"] == {"recon": 51, "train": 100, "test": 50, "seed": 123}
    for bad, why in ((tmp_path / "betavae-shapes3d-cpu-smoke-seed0",
                      "first_stage_probe.py reads encdiff and mddiff runs"),
                     (tmp_path / "nothing", "no checkpoint.pt")):
        capsys.readouterr()
        assert script.main([str(bad)]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err

    use = load("code_use")
    mdd = tmp_path / "mddiff-shapes3d-cpu-smoke-seed0"
    assert use.main([str(mdd), "--sample-scale", "0.05"]) == 0     # EncDiff's path is MDDiff's minus the decoder
    for r in (json.load(open(mdd / "code_use.json")),):
        assert len(r["denoiser"]["buckets"]) == 10 and r["denoiser"]["n"] == 26
        assert r["denoiser"]["buckets"][-1]["t_hi"] == 100          # TINY's 100 timesteps
        assert list(r["factors"]) == list(res["probe"]) and r["samples"]["pairs_per_factor"] == 16
        for row in [r["random"], *r["factors"].values()]:
            assert len(row["gap_by_t"]) == 10
            assert row["footprint"] >= 0 and np.isfinite(row["gap"]) and row["lo"] <= row["gap"] <= row["hi"]
    dec = json.load(open(mdd / "code_use.json"))["decoder"]
    assert dec["own"] > 0 and dec["lo"] <= dec["gap"] <= dec["hi"]
    capsys.readouterr()
    assert use.main([str(tmp_path / "betavae-shapes3d-cpu-smoke-seed0")]) == 2
    err = capsys.readouterr().err
    assert "code_use.py reads encdiff and mddiff runs" in err and len(err.strip().splitlines()) == 1, err

    probe = load("mcl_probe")
    assert probe.main([str(mdd), "--sample-scale", "0.01"]) == 0     # 3 steps, 2 held-out batches per probe
    r = json.load(open(mdd / "mcl_probe.json"))
    assert list(r["probes"]) == ["xzu/own/paired", "x/own/paired", "x/own/independent", "x/blind/paired"]
    assert r["samples"] == {"steps": 3, "batch_size": 4, "eval_batches": 2, "u_bar_images": 256, "seed": 321}
    for name, p in r["probes"].items():
        assert p["chance"] == 0.25 and 0 <= p["acc"] <= 1 and len(p["per_batch"]["acc"]) == 2, name
        assert len(p["losses"]) == 3 and all(np.isfinite(p["losses"])), name
        assert (p["acc_direct"] is None) == name.startswith("x/"), name    # c(x) has no direct z-term
    whole = open(mdd / "mcl_probe.json").read()
    os.remove(mdd / "mcl_probe.json")
    calls = probe_calls(probe, 3, kill_at=probe.PROBES[2])             # args[3:6]: the probe's name
    with pytest.raises(KeyboardInterrupt):
        probe.main([str(mdd), "--sample-scale", "0.01"])
    probe_calls(probe, 3)
    assert probe.main([str(mdd), "--sample-scale", "0.01"]) == 0
    assert calls == list(probe.PROBES) and open(mdd / "mcl_probe.json").read() == whole
    assert not os.path.exists(mdd / "mcl_probe.partial.json")
    for bad, why in ((tmp_path / "encdiff-shapes3d-cpu-smoke-seed0", "mcl_probe.py reads MDDiff runs"),
                     (tmp_path / "betavae-shapes3d-cpu-smoke-seed0", "mcl_probe.py reads encdiff and mddiff runs")):
        capsys.readouterr()
        assert probe.main([str(bad)]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err


def test_mcl_probe_separates_the_routes_on_a_u_blind_generator():
    """mcl_probe.py's routes on a toy model whose generator ignores u: with z and u independent, a critic that sees
    only x cannot beat chance (nothing in its mechanism gradient depends on u); with z and u of the same image it
    can (z gives u away), and so can a critic that sees u. A toy model: seconds, at a high learning rate."""
    import importlib.util
    from types import SimpleNamespace

    import torch

    from mclcore import MCLConfig

    spec = importlib.util.spec_from_file_location("mcl_probe", os.path.join(EXP, "mcl_probe.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)

    class Toy:                       # 2 x 2 RGB images; z = the image's 12 numbers, u = a fixed linear code of them
        latent_shape, image_size, num_concepts = (12,), 2, 2
        proj = torch.linspace(-1, 1, 24).reshape(12, 2)

        def latents(self, x):
            return x.flatten(1) * 2 - 1

        def concepts(self, x):
            return self.latents(x) @ self.proj

        def generator(self, z, u):   # u-blind
            return torch.tanh(z).view(-1, 3, 2, 2)

    class Data:
        def sample_index(self, n, rng):
            return rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)

        def observations_at(self, idx):
            return idx
    cfg = SimpleNamespace(mcl=MCLConfig(critic_hidden=(32, 32), proj_dim=16),
                          stages=SimpleNamespace(base_lr2=1e-3 / 16, batch_size=16, weight_decay=0.0, warmup2=1))
    accs = {(c, p): probe.train_probe(Toy(), cfg, Data(), c, "own", p, 500, 32)["acc"]
            for c, p in (("x", "independent"), ("x", "paired"), ("xzu", "independent"))}
    # chance 1/16 = 0.0625; 512 held-out rows: its standard error is 0.011
    assert accs["x", "independent"] < 0.12, accs
    assert accs["x", "paired"] > 0.3 and accs["xzu", "independent"] > 0.3, accs


@pytest.mark.parametrize("script, folder", [("cpu_long_report.py", "cpu_long"),
                                            ("encdiff_screen_report.py", "encdiff_screen"),
                                            ("mcl_dose_report.py", "mcl_dose")])
def test_grid_tables_are_regenerated_from_committed_results(script, folder):
    """results/<grid>/table.md is what the grid's report builds --from-results from the committed run files, the
    README shows its rows unedited, and every committed run has its figures."""
    res = os.path.join(EXP, "results", folder)
    out = subprocess.run([sys.executable, os.path.join(EXP, script), res, "--from-results"],
                         capture_output=True, text=True, check=True).stdout
    text = open(os.path.join(res, "table.md"), encoding="utf-8").read()
    assert out == text + "\n"
    readme = open(os.path.join(EXP, "README.md"), encoding="utf-8").read()
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            assert line in readme, line
    runs = [os.path.dirname(m) for m in glob.glob(os.path.join(res, "**", "metrics.json"), recursive=True)]
    assert len(runs) >= 2
    for run in runs:
        assert {"fig6_swap.jpg", "fig8_traversals.jpg"} <= set(os.listdir(os.path.join(run, "figures"))), run


def test_encdiff_screen_report_lists_every_cell_and_rebuilds_from_results(tmp_path):
    """encdiff_screen_report.py on fake cells (metrics.json only): one row per registered cell, unfinished ones
    named, per-factor columns, training minutes, code-use rows of the cells code_use.py was run on; --from-results
    on the copied folder gives the same table."""
    import json

    base = json.load(open(os.path.join(EXP, "results", "cpu_long_screening",
                                  "encdiff-shapes3d-cpu-smoke-seed0", "metrics.json")))
    for cell, fv in (("base", 0.65), ("attn16", 0.7)):
        run = tmp_path / "screen" / cell / "encdiff-shapes3d-cpu-smoke-seed0"
        os.makedirs(run)
        m = dict(base, factorvae=fv, dci_informativeness_per_factor={"floor_hue": 0.9, "shape": 0.4},
                 seconds={"train_call": 1500.0, "total_call": 1600.0, "train_all_calls": 1800.0})
        json.dump(m, open(run / "metrics.json", "w"))
        if cell == "attn16":
            _write_code_use(run, 0.5, 4.0, {"floor_hue": (1.25, 1.0)})
    script = os.path.join(EXP, "encdiff_screen_report.py")
    res = tmp_path / "res"
    out = subprocess.run([sys.executable, script, str(tmp_path / "screen"), "--results", str(res)],
                         capture_output=True, text=True, check=True).stdout
    assert "| cell | FactorVAE | DCI dis. | DCI inf. | floor_hue | shape | train min |" in out
    assert "| attn16 | 0.700 |" in out and "| 0.900 | 0.400 | 30.0 |" in out
    assert "| l1 | not finished |" in out and "| attn16-l1 | not finished |" in out
    assert "| cell | n | rel. gap (all t) | floor_hue | shape |" in out and "| base:" not in out
    assert "| attn16: resolution | 1 | 0.500 | 1.250 | – |" in out
    assert "| attn16: footprint | 1 |  | 0.250 | – |" in out
    again = subprocess.run([sys.executable, script, str(res), "--from-results"], capture_output=True, text=True,
                           check=True).stdout
    assert again == out == open(res / "table.md").read() + "\n"


def test_mcl_dose_report_pairs_each_weight_with_lambda_zero(tmp_path):
    """mcl_dose_report.py (cpu_long_report's table with the dose grid's arms) on fake runs: the three arms, the
    differences it was registered for with the u-decoder gap as a column, both MCL arms' diagnostics, unfinished runs
    named; --from-results gives the same table."""
    import json

    base = json.load(open(os.path.join(RESULTS, "mddiff-shapes3d-cpu-smoke-seed0", "metrics.json")))
    gaps = {"lam0": (0.04, 0.05, 0.06), "lam1e-3": (0.05, 0.06, 0.07), "lam1e-2": (0.10, 0.12, None)}
    for arm, vals in gaps.items():
        for seed, g in enumerate(vals):
            if g is None:
                continue
            run = tmp_path / "runs" / arm / f"mddiff-shapes3d-cpu-long-seed{seed}"
            os.makedirs(run)
            new = {"mcl_acc_generator_independent": 0.5} if (arm, seed) == ("lam1e-2", 0) else {}   # logged since
            json.dump(dict(base, preset="cpu-long", seed=seed, factorvae=0.6, **new,
                           mcl_weight=float(arm[3:]) if arm != "lam0" else 0.0), open(run / "metrics.json", "w"))
            _write_code_use(run, 0.8, 2.0, {"shape": (0.1, 0.2)}, decoder_gap=g)
            if arm != "lam1e-3" and seed < 2:      # mcl_probe.py's file: one probe's accuracy = 10 x the gap
                json.dump({"samples": {"steps": 300, "batch_size": 32, "eval_batches": 8},
                           "probes": {"x/own/independent": {"acc": 10 * g, "chance": 0.03125}}},
                          open(run / "mcl_probe.json", "w"))
    script = os.path.join(EXP, "mcl_dose_report.py")
    res = tmp_path / "res"
    out = subprocess.run([sys.executable, script, str(tmp_path / "runs"), "--results", str(res)],
                         capture_output=True, text=True, check=True).stdout
    assert "pre-registered grids experiments/disentanglement/mcl_dose.sh" in out and "mcl_pairing.sh (indep1e-2" in out
    assert "| lam0 | 3 |" in out and "| lam1e-2 | 2 |" in out
    rows = {}
    for line in out.splitlines():                   # the first table's difference rows (the probe's come later)
        if " − " in line:
            rows.setdefault(line.split(" | ")[0], line)
    assert set(rows) == {"| lam1e-3 − lam0", "| lam1e-2 − lam0", "| lam1e-2 − lam1e-3", "| indep1e-2 − lam1e-2",
                         "| indep1e-2 − lam0"}
    assert rows["| indep1e-2 − lam0"].split(" | ")[1] == "–"                # mcl_pairing.sh's arm: no runs here
    gap = lambda row: row.split(" | ")[-2]          # noqa: E731  (the u-decoder gap, before train min)
    assert gap(rows["| lam1e-3 − lam0"]).startswith("+0.010 [+0.010, +0.010]")
    assert rows["| lam1e-2 − lam0"].split(" | ")[1] == "0,1"                  # the seeds both arms finished
    assert gap(rows["| lam1e-2 − lam0"]) == "+0.065 [+0.060, +0.070]"
    assert "lambda_MCL = 1e-3's MCL diagnostics" in out and "lambda_MCL = 1e-2's MCL diagnostics" in out
    diag = {part.split("'s MCL diagnostics")[0]: part for part in out.split("lambda_MCL = ")[1:]}
    assert "| mcl_grad_ratio | mcl_acc_generator_independent |" in diag["1e-2"] and "| 0.5 |\n| 1 |" in diag["1e-2"]
    assert "mcl_acc_generator_independent" not in diag["1e-3"]          # a column only where a run logged it
    assert "Not finished: lam1e-2 seed 2, indep1e-2 seed 0, indep1e-2 seed 1, indep1e-2 seed 2." in out
    # the fresh-critic probe where mcl_probe.py wrote one (copied with --results): per arm, and paired by seed
    assert "| arm | n | x/own/independent |" in out and "chance 0.031." in out
    assert "| lam0 | 2 | 0.450 [0.400, 0.500] |" in out and "| lam1e-2 | 2 | 1.100 [1.000, 1.200] |" in out
    assert "| lam1e-2 − lam0 | 0,1 | +0.650 [+0.600, +0.700] |" in out and "| lam1e-3 − lam0 | 0,1 | –" not in out
    assert os.path.exists(res / "lam0" / "mddiff-shapes3d-cpu-long-seed1" / "mcl_probe.json")
    again = subprocess.run([sys.executable, script, str(res), "--from-results"], capture_output=True, text=True,
                           check=True).stdout
    assert again == out == open(res / "table.md").read() + "\n"


def test_a_measurement_taken_before_its_run_finished_is_refused_not_reused(tmp_path):
    """A measurement file (code_use.json, mcl_probe.json) records the phases its checkpoint had finished; a grid
    script skips runs whose file exists, so one taken mid-training (here before stage 2 finished) would be reused
    silently. Where the run's checkpoint has finished more since, the report names the file, exit 2; a file whose
    phases match, or a copied run without a checkpoint, is read."""
    import json

    import torch

    sys.path.insert(0, EXP)
    try:
        from _runs import read_json
    finally:
        sys.path.remove(EXP)
    base = json.load(open(os.path.join(RESULTS, "mddiff-shapes3d-cpu-smoke-seed0", "metrics.json")))
    run = tmp_path / "runs" / "lam0" / "mddiff-shapes3d-cpu-long-seed0"
    os.makedirs(run)
    json.dump(dict(base, preset="cpu-long", seed=0, mcl_weight=0.0), open(run / "metrics.json", "w"))
    _write_code_use(run, 0.8, 2.0, {"shape": (0.1, 0.2)}, decoder_gap=0.05)
    use = json.load(open(run / "code_use.json"))
    assert read_json(str(run), "code_use.json") == use                  # no checkpoint (a copied run): read
    torch.save({"done": ["first_stage", "stage1", "stage2"]}, run / "checkpoint.pt")
    json.dump(dict(use, phases=["first_stage", "stage1", "stage2"]), open(run / "code_use.json", "w"))
    assert read_json(str(run), "code_use.json")["decoder"]["rel_gap"] == 0.05
    json.dump(dict(use, phases=["first_stage", "stage1"]), open(run / "code_use.json", "w"))
    with pytest.raises(ValueError, match="since finished"):
        read_json(str(run), "code_use.json")
    out = subprocess.run([sys.executable, os.path.join(EXP, "mcl_dose_report.py"), str(tmp_path / "runs")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr.count("\n") == 1 and "code_use.json: measured after phases ['first_stage', 'stage1']" in \
        out.stderr and "delete it" in out.stderr


def test_code_use_resolution_is_none_where_random_pairs_give_nothing_to_compare():
    """An untrained run's constant code gives random pairs no gap: code_use.py writes no ratio (None), not a
    ZeroDivisionError, and the table averages the runs that have one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("code_use", os.path.join(EXP, "code_use.py"))
    use = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(use)
    assert use._ratio(1.0, 0.0) is None and use._ratio(None, 2.0) is None and use._ratio(1.0, 4.0) == 0.25
    sys.path.insert(0, EXP)
    try:
        from _runs import code_use_table
    finally:
        sys.path.remove(EXP)
    runs = [{"denoiser": {"all": {"rel_gap": r}}, "random": {"footprint": 2.0},
             "factors": {"shape": {"resolution": res, "footprint": 1.0}}} for r, res in ((0.8, 0.5), (0.0, None))]
    lines = code_use_table({"mddiff": runs}, ["shape"])
    assert "| mddiff: resolution | 2 | 0.400 | 0.500 |" in lines
