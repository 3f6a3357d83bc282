"""The Table 1 baselines in the disentanglement study (mclcore.studies.disentangle.baselines): DisDiff and
InfoGAN-CR train through the shared loop and evaluate through the study's metrics and figures; same seed, same
weights; a stopped run resumes to the uninterrupted run's weights; options are checked."""
import os

import numpy as np
import pytest
import torch

from mclcore._io import load_checkpoint
from mclcore.studies.disentangle import baselines
from mclcore.studies.disentangle import run as study
from mclcore.studies.disentangle.config import MODELS, build_config, validate
from mclcore.studies.disentangle.evaluate import evaluate
from mclcore.train.config import apply_overrides

from test_disentangle import TINY, states_equal

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)

# DisDiff: 3 concepts of width 4, a 64-image PCA; InfoGAN-CR: the CR regulariser on from step 2 of 4
EXTRA = ["disdiff.num_concepts=3", "disdiff.concept_dim=4", "disdiff.pca_samples=64", "infogan.cr_start=0.5",
         "infogan.q_hidden=8"]


def tiny(model, seed=0, extra=()):
    cfg = build_config(model, "mpi3d", "cpu-smoke", seed)
    return validate(apply_overrides(cfg, [*TINY, *EXTRA, *extra]))


def test_models_are_registered_with_the_study_budgets():
    assert {"disdiff", "infogan_cr"} <= set(MODELS)
    smoke = build_config("disdiff", "shapes3d", "cpu-smoke")
    assert study.phases(smoke) == [("first_stage", 200), ("stage1", 150), ("stage2", 30)]   # EncDiff's
    assert study.phases(build_config("encdiff", "shapes3d", "cpu-smoke")) == study.phases(smoke)
    assert study.phases(build_config("infogan_cr", "shapes3d", "cpu-smoke")) == [("gan", 800)]  # the VAEs'
    assert smoke.disdiff.num_concepts == 6 and build_config("disdiff", "shapes3d", "paper").disdiff.num_concepts is None
    paper = build_config("disdiff", "mpi3d", "paper")
    torch.manual_seed(0)
    m = study.build_model(apply_overrides(paper, ["diffusion.unet_channels=8", "diffusion.heads=2",
                                                  "diffusion.encoder_hidden=8", "first_stage.ch=8"]))
    assert m.num_concepts == 20 and m.concept_dim == 32                 # the paper's N = 20; their width 32
    assert baselines.PHASES[:len(study.PHASES)] == study.PHASES         # shared phases keep their seeds


@pytest.mark.parametrize("model", ["disdiff", "infogan_cr"])
def test_train_and_evaluate_end_to_end(model, tmp_path):
    cfg = tiny(model)
    m, done = study.train(cfg, str(tmp_path / "run"), progress=False, log=False)
    assert done
    ck = load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))
    assert ck["done"] == [p for p, _ in study.phases(cfg)]
    if model == "disdiff":
        assert bool(m.pca_fitted) and m.pca_dir.norm(dim=1).sub(1).abs().max() < 1e-5
    res = evaluate(m, cfg, str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False)
    assert 0 <= res["factorvae"] <= 1 and 0 <= res["dci"] <= 1
    fid = res.get("fid", res.get("fid_standin"))
    assert np.isfinite(fid) and np.isfinite(res["recon_mse"])
    for name in ("swap", "traversal"):
        assert os.path.getsize(res["figures"][name]) > 1000


@pytest.mark.parametrize("model", ["disdiff", "infogan_cr"])
def test_same_seed_same_weights_and_resume_equals_uninterrupted(model, tmp_path):
    full, _ = study.train(tiny(model), str(tmp_path / "full"), progress=False, log=False)
    again, _ = study.train(tiny(model), str(tmp_path / "again"), progress=False, log=False)
    assert states_equal(full, again)
    other, _ = study.train(tiny(model, seed=1), str(tmp_path / "other"), progress=False, log=False)
    assert not states_equal(full, other)
    run = str(tmp_path / "cut")
    # disdiff: stop inside stage 2 (2 + 3 + 1 steps); infogan_cr: stop before the CR switch at step 2
    stop = 6 if model == "disdiff" else 1
    _, done = study.train(tiny(model), run, stop_after=stop, progress=False, log=False)
    ck = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert not done and (ck["phase"], ck["step"]) == (("stage2", 1) if model == "disdiff" else ("gan", 1))
    resumed, done = study.train(tiny(model), run, progress=False, log=False)
    assert done and states_equal(full, resumed)


def test_infogan_cr_schedule_switches_the_regulariser_and_reinitialises_its_discriminator(tmp_path):
    cfg = tiny("infogan_cr")
    assert baselines.cr_start_step(cfg) == 2
    never, _ = study.train(tiny("infogan_cr", extra=["infogan.cr_start=1"]), str(tmp_path / "never"),
                           progress=False, log=False)
    on, _ = study.train(cfg, str(tmp_path / "on"), progress=False, log=False)
    g = lambda m: {k: v for k, v in m.state_dict().items() if k.startswith("generator.")}
    assert any(not torch.equal(a, b) for a, b in zip(g(never).values(), g(on).values()))   # CR reached G
    # steps 0-1 are the same in both runs; the reset at the switch makes the CR discriminators differ after it
    two, _ = study.train(tiny("infogan_cr", extra=["vae.steps=2", "infogan.cr_start=1"]), str(tmp_path / "two"),
                         progress=False, log=False)
    cut, _ = study.train(tiny("infogan_cr", extra=["vae.steps=2"]), str(tmp_path / "cut"), progress=False, log=False)
    assert baselines.cr_start_step(tiny("infogan_cr", extra=["vae.steps=2"])) == 1
    crd = lambda m: m.cr_discriminator.net[-1].weight
    assert not torch.equal(crd(two), crd(cut))


def test_options_are_checked():
    for extra, name in ((["disdiff.dis_loss_type=KL"], "disdiff.dis_loss_type"),
                        (["disdiff.num_concepts=0"], "disdiff.num_concepts"),
                        (["disdiff.pca_samples=1"], "disdiff.pca_samples"),
                        (["infogan.cr_start=1.5"], "infogan.cr_start"), (["infogan.g_lr=0"], "infogan.g_lr"),
                        (["infogan.noise_dim=-1"], "infogan.noise_dim")):
        with pytest.raises(ValueError, match=name):
            tiny("infogan_cr", extra=extra)
    with pytest.raises(ValueError, match="model"):
        baselines.phases(build_config("betavae", "mpi3d", "cpu-smoke"))
