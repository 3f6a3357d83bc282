"""The synthetic study's protocol axes (mixing x decoder variance x shift scale), the learnt decoder variance,
parallel workers and the landscape report (mclcore.studies.synthetic: config, units, parallel, compare).

Tiny configs (n of a few hundred, dz = 2, 1-2 epochs): seconds on 2 cores (the worker test spawns 2 processes).
"""
import csv
import json
import math
import os

import pytest
import torch

from mclcore.models.vae import StackedVAE
from mclcore.studies.synthetic import cli
from mclcore.studies.synthetic import run as study_run
from mclcore.studies.synthetic.compare import paired
from mclcore.studies.synthetic.config import StudyConfig, TrainConfig
from mclcore.studies.synthetic.train import train
from mclcore.studies.synthetic.units import build_units

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _tiny_study(**kw) -> StudyConfig:
    base = dict(dzs=(2,), alphabets=(3,), models=("betavae", "mdvae"), seeds=3, certify_latents=4,
                tensorboard=False, mixings=("leaky_relu", "smooth_leaky"), decoder_vars=(0.01, 0.3),
                train=TrainConfig(n=300, epochs=1, batch_size=64, hidden=16, checkpoint_every=0))
    base.update(kw)
    return StudyConfig(**base)


def test_axes_make_every_combination_a_cell_with_its_own_id():
    study = _tiny_study(shift_scales=(0.0, 1.0)).validate()
    units = build_units(study)
    assert len(units) == 2 * 2 * 2 * 2                     # mixings x decoder_vars x shift_scales x models
    ids = [u.uid for u in units]
    assert len(set(ids)) == len(ids)
    assert "gmd-smooth_leaky-dz2-U3-dv0.3-ss0-mdvae" in ids
    # no axes: the ids are those of before the axes existed, so old results resume
    plain = build_units(_tiny_study(mixings=(), decoder_vars=()).validate())
    assert [u.uid for u in plain] == ["gmd-leaky_relu-dz2-U3-betavae", "gmd-leaky_relu-dz2-U3-mdvae"]


@pytest.mark.parametrize("kw, field", [({"decoder_vars": (0.0,)}, "decoder_vars"),
                                       ({"decoder_vars": (0.1, 0.1)}, "decoder_vars"),
                                       ({"shift_scales": (-1.0,)}, "shift_scales"),
                                       ({"mixings": ("tanh",)}, "mixings"),
                                       ({"workers": 0}, "workers"),
                                       ({"train": TrainConfig(mixing="orthonormal")}, "train.mixing")])
def test_bad_axes_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        _tiny_study(**kw).validate()


def test_axis_flags_parse_typed_values():
    import argparse

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    study = cli.resolve(p.parse_args(["--preset", "landscape", "--decoder-vars", "0.05", "2",
                                      "--mixings", "orthonormal", "--set", "shift_scales=0,0.5"]))
    assert study.decoder_vars == (0.05, 2.0) and study.mixings == ("orthonormal",)
    assert study.shift_scales == (0, 0.5)
    study.validate()


def test_learnt_decoder_variance_is_trained_and_recorded():
    vae = StackedVAE("mdvae", 6, 4, 2, [0, 1], decoder_var=0.5, learn_decoder_var=True)
    assert vae.log_decoder_var.shape == (2,) and torch.allclose(vae.decoder_variance(), torch.tensor([0.5, 0.5]))
    out = vae(torch.randn(2, 8, 6), torch.randn(2, 8, 4), torch.randn(2, 8, 2))
    out["loss"].sum().backward()
    assert vae.log_decoder_var.grad is not None and torch.all(vae.log_decoder_var.grad != 0)
    # the fixed-variance model has no such parameter (its checkpoints keep their keys)
    assert "log_decoder_var" not in dict(StackedVAE("mdvae", 6, 4, 2, [0]).named_parameters())
    cfg = TrainConfig(dz=2, n_alphabet=3, n=400, epochs=3, batch_size=64, hidden=16, checkpoint_every=0,
                      model="mdvae", decoder_var=1.0, decoder_var_learned=True)
    rows = train(cfg, [0, 1])
    for r in rows:      # the ELBO pulls the variance from 1.0 down (Adam 1e-3: ~1e-3 in log per step, 18 steps)
        assert r["decoder_var_learned"] and r["decoder_var"] == 1.0 and r["decoder_var_final"] < 0.995
    fixed = train(TrainConfig(**{**cfg.__dict__, "decoder_var_learned": False}), [0])
    assert fixed[0]["decoder_var_final"] == 1.0


def test_paired_difference_is_the_mean_of_per_seed_differences():
    a, b = {0: 0.5, 1: 0.7, 2: 0.6, 3: 0.9}, {0: 0.4, 1: 0.5, 2: 0.65, 9: 0.1}
    s = paired(a, b)
    assert s["n"] == 3 and math.isclose(s["mean"], (0.1 + 0.2 - 0.05) / 3)
    assert s["lo"] <= s["mean"] <= s["hi"]
    assert paired({0: 1.0}, {1: 1.0}) is None


def test_landscape_report_and_workers_give_the_same_results(tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    paths = study_run.run_study(_tiny_study(), str(serial), progress=False)
    for key in ("landscape", "landscape_csv", "landscape_plot", "cells_plot", "certificates", "csv"):
        assert os.path.exists(paths[key]), key
    text = open(paths["landscape"]).read()
    assert "MD-VAE − β-VAE" in text and "smooth_leaky" in text and "(n=3)" in text
    with open(paths["landscape_csv"]) as f:
        diffs = list(csv.DictReader(f))
    assert len(diffs) == 4 and {d["a"] + "-" + d["b"] for d in diffs} == {"mdvae-betavae"}
    with open(paths["csv"]) as f:                             # the table's difference is the paired mean
        rows = list(csv.DictReader(f))
    cell = [r for r in rows if r["mixing"] == "smooth_leaky" and float(r["decoder_var"]) == 0.3]
    by = {m: {r["seed"]: float(r["mcc"]) for r in cell if r["model"] == m} for m in ("mdvae", "betavae")}
    want = sum(by["mdvae"][s] - by["betavae"][s] for s in by["mdvae"]) / 3
    got = [d for d in diffs if d["mixing"] == "smooth_leaky" and float(d["decoder_var"]) == 0.3][0]
    assert math.isclose(float(got["mean"]), want, rel_tol=1e-5)

    study_run.run_study(_tiny_study(workers=2), str(parallel), progress=False)
    with open(parallel / "runs.csv") as f:
        rows2 = list(csv.DictReader(f))
    drop = ("unit_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows2]
    # the worker count is not part of what a result is: a serial rerun resumes the parallel folder
    study_run.run_study(_tiny_study(workers=1), str(parallel), progress=False)


def test_a_folder_written_before_the_axes_existed_still_resumes(tmp_path):
    study = _tiny_study(mixings=(), decoder_vars=(), models=("mdvae",), seeds=2)
    study_run.run_study(study, str(tmp_path), progress=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for k in ("mixings", "decoder_vars", "shift_scales", "workers"):
        del cfg[k]
    del cfg["train"]["decoder_var_learned"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    study_run.run_study(study, str(tmp_path), progress=False)       # no OutDirMismatch
    with pytest.raises(study_run.OutDirMismatch, match="seeds"):
        study_run.run_study(_tiny_study(mixings=(), decoder_vars=(), models=("mdvae",), seeds=3), str(tmp_path),
                            progress=False)


def test_unpaired_contrast_of_two_cells():
    from mclcore.studies.synthetic.compare import unpaired

    s = unpaired([0.7, 0.8, 0.75, 0.85], [0.5, 0.6, 0.55])
    assert math.isclose(s["mean"], 0.775 - 0.55) and s["lo"] <= s["mean"] <= s["hi"] and s["lo"] > 0
    assert unpaired([0.7], [0.5, 0.6]) is None
    wide = unpaired([0.1, 0.9, 0.5], [0.2, 0.8, 0.4])
    assert wide["lo"] < 0 < wide["hi"]
