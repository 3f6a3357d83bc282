"""``torch.ops.mclcore.infonce``: InfoNCE over row-normalised projections, tiled (docs/DESIGN.md §2.1).

The loss of the paper's Eq. 18 / Algorithm 1 (``F.cross_entropy(q @ k.T / tau, arange(B))`` on L2-normalised
``q``, ``k``), computed like flash attention: the forward keeps two (B,) row log-sum-exps, the backward recomputes
``S = q k^T / tau`` tile by tile, so no B x B tensor ever exists (memory O(B d + tile)). An optional multi-positive
mode takes condition ids (``groups``) and counts every row with the same id as a positive. A rectangular mode
(``offset``) takes B local query rows against N >= B keys, e.g. one rank's queries against every rank's keys.

Two kernel paths. Inference (no gradient needed): ``mclcore::infonce``, differentiable through
``mclcore::infonce_backward`` when called directly. Training (grad mode on and ``p`` or ``k`` requiring grad):
``mclcore::infonce_with_grad`` computes the loss and its gradients in one call, three B x B x d matrix products
instead of four, and the backward only scales them by the upstream gradient.

This module registers the fake kernels (torch.compile / meta) of the three ops, the autograd formulas of
``mclcore::infonce`` and ``mclcore::infonce_with_grad``, and the validated entry point :func:`infonce`. The
kernels are in ``csrc/infonce/``; the pure-autograd reference is ``python/infonce.py``.
"""
from __future__ import annotations

import torch

from mclcore.ops import _backend, _checks

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16 / bfloat16: the log-sum-exps and the loss are float32 (products accumulate in float32) on every backend.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_fake_inputs(p, k, offset, op: str) -> None:
    # 2-D (B, d), or 3-D (M, B, d) member-stacked: every output gains the leading member axis. With an offset
    # (rectangular mode) k has N rows of its own: (N, d) resp. (M, N, d).
    torch._check(p.dim() in (2, 3) and k.dim() == p.dim(),
                 lambda: f"mclcore.{op}: p and k must be 2-D (B, d) or 3-D (M, B, d) member-stacked")
    if offset is None:
        torch._check(all(a == b for a, b in zip(p.shape, k.shape)),
                     lambda: f"mclcore.{op}: p and k must have the same shape")
    else:
        same = [i for i in range(p.dim()) if i != p.dim() - 2]  # every axis but the rows
        torch._check(all(p.shape[i] == k.shape[i] for i in same),
                     lambda: f"mclcore.{op}: p (B, d) and k (N, d) must agree in every axis but the rows")
    torch._check(k.dtype == p.dtype, lambda: f"mclcore.{op}: p and k must have the same dtype")


@torch.library.register_fake("mclcore::infonce")
def _infonce_fake(p, k, groups, tau, eps, offset=None):
    _check_fake_inputs(p, k, offset, "infonce")
    ct = _compute_dtype(p.dtype)
    rows = p.shape[:-1]  # (B,), or (M, B) member-stacked
    # The C++ kernel returns fresh contiguous tensors: a 0-dim (or (M,)) loss and two (B,) (or (M, B)) row statistics.
    return p.new_empty(p.shape[:-2], dtype=ct), p.new_empty(rows, dtype=ct), p.new_empty(rows, dtype=ct)


@torch.library.register_fake("mclcore::infonce_backward")
def _infonce_backward_fake(grad_loss, p, k, groups, lse_all, lse_pos, tau, eps, offset=None):
    # Contiguous, in the dtypes of p and k (x.new_empty, not empty_like: the kernel never keeps input strides).
    return p.new_empty(p.shape), k.new_empty(k.shape)


def _setup_context(ctx, inputs, output):
    p, k, groups, tau, eps, offset = inputs
    _, lse_all, lse_pos = output
    ctx.save_for_backward(p, k, groups, lse_all, lse_pos)
    ctx.tau, ctx.eps, ctx.offset = tau, eps, offset
    # The row statistics are outputs for the backward's sake only; gradients flow through the loss.
    ctx.mark_non_differentiable(lse_all, lse_pos)


def _backward(ctx, grad_loss, _grad_lse_all, _grad_lse_pos):
    p, k, groups, lse_all, lse_pos = ctx.saved_tensors
    dp, dk = torch.ops.mclcore.infonce_backward.default(grad_loss, p, k, groups, lse_all, lse_pos, ctx.tau, ctx.eps,
                                                        ctx.offset)
    return (dp if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None, None, None, None, None)


torch.library.register_autograd("mclcore::infonce", _backward, setup_context=_setup_context)

# CUDA tensors: Triton or CUDA C++ kernels, chosen per call (mclcore/ops/_backend.py, MCLCORE_BACKEND).
for _op in ("infonce", "infonce_backward", "infonce_with_grad"):
    _backend.register_cuda(_op)


# The training path: ``mclcore::infonce_with_grad`` computes the loss and its gradients (for an upstream gradient of
# 1) in one call, with three matrix products where infonce + infonce_backward make four (its backward recomputes S).
# At B = 256, d = 128 the products are most of the time (~0.19 ms each on one core of the 2-core AMD EPYC dev VM (2026-11)): forward+backward
# went from about the reference's time to 1.5x faster on one thread, 1.65-1.8x on two (quiet machine). The autograd
# formula only scales the saved gradients.


@torch.library.register_fake("mclcore::infonce_with_grad")
def _infonce_with_grad_fake(p, k, groups, tau, eps, offset=None):
    _check_fake_inputs(p, k, offset, "infonce_with_grad")
    # A 0-dim loss in the compute dtype; dp, dk contiguous in the input dtype (new_empty, as the kernel returns).
    return p.new_empty(p.shape[:-2], dtype=_compute_dtype(p.dtype)), p.new_empty(p.shape), k.new_empty(k.shape)


def _setup_context_with_grad(ctx, inputs, output):
    _, dp, dk = output
    ctx.save_for_backward(dp, dk)
    # dp and dk are constants of the graph: no gradient flows through them, so there is no double backward (as for
    # infonce, whose backward op has no autograd formula).
    ctx.mark_non_differentiable(dp, dk)
    # Their (absent) upstream gradients stay None instead of two (B, d) zero tensors made for every backward.
    ctx.set_materialize_grads(False)


def _scaled(grad_loss, g):
    # grad_loss is 0-dim (or (M,) member-stacked: one per member, broadcast over that member's (B, d)), so the
    # product keeps the dtype of g (the input's) unless type promotion says otherwise.
    out = (grad_loss if grad_loss.dim() == 0 else grad_loss[:, None, None]) * g
    return out if out.dtype == g.dtype else out.to(g.dtype)


def _backward_with_grad(ctx, grad_loss, _grad_dp, _grad_dk):
    if grad_loss is None:  # no gradient reached the loss (grads are not materialised as zeros, see above)
        return None, None, None, None, None, None
    dp, dk = ctx.saved_tensors
    return (
        _scaled(grad_loss, dp) if ctx.needs_input_grad[0] else None,
        _scaled(grad_loss, dk) if ctx.needs_input_grad[1] else None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd("mclcore::infonce_with_grad", _backward_with_grad,
                                setup_context=_setup_context_with_grad)


def _check_groups(groups, rows: tuple, device: torch.device, of: str) -> torch.Tensor:
    def shape() -> str:  # "(B,)" or "(M, B)"; built only for a message (str of symbolic sizes does not trace)
        return "(" + ", ".join(map(str, rows)) + ("," if len(rows) == 1 else "") + ")"

    if not isinstance(groups, torch.Tensor):
        raise TypeError(f"groups: expected a {shape()} integer tensor of condition ids, got {type(groups).__name__}")
    if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
        raise TypeError(f"groups: expected an integer dtype (condition ids, int64 preferred), got {groups.dtype}")
    if groups.dim() != len(rows) or any(a != b for a, b in zip(groups.shape, rows)):
        raise ValueError(f"groups: expected shape {shape()}, one id per row of {of}, got {tuple(groups.shape)}")
    if groups.device != device:
        raise ValueError(f"groups: expected a tensor on {device} (the device of p), got {groups.device}")
    return groups.to(torch.int64)


def _check_rectangular(p, k, offset) -> int:
    """The rectangular mode's shapes and offset (see :func:`infonce`); returns the offset as an int."""
    if not torch.compiler.is_compiling():  # (a symbolic int under torch.compile(dynamic=True) is no int instance)
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset: expected an integer (the key row of p's first row's positive) or None, got "
                            f"{offset!r}")
    B, N = p.shape[-2], k.shape[-2]
    lead = tuple(p.shape[:-2])
    if tuple(k.shape[:-2]) != lead or k.shape[-1] != p.shape[-1]:
        want = ", ".join(map(str, lead + ("N", p.shape[-1])))
        raise ValueError(f"k: expected shape ({want}) (keys, the features of p) with offset given, got "
                         f"{tuple(k.shape)}")
    if N < B:
        raise ValueError(f"k: expected at least as many rows as p (N >= B = {B}) with offset given, got shape "
                         f"{tuple(k.shape)}")
    if N < 2:
        raise ValueError(f"k: expected at least 2 key rows (in-batch negatives), got shape {tuple(k.shape)}")
    if B < 1:
        raise ValueError(f"p: expected at least 1 query row, got shape {tuple(p.shape)}")
    if not 0 <= offset <= N - B:
        raise ValueError(f"offset: expected 0 <= offset <= N - B = {N - B} (the positive of row i of p is key row "
                         f"offset + i; p has B = {B} rows, k N = {N}), got {offset}")
    return offset


def infonce(
    p: torch.Tensor,
    k: torch.Tensor,
    tau: float = 0.1,
    *,
    groups: torch.Tensor | None = None,
    eps: float = 1e-12,
    offset: int | None = None,
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

    Rectangular mode (``offset`` given): ``p`` holds B query rows and ``k`` N >= B keys; ``S`` is B x N, the positive
    of row i is key ``c_i = offset + i`` (``S_ii`` above reads ``S_{i c_i}``), ``groups`` has one id per key, (N,),
    and row i's own id is ``groups[c_i]``; the mean is over the B rows. It is one rank's share of an InfoNCE over
    the batch of all ranks: its B local queries against the all-gathered keys (N = world_size * B, offset = rank *
    B); the mean of the ranks' losses is the loss of one process on the whole batch, and the ranks' key gradients
    summed (what ``torch.distributed.nn.functional.all_gather`` does in its backward) are that loss's, times the
    world size. N = B with offset 0 is the square mode. Memory stays O(B d + N d): never a B x N tensor.

    Args:
        p: (B, d) queries (e.g. projected mechanism gradients), float16 / bfloat16 / float32 / float64, B >= 2
            (B >= 1 in rectangular mode).
        k: (B, d) keys, same shape, dtype and device as ``p``; (N, d) in rectangular mode, N >= max(B, 2).
        tau: temperature, a positive finite float (the paper uses 0.1 in App. D/E and 0.07 in section 5).
        groups: optional integer condition ids of the keys, (B,) (or (N,) in rectangular mode), converted to int64,
            for the multi-positive mode.
        eps: rows with norm <= eps are divided by eps instead of their norm (no division by zero).
        offset: None (square mode), or the key row of the positive of p's first row, 0 <= offset <= N - B
            (rectangular mode).

    Member-stacked (M independent losses in one call, e.g. one per seed of a stack of models): ``p``, ``k``
    (M, B, d) and ``groups`` (M, B) give an (M,) loss, member m equal to the call on its slices (the kernels loop
    over the members; one dispatch and one autograd node for all of them). With ``offset``: ``k`` (M, N, d),
    ``groups`` (M, N), the same offset for every member.

    Returns:
        0-dim loss tensor ((M,) member-stacked), float64 for float64 inputs and float32 otherwise. Differentiable w.r.t. ``p`` and
        ``k``; gradients come back in their dtypes.

    Precision. On the CPU (and with the CUDA C++ backend) float16 / bfloat16 inputs are computed in float32. With
    the Triton backend (the default on CUDA) the tile products use tensor cores by default: 16-bit inputs are
    multiplied as 16-bit operands with float32 accumulation (error at most twice that of the same computation done
    by PyTorch in the 16-bit dtype; ``MCLCORE_TRITON_HALF_DOT=float32`` opts out to float32 products), and float32
    inputs follow ``torch.backends.cuda.matmul.fp32_precision`` / ``allow_tf32`` like ``torch.mm`` (IEEE float32
    unless TF32 is enabled; ``MCLCORE_TRITON_FP32_DOT=ieee|tf32|tf32x3`` overrides). See
    mclcore/ops/triton/infonce.py.

    Memory is O(B d) whatever B: at B = 16384, d = 128 the op needs tens of MiB where the B x B logits of the
    reference alone take 1 GiB. Custom ops have no forward-mode AD and this one no double backward.

    When a gradient is needed (grad mode on, ``p`` or ``k`` requiring grad) the forward computes the gradients too
    (``mclcore::infonce_with_grad``, three matrix products in all instead of four), so the graph holds them, 2 B d
    values (B d + N d in rectangular mode), until the backward scales them; otherwise it runs the forward alone
    (``mclcore::infonce``).

    Non-finite inputs raise ValueError on the CPU (found by the kernel, which takes every row's norm). On CUDA
    neither backend synchronises with the host by default (both can be captured in a CUDA graph), so neither raises:
    a NaN / inf row makes the loss NaN (Triton: and the gradients that depend on the row; CUDA C++: every output).
    ``MCLCORE_TRITON_CHECK_FINITE=1`` resp. ``MCLCORE_CUDA_CHECK_FINITE=1`` (read at every call) restores the
    ValueError at one synchronisation per call.
    """
    stacked = isinstance(p, torch.Tensor) and p.dim() == 3  # member-stacked: p, k (M, B, d), groups (M, B)
    _checks.tensor(p, "p", ndim=2 + stacked)
    _checks.tensor(k, "k", ndim=2 + stacked)
    if p.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"p: expected float16, bfloat16, float32 or float64, got {p.dtype}")
    if k.dtype != p.dtype:
        raise TypeError(f"k: expected the dtype of p ({p.dtype}), got {k.dtype}")
    if offset is None and k.shape != p.shape:
        raise ValueError(f"k: expected the shape of p {tuple(p.shape)}, got {tuple(k.shape)} (keys with more rows "
                         f"than p need offset=, the rectangular mode)")
    if k.device != p.device:
        raise ValueError(f"k: expected a tensor on {p.device} (the device of p), got {k.device}")
    B, d = p.shape[-2:]
    if offset is not None:
        offset = _check_rectangular(p, k, offset)
    elif B < 2:
        raise ValueError(f"p: expected a batch of at least 2 rows (in-batch negatives), got shape {tuple(p.shape)}")
    if d < 1:
        raise ValueError(f"p: expected at least 1 feature column, got shape {tuple(p.shape)}")
    if stacked and p.shape[0] < 1:
        raise ValueError(f"p: expected at least one member (M >= 1), got shape {tuple(p.shape)}")
    if groups is not None:
        groups = _check_groups(groups, tuple(k.shape[:-1]), p.device, "p" if offset is None else "k (key)")
    if torch.compiler.is_compiling():
        # Under torch.compile(dynamic=True) tau and eps can be symbolic floats, which math.isfinite cannot take, and
        # a data-dependent finiteness test would break the graph: check what traces; the kernel's TORCH_CHECKs
        # (tau, eps, and every row's norm, naming p or k) cover the rest when the graph runs.
        torch._check(tau > 0, lambda: "tau: expected a positive finite number")
        torch._check(eps > 0, lambda: "eps: expected a positive finite number")
        return _loss(p, k, groups, tau, eps, offset)
    tau = _checks.positive_float(tau, "tau")
    eps = _checks.positive_float(eps, "eps")
    # NaN / inf inputs: the kernel finds them anyway (it takes every row's norm) and names the tensor and the row;
    # raising its error here as a ValueError saves a separate pass over p and k (a reduction and a host sync, ~5%
    # of forward+backward at B = 256).
    try:
        return _loss(p, k, groups, tau, eps, offset)
    except RuntimeError as err:
        for name in ("p", "k"):
            if f"mclcore.infonce: {name} contains NaN or infinite values" in str(err):
                raise ValueError(f"{name}: contains NaN or infinite values"
                                 f"{str(err).split('values', 1)[1].splitlines()[0]}") from None
        raise


def _loss(p, k, groups, tau, eps, offset):
    if torch.is_grad_enabled() and (p.requires_grad or k.requires_grad):
        # Training: loss and gradients in one call (3 matrix products instead of 4); the gradients wait in the graph
        # until the backward scales them by the upstream gradient.
        return torch.ops.mclcore.infonce_with_grad.default(p, k, groups, tau, eps, offset)[0]
    return torch.ops.mclcore.infonce.default(p, k, groups, tau, eps, offset)[0]
