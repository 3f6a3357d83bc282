"""mclcore.metrics.infomec: known answers (identity, permuted and rescaled codes, mixed codes, a duplicated
source, noise), discrete inputs and bad inputs. N of a few thousand rows: about a second each on 2 cores."""
import numpy as np
import pytest

from mclcore.metrics import infomec
from mclcore.metrics.infomec import discretize_quantiles, nmi_matrix


def _sources(n=3000, k=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, k))


def test_identity_codes_score_one_on_modularity_and_compactness():
    s = _sources()
    r = infomec(s, s, return_matrix=True)
    assert r["infomec.m"] == pytest.approx(1.0, abs=0.02) and r["infomec.c"] == pytest.approx(1.0, abs=0.02)
    assert np.allclose(np.diag(r["infomec.nmi"]), 1.0, atol=0.01)      # less the bias correction
    off = r["infomec.nmi"][~np.eye(4, dtype=bool)]
    assert off.max() < 0.01                              # bias-corrected plug-in MI of independent pairs
    assert r["infomec.e"] > 0.6 and r["infomec.active"] == 4


def test_permuted_scaled_and_flipped_codes_score_the_same():
    s = _sources()
    base = infomec(s, s)
    z = s[:, [2, 0, 3, 1]] * np.array([3.0, 0.5, 4.0, 2.0]) + 7.0   # ranges within 20x: all active
    r = infomec(s, z)
    for k in ("infomec.m", "infomec.c"):                  # increasing maps keep every bin: the same numbers
        assert r[k] == pytest.approx(base[k], abs=1e-12), k
    assert r["infomec.e"] == pytest.approx(base["infomec.e"], abs=0.02)   # same linear information, refitted
    flipped = infomec(s, z * np.array([1.0, -1.0, 1.0, -1.0]))
    for k in ("infomec.m", "infomec.c", "infomec.e"):     # a flip moves boundary rows by one bin at most
        assert flipped[k] == pytest.approx(base[k], abs=2e-3), k


def test_mixed_codes_score_lower():
    s = _sources()
    rot = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))[0]
    mixed = infomec(s, s @ rot)
    ident = infomec(s, s)
    assert mixed["infomec.m"] < ident["infomec.m"] - 0.3 and mixed["infomec.c"] < ident["infomec.c"] - 0.3
    noise = infomec(s, _sources(seed=5))                  # codes independent of the sources
    assert noise["infomec.e"] < 0.05 and noise["infomec.e"] < ident["infomec.e"] - 0.5


def test_a_source_spread_over_two_latents_lowers_compactness_not_modularity():
    s = _sources(k=2)
    z = np.c_[s[:, 0], s[:, 0] + 0.01 * np.random.default_rng(2).standard_normal(len(s)), s[:, 1]]
    r = infomec(s, z)
    assert r["infomec.m"] > 0.9 and r["infomec.c"] < 0.8


def test_inactive_latents_are_pruned():
    s = _sources(k=2)
    z = np.c_[s, 1e-4 * _sources(k=1, seed=3)]                # a third latent with a tiny range
    r = infomec(s, z)
    assert r["infomec.active"] == 2 and r["infomec.m"] == pytest.approx(infomec(s, s)["infomec.m"])


def test_discrete_sources_and_codes():
    rng = np.random.default_rng(4)
    f = rng.integers(0, 5, (2000, 3))
    r = infomec(f, f.astype(float), discrete_latents=True, return_matrix=True)
    assert r["infomec.m"] == pytest.approx(1.0, abs=1e-4) and r["infomec.c"] == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(np.diag(r["infomec.nmi"]), 1.0, atol=0.005)    # 1 less the bias correction (16 / 4000 nats)
    q = discretize_quantiles(np.arange(100.0)[:, None], 4)
    assert np.bincount(q[:, 0]).tolist() == [25, 25, 25, 25]
    assert nmi_matrix(q, q, bias_correction=False)[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("kw, match", [
    (dict(codes=np.zeros((50, 2))), "constant"),
    (dict(codes=np.ones((49, 2))), "codes"),
    (dict(sources=np.c_[np.ones(50), np.arange(50.0)]), "sources"),
    (dict(codes=np.full((50, 2), np.nan)), "NaN"),
    (dict(n_bins=1), "n_bins"),
    (dict(latent_bins=True), "latent_bins"),
    (dict(active_fraction=1.5), "active_fraction"),
    (dict(sources=np.zeros((5, 2)), codes=np.zeros((5, 2))), "10 rows"),
    (dict(codes=np.zeros(50)), "codes"),
])
def test_bad_inputs_name_the_argument(kw, match):
    args = dict(sources=_sources(50, 2), codes=_sources(50, 2, seed=1))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        infomec(args.pop("sources"), args.pop("codes"), **args)
