"""Pure-autograd reference of ``mclcore.ops.critic_grad``: the critic's input gradient by ``torch.autograd.grad``
with ``create_graph=True``, so it is differentiable exactly like the op. Float64-capable; used by tests and
benchmarks as the baseline. :func:`sample_inputs` draws the op's random inputs for tests/ops/test_critic_grad.py and
the benchmarks."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

_ACT = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "softplus": F.softplus,
}


def critic_forward(v, weights, biases, activation="gelu"):
    """c(v): (B,) scores of the MLP critic."""
    h = v
    for w, b in zip(weights[:-1], biases[:-1]):
        h = _ACT[activation](F.linear(h, w, b))
    return F.linear(h, weights[-1], biases[-1]).squeeze(1)


def critic_grad(v, weights, biases, activation="gelu", create_graph=True):
    """grad_v c(v): (B, dv), differentiable when ``create_graph``."""
    if not v.requires_grad:
        v = v.detach().requires_grad_(True)
    s = critic_forward(v, weights, biases, activation)
    return torch.autograd.grad(s.sum(), v, create_graph=create_graph)[0]


class CriticGradInputs(NamedTuple):
    """The arguments of ``critic_grad``, in its order: ``critic_grad(*inputs)`` (the op or this reference)."""

    v: torch.Tensor              # (B, dv) critic inputs
    weights: list[torch.Tensor]  # per layer (out_l, in_l) as nn.Linear.weight; the last (1, h)
    biases: list[torch.Tensor]   # per layer (out_l,)
    activation: str

    def tensors(self) -> list[torch.Tensor]:
        """``[v, *weights, *biases]``: every tensor input, as autograd.grad and gradcheck take them."""
        return [self.v, *self.weights, *self.biases]


def sample_inputs(batch: int = 8, dim: int = 16, *, hidden: Sequence[int] = (16,), activation: str = "gelu",
                  weight_scale: float = 1.0, bias_std: float = 0.1, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu", seed: int = 0, generator: torch.Generator | None = None,
                  requires_grad: bool = False, contiguous: bool = True) -> CriticGradInputs:
    """A random MLP critic ``dim -> hidden... -> 1`` and a batch ``v`` (batch, dim) to differentiate it at.

    Weights ~ N(0, weight_scale^2 / fan_in), biases ~ N(0, bias_std^2) (0 gives zero biases), v ~ N(0, 1). Drawn
    in this order (weights, biases, v) on the CPU from ``generator``, or from ``torch.Generator().manual_seed(seed)``
    when it is None, in float64, then cast to ``dtype`` and moved to ``device``: a seed gives the same values, up to
    that rounding, in every dtype and on every device. ``activation`` is only passed through. ``requires_grad``
    makes every tensor a leaf that requires grad. ``contiguous=False`` returns the same values in non-contiguous
    views: v and the weights column-major (transposed strides), the biases every other entry of a buffer twice
    their length.
    """
    gen = torch.Generator().manual_seed(seed) if generator is None else generator
    dims = [dim, *hidden, 1]
    ws = [torch.randn(o, i, generator=gen, dtype=torch.float64) * weight_scale / i**0.5
          for i, o in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(o, generator=gen, dtype=torch.float64) * bias_std for o in dims[1:]]
    v = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    v, ws, bs = v.to(device, dtype), [w.to(device, dtype) for w in ws], [b.to(device, dtype) for b in bs]
    if not contiguous:
        v, ws = v.t().contiguous().t(), [w.t().contiguous().t() for w in ws]
        bs = [torch.stack([b, b], dim=1)[:, 0] for b in bs]
    if requires_grad:
        for t in (v, *ws, *bs):
            t.requires_grad_()
    return CriticGradInputs(v, ws, bs, activation)


def critic_grad_stacked(v, weights, biases, activation="gelu", create_graph=True):
    """Member-stacked reference: v (M, B, dv), weights[l] (M, out_l, in_l), biases[l] (M, out_l) -> (M, B, dv),
    the unstacked reference applied member by member."""
    return torch.stack([critic_grad(v[m], [w[m] for w in weights], [b[m] for b in biases], activation, create_graph)
                        for m in range(v.shape[0])])
