"""Pure-autograd reference of ``mclcore.ops.infonce``: builds the full B x B logits, float64-capable.

The loss of the paper's Eq. 18 / Algorithm 1 on L2-normalised projections (docs/DESIGN.md §2.1)::

    q_i = p_i / max(|p_i|, eps),   k^_j = k_j / max(|k_j|, eps),   S_ij = q_i . k^_j / tau
    loss = mean_i( logsumexp_j S_ij - S_ii )                                   (groups=None)
    loss = mean_i( logsumexp_j S_ij - logsumexp_{j : g_j = g_i} S_ij )       (groups given, SupCon's L_in)

Rectangular form (``offset`` given): p (B, d) query rows against k (N, d) keys, the positive of row i being key
``offset + i`` (F.cross_entropy with labels ``offset + arange(B)``), groups one id per key, (N,), row i's own id
``groups[offset + i]``; the mean is over the B rows. This is one rank's share of a cross-rank InfoNCE (the local
queries against every rank's keys, offset = rank * B); N = B, offset = 0 is the square form.

Memory is O(B N) (logits, softmax and their gradients): this is the baseline the tiled op is measured against.

:func:`sample_inputs` draws the op's random inputs for tests/ops/test_infonce.py and benchmarks/bench_infonce.py.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, d) -> (B, d): x_i / max(|x_i|, eps)."""
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(eps)


def infonce(p: torch.Tensor, k: torch.Tensor, tau: float = 0.1, *, groups: torch.Tensor | None = None,
            eps: float = 1e-12, offset: int | None = None) -> torch.Tensor:
    """p: (B, d); k: (B, d), or (N, d) with ``offset`` (row i's positive is key offset + i); groups: optional integer
    ids, one per key ((B,), or (N,) with ``offset``). Returns the 0-dim loss in the dtype of p."""
    q = normalize_rows(p, eps)            # (B, d)
    kh = normalize_rows(k, eps)           # (N, d)
    logits = q @ kh.t() / tau             # (B, N)
    labels = torch.arange(p.shape[0], device=p.device) + (offset or 0)  # (B,) the positive key of each row
    if groups is None:
        # Positives on the (shifted) diagonal: exactly Algorithm 1's cross-entropy with labels offset + arange(B).
        return F.cross_entropy(logits, labels)
    positive = groups[labels][:, None] == groups[None, :]                      # (B, N), column labels_i always True
    lse_all = torch.logsumexp(logits, dim=1)                                   # (B,)
    lse_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)  # (B,)
    return (lse_all - lse_pos).mean()


class InfoNCEInputs(NamedTuple):
    """The tensor arguments of ``infonce``: call it as ``infonce(p, k, tau, groups=groups)`` (plus ``offset=`` for
    keys with more rows than p)."""

    p: torch.Tensor              # (B, d) queries
    k: torch.Tensor              # (B, d) keys, row i the positive of query i; (N, d) in the rectangular form
    groups: torch.Tensor | None  # (B,) (or (N,)) int64 condition ids of the keys, or None for diagonal positives


def sample_inputs(batch: int = 8, dim: int = 16, *, n_groups: int | None = None, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu", seed: int = 0, generator: torch.Generator | None = None,
                  requires_grad: bool = False, contiguous: bool = True, n_keys: int | None = None) -> InfoNCEInputs:
    """Random inputs of ``infonce``: p ~ N(0, 1) of shape (batch, dim), k of shape (n_keys, dim) (``n_keys`` None:
    batch; more rows for the rectangular form) and, with ``n_groups``, one condition id per key row, uniform in
    ``range(n_groups)`` (multi-positive mode; None: diagonal positives).

    Drawn in this order (p, k, groups) on the CPU from ``generator``, or from ``torch.Generator().manual_seed(seed)``
    when it is None, p and k in float64 and then cast to ``dtype`` and moved to ``device``: a seed gives the same
    values, up to that rounding, in every dtype and on every device. ``requires_grad`` makes p and k leaves that
    require grad. ``contiguous=False`` returns the same values in non-contiguous views: p column-major (strides
    (1, B)), k every other column of a (B, 2 dim) buffer, groups every other entry of a (2B,) buffer.
    """
    gen = torch.Generator().manual_seed(seed) if generator is None else generator
    n_keys = batch if n_keys is None else n_keys
    p = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(device, dtype)
    k = torch.randn(n_keys, dim, generator=gen, dtype=torch.float64).to(device, dtype)
    groups = None if n_groups is None else torch.randint(0, n_groups, (n_keys,), generator=gen).to(device)
    if not contiguous:
        p = p.t().contiguous().t()
        k = torch.stack([k, k], dim=2)[:, :, 0]
        groups = None if groups is None else torch.stack([groups, groups], dim=1)[:, 0]
    if requires_grad:
        p, k = p.requires_grad_(), k.requires_grad_()
    return InfoNCEInputs(p, k, groups)


def infonce_stacked(p: torch.Tensor, k: torch.Tensor, tau: float = 0.1, *, groups: torch.Tensor | None = None,
                    eps: float = 1e-12, offset: int | None = None) -> torch.Tensor:
    """Member-stacked reference: p (M, B, d), k (M, B, d) (or (M, N, d) with ``offset``), groups optional (M, B)
    (or (M, N)) -> (M,) losses, member by member."""
    return torch.stack([infonce(p[m], k[m], tau, groups=None if groups is None else groups[m], eps=eps,
                                offset=offset) for m in range(p.shape[0])])
