"""Pure torch.func reference of ``mclcore.ops.comp_contrast``: the compositional contrast of an MLP generator.

For one sample with generator ``f: R^dz -> R^dx`` and Jacobian ``J = jacfwd(f)(z)`` (dx, dz):

    C(z) = sum_n sum_{i<j} |J_ni| |J_nj|          (written here literally: the strict upper triangle of |J_n.|^T |J_n.|)
    Q(z) = sum_{n,i} J_ni^2                       (C / Q is the scale-free normalisation)

The Jacobian is forward mode (``jacfwd``, dz tangents) or reverse mode (``jacrev``, dx cotangents), vmapped over the
batch; the result is differentiable (autograd through the transform, i.e. "create_graph"), float64-capable. Used by
the tests and by ``benchmarks/bench_comp_contrast.py`` as the baseline. The MLP family is the one of
``python.mech_derivs.mlp`` (``a_0 = W_0 z + b_0 + in_bias``, ``a_l = W_l s(a_{l-1}) + b_l``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import jacfwd, jacrev, vmap

from python.mech_derivs import mlp, sample_inputs  # noqa: F401  (sample_inputs: the tests' random generators)

MODES = {"fwd": jacfwd, "rev": jacrev}


def contrast_of_jacobian(J: torch.Tensor) -> torch.Tensor:
    """C per sample from Jacobians J (..., dx, dz): the sum over outputs n and pairs i < j of |J_ni| |J_nj|."""
    A = J.abs()
    pairs = A.unsqueeze(-1) * A.unsqueeze(-2)                      # (..., dx, dz, dz): |J_ni| |J_nj|
    return torch.triu(pairs, diagonal=1).sum(dim=(-3, -2, -1))


def jacobians(fn: Callable, z: torch.Tensor, extra: torch.Tensor | None = None, *, mode: str = "fwd") -> torch.Tensor:
    """Per-sample Jacobians (B, dx, dz) of ``x_b = fn(z_b, extra_b)`` (one sample: z_b (dz,) -> x_b (dx,))."""
    jac = MODES[mode]
    if extra is None:
        return vmap(jac(lambda zb: fn(zb, None)))(z)
    return vmap(jac(fn, argnums=0))(z, extra)


def comp_contrast(z, weights, biases, in_bias=None, activation="tanh", act_param=None, final_activation=False, *,
                  normalize: str = "none", mode: str = "fwd") -> torch.Tensor:
    """Reference of ``mclcore.ops.comp_contrast`` (same arguments): C (B,), or C / Q with ``normalize="jacobian"``.

    ``mode``: ``"fwd"`` (vmap(jacfwd)) or ``"rev"`` (vmap(jacrev)); both differentiable w.r.t. every tensor input.
    """

    def per_sample(zb, ib):
        return mlp(zb, weights, biases, ib, activation, act_param, final_activation)

    J = jacobians(per_sample, z, in_bias, mode=mode)
    C = contrast_of_jacobian(J)
    if normalize == "jacobian":
        return C / J.square().sum(dim=(-2, -1))
    if normalize != "none":
        raise ValueError(f"normalize: expected 'none' or 'jacobian', got {normalize!r}")
    return C
