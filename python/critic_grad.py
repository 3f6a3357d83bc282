"""Pure-autograd reference of ``mclcore.ops.critic_grad``: the critic's input gradient by ``torch.autograd.grad``
with ``create_graph=True``, so it is differentiable exactly like the op. Float64-capable; used by tests and
benchmarks as the baseline."""
from __future__ import annotations

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
