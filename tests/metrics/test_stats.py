import numpy as np
import pytest

from mclcore.metrics.stats import bootstrap_ci, summarize


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 10), rng.normal(1.0, 1.0, 1000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < 1.0 < hi_l and (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert bootstrap_ci(small) == bootstrap_ci(small)                         # seeded: reproducible
    s = summarize([0.1, 0.2, 0.3])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.2) and s["lo"] <= 0.2 <= s["hi"]
    assert np.isnan(summarize([0.5])["lo"])


@pytest.mark.parametrize("values, match", [([1.0], "at least 2"), ([1.0, float("nan")], "NaN")])
def test_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(values)
