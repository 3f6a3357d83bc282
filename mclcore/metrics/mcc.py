"""Mean Correlation Coefficient between true and estimated latents (identifiability up to permutation).

    C[i, j] = |corr(z_true[:, i], z_hat[:, j])|          (Pearson, or Spearman = Pearson on ranks)
    matching = scipy.optimize.linear_sum_assignment(C, maximize=True)
    MCC = mean of C over the matched pairs

With different numbers of true and estimated latents, min(K_true, K_hat) pairs are matched. A constant column
makes the correlation undefined and is an error (never a NaN).
"""
from __future__ import annotations

import numpy as np

from mclcore.metrics.utils import check_codes

__all__ = ["mcc", "correlation_matrix"]


def correlation_matrix(z_true, z_hat, method: str = "pearson") -> np.ndarray:
    """(K_true, K_hat) absolute correlations between the columns of ``z_true`` and ``z_hat``."""
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method: expected 'pearson' or 'spearman', got {method!r}")
    a = check_codes(z_true, name="z_true")
    b = check_codes(z_hat, a.shape[0], name="z_hat")
    if a.shape[0] < 2:
        raise ValueError(f"z_true: need at least 2 samples, got {a.shape[0]}")
    if method == "spearman":
        from scipy.stats import rankdata

        a, b = rankdata(a, axis=0), rankdata(b, axis=0)
    for name, x in (("z_true", a), ("z_hat", b)):
        sd = x.std(axis=0)
        if np.any(sd == 0):
            raise ValueError(f"{name}: column(s) {np.flatnonzero(sd == 0).tolist()} are constant; correlation is "
                             f"undefined")
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return np.abs(a.T @ b / a.shape[0]).clip(0.0, 1.0)


def mcc(z_true, z_hat, method: str = "pearson", return_matching: bool = False) -> dict:
    """MCC (see the module doc). Returns {"mcc.mean"} (+ "mcc.matching": (rows, cols), "mcc.matched": values)."""
    from scipy.optimize import linear_sum_assignment

    c = correlation_matrix(z_true, z_hat, method)
    rows, cols = linear_sum_assignment(c, maximize=True)
    out = {"mcc.mean": float(c[rows, cols].mean())}
    if return_matching:
        out["mcc.matching"] = (rows, cols)
        out["mcc.matched"] = c[rows, cols]
    return out
