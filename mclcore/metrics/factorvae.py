"""FactorVAE score (Kim & Mnih 2018, "Disentangling by Factorising"), disentanglement_lib protocol.

Protocol (defaults = disentanglement_lib's ``unsupervised_study_v1`` settings):

1. Global scale: code variances (ddof=1) over ``num_variance_estimate`` = 10,000 uniform samples. Dimensions
   with standard deviation < ``prune_threshold`` = 0.05 are pruned (collapsed units).
2. One vote: draw a factor k uniformly among the factors that vary (size > 1), draw ``batch_size`` = 64 grid
   points with factor k held at one random value and the others uniform, encode them, and take
   ``d = argmin_j var_j(batch) / var_j(global)`` over the active dimensions. The vote is (k, d).
3. ``num_train`` = 10,000 votes make the vote matrix V (factors x code dims); the classifier maps each code dim to
   its majority factor ``argmax_k V[k, d]``. Accuracy = correctly classified votes / all votes, on the training
   votes and on ``num_eval`` = 5,000 fresh votes (``factorvae.eval_accuracy`` is the score papers report).

The pruned-index quirk. disentanglement_lib computes the argmin over the *pruned list* of dimensions and uses that
position (not the original dimension) as the column of the vote matrix, and reports ``num_active_dims`` as the
length of the boolean mask, i.e. all dimensions. Because the position -> dimension map is a bijection on the
active dimensions, both column conventions give *identical accuracies*; only the vote matrix's column labels
differ. ``vote_index="original"`` (default) labels columns by the original dimension (the vote matrix is
interpretable); ``vote_index="pruned"`` reproduces disentanglement_lib's matrix (first ``num_active`` columns).
``num_active_dims`` here is always the number of active dimensions.

Votes are sampled vectorised (all 64-point batches at once) and codes come from an
:class:`~mclcore.metrics.utils.EncodedDataset`, so each grid point is encoded once.
"""
from __future__ import annotations

import warnings

import numpy as np

from mclcore.metrics.utils import as_encoded, as_generator, check_not_constant

__all__ = ["factor_vae_score", "factor_vae_votes"]


def factor_vae_votes(encoded, rng, *, num_votes: int, batch_size: int, global_var: np.ndarray,
                     active: np.ndarray, vote_index: str = "original", chunk: int = 1000) -> np.ndarray:
    """(len(varying factors), K) int64 vote matrix from ``num_votes`` fixed-factor batches (see module doc)."""
    ds = encoded.dataset
    varying = np.asarray(ds.varying_factors)
    k_dims = global_var.shape[0]
    active_idx = np.flatnonzero(active)
    votes = np.zeros((varying.size, k_dims), dtype=np.int64)
    for start in range(0, num_votes, chunk):
        p = min(chunk, num_votes - start)
        which = rng.integers(0, varying.size, size=p)                    # row of the vote matrix
        factors = ds.sample_factors(p * batch_size, rng).reshape(p, batch_size, -1)
        held = varying[which]
        # Hold factor `held[i]` of batch i at the value of the batch's first point (as disentanglement_lib does).
        factors[np.arange(p), :, held] = factors[np.arange(p), 0, held][:, None]
        codes = encoded.codes(factors.reshape(p * batch_size, -1), desc="factorvae").reshape(p, batch_size, k_dims)
        local = codes.var(axis=1, ddof=1)
        pos = np.argmin(local[:, active_idx] / global_var[active_idx], axis=1)
        col = pos if vote_index == "pruned" else active_idx[pos]
        np.add.at(votes, (which, col), 1)
    return votes


def factor_vae_score(dataset, representation, rng=0, *, batch_size: int = 64, num_train: int = 10000,
                     num_eval: int = 5000, num_variance_estimate: int = 10000, prune_threshold: float = 0.05,
                     vote_index: str = "original", encode_batch_size: int = 256, cache: bool = True,
                     progress: bool = False, return_votes: bool = False) -> dict:
    """FactorVAE score of ``representation`` on ``dataset``.

    Args:
        dataset: a GroundTruthDataset.
        representation: callable (N, 64, 64, 3) uint8 -> (N, K) codes, or an EncodedDataset of ``dataset``.
        rng: int seed or numpy Generator.
        batch_size, num_train, num_eval, num_variance_estimate, prune_threshold: the protocol (module doc).
        vote_index: "original" or "pruned" (disentanglement_lib's column convention; same accuracies).
        encode_batch_size, cache, progress: see :class:`~mclcore.metrics.utils.EncodedDataset`.
        return_votes: also return the train/eval vote matrices (numpy, under "factorvae.train_votes" etc.).
    Returns:
        {"factorvae.train_accuracy", "factorvae.eval_accuracy", "factorvae.num_active_dims"} (floats / int).
    Raises:
        ValueError for bad arguments, non-finite codes, or codes that are constant in every dimension.
    If every dimension is pruned but not constant (all std < prune_threshold), a RuntimeWarning is issued and the
    accuracies are 0, as in disentanglement_lib (rescale the codes or lower ``prune_threshold``).
    """
    if vote_index not in ("original", "pruned"):
        raise ValueError(f"vote_index: expected 'original' or 'pruned', got {vote_index!r}")
    for name, v in (("batch_size", batch_size), ("num_train", num_train), ("num_eval", num_eval),
                    ("num_variance_estimate", num_variance_estimate)):
        if not isinstance(v, (int, np.integer)) or v < (2 if name in ("batch_size", "num_variance_estimate") else 1):
            raise ValueError(f"{name}: expected an int >= {2 if name in ('batch_size', 'num_variance_estimate') else 1}"
                             f", got {v!r}")
    if not prune_threshold >= 0:
        raise ValueError(f"prune_threshold: expected >= 0, got {prune_threshold}")
    g = as_generator(rng)
    enc = as_encoded(dataset, representation, batch_size=encode_batch_size, cache=cache, progress=progress)
    if not dataset.varying_factors:
        raise ValueError("dataset: no factor has more than one value")
    codes = enc.codes_at(dataset.sample_index(num_variance_estimate, g), desc="factorvae variance")
    check_not_constant(codes, "representation output")
    global_var = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    out = {"factorvae.num_active_dims": int(active.sum())}
    if not active.any():
        warnings.warn(f"factor_vae_score: all {active.size} code dimensions have std < prune_threshold="
                      f"{prune_threshold} (max std {np.sqrt(global_var.max()):.3g}); scoring 0 as "
                      f"disentanglement_lib does. Rescale the codes or lower prune_threshold.", RuntimeWarning,
                      stacklevel=2)
        out.update({"factorvae.train_accuracy": 0.0, "factorvae.eval_accuracy": 0.0})
        return out
    kw = dict(batch_size=batch_size, global_var=global_var, active=active, vote_index=vote_index)
    train_votes = factor_vae_votes(enc, g, num_votes=num_train, **kw)
    classifier = np.argmax(train_votes, axis=0)
    cols = np.arange(train_votes.shape[1])
    eval_votes = factor_vae_votes(enc, g, num_votes=num_eval, **kw)
    out["factorvae.train_accuracy"] = float(train_votes[classifier, cols].sum() / train_votes.sum())
    out["factorvae.eval_accuracy"] = float(eval_votes[classifier, cols].sum() / eval_votes.sum())
    if return_votes:
        out["factorvae.train_votes"] = train_votes
        out["factorvae.eval_votes"] = eval_votes
    return out
