"""``torch.ops.mclcore.infonce``: InfoNCE over row-normalised projections, tiled (DESIGN §2.1).

The loss of the paper's Eq. 18 / Algorithm 1 (``F.cross_entropy(q @ k.T / tau, arange(B))`` on L2-normalised
``q``, ``k``), computed like flash attention: the forward keeps two (B,) row log-sum-exps, the backward recomputes
``S = q k^T / tau`` tile by tile, so no B x B tensor ever exists (memory O(B d + tile)). An optional multi-positive
mode takes condition ids (``groups``) and counts every row with the same id as a positive.

This module registers the fake kernels (torch.compile / meta) of ``mclcore::infonce`` and
``mclcore::infonce_backward``, the autograd formula of ``mclcore::infonce``, and the validated entry point
:func:`infonce`. The kernels are in ``csrc/infonce/``; the pure-autograd reference is ``python/infonce.py``.
"""
from __future__ import annotations

import torch

from mclcore.ops import _checks

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16 / bfloat16 are computed in float32 by the kernel; the loss and row statistics keep that dtype.
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("mclcore::infonce")
def _infonce_fake(p, k, groups, tau, eps):
    torch._check(p.dim() == 2 and k.dim() == 2, lambda: "mclcore.infonce: p and k must be 2-D")
    torch._check(p.shape[0] == k.shape[0] and p.shape[1] == k.shape[1],
                 lambda: "mclcore.infonce: p and k must have the same shape")
    torch._check(k.dtype == p.dtype, lambda: "mclcore.infonce: p and k must have the same dtype")
    ct = _compute_dtype(p.dtype)
    B = p.shape[0]
    # The C++ kernel returns fresh contiguous tensors: a 0-dim loss and two (B,) row statistics.
    return p.new_empty((), dtype=ct), p.new_empty((B,), dtype=ct), p.new_empty((B,), dtype=ct)


@torch.library.register_fake("mclcore::infonce_backward")
def _infonce_backward_fake(grad_loss, p, k, groups, lse_all, lse_pos, tau, eps):
    # Contiguous, in the dtypes of p and k (x.new_empty, not empty_like: the kernel never keeps input strides).
    return p.new_empty(p.shape), k.new_empty(k.shape)


def _setup_context(ctx, inputs, output):
    p, k, groups, tau, eps = inputs
    _, lse_all, lse_pos = output
    ctx.save_for_backward(p, k, groups, lse_all, lse_pos)
    ctx.tau, ctx.eps = tau, eps
    # The row statistics are outputs for the backward's sake only; gradients flow through the loss.
    ctx.mark_non_differentiable(lse_all, lse_pos)


def _backward(ctx, grad_loss, _grad_lse_all, _grad_lse_pos):
    p, k, groups, lse_all, lse_pos = ctx.saved_tensors
    dp, dk = torch.ops.mclcore.infonce_backward.default(grad_loss, p, k, groups, lse_all, lse_pos, ctx.tau, ctx.eps)
    return (dp if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None, None, None, None)


torch.library.register_autograd("mclcore::infonce", _backward, setup_context=_setup_context)


def _check_groups(groups, B: int, device: torch.device) -> torch.Tensor:
    if not isinstance(groups, torch.Tensor):
        raise TypeError(f"groups: expected a ({B},) integer tensor of condition ids, got {type(groups).__name__}")
    if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
        raise TypeError(f"groups: expected an integer dtype (condition ids, int64 preferred), got {groups.dtype}")
    if groups.dim() != 1 or groups.shape[0] != B:
        raise ValueError(f"groups: expected shape ({B},), one id per row of p, got {tuple(groups.shape)}")
    if groups.device != device:
        raise ValueError(f"groups: expected a tensor on {device} (the device of p), got {groups.device}")
    return groups.to(torch.int64)


def infonce(
    p: torch.Tensor,
    k: torch.Tensor,
    tau: float = 0.1,
    *,
    groups: torch.Tensor | None = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    r"""InfoNCE loss between row-normalised queries and keys, with in-batch negatives.

    With ``q_i = p_i / max(|p_i|, eps)``, ``k^_j = k_j / max(|k_j|, eps)`` and ``S_ij = q_i . k^_j / tau``:

    * ``groups=None`` (the paper's Eq. 18, Algorithm 1: positives on the diagonal)::

          loss = mean_i( logsumexp_j S_ij - S_ii )

    * ``groups`` given (multi-positive, the "L_in" form of SupCon), ``P(i) = {j : groups[j] == groups[i]}``,
      which always contains ``i``::

          loss = mean_i( logsumexp_j S_ij - logsumexp_{j in P(i)} S_ij )

    Why the multi-positive mode: MCL keys come from the condition ``u``, and with a small alphabet many rows share
    one ``u`` (|U| = 8 at B = 256 gives about 32 rows each), so their keys are identical. In diagonal mode the
    ``n = |P(i)|`` equal logits of those rows all sit in the denominator (``n - 1`` copies of the positive key
    count as negatives), so ``logsumexp_j S_ij >= S_ii + log n`` and the loss can never drop below ``log n``
    (about 3.5 here), however well the queries align. Taking the log-sum-exp over ``P(i)`` as the positive term
    adds exactly that ``log n`` back: the loss then goes to 0 as the queries align with their condition's key and
    away from the others. With all ids distinct the two modes are identical. Both forms are >= 0.

    Args:
        p: (B, d) queries (e.g. projected mechanism gradients), float16 / bfloat16 / float32 / float64, B >= 2.
        k: (B, d) keys, same shape, dtype and device as ``p``.
        tau: temperature, a positive finite float (the paper uses 0.1 in App. D/E and 0.07 in section 5).
        groups: optional (B,) integer condition ids (converted to int64) for the multi-positive mode.
        eps: rows with norm <= eps are divided by eps instead of their norm (no division by zero).

    Returns:
        0-dim loss tensor, float64 for float64 inputs and float32 otherwise (float16 / bfloat16 inputs are
        computed in float32). Differentiable w.r.t. ``p`` and ``k``; gradients come back in their dtypes.

    Memory is O(B d) whatever B: at B = 16384, d = 128 the op needs tens of MiB where the B x B logits of the
    reference alone take 1 GiB. Custom ops have no forward-mode AD and this one no double backward.
    """
    _checks.tensor(p, "p", ndim=2)
    _checks.tensor(k, "k", ndim=2)
    if p.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"p: expected float16, bfloat16, float32 or float64, got {p.dtype}")
    if k.dtype != p.dtype:
        raise TypeError(f"k: expected the dtype of p ({p.dtype}), got {k.dtype}")
    if k.shape != p.shape:
        raise ValueError(f"k: expected the shape of p {tuple(p.shape)}, got {tuple(k.shape)}")
    if k.device != p.device:
        raise ValueError(f"k: expected a tensor on {p.device} (the device of p), got {k.device}")
    B, d = p.shape
    if B < 2:
        raise ValueError(f"p: expected a batch of at least 2 rows (in-batch negatives), got shape {tuple(p.shape)}")
    if d < 1:
        raise ValueError(f"p: expected at least 1 feature column, got shape {tuple(p.shape)}")
    if groups is not None:
        groups = _check_groups(groups, B, p.device)
    if torch.compiler.is_compiling():
        # Under torch.compile(dynamic=True) tau and eps can be symbolic floats, which math.isfinite cannot take, and
        # a data-dependent finiteness test would break the graph: check what traces; the kernel's TORCH_CHECKs
        # (tau, eps, and every row's norm, naming p or k) cover the rest when the graph runs.
        torch._check(tau > 0, lambda: "tau: expected a positive finite number")
        torch._check(eps > 0, lambda: "eps: expected a positive finite number")
    else:
        tau = _checks.positive_float(tau, "tau")
        eps = _checks.positive_float(eps, "eps")
        _checks.all_finite((p, "p"), (k, "k"))
    loss, _, _ = torch.ops.mclcore.infonce.default(p, k, groups, tau, eps)
    return loss
