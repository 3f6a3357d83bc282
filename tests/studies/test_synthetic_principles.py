"""The principle models in the synthetic harness (compvae, mmdvae, qlae, intervae; issue #23): smoke, stacked
members equal one-by-one runs, determinism, resume, evaluation metrics, config errors, the principles preset.

Tiny configs (n 400, dz 2, 2-3 epochs, width 16): seconds on 2 cores.
"""
import dataclasses
import json
import math
import os

import pytest
import torch

from mclcore.losses.mcl import MCLConfig
from mclcore.models.principles import PRINCIPLE_MODELS
from mclcore.studies.synthetic import cli
from mclcore.studies.synthetic import run as study_run
from mclcore.studies.synthetic.config import MODELS, PRESETS, StudyConfig
from mclcore.studies.synthetic.train import TrainConfig, load_checkpoint, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.usefixtures("one_thread_module")


def tiny(**kw) -> TrainConfig:
    base = dict(dz=2, n_alphabet=3, n=400, epochs=2, batch_size=64, hidden=16,
                mcl=MCLConfig(multi_positive=True, critic_hidden=(16, 16)), checkpoint_every=1, comp_rows=16)
    base.update(kw)
    return TrainConfig(**base)


def _numbers(rows):
    return [(r["seed"], r["mcc"], r["mcc_spearman"], r["neg_elbo"], r["rec"], r["kl"], r["objective"],
             r["principle_loss"]) for r in rows]


def test_the_models_are_offered():
    assert set(PRINCIPLE_MODELS) <= set(MODELS)


@pytest.mark.parametrize("model", PRINCIPLE_MODELS)
def test_smoke_each_principle_model(model):
    rows = train(tiny(model=model), [0, 1])
    for r in rows:
        assert r["model"] == model and r["steps"] == 2 * math.ceil(320 / 64)
        assert 0.0 <= r["mcc"] <= 1.0 and math.isfinite(r["objective"]) and math.isfinite(r["principle_loss"])
        assert (r["active_dims"] is None) == (model == "qlae") and (r["kl_per_dim"] is None) == (model == "qlae")
        assert r["neg_elbo"] == pytest.approx(-r["rec"] if model == "qlae" else r["neg_elbo"])
        assert r["mcl_loss"] is None and "lps" not in r                   # eval_metrics off by default
    if model == "intervae":
        assert 0 < rows[0]["principle_loss"] < 1                          # the share of steps that intervened
    if model == "mmdvae":
        assert rows[0]["principle_loss"] < 0.5                            # MMD^2 of the codes to N(0, I)


@pytest.mark.parametrize("model", PRINCIPLE_MODELS)
def test_stacked_members_equal_one_by_one(model):
    cfg = tiny(model=model)
    batched = train(cfg, [0, 1, 0])
    single = [train(cfg, [s])[0] for s in (0, 1, 0)]
    for rb, rs in zip(batched, single):
        for k in ("mcc", "mcc_spearman", "rec", "kl", "objective", "principle_loss"):
            assert rb[k] == pytest.approx(rs[k], rel=1e-5, abs=1e-6), (model, k)
    assert batched[0]["objective"] != batched[1]["objective"]


@pytest.mark.parametrize("model", ["mmdvae", "intervae"])
def test_determinism_same_seed_same_numbers(model):
    cfg = tiny(model=model)
    a, b = train(cfg, [3, 4]), train(cfg, [3, 4])
    assert _numbers(a) == _numbers(b)                                      # bit-identical
    assert _numbers(train(cfg, [5, 6])) != _numbers(a)


@pytest.mark.parametrize("model", PRINCIPLE_MODELS)
def test_resume_inside_a_unit_gives_the_same_numbers(tmp_path, model):
    # mmdvae's prior samples and intervae's targets come from the member streams, qlae's AdamW state from the
    # optimiser: all must resume exactly.
    cfg = tiny(model=model, epochs=3)
    ref = train(cfg, [0, 1])
    ck = str(tmp_path / "unit.pt")

    class Killed(Exception):
        pass

    def kill(e, means):
        if e == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, [0, 1], checkpoint=ck, on_epoch=kill)
    assert load_checkpoint(ck)["step"] == 2 * math.ceil(320 / 64)
    assert _numbers(train(cfg, [0, 1], checkpoint=ck)) == _numbers(ref)


def test_principle_knobs_act():
    base = train(tiny(model="compvae"), [0])[0]
    off = train(tiny(model="compvae", comp_lambda=0.0), [0])[0]
    assert off["objective"] == pytest.approx(off["neg_elbo"], rel=1e-6) and base["objective"] > base["neg_elbo"]
    rbf = train(tiny(model="mmdvae", mmd_kernel="rbf"), [0])[0]
    assert rbf["objective"] != train(tiny(model="mmdvae"), [0])[0]["objective"]
    never = train(tiny(model="intervae", inter_prob=0.0), [0])[0]
    assert never["principle_loss"] == 0.0
    wd0 = train(tiny(model="qlae", qlae_weight_decay=0.0), [0])[0]
    assert wd0["objective"] != train(tiny(model="qlae"), [0])[0]["objective"]


def test_eval_metrics_add_columns_and_change_no_number():
    cfg = tiny(model="qlae")
    bare = train(cfg, [0, 1])
    rows = train(dataclasses.replace(cfg, eval_metrics=("lps_linear", "infomec")), [0, 1])
    assert _numbers(rows) == _numbers(bare)
    for r in rows:
        assert 0 <= r["lps"] <= r["lps_max"] <= 1
        for k in ("infomec_m", "infomec_e", "infomec_c"):
            assert 0 <= r[k] <= 1, k
    # on an existing model too: its numbers stay those of the run without the metrics
    ref = train(tiny(model="betavae"), [0])
    more = train(tiny(model="betavae", eval_metrics=("infomec",)), [0])
    assert [ref[0][k] for k in ("mcc", "neg_elbo", "kl")] == [more[0][k] for k in ("mcc", "neg_elbo", "kl")]
    assert "infomec_m" in more[0] and "lps" not in more[0]


@pytest.mark.parametrize("field, value", [
    ("mmd_kernel", "cauchy"), ("mmd_prior", "student"), ("mmd_weight", -1.0), ("mmd_bandwidths", ()),
    ("mmd_scales", (1.0, 0.0)), ("qlae_values", 1), ("qlae_weight_decay", float("nan")),
    ("qlae_commit_weight", -0.1), ("comp_lambda", -1.0), ("comp_rows", -1), ("comp_beta", float("inf")),
    ("inter_prob", 1.5), ("mmd_rows", 1), ("eval_metrics", ("mig",)), ("eval_metrics", ("lps", "lps_linear")),
    ("eval_metrics", ("factorvae", "factorvae")), ("eval_metrics", "factorvae")])
def test_bad_principle_fields_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        train(tiny(model="mmdvae", **{field: value}), [0])


def test_a_study_with_every_model_reports_them(tmp_path):
    study = StudyConfig.from_dict(dict(
        processes=["gmd"], dzs=[2], alphabets=[3], models=["betavae", *PRINCIPLE_MODELS], seeds=2,
        lambda_grid=[0.1], certify_latents=0, tensorboard=False,
        train={"n": 300, "epochs": 1, "batch_size": 64, "hidden": 16, "comp_rows": 16,
               "eval_metrics": ["lps_linear", "infomec", "dci_mig_sap"]}))
    paths = study_run.run_study(study, str(tmp_path), progress=False)
    table = open(paths["table"]).read()
    principles = open(paths["principles"]).read()
    for name in ("CompVAE", "MMD-VAE", "QLAE", "InterVAE"):
        assert f"| {name} | **" in table, name
        assert f"| {name} | " in principles and f"| {name} − β-VAE | " not in principles, name
    assert "| model | MCC | LPS | InfoM | InfoE | InfoC | DCI D | DCI C | MIG | SAP |" in principles
    import csv

    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"betavae", *PRINCIPLE_MODELS} and len(rows) == 10
    for r in rows:
        assert 0 <= float(r["infomec_m"]) <= 1 and 0 <= float(r["lps"]) <= 1 and 0 <= float(r["mig"]) <= 1
        assert (r["principle_loss"] == "") == (r["model"] == "betavae")


def test_principles_preset_is_pre_registered():
    p = PRESETS["principles"]
    assert p["models"] == ["betavae", "ivae", "mdvae", "compvae", "mmdvae", "qlae", "intervae"]
    assert p["dzs"] == [5] and p["alphabets"] == [8] and p["processes"] == ["gmd"] and p["seeds"] >= 5
    assert p["workers"] == 2 and p["train"]["epochs"] == PRESETS["quick"]["train"]["epochs"]
    assert p["train"]["n"] == PRESETS["quick"]["train"]["n"]
    with open(os.path.join(REPO, "experiments", "synthetic", "configs", "principles.json")) as f:
        assert json.load(f) == cli.preset("principles").to_dict()
    assert cli.preset("principles").validate().train.eval_metrics == ("lps", "infomec", "dci_mig_sap", "factorvae")


def test_dci_mig_sap_read_the_true_latents_and_not_a_mixture():
    """The binned-z DCI / MIG / SAP columns: near 1 for the true z itself (up to a permutation and scale), low for
    a random linear mixture of it; they can fail either way."""
    import types

    from mclcore.studies.synthetic.principles import eval_metrics

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 4, generator=g)
    cfg = types.SimpleNamespace(eval_metrics=("dci_mig_sap",))
    same = eval_metrics(cfg, z, 3 * z[:, [2, 0, 3, 1]], 0)
    mixed = eval_metrics(cfg, z, z @ torch.randn(4, 4, generator=g), 0)
    for k in ("dci_d", "dci_c", "mig", "sap"):
        assert same[k] > 0.9 and mixed[k] < 0.6, (k, same[k], mixed[k])


def test_principles_table_pairs_by_seed_against_md_vae():
    from mclcore.studies.synthetic.principles import principles_table

    rows = [{"process": "gmd", "dz": 5, "n_alphabet": 8, "model": m, "seed": s, "mcc": v + 0.01 * s, "mig": None}
            for m, v in (("mdvae", 0.5), ("qlae", 0.4)) for s in range(3)]
    text = principles_table(rows)
    assert "| MD-VAE | 0.51 [" in text and "| QLAE − MD-VAE | -0.10 [-0.10, -0.10] |" in text
    assert "MIG" not in text                                     # a column with no value anywhere is left out
    assert principles_table([dict(r, model="betavae") for r in rows]) is None


# ---- the FactorVAE column: fresh draws of the true process (principles.factorvae_synthetic) ----
FV_SMALL = dict(num_train=400, num_eval=300, num_variance_estimate=2000)


def _identity_process(dz: int, n_alphabet: int = 4, du: int = 3):
    """A SyntheticData stand-in whose true generator is x = z (so an encoder reading x reads the true z)."""
    import types

    alphabet = torch.randn(n_alphabet, du, generator=torch.Generator().manual_seed(0))
    return types.SimpleNamespace(dz=dz, alphabet=alphabet,
                                 prior_mean=torch.zeros(n_alphabet, dz), prior_std=torch.ones(n_alphabet, dz),
                                 generator=lambda z, u: z.clone())


def test_factorvae_synthetic_true_codes_score_one_and_blind_codes_chance():
    from mclcore.studies.synthetic.principles import factorvae_synthetic

    dz = 5
    data = _identity_process(dz)
    perm = [3, 0, 4, 1, 2]
    for encode in (lambda x, u: x, lambda x, u: 3 * x[:, perm] - 1):            # the true z, permuted and scaled
        r = factorvae_synthetic(data, encode, 0.0, 0, **FV_SMALL)
        assert r["factorvae.eval_accuracy"] == r["factorvae.train_accuracy"] == 1.0
        assert r["factorvae.num_active_dims"] == dz
    noisy = factorvae_synthetic(data, lambda x, u: x, 0.01, 0, **FV_SMALL)     # observation noise: still ~1
    assert noisy["factorvae.eval_accuracy"] > 0.95
    g = torch.Generator().manual_seed(1)
    blind = factorvae_synthetic(data, lambda x, u: torch.randn(x.shape, generator=g), 0.0, 0, **FV_SMALL)
    assert abs(blind["factorvae.eval_accuracy"] - 1 / dz) < 0.1               # codes independent of z: chance
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    rot = factorvae_synthetic(_identity_process(20), lambda x, u: x @ q.float(), 0.0, 0, **FV_SMALL)
    # A random rotation of 20 dims: far below 1, but above chance (0.05): the majority vote still maps each factor
    # to its most-loaded code, so FactorVAE only partly penalises a rotation (0.19-0.32 over 3 rotations, 2026-12).
    assert 0.05 < rot["factorvae.eval_accuracy"] < 0.5


def test_factorvae_synthetic_is_deterministic_given_the_seed():
    import numpy as np

    from mclcore.data.synthetic import make_dataset
    from mclcore.models.vae import StackedVAE
    from mclcore.studies.synthetic.principles import factorvae_synthetic, member_encoder

    data = make_dataset("lrd", 3, 4, n=200, seed=0)
    vae = StackedVAE("ivae", data.dx, data.du, 3, [5, 6])
    a, b = (factorvae_synthetic(data, member_encoder(vae, 1), 0.01, 7, return_votes=True, **FV_SMALL)
            for _ in range(2))
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    c = factorvae_synthetic(data, member_encoder(vae, 1), 0.01, 8, return_votes=True, **FV_SMALL)
    assert not (a["factorvae.train_votes"] == c["factorvae.train_votes"]).all()


@pytest.mark.parametrize("model", ["betavae", "ivae", "mdvae", *PRINCIPLE_MODELS])
def test_member_encoder_is_the_scored_posterior_mean(model):
    from mclcore.studies.synthetic.principles import member_encoder, principle_model
    from mclcore.models.vae import StackedVAE

    cfg = tiny(model=model)
    dx, du, M = 64, cfg.du, 3
    vae = principle_model(cfg, dx, [1, 2, 3]) if model in PRINCIPLE_MODELS else StackedVAE(model, dx, du, cfg.dz,
                                                                                           [1, 2, 3], hidden=16)
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(M, 50, dx, generator=g), torch.randn(M, 50, du, generator=g)
    ref = vae.posterior_mean(x, u)                                              # (M, 50, dz): what the MCC scores
    for m in range(M):
        torch.testing.assert_close(member_encoder(vae, m)(x[m], u[m]), ref[m], rtol=1e-5, atol=1e-5)


def test_factorvae_column_in_training_rows(monkeypatch):
    from mclcore.studies.synthetic import principles

    monkeypatch.setattr(principles, "FACTORVAE_PROTOCOL", {**principles.FACTORVAE_PROTOCOL, **FV_SMALL})
    cfg = tiny(model="intervae")
    bare = train(cfg, [0, 1])
    rows = train(dataclasses.replace(cfg, eval_metrics=("factorvae",)), [0, 1])
    assert _numbers(rows) == _numbers(bare)                                    # an evaluation column only
    again = train(dataclasses.replace(cfg, eval_metrics=("factorvae",)), [0, 1])
    for r, r2 in zip(rows, again):
        assert 0 <= r["factorvae"] <= 1 and 0 <= r["factorvae_train"] <= 1
        assert (r["factorvae"], r["factorvae_train"]) == (r2["factorvae"], r2["factorvae_train"])
    one = train(dataclasses.replace(cfg, eval_metrics=("factorvae",)), [1])    # a member's value is its own
    assert one[0]["factorvae"] == rows[1]["factorvae"]


def test_factorvae_needs_the_member_and_a_valid_sampler():
    import types

    import numpy as np

    from mclcore.metrics import factor_vae_score_sampled
    from mclcore.studies.synthetic.principles import eval_metrics

    z = torch.randn(100, 2)
    with pytest.raises(ValueError, match="'factorvae' needs member="):
        eval_metrics(types.SimpleNamespace(eval_metrics=("factorvae",), noise_var=0.01), z, z, 0)
    good = lambda n, b, held, rng: rng.standard_normal((n, b, 2))             # noqa: E731
    with pytest.raises(ValueError, match="n_factors"):
        factor_vae_score_sampled(good, 0)
    with pytest.raises(ValueError, match="batch_size"):
        factor_vae_score_sampled(good, 2, batch_size=1)
    with pytest.raises(ValueError, match=r"sample_codes: expected an array of shape \(1, 10000, K\)"):
        factor_vae_score_sampled(lambda n, b, held, rng: np.zeros((b, 2)), 2)
    with pytest.raises(ValueError, match="NaN"):
        factor_vae_score_sampled(lambda n, b, held, rng: np.full((n, b, 2), np.nan), 2)
