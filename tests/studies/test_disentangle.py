"""Trainer of the disentanglement study (mclcore.train.disentangle): smoke steps of every model, determinism,
resume after a stop equals an uninterrupted run, evaluation end to end, config overrides, the CLI."""
import json
import os

import numpy as np
import pytest
import torch

from mclcore.train import disentangle as dis
from mclcore.train.fid import frechet_distance

TINY = [
    "log_every=1", "ckpt_every=2",
    "first_stage.ch=8", "first_stage.ch_mult=1,2,2", "first_stage.num_res_blocks=1", "first_stage.n_embed=64",
    "first_stage.u_channels=4", "first_stage.steps=2", "first_stage.batch_size=4",
    "diffusion.encoder_hidden=8", "diffusion.encoder_fc=16", "diffusion.unet_channels=8", "diffusion.unet_mult=1,2",
    "diffusion.heads=2", "diffusion.timesteps=100",
    "stages.batch_size=4", "stages.stage1_steps=3", "stages.stage2_steps=3", "stages.warmup1=2", "stages.warmup2=2",
    "stages.critic_hidden=16", "stages.proj_dim=8",
    "vae.hidden=8", "vae.fc=16", "vae.disc_width=16", "vae.disc_depth=2", "vae.steps=4", "vae.batch_size=4",
    "eval.sample_scale=0.001", "eval.fid_samples=40", "eval.recon_samples=8", "eval.featnet_steps=3",
    "eval.ddim_steps=2",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)


def tiny(model, seed=0, extra=()):
    # MPI3D's procedural twin renders without a warm-up (the Shapes3D twin ray-casts its geometry once, ~5-40 s)
    cfg = dis.preset_config(model, "mpi3d", "cpu-smoke", seed)
    return dis.apply_overrides(cfg, [*TINY, *extra])


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("model", dis.MODELS)
def test_every_model_trains_deterministically(model, tmp_path):
    a, done_a = dis.train(tiny(model), str(tmp_path / "a"), progress=False, log=False)
    b, done_b = dis.train(tiny(model), str(tmp_path / "b"), progress=False, log=False)
    assert done_a and done_b and states_equal(a, b)
    c, _ = dis.train(tiny(model, seed=1), str(tmp_path / "c"), progress=False, log=False)
    assert not states_equal(a, c)
    ck = dis.load_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))
    assert ck["done"] == [p for p, _ in dis.phases(tiny(model))]
    assert dis.config_from_dict(ck["config"]) == tiny(model)


@pytest.mark.parametrize("model", ["mddiff", "factorvae"])
def test_resume_equals_continuous_training(model, tmp_path):
    full, _ = dis.train(tiny(model), str(tmp_path / "full"), progress=False, log=False)
    run = str(tmp_path / "cut")
    # stop inside a phase (mddiff: after first_stage + 1 step of stage1; factorvae: after 3 of 4 steps) ...
    _, done = dis.train(tiny(model), run, stop_after=3, progress=False, log=False)
    assert not done
    ck = dis.load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert ck["phase"] == ("stage1" if model == "mddiff" else "vae") and ck["step"] > 0
    if model == "mddiff":                              # ... and once more, inside stage 2 (MCL)
        _, done = dis.train(tiny(model), run, stop_after=4, progress=False, log=False)
        assert not done and dis.load_checkpoint(os.path.join(run, "checkpoint.pt"))["phase"] == "stage2"
    with open(os.path.join(run, "checkpoint.pt.tmp"), "wb") as f:   # a kill during a save leaves only a .tmp
        f.write(b"partial")
    resumed, done = dis.train(tiny(model), run, progress=False, log=False)
    assert done and states_equal(full, resumed)


def test_resume_keeps_the_saved_config(tmp_path, capsys):
    dis.train(tiny("betavae"), str(tmp_path), stop_after=1, progress=False, log=False)
    other = tiny("betavae", extra=["vae.lr=0.5"])
    model, done = dis.train(other, str(tmp_path), progress=False, log=False)
    assert done
    assert "vae.lr" in capsys.readouterr().err
    assert json.load(open(tmp_path / "config.json"))["vae"]["lr"] == tiny("betavae").vae.lr


def test_stage_learning_rates_follow_the_batch_scaling_rule():
    cfg = dis.preset_config("mddiff", "mpi3d", "paper")
    assert cfg.stages.lambda_mcl == 1e-4 and dis.preset_config("mddiff", "cars3d", "paper").stages.lambda_mcl == 1e-3
    assert cfg.stages.stage1_steps == 10 * 1036800 // 128
    params = [torch.nn.Parameter(torch.zeros(2))]
    opts, scheds = dis.make_optimizers(None, cfg, "stage1", params)
    assert isinstance(opts[0], torch.optim.AdamW)
    assert opts[0].param_groups[0]["lr"] == pytest.approx(2e-6 * 128 / cfg.stages.warmup1)   # warm-up step 0
    for _ in range(cfg.stages.warmup1):
        opts[0].step()
        scheds[0].step()
    assert opts[0].param_groups[0]["lr"] == pytest.approx(2e-6 * 128)
    opts, _ = dis.make_optimizers(None, cfg, "stage2", params)
    assert opts[0].param_groups[0]["lr"] == pytest.approx(2e-7 * 128 / cfg.stages.warmup2)


def test_evaluate_writes_metrics_and_figures(tmp_path):
    cfg = tiny("mddiff")
    model, _ = dis.train(cfg, str(tmp_path / "run"), progress=False, log=False)
    res = dis.evaluate(model, cfg, str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False)
    for key in ("factorvae", "dci", "fid", "lpips_proxy"):
        assert np.isfinite(res[key])
    assert 0 <= res["factorvae"] <= 1 and 0 <= res["dci"] <= 1 and res["fid"] >= 0
    assert res["fid_label"] == "FID (dataset-trained net)"
    saved = json.load(open(tmp_path / "run" / "metrics.json"))
    assert saved["dci"] == res["dci"]
    for name in ("swap", "traversal", "attention"):
        assert os.path.getsize(res["figures"][name]) > 1000
    assert any(f.startswith("featnet-mpi3d-twin") for f in os.listdir(tmp_path / "cache"))


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # N(0, I) vs N(m, I): |m|^2
    assert frechet_distance(a, rng.normal(size=(4000, 3)) + [1.0, 2.0, 0.0]) == pytest.approx(5.0, abs=0.15)


def test_overrides_and_errors():
    cfg = dis.apply_overrides(dis.preset_config("encdiff", "cars3d", "cpu-smoke"),
                              ["stages.lambda_mcl=2e-4", "diffusion.unet_mult=1,2,4", "amp=false",
                               "data.data_path=none"])
    assert cfg.stages.lambda_mcl == 2e-4 and cfg.diffusion.unet_mult == (1, 2, 4) and cfg.amp is False
    assert cfg.data.pool > 0                                   # slow renderer: a pre-rendered pool
    with pytest.raises(ValueError, match="unknown config key"):
        dis.apply_overrides(cfg, ["stages.lr=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        dis.apply_overrides(cfg, ["stages.batch_size"])
    with pytest.raises(ValueError, match="--dataset"):
        dis.preset_config("mddiff", "celeba", "paper")
    with pytest.raises(ValueError, match="--preset"):
        dis.preset_config("mddiff", "mpi3d", "gpu")


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
    # a finished, evaluated run is skipped by a plain call
    assert main(["train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path), "--quiet", *tiny_set]) == 0
    with pytest.raises(FileNotFoundError, match="--data-path"):
        main(["train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path), "--data-path", str(tmp_path / "missing.h5"), "--quiet"])
