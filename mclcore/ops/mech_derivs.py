"""``torch.ops.mclcore.mech_derivs``: mechanism derivatives V(z,u) of an MLP generator (docs/DESIGN.md §2.3, paper §3.2).

For a generator ``x = g(z, u)`` with Jacobian ``J = dx/dz`` (dx x dz, dx >= dz) the paper defines

    m'_i(z,u) = d/dz_i log|J|,    m''_ii(z,u) = d^2/dz_i^2 log|J|,    V(z,u) = (m'_1..m'_dz, m''_11..m''_dzdz)

with ``log|J| = L = 1/2 logdet(J^T J)`` (``log|det J|`` when square). Assumption 2 (sufficient GMD) asks that the
contrasts ``V(z,u^(n)) - V(z,u^(0))`` span R^{2dz}; :mod:`mclcore.mechanism` builds that certificate on this op.

The op propagates per sample the first, second (symmetric, i <= j only) and third (d^3 x / dz_i^2 dz_j) Taylor
coefficients of ``x`` in ``z`` through the layers with batched GEMMs, then forms ``V`` and ``L`` in float64. It
supports the MLP family

    y   = z * film_scale + film_shift               (optional FiLM conditioning, each (B, dz))
    a_0 = W_0 y + b_0 + in_bias                     (in_bias (B, h_0): u entering as a per-sample first-layer bias)
    a_l = W_l s_{l-1}(a_{l-1}) + b_l,  x = a_{L-1}  (or s_{L-1}(a_{L-1}) with ``final_activation=True``)

with smooth activations ``tanh``, ``sigmoid``, ``softplus`` (parameter beta), ``gelu`` (exact erf form),
``silu``, ``smooth_leaky`` (``a*x + (1-a)*softplus(x)``, parameter a); ``relu``, ``leaky_relu`` (parameter: slope)
and ``identity`` are accepted, but a generator whose activations are all piecewise linear has V = 0 almost
everywhere, which is reported by a :class:`DegenerateGeneratorWarning` rather than returned silently.

V and L are not differentiable (nothing in mclcore needs a gradient through them): if inputs require grad the
outputs carry a grad_fn whose backward raises a clear error.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

from mclcore.ops import _backend, _checks

SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "silu", "smooth_leaky")
PIECEWISE_LINEAR_ACTIVATIONS = ("relu", "leaky_relu", "identity")
ACTIVATIONS = SMOOTH_ACTIVATIONS + PIECEWISE_LINEAR_ACTIVATIONS
# Parameter used when none is given: softplus beta, and the paper's leaky slope 0.2 (App. D.3).
DEFAULT_PARAMS = {"softplus": 1.0, "smooth_leaky": 0.2, "leaky_relu": 0.2}


class DegenerateGeneratorWarning(UserWarning):
    """The generator is piecewise linear in z, so V(z,u) = 0 almost everywhere and Assumption 2 cannot hold."""


def is_piecewise_linear(activations: Sequence[str]) -> bool:
    """True when every activation is relu / leaky_relu / identity: the generator is piecewise linear in z."""
    return all(a in PIECEWISE_LINEAR_ACTIVATIONS for a in activations)


DEGENERATE_REASON = (
    "the generator is piecewise linear in z (every activation is ReLU, leaky ReLU or identity), so log|J| is "
    "piecewise constant and V(z,u) = 0 almost everywhere: Assumption 2 cannot hold. Use a smooth activation, e.g. "
    "smooth_leaky 0.2x + 0.8 softplus(x)"
)


@torch.library.register_fake("mclcore::mech_derivs")
def _mech_derivs_fake(z, weights, biases, in_bias, film_scale, film_shift, activations, act_params):
    torch._check(z.dim() == 2, lambda: "mclcore.mech_derivs: z must be (B, dz)")
    torch._check(len(weights) >= 1, lambda: "mclcore.mech_derivs: at least one layer")
    torch._check(weights[-1].shape[0] >= z.shape[1], lambda: "mclcore.mech_derivs: dx must be >= dz")
    B, dz = z.shape
    # The C++ kernel returns fresh contiguous tensors in z's dtype (new_empty, not empty_like).
    return z.new_empty((B, 2 * dz)), z.new_empty((B,))


def _setup_context(ctx, inputs, output):
    pass


def _backward(ctx, grad_v, grad_l):
    raise RuntimeError(
        "mclcore.mech_derivs: V and the log-volume L are not differentiable (the op computes them for diagnostics "
        "such as the GMD certificate; no gradient through them is implemented). Call it on detached inputs or "
        "under torch.no_grad(), or differentiate the general torch.func path yourself."
    )


torch.library.register_autograd("mclcore::mech_derivs", _backward, setup_context=_setup_context)

# CUDA tensors: Triton or CUDA C++ kernel, chosen per call (mclcore/ops/_backend.py, MCLCORE_BACKEND).
_backend.register_cuda("mech_derivs")


def mech_derivs(
    z: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    *,
    in_bias: torch.Tensor | None = None,
    film_scale: torch.Tensor | None = None,
    film_shift: torch.Tensor | None = None,
    activation: str | Sequence[str] = "tanh",
    act_param: float | Sequence[float | None] | None = None,
    final_activation: bool = False,
    warn_degenerate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mechanism-derivative vector V (B, 2dz) and log-volume L (B,) of an MLP generator, per sample.

    Args:
        z: (B, dz) latents, float32 or float64 (float32 propagates in float32, the dz x dz algebra is float64).
        weights: per layer (h_l, h_{l-1}) as ``nn.Linear.weight``, ``h_{-1} = dz``; the output width
            ``dx = h_{L-1}`` must be >= dz.
        biases: per layer (h_l,), or None for a layer without bias.
        in_bias: (B, h_0) per-sample first-layer bias, e.g. ``u @ W_u.T`` when u is concatenated to z.
        film_scale, film_shift: (B, dz) FiLM conditioning ``y = z * film_scale + film_shift`` (paper App. D.3:
            ``g(z,u) = h(z * m(u) + b(u))``). V is returned in z's coordinates: ``m'_i(z) = m_i m'_i(y)``,
            ``m''_ii(z) = m_i^2 m''_ii(y)``, and L includes ``sum_i log|m_i|``.
        activation: one name for every hidden layer, or one per activation (L-1, or L with final_activation).
            Names: ``tanh, sigmoid, softplus, gelu, silu, smooth_leaky, relu, leaky_relu, identity``.
        act_param: softplus beta / (smooth) leaky slope, one value or one per activation; None takes
            :data:`DEFAULT_PARAMS` (softplus 1, slopes 0.2).
        final_activation: apply the last activation to the output too.
        warn_degenerate: emit :class:`DegenerateGeneratorWarning` for a piecewise-linear generator.

    Returns:
        ``(V, L)`` in z's dtype: ``V[:, :dz] = dL/dz_i``, ``V[:, dz:] = d^2L/dz_i^2``, ``L = 1/2 logdet(J^T J)``.
        A numerically rank-deficient J (a relative Cholesky pivot of J^T J below 1e-13, i.e. roughly
        cond(J) > 3e6) gives V = NaN and L = -inf for that sample. Not differentiable.

    Non-finite z raises ValueError on the CPU. On CUDA the call never synchronises with the host (it can be captured
    in a CUDA graph): z is not checked, and a sample with NaN / inf gets NaN V (and a NaN or infinite L).
    """
    weights, biases, acts, params, dx = _checks.mlp(
        z, weights, biases, activation, act_param, final_activation, activations=ACTIVATIONS,
        default_params=DEFAULT_PARAMS)
    B, dz = z.shape
    if dx < dz:
        raise ValueError(f"weights: the generator's output has dx = {dx} < dz = {dz}; J^T J is then singular, so "
                         f"log|J| and V are undefined (mechanism derivatives need dx >= dz)")
    in_bias = _checks.per_sample(in_bias, "in_bias", B, weights[0].shape[0], z.dtype)
    film_scale = _checks.per_sample(film_scale, "film_scale", B, dz, z.dtype)
    film_shift = _checks.per_sample(film_shift, "film_shift", B, dz, z.dtype)
    devices = {t.device for t in (z, *weights, *biases, in_bias, film_scale, film_shift) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"mech_derivs: all tensors must be on one device, got {sorted(map(str, devices))}")
    if _backend.host_checks(z):  # on CUDA: no host synchronisation (non-finite z gives NaN V and L instead)
        _checks.finite(z, "z")
    if warn_degenerate and is_piecewise_linear(acts):
        warnings.warn(DEGENERATE_REASON, DegenerateGeneratorWarning, stacklevel=2)
    return torch.ops.mclcore.mech_derivs(z, weights, biases, in_bias, film_scale, film_shift, acts, params)
