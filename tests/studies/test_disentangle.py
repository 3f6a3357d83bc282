"""The disentanglement study (mclcore.studies.disentangle): smoke steps of every model, determinism, resume after
a stop equals an uninterrupted run, evaluation end to end, config overrides and the MCL section, the CLI, the
tables."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mclcore._io import load_checkpoint
from mclcore.studies.disentangle import report
from mclcore.studies.disentangle import run as study
from mclcore.studies.disentangle.config import MODELS, RunConfig, build_config, validate
from mclcore.studies.disentangle.evaluate import evaluate
from mclcore.studies.disentangle.fid import frechet_distance
from mclcore.train.config import apply_overrides, from_dict, to_dict

TINY = [
    "log_every=1", "ckpt_every=2",
    "first_stage.ch=8", "first_stage.ch_mult=1,2,2", "first_stage.num_res_blocks=1", "first_stage.n_embed=64",
    "first_stage.u_channels=4", "first_stage.steps=2", "first_stage.batch_size=4",
    "diffusion.encoder_hidden=8", "diffusion.encoder_fc=16", "diffusion.unet_channels=8", "diffusion.unet_mult=1,2",
    "diffusion.heads=2", "diffusion.timesteps=100",
    "stages.batch_size=4", "stages.stage1_steps=3", "stages.stage2_steps=3", "stages.warmup1=2", "stages.warmup2=2",
    "mcl.critic_hidden=16", "mcl.proj_dim=8",
    "vae.hidden=8", "vae.fc=16", "vae.disc_width=16", "vae.disc_depth=2", "vae.steps=4", "vae.batch_size=4",
    "eval.sample_scale=0.001", "eval.fid_samples=40", "eval.recon_samples=8", "eval.featnet_steps=3",
    "eval.ddim_steps=2",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)


def tiny(model, seed=0, extra=()):
    # MPI3D's procedural twin renders without a warm-up (the Shapes3D twin ray-casts its geometry once, ~5-40 s)
    cfg = build_config(model, "mpi3d", "cpu-smoke", seed)
    return apply_overrides(cfg, [*TINY, *extra])


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_deterministically(model, tmp_path):
    a, done_a = study.train(tiny(model), str(tmp_path / "a"), progress=False, log=False)
    b, done_b = study.train(tiny(model), str(tmp_path / "b"), progress=False, log=False)
    assert done_a and done_b and states_equal(a, b)
    c, _ = study.train(tiny(model, seed=1), str(tmp_path / "c"), progress=False, log=False)
    assert not states_equal(a, c)
    ck = load_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))
    assert ck["done"] == [p for p, _ in study.phases(tiny(model))]
    assert from_dict(RunConfig, ck["config"]) == tiny(model)


@pytest.mark.parametrize("model", ["mddiff", "factorvae"])
def test_resume_equals_continuous_training(model, tmp_path):
    full, _ = study.train(tiny(model), str(tmp_path / "full"), progress=False, log=False)
    run = str(tmp_path / "cut")
    # stop inside a phase (mddiff: after first_stage + 1 step of stage1; factorvae: after 3 of 4 steps) ...
    _, done = study.train(tiny(model), run, stop_after=3, progress=False, log=False)
    assert not done
    ck = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert ck["phase"] == ("stage1" if model == "mddiff" else "vae") and ck["step"] > 0
    if model == "mddiff":                              # ... and once more, inside stage 2 (MCL)
        _, done = study.train(tiny(model), run, stop_after=4, progress=False, log=False)
        assert not done and load_checkpoint(os.path.join(run, "checkpoint.pt"))["phase"] == "stage2"
    # a kill during a save leaves only a temporary file beside the checkpoint (mclcore._io's naming)
    with open(os.path.join(run, ".checkpoint.tmp999999.pt"), "wb") as f:
        f.write(b"partial")
    resumed, done = study.train(tiny(model), run, progress=False, log=False)
    assert done and states_equal(full, resumed)


def test_resume_keeps_the_saved_config(tmp_path, capsys):
    study.train(tiny("betavae"), str(tmp_path), stop_after=1, progress=False, log=False)
    other = tiny("betavae", extra=["vae.lr=0.5"])
    model, done = study.train(other, str(tmp_path), progress=False, log=False)
    assert done
    assert "vae.lr" in capsys.readouterr().err
    assert json.load(open(tmp_path / "config.json"))["vae"]["lr"] == tiny("betavae").vae.lr


def test_stage_learning_rates_follow_the_batch_scaling_rule():
    cfg = build_config("mddiff", "mpi3d", "paper")
    assert cfg.stages.lambda_mcl == 1e-4 and build_config("mddiff", "cars3d", "paper").stages.lambda_mcl == 1e-3
    assert cfg.stages.stage1_steps == 10 * 1036800 // 128
    params = [torch.nn.Parameter(torch.zeros(2))]
    opts, scheds = study.optimizers(None, cfg, "stage1", params)
    assert isinstance(opts[0], torch.optim.AdamW)
    assert opts[0].param_groups[0]["lr"] == pytest.approx(2e-6 * 128 / cfg.stages.warmup1)   # warm-up step 0
    for _ in range(cfg.stages.warmup1):
        opts[0].step()
        scheds[0].step()
    assert opts[0].param_groups[0]["lr"] == pytest.approx(2e-6 * 128)
    opts, _ = study.optimizers(None, cfg, "stage2", params)
    assert opts[0].param_groups[0]["lr"] == pytest.approx(2e-7 * 128 / cfg.stages.warmup2)


def test_evaluate_writes_metrics_and_figures(tmp_path, monkeypatch):
    import matplotlib.axes

    scales, imshow = [], matplotlib.axes.Axes.imshow

    def record(self, X, *args, **kw):
        if kw.get("cmap") == "magma":
            scales.append((kw.get("vmin"), kw.get("vmax")))
        return imshow(self, X, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", record)
    cfg = tiny("mddiff")
    model, _ = study.train(cfg, str(tmp_path / "run"), progress=False, log=False)
    # write=True: evaluate writes metrics.json itself (mcl train leaves that to run_seeds, after its timings)
    res = evaluate(model, cfg, str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False, write=True)
    for key in ("factorvae", "dci", "fid_standin", "lpips_proxy"):
        assert np.isfinite(res[key])
    assert 0 <= res["factorvae"] <= 1 and 0 <= res["dci"] <= 1 and res["fid_standin"] >= 0
    # no weight files configured: the stand-ins, labelled, and never under the real metrics' keys
    assert res["fid_label"] == "FID stand-in (dataset-trained net)" and res["fid_kind"] == "standin"
    assert res["lpips_kind"] == "standin" and "fid" not in res and "lpips" not in res
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    assert saved["dci"] == res["dci"]
    # per-factor informativeness, keyed by the varying factors' names; its mean is the informativeness
    per = saved["dci_informativeness_per_factor"]
    assert list(per) == list(study.load_dataset(cfg).factor_names) and all(0 <= v <= 1 for v in per.values())
    assert np.mean(list(per.values())) == pytest.approx(saved["dci_informativeness"], abs=1e-12)
    for name in ("swap", "traversal", "attention"):
        assert os.path.getsize(res["figures"][name]) > 1000
    assert len(scales) > 1 and len(set(scales)) == 1 and scales[0][1] is not None   # one colour scale for all maps
    assert any(f.startswith("featnet-mpi3d-twin") for f in os.listdir(tmp_path / "cache"))
    # the last MCL measurement of training (stage-2 step 0 at the default mcl.diagnose_every = 50)
    assert saved["mcl_step"] == 0 and 0 <= saved["mcl_acc_generator"] <= 1 and saved["mcl_weight"] == 1e-4


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # N(0, I) vs N(m, I): |m|^2
    assert frechet_distance(a, rng.normal(size=(4000, 3)) + [1.0, 2.0, 0.0]) == pytest.approx(5.0, abs=0.15)


def test_overrides_and_errors():
    cfg = apply_overrides(build_config("encdiff", "cars3d", "cpu-smoke"),
                          ["stages.lambda_mcl=2e-4", "diffusion.unet_mult=1,2,4", "amp=false", "data.data_path=none"])
    assert cfg.stages.lambda_mcl == 2e-4 and cfg.diffusion.unet_mult == (1, 2, 4) and cfg.amp is False
    assert cfg.data.pool > 0                                   # slow renderer: a pre-rendered pool
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(cfg, ["stages.lr=1"])
    with pytest.raises(ValueError, match="unknown config key"):   # the MCL options moved to the mcl section
        apply_overrides(cfg, ["stages.mcl_tau=0.07"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(cfg, ["stages.batch_size"])
    with pytest.raises(ValueError, match="--dataset"):
        build_config("mddiff", "celeba", "paper")
    with pytest.raises(ValueError, match="--preset"):
        build_config("mddiff", "mpi3d", "gpu")


def test_cli_registers_train_with_model_choices(tmp_path):
    from mclcore.cli import build_parser, main

    args = build_parser().parse_args(["train", "btcvae", "--dataset", "mpi3d", "--seeds", "1", "2"])
    assert args.model == "btcvae" and args.seeds == [1, 2] and args.preset == "cpu-smoke"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "gan"])
    rc = main(["train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path), "--quiet", "--no-eval", "--threads", "1",
               *sum((["--set", s] for s in TINY), [])])
    assert rc == 0 and os.path.exists(tmp_path / "betavae-mpi3d-cpu-smoke-seed0" / "checkpoint.pt")
    # --eval-only evaluates the finished run and writes metrics.json (the path a plain call ends with)
    tiny_set = sum((["--set", s] for s in TINY), [])
    rc = main(["train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path), "--quiet", "--eval-only",
               "--threads", "1", *tiny_set])
    metrics = json.load(open(tmp_path / "betavae-mpi3d-cpu-smoke-seed0" / "metrics.json"))
    assert rc == 0 and 0 <= metrics["factorvae"] <= 1 and metrics["seconds"]["total_call"] > 0
    # the training seconds of the call that trained it (kept in the checkpoint), not this evaluation call's
    assert 0 < metrics["seconds"]["train_all_calls"] != metrics["seconds"]["train_call"]
    # an eval.* field set in an --eval-only call re-scores the run at that protocol (the checkpoint keeps its own)
    rc = main(["train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path), "--quiet", "--eval-only",
               "--threads", "1", *tiny_set, "--set", "eval.sample_scale=0.002"])
    rescored = json.load(open(tmp_path / "betavae-mpi3d-cpu-smoke-seed0" / "metrics.json"))
    assert rc == 0 and (metrics["sample_scale"], rescored["sample_scale"]) == (0.001, 0.002)
    ck = load_checkpoint(str(tmp_path / "betavae-mpi3d-cpu-smoke-seed0" / "checkpoint.pt"))
    assert ck["config"]["eval"]["sample_scale"] == 0.001
    # a finished, evaluated run is skipped by a plain call
    assert main(["train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path), "--quiet", *tiny_set]) == 0


def test_cli_user_mistakes_are_one_line_and_exit_code_2(tmp_path, capsys):
    from mclcore.cli import main

    base = ["train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path), "--quiet"]
    for extra, what in ((["--data-path", str(tmp_path / "missing.h5")], "--data-path"),
                        (["--set", "stages.lr=1"], "--set"), (["--set", "vae.steps"], "KEY=VALUE"),
                        (["--set", "mcl.tau=-1"], "mcl.tau"), (["--set", "stages.mcl_z=noisy"], "stages.mcl_z"),
                        (["--set", "stages.mcl_pairing=shuffled"], "stages.mcl_pairing"),
                        (["--fid-weights", str(tmp_path / "none.pt")], "--fid-weights"),
                        (["--set", "stages.lambda_mcl=-1"], "stages.lambda_mcl"),
                        (["--set", "stages.base_lr1=nan"], "stages.base_lr1"), (["--set", "vae.steps=-3"], "vae.steps"),
                        (["--set", "eval.dci_model=xgb"], "eval.dci_model")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert what in err and len(err.splitlines()) == 1, err
    assert os.listdir(tmp_path) == []                          # nothing trained, nothing written


def test_a_rerun_with_another_config_is_refused_not_silently_reused(tmp_path, capsys):
    # the run folder is named by model, dataset, preset and seed: a λ sweep into one --out once reused the first run
    from mclcore.cli import main

    base = ["train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path), "--quiet", "--no-eval",
            *sum((["--set", s] for s in TINY), [])]
    assert main(base) == 0
    run = tmp_path / "betavae-mpi3d-cpu-smoke-seed0"
    mtime = os.path.getmtime(run / "checkpoint.pt")
    assert main([*base, "--set", "vae.beta=2"]) == 2
    err = capsys.readouterr().err
    assert "vae.beta: saved 4.0 vs given 2.0" in err and len(err.strip().splitlines()) == 1
    assert os.path.getmtime(run / "checkpoint.pt") == mtime                # nothing was trained or written
    assert main([*base, "--set", "vae.beta=2", "--no-resume"]) == 0        # retrains with the given config
    assert json.load(open(run / "config.json"))["vae"]["beta"] == 2.0
    (run / "config.json").write_text("{ truncated")
    assert main([*base, "--set", "vae.beta=2"]) == 2
    assert "config.json: not a readable run config" in capsys.readouterr().err


def test_mcl_options_reach_the_model():
    cfg = apply_overrides(tiny("mddiff"), ["mcl.tau=0.07", "mcl.clip=5", "mcl.create_graph=false"])
    torch.manual_seed(0)
    model = study.build_model(cfg)
    assert model.mcl.tau == 0.07 and model.mcl.clip == 5.0 and model.mcl.create_graph is False
    assert model.mcl.critic.__class__.__name__ == "ImageCritic" and model.mcl.Pi_g.net[-1].out_features == 8
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg)))).mcl == cfg.mcl          # config.json round trip
    # the study's MCL defaults are today's: image critic of width 256, tau 0.1, clip 10, through the gradient
    paper = build_config("mddiff", "shapes3d", "paper").mcl
    assert (paper.critic, paper.critic_hidden, paper.tau, paper.clip, paper.create_graph, paper.proj_dim,
            paper.multi_positive) == ("image", (256,), 0.1, 10.0, True, 128, False)
    smoke = build_config("mddiff", "shapes3d", "cpu-smoke").mcl
    assert smoke.critic_hidden == (64,) and smoke.proj_dim == 64 and smoke.critic == "image"


def test_report_builds_the_tables_without_training_code(tmp_path):
    for i, (model, fv) in enumerate([("mddiff", 0.5), ("mddiff", 0.7), ("betavae", 0.6)]):
        os.makedirs(tmp_path / f"r{i}")
        json.dump({"model": model, "dataset": "shapes3d", "preset": "cpu-smoke", "factorvae": fv, "dci": 0.1,
                   "fid": 10.0, "lpips_proxy": 0.5, "fid_label": "FID (x)", "lpips_label": "L (y)"},
                  open(tmp_path / f"r{i}" / "metrics.json", "w"))
    runs = report.load(str(tmp_path), "cpu-smoke")
    t1 = report.table1(runs)
    assert "| Diffusion | MDDiff | ours | – | – | 0.600 ± 0.141 (n=2) |" in t1
    assert "| Diffusion | MDDiff | paper | 0.985 ± 0.048 |" in t1
    assert "ours: FID = FID (x), LPIPS column = L (y)." in report.table6(runs)
    assert report.load(str(tmp_path), "paper") == {}
    assert report.table_seconds(runs).count("\n") == 1                  # no run has seconds: header only
    runs[("betavae", "mpi3d")] = [{"seconds": {"total_call": 100.0}}, {"seconds": {"total_call": 140.0}}]
    assert "| β-VAE | – | – | 120 ± 28 (n=2) |" in report.table_seconds(runs)
    code = ("import sys, mclcore.studies.disentangle.report as r; "
            "bad = [m for m in ('mclcore.train.loop', 'mclcore.studies.disentangle.run', 'mclcore.models.encdiff') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _diagnostics(run, text=False):
    with open(os.path.join(run, "mcl_diagnostics.json")) as f:
        return f.read() if text else json.load(f)


def test_mcl_diagnostics_are_logged_and_change_nothing(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mclcore.cli import main
    from mclcore.losses.monitor import RECORD_KEYS

    run = str(tmp_path / "diag")
    diag, _ = study.train(tiny("mddiff", extra=["mcl.diagnose_every=1"]), run, progress=False, log=True)
    off, _ = study.train(tiny("mddiff", extra=["mcl.diagnose_every=0"]), str(tmp_path / "off"), progress=False,
                         log=False)
    assert states_equal(diag, off)                                  # diagnosing never changes the training
    assert _diagnostics(str(tmp_path / "off")) == []
    records = _diagnostics(run)
    assert [r["step"] for r in records] == [0, 1, 2] and all(tuple(r) == RECORD_KEYS for r in records)
    for r in records:
        assert r["weight"] == 1e-4 and r["chance"] == 0.25 and r["grad_ratio"] > 0      # 4 distinct codes s
        assert all(0 <= r[k] <= 1 for k in ("acc", "acc_generator", "acc_direct", "acc_generator_independent"))
    ea = EventAccumulator(os.path.join(run, "tb"))
    ea.Reload()
    assert {"stage2/mcl/acc_generator", "stage2/mcl/grad_ratio", "stage2/mcl/shortcut_share"} <= \
        set(ea.Tags()["scalars"])
    capsys.readouterr()
    assert main(["inspect-mcl", run]) == 0
    out = capsys.readouterr().out
    assert "(3 measurements" in out and "acc_gen" in out and "shortcut" in out and len(out.splitlines()) >= 5


def test_relative_mcl_weighting_resumes_equal_to_uninterrupted(tmp_path):
    extra = ["mcl.weighting=relative", "mcl.diagnose_every=2", "stages.lambda_mcl=0.5"]
    full, _ = study.train(tiny("mddiff", extra=extra), str(tmp_path / "full"), progress=False, log=False)
    records = _diagnostics(str(tmp_path / "full"))
    text = _diagnostics(str(tmp_path / "full"), text=True)
    assert [r["step"] for r in records] == [0, 2]
    assert all(r["grad_ratio"] == pytest.approx(0.5) for r in records)     # |grad w L_MCL| = 0.5 |grad host|
    assert records[0]["weight"] != records[1]["weight"] and records[0]["weight"] > 0.5
    absolute, _ = study.train(tiny("mddiff", extra=extra[1:]), str(tmp_path / "abs"), progress=False, log=False)
    assert not states_equal(full, absolute)
    run = str(tmp_path / "cut")
    # stop after stage 2's first step (the weight measured there must come back from the checkpoint)
    _, done = study.train(tiny("mddiff", extra=extra), run, stop_after=6, progress=False, log=False)
    ck = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert not done and (ck["phase"], ck["step"]) == ("stage2", 1) and len(ck["extra"]["mcl"]["records"]) == 1
    resumed, done = study.train(tiny("mddiff", extra=extra), run, progress=False, log=False)
    assert done and states_equal(full, resumed) and _diagnostics(run, text=True) == text
    with pytest.raises(ValueError, match="stages.lambda_recon"):          # relative to L_recon's gradient
        validate(tiny("mddiff", extra=[*extra, "stages.lambda_recon=0"]))
    with pytest.raises(ValueError, match="mcl.create_graph"):               # no gradient on the decoder to weigh
        validate(tiny("mddiff", extra=[*extra, "mcl.create_graph=false"]))


def test_cpu_long_preset_is_cpu_smoke_with_long_schedules(tmp_path, capsys):
    from mclcore.cli import main

    smoke, long = build_config("mddiff", "shapes3d", "cpu-smoke"), build_config("mddiff", "shapes3d", "cpu-long")
    assert (long.first_stage.steps, long.stages.stage1_steps, long.stages.stage2_steps, long.vae.steps) == \
        (1000, 7000, 500, 8000)
    assert long.eval.sample_scale == 0.1 and long.stages.warmup1 == 200 and long.preset == "cpu-long"
    # every network size, learning rate and the MCL section are cpu-smoke's
    for section in ("diffusion", "mcl", "disdiff"):
        assert to_dict(getattr(long, section)) == to_dict(getattr(smoke, section)), section
    assert (long.first_stage.ch, long.stages.base_lr1, long.vae.hidden) == (smoke.first_stage.ch, 3e-5, 32)
    assert build_config("encdiff", "cars3d", "cpu-long").data.pool == 2048
    args = ["train", "betavae", "--dataset", "mpi3d", "--preset", "cpu-long", "--out", str(tmp_path), "--quiet",
            "--no-eval", "--threads", "1", *sum((["--set", s] for s in TINY), [])]
    assert main(args) == 0 and os.path.exists(tmp_path / "betavae-mpi3d-cpu-long-seed0" / "checkpoint.pt")
    assert main(["train", "worldmodel", "--preset", "cpu-long", "--out", str(tmp_path / "wm"), "--quiet"]) == 2
    assert "--preset" in capsys.readouterr().err


def test_a_fork_equals_a_fresh_run_of_its_config(tmp_path, capsys):
    # --fork-from trains the phases two arms share once: the forked run must equal the arm trained on its own
    from mclcore.cli import main

    base = ["train", "mddiff", "--dataset", "mpi3d", "--quiet", "--no-eval", "--threads", "1",
            *sum((["--set", s] for s in TINY), [])]
    arm = ["--set", "stages.lambda_mcl=0", "--set", "mcl.tau=0.2"]
    name = "mddiff-mpi3d-cpu-smoke-seed0"
    a, b, c = (str(tmp_path / k) for k in "abc")
    assert main([*base, "--out", a, "--stop-before", "stage2"]) == 0    # first_stage 2 + stage1 3 steps
    ck = load_checkpoint(os.path.join(a, name, "checkpoint.pt"))
    assert (ck["phase"], ck["step"], ck["done"]) == ("stage2", 0, ["first_stage", "stage1"])
    assert main([*base, "--out", a, "--stop-before", "stage2"]) == 0    # idempotent: a rerun stops there again
    again = load_checkpoint(os.path.join(a, name, "checkpoint.pt"))
    assert (again["phase"], again["step"]) == ("stage2", 0)
    assert all(torch.equal(again["model"][k], ck["model"][k]) for k in ck["model"])
    stopped = str(tmp_path / "stopped")                                 # --stop-after 5 stops at the same point
    assert main([*base, "--out", stopped, "--stop-after", "5"]) == 0
    assert load_checkpoint(os.path.join(stopped, name, "checkpoint.pt"))["phase"] == "stage2"
    assert main([*base, *arm, "--out", c, "--fork-from", a]) == 0
    assert "forked from" in capsys.readouterr().err
    assert main([*base, *arm, "--out", b]) == 0                          # the same arm, trained alone
    forked, alone = (load_checkpoint(os.path.join(r, name, "checkpoint.pt")) for r in (c, b))
    assert forked["done"] == ["first_stage", "stage1", "stage2"]
    assert forked["model"].keys() == alone["model"].keys()
    assert all(torch.equal(forked["model"][k], alone["model"][k]) for k in alone["model"])
    assert forked["config"] == alone["config"]
    rec = json.load(open(os.path.join(c, name, "fork.json")))
    assert rec["parts_at"] == "stage2" and rec["step"] == 0
    assert sorted(d.split(":")[0] for d in rec["differs"]) == ["mcl.tau", "stages.lambda_mcl"]
    assert os.listdir(os.path.join(c, name, "tb"))                      # the shared phases' curves came along
    # the source goes on with its own config, and its stage 2 differs from the forked arm's (the test can fail)
    assert main([*base, "--out", a]) == 0
    src = load_checkpoint(os.path.join(a, name, "checkpoint.pt"))
    assert src["config"]["stages"]["lambda_mcl"] != 0
    assert not all(torch.equal(src["model"][k], alone["model"][k]) for k in alone["model"])
    # the same config is a copy, wherever the source stands (a grid's arm with the shared run's values)
    assert main([*base, *arm, "--out", str(tmp_path / "copy"), "--fork-from", c]) == 0
    copy = load_checkpoint(os.path.join(str(tmp_path / "copy"), name, "checkpoint.pt"))
    assert all(torch.equal(copy["model"][k], alone["model"][k]) for k in alone["model"])
    assert json.load(open(os.path.join(str(tmp_path / "copy"), name, "fork.json")))["parts_at"] is None
    capsys.readouterr()
    # refused, one line each, nothing written: a source past the parting phase, a field an earlier phase reads,
    # a missing folder, a combination that cannot fork
    for extra, what in (([*arm, "--fork-from", a], "--stop-before stage2 (or --stop-after 5"),
                        (["--set", "stages.stage1_steps=4", "--fork-from", c], "stages.stage1_steps"),
                        (["--set", "mcl.critic_hidden=8", "--fork-from", c], "mcl.critic_hidden"),
                        ([*arm, "--fork-from", str(tmp_path / "none")], "no such folder"),
                        ([*arm, "--fork-from", c, "--no-resume"], "--no-resume")):
        out = str(tmp_path / "refused")
        assert main([*base, *extra, "--out", out]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert what in err and "--fork-from" in err and len(err.splitlines()) == 1, err
        assert not os.path.exists(out)
