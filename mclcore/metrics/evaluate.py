"""Run several metrics on one representation, sharing the encoded codes (each grid point encoded once)."""
from __future__ import annotations

import time

from mclcore.metrics.dci import DCI_DEFAULT_MODEL, dci
from mclcore.metrics.factorvae import factor_vae_score
from mclcore.metrics.lps import lps
from mclcore.metrics.mig import mig
from mclcore.metrics.sap import sap
from mclcore.metrics.utils import EncodedDataset

__all__ = ["evaluate", "METRICS"]

METRICS = ("factorvae", "dci", "mig", "sap", "lps")


def _scaled(n: int, scale: float, minimum: int) -> int:
    return max(minimum, int(round(n * scale)))


def evaluate(dataset, representation, metrics=("factorvae", "dci", "mig", "sap"), *, seed: int = 0,
             sample_scale: float = 1.0, dci_model: str = DCI_DEFAULT_MODEL, encode_batch_size: int = 256,
             cache: bool = True, progress: bool = False) -> tuple[dict, dict]:
    """Evaluate ``metrics`` (names from METRICS) with the disentanglement_lib protocol.

    Every metric starts from ``seed`` (as disentanglement_lib seeds each evaluation with random_seed = 0).
    ``sample_scale`` multiplies every sample count of the protocol (1.0 = the protocol; smaller for smoke tests).
    ``dci_model`` defaults to disentanglement_lib's ``"gbt"``; ``"hist_gbt"`` is much faster but gives no importance
    to redundant copies of a code dimension (see :mod:`mclcore.metrics.dci`).
    Returns ``(scores, seconds)``: the merged namespaced score dicts and the wall time per metric.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics: unknown {unknown}; choose from {METRICS}")
    if not sample_scale > 0:
        raise ValueError(f"sample_scale: expected > 0, got {sample_scale}")
    enc = representation if isinstance(representation, EncodedDataset) else EncodedDataset(
        dataset, representation, batch_size=encode_batch_size, cache=cache, progress=progress)
    s = sample_scale
    calls = {
        "factorvae": lambda: factor_vae_score(dataset, enc, seed, num_train=_scaled(10000, s, 2),
                                              num_eval=_scaled(5000, s, 2),
                                              num_variance_estimate=_scaled(10000, s, 64)),
        "dci": lambda: dci(dataset, enc, seed, num_train=_scaled(10000, s, 64), num_test=_scaled(5000, s, 32),
                           model=dci_model),
        "mig": lambda: mig(dataset, enc, seed, num_train=_scaled(10000, s, 64)),
        "sap": lambda: sap(dataset, enc, seed, num_train=_scaled(10000, s, 64), num_test=_scaled(5000, s, 32)),
        "lps": lambda: lps(dataset, enc, seed, num_samples=_scaled(10000, s, 100)),
    }
    scores, seconds = {}, {}
    for name in metrics:
        t0 = time.perf_counter()
        scores.update(calls[name]())
        seconds[name] = time.perf_counter() - t0
    return scores, seconds
