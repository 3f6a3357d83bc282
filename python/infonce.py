"""Pure-autograd reference of ``mclcore.ops.infonce``: builds the full B x B logits, float64-capable.

The loss of the paper's Eq. 18 / Algorithm 1 on L2-normalised projections (docs/DESIGN.md §2.1)::

    q_i = p_i / max(|p_i|, eps),   k^_j = k_j / max(|k_j|, eps),   S_ij = q_i . k^_j / tau
    loss = mean_i( logsumexp_j S_ij - S_ii )                                   (groups=None)
    loss = mean_i( logsumexp_j S_ij - logsumexp_{j : g_j = g_i} S_ij )       (groups given, SupCon's L_in)

Memory is O(B^2) (logits, softmax and their gradients): this is the baseline the tiled op is measured against.

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
            eps: float = 1e-12) -> torch.Tensor:
    """p, k: (B, d); groups: optional (B,) integer ids. Returns the 0-dim loss in the dtype of p."""
    q = normalize_rows(p, eps)            # (B, d)
    kh = normalize_rows(k, eps)           # (B, d)
    logits = q @ kh.t() / tau             # (B, B)
    if groups is None:
        # Positives on the diagonal: exactly Algorithm 1's cross-entropy with labels arange(B).
        return F.cross_entropy(logits, torch.arange(p.shape[0], device=p.device))
    positive = groups[:, None] == groups[None, :]                              # (B, B), diagonal always True
    lse_all = torch.logsumexp(logits, dim=1)                                   # (B,)
    lse_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)  # (B,)
    return (lse_all - lse_pos).mean()


class InfoNCEInputs(NamedTuple):
    """The tensor arguments of ``infonce``: call it as ``infonce(p, k, tau, groups=groups)``."""

    p: torch.Tensor              # (B, d) queries
    k: torch.Tensor              # (B, d) keys, row i the positive of query i
    groups: torch.Tensor | None  # (B,) int64 condition ids, or None for diagonal positives


def sample_inputs(batch: int = 8, dim: int = 16, *, n_groups: int | None = None, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu", seed: int = 0, generator: torch.Generator | None = None,
                  requires_grad: bool = False, contiguous: bool = True) -> InfoNCEInputs:
    """Random inputs of ``infonce``: p, k ~ N(0, 1) of shape (batch, dim) and, with ``n_groups``, condition ids
    uniform in ``range(n_groups)`` (multi-positive mode; None: diagonal positives).

    Drawn in this order (p, k, groups) on the CPU from ``generator``, or from ``torch.Generator().manual_seed(seed)``
    when it is None, p and k in float64 and then cast to ``dtype`` and moved to ``device``: a seed gives the same
    values, up to that rounding, in every dtype and on every device. ``requires_grad`` makes p and k leaves that
    require grad. ``contiguous=False`` returns the same values in non-contiguous views: p column-major (strides
    (1, B)), k every other column of a (B, 2 dim) buffer, groups every other entry of a (2B,) buffer.
    """
    gen = torch.Generator().manual_seed(seed) if generator is None else generator
    p = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(device, dtype)
    k = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(device, dtype)
    groups = None if n_groups is None else torch.randint(0, n_groups, (batch,), generator=gen).to(device)
    if not contiguous:
        p = p.t().contiguous().t()
        k = torch.stack([k, k], dim=2)[:, :, 0]
        groups = None if groups is None else torch.stack([groups, groups], dim=1)[:, 0]
    if requires_grad:
        p, k = p.requires_grad_(), k.requires_grad_()
    return InfoNCEInputs(p, k, groups)


def infonce_stacked(p: torch.Tensor, k: torch.Tensor, tau: float = 0.1, *, groups: torch.Tensor | None = None,
                    eps: float = 1e-12) -> torch.Tensor:
    """Member-stacked reference: p, k (M, B, d), groups optional (M, B) -> (M,) losses, member by member."""
    return torch.stack([infonce(p[m], k[m], tau, groups=None if groups is None else groups[m], eps=eps)
                        for m in range(p.shape[0])])
