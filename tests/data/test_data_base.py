"""GroundTruthDataset: index <-> factors, samplers, validation, torch glue."""
import numpy as np
import pytest
import torch

from mclcore.data import GroundTruthDataset, make_loader, to_float_nchw


class Tiny(GroundTruthDataset):
    """Sizes (2, 3, 4); observation pixel (0, 0) holds the index, so tests can see which image came back."""

    name = "tiny"

    def __init__(self):
        super().__init__(("a", "b", "c"), (2, 3, 4), [np.array([0.5, 1.5]), np.arange(3.0), np.linspace(0, 1, 4)])

    def _observations(self, index):
        out = np.zeros((index.size, 64, 64, 3), dtype=np.uint8)
        out[:, 0, 0, 0] = index
        return out


def test_index_factor_roundtrip_is_row_major():
    ds = Tiny()
    assert len(ds) == 24 and ds.num_factors == 3
    idx = np.arange(24)
    f = ds.index_to_factors(idx)
    assert np.array_equal(f, np.stack(np.unravel_index(idx, (2, 3, 4)), 1))
    assert np.array_equal(ds.factors_to_index(f), idx)
    assert ds.factors_to_index([1, 2, 3])[0] == 23
    np.testing.assert_allclose(ds.factor_values([[1, 2, 3]]), [[1.5, 2.0, 1.0]])


def test_sampling_is_seeded_and_uniform():
    ds = Tiny()
    a, b = ds.sample_factors(5000, 7), ds.sample_factors(5000, np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, ds.sample_factors(5000, 8))
    for j, s in enumerate(ds.factor_sizes):
        counts = np.bincount(a[:, j], minlength=s)
        assert counts.min() > 5000 / s * 0.8
    factors, obs = ds.sample(10, 3)
    assert np.array_equal(obs[:, 0, 0, 0], ds.factors_to_index(factors))


def test_fixed_factor_batches():
    ds = Tiny()
    f = ds.sample_fixed_factor(64, 2, 0)
    assert np.unique(f[:, 2]).size == 1 and np.unique(f[:, 0]).size == 2
    g = ds.sample_fixed_factor(64, 1, 0, value=2)
    assert np.all(g[:, 1] == 2)
    with pytest.raises(ValueError, match="factor"):
        ds.sample_fixed_factor(4, 3, 0)
    with pytest.raises(ValueError, match="value"):
        ds.sample_fixed_factor(4, 0, 0, value=2)


def test_clear_errors():
    ds = Tiny()
    with pytest.raises(ValueError, match=r"expected shape \(N, 3\)"):
        ds.factors_to_index(np.zeros((4, 2), dtype=int))
    with pytest.raises(ValueError, match="outside"):
        ds.factors_to_index([[0, 3, 0]])
    with pytest.raises(ValueError, match="non-integer"):
        ds.factors_to_index([[0.5, 0, 0]])
    with pytest.raises(ValueError, match="index"):
        ds.observations_at([24])
    with pytest.raises(TypeError, match="rng"):
        ds.sample_factors(3, None)
    with pytest.raises(ValueError, match="n"):
        ds.sample_factors(-1, 0)


def test_observations_any_order_and_duplicates():
    ds = Tiny()
    idx = np.array([5, 1, 5, 23, 0])
    obs = ds.observations_at(idx)
    assert obs.shape == (5, 64, 64, 3) and obs.dtype == np.uint8
    assert np.array_equal(obs[:, 0, 0, 0], idx)
    assert ds.observations_at(np.zeros(0, dtype=np.int64)).shape == (0, 64, 64, 3)


def test_to_float_nchw():
    x = np.full((2, 64, 64, 3), 255, dtype=np.uint8)
    t = to_float_nchw(x)
    assert t.shape == (2, 3, 64, 64) and t.dtype == torch.float32 and float(t.max()) == 1.0
    with pytest.raises(ValueError, match="images"):
        to_float_nchw(np.zeros((2, 3, 64, 64), dtype=np.uint8))


def test_loader_batches_are_deterministic():
    ds = Tiny()
    batches = list(make_loader(ds, batch_size=5, seed=1))
    again = list(make_loader(ds, batch_size=5, seed=1))
    assert len(batches) == 5
    images, factors = batches[0]
    assert images.shape == (5, 3, 64, 64) and images.dtype == torch.float32
    assert factors.shape == (5, 3) and factors.dtype == torch.int64
    seen = torch.cat([f for _, f in batches])
    assert len({tuple(r) for r in seen.tolist()}) == 24            # one epoch covers the grid once
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    # the image really is the one of those factors
    idx = ds.factors_to_index(factors.numpy())
    assert np.allclose(images[:, 0, 0, 0].numpy() * 255, idx)
    ordered = list(make_loader(ds, batch_size=24, shuffle=False, as_float=False))
    assert ordered[0][0].dtype == torch.uint8
    assert torch.equal(ordered[0][1], torch.from_numpy(ds.index_to_factors(np.arange(24))))
