"""Member-stacked calls of an unstacked op implementation: a loop over the leading member axis, outputs stacked.

The mclcore ops take an optional leading member axis (M independent problems in one call, e.g. the seeds of a stack
of models; schemas and shapes in csrc/registration.cpp). The C++ kernels loop over the members in C++
(csrc/critic_grad/critic_grad_cpu.cpp, csrc/infonce/infonce_members.h); the Triton launchers
(:mod:`mclcore.ops.triton`) use these helpers: each member runs the unstacked launcher on its views, so member m's
numbers are those of an unstacked call on its slices. Shape errors are RuntimeErrors with the C++ kernels' messages.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def critic_grad(fn: Callable, v: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                activation: str):
    """``fn`` = an unstacked critic_grad on v (M, B, dv), weights[l] (M, out, in), biases[l] (M, out):
    (grad_v c (M, B, dv), the M workspaces end to end)."""
    M = _check_critic(v, weights, biases)
    outs = [fn(v[m], [w[m] for w in weights], [b[m] for b in biases], activation) for m in range(M)]
    return torch.stack([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def critic_grad_backward(fn: Callable, grad_out: torch.Tensor, v: torch.Tensor, weights: Sequence[torch.Tensor],
                         biases: Sequence[torch.Tensor], saved: torch.Tensor, activation: str):
    """``fn`` = an unstacked critic_grad_backward: (dL/dv (M, B, dv), [dL/dW_l (M, out, in)], [dL/db_l (M, out)])."""
    M = _check_critic(v, weights, biases)
    if tuple(grad_out.shape) != tuple(v.shape):
        raise RuntimeError(f"critic_grad_backward: grad_out must be {list(v.shape)}, got {list(grad_out.shape)}")
    if saved.dim() != 1 or saved.numel() % M:
        raise RuntimeError("critic_grad_backward: saved must be the workspace returned by critic_grad")
    n = saved.numel() // M
    outs = [fn(grad_out[m], v[m], [w[m] for w in weights], [b[m] for b in biases], saved[m * n:(m + 1) * n],
               activation) for m in range(M)]
    return (torch.stack([o[0] for o in outs]), [torch.stack(g) for g in zip(*(o[1] for o in outs))],
            [torch.stack(g) for g in zip(*(o[2] for o in outs))])


def _check_critic(v, weights, biases) -> int:
    if v.dim() != 3:
        raise RuntimeError(f"critic_grad: v must be (B, dv) or member-stacked (M, B, dv), got {tuple(v.shape)}")
    M = v.shape[0]
    if len(biases) != len(weights):
        raise RuntimeError("critic_grad: weights and biases must have equal length")
    for l, (w, b) in enumerate(zip(weights, biases)):
        if w.dim() != 3 or w.shape[0] != M:
            raise RuntimeError(f"critic_grad: member-stacked v (M, B, dv) with M = {M} needs weights[{l}] of shape "
                               f"(M, out, in), got {tuple(w.shape)}")
        if b.dim() != 2 or b.shape[0] != M:
            raise RuntimeError(f"critic_grad: member-stacked v (M, B, dv) with M = {M} needs biases[{l}] of shape "
                               f"(M, out), got {tuple(b.shape)}")
    if M < 1:
        raise RuntimeError(f"critic_grad: member-stacked v needs at least one member, got shape {tuple(v.shape)}")
    return M


def _check_infonce(p, k, groups, offset=None) -> int:
    # offset given (rectangular mode): k (M, N, d) with N of its own, groups (M, N); the unstacked launcher checks N
    # against B and the offset.
    if offset is None and (k.dim() != 3 or k.shape != p.shape):
        raise RuntimeError(f"mclcore.infonce: member-stacked p (M, B, d) needs k of the same shape, got "
                           f"{tuple(p.shape)} and {tuple(k.shape)}")
    if offset is not None and (k.dim() != 3 or k.shape[0] != p.shape[0] or k.shape[2] != p.shape[2]):
        raise RuntimeError(f"mclcore.infonce: member-stacked p (M, B, d) with an offset needs k of shape (M, N, d), "
                           f"got {tuple(p.shape)} and {tuple(k.shape)}")
    M = p.shape[0]
    if M < 1:
        raise RuntimeError(f"mclcore.infonce: member-stacked p needs at least one member, got shape {tuple(p.shape)}")
    if groups is not None and (groups.dim() != 2 or tuple(groups.shape) != tuple(k.shape[:2])):
        raise RuntimeError(f"mclcore.infonce: member-stacked p (M, B, d) needs groups of shape "
                           f"(M, {'B' if offset is None else 'N'}) = {tuple(k.shape[:2])}, got {tuple(groups.shape)}")
    return M


def infonce(fn: Callable, p, k, groups, tau, eps, **kwargs):
    """``fn`` = an unstacked infonce or infonce_with_grad on p (M, B, d), k (M, B, d) (or (M, N, d) with
    ``offset=``), groups (M, B) (or (M, N)) or None: its three outputs, each stacked along a new leading member
    axis. ``kwargs`` (the offset, tile sizes) go to every call."""
    M = _check_infonce(p, k, groups, kwargs.get("offset"))
    return _over_members(M, lambda m: fn(p[m], k[m], None if groups is None else groups[m], tau, eps, **kwargs))


def infonce_backward(fn: Callable, grad_loss, p, k, groups, lse_all, lse_pos, tau, eps, **kwargs):
    """``fn`` = an unstacked infonce_backward; grad_loss (M,), lse_all / lse_pos (M, B): (dp (M, B, d),
    dk (M, N, d))."""
    M = _check_infonce(p, k, groups, kwargs.get("offset"))
    if grad_loss.numel() != M:
        raise RuntimeError(f"mclcore.infonce_backward: member-stacked p needs grad_loss of shape (M,) = ({M},), got "
                           f"{tuple(grad_loss.shape)}")
    for t in (lse_all, lse_pos):
        if t.dim() != 2 or t.shape[0] != M:
            raise RuntimeError(f"mclcore.infonce_backward: member-stacked p needs lse_all/lse_pos of shape (M, B) = "
                               f"({M}, {p.shape[1]}), got {tuple(t.shape)}")
    g = grad_loss.reshape(M)
    return _over_members(M, lambda m: fn(g[m], p[m], k[m], None if groups is None else groups[m], lse_all[m],
                                         lse_pos[m], tau, eps, **kwargs))


def _over_members(M: int, call: Callable) -> tuple:
    """The one per-member loop of the infonce launchers: ``call(m)`` (a tuple of tensors) for every member, the i-th
    tensors of all members stacked along a new leading axis (the i-th output)."""
    return tuple(torch.stack(o) for o in zip(*(call(m) for m in range(M))))
