"""disentanglement_lib's own metric unit tests, re-run on mclcore.metrics (conformance).

Each test below mirrors one test case of google-research/disentanglement_lib
(``disentanglement_lib/evaluation/metrics/{factor_vae,dci,mig,sap_score}_test.py``): the same scenario, the same
sample counts and the same accepted range, written against our API. Passing them is what lets us say our defaults
reproduce disentanglement_lib, and a regression (such as DCI's former ``hist_gbt`` default, which gave a
duplicated code completeness 1.0 where disentanglement_lib expects 0.60-0.80) fails here by name.

Their data set, ``dummy_data.IdentityObservationsData``, has 10 factors with values 1..10 and returns the factors
themselves as observations. :class:`IdentityObservations` is that grid as a GroundTruthDataset: each image carries
its factor classes in pixels, and :func:`identity` reads them back as codes 1..10. The grid has 10^10 points, far
too many for the per-grid-point code cache, so every dataset-level call passes ``cache=False`` (which is also how
disentanglement_lib encodes: every sampled observation).

Deviation: disentanglement_lib's "bad metric" cases use an all-zero representation. mclcore refuses codes that are
constant in every dimension with a ValueError (a collapsed representation, see
``test_metrics_known_answers.py::test_clear_errors``), so those tests check that refusal and then the accepted range
on a representation that carries no information without being constant (independent noise; for FactorVAE, noise
small enough to be pruned, which takes disentanglement_lib's own "all dimensions pruned" path).
"""
import numpy as np
import pytest

from mclcore.data import GroundTruthDataset
from mclcore.metrics import completeness, dci, disentanglement, factor_vae_score, mig, sap

NUM_FACTORS = 10


class IdentityObservations(GroundTruthDataset):
    """10 factors x 10 values; the observation of a grid point stores its factor classes in row 0 of channel 0."""

    name = "identity_observations"

    def __init__(self):
        super().__init__([f"f{i}" for i in range(NUM_FACTORS)], [10] * NUM_FACTORS)

    def _observations(self, index):
        out = np.zeros((index.size, 64, 64, 3), dtype=np.uint8)
        out[:, 0, :NUM_FACTORS, 0] = self.index_to_factors(index)
        return out


DS = IdentityObservations()


def identity(obs):
    """The factors as codes, with disentanglement_lib's values 1..10 (our classes are 0..9)."""
    return obs[:, 0, :NUM_FACTORS, 0].astype(np.float64) + 1.0


def duplicated(obs):
    z = identity(obs)
    return np.hstack([z, z])


def noise(seed, scale=1.0):
    """A representation ignoring its input: fresh normal codes (NUM_FACTORS dims) at every call, seeded."""
    g = np.random.default_rng(seed)
    return lambda obs: scale * g.normal(size=(len(obs), NUM_FACTORS))


def zeros(obs):
    return np.zeros((len(obs), NUM_FACTORS))


def assert_between(x, lo, hi):
    """absltest's assertBetween (inclusive), with float round-off slack."""
    assert lo - 1e-12 <= x <= hi + 1e-12, f"{x} not in [{lo}, {hi}]"


# ---------------------------------------------------------------------------------------------------- FactorVAE
FV = dict(batch_size=5, num_train=3000, num_eval=2000, num_variance_estimate=2500, cache=False)


def test_factor_vae_metric():
    """factor_vae_test.py FactorVaeTest.test_metric: identity codes score 0.9-1.0 (train and eval)."""
    s = factor_vae_score(DS, identity, 0, **FV)
    assert_between(s["factorvae.train_accuracy"], 0.9, 1.0)
    assert_between(s["factorvae.eval_accuracy"], 0.9, 1.0)


def test_factor_vae_bad_metric():
    """factor_vae_test.py FactorVaeTest.test_bad_metric: an uninformative code scores 0.0-0.2 (see module doc)."""
    with pytest.raises(ValueError, match="constant"):
        factor_vae_score(DS, zeros, 0, **FV)
    with pytest.warns(RuntimeWarning, match="prune_threshold"):     # std 1e-3 < 0.05: every dim pruned
        s = factor_vae_score(DS, noise(0, scale=1e-3), 0, **FV)
    assert_between(s["factorvae.train_accuracy"], 0.0, 0.2)
    assert_between(s["factorvae.eval_accuracy"], 0.0, 0.2)


# ------------------------------------------------------------------------------- DCI on importance matrices
def diag5():
    return np.diag(5.0 * np.ones(5))


def test_dci_disentanglement_diagonal():
    """dci_test.py DisentanglementTest.test_diagonal: a diagonal importance matrix is perfectly disentangled."""
    assert disentanglement(diag5()) == pytest.approx(1.0)


def test_dci_disentanglement_diagonal_empty_codes():
    """dci_test.py DisentanglementTest.test_diagonal_empty_codes: an unused code (zero row) changes nothing."""
    assert disentanglement(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])) == pytest.approx(1.0)


def test_dci_disentanglement_zero():
    """dci_test.py DisentanglementTest.test_zero: an all-zero importance matrix scores 0."""
    assert disentanglement(np.zeros((10, 10))) == pytest.approx(0.0)


def test_dci_disentanglement_redundant_codes():
    """dci_test.py DisentanglementTest.test_redundant_codes: each factor in two codes is still disentangled."""
    assert disentanglement(np.vstack([diag5(), diag5()])) == pytest.approx(1.0)


def test_dci_disentanglement_missed_factors():
    """dci_test.py DisentanglementTest.test_missed_factors: codes for 2 of 5 factors are disentangled."""
    assert disentanglement(diag5()[:2, :]) == pytest.approx(1.0)


def test_dci_disentanglement_one_code_two_factors():
    """dci_test.py DisentanglementTest.test_one_code_two_factors: each code split over 2 of 10 factors."""
    assert disentanglement(np.hstack([diag5(), diag5()])) == pytest.approx(1.0 - np.log(2) / np.log(10))


def test_dci_completeness_diagonal():
    """dci_test.py CompletenessTest.test_diagonal."""
    assert completeness(diag5()) == pytest.approx(1.0)


def test_dci_completeness_diagonal_empty_codes():
    """dci_test.py CompletenessTest.test_diagonal_empty_codes."""
    assert completeness(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])) == pytest.approx(1.0)


def test_dci_completeness_zero():
    """dci_test.py CompletenessTest.test_zero (atol 1e-7)."""
    assert completeness(np.zeros((10, 10))) == pytest.approx(0.0, abs=1e-7)


def test_dci_completeness_redundant_codes():
    """dci_test.py CompletenessTest.test_redundant_codes: each factor split over 2 of 10 codes."""
    assert completeness(np.vstack([diag5(), diag5()])) == pytest.approx(1.0 - np.log(2) / np.log(10))


def test_dci_completeness_missed_factors():
    """dci_test.py CompletenessTest.test_missed_factors: factors no code captures do not count."""
    assert completeness(diag5()[:2, :]) == pytest.approx(1.0)


def test_dci_completeness_one_code_two_factors():
    """dci_test.py CompletenessTest.test_one_code_two_factors: each factor still in a single code."""
    assert completeness(np.hstack([diag5(), diag5()])) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- DCI on the dataset (default model)
# disentanglement_lib: compute_dci(..., num_train=1000, num_test=1000) with GradientBoostingClassifier - our default.
# 10 factors x 10 classes x 100 rounds = 10,000 trees per call: ~15-30 s each on the shared 2-core box.
DCI_N = dict(num_train=1000, num_test=1000, cache=False)


@pytest.mark.slow
def test_dci_metric():
    """dci_test.py DCITest.test_metric: identity codes, disentanglement and completeness 0.9-1.0."""
    s = dci(DS, identity, 0, **DCI_N)
    assert_between(s["dci.disentanglement"], 0.9, 1.0)
    assert_between(s["dci.completeness"], 0.9, 1.0)


@pytest.mark.slow
def test_dci_bad_metric():
    """dci_test.py DCITest.test_bad_metric: each sample's code is a random permutation of its factors, so every
    code matters a little for every factor: disentanglement and completeness 0.0-0.2."""
    g = np.random.default_rng(0)
    s = dci(DS, lambda obs: g.permuted(identity(obs), axis=1), 0, **DCI_N)
    assert_between(s["dci.disentanglement"], 0.0, 0.2)
    assert_between(s["dci.completeness"], 0.0, 0.2)


@pytest.mark.slow
def test_dci_duplicated_latent_space():
    """dci_test.py DCITest.test_duplicated_latent_space: codes [z, z]; disentanglement 0.9-1.0, completeness
    within 0.1 of 1 - log 2 / log 10 (0.60-0.80). ``hist_gbt`` fails this (completeness 1.0, see dci.py)."""
    s = dci(DS, duplicated, 0, **DCI_N)
    assert_between(s["dci.disentanglement"], 0.9, 1.0)
    target = 1.0 - np.log(2) / np.log(10)
    assert_between(s["dci.completeness"], target - 0.1, target + 0.1)


# ---------------------------------------------------------------------------------------------------------- MIG
# disentanglement_lib binds an identity discretizer (the codes are already classes); our 20 equal-width bins over
# codes 1..10 put each value in its own bin, the same partition, so the default histogram is used.
def test_mig_metric():
    """mig_test.py MIGTest.test_metric: identity codes, MIG 0.9-1.0 (3000 samples)."""
    assert_between(mig(DS, identity, 0, num_train=3000, cache=False)["mig.score"], 0.9, 1.0)


def test_mig_bad_metric():
    """mig_test.py MIGTest.test_bad_metric: an uninformative code, MIG 0.0-0.2 (see module doc)."""
    with pytest.raises(ValueError, match="constant"):
        mig(DS, zeros, 0, num_train=3000, cache=False)
    assert_between(mig(DS, noise(0), 0, num_train=3000, cache=False)["mig.score"], 0.0, 0.2)


def test_mig_duplicated_latent_space():
    """mig_test.py MIGTest.test_duplicated_latent_space: codes [z, z] leave no gap, MIG 0.0-0.1."""
    assert_between(mig(DS, duplicated, 0, num_train=3000, cache=False)["mig.score"], 0.0, 0.1)


# ---------------------------------------------------------------------------------------------------------- SAP
SAP_N = dict(num_train=3000, num_test=3000, continuous_factors=True, cache=False)


def test_sap_metric():
    """sap_score_test.py SapScoreTest.test_metric: identity codes, continuous factors, SAP 0.9-1.0."""
    assert_between(sap(DS, identity, 0, **SAP_N)["sap.score"], 0.9, 1.0)


def test_sap_bad_metric():
    """sap_score_test.py SapScoreTest.test_bad_metric: an uninformative code, SAP 0.0-0.2 (see module doc)."""
    with pytest.raises(ValueError, match="constant"):
        sap(DS, zeros, 0, **SAP_N)
    assert_between(sap(DS, noise(0), 0, **SAP_N)["sap.score"], 0.0, 0.2)


def test_sap_duplicated_latent_space():
    """sap_score_test.py SapScoreTest.test_duplicated_latent_space: codes [z, z] leave no gap, SAP 0.0-0.2."""
    assert_between(sap(DS, duplicated, 0, **SAP_N)["sap.score"], 0.0, 0.2)
