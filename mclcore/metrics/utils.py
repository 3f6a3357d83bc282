"""Shared plumbing for the disentanglement metrics: representation wrappers, code caching, input checks.

A *representation* is any callable ``f(observations) -> codes`` with observations (N, 64, 64, 3) uint8 (what the
datasets return; a representation that wants floats converts, see :func:`torch_representation`) and codes (N, K)
array-like (numpy or torch). Metrics wrap it in :class:`EncodedDataset`, which checks every output (shape, NaN,
inf) and, by default, computes each grid point's code once: the benchmark grids are finite (480,000 points for
Shapes3D) while the FactorVAE protocol alone asks for 64 x 15,000 + 10,000 = 970,000 codes, about half of them
repeats. Caching assumes the representation is deterministic (posterior means, eval mode); pass ``cache=False``
to call it on every batch exactly as disentanglement_lib does.

The cache is dense over the *whole grid* (a float64 row per grid point plus a one-byte "encoded" flag), which is
right for the benchmark grids but not for synthetic grids such as disentanglement_lib's test data (10 factors of
10 values: 10^10 points, 754 GiB for a 10-dim code). :class:`EncodedDataset` therefore computes the cache's size
before allocating it and raises a ValueError naming ``dataset`` and the size when it exceeds ``max_cache_bytes``
(default :data:`MAX_CACHE_BYTES`, 8 GiB), instead of a MemoryError from numpy half-way through a metric.
"""
from __future__ import annotations

import sys

import numpy as np

from mclcore.data.base import GroundTruthDataset, as_generator, to_float_nchw

__all__ = ["EncodedDataset", "as_encoded", "train_test_codes", "torch_representation", "check_codes", "check_factors",
           "as_generator", "histogram_discretize", "MAX_CACHE_BYTES", "cache_bytes"]

# Largest code cache EncodedDataset allocates by default. The real grids need far less (Shapes3D, 480,000 points x
# 20 dims: 77 MB; MPI3D, 1,036,800 points x 64 dims: 0.5 GiB), and 8 GiB still fits the 2-core CI box (23 GiB).
MAX_CACHE_BYTES = 8 * 2**30


def cache_bytes(num_points: int, num_codes: int) -> int:
    """Bytes of a dense code cache: float64 codes (``num_points`` x ``num_codes``) + a one-byte flag per point."""
    return int(num_points) * (8 * int(num_codes) + 1)


def _human_bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def check_codes(codes, n: int | None = None, name: str = "codes") -> np.ndarray:
    """``codes`` as a float64 (N, K) array; raise ValueError naming ``name`` for a wrong shape, NaN or inf."""
    if hasattr(codes, "detach"):
        codes = codes.detach().cpu().numpy()
    a = np.asarray(codes)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim != 2:
        hint = " (reshape 1-D codes to (N, 1))" if a.ndim == 1 else ""
        raise ValueError(f"{name}: expected shape (N, K), got {a.shape}{hint}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows (one per observation), got {a.shape[0]}")
    if a.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one code dimension, got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        kind = "NaN" if np.isnan(a).any() else "inf"
        raise ValueError(f"{name}: {kind} in {rows.size} of {a.shape[0]} rows (first: row {rows[0]}, "
                         f"dims {np.flatnonzero(bad[rows[0]]).tolist()}); metrics need finite codes")
    return a


def check_not_constant(codes: np.ndarray, name: str = "codes") -> None:
    """Raise when every code dimension is constant over the sample (a collapsed representation scores nothing)."""
    if codes.shape[0] > 1 and np.all(np.ptp(codes, axis=0) == 0):
        raise ValueError(f"{name}: all {codes.shape[1]} dimensions are constant over {codes.shape[0]} samples; "
                         f"the representation carries no information about the factors")


def check_factors(factors, n: int | None = None, name: str = "factors") -> np.ndarray:
    """Integer class array (N, F); raise ValueError for other shapes, non-integers, negatives."""
    a = np.asarray(factors)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, F), got {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows to match the codes, got {a.shape[0]}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name}: expected integer factor classes (discrete ground truth), got non-integers")
    elif a.dtype.kind not in "iub":
        raise ValueError(f"{name}: expected integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """(N, K) -> (N, K) int bins 1..num_bins per column, equal-width over each column's range.

    Same rule as disentanglement_lib: ``np.digitize(x, np.histogram(x, num_bins)[1][:-1])``; the maximum falls in
    bin ``num_bins``. A constant column gets a single bin.
    """
    if num_bins < 2:
        raise ValueError(f"num_bins: expected >= 2, got {num_bins}")
    out = np.empty(codes.shape, dtype=np.int64)
    for k in range(codes.shape[1]):
        edges = np.histogram(codes[:, k], num_bins)[1]
        out[:, k] = np.digitize(codes[:, k], edges[:-1])
    return out


class EncodedDataset:
    """Codes of ``representation`` on the observations of ``dataset``, indexed like the dataset.

    Args:
        dataset: a :class:`~mclcore.data.base.GroundTruthDataset`.
        representation: callable (N, 64, 64, 3) uint8 -> (N, K) codes.
        batch_size: observations per representation call.
        cache: remember each grid point's code (float64, len(dataset) x K; 77 MB for Shapes3D with K = 20).
        progress: show a tqdm bar (stderr) while encoding.
        max_cache_bytes: refuse (ValueError) a cache larger than this, see :func:`cache_bytes`. Checked twice:
            here with one code dimension (a lower bound, so a hopeless grid fails before anything is encoded) and
            with the real K before the first allocation.
    """

    def __init__(self, dataset: GroundTruthDataset, representation, *, batch_size: int = 256, cache: bool = True,
                 progress: bool = False, max_cache_bytes: int = MAX_CACHE_BYTES):
        if not isinstance(dataset, GroundTruthDataset):
            raise TypeError(f"dataset: expected a mclcore.data.GroundTruthDataset, got {type(dataset).__name__}")
        if not callable(representation):
            raise TypeError(f"representation: expected a callable observations -> codes, got "
                            f"{type(representation).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if not max_cache_bytes >= 0:
            raise ValueError(f"max_cache_bytes: expected >= 0, got {max_cache_bytes}")
        self.dataset = dataset
        self.representation = representation
        self.batch_size = int(batch_size)
        self.cache = bool(cache)
        self.max_cache_bytes = max_cache_bytes
        if self.cache:
            self._check_cache_size(None)
        self.progress = progress
        self.num_codes: int | None = None
        self._store: np.ndarray | None = None
        self._have: np.ndarray | None = None
        self.calls = 0           # representation calls so far
        self.encoded = 0         # observations passed to the representation so far

    def _check_cache_size(self, num_codes: int | None) -> None:
        """Raise before allocating a cache over the grid that would exceed ``max_cache_bytes``."""
        n = len(self.dataset)
        need = cache_bytes(n, num_codes or 1)
        if need <= self.max_cache_bytes:
            return
        dims = f"{num_codes} dims" if num_codes else "at least 1 dim"
        width = "" if num_codes else "; the code width is not known yet"
        size = f"{'' if num_codes else 'at least '}{_human_bytes(need)} ({need} bytes)"
        raise ValueError(
            f"dataset: a code cache of {n} points x {dims} (the whole grid of {self.dataset.name!r}; float64 codes "
            f"+ a 1-byte flag per point{width}) would take {size}, over max_cache_bytes = "
            f"{_human_bytes(self.max_cache_bytes)}; pass cache=False to encode every sampled observation instead (as "
            f"disentanglement_lib does), or pass EncodedDataset(dataset, representation, max_cache_bytes=...) as "
            f"the representation")

    def _encode(self, index: np.ndarray, desc: str) -> np.ndarray:
        bar = None
        if self.progress and index.size > self.batch_size:
            from tqdm import tqdm

            bar = tqdm(total=int(index.size), desc=desc, unit="img", file=sys.stderr, leave=False)
        parts = []
        for i in range(0, index.size, self.batch_size):
            idx = index[i:i + self.batch_size]
            out = check_codes(self.representation(self.dataset.observations_at(idx)), idx.size,
                              name="representation output")
            if self.num_codes is None:
                self.num_codes = out.shape[1]
            elif out.shape[1] != self.num_codes:
                raise ValueError(f"representation output: {out.shape[1]} code dimensions, earlier batches had "
                                 f"{self.num_codes}")
            parts.append(out)
            self.calls += 1
            self.encoded += idx.size
            if bar is not None:
                bar.update(idx.size)
        if bar is not None:
            bar.close()
        return np.concatenate(parts, axis=0)

    def codes_at(self, index, desc: str = "encode") -> np.ndarray:
        """(N,) grid indices -> (N, K) float64 codes."""
        index = self.dataset._check_index(index)
        if index.size == 0:
            return np.zeros((0, self.num_codes or 0))
        if not self.cache:
            return self._encode(index, desc)
        missing = np.unique(index) if self._have is None else np.unique(index[~self._have[index]])
        if missing.size:
            new = self._encode(missing, desc)
            if self._store is None:
                self._check_cache_size(new.shape[1])       # K is known only now: the exact size, before allocating
                self._store = np.zeros((len(self.dataset), new.shape[1]), dtype=np.float64)
                self._have = np.zeros(len(self.dataset), dtype=bool)
            self._store[missing] = new
            self._have[missing] = True
        return self._store[index]

    def codes(self, factors, desc: str = "encode") -> np.ndarray:
        """(N, F) factor classes -> (N, K) codes."""
        return self.codes_at(self.dataset.factors_to_index(factors), desc)

    def sample(self, n: int, rng, desc: str = "encode") -> tuple[np.ndarray, np.ndarray]:
        """``(codes (n, K), factors (n, F))`` for n grid points drawn uniformly with ``rng``."""
        factors = self.dataset.sample_factors(n, rng)
        return self.codes(factors, desc), factors


def as_encoded(dataset, representation, *, batch_size: int = 256, cache: bool = True,
               progress: bool = False) -> EncodedDataset:
    """Reuse ``representation`` if it already is an :class:`EncodedDataset` of ``dataset``, else wrap it."""
    if isinstance(representation, EncodedDataset):
        if representation.dataset is not dataset:
            raise ValueError("representation: this EncodedDataset was built for a different dataset")
        return representation
    return EncodedDataset(dataset, representation, batch_size=batch_size, cache=cache, progress=progress)


def train_test_codes(dataset, representation, g, num_train: int, num_test: int, *, name: str,
                     encode_batch_size: int = 256, cache: bool = True, progress: bool = False):
    """Codes and varying factors of ``num_train`` then ``num_test`` samples drawn from ``g`` (the protocol of DCI and
    SAP): returns (codes_train, factors_train, codes_test, factors_test), factors restricted to the varying ones."""
    for arg, v in (("num_train", num_train), ("num_test", num_test)):
        if not isinstance(v, (int, np.integer)) or v < 2:
            raise ValueError(f"{arg}: expected an int >= 2, got {v!r}")
    enc = as_encoded(dataset, representation, batch_size=encode_batch_size, cache=cache, progress=progress)
    varying = list(dataset.varying_factors)
    ctr, ftr = enc.sample(num_train, g, desc=f"{name} train")
    cte, fte = enc.sample(num_test, g, desc=f"{name} test")
    return ctr, ftr[:, varying], cte, fte[:, varying]


def torch_representation(module, *, device="cpu", batch_size: int = 256, output_index: int = 0):
    """Wrap an ``nn.Module`` mapping float (N, 3, 64, 64) images in [0, 1] to (N, K) codes as a representation.

    The module is put in eval mode and run under ``torch.inference_mode`` in chunks of ``batch_size``. If it
    returns a tuple or list (e.g. ``(mu, logvar)``), element ``output_index`` is used (the posterior mean by
    convention). Returns a callable uint8 (N, 64, 64, 3) -> float64 numpy (N, K).
    """
    import torch

    module.eval()
    device = torch.device(device)

    def represent(observations):
        outs = []
        for i in range(0, len(observations), batch_size):
            x = to_float_nchw(observations[i:i + batch_size]).to(device)
            with torch.inference_mode():
                y = module(x)
            if isinstance(y, (tuple, list)):
                y = y[output_index]
            if not torch.is_tensor(y):
                raise TypeError(f"representation module returned {type(y).__name__}, expected a tensor (N, K)")
            outs.append(y.detach().to("cpu", torch.float64).numpy())
        return np.concatenate(outs, axis=0)

    return represent
