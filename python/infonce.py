"""Pure-autograd reference of ``mclcore.ops.infonce``: builds the full B x B logits, float64-capable.

The loss of the paper's Eq. 18 / Algorithm 1 on L2-normalised projections (docs/DESIGN.md §2.1)::

    q_i = p_i / max(|p_i|, eps),   k^_j = k_j / max(|k_j|, eps),   S_ij = q_i . k^_j / tau
    loss = mean_i( logsumexp_j S_ij - S_ii )                                   (groups=None)
    loss = mean_i( logsumexp_j S_ij - logsumexp_{j : g_j = g_i} S_ij )       (groups given, SupCon's L_in)

Memory is O(B^2) (logits, softmax and their gradients): this is the baseline the tiled op is measured against.
"""
from __future__ import annotations

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
