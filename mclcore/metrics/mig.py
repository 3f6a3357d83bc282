"""Mutual Information Gap (Chen et al. 2018, beta-TCVAE), disentanglement_lib's discrete estimator.

Protocol: ``num_train`` = 10,000 uniform grid samples; each code dimension is discretised into ``num_bins`` = 20
equal-width bins over its sample range (:func:`~mclcore.metrics.utils.histogram_discretize`); with
``I[j, k]`` the discrete mutual information (nats) between binned code j and factor k and ``H[k]`` the factor's
entropy,

    MIG = mean_k (I_(1)[k] - I_(2)[k]) / H[k]

where I_(1) >= I_(2) are the two largest values of column k. With a single code dimension I_(2) = 0.
Factors with one value (dSprites' colour, H = 0) are skipped; a varying factor that is constant in the sample is an
error rather than a division by zero.
"""
from __future__ import annotations

import numpy as np

from mclcore.metrics.utils import (as_encoded, as_generator, check_codes, check_factors, check_not_constant,
                                   histogram_discretize)

__all__ = ["mig", "mig_from_codes", "discrete_mutual_info"]


def discrete_mutual_info(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, A) and (N, B) integer arrays -> (A, B) mutual information in nats between every pair of columns."""
    from sklearn.metrics import mutual_info_score

    return np.array([[mutual_info_score(b[:, j], a[:, i]) for j in range(b.shape[1])] for i in range(a.shape[1])])


def mig_from_codes(codes, factors, *, num_bins: int = 20, return_matrix: bool = False) -> dict:
    """MIG from codes (N, K) and integer factor classes (N, F). Returns {"mig.score"} (+ "mig.mi_matrix")."""
    c = check_codes(codes)
    f = check_factors(factors, c.shape[0])
    check_not_constant(c)
    entropy = np.array([discrete_mutual_info(f[:, [k]], f[:, [k]])[0, 0] for k in range(f.shape[1])])
    if np.any(entropy <= 0):
        k = int(np.flatnonzero(entropy <= 0)[0])
        raise ValueError(f"factors: column {k} takes a single value in the sample; MIG divides by its entropy (0)")
    m = discrete_mutual_info(histogram_discretize(c, num_bins), f)
    top = np.sort(m, axis=0)[::-1]
    second = top[1] if top.shape[0] > 1 else np.zeros(top.shape[1])
    out = {"mig.score": float(np.mean((top[0] - second) / entropy))}
    if return_matrix:
        out["mig.mi_matrix"] = m
    return out


def mig(dataset, representation, rng=0, *, num_train: int = 10000, num_bins: int = 20,
        encode_batch_size: int = 256, cache: bool = True, progress: bool = False) -> dict:
    """MIG of ``representation`` on ``dataset`` (see the module doc). Returns {"mig.score"}."""
    if not isinstance(num_train, (int, np.integer)) or num_train < 2:
        raise ValueError(f"num_train: expected an int >= 2, got {num_train!r}")
    g = as_generator(rng)
    enc = as_encoded(dataset, representation, batch_size=encode_batch_size, cache=cache, progress=progress)
    codes, factors = enc.sample(num_train, g, desc="mig")
    return mig_from_codes(codes, factors[:, list(dataset.varying_factors)], num_bins=num_bins)
