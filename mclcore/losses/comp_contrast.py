"""Compositional contrast: a regulariser that pushes each output of a generator to depend on few latents.

For a generator ``x = g(z)`` with Jacobian ``J = dx/dz`` (dx x dz), per sample

    C(z) = sum_n sum_{i<j} |J_ni| |J_nj| = 1/2 sum_n [ (sum_i |J_ni|)^2 - sum_i J_ni^2 ]

(docs/DESIGN.md §2.5). C = 0 exactly when every output coordinate depends on at most one latent at z (disjoint
Jacobian supports across latents, the support-based form of mechanistic independence); adding ``lambda * C`` to a
decoder's objective favours such factorised mechanisms.

Two paths, the same function:

* an MLP generator (``nn.Sequential`` of ``nn.Linear`` and supported activation modules, or an explicit
  :class:`MLPDescription`) runs the native op :func:`mclcore.ops.comp_contrast` (forward-mode Jacobian and an exact
  hand-written backward in C++ / Triton; several times faster than torch.func, see benchmarks/README.md);
* any other generator ``g: (B, dz) -> (B, ...)`` whose rows are independent (no batch statistics: no BatchNorm in
  training mode) goes through :func:`comp_contrast_func`, ``vmap(jacfwd(g))`` per sample with autograd through the
  transform (create_graph), differentiable w.r.t. z and every parameter g closes over.

Choices (options of :class:`CompContrast`):

* reduction: ``"mean"`` over the batch by default (the batch size then does not change the weight lambda needs);
  ``"sum"`` or ``"none"`` (per sample, (B,)).
* normalisation: ``"none"`` by default, C as defined (sum over outputs and latent pairs, no division by dx or by
  the number of pairs). C is homogeneous of degree 2 in J, so the plain regulariser can also be lowered by shrinking
  the Jacobian (the decoder's gain); the reconstruction term usually prevents that, but where it does not (or to
  make lambda independent of the data's scale) ``normalize="jacobian"`` uses ``C / ||J||_F^2``, scale-free and in
  [0, (dz - 1) / 2], 0 for a sample whose J is 0.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import jacfwd, vmap

from mclcore.ops.comp_contrast import NORMALIZE, comp_contrast

REDUCTIONS = ("mean", "sum", "none")


@dataclasses.dataclass(frozen=True)
class MLPDescription:
    """An MLP generator in the op's terms: ``a_0 = W_0 z + b_0 (+ in_bias)``, ``a_l = W_l s_{l-1}(a_{l-1}) + b_l``,
    output ``a_{L-1}`` or ``s_{L-1}(a_{L-1})`` with ``final_activation``. Weights in nn.Linear layout, biases may be
    None; ``activations`` names as :func:`mclcore.ops.comp_contrast`, one per activated layer, with ``act_params``."""

    weights: Sequence[torch.Tensor]
    biases: Sequence[torch.Tensor | None]
    activations: Sequence[str]
    act_params: Sequence[float | None]
    final_activation: bool = False


def _activation_of(module: nn.Module) -> tuple[str, float | None] | None:
    """The op's name and parameter of an activation module, or None when the op has no such activation."""
    if isinstance(module, nn.Tanh):
        return "tanh", None
    if isinstance(module, nn.Sigmoid):
        return "sigmoid", None
    if isinstance(module, nn.GELU):
        return ("gelu", None) if module.approximate == "none" else None
    if isinstance(module, nn.SiLU):
        return "silu", None
    if isinstance(module, nn.ReLU):
        return "relu", None
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    if isinstance(module, nn.Softplus):
        # nn.Softplus is linear above beta x > threshold (20 by default) where the op's softplus is exact: the
        # derivatives differ there by at most exp(-threshold) (2e-9) relative.
        return "softplus", float(module.beta)
    if isinstance(module, nn.Identity):
        return "identity", None
    return None


def _flatten(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in _flatten(child)]
    return [module]


def describe_mlp(g) -> MLPDescription | None:
    """The :class:`MLPDescription` of ``g`` when the native op can compute it: an ``nn.Linear``, or an
    ``nn.Sequential`` (nested ones are flattened) of ``nn.Linear`` layers, each followed by at most one supported
    activation (``nn.Tanh, nn.Sigmoid, nn.GELU()`` (exact), ``nn.SiLU, nn.ReLU, nn.LeakyReLU, nn.Softplus,
    nn.Identity``); ``nn.Identity`` anywhere is skipped. None for anything else (the torch.func path then runs)."""
    if isinstance(g, MLPDescription):
        return g
    if not isinstance(g, nn.Module):
        return None
    mods = [m for m in _flatten(g) if not isinstance(m, nn.Identity)]
    if not mods or not isinstance(mods[0], nn.Linear):
        return None
    weights, biases, acts, params = [], [], [], []
    for m in mods:
        if isinstance(m, nn.Linear):
            if len(acts) < len(weights):  # two linear layers in a row: identity in between
                acts.append("identity")
                params.append(None)
            weights.append(m.weight)
            biases.append(m.bias)
            continue
        act = _activation_of(m)
        if act is None or len(acts) == len(weights):  # unsupported module, or a second activation in a row
            return None
        acts.append(act[0])
        params.append(act[1])
    return MLPDescription(weights, biases, acts, params, final_activation=len(acts) == len(weights))


def contrast_of_jacobian(J: torch.Tensor, normalize: str = "none") -> torch.Tensor:
    """C (B,) of Jacobians J (B, dx, dz), as ``sum_j |J_nj| sum_{i<j} |J_ni|`` (non-negative terms: no cancellation,
    O(B dx dz) memory); ``normalize="jacobian"`` divides by ``||J||_F^2`` (0 where J = 0)."""
    A = J.abs()
    before = torch.cat([torch.zeros_like(A[..., :1]), A[..., :-1]], dim=-1).cumsum(-1)  # sum_{i<j} |J_ni|
    C = (A * before).sum(dim=(-2, -1))
    if normalize == "jacobian":
        return C / J.square().sum(dim=(-2, -1)).clamp_min(torch.finfo(J.dtype).tiny)
    return C


def comp_contrast_func(g: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *,
                       normalize: str = "none") -> torch.Tensor:
    """Compositional contrast (B,) of any generator ``g: (B, dz) -> (B, ...)`` (outputs flattened per sample) by
    ``vmap(jacfwd)`` over the samples: differentiable (autograd through the transform, i.e. create_graph) w.r.t. z
    and every tensor g uses, and differentiable again. ``g``'s rows must be independent (each output row a function
    of its own z row only), since each sample runs g on a batch of one.
    """
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z: expected a (B, dz) tensor, got {getattr(z, 'shape', type(z).__name__)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize: expected one of {NORMALIZE}, got {normalize!r}")
    if not callable(g):
        raise ValueError(f"g: expected a callable (B, dz) -> (B, ...), got {type(g).__name__}")

    def one(zb):
        return g(zb.unsqueeze(0)).reshape(-1)

    J = vmap(jacfwd(one))(z)  # (B, dx, dz)
    return contrast_of_jacobian(J, normalize)


class CompContrast(nn.Module):
    """Compositional-contrast regulariser: ``loss = CompContrast()(g, z)``, add ``lambda * loss`` to the objective.

    Args:
        reduction: ``"mean"`` (default) over the batch, ``"sum"``, or ``"none"`` (per sample, (B,)).
        normalize: ``"none"`` (default: C as defined) or ``"jacobian"`` (C / ||J||_F^2, scale-free).
        native: use the native op for MLP modules (:func:`describe_mlp`); False takes the torch.func path for them
            (an :class:`MLPDescription` is not callable: it always runs the native op).

    ``forward(g, z, in_bias=None)``: ``g`` an MLP module, an :class:`MLPDescription`, or any row-independent
    callable (B, dz) -> (B, ...); ``in_bias`` (B, h_0), a per-sample first-layer bias (e.g. ``W_u u`` of a condition
    concatenated to z), only with an MLP (module or description). The native op's gradient is first order only
    (enough for training); the torch.func path is differentiable again.
    """

    def __init__(self, reduction: str = "mean", normalize: str = "none", native: bool = True):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize: expected one of {NORMALIZE}, got {normalize!r}")
        self.reduction, self.normalize, self.native = reduction, normalize, bool(native)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, normalize={self.normalize!r}, native={self.native}"

    def uses_native(self, g) -> bool:
        """Whether :meth:`forward` runs the native op for ``g``."""
        return isinstance(g, MLPDescription) or (self.native and describe_mlp(g) is not None)

    def forward(self, g, z: torch.Tensor, in_bias: torch.Tensor | None = None) -> torch.Tensor:
        desc = describe_mlp(g) if self.uses_native(g) else None
        if desc is not None:
            per_sample = comp_contrast(z, desc.weights, desc.biases, list(desc.activations), list(desc.act_params),
                                       in_bias=in_bias, final_activation=desc.final_activation,
                                       normalize=self.normalize)
        else:
            if in_bias is not None:
                raise ValueError("in_bias: only supported for an MLP generator (an nn.Sequential of nn.Linear and "
                                 "supported activations, or an MLPDescription); fold it into g otherwise")
            per_sample = comp_contrast_func(g, z, normalize=self.normalize)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample
