"""``torch.ops.mclcore.critic_grad``: batched input gradient of a scalar MLP critic (docs/DESIGN.md §2.2).

The mechanism gradient of the paper, ``g_i = grad_z c(G(z_i, u_i), z_i, u_i)`` (Algorithm 1), needs the critic's
input gradient ``grad_v c`` at ``v = [z, x, u]`` and, for training, its exact derivative w.r.t. the critic's weights
and its input: a second-order computation. This op returns ``grad_v c`` in closed form and registers a backward
(``critic_grad_backward``) that uses ``s''`` so that training through it matches autograd with
``create_graph=True`` to rounding error, without building an autograd graph of the critic.
"""
from __future__ import annotations

from typing import Sequence

import torch

from mclcore.ops import _backend, _checks

ACTIVATIONS = ("gelu", "relu", "silu", "tanh", "softplus")


def _workspace_numel(v, weights):
    # rows = B, or M B for member-stacked inputs (v (M, B, dv), weights[l] (M, out_l, in_l))
    return 4 * v.shape[:-1].numel() * sum(w.shape[-2] for w in weights[:-1])


@torch.library.register_fake("mclcore::critic_grad")
def _critic_grad_fake(v, weights, biases, activation):
    return v.new_empty(v.shape), v.new_empty((_workspace_numel(v, weights),))


@torch.library.register_fake("mclcore::critic_grad_backward")
def _critic_grad_backward_fake(grad_out, v, weights, biases, saved, activation):
    return v.new_empty(v.shape), [w.new_empty(w.shape) for w in weights], [b.new_empty(b.shape) for b in biases]


def _setup_context(ctx, inputs, output):
    v, weights, biases, activation = inputs
    ctx.save_for_backward(v, output[1], *weights, *biases)
    ctx.mark_non_differentiable(output[1])
    # The workspace never receives a gradient; without this autograd zero-fills one of 4 B sum(h) values per call
    # (0.5 ms of the 8.6 ms critic step at B = 256, measured with torch.profiler on the 2-core AMD EPYC dev VM,
    # 2026-11).
    ctx.set_materialize_grads(False)
    ctx.n_layers = len(weights)
    ctx.activation = activation


def _backward(ctx, grad, _grad_saved):
    if grad is None:  # grads are not materialised (see _setup_context)
        return None, [None] * ctx.n_layers, [None] * ctx.n_layers, None
    saved = ctx.saved_tensors
    n = ctx.n_layers
    v, workspace, weights, biases = saved[0], saved[1], list(saved[2 : 2 + n]), list(saved[2 + n :])
    gv, gw, gb = torch.ops.mclcore.critic_grad_backward(grad, v, weights, biases, workspace, ctx.activation)
    return gv, list(gw), list(gb), None


torch.library.register_autograd("mclcore::critic_grad", _backward, setup_context=_setup_context)

# CUDA tensors: the Triton kernels (there is no CUDA C++ one; mclcore/ops/_backend.py).
_backend.register_cuda("critic_grad")
_backend.register_cuda("critic_grad_backward")


def critic_grad(
    v: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    activation: str = "gelu",
) -> torch.Tensor:
    """Input gradient of the scalar MLP critic ``c(v) = w_L . s(... s(W_1 v + b_1) ...) + b_L``.

    Args:
        v: (B, dv) critic inputs, e.g. ``[z, x_hat, u]`` flattened and concatenated.
        weights: per layer (out_l, in_l) as in ``nn.Linear``; the last is (1, h).
        biases: per layer (out_l,).
        activation: one of ``gelu`` (the paper's default, exact erf form), ``relu``, ``silu``, ``tanh``,
            ``softplus`` (beta 1, threshold 20 as ``nn.Softplus``).

    Member-stacked (M independent critics in one call, e.g. one per seed of a stack of models): ``v`` (M, B, dv),
    ``weights[l]`` (M, out_l, in_l), ``biases[l]`` (M, out_l) give (M, B, dv), member m equal to the call on its
    slices (the kernels loop over the members; one dispatch and one autograd node for all of them).

    Returns:
        (B, dv) ``grad_v c``; differentiable w.r.t. ``v``, ``weights`` and ``biases`` (exact second order).
        float16/bfloat16 inputs are computed in float32 and the result is returned in float32.

    Memory: the forward keeps a workspace of ``4 B sum(hidden widths)`` values for the backward (2 MiB at B = 256
    with two 256-wide layers). On the CPU its block is reused by the next call once the backward (or the end of
    the graph) has released it, and each thread that ran the op keeps its last block: without that, a block of
    32 MiB or more (B >= 4096 at those widths) came as fresh pages from the kernel on every call, which doubled
    the forward's time. The CPU kernels walk the batch in blocks of <= 128 rows, one chunk of rows per thread, so
    their temporaries are per block (peak extra memory of forward+backward at B = 4096: 9 MiB, where the
    reference needs 81 MiB); the backward keeps one copy of the parameter gradients per extra thread. Their
    float32 sums over the batch therefore depend on the thread count (as MKL's products already do), at rounding
    level.
    """
    stacked = isinstance(v, torch.Tensor) and v.dim() == 3  # member-stacked; weights (M, out, in), biases (M, out)
    _checks.tensor(v, "v", ndim=2 + stacked)
    lead = (v.shape[0],) if stacked else ()
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    weights, biases = list(weights), list(biases)
    if len(weights) < 2:
        raise ValueError(f"weights: expected at least 2 layers (one hidden layer and the output), got {len(weights)}")
    if len(biases) != len(weights):
        raise ValueError(f"biases: expected {len(weights)} tensors (one per layer), got {len(biases)}")
    dim = v.shape[-1]
    for i, (w, b) in enumerate(zip(weights, biases)):
        _checks.tensor(w, f"weights[{i}]", ndim=2 + stacked)
        _checks.tensor(b, f"biases[{i}]", ndim=1 + stacked)
        if tuple(w.shape[:-2]) != lead or w.shape[-1] != dim:
            want = f"({lead[0]}, out, {dim})" if stacked else f"{dim} input features"
            raise ValueError(f"weights[{i}]: expected {want}, got shape {tuple(w.shape)}")
        if tuple(b.shape) != (*lead, w.shape[-2]):
            raise ValueError(f"biases[{i}]: expected shape {(*lead, w.shape[-2])}, got {tuple(b.shape)}")
        dim = w.shape[-2]
    if dim != 1:
        raise ValueError(f"weights[-1]: the critic must output one scalar per sample, got {dim} outputs")
    dtype = torch.promote_types(v.dtype, weights[0].dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # reduced precision is upcast: s'' of GELU loses all digits in bf16
    v = v.to(dtype)
    weights = [w.to(dtype) for w in weights]
    biases = [b.to(dtype) for b in biases]
    return torch.ops.mclcore.critic_grad(v, weights, biases, activation)[0]
