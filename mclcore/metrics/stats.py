"""Intervals for comparisons of models over seeds or episodes: the percentile bootstrap of a mean.

    lo, hi = bootstrap_ci(mcc_mcl - mcc_base)      # paired: the same seeds (datasets, initialisations) on both sides

A comparison states n and a 95% interval; where the same seeds are used on both sides the interval is of the paired
per-seed differences (their spread excludes what the seeds share).
"""
from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci", "summarize"]


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (1-D, finite, n >= 2); ``level`` in (0, 1)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size < 2:
        raise ValueError(f"values: a bootstrap interval needs at least 2 values, got {x.size}")
    if not np.isfinite(x).all():
        raise ValueError("values: contains NaN or infinite values")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def summarize(values, level: float = 0.95, seed: int = 0) -> dict:
    """{"n", "mean", "median", "lo", "hi"}: the mean with its bootstrap interval (NaN interval for n < 2)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    lo, hi = bootstrap_ci(x, level, seed=seed) if x.size >= 2 else (float("nan"), float("nan"))
    return {"n": int(x.size), "mean": float(x.mean()) if x.size else float("nan"),
            "median": float(np.median(x)) if x.size else float("nan"), "lo": lo, "hi": hi}
