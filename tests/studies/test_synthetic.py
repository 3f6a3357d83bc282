"""The synthetic study's trainer, grid and CLI (mclcore.studies.synthetic: train, run, config, cli).

Tiny configs throughout (n of a few hundred, dz = 2, 1-3 epochs, narrow networks): seconds on 2 cores.
"""
import csv
import dataclasses
import json
import math
import os

import pytest
import torch

from mclcore.losses.mcl import MCLConfig
from mclcore.ops import _backend
from mclcore.studies.synthetic import cli
from mclcore.studies.synthetic import run as study_run
from mclcore.studies.synthetic.config import PER_UNIT, StudyConfig
from mclcore.studies.synthetic.train import MODELS, TrainConfig, load_checkpoint, train
from mclcore.train.config import leaf_paths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors: one intra-op thread (tests/conftest.py)


def tiny(**kw) -> TrainConfig:
    base = dict(dz=2, n_alphabet=3, n=400, epochs=2, batch_size=64, hidden=16,
                mcl=MCLConfig(multi_positive=True, critic_hidden=(16, 16)), checkpoint_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _numbers(rows):
    return [(r["seed"], r["lambda_mcl"], r["mcc"], r["mcc_spearman"], r["neg_elbo"], r["rec"], r["kl"],
             r["mcl_loss"]) for r in rows]


@pytest.mark.parametrize("model", MODELS)
def test_smoke_each_model(model):
    rows = train(tiny(model=model), [0, 1])
    assert len(rows) == 2
    for r in rows:
        assert r["model"] == model and r["split"] == "test" and r["steps"] == 2 * math.ceil(320 / 64)
        assert 0.0 <= r["mcc"] <= 1.0 and 0.0 <= r["mcc_spearman"] <= 1.0
        assert math.isfinite(r["neg_elbo"]) and math.isfinite(r["kl"])
        assert (r["mcl_loss"] is not None and math.isfinite(r["mcl_loss"])) == (model == "mdvae_mcl")


def test_determinism_same_seed_same_numbers():
    cfg = tiny(model="mdvae_mcl", process="lrd")
    a, b = train(cfg, [3, 4]), train(cfg, [3, 4])
    assert _numbers(a) == _numbers(b)                       # bit-identical
    c = train(cfg, [5, 6])
    assert _numbers(c) != _numbers(a)


@pytest.mark.parametrize("model", ["ivae", "mdvae_mcl"])
def test_batched_seeds_equal_one_by_one(model):
    # M members in one stack give the numbers of M separate runs: members share no randomness and no gradient.
    cfg = tiny(model=model)
    lambdas = [0.5, 0.05, 0.5] if model == "mdvae_mcl" else None
    batched = train(cfg, [0, 1, 0], lambdas)
    single = [train(cfg, [s], None if lambdas is None else [lam])[0]
              for s, lam in zip([0, 1, 0], lambdas or [None] * 3)]
    for rb, rs in zip(batched, single):
        for k in ("mcc", "mcc_spearman", "neg_elbo", "rec", "kl"):
            assert rb[k] == pytest.approx(rs[k], rel=1e-5, abs=1e-6), k
        if model == "mdvae_mcl":
            assert rb["mcl_loss"] == pytest.approx(rs["mcl_loss"], rel=1e-5, abs=1e-6)
    if model == "mdvae_mcl":  # the per-member lambda acts: same seed, different lambda, different numbers
        assert batched[0]["mcl_loss"] != batched[1]["mcl_loss"]


def test_stacked_mcl_equals_the_per_member_loop(monkeypatch):
    # The trainer's StackedMCL (one call of each op for all members) against its former path, a loop over per-member
    # MCL modules (members.STACK_MCL = False): the same initialisation, the same numbers to float32 rounding.
    from mclcore.studies.synthetic import members as members_module

    cfg = tiny(model="mdvae_mcl")
    stacked = train(cfg, [0, 1, 0], [0.5, 0.05, 0.5])
    monkeypatch.setattr(members_module, "STACK_MCL", False)
    loop = train(cfg, [0, 1, 0], [0.5, 0.05, 0.5])
    for rs, rl in zip(stacked, loop):
        for k in ("mcc", "neg_elbo", "rec", "kl", "mcl_loss"):
            assert rs[k] == pytest.approx(rl[k], rel=1e-5, abs=1e-6), k


def test_checkpoint_of_per_member_mcl_modules_resumes_stacked(tmp_path, monkeypatch):
    # A checkpoint written with one MCL module per member (mcls.<m>.* weights, per-member Adam moments: the layout
    # before the stacked MCL) resumes with the stacked MCL, which stacks its weights and moments on load.
    from mclcore.studies.synthetic import members as members_module

    cfg = tiny(model="mdvae_mcl", epochs=3)
    ref = train(cfg, [0, 1])
    ck = str(tmp_path / "unit.pt")
    monkeypatch.setattr(members_module, "STACK_MCL", False)
    _killed_after_epoch(cfg, ck, 2)
    assert any(k.startswith("mcls.1.") for k in torch.load(ck, weights_only=False)["model"])
    monkeypatch.setattr(members_module, "STACK_MCL", True)
    for rr, rs in zip(ref, train(cfg, [0, 1], checkpoint=ck)):
        for k in ("mcc", "neg_elbo", "mcl_loss"):
            assert rr[k] == pytest.approx(rs[k], rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("process", ["gmd", "lrd"])
def test_ceiling_collapse_and_snr_in_every_row(process):
    rows = train(tiny(model="betavae", process=process), [0, 1])
    for r in rows:
        if process == "lrd":
            assert r["mcc_ceiling"] == pytest.approx(1.0, abs=1e-6)        # y = z: nothing to undo
        else:
            assert 0.0 < r["mcc_ceiling"] <= 1.0
        assert len(r["kl_per_dim"]) == 2 and all(v >= 0 for v in r["kl_per_dim"])
        assert 0 <= r["active_dims"] <= 2 and r["active_dims"] == sum(v > 0.01 for v in r["kl_per_dim"])
        assert r["snr"] > 1 and math.isfinite(r["snr"])
    assert rows[0]["mcc_ceiling"] != rows[1]["mcc_ceiling"] or process == "lrd"   # a ceiling per seed's data
    # the evaluation KL is the final model's on the test split; the training "kl" is the last epoch's mean on the
    # training split: same order of magnitude
    assert sum(rows[0]["kl_per_dim"]) == pytest.approx(rows[0]["kl"], rel=1.0)


@pytest.mark.parametrize("model", ["ivae", "mdvae_mcl"])
def test_evaluation_extras_change_no_number(model, monkeypatch):
    from mclcore.studies.synthetic import train as train_mod

    cfg = tiny(model=model)
    rows = train(cfg, [0, 1])
    assert all("mcc_ceiling" in r for r in rows)
    monkeypatch.setattr(train_mod, "_evaluation_extras", lambda cfg, vae, seeds, *a, **k: [{} for _ in seeds])
    bare = train(cfg, [0, 1])
    assert "mcc_ceiling" not in bare[0]
    assert _numbers(rows) == _numbers(bare)                  # bit-identical MCC, ELBO, KL


def test_data_axes_are_in_the_dataset_cache_key():
    from mclcore.studies.synthetic.train import _DATA_KEYS

    data_fields = {"process", "dz", "n_alphabet", "n", "du", "noise_var", "mixing", "test_frac", "lrd_mean_bound",
                   "lrd_std_low", "lrd_std_high", "modulation_range", "shift_scale"}
    assert data_fields <= set(_DATA_KEYS)
    base = train(tiny(model="betavae", epochs=1), [0])[0]
    for kw in (dict(modulation_range=2.0), dict(shift_scale=0.0), dict(mixing="orthonormal"), dict(noise_var=0.1)):
        r = train(tiny(model="betavae", epochs=1, **kw), [0])[0]
        assert (r["mcc_ceiling"], r["snr"]) != (base["mcc_ceiling"], base["snr"]), kw
    flat = train(tiny(model="betavae", epochs=1, modulation_range=0.0, shift_scale=0.0), [0])[0]
    assert flat["mcc_ceiling"] == pytest.approx(1.0, abs=1e-6)              # no modulation: y = z
    with pytest.raises(ValueError, match="modulation_range"):
        train(tiny(modulation_range=-1.0), [0])


def _killed_after_epoch(cfg, ck: str, epoch: int, seeds=(0, 1)) -> None:
    """Train members ``seeds`` of ``cfg`` with checkpoint ``ck`` and interrupt the run right after ``epoch``."""
    class Killed(Exception):
        pass

    def kill(e, means):
        if e == epoch:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, list(seeds), checkpoint=ck, on_epoch=kill)


def test_resume_inside_a_unit_gives_the_same_numbers(tmp_path):
    cfg = tiny(model="mdvae_mcl", epochs=3)
    ref = train(cfg, [0, 1])
    ck = str(tmp_path / "unit.pt")
    _killed_after_epoch(cfg, ck, 2)
    saved = load_checkpoint(ck)
    spe = math.ceil(320 / 64)
    assert saved["step"] == 2 * spe and saved["done"] == [] and saved["config"] == cfg.to_dict()
    steps = []
    resumed = train(cfg, [0, 1], checkpoint=ck, on_step=steps.append)
    assert _numbers(resumed) == _numbers(ref)
    assert steps[0] == 2 * math.ceil(320 / 64)                # progress resumes at epoch 2
    assert load_checkpoint(ck)["done"] == ["train"]
    with pytest.raises(ValueError, match="different run"):
        train(dataclasses.replace(cfg, lr=1e-2), [0, 1], checkpoint=ck)


def test_non_finite_loss_raises_naming_the_seed():
    with pytest.raises(FloatingPointError, match=r"seed\(s\) \[0\]"):
        train(tiny(model="ivae", lr=1e12, epochs=3, decoder_var=1e-6), [0])


@pytest.mark.parametrize("field, value", [
    ("model", "vae"), ("process", "ica"), ("dz", 0), ("lr", 0.0), ("epochs", 0), ("mixing", "tanh"),
    ("eval_split", "val"), ("test_frac", 1.0), ("lambda_mcl", -1.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field if field != "eval_split" else "val_frac"):
        train(tiny(**{field: value}), [0])


def test_too_small_an_evaluation_split_is_refused():
    # --n 10 once reported MCC = 1.000 from 2 test rows
    for n, match in ((10, "leave 2 test rows"), (60, "leave 12 test rows")):
        with pytest.raises(ValueError, match=match):
            train(tiny(n=n), [0])
    assert cli.run(_parse(["--n", "10", "--dump-config"])) == 2


def test_lambda_selection_rule():
    rows = [{"lambda_mcl": lam, "mcc": m} for lam, m in
            [(0.01, 0.5), (0.01, 0.7), (0.01, 0.6), (0.1, 0.65), (0.1, 0.62), (0.1, 0.4)]]
    lam, med = study_run.select_lambda(rows)
    assert lam == 0.1 and med == {0.01: 0.6, 0.1: 0.62}
    lam, _ = study_run.select_lambda([{"lambda_mcl": 0.1, "mcc": 0.5}, {"lambda_mcl": 0.01, "mcc": 0.5}])
    assert lam == 0.01                                       # ties: the smaller weight


def _tiny_study(**kw) -> StudyConfig:
    base = dict(processes=("gmd",), dzs=(2,), alphabets=(3,), models=("betavae", "mdvae_mcl"), seeds=2,
                lambda_grid=(0.01, 0.1), tune_seeds=1, tune_epochs=1, certify_latents=4, tensorboard=False,
                train={"n": 400, "epochs": 2, "batch_size": 64, "hidden": 16, "mcl": {"critic_hidden": [16, 16]},
                       "checkpoint_every": 1})
    base.update(kw)
    return StudyConfig.from_dict(base)


def _csv_without_timing(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("unit_seconds")
    return rows


def test_study_resume_after_a_killed_unit_gives_the_same_csv(tmp_path):
    study = _tiny_study(certify_latents=0)
    full = tmp_path / "full"
    paths = study_run.run_study(study, str(full), progress=False)
    for key in ("csv", "table", "violin", "tuning"):
        assert os.path.getsize(paths[key]) > 0, key
    table = open(paths["table"]).read()
    assert "MD-VAE+MCL" in table and "λ_MCL selection" in table
    assert "| u-blind ceiling | 0." in table and "Active latent dimensions" in table and "| β-VAE | " in table
    with open(paths["csv"]) as f:
        csv_rows = list(csv.DictReader(f))
    for r in csv_rows:
        assert 0 < float(r["mcc_ceiling"]) <= 1 and 0 <= int(r["active_dims"]) <= 2 and float(r["snr"]) > 0
        assert len(r["kl_per_dim"].split(";")) == 2

    part = tmp_path / "part"

    class Killed(Exception):
        pass

    def kill(record):
        raise Killed

    with pytest.raises(Killed):
        study_run.run_study(study, str(part), progress=False, after_unit=kill)
    done = sorted(os.listdir(part / "units"))
    assert done == ["gmd-leaky_relu-dz2-U3-betavae.json"]
    mtime = os.path.getmtime(part / "units" / done[0])
    study_run.run_study(study, str(part), progress=False)
    assert os.path.getmtime(part / "units" / done[0]) == mtime   # the finished unit was not retrained
    assert _csv_without_timing(part / "runs.csv") == _csv_without_timing(full / "runs.csv")
    rows = _csv_without_timing(part / "runs.csv")
    assert [r["model"] for r in rows] == ["betavae"] * 2 + ["mdvae_mcl"] * 2
    tuned = json.load(open(part / "units" / "gmd-leaky_relu-dz2-U3-mdvae_mcl.json"))
    assert tuned["selection"]["lambda"] in (0.01, 0.1)
    assert {float(r["lambda_mcl"]) for r in rows if r["model"] == "mdvae_mcl"} == {tuned["selection"]["lambda"]}
    ck = load_checkpoint(str(part / "checkpoints" / "gmd-leaky_relu-dz2-U3-mdvae_mcl.pt"))
    assert ck["done"] and ck["config"]["model"] == "mdvae_mcl" and ck["config"]["epochs"] == 2
    with pytest.raises(study_run.OutDirMismatch, match="seeds"):
        study_run.run_study(_tiny_study(certify_latents=0, seeds=3), str(part), progress=False)


def _parse(argv):
    import argparse

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(argv)


def test_cli_overrides_and_presets_match_the_experiment_configs(capsys):
    study = cli.resolve(_parse(["--preset", "quick", "--dzs", "5", "10", "--epochs", "7", "--no-tensorboard",
                                "--lambda-grid", "0.05"]))
    assert study.dzs == (5, 10) and study.train.epochs == 7 and not study.tensorboard
    assert study.lambda_grid == (0.05,) and study.train.n == cli.PRESETS["quick"]["train"]["n"]
    study = cli.resolve(_parse(["--preset", "quick", "--mcl-tau", "0.2", "--set", "train.mcl.clip=3",
                                "--mcl-critic-input", "xz", "--mcl-critic-hidden", "8", "8"]))
    assert (study.train.mcl.tau, study.train.mcl.clip, study.train.mcl.critic_input) == (0.2, 3.0, "xz")
    assert study.train.mcl.critic_hidden == (8, 8) and study.train.mcl.multi_positive
    for name in ("quick", "paper", "demo", "landscape", "cpu-paper"):        # the pre-registered grids, committed
        with open(os.path.join(REPO, "experiments", "synthetic", "configs", f"{name}.json")) as f:
            assert json.load(f) == cli.preset(name).to_dict(), name
    assert cli.run(_parse(["--preset", "paper", "--dump-config"])) == 0
    assert json.loads(capsys.readouterr().out)["seeds"] == 30
    assert cli.run(_parse(["--preset", "quick", "--mixing", "tanh", "--dump-config"])) == 2
    assert "mixing" in capsys.readouterr().err
    assert cli.run(_parse(["--models", "vae", "--dump-config"])) == 2
    assert "models" in capsys.readouterr().err


def test_every_config_field_has_a_generated_flag():
    import argparse

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    dests = {a.dest for a in p._actions}
    for path, _, _ in leaf_paths(StudyConfig):
        wanted = path[0] != "train" or path[1] not in PER_UNIT        # the grid sets the per-unit fields
        assert (("cfg__" + "__".join(path)) in dests) == wanted, path
    assert cli.run(_parse(["--set", "train.dz=3", "--dump-config"])) == 2   # per-unit: refused, named


def test_every_experiment_config_is_valid():
    folder = os.path.join(REPO, "experiments", "synthetic", "configs")
    names = sorted(os.listdir(folder))
    assert {"quick.json", "paper.json"} <= set(names)
    for name in names:
        with open(os.path.join(folder, name)) as f:
            cli.StudyConfig.from_dict(json.load(f)).validate()


def test_mcl_synthetic_command_end_to_end(tmp_path, capsys):
    from mclcore.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"dzs": [2], "alphabets": [3, 5], "models": ["mdvae"], "seeds": 2,
                                  "certify_latents": 4, "tensorboard": True,
                                  "train": {"n": 300, "epochs": 1, "batch_size": 64, "hidden": 16}}))
    out = tmp_path / "out"
    assert main(["synthetic", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "table.md") in printed and str(out / "violin.png") in printed
    assert "| MD-VAE | **" in printed                    # the table, with our median, is printed
    assert "| gmd-leaky_relu-dz2-U3 | 0% (median rank 0 of 4) | yes |" in printed  # |U| = 3 < 2dz + 1
    assert "piecewise linear" in (out / "certificates.md").read_text()
    assert "Table 5, MD-VAE" in printed and "| 2 | " in printed and os.path.getsize(out / "table5.png") > 0
    assert os.listdir(out / "tensorboard" / "gmd-leaky_relu-dz2-U3-mdvae")
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["n_alphabet"], r["seed"]) for r in rows] == [("3", "0"), ("3", "1"), ("5", "0"), ("5", "1")]
    assert all(0 <= float(r["mcc"]) <= 1 for r in rows)


@pytest.mark.parametrize("missing", ["critic_grad", "critic_grad_backward", "infonce_with_grad"])
def test_missing_native_op_on_the_device_is_a_clear_error(monkeypatch, missing):
    # e.g. a CUDA machine whose build has only the CPU kernels; the training step needs the backward and the fused
    # InfoNCE op too, so a missing one must fail before training, not at the first MCL step
    real = _backend._has_kernel
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, key: False if op == missing else real(op, key))
    with pytest.raises(ValueError, match=rf"mclcore::{missing} on cpu"):
        train(tiny(model="mdvae_mcl"), [0])
    assert train(tiny(model="mdvae"), [0])                   # models without MCL do not need the ops


def test_mcl_units_fall_back_to_the_cpu_when_cuda_cannot_run_the_ops(monkeypatch, capsys):
    # A GPU machine whose MCL ops have no usable CUDA backend (no triton, no CUDA C++ build): with device="auto"
    # the MD-VAE+MCL units run on the CPU and say so; an explicit --device cuda fails before any work.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_backend, "_cuda_devices", lambda: 1)
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, key: key == "CPU" or not op.startswith("_cuda_"))
    monkeypatch.setattr(_backend, "_triton_module", None)
    monkeypatch.setattr(_backend, "_triton_error", "ImportError: no triton here")
    study = _tiny_study(device="auto")
    assert study_run.choose_devices(study) == ("cuda", "cpu")
    assert "run on the CPU" in capsys.readouterr().err
    assert study_run.choose_devices(_tiny_study(device="auto", models=("mdvae",))) == ("cuda", "cuda")
    with pytest.raises(ValueError, match="critic_grad"):
        study_run.choose_devices(_tiny_study(device="cuda"))


def test_cli_mistakes_and_damaged_files_are_one_line_and_exit_code_2(tmp_path, capsys):
    from mclcore.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"dzs": [2], "alphabets": [3], "models": ["mdvae"], "seeds": 1, "certify_latents": 0,
                                  "tensorboard": False, "train": {"n": 300, "epochs": 1, "batch_size": 64,
                                                                  "hidden": 16}}))
    base = ["synthetic", "--config", str(config), "--no-progress"]

    def fails(argv, *needles):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(n in err for n in needles), err

    if not torch.cuda.is_available():
        fails([*base, "--device", "cuda", "--out", str(tmp_path / "cuda")], "--device", "CUDA is not available")
        assert not (tmp_path / "cuda").exists()                       # nothing written before the inputs are checked
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    fails([*base, "--out", str(blocker / "out")], "NotADirectoryError")
    out = tmp_path / "out"
    assert main([*base, "--out", str(out)]) == 0
    capsys.readouterr()
    unit = out / "units" / "gmd-leaky_relu-dz2-U3-mdvae.json"
    unit.write_text(unit.read_text()[:50])                              # a truncated unit record
    fails([*base, "--out", str(out)], str(unit), "not a readable unit record")
    unit.unlink()
    (out / "config.json").write_text("{")
    fails([*base, "--out", str(out)], "config.json is not a readable study config")
    fails([*base, "--epochs", "-1", "--out", str(tmp_path / "x")], "epochs")


def test_mcl_diagnostics_are_recorded_and_change_nothing():
    mcl = MCLConfig(multi_positive=True, critic_hidden=(16, 16), diagnose_every=3)
    diag = []
    rows = train(tiny(model="mdvae_mcl", mcl=mcl), [0, 1], diagnostics=diag)
    steps = 2 * math.ceil(320 / 64)
    assert [d["step"] for d in diag] == list(range(0, steps, 3))
    for r in rows:
        assert 0 <= r["mcl_acc"] <= 1 and 0 < r["mcl_chance"] < 1 and r["mcl_grad_ratio"] > 0
        assert 0 <= r["mcl_acc_generator_independent"] <= 1            # z of another row: a number, not NaN
    off = train(tiny(model="mdvae_mcl", mcl=dataclasses.replace(mcl, diagnose_every=0)), [0, 1])
    assert _numbers(off) == _numbers(rows)                    # diagnosing never changes the training


def test_relative_weighting_trains_deterministically_and_resumes(tmp_path):
    mcl = MCLConfig(multi_positive=True, critic_hidden=(16, 16), weighting="relative", diagnose_every=2)
    cfg = tiny(model="mdvae_mcl", mcl=mcl, epochs=3, lambda_mcl=1.0)
    diag = []
    ref = train(cfg, [0, 1], diagnostics=diag)
    assert all(abs(r - 1.0) < 1e-6 for d in diag for r in d["grad_ratio"])  # |grad w L_MCL| = 1 x |grad -ELBO|
    assert len({d["weight"][0] for d in diag}) > 1                              # the weight follows the ELBO
    ck = str(tmp_path / "unit.pt")
    _killed_after_epoch(cfg, ck, 2)
    assert _numbers(train(cfg, [0, 1], checkpoint=ck)) == _numbers(ref)


def test_inspect_mcl_prints_the_diagnostics_of_a_study(tmp_path, capsys):
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mclcore.cli import main
    from mclcore.losses.diagnostics import READ_KEYS

    study = _tiny_study(certify_latents=0, models=("mdvae_mcl",), lambda_grid=(0.1,), tensorboard=True,
                        train={"n": 400, "epochs": 2, "batch_size": 64, "hidden": 16,
                               "mcl": {"critic_hidden": [16, 16], "diagnose_every": 4}})
    study_run.run_study(study, str(tmp_path), progress=False)
    assert main(["inspect-mcl", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gmd-leaky_relu-dz2-U3-mdvae_mcl" in out and "shortcut" in out and len(out.splitlines()) >= 5
    assert "acc_gen_ind" in out
    (tb,) = glob.glob(str(tmp_path / "tensorboard" / "*"))         # every diagnostic but chance is a TB scalar
    ea = EventAccumulator(tb)
    ea.Reload()
    want = {f"mcl/{k}" for k in READ_KEYS if k != "chance"} | {"mcl/grad_ratio", "mcl/weight"}
    assert want <= set(ea.Tags()["scalars"]) and "mcl/chance" not in ea.Tags()["scalars"]
    assert main(["inspect-mcl", str(tmp_path), "--unit", "nope"]) == 2
    assert main(["inspect-mcl", str(tmp_path / "missing")]) == 2
