"""``torch.ops.mclcore.comp_contrast``: the compositional contrast of an MLP generator (docs/DESIGN.md §2.5).

For a generator ``x = g(z)`` with Jacobian ``J = dx/dz`` (dx x dz) the compositional contrast of a sample is

    C(z) = sum_n sum_{i<j} |J_ni| |J_nj| = 1/2 sum_n [ (sum_i |J_ni|)^2 - sum_i J_ni^2 ],

zero exactly when every output coordinate x_n depends on at most one latent z_i (disjoint Jacobian supports, the
"mechanistic independence" of the factors), and a differentiable surrogate of that sparsity otherwise: a training
regulariser for decoders (:class:`mclcore.losses.CompContrast`). C is homogeneous of degree 2 in J; the scale-free
variant ``C / Q`` with ``Q = sum_{n,i} J_ni^2 = ||J||_F^2`` (``normalize="jacobian"``) lies in [0, (dz - 1) / 2].

The op supports the MLP family of :mod:`mclcore.ops.mech_derivs` without FiLM:

    a_0 = W_0 z + b_0 + in_bias                     (in_bias (B, h_0): u entering as a per-sample first-layer bias)
    a_l = W_l s_{l-1}(a_{l-1}) + b_l,  x = a_{L-1}  (or s_{L-1}(a_{L-1}) with ``final_activation=True``)

with activations ``tanh, sigmoid, softplus`` (beta; no threshold), ``gelu`` (exact erf form), ``silu``,
``smooth_leaky`` (``p x + (1 - p) softplus(x)``), ``relu``, ``leaky_relu`` (slope) and ``identity``; any dx >= 1.

Forward: J by forward mode, one GEMM per layer over each sample's value row and dz tangent rows (C++ on the CPU,
Triton on CUDA). Backward: the registered op ``comp_contrast_backward`` runs reverse mode through that forward-mode
computation by hand (``dC/dJ = sign(J) (sum_{i' != i} |J_ni'|)``, then through each layer with the ``s''`` term),
reading the layer stacks the forward saved, so training through C equals autograd through ``vmap(jacfwd(g))`` to
rounding, without building its graph. C is differentiable once (w.r.t. z, weights, biases, in_bias); a second
derivative (double backward) is not implemented and raises.
"""
from __future__ import annotations

from typing import Sequence

import torch

from mclcore.ops import _backend, _checks
from mclcore.ops.mech_derivs import ACTIVATIONS, DEFAULT_PARAMS

NORMALIZE = ("none", "jacobian")


def workspace_numel(B: int, dz: int, widths: Sequence[int], n_act: int) -> int:
    """Size of the op's saved workspace (as workspace_numel in csrc/comp_contrast/comp_contrast_cpu.cpp): per layer
    the pre-activation stack ((1 + dz) B h_l values), and for layers with an activation also the post-activation stack
    and s', s'' (2 B h_l)."""
    total = 0
    for l, h in enumerate(widths):
        total += (1 + dz) * B * h
        if l < n_act:
            total += (1 + dz) * B * h + 2 * B * h
    return total


@torch.library.register_fake("mclcore::comp_contrast")
def _comp_contrast_fake(z, weights, biases, in_bias, activations, act_params):
    torch._check(z.dim() == 2, lambda: "mclcore.comp_contrast: z must be (B, dz)")
    torch._check(len(weights) >= 1, lambda: "mclcore.comp_contrast: at least one layer")
    B, dz = z.shape
    n = workspace_numel(B, dz, [w.shape[0] for w in weights], len(activations))
    # The C++ kernel returns fresh contiguous tensors in z's dtype (new_empty, not empty_like).
    return z.new_empty((B,)), z.new_empty((B,)), z.new_empty((n,))


@torch.library.register_fake("mclcore::comp_contrast_backward")
def _comp_contrast_backward_fake(grad_c, grad_q, z, weights, biases, in_bias, saved, activations, act_params):
    return (z.new_empty(z.shape), [w.new_empty(w.shape) for w in weights], [b.new_empty(b.shape) for b in biases],
            z.new_empty((z.shape[0], weights[0].shape[0])))


def _setup_context(ctx, inputs, output):
    z, weights, biases, in_bias, activations, act_params = inputs
    ctx.save_for_backward(z, output[2], *weights, *biases)
    ctx.mark_non_differentiable(output[2])
    # Neither the workspace nor (when only C is used) Q needs a zero-filled gradient: None is handled below.
    ctx.set_materialize_grads(False)
    ctx.n_layers = len(weights)
    ctx.has_in_bias = in_bias is not None
    ctx.activations, ctx.act_params = list(activations), list(act_params)


def _backward(ctx, grad_c, grad_q, _grad_saved):
    n = ctx.n_layers
    saved = ctx.saved_tensors
    z, workspace, weights, biases = saved[0], saved[1], list(saved[2:2 + n]), list(saved[2 + n:])
    # No gradient for activations / act_params: None, except that autograd's structure check reads an empty list as
    # an empty container (a single-layer linear generator has no activations), which wants [] back.
    none_act = None if ctx.activations else []
    if grad_c is None and grad_q is None:
        return None, [None] * n, [None] * n, None, none_act, none_act
    zeros = z.new_zeros(z.shape[:1])
    grad_c = zeros if grad_c is None else grad_c
    grad_q = zeros if grad_q is None else grad_q
    # in_bias itself is not needed (its effect is in the saved stacks, and its gradient, the first layer's
    # pre-activation adjoint, is returned either way), so it is neither saved nor passed.
    gz, gw, gb, gib = torch.ops.mclcore.comp_contrast_backward(grad_c, grad_q, z, weights, biases, None, workspace,
                                                               ctx.activations, ctx.act_params)
    return gz, list(gw), list(gb), gib if ctx.has_in_bias else None, none_act, none_act


torch.library.register_autograd("mclcore::comp_contrast", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "mclcore.comp_contrast: the gradient of the compositional contrast is not differentiable again (double "
        "backward through comp_contrast_backward is not implemented). For second derivatives use the torch.func "
        "path, mclcore.losses.comp_contrast_func."
    )


# Without it, autograd would backpropagate through comp_contrast_backward as if it were constant (PyTorch only
# warns): a silently wrong second derivative. This makes a double backward raise instead.
torch.library.register_autograd("mclcore::comp_contrast_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)

# CUDA tensors: the Triton kernels (mclcore/ops/_backend.py).
_backend.register_cuda("comp_contrast")
_backend.register_cuda("comp_contrast_backward")


def prepare(z, weights, biases, activation="tanh", act_param=None, *, in_bias=None, final_activation=False):
    """Checked arguments of the raw op: ``(z, weights, biases, in_bias, activations, act_params)`` (biases None
    replaced by zeros). Raises ValueError / TypeError naming the argument (shared with mclcore.losses)."""
    weights, biases, acts, params, _ = _checks.mlp(z, weights, biases, activation, act_param, final_activation,
                                                   activations=ACTIVATIONS, default_params=DEFAULT_PARAMS)
    B = z.shape[0]
    in_bias = _checks.per_sample(in_bias, "in_bias", B, weights[0].shape[0], z.dtype)
    devices = {t.device for t in (z, *weights, *biases, in_bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"comp_contrast: all tensors must be on one device, got {sorted(map(str, devices))}")
    if _backend.host_checks(z):  # on CUDA: no host synchronisation (non-finite z gives NaN C instead)
        _checks.finite(z, "z")
    return z, weights, biases, in_bias, acts, params


def comp_contrast(
    z: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    activation: str | Sequence[str] = "tanh",
    act_param: float | Sequence[float | None] | None = None,
    *,
    in_bias: torch.Tensor | None = None,
    final_activation: bool = False,
    normalize: str = "none",
) -> torch.Tensor:
    """Compositional contrast C (B,) of the MLP generator ``x = g(z)`` per sample, differentiable.

    Args:
        z: (B, dz) latents, float32 or float64.
        weights: per layer (h_l, h_{l-1}) as ``nn.Linear.weight``, ``h_{-1} = dz``; dx = h_{L-1}.
        biases: per layer (h_l,), or None for a layer without bias.
        activation: one name for every hidden layer, or one per activation (L-1, or L with final_activation):
            ``tanh, sigmoid, softplus, gelu, silu, smooth_leaky, relu, leaky_relu, identity``.
        act_param: softplus beta / (smooth) leaky slope, one value or one per activation; None takes
            ``mclcore.ops.mech_derivs.DEFAULT_PARAMS`` (softplus 1, slopes 0.2).
        in_bias: (B, h_0) per-sample first-layer bias, e.g. ``u @ W_u.T`` when u is concatenated to z.
        final_activation: apply the last activation to the output too.
        normalize: ``"none"`` (C as defined) or ``"jacobian"`` (C / ||J||_F^2, scale-free, in [0, (dz - 1) / 2];
            a sample with J = 0 gives 0).

    Returns:
        (B,) in z's dtype: ``C = sum_n sum_{i<j} |J_ni| |J_nj|`` with ``J = dx/dz`` (or C / ||J||_F^2).
        Differentiable once w.r.t. z, weights, biases and in_bias (the subgradient sign(0) = 0 at J_ni = 0, as
        torch.abs); double backward is not supported.

    Raises ValueError (shapes, values, names) or TypeError (types, dtypes) naming the argument. Non-finite z raises
    on the CPU; on CUDA nothing is checked on the host (a NaN / inf gives NaN C for that sample).
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize: expected one of {NORMALIZE}, got {normalize!r}")
    args = prepare(z, weights, biases, activation, act_param, in_bias=in_bias, final_activation=final_activation)
    C, Q, _ = torch.ops.mclcore.comp_contrast(*args)
    if normalize == "jacobian":
        return C / Q.clamp_min(torch.finfo(Q.dtype).tiny)  # C <= (dz - 1) / 2 Q, so J = 0 gives 0 / tiny = 0
    return C
