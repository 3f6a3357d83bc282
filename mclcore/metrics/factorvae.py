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

Continuous factors / a known generative process: :func:`factor_vae_score_sampled` runs the same protocol (the same
vote and majority-vote code) on fresh samples from a caller's sampler instead of a grid (step 1's global sample and
step 2's batches are new draws; a held continuous factor is constant within its batch).
"""
from __future__ import annotations

import warnings

import numpy as np

from mclcore.metrics.utils import as_encoded, as_generator, check_not_constant

__all__ = ["factor_vae_score", "factor_vae_score_sampled", "factor_vae_votes"]


def _vote_matrix(sample_batches, n_rows: int, rng, *, num_votes: int, batch_size: int, global_var: np.ndarray,
                 active: np.ndarray, vote_index: str = "original", chunk: int = 1000) -> np.ndarray:
    """(n_rows, K) int64 vote matrix from ``num_votes`` fixed-factor batches, the core both paths share.
    ``sample_batches(which, batch_size, rng)`` returns the (p, batch_size, K) codes of p batches, batch i holding
    the factor of vote-matrix row ``which[i]`` at the value of the batch's first point."""
    k_dims = global_var.shape[0]
    active_idx = np.flatnonzero(active)
    votes = np.zeros((n_rows, k_dims), dtype=np.int64)
    for start in range(0, num_votes, chunk):
        p = min(chunk, num_votes - start)
        which = rng.integers(0, n_rows, size=p)                          # row of the vote matrix
        codes = sample_batches(which, batch_size, rng)                   # (p, batch_size, K)
        local = codes.var(axis=1, ddof=1)
        pos = np.argmin(local[:, active_idx] / global_var[active_idx], axis=1)
        col = pos if vote_index == "pruned" else active_idx[pos]
        np.add.at(votes, (which, col), 1)
    return votes


def _grid_batches(encoded):
    """The grid dataset's ``sample_batches`` of :func:`_vote_matrix` (rows: the varying factors)."""
    ds = encoded.dataset
    varying = np.asarray(ds.varying_factors)

    def sample(which, batch_size, rng):
        p = which.size
        factors = ds.sample_factors(p * batch_size, rng).reshape(p, batch_size, -1)
        held = varying[which]
        # Hold factor `held[i]` of batch i at the value of the batch's first point (as disentanglement_lib does).
        factors[np.arange(p), :, held] = factors[np.arange(p), 0, held][:, None]
        return encoded.codes(factors.reshape(p * batch_size, -1), desc="factorvae").reshape(p, batch_size, -1)
    return sample


def factor_vae_votes(encoded, rng, *, num_votes: int, batch_size: int, global_var: np.ndarray,
                     active: np.ndarray, vote_index: str = "original", chunk: int = 1000) -> np.ndarray:
    """(len(varying factors), K) int64 vote matrix from ``num_votes`` fixed-factor batches (see module doc)."""
    return _vote_matrix(_grid_batches(encoded), len(encoded.dataset.varying_factors), rng, num_votes=num_votes,
                        batch_size=batch_size, global_var=global_var, active=active, vote_index=vote_index,
                        chunk=chunk)


def _check_protocol(batch_size, num_train, num_eval, num_variance_estimate, prune_threshold, vote_index) -> None:
    if vote_index not in ("original", "pruned"):
        raise ValueError(f"vote_index: expected 'original' or 'pruned', got {vote_index!r}")
    for name, v in (("batch_size", batch_size), ("num_train", num_train), ("num_eval", num_eval),
                    ("num_variance_estimate", num_variance_estimate)):
        if not isinstance(v, (int, np.integer)) or v < (2 if name in ("batch_size", "num_variance_estimate") else 1):
            raise ValueError(f"{name}: expected an int >= {2 if name in ('batch_size', 'num_variance_estimate') else 1}"
                             f", got {v!r}")
    if not prune_threshold >= 0:
        raise ValueError(f"prune_threshold: expected >= 0, got {prune_threshold}")


def _score(codes: np.ndarray, sample_batches, n_rows: int, g, *, batch_size: int, num_train: int, num_eval: int,
           prune_threshold: float, vote_index: str, return_votes: bool, who: str) -> dict:
    """Steps 1-3 of the module doc from the global sample's ``codes`` (N, K) and the batches' sampler."""
    check_not_constant(codes, "representation output")
    global_var = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    out = {"factorvae.num_active_dims": int(active.sum())}
    if not active.any():
        warnings.warn(f"{who}: all {active.size} code dimensions have std < prune_threshold="
                      f"{prune_threshold} (max std {np.sqrt(global_var.max()):.3g}); scoring 0 as "
                      f"disentanglement_lib does. Rescale the codes or lower prune_threshold.", RuntimeWarning,
                      stacklevel=3)
        out.update({"factorvae.train_accuracy": 0.0, "factorvae.eval_accuracy": 0.0})
        return out
    kw = dict(batch_size=batch_size, global_var=global_var, active=active, vote_index=vote_index)
    train_votes = _vote_matrix(sample_batches, n_rows, g, num_votes=num_train, **kw)
    classifier = np.argmax(train_votes, axis=0)
    cols = np.arange(train_votes.shape[1])
    eval_votes = _vote_matrix(sample_batches, n_rows, g, num_votes=num_eval, **kw)
    out["factorvae.train_accuracy"] = float(train_votes[classifier, cols].sum() / train_votes.sum())
    out["factorvae.eval_accuracy"] = float(eval_votes[classifier, cols].sum() / eval_votes.sum())
    if return_votes:
        out["factorvae.train_votes"] = train_votes
        out["factorvae.eval_votes"] = eval_votes
    return out


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
    _check_protocol(batch_size, num_train, num_eval, num_variance_estimate, prune_threshold, vote_index)
    g = as_generator(rng)
    enc = as_encoded(dataset, representation, batch_size=encode_batch_size, cache=cache, progress=progress)
    if not dataset.varying_factors:
        raise ValueError("dataset: no factor has more than one value")
    codes = enc.codes_at(dataset.sample_index(num_variance_estimate, g), desc="factorvae variance")
    return _score(codes, _grid_batches(enc), len(dataset.varying_factors), g, batch_size=batch_size,
                  num_train=num_train, num_eval=num_eval, prune_threshold=prune_threshold, vote_index=vote_index,
                  return_votes=return_votes, who="factor_vae_score")


def factor_vae_score_sampled(sample_codes, n_factors: int, rng=0, *, batch_size: int = 64, num_train: int = 10000,
                             num_eval: int = 5000, num_variance_estimate: int = 10000, prune_threshold: float = 0.05,
                             vote_index: str = "original", return_votes: bool = False) -> dict:
    """FactorVAE score with a sampler of codes instead of a grid dataset: for factors that are continuous or
    have a known generative process (e.g. the synthetic study, :mod:`mclcore.studies.synthetic.principles`).

    Args:
        sample_codes: callable ``(n, batch_size, held, rng) -> (n, batch_size, K)`` codes of n batches of fresh
            samples drawn with the numpy Generator ``rng``; ``held`` is None (independent draws: the global
            variance, called once with n = 1, batch_size = ``num_variance_estimate``) or an (n,) int array, batch i
            holding factor ``held[i]`` (0 .. n_factors - 1) at the value of the batch's first point.
        n_factors: number of factors (all vary). Other args and the result: :func:`factor_vae_score`.
    """
    _check_protocol(batch_size, num_train, num_eval, num_variance_estimate, prune_threshold, vote_index)
    if isinstance(n_factors, bool) or not isinstance(n_factors, (int, np.integer)) or n_factors < 1:
        raise ValueError(f"n_factors: expected an int >= 1, got {n_factors!r}")
    g = as_generator(rng)

    def checked(n, b, held):
        c = np.asarray(sample_codes(n, b, held, g), dtype=np.float64)
        if c.ndim != 3 or c.shape[:2] != (n, b):
            raise ValueError(f"sample_codes: expected an array of shape ({n}, {b}, K), got {c.shape}")
        if not np.isfinite(c).all():
            raise ValueError("sample_codes: codes contain NaN or inf")
        return c
    codes = checked(1, num_variance_estimate, None)[0]
    return _score(codes, lambda which, b, _rng: checked(which.size, b, which), n_factors, g,
                  batch_size=batch_size, num_train=num_train, num_eval=num_eval, prune_threshold=prune_threshold,
                  vote_index=vote_index, return_votes=return_votes, who="factor_vae_score_sampled")
