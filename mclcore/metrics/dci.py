"""DCI: disentanglement, completeness, informativeness (Eastwood & Williams 2018), disentanglement_lib protocol.

Protocol: ``num_train`` = 10,000 and ``num_test`` = 5,000 uniform grid samples; one classifier per factor predicts
the factor class from all codes; its feature importances form column k of the importance matrix R (K codes x F
factors, non-negative). With ``P_jk = R_jk / sum_k R_jk``:

    disentanglement = sum_j rho_j (1 - H_F(P_j.)),   rho_j = sum_k R_jk / sum R      (entropy in base F)
    completeness    = sum_k rho_k (1 - H_K(R_.k / sum_j R_jk)),   rho_k = sum_j R_jk / sum R   (base K)
    informativeness = mean over factors of the classifier's accuracy (train and test)

(as disentanglement_lib: 1e-11 is added to R inside the entropies; the reported "informativeness" is an
accuracy, higher is better). With one code (K = 1) completeness is 1 and with one factor disentanglement is 1
by definition (the entropy bases would be 1).

Predictors (``model``):

* ``"gbt"`` (default, :data:`DCI_DEFAULT_MODEL`): ``sklearn.ensemble.GradientBoostingClassifier()`` with default
  parameters and ``feature_importances_`` - exactly disentanglement_lib's choice, so scores are comparable with
  published ones and pass disentanglement_lib's own DCI unit tests (``tests/metrics/test_conformance.py``). It is
  slow: one exact-split tree per class and round, e.g. 5,700 trees for Shapes3D (see the timings below).
* ``"hist_gbt"``: ``HistGradientBoostingClassifier`` configured like disentanglement_lib's
  ``GradientBoostingClassifier()`` defaults - 100 rounds, learning rate 0.1, depth-3 trees (max 8 leaves), no early
  stopping - with importances = total split gain per feature over all trees (the boosting analogue of the
  impurity importances ``"gbt"`` reports). Fast, but **biased against redundant codes**: when two code dimensions
  tie on split gain it always keeps the first, so an exact copy of a dimension never gets importance. On
  disentanglement_lib's duplicated-code test (10 factors, codes ``[z, z]``, 1,000 train / 1,000 test points)
  completeness is 1.000 with ``"hist_gbt"`` against 0.770 with ``"gbt"`` (disentanglement_lib expects 0.60-0.80,
  the even split gives 1 - log 2 / log 20 = 0.769), measured 2026-12-06 on the 2-core AMD EPYC VM. ``"gbt"``
  randomises the feature order per split (seeded), so tied copies share the importance. Without exact ties the two
  still differ by more than seed noise: on dense linear mixes of those 10 factors (codes ``(f + 1) @ (I + 0.3 N)``,
  two seeds) ``"hist_gbt"`` gave disentanglement and completeness 0.024-0.029 higher and test informativeness
  0.019-0.020 higher; on the 20-dim random encoder of Shapes3D at the full protocol 0.166 / 0.113 / 0.646 against
  0.161 / 0.109 / 0.627 (same machine and date). Use it for quick looks and smoke runs, not for numbers compared
  with disentanglement_lib or papers.
* ``"lasso"``: Eastwood & Williams' linear option: per factor a ``Lasso(alpha=lasso_alpha)`` regression of the
  standardised factor class on standardised codes, importance |coef|; informativeness is then the R^2 (not an
  accuracy).

Cost (``benchmarks/bench_metrics.py --dci-timing 0.02,1.0``: DCI fits only, one thread, 20-dim codes of the
procedural Shapes3D (factor sizes 10, 10, 10, 8, 4, 15), 2-core AMD EPYC VM shared with other jobs, load 2-5,
2026-12-06): the full protocol (10,000 train / 5,000 test) took 361 s with ``"gbt"`` against 12 s with
``"hist_gbt"``; ``sample_scale`` 0.02 (200 / 100) 8.7 s against 3.3 s.
"""
from __future__ import annotations

import numpy as np

from mclcore.metrics.utils import as_generator, check_codes, check_factors, check_not_constant, train_test_codes

__all__ = ["dci", "dci_from_codes", "importance_matrix", "disentanglement", "completeness", "DCI_MODELS",
           "DCI_DEFAULT_MODEL"]

DCI_MODELS = ("gbt", "hist_gbt", "lasso")
# disentanglement_lib's predictor; every default in mclcore.metrics (functions, evaluate, `mcl eval`) reads this.
DCI_DEFAULT_MODEL = "gbt"


def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    p = p + 1e-11
    p = p / p.sum(axis=axis, keepdims=True)
    return -(p * np.log(p)).sum(axis=axis) / np.log(base)


def disentanglement(importance: np.ndarray) -> float:
    """Importance-weighted mean over codes of 1 - entropy of the code's importance over factors (base F)."""
    r = np.asarray(importance, dtype=np.float64)
    if r.shape[1] == 1:
        return 1.0
    per_code = 1.0 - _entropy(r, r.shape[1], axis=1)
    total = r.sum()
    weights = r.sum(axis=1) / total if total > 0 else np.full(r.shape[0], 1.0 / r.shape[0])
    return float(np.sum(per_code * weights))


def completeness(importance: np.ndarray) -> float:
    """Importance-weighted mean over factors of 1 - entropy of the factor's importance over codes (base K)."""
    r = np.asarray(importance, dtype=np.float64)
    if r.shape[0] == 1:
        return 1.0
    per_factor = 1.0 - _entropy(r, r.shape[0], axis=0)
    total = r.sum()
    weights = r.sum(axis=0) / total if total > 0 else np.full(r.shape[1], 1.0 / r.shape[1])
    return float(np.sum(per_factor * weights))


def _hist_gain_importance(model, k: int) -> np.ndarray:
    """Total split gain per feature over all trees of a fitted HistGradientBoostingClassifier."""
    predictors = getattr(model, "_predictors", None)
    if predictors is None:
        raise RuntimeError("this scikit-learn's HistGradientBoostingClassifier has no _predictors; use model='gbt'")
    imp = np.zeros(k)
    for per_class in predictors:
        for tree in per_class:
            nodes = tree.nodes
            split = ~nodes["is_leaf"].astype(bool)
            np.add.at(imp, nodes["feature_idx"][split], np.maximum(nodes["gain"][split], 0.0))
    s = imp.sum()
    return imp / s if s > 0 else imp


def importance_matrix(codes_train, factors_train, codes_test, factors_test, *, model: str = DCI_DEFAULT_MODEL,
                      seed: int = 0, lasso_alpha: float = 0.02, threads: int | None = 1):
    """(K, F) importances, per-factor train scores (F,), per-factor test scores (F,). See the module doc.

    ``threads`` caps OpenMP threads while the histogram GBT fits and predicts (None: scikit-learn's default,
    all cores); ``"gbt"`` and ``"lasso"`` run on one thread whatever it says.
    HistGradientBoosting synchronises threads at every split; on 2 shared cores under load we measured a fit
    (10,000 x 20 codes, 10 classes) at 3.1 s with one thread and 29 s with two, hence the default of 1.
    """
    if model not in DCI_MODELS:
        raise ValueError(f"model: expected one of {DCI_MODELS}, got {model!r}")
    k, f = codes_train.shape[1], factors_train.shape[1]
    r = np.zeros((k, f))
    train_s, test_s = np.zeros(f), np.zeros(f)
    if model == "lasso":
        from sklearn.linear_model import Lasso

        mu, sd = codes_train.mean(0), codes_train.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        xtr, xte = (codes_train - mu) / sd, (codes_test - mu) / sd
        for j in range(f):
            ym, ys = factors_train[:, j].mean(), factors_train[:, j].std()
            ys = ys if ys > 0 else 1.0
            ytr, yte = (factors_train[:, j] - ym) / ys, (factors_test[:, j] - ym) / ys
            m = Lasso(alpha=lasso_alpha).fit(xtr, ytr)
            r[:, j] = np.abs(m.coef_)
            train_s[j], test_s[j] = m.score(xtr, ytr), m.score(xte, yte)
        return r, train_s, test_s
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    limit = nullcontext() if threads is None or model == "gbt" else threadpool_limits(limits=threads,
                                                                                       user_api="openmp")
    with limit:  # fit *and* predict: both synchronise OpenMP threads
        for j in range(f):
            y = factors_train[:, j]
            if np.unique(y).size < 2:
                raise ValueError(f"factors_train: factor column {j} takes a single value in the training sample; "
                                 f"DCI needs each scored factor to vary (draw more samples)")
            if model == "gbt":
                from sklearn.ensemble import GradientBoostingClassifier

                m = GradientBoostingClassifier(random_state=seed).fit(codes_train, y)
                r[:, j] = np.abs(m.feature_importances_)
            else:
                from sklearn.ensemble import HistGradientBoostingClassifier

                m = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_depth=3, max_leaf_nodes=8,
                                                   early_stopping=False, random_state=seed).fit(codes_train, y)
                r[:, j] = _hist_gain_importance(m, k)
            train_s[j] = np.mean(m.predict(codes_train) == y)
            test_s[j] = np.mean(m.predict(codes_test) == factors_test[:, j])
    return r, train_s, test_s


def dci_from_codes(codes_train, factors_train, codes_test, factors_test, *, model: str = DCI_DEFAULT_MODEL,
                   seed: int = 0, lasso_alpha: float = 0.02, threads: int | None = 1,
                   return_importance: bool = False) -> dict:
    """DCI from precomputed codes (N, K) and integer factor classes (N, F); see the module doc.

    Returns {"dci.disentanglement", "dci.completeness", "dci.informativeness_train", "dci.informativeness_test",
    "dci.informativeness_test_per_factor"} (the last a list of F test scores, in factor order: which factors the code
    holds at all, the reading beside a low disentanglement) plus "dci.importance_matrix" (K, F) numpy when
    ``return_importance``.
    """
    ctr = check_codes(codes_train, name="codes_train")
    cte = check_codes(codes_test, name="codes_test")
    if cte.shape[1] != ctr.shape[1]:
        raise ValueError(f"codes_test: {cte.shape[1]} dimensions, codes_train has {ctr.shape[1]}")
    ftr = check_factors(factors_train, ctr.shape[0], "factors_train")
    fte = check_factors(factors_test, cte.shape[0], "factors_test")
    if fte.shape[1] != ftr.shape[1]:
        raise ValueError(f"factors_test: {fte.shape[1]} factors, factors_train has {ftr.shape[1]}")
    check_not_constant(ctr, "codes_train")
    r, train_s, test_s = importance_matrix(ctr, ftr, cte, fte, model=model, seed=seed, lasso_alpha=lasso_alpha,
                                           threads=threads)
    out = {"dci.disentanglement": disentanglement(r), "dci.completeness": completeness(r),
           "dci.informativeness_train": float(train_s.mean()), "dci.informativeness_test": float(test_s.mean()),
           "dci.informativeness_test_per_factor": [float(v) for v in test_s]}
    if return_importance:
        out["dci.importance_matrix"] = r
    return out


def dci(dataset, representation, rng=0, *, num_train: int = 10000, num_test: int = 5000,
        model: str = DCI_DEFAULT_MODEL, lasso_alpha: float = 0.02, threads: int | None = 1,
        encode_batch_size: int = 256, cache: bool = True, progress: bool = False,
        return_importance: bool = False) -> dict:
    """DCI of ``representation`` on ``dataset`` (factors with one value, e.g. dSprites' colour, are skipped).

    ``rng`` (int or Generator) draws the samples; the tree models are seeded from it too, so equal seeds give
    equal scores.
    """
    if model not in DCI_MODELS:
        raise ValueError(f"model: expected one of {DCI_MODELS}, got {model!r}")
    g = as_generator(rng)
    ctr, ftr, cte, fte = train_test_codes(dataset, representation, g, num_train, num_test, name="dci",
                                          encode_batch_size=encode_batch_size, cache=cache, progress=progress)
    seed = int(g.integers(2**31 - 1))
    return dci_from_codes(ctr, ftr, cte, fte, model=model, seed=seed,
                          lasso_alpha=lasso_alpha, threads=threads, return_importance=return_importance)
