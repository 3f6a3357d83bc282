"""MCC and the Latent Predictability Score on arrays with known answers."""
import numpy as np
import pytest

from mclcore.data import DSpritesRender
from mclcore.metrics import lps, lps_from_codes, mcc

RNG = np.random.default_rng(0)
Z = RNG.normal(size=(3000, 4))


def test_mcc_permutation_and_scaling_is_perfect():
    z_hat = np.c_[-2 * Z[:, 3], Z[:, 0] + 5, 0.1 * Z[:, 2], Z[:, 1]]
    out = mcc(Z, z_hat, return_matching=True)
    assert out["mcc.mean"] == pytest.approx(1.0)
    rows, cols = out["mcc.matching"]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 3, 2: 2, 3: 0}


def test_mcc_spearman_sees_monotone_nonlinear_maps():
    z_hat = np.exp(3 * Z)
    assert mcc(Z, z_hat, "spearman")["mcc.mean"] == pytest.approx(1.0)
    assert mcc(Z, z_hat, "pearson")["mcc.mean"] < 0.8


def test_mcc_random_is_low_and_rectangular_ok():
    assert mcc(Z, RNG.normal(size=(3000, 4)))["mcc.mean"] < 0.1
    assert mcc(Z, np.c_[RNG.normal(size=3000), Z])["mcc.mean"] == pytest.approx(1.0)   # 4 true vs 5 estimated
    assert mcc(Z, np.c_[Z[:, :2], RNG.normal(size=(3000, 3))])["mcc.mean"] < 0.6      # two of four recovered


def test_mcc_errors():
    with pytest.raises(ValueError, match="constant"):
        mcc(Z, np.c_[Z[:, :3], np.ones(3000)])
    with pytest.raises(ValueError, match="NaN"):
        mcc(Z, np.where(Z > 3, np.nan, Z))
    with pytest.raises(ValueError, match="rows"):
        mcc(Z, Z[:10])
    with pytest.raises(ValueError, match="method"):
        mcc(Z, Z, "kendall")


FAST = dict(steps=300)


def test_lps_independent_vs_dependent_codes():
    indep = lps_from_codes(Z, **FAST)
    assert indep["lps.score"] < 0.05
    redundant = np.c_[Z, Z[:, 0] + Z[:, 1]]
    lin = lps_from_codes(redundant, regressor="linear")
    assert lin["lps.max"] > 0.99 and lin["lps.score"] > 0.5
    assert lps_from_codes(redundant, **FAST)["lps.max"] > 0.9
    # nonlinear dependence: invisible to the linear regressor, found by the MLP
    sq = np.c_[Z[:, :3], Z[:, 0] ** 2]
    assert lps_from_codes(sq, regressor="linear")["lps.max"] < 0.05
    assert lps_from_codes(sq, steps=800, return_per_dim=True)["lps.per_dim"][3] > 0.7


def test_lps_is_seeded_and_checks_inputs():
    a, b = lps_from_codes(Z[:500], seed=3, **FAST), lps_from_codes(Z[:500], seed=3, **FAST)
    assert a == b
    with pytest.raises(ValueError, match="K >= 2"):
        lps_from_codes(Z[:, :1])
    with pytest.raises(ValueError, match="constant"):
        lps_from_codes(np.c_[Z, np.zeros(3000)])
    with pytest.raises(ValueError, match="regressor"):
        lps_from_codes(Z, regressor="forest")
    with pytest.raises(ValueError, match="inf"):
        lps_from_codes(np.where(Z > 3, np.inf, Z))


def test_lps_on_a_dataset():
    ds = DSpritesRender()

    def rep(obs):                                   # sprite centroid x, y and area: x, y independent of area
        m = obs[..., 0] > 0
        ys, xs = np.mgrid[:64, :64]
        area = m.sum((1, 2)) + 1e-9
        return np.c_[(m * xs).sum((1, 2)) / area, (m * ys).sum((1, 2)) / area, area]

    out = lps(ds, rep, 0, num_samples=1000, regressor="linear")
    assert 0 <= out["lps.score"] < 0.1
