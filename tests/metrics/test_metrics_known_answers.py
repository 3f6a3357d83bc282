"""Disentanglement metrics with known answers, on a dataset whose images carry their own grid index.

The representations below read the index back from the pixels, so a "representation" can be any function of the
ground-truth factors: the factors themselves (perfect), permuted and monotonically rescaled factors (still perfect),
independent noise (chance), or a mixture (worse). Sample counts are small to keep the file at a few seconds.
"""
import numpy as np
import pytest

from mclcore.data import GroundTruthDataset
from mclcore.metrics import (DCI_MODELS, EncodedDataset, dci, dci_from_codes, evaluate, factor_vae_score, mig,
                             mig_from_codes, sap, sap_from_codes)
from mclcore.metrics.dci import DCI_DEFAULT_MODEL
from mclcore.metrics.utils import MAX_CACHE_BYTES, cache_bytes


class IndexImages(GroundTruthDataset):
    name = "index_images"

    def __init__(self, sizes=(4, 5, 6, 3)):
        super().__init__([f"f{i}" for i in range(len(sizes))], sizes)

    def _observations(self, index):
        out = np.zeros((index.size, 64, 64, 3), dtype=np.uint8)
        out[:, 0, 0, 0], out[:, 0, 0, 1] = index % 256, index // 256
        return out


def read_index(obs):
    return obs[:, 0, 0, 0].astype(np.int64) + 256 * obs[:, 0, 0, 1].astype(np.int64)


DS = IndexImages()


def factors_rep(obs):
    return DS.index_to_factors(read_index(obs)).astype(np.float64)


def permuted_rescaled_rep(obs):
    f = factors_rep(obs)
    return np.c_[np.exp(f[:, 2]) * 3.0, -7.0 * f[:, 0] + 1.0, f[:, 3] ** 3 + 0.5, np.log1p(f[:, 1]) * 10]


NOISE = np.random.default_rng(123).normal(size=(len(DS), 4))


def noise_rep(obs):
    return NOISE[read_index(obs)]


def mixed_rep(obs):
    f = factors_rep(obs)
    return np.c_[f[:, 0] / 3 + f[:, 1] / 4, f[:, 1], f[:, 2], f[:, 3]]


FV = dict(num_train=300, num_eval=200, num_variance_estimate=1000)
SMALL = dict(num_train=500, num_test=300)


def test_factorvae_perfect_and_invariant():
    for rep in (factors_rep, permuted_rescaled_rep):
        s = factor_vae_score(DS, rep, 0, **FV)
        assert s["factorvae.eval_accuracy"] == 1.0 and s["factorvae.train_accuracy"] == 1.0
        assert s["factorvae.num_active_dims"] == 4


def test_factorvae_random_is_near_chance():
    s = factor_vae_score(DS, noise_rep, 0, **FV)
    assert s["factorvae.eval_accuracy"] < 0.25 + 0.15                 # 4 factors: chance 0.25


def test_factorvae_pruned_vote_index_gives_same_accuracy():
    def with_dead_unit(obs):
        f = factors_rep(obs)
        return np.c_[0.001 * f[:, 0], f[:, 1], f[:, 0], f[:, 2], f[:, 3]]   # dim 0: std < 0.05, pruned

    a = factor_vae_score(DS, with_dead_unit, 3, return_votes=True, **FV)
    b = factor_vae_score(DS, with_dead_unit, 3, vote_index="pruned", return_votes=True, **FV)
    assert a["factorvae.num_active_dims"] == 4
    assert a["factorvae.eval_accuracy"] == b["factorvae.eval_accuracy"] == 1.0
    assert a["factorvae.train_votes"][:, 0].sum() == 0                 # pruned dim never voted for
    assert b["factorvae.train_votes"][:, 4].sum() == 0                 # pruned positions fill columns 0..3
    assert np.array_equal(a["factorvae.train_votes"][:, 1:], b["factorvae.train_votes"][:, :4])


def test_factorvae_all_pruned_warns_and_scores_zero():
    with pytest.warns(RuntimeWarning, match="prune_threshold"):
        s = factor_vae_score(DS, lambda o: 1e-4 * factors_rep(o), 0, **FV)
    assert s["factorvae.eval_accuracy"] == 0.0 and s["factorvae.num_active_dims"] == 0


# DCI fits 100 boosting rounds per class and factor; a grid with few classes keeps these tests to seconds.
DS2 = IndexImages((3, 4, 2))


def small_rep(transform):
    return lambda obs: transform(DS2.index_to_factors(read_index(obs)).astype(np.float64))


def test_dci_known_answers():
    perfect = dci(DS2, small_rep(lambda f: f), 0, **SMALL)
    assert perfect["dci.disentanglement"] > 0.95 and perfect["dci.completeness"] > 0.95
    assert perfect["dci.informativeness_test"] > 0.99
    # permuted, monotonically rescaled codes: tree splits see only the order of values, so the same partitions
    # and the same scores (with gbt, the default, as with hist_gbt)
    rescaled = dci(DS2, small_rep(lambda f: np.c_[np.exp(f[:, 2]), -3 * f[:, 0], f[:, 1] ** 3]), 0, **SMALL)
    assert rescaled["dci.disentanglement"] == pytest.approx(perfect["dci.disentanglement"], abs=1e-9)
    assert rescaled["dci.completeness"] == pytest.approx(perfect["dci.completeness"], abs=1e-9)
    mixed = dci(DS2, small_rep(lambda f: np.c_[f[:, 0] / 2 + f[:, 1] / 3, f[:, 1], f[:, 2]]), 0, **SMALL)
    assert mixed["dci.disentanglement"] < perfect["dci.disentanglement"] - 0.1
    assert mixed["dci.informativeness_test"] > 0.99                   # still informative, just entangled
    # per factor: a code that drops factor 1 holds factors 0 and 2 only (the mean is the per-factor mean)
    dropped = dci(DS2, small_rep(lambda f: np.c_[f[:, 0], f[:, 2]]), 0, **SMALL)
    per = dropped["dci.informativeness_test_per_factor"]
    assert len(per) == 3 and per[0] > 0.99 and per[2] > 0.99 and per[1] < 0.8
    assert np.mean(per) == pytest.approx(dropped["dci.informativeness_test"], abs=1e-12)


def test_dci_random_codes():
    noise = np.random.default_rng(5).normal(size=(len(DS2), 3))
    out = dci(DS2, lambda obs: noise[read_index(obs)], 0, **SMALL)
    # a fixed random code per grid point identifies the point (trees can memorise it) but no code dimension is
    # about one factor: disentanglement and completeness near 0
    assert out["dci.disentanglement"] < 0.2 and out["dci.completeness"] < 0.2


@pytest.mark.parametrize("model", ["gbt", "lasso"])
def test_dci_other_models(model):
    n = 300 if model == "gbt" else 1500
    perfect = dci(DS2, small_rep(lambda f: f), 0, num_train=n, num_test=200, model=model)
    assert perfect["dci.disentanglement"] > 0.9
    if model == "lasso":
        mixed = dci(DS2, small_rep(lambda f: np.c_[f[:, 0] + f[:, 1], f[:, 1], f[:, 2]]), 0, num_train=n,
                    num_test=200, model=model)
        assert mixed["dci.disentanglement"] < perfect["dci.disentanglement"] - 0.1


def test_mig_and_sap_known_answers():
    m_perfect = mig(DS, factors_rep, 0, num_train=3000)["mig.score"]
    m_rescaled = mig(DS, permuted_rescaled_rep, 0, num_train=3000)["mig.score"]
    m_noise = mig(DS, noise_rep, 0, num_train=3000)["mig.score"]
    assert m_perfect > 0.95 and m_rescaled > 0.9 and m_noise < 0.05
    s_perfect = sap(DS, factors_rep, 0, num_train=1000, num_test=500)["sap.score"]
    s_noise = sap(DS, noise_rep, 0, num_train=1000, num_test=500)["sap.score"]
    assert s_perfect > 0.2 and s_noise < 0.05
    # continuous variant: squared correlation of a linear code is 1, the top-two gap is then 1
    f = DS.sample_factors(2000, 0)
    assert sap_from_codes(f.astype(float), f, continuous_factors=True)["sap.score"] == pytest.approx(1.0, abs=0.01)


def test_seeded_runs_are_deterministic():
    rep = small_rep(lambda f: np.c_[f[:, 0] / 2 + f[:, 1] / 3, f[:, 1], f[:, 2]])
    a = evaluate(DS2, rep, ("factorvae", "dci", "mig", "sap"), seed=5, sample_scale=0.03)[0]
    b = evaluate(DS2, rep, ("factorvae", "dci", "mig", "sap"), seed=5, sample_scale=0.03)[0]
    c = evaluate(DS, noise_rep, ("factorvae",), seed=6, sample_scale=0.05)[0]
    d = evaluate(DS, noise_rep, ("factorvae",), seed=7, sample_scale=0.05)[0]
    assert a == b
    assert c != d


def test_cache_encodes_each_grid_point_once():
    calls = []

    def counting(obs):
        calls.append(len(obs))
        return factors_rep(obs)

    enc = EncodedDataset(DS, counting, batch_size=128)
    s1 = factor_vae_score(DS, enc, 0, **FV)
    assert enc.encoded <= len(DS) == 360
    uncached = EncodedDataset(DS, factors_rep, cache=False)
    s2 = factor_vae_score(DS, uncached, 0, **FV)
    assert s1 == s2 and uncached.encoded == 1000 + 64 * (300 + 200)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"expected shape \(N, K\)"):
        factor_vae_score(DS, lambda o: factors_rep(o)[:, 0], 0, **FV)
    with pytest.raises(ValueError, match="expected 64 rows|rows"):
        dci(DS, lambda o: factors_rep(o)[:-1], 0, **SMALL)
    with pytest.raises(ValueError, match="NaN"):
        mig(DS, lambda o: np.where(factors_rep(o) > 2, np.nan, 0.0), 0, num_train=500)
    with pytest.raises(ValueError, match="inf"):
        sap(DS, lambda o: np.full((len(o), 2), np.inf), 0, num_train=100, num_test=50)
    with pytest.raises(ValueError, match="constant"):
        factor_vae_score(DS, lambda o: np.ones((len(o), 3)), 0, **FV)
    with pytest.raises(ValueError, match="constant"):
        dci_from_codes(np.zeros((50, 2)), np.arange(100).reshape(50, 2) % 3, np.zeros((20, 2)),
                       np.zeros((20, 2), int))
    with pytest.raises(ValueError, match="integer"):
        mig_from_codes(np.random.default_rng(0).normal(size=(50, 2)), np.linspace(0, 1, 100).reshape(50, 2))
    with pytest.raises(ValueError, match="single value"):
        mig_from_codes(np.random.default_rng(0).normal(size=(50, 2)), np.zeros((50, 1), int))
    with pytest.raises(ValueError, match="model"):
        dci(DS, factors_rep, 0, model="xgboost")
    with pytest.raises(ValueError, match="vote_index"):
        factor_vae_score(DS, factors_rep, 0, vote_index="both")
    with pytest.raises(TypeError, match="rng"):
        mig(DS, factors_rep, np.random.RandomState(0))
    with pytest.raises(ValueError, match="metrics"):
        evaluate(DS, factors_rep, ("beta_vae",))


def test_dci_default_is_disentanglement_libs_gbt():
    # every default inside mclcore.metrics follows dci.DCI_DEFAULT_MODEL: the functions, evaluate and `mcl eval`
    import argparse
    import inspect

    from mclcore.metrics.cli import add_arguments

    assert DCI_DEFAULT_MODEL == "gbt" and set(DCI_MODELS) == {"gbt", "hist_gbt", "lasso"}
    assert inspect.signature(evaluate).parameters["dci_model"].default == "gbt"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--model", "m.pt", "--dataset", "shapes3d"]).dci_model == "gbt"
    a = dci(DS2, small_rep(lambda f: f), 0, num_train=300, num_test=200)
    b = dci(DS2, small_rep(lambda f: f), 0, num_train=300, num_test=200, model="gbt")
    assert a == b


def test_dci_hist_gbt_gives_a_duplicated_code_no_importance():
    # The documented bias of the fast option: on a tie in split gain HistGradientBoosting keeps the first feature,
    # so the copy in codes [z, z] gets exactly zero importance and completeness is 1; gbt shares it between the two
    # (disentanglement_lib's duplicated-code test, tests/metrics/test_conformance.py, expects 0.60-0.80).
    f = DS2.sample_factors(600, 0)
    z = f.astype(np.float64)
    codes = np.hstack([z, z])
    hist = dci_from_codes(codes[:400], f[:400], codes[400:], f[400:], model="hist_gbt", return_importance=True)
    assert np.all(hist["dci.importance_matrix"][3:] == 0) and hist["dci.completeness"] == pytest.approx(1.0)
    gbt = dci_from_codes(codes[:400], f[:400], codes[400:], f[400:], model="gbt", return_importance=True)
    assert np.all(gbt["dci.importance_matrix"][3:].sum(axis=0) > 0.2 * gbt["dci.importance_matrix"].sum(axis=0))
    assert gbt["dci.completeness"] < 0.9


class HugeGrid(GroundTruthDataset):
    """disentanglement_lib's test grid, 10 factors x 10 values = 10^10 points; never renders anything here."""

    name = "huge_grid"

    def __init__(self):
        super().__init__([f"f{i}" for i in range(10)], [10] * 10)

    def _observations(self, index):
        out = np.zeros((index.size, 64, 64, 3), dtype=np.uint8)
        out[:, 0, :10, 0] = self.index_to_factors(index)
        return out


def test_code_cache_size_guard():
    huge = HugeGrid()
    assert len(huge) == 10**10 and cache_bytes(10**10, 1) > MAX_CACHE_BYTES
    calls = []

    def rep(obs):
        calls.append(len(obs))
        return obs[:, 0, :10, 0].astype(np.float64)

    # the lower bound (one code dim) fails at construction: nothing is encoded, nothing allocated
    with pytest.raises(ValueError, match=r"^dataset: a code cache of 10000000000 points x at least 1 dim"
                                         r".*at least 83.8 GiB.*cache=False"):
        EncodedDataset(huge, rep)
    for metric, kw in ((dci, dict(num_train=100, num_test=50)), (mig, dict(num_train=100)),
                       (factor_vae_score, dict(num_train=10, num_eval=10, num_variance_estimate=100))):
        with pytest.raises(ValueError, match="^dataset: a code cache"):
            metric(huge, rep, 0, **kw)
    with pytest.raises(ValueError, match="^dataset: a code cache"):
        evaluate(huge, rep, ("mig",), sample_scale=0.01)
    assert calls == []
    # cache=False encodes every sample instead, as disentanglement_lib does: the metric runs
    assert mig(huge, rep, 0, num_train=500, cache=False)["mig.score"] > 0.9 and sum(calls) == 500
    # the exact size is checked once the code width K is known, before the cache is allocated
    calls.clear()
    enc = EncodedDataset(DS, factors_rep, max_cache_bytes=len(DS) * 9)       # passes the 1-dim bound (360 x 9 B)
    with pytest.raises(ValueError, match=r"360 points x 4 dims.*11.6 KiB \(11880 bytes\)"):
        enc.codes_at(np.arange(10))
    assert enc._store is None and enc._have is None
    assert EncodedDataset(DS, factors_rep, max_cache_bytes=len(DS) * 33).codes_at(np.arange(3)).shape == (3, 4)
    with pytest.raises(ValueError, match="max_cache_bytes"):
        EncodedDataset(DS, factors_rep, max_cache_bytes=-1)
