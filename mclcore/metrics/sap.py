"""SAP score (Kumar et al. 2018, Separated Attribute Predictability), disentanglement_lib protocol.

Protocol: ``num_train`` = 10,000 and ``num_test`` = 5,000 uniform grid samples. For discrete factors (the default,
``continuous_factors=False``) the score matrix entry S[j, k] is the test accuracy of
``LinearSVC(C=0.01, class_weight="balanced")`` trained to predict factor k from the single code j; for continuous
factors it is the squared correlation cov(z_j, y_k)^2 / (var z_j var y_k) on the training sample (0 where
var z_j <= 1e-12). SAP = mean over factors of the gap between the two largest entries of the factor's column.

LinearSVC sees the raw (unstandardised) code, exactly as in disentanglement_lib, so with C = 0.01 a code with a
tiny scale is under-fitted; convergence warnings from liblinear are silenced (they are routine at C = 0.01).
"""
from __future__ import annotations

import warnings

import numpy as np

from mclcore.metrics.utils import as_generator, check_codes, check_factors, check_not_constant, train_test_codes

__all__ = ["sap", "sap_from_codes", "sap_score_matrix"]


def sap_score_matrix(codes_train, factors_train, codes_test, factors_test, continuous_factors: bool = False):
    """(K, F) score matrix (see the module doc)."""
    k, f = codes_train.shape[1], factors_train.shape[1]
    s = np.zeros((k, f))
    if continuous_factors:
        for i in range(k):
            for j in range(f):
                cov = np.cov(codes_train[:, i], factors_train[:, j], ddof=1)
                s[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 and cov[1, 1] > 0 else 0.0
        return s
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    for j in range(f):
        if np.unique(factors_train[:, j]).size < 2:
            raise ValueError(f"factors_train: factor column {j} takes a single value in the training sample")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i in range(k):
            x_tr, x_te = codes_train[:, i:i + 1], codes_test[:, i:i + 1]
            for j in range(f):
                clf = LinearSVC(C=0.01, class_weight="balanced").fit(x_tr, factors_train[:, j])
                s[i, j] = np.mean(clf.predict(x_te) == factors_test[:, j])
    return s


def sap_from_codes(codes_train, factors_train, codes_test=None, factors_test=None, *,
                   continuous_factors: bool = False, return_matrix: bool = False) -> dict:
    """SAP from codes (N, K) and integer factors (N, F). Returns {"sap.score"} (+ "sap.score_matrix")."""
    ctr = check_codes(codes_train, name="codes_train")
    ftr = check_factors(factors_train, ctr.shape[0], "factors_train")
    check_not_constant(ctr, "codes_train")
    if continuous_factors:
        cte, fte = ctr, ftr
    else:
        if codes_test is None or factors_test is None:
            raise ValueError("codes_test, factors_test: required for discrete factors (test accuracies)")
        cte = check_codes(codes_test, name="codes_test")
        fte = check_factors(factors_test, cte.shape[0], "factors_test")
        if cte.shape[1] != ctr.shape[1] or fte.shape[1] != ftr.shape[1]:
            raise ValueError(f"codes_test/factors_test: shapes {cte.shape}/{fte.shape} do not match the training "
                             f"{ctr.shape}/{ftr.shape}")
    s = sap_score_matrix(ctr, ftr, cte, fte, continuous_factors)
    top = np.sort(s, axis=0)
    second = top[-2] if top.shape[0] > 1 else np.zeros(top.shape[1])
    out = {"sap.score": float(np.mean(top[-1] - second))}
    if return_matrix:
        out["sap.score_matrix"] = s
    return out


def sap(dataset, representation, rng=0, *, num_train: int = 10000, num_test: int = 5000,
        continuous_factors: bool = False, encode_batch_size: int = 256, cache: bool = True,
        progress: bool = False) -> dict:
    """SAP of ``representation`` on ``dataset`` (see the module doc). Returns {"sap.score"}."""
    ctr, ftr, cte, fte = train_test_codes(dataset, representation, as_generator(rng), num_train, num_test,
                                          name="sap", encode_batch_size=encode_batch_size, cache=cache,
                                          progress=progress)
    return sap_from_codes(ctr, ftr, cte, fte, continuous_factors=continuous_factors)
