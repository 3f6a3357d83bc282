"""World-model study (mclcore.studies.worldmodel): smoke training of every variant, determinism, resume equals an
uninterrupted run, evaluation files and Table 2 layout, the report, the config tree and presets, the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mclcore._io import load_checkpoint, write_json_atomic
from mclcore.studies.worldmodel import cli as wm_cli
from mclcore.studies.worldmodel import report as wm_report
from mclcore.studies.worldmodel.config import PHASES, PRESETS, RunConfig, build_config, run_dir_name
from mclcore.studies.worldmodel.data import DataError, load_splits
from mclcore.studies.worldmodel.evaluate import evaluate
from mclcore.studies.worldmodel.run import build_model, train
from mclcore.train.config import apply_overrides, from_dict, to_dict

TINY = [
    "log_every=1", "ckpt_every=2", "data.source=random", "data.n_source=6", "data.n_target=3", "data.n_eval=3",
    "data.episode_len=4", "autoencoder.ch=4", "autoencoder.steps=3", "autoencoder.batch_size=4",
    "model.dim=16", "model.depth=1", "model.heads=2", "model.patch=4", "model.latent_action_dim=3",
    "model.idm_ch=4", "model.idm_hidden=8", "dynamics.steps=4", "dynamics.batch_size=4", "dynamics.warmup=2",
    "mcl.critic_hidden=8,8", "mcl.proj_dim=8", "dynamics.lambda_mcl=0.5",
    "eval.horizon=3", "eval.sample_steps=2", "eval.batch_size=2", "eval.figure_frames=3",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)


def tiny(variant="acg", mcl=False, seed=0, extra=()):
    return apply_overrides(build_config(variant, mcl, "cpu-smoke", seed), [*TINY, *extra])


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def finish(res, out):
    """What mclcore.train.loop.run_seeds does after evaluate: write metrics.json (evaluate itself does not)."""
    write_json_atomic(res, os.path.join(out, "metrics.json"), indent=1, sort_keys=False)


@pytest.mark.parametrize("variant,mcl", [("acg", False), ("acg", True), ("lacg", False), ("lacg", True)])
def test_every_variant_trains_deterministically(variant, mcl, tmp_path):
    a, done_a = train(tiny(variant, mcl), str(tmp_path / "a"), progress=False, log=False)
    b, done_b = train(tiny(variant, mcl), str(tmp_path / "b"), progress=False, log=False)
    assert done_a and done_b and states_equal(a, b)
    c, _ = train(tiny(variant, mcl, seed=1), str(tmp_path / "c"), progress=False, log=False)
    assert not states_equal(a, c)
    ck = load_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))
    assert ck["done"] == list(PHASES) and from_dict(RunConfig, ck["config"]) == tiny(variant, mcl)
    assert (a.mcl is not None) == mcl and hasattr(a, "idm") == (variant == "lacg")


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
    cfg = tiny("lacg", True)
    full, _ = train(cfg, str(tmp_path / "full"), progress=False, log=False)
    for k in (2, 2, 2):        # 3 + 4 steps: stops inside stage 1, across the phase boundary, inside stage 2
        part, finished = train(cfg, str(tmp_path / "part"), stop_after=k, progress=False, log=False)
        assert not finished
    part, finished = train(cfg, str(tmp_path / "part"), progress=False, log=False)
    assert finished and states_equal(full, part)


def test_autoencoder_is_frozen_in_stage_two(tmp_path):
    cfg = tiny("acg", True)
    after_ae, _ = train(apply_overrides(tiny("acg", True), ["dynamics.steps=0"]), str(tmp_path / "a"),
                        progress=False, log=False)
    full, _ = train(cfg, str(tmp_path / "b"), progress=False, log=False)
    for k, v in after_ae.ae.state_dict().items():
        assert torch.equal(v, full.ae.state_dict()[k]), k
    assert not torch.equal(after_ae.fdm.out.weight, full.fdm.out.weight)


def test_evaluation_writes_metrics_table_figure_and_report(tmp_path):
    dirs = []
    for mcl in (False, True):
        cfg = tiny("acg", mcl)
        out = str(tmp_path / run_dir_name(cfg))
        model, _ = train(cfg, out, progress=False, log=True)
        res = evaluate(model, cfg, out)
        assert not os.path.exists(os.path.join(out, "metrics.json"))   # run_seeds writes it, after the summary
        finish(res, out)
        dirs.append(out)
        for split in ("target", "transfer"):
            assert set(wm_report.METRIC_KEYS) <= set(res[split]) and res[split]["episodes"] == 3
            assert -1 <= res[split]["ssim"] <= 1 and res[split]["mse"] > 0
        assert os.path.getsize(os.path.join(out, "figures", "rollout.png")) > 1000
        assert os.path.exists(os.path.join(out, "rollouts.npz"))
        assert os.listdir(os.path.join(out, "tb"))
        with open(os.path.join(out, "metrics.json")) as f:
            saved = json.load(f)
        assert saved["method"] == ("ACG+MCL" if mcl else "ACG")
        # --mcl: the last MCL measurement of training (dynamics step 0 at the default mcl.diagnose_every = 50)
        assert (saved.get("mcl_step"), os.path.exists(os.path.join(out, "mcl_diagnostics.json"))) == \
            ((0, True) if mcl else (None, False))
    table = open(os.path.join(dirs[1], "table.md")).read()
    assert "Wan-ACG+MCL (paper) | 0.765 | 18.73 | 0.0134 | 0.737 | 0.765 | 18.58 | 0.0138 | 0.739 |" in table
    assert f"{res['target']['ssim']:.3f}" in table
    rep = wm_report.report(dirs, str(tmp_path / "report"))
    assert os.path.exists(rep["table"]) and os.path.getsize(rep["ACG"]) > 1000
    assert open(rep["table"]).read().count("(paper)") == 2
    # the command line of the report (python -m mclcore.studies.worldmodel.report RUN_DIR... --out DIR)
    assert wm_report.main([*dirs, "--out", str(tmp_path / "report2")]) == 0
    assert open(tmp_path / "report2" / "table.md").read() == open(rep["table"]).read()
    assert wm_report.main([str(tmp_path / "nothing-here"), "--out", str(tmp_path / "report3")]) == 2


def test_report_imports_no_training_code():
    code = ("import sys, mclcore.studies.worldmodel.report; "
            "bad = [m for m in sys.modules if m.startswith(('mclcore.train', 'mclcore.studies.worldmodel.run', "
            "'mclcore.studies.worldmodel.evaluate', 'mclcore.studies.worldmodel.data', 'mclcore.models'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lacg_reports_both_test_time_latent_action_sources(tmp_path):
    cfg = tiny("lacg", False)
    out = str(tmp_path / "run")
    model, _ = train(cfg, out, progress=False, log=False)
    res = evaluate(model, cfg, out)
    assert {"target", "target_regressor", "transfer", "transfer_regressor", "target_shuffled_actions"} <= set(res)
    assert res["target_shuffled_actions"] != res["target"]
    for split in ("target", "transfer"):        # the latent-action probe: R^2 per action dimension and the KL
        p = res["latent_action_probe"][split]
        assert len(p["r2_per_dim"]) == 4 and p["n_eval"] > 0 and len(p["kl_per_dim"]) == cfg.model.latent_action_dim
        assert p["r2"] <= 1.0 and p["kl_total"] >= 0
    json.dumps(res["latent_action_probe"])      # goes into metrics.json


def test_overrides_and_presets():
    cfg = apply_overrides(build_config("lacg", True, "gpu"), ["dynamics.lambda_mcl=0.2", "model.backbone=wan"])
    assert cfg.dynamics.lambda_mcl == 0.2 and cfg.model.backbone == "wan"
    smoke = build_config("acg", False, "cpu-smoke")
    assert smoke.model.dim < cfg.model.dim and smoke.dynamics.steps < cfg.dynamics.steps
    with pytest.raises(ValueError, match="--preset"):
        build_config("acg", False, "paper")
    with pytest.raises(ValueError, match="--variant"):
        build_config("vla", False, "gpu")
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(cfg, ["dynamics.lambda=1"])
    with pytest.raises(ValueError, match="unknown config key"):      # the MCL options moved to the mcl section
        apply_overrides(cfg, ["dynamics.mcl_tau=0.07"])
    with pytest.raises(DataError, match="data.source"):
        load_splits(apply_overrides(tiny(), ["data.source=robotwin"]), "/tmp")
    with pytest.raises(ValueError, match="model.backbone"):
        build_model(apply_overrides(tiny(), ["model.backbone=unet"]))
    with pytest.raises(ValueError, match="model.backbone"):
        apply_overrides(tiny(), ["model.backbone=unet"]).validate()
    with pytest.raises(ValueError, match="mcl.tau"):
        apply_overrides(tiny(mcl=True), ["mcl.tau=0"]).validate()


def test_presets_reproduce_the_study_defaults():
    """The MCL section: the paper's critic and heads on gpu, smaller on cpu-smoke; the preset tables are dicts
    merged onto the defaults and survive the config.json round trip."""
    gpu, smoke = build_config("acg", True, "gpu"), build_config("lacg", True, "cpu-smoke", seed=3)
    m = gpu.mcl
    assert (m.critic, m.critic_hidden, m.proj_dim, m.tau, m.clip, m.create_graph, m.multi_positive) == \
        ("mlp", (256, 256), 128, 0.1, 10.0, True, False)
    assert (smoke.mcl.critic_hidden, smoke.mcl.proj_dim, smoke.mcl.tau) == ((64, 64), 32, 0.1)
    assert gpu.eval.success_probe_steps == 3000 and smoke.eval.success_probe_steps == 0
    assert (smoke.preset, smoke.seed, smoke.use_mcl, smoke.autoencoder.steps, smoke.dynamics.steps) == \
        ("cpu-smoke", 3, True, 500, 1000)
    assert set(PRESETS) == {"gpu", "cpu-smoke", "cpu"} and all(isinstance(p, dict) for p in PRESETS.values())
    for cfg in (gpu, smoke):
        assert from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert run_dir_name(smoke) == "worldmodel-lacg-mcl-cpu-smoke-seed3"


def test_mcl_override_reaches_the_model(tmp_path):
    """``--set mcl.tau=0.07`` (and the head sizes) of an ``--mcl`` command line reach the trained model's MCL."""
    from mclcore.cli import build_parser

    args = build_parser().parse_args(["train", "worldmodel", "--mcl", *sum((["--set", s] for s in TINY), []),
                                      "--set", "mcl.tau=0.07", "--set", "mcl.proj_dim=6"])
    cfg = wm_cli.config_for(args, 0)
    assert cfg.mcl.tau == 0.07 and cfg.use_mcl
    model, done = train(cfg, str(tmp_path / "run"), progress=False, log=False)
    assert done and model.mcl.tau == 0.07 and model.mcl.Pi_u.net[-1].out_features == 6
    assert load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))["config"]["mcl"]["tau"] == 0.07


def test_wan_backbone_trains(tmp_path):
    pytest.importorskip("diffusers")
    cfg = tiny("acg", True, extra=["model.backbone=wan", "model.wan_layers=1", "model.wan_heads=2",
                                   "model.wan_head_dim=12", "dynamics.steps=2"])
    model, done = train(cfg, str(tmp_path / "w"), progress=False, log=False)
    assert done and type(model.fdm).__name__ == "WanForwardModel"


def test_cli(tmp_path, capsys):
    from mclcore.cli import build_parser, main

    args = build_parser().parse_args(["train", "worldmodel", "--variant", "lacg", "--mcl"])
    assert args.model == "worldmodel" and args.variant == "lacg" and args.mcl
    common = ["--out", str(tmp_path), "--quiet", "--threads", "1", *sum((["--set", s] for s in TINY), [])]
    assert main(["train", "worldmodel", "--variant", "lacg", "--mcl", *common]) == 0
    run = tmp_path / "worldmodel-lacg-mcl-cpu-smoke-seed0"
    assert (run / "metrics.json").exists() and (run / "table.md").exists()
    res = json.load(open(run / "metrics.json"))
    assert f"target SSIM {res['target']['ssim']:.3f} PSNR" in capsys.readouterr().out     # the summary line
    assert {"train_call", "total_call"} <= set(res["seconds"])
    assert main(["train", "worldmodel", "--preset", "paper", *common]) == 2           # validated per trainer
    assert main(["train", "worldmodel", "--dataset", "mpi3d", *common]) == 2
    assert main(["train", "betavae", "--preset", "gpu", "--out", str(tmp_path), "--quiet"]) == 2
    assert main(["train", "betavae", "--mcl", "--out", str(tmp_path), "--quiet"]) == 2
    capsys.readouterr()
    # user mistakes: one line on stderr, exit code 2, nothing trained
    for bad, word in ((["--set", "dynamics.mcl_tau=0.07"], "dynamics.mcl_tau"), (["--set", "mcl.tau=-1"], "mcl.tau"),
                      (["--set", "model.backbone=unet"], "model.backbone"),
                      (["--data-path", str(tmp_path / "missing.h5"), "--set", "data.source=tabletop"], "missing.h5")):
        assert main(["train", "worldmodel", "--mcl", "--out", str(tmp_path / "bad"), *common, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert word in err and len(err.splitlines()) == 1, err
    # --eval-only keeps the timing of the call that trained the run
    trained = res["seconds"]["train_call"]
    assert main(["train", "worldmodel", "--variant", "lacg", "--mcl", "--eval-only", *common]) == 0
    again = json.load(open(run / "metrics.json"))
    assert again["seconds"]["training_run"]["train_call"] == trained and again["target"] == res["target"]


def test_simulator_episodes_end_to_end(tmp_path):
    tabletop = pytest.importorskip("mclcore.data.tabletop")
    if not hasattr(tabletop, "generate_episodes"):
        pytest.skip("the tabletop simulator has no generate_episodes yet")
    cfg = tiny("acg", False, extra=["data.source=tabletop", "data.n_source=2", "data.n_target=1", "data.n_eval=2",
                                    "eval.horizon=4", "eval.success_probe_steps=2"])
    splits = load_splits(cfg, str(tmp_path / "cache"))
    assert splits["train"].frames.shape == (3, 5, 64, 64, 3) and splits["train"].frames.dtype == np.uint8
    assert set(splits["train"].embodiment.tolist()) == {0, 1} and set(splits["transfer"].task.tolist()) == {1}
    out = str(tmp_path / "run")
    model, _ = train(cfg, out, cache_dir=str(tmp_path / "cache"), progress=False, log=False)
    res = evaluate(model, cfg, out, cache_dir=str(tmp_path / "cache"))
    assert res["target"]["episodes"] == 2
    succ = res["transfer_success"]                      # the probe-based task success and its controls
    rates = ("true", "probe_on_gt", "probe_on_pred", "probe_gt_agreement", "pred_agreement")
    assert all(0 <= succ[k] <= 1 for k in rates) and succ["true"] == 0.0    # 4 steps: the expert is mid-task


def test_episode_files_are_read_through_the_validating_reader(tmp_path):
    """--data-path files go through mclcore.data.tabletop's reader: a wrong format_version is an error naming the
    file; one file that lacks an evaluation split is a DataError naming --data-path."""
    tabletop = pytest.importorskip("mclcore.data.tabletop")
    h5py = pytest.importorskip("h5py")
    from mclcore.data.tabletop.episodes import EpisodeFileError

    path = str(tmp_path / "arm_b.h5")
    tabletop.generate_episodes(path, 2, "place_a2b_left", "arm_b", T=4, seed=0, progress=False)
    one_file = tiny("acg", extra=["data.source=tabletop", f"data.path={path}", "data.n_target=1", "data.n_eval=1"])
    with pytest.raises(DataError, match="--data-path: need"):        # no transfer-task episodes in the file
        load_splits(one_file, str(tmp_path / "cache"))
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(EpisodeFileError, match="arm_b.h5.*format_version"):
        load_splits(one_file, str(tmp_path / "cache"))


def _diagnostics(run, text=False):
    with open(os.path.join(run, "mcl_diagnostics.json")) as f:
        return f.read() if text else json.load(f)


@pytest.mark.parametrize("variant", ["acg", "lacg"])
def test_mcl_diagnostics_are_logged_and_change_nothing(variant, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mclcore.cli import main
    from mclcore.losses.monitor import RECORD_KEYS

    run = str(tmp_path / "diag")
    diag, _ = train(tiny(variant, True, extra=["mcl.diagnose_every=1"]), run, progress=False, log=True)
    off, _ = train(tiny(variant, True, extra=["mcl.diagnose_every=0"]), str(tmp_path / "off"), progress=False,
                   log=False)
    assert states_equal(diag, off)                                  # diagnosing never changes the training
    assert _diagnostics(str(tmp_path / "off")) == []
    records = _diagnostics(run)
    assert [r["step"] for r in records] == [0, 1, 2, 3] and all(tuple(r) == RECORD_KEYS for r in records)
    for r in records:
        assert r["weight"] == 0.5 and r["chance"] == 0.25 and r["grad_ratio"] > 0    # 4 distinct actions
        assert all(0 <= r[k] <= 1 for k in ("acc", "acc_generator", "acc_direct", "acc_generator_independent"))
    ea = EventAccumulator(os.path.join(run, "tb"))
    ea.Reload()
    assert {"dynamics/mcl/acc_generator", "dynamics/mcl/grad_ratio"} <= set(ea.Tags()["scalars"])
    capsys.readouterr()
    assert main(["inspect-mcl", run]) == 0
    out = capsys.readouterr().out
    assert "(4 measurements" in out and "acc_gen" in out and len(out.splitlines()) >= 6
    assert main(["inspect-mcl", run, "--last", "2"]) == 0             # the last 2 and their mean
    lines = capsys.readouterr().out.splitlines()
    assert "the last 2" in lines[0] and [ln.split()[0] for ln in lines[2:5]] == ["2", "3", "mean"]
    col = lines[1].split().index("acc_gen")
    assert float(lines[4].split()[col]) == pytest.approx(
        sum(r["acc_generator"] for r in records[-2:]) / 2, abs=1e-3)
    assert main(["inspect-mcl", run, "--last", "0"]) == 2
    assert "--last" in capsys.readouterr().err


def test_relative_mcl_weighting_resumes_equal_to_uninterrupted(tmp_path):
    cfg = tiny("lacg", True, extra=["mcl.weighting=relative", "mcl.diagnose_every=2"])
    full, _ = train(cfg, str(tmp_path / "full"), progress=False, log=False)
    records, text = _diagnostics(str(tmp_path / "full")), _diagnostics(str(tmp_path / "full"), text=True)
    assert [r["step"] for r in records] == [0, 2]
    assert all(r["grad_ratio"] == pytest.approx(0.5) for r in records)     # |grad w L_MCL| = 0.5 |grad host|
    assert records[0]["weight"] != records[1]["weight"]
    absolute, _ = train(tiny("lacg", True, extra=["mcl.diagnose_every=2"]), str(tmp_path / "abs"), progress=False,
                        log=False)
    assert not states_equal(full, absolute)
    for k in (2, 2, 2):        # 3 + 4 steps: stops inside stage 1, after dynamics step 0 (measured), at step 3
        _, finished = train(cfg, str(tmp_path / "part"), stop_after=k, progress=False, log=False)
        assert not finished
    part, finished = train(cfg, str(tmp_path / "part"), progress=False, log=False)
    assert finished and states_equal(full, part) and _diagnostics(str(tmp_path / "part"), text=True) == text
    with pytest.raises(ValueError, match="mcl.create_graph"):               # no gradient on the generator to weigh
        apply_overrides(tiny("acg", True), ["mcl.weighting=relative", "mcl.create_graph=false"]).validate()
