"""World-model trainer (mclcore.train.worldmodel): smoke training of every variant, determinism, resume equals an
uninterrupted run, evaluation files and Table 2 layout, the report, the CLI."""
import json
import os

import numpy as np
import pytest
import torch

from mclcore.train import worldmodel as wm

TINY = [
    "log_every=1", "ckpt_every=2", "data.source=random", "data.n_source=6", "data.n_target=3", "data.n_eval=3",
    "data.episode_len=4", "autoencoder.ch=4", "autoencoder.steps=3", "autoencoder.batch_size=4",
    "model.dim=16", "model.depth=1", "model.heads=2", "model.patch=4", "model.latent_action_dim=3",
    "model.idm_ch=4", "model.idm_hidden=8", "dynamics.steps=4", "dynamics.batch_size=4", "dynamics.warmup=2",
    "dynamics.critic_hidden=8", "dynamics.proj_dim=8", "dynamics.lambda_mcl=0.5",
    "eval.horizon=3", "eval.sample_steps=2", "eval.batch_size=2", "eval.figure_frames=3",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)


def tiny(variant="acg", mcl=False, seed=0, extra=()):
    return wm.apply_overrides(wm.preset_config(variant, mcl, "cpu-smoke", seed), [*TINY, *extra])


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("variant,mcl", [("acg", False), ("acg", True), ("lacg", False), ("lacg", True)])
def test_every_variant_trains_deterministically(variant, mcl, tmp_path):
    a, done_a = wm.train(tiny(variant, mcl), str(tmp_path / "a"), progress=False, log=False)
    b, done_b = wm.train(tiny(variant, mcl), str(tmp_path / "b"), progress=False, log=False)
    assert done_a and done_b and states_equal(a, b)
    c, _ = wm.train(tiny(variant, mcl, seed=1), str(tmp_path / "c"), progress=False, log=False)
    assert not states_equal(a, c)
    ck = wm.load_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))
    assert ck["done"] == list(wm.PHASES) and wm.config_from_dict(ck["config"]) == tiny(variant, mcl)
    assert (a.mcl is not None) == mcl and hasattr(a, "idm") == (variant == "lacg")


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
    cfg = tiny("lacg", True)
    full, _ = wm.train(cfg, str(tmp_path / "full"), progress=False, log=False)
    for k in (2, 2, 2):        # 3 + 4 steps: stops inside stage 1, across the phase boundary, inside stage 2
        part, finished = wm.train(cfg, str(tmp_path / "part"), stop_after=k, progress=False, log=False)
        assert not finished
    part, finished = wm.train(cfg, str(tmp_path / "part"), progress=False, log=False)
    assert finished and states_equal(full, part)


def test_autoencoder_is_frozen_in_stage_two(tmp_path):
    cfg = tiny("acg", True)
    after_ae, _ = wm.train(wm.apply_overrides(tiny("acg", True), ["dynamics.steps=0"]), str(tmp_path / "a"),
                           progress=False, log=False)
    full, _ = wm.train(cfg, str(tmp_path / "b"), progress=False, log=False)
    for k, v in after_ae.ae.state_dict().items():
        assert torch.equal(v, full.ae.state_dict()[k]), k
    assert not torch.equal(after_ae.fdm.out.weight, full.fdm.out.weight)


def test_evaluation_writes_metrics_table_figure_and_report(tmp_path):
    dirs = []
    for mcl in (False, True):
        cfg = tiny("acg", mcl)
        out = str(tmp_path / wm.run_dir_name(cfg))
        model, _ = wm.train(cfg, out, progress=False, log=True)
        res = wm.evaluate(model, cfg, out)
        dirs.append(out)
        for split in ("target", "transfer"):
            assert set(wm.METRIC_KEYS) <= set(res[split]) and res[split]["episodes"] == 3
            assert -1 <= res[split]["ssim"] <= 1 and res[split]["mse"] > 0
        assert os.path.getsize(os.path.join(out, "figures", "rollout.png")) > 1000
        assert os.listdir(os.path.join(out, "tb"))
        with open(os.path.join(out, "metrics.json")) as f:
            assert json.load(f)["method"] == ("ACG+MCL" if mcl else "ACG")
    table = open(os.path.join(dirs[1], "table.md")).read()
    assert "Wan-ACG+MCL (paper) | 0.765 | 18.73 | 0.0134 | 0.737 | 0.765 | 18.58 | 0.0138 | 0.739 |" in table
    assert f"{res['target']['ssim']:.3f}" in table
    rep = wm.report(dirs, str(tmp_path / "report"))
    assert os.path.exists(rep["table"]) and os.path.getsize(rep["ACG"]) > 1000
    assert open(rep["table"]).read().count("(paper)") == 2


def test_lacg_reports_both_test_time_latent_action_sources(tmp_path):
    cfg = tiny("lacg", False)
    out = str(tmp_path / "run")
    model, _ = wm.train(cfg, out, progress=False, log=False)
    res = wm.evaluate(model, cfg, out)
    assert {"target", "target_regressor", "transfer", "transfer_regressor", "target_shuffled_actions"} <= set(res)
    assert res["target_shuffled_actions"] != res["target"]


def test_overrides_and_presets():
    cfg = wm.apply_overrides(wm.preset_config("lacg", True, "gpu"), ["dynamics.lambda_mcl=0.2",
                                                                     "model.backbone=wan"])
    assert cfg.dynamics.lambda_mcl == 0.2 and cfg.model.backbone == "wan"
    smoke = wm.preset_config("acg", False, "cpu-smoke")
    assert smoke.model.dim < cfg.model.dim and smoke.dynamics.steps < cfg.dynamics.steps
    with pytest.raises(ValueError, match="--preset"):
        wm.preset_config("acg", False, "paper")
    with pytest.raises(ValueError, match="--variant"):
        wm.preset_config("vla", False, "gpu")
    with pytest.raises(ValueError, match="unknown config key"):
        wm.apply_overrides(cfg, ["dynamics.lambda=1"])
    with pytest.raises(ValueError, match="data.source"):
        wm.load_splits(wm.apply_overrides(tiny(), ["data.source=robotwin"]), "/tmp")
    with pytest.raises(ValueError, match="model.backbone"):
        wm.build_model(wm.apply_overrides(tiny(), ["model.backbone=unet"]))


def test_wan_backbone_trains(tmp_path):
    pytest.importorskip("diffusers")
    cfg = tiny("acg", True, extra=["model.backbone=wan", "model.wan_layers=1", "model.wan_heads=2",
                                   "model.wan_head_dim=12", "dynamics.steps=2"])
    model, done = wm.train(cfg, str(tmp_path / "w"), progress=False, log=False)
    assert done and type(model.fdm).__name__ == "WanForwardModel"


def test_cli(tmp_path):
    from mclcore.cli import build_parser, main

    args = build_parser().parse_args(["train", "worldmodel", "--variant", "lacg", "--mcl"])
    assert args.model == "worldmodel" and args.variant == "lacg" and args.mcl
    common = ["--out", str(tmp_path), "--quiet", "--threads", "1", *sum((["--set", s] for s in TINY), [])]
    assert main(["train", "worldmodel", "--variant", "lacg", "--mcl", *common]) == 0
    run = tmp_path / "worldmodel-lacg-mcl-cpu-smoke-seed0"
    assert (run / "metrics.json").exists() and (run / "table.md").exists()
    assert main(["train", "worldmodel", "--preset", "paper", *common]) == 2           # validated per trainer
    assert main(["train", "worldmodel", "--dataset", "mpi3d", *common]) == 2
    assert main(["train", "betavae", "--preset", "gpu", "--out", str(tmp_path), "--quiet"]) == 2
    assert main(["train", "betavae", "--mcl", "--out", str(tmp_path), "--quiet"]) == 2


def test_simulator_episodes_end_to_end(tmp_path):
    tabletop = pytest.importorskip("mclcore.data.tabletop")
    if not hasattr(tabletop, "generate_episodes"):
        pytest.skip("the tabletop simulator has no generate_episodes yet")
    cfg = tiny("acg", False, extra=["data.source=tabletop", "data.n_source=2", "data.n_target=1", "data.n_eval=2",
                                    "eval.horizon=4", "eval.success_probe_steps=2"])
    splits = wm.load_splits(cfg, str(tmp_path / "cache"))
    assert splits["train"].frames.shape == (3, 5, 64, 64, 3) and splits["train"].frames.dtype == np.uint8
    assert set(splits["train"].embodiment.tolist()) == {0, 1} and set(splits["transfer"].task.tolist()) == {1}
    out = str(tmp_path / "run")
    model, _ = wm.train(cfg, out, cache_dir=str(tmp_path / "cache"), progress=False, log=False)
    res = wm.evaluate(model, cfg, out, cache_dir=str(tmp_path / "cache"))
    assert res["target"]["episodes"] == 2
    succ = res["transfer_success"]                      # the probe-based task success and its controls
    rates = ("true", "probe_on_gt", "probe_on_pred", "probe_gt_agreement", "pred_agreement")
    assert all(0 <= succ[k] <= 1 for k in rates) and succ["true"] == 0.0    # 4 steps: the expert is mid-task
