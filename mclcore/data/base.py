"""Ground-truth datasets: a finite factor grid, an index <-> factors map, samplers and observations.

Every dataset here is a full Cartesian grid of discrete factors stored (or rendered) in row-major order: with
factor sizes ``(s_0, ..., s_{F-1})`` the observation of factor classes ``(c_0, ..., c_{F-1})`` sits at

    index = sum_f c_f * prod(s_{f+1:})        (numpy.ravel_multi_index order; the last factor varies fastest)

which is the layout of 3dshapes.h5, the MPI3D ``.npz`` files and dSprites' ``latents_classes``. Factors are always
*integer classes* ``0 <= c_f < s_f`` (int64, shape (N, F)); :meth:`GroundTruthDataset.factor_values` maps them to the
physical values (hue, scale, angle, ...) where a dataset knows them.

Observations are ``uint8`` arrays of shape (N, 64, 64, 3) (HWC, RGB, 0..255) for every dataset, file-backed or
procedural; a dataset that is grey by nature (dSprites) replicates its channel. :func:`to_float_nchw` gives the
(N, 3, 64, 64) float32 tensor in [0, 1] that models take.

Randomness comes only from the ``rng`` argument (an int seed or a ``numpy.random.Generator``): two calls with
equal seeds return equal factors, and observations are a deterministic function of the index.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["GroundTruthDataset", "as_generator", "to_float_nchw"]

OBSERVATION_SHAPE = (64, 64, 3)


def as_generator(rng) -> np.random.Generator:
    """``rng`` as a ``numpy.random.Generator``: an int seeds a new PCG64 generator, a Generator is used as is.

    ``None`` is refused on purpose: every sampler here is meant to be reproducible, so the caller must say which seed.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng: expected an int seed or a numpy.random.Generator, got {type(rng).__name__} "
                    f"(np.random.RandomState is not accepted: use np.random.default_rng(seed))")


def to_float_nchw(images):
    """(N, 64, 64, 3) uint8 (numpy or torch) -> (N, 3, 64, 64) float32 torch tensor in [0, 1].

    Float input is taken to be in [0, 1] already and is only transposed.
    """
    import torch

    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images: expected shape (N, H, W, 3), got {tuple(x.shape)}")
    # Permute the (4x smaller) uint8 view first and convert once: one float pass instead of three.
    x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        return x.to(torch.float32, memory_format=torch.contiguous_format).mul_(1.0 / 255.0)
    return x.to(torch.float32, memory_format=torch.contiguous_format)


class GroundTruthDataset:
    """A finite grid of discrete ground-truth factors with one observation per grid point.

    Subclasses set ``name``, ``factor_names``, ``factor_sizes`` (through ``__init__``) and implement
    ``_observations(index)``: int64 indices (N,) in ``[0, len(self))`` -> uint8 (N, 64, 64, 3). Everything else
    (index arithmetic, sampling, validation) lives here.

    Attributes:
        factor_names: tuple of F names.
        factor_sizes: tuple of F ints (number of classes of each factor).
        observation_shape: (64, 64, 3).
    """

    name = "ground_truth"
    observation_shape = OBSERVATION_SHAPE

    def __init__(self, factor_names: Sequence[str], factor_sizes: Sequence[int],
                 factor_values: Sequence[np.ndarray] | None = None):
        names = tuple(str(n) for n in factor_names)
        sizes = tuple(int(s) for s in factor_sizes)
        if len(names) != len(sizes) or not sizes:
            raise ValueError(f"factor_names ({len(names)}) and factor_sizes ({len(sizes)}) must have the same, "
                             f"non-zero length")
        if any(s < 1 for s in sizes):
            raise ValueError(f"factor_sizes: every size must be >= 1, got {sizes}")
        self.factor_names = names
        self.factor_sizes = sizes
        # Row-major strides: the last factor varies fastest (see the module docstring).
        strides = [1] * len(sizes)
        for f in range(len(sizes) - 2, -1, -1):
            strides[f] = strides[f + 1] * sizes[f + 1]
        self._strides = np.asarray(strides, dtype=np.int64)
        if factor_values is None:
            factor_values = [np.arange(s, dtype=np.float64) for s in sizes]
        if len(factor_values) != len(sizes):
            raise ValueError(f"factor_values: expected {len(sizes)} arrays, got {len(factor_values)}")
        self._factor_values = []
        for f, (v, s) in enumerate(zip(factor_values, sizes)):
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (s,):
                raise ValueError(f"factor_values[{f}] ({names[f]}): expected shape ({s},), got {v.shape}")
            self._factor_values.append(v)

    # ----------------------------------------------------------------------------------------------- structure
    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def varying_factors(self) -> tuple[int, ...]:
        """Indices of factors with more than one class (dSprites' colour has one): the ones metrics score."""
        return tuple(f for f, s in enumerate(self.factor_sizes) if s > 1)

    def __len__(self) -> int:
        return math.prod(self.factor_sizes)

    def __repr__(self) -> str:
        grid = ", ".join(f"{n}={s}" for n, s in zip(self.factor_names, self.factor_sizes))
        return f"{type(self).__name__}({grid}; {len(self)} observations)"

    # ------------------------------------------------------------------------------------- index <-> factors
    def _check_factors(self, factors) -> np.ndarray:
        a = np.asarray(factors)
        if a.ndim == 1 and a.shape[0] == self.num_factors:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != self.num_factors:
            raise ValueError(f"factors: expected shape (N, {self.num_factors}) for factors {self.factor_names}, "
                             f"got {a.shape}")
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise ValueError("factors: expected integer factor classes, got non-integer floats "
                                 "(use factor_values() for physical values; classes are 0..size-1)")
        elif a.dtype.kind not in "iub":
            raise ValueError(f"factors: expected an integer array, got dtype {a.dtype}")
        a = a.astype(np.int64, copy=False)
        sizes = np.asarray(self.factor_sizes)
        bad = (a < 0) | (a >= sizes)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"factors: class {a[row, col]} of factor {col} ({self.factor_names[col]}) in row {row} "
                             f"is outside [0, {sizes[col] - 1}]")
        return a

    def _check_index(self, index) -> np.ndarray:
        a = np.asarray(index)
        if a.ndim == 0:
            a = a[None]
        if a.ndim != 1:
            raise ValueError(f"index: expected a 1-D array of observation indices, got shape {a.shape}")
        if a.dtype.kind not in "iu":
            if a.size == 0:
                return a.astype(np.int64)
            raise ValueError(f"index: expected integers, got dtype {a.dtype}")
        a = a.astype(np.int64, copy=False)
        if a.size and (a.min() < 0 or a.max() >= len(self)):
            raise ValueError(f"index: values must lie in [0, {len(self) - 1}], got [{a.min()}, {a.max()}]")
        return a

    def factors_to_index(self, factors) -> np.ndarray:
        """(N, F) integer classes -> (N,) int64 row-major observation indices."""
        return self._check_factors(factors) @ self._strides

    def index_to_factors(self, index) -> np.ndarray:
        """(N,) observation indices -> (N, F) int64 classes (inverse of :meth:`factors_to_index`)."""
        idx = self._check_index(index)
        return (idx[:, None] // self._strides[None, :]) % np.asarray(self.factor_sizes, dtype=np.int64)[None, :]

    def factor_values(self, factors) -> np.ndarray:
        """(N, F) classes -> (N, F) float64 physical values (class indices where the dataset has no better)."""
        a = self._check_factors(factors)
        return np.stack([self._factor_values[f][a[:, f]] for f in range(self.num_factors)], axis=1)

    # ------------------------------------------------------------------------------------------------ sampling
    def sample_factors(self, n: int, rng) -> np.ndarray:
        """(n, F) int64 classes, each factor uniform and independent (i.e. uniform over the grid)."""
        n = _check_count(n, "n")
        g = as_generator(rng)
        return np.stack([g.integers(0, s, size=n, dtype=np.int64) for s in self.factor_sizes], axis=1)

    def sample_fixed_factor(self, n: int, factor: int, rng, value: int | None = None) -> np.ndarray:
        """(n, F) classes with factor ``factor`` held at one value and all others uniform.

        This is the batch the FactorVAE score needs. ``value`` (a class of that factor) defaults to the first
        row's uniform draw, as disentanglement_lib does (it overwrites the column with row 0's value), so the other
        columns equal ``sample_factors(n, rng)`` with the same seed.
        """
        if not (isinstance(factor, (int, np.integer)) and 0 <= factor < self.num_factors):
            raise ValueError(f"factor: expected an int in [0, {self.num_factors - 1}], got {factor!r}")
        g = as_generator(rng)
        out = self.sample_factors(n, g)
        if value is None:
            value = out[0, factor]
        elif not 0 <= int(value) < self.factor_sizes[factor]:
            raise ValueError(f"value: class {value} outside [0, {self.factor_sizes[factor] - 1}] for factor "
                             f"{factor} ({self.factor_names[factor]})")
        out[:, factor] = int(value)
        return out

    def sample_index(self, n: int, rng) -> np.ndarray:
        """(n,) indices uniform over the grid (same draws as ``factors_to_index(sample_factors(n, rng))``)."""
        return self.factors_to_index(self.sample_factors(n, rng))

    # ---------------------------------------------------------------------------------------------- observations
    def observations_at(self, index) -> np.ndarray:
        """(N,) indices -> (N, 64, 64, 3) uint8 observations (deterministic; duplicates allowed, any order)."""
        idx = self._check_index(index)
        if idx.size == 0:
            return np.zeros((0, *self.observation_shape), dtype=np.uint8)
        out = self._observations(idx)
        if out.shape != (idx.size, *self.observation_shape) or out.dtype != np.uint8:
            raise RuntimeError(f"{type(self).__name__}._observations returned {out.dtype} {out.shape}, expected "
                               f"uint8 {(idx.size, *self.observation_shape)}")
        return out

    def observations(self, factors) -> np.ndarray:
        """(N, F) classes -> (N, 64, 64, 3) uint8 observations."""
        return self.observations_at(self.factors_to_index(factors))

    def sample(self, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
        """``(factors (n, F) int64, observations (n, 64, 64, 3) uint8)`` uniform over the grid."""
        factors = self.sample_factors(n, rng)
        return factors, self.observations(factors)

    def sample_observations(self, n: int, rng) -> np.ndarray:
        return self.sample(n, rng)[1]

    def _observations(self, index: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement _observations(index)")


def _check_count(n, name: str) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {n!r}")
    return int(n)


def read_sorted(read, index: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Gather ``read(sorted_unique_indices)`` for arbitrary ``index`` (duplicates, any order).

    h5py fancy selection needs strictly increasing indices, and reading sorted indices is also what makes
    memory-mapped files fast (sequential pages); this reads the unique sorted indices in chunks and scatters back.
    """
    uniq, inverse = np.unique(index, return_inverse=True)
    parts = [read(uniq[i:i + chunk]) for i in range(0, uniq.size, chunk)]
    data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return data[inverse.reshape(-1)]
