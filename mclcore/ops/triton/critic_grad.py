"""Triton implementation of ``mclcore::critic_grad`` and ``mclcore::critic_grad_backward`` (docs/DESIGN.md §2.2).

Critic ``c(v) = w_L . h_{H-1} + b_L``, ``h_l = s(a_l)``, ``a_0 = W_0 v + b_0``, ``a_l = W_l h_{l-1} + b_l``.
Forward: ``grad_v c = delta_0 W_0`` with ``delta_l = m_l * s'(a_l)``, ``m_{H-1} = w_L``, ``m_l = delta_{l+1} W_{l+1}``.

The GEMMs are ``torch.mm`` / ``torch.addmm`` (cuBLAS; float32 stays IEEE float32 unless the user enables TF32);
Triton fuses the elementwise passes between them, each one read of its inputs and one write of its outputs:

* ``_act_kernel``: ``a -> h = s(a), s'(a), s''(a)`` straight into the workspace (one launch per hidden layer);
* ``_mul_kernel``: ``delta = m * s'``;
* ``_gate_kernel`` (backward): ``dm = d_delta * s'`` and the s'' term ``da = d_delta * m * s''`` together;
* ``_addcmul_kernel`` (backward): ``da_{l-1} += dx * s'(a_{l-1})``.

Workspace ``saved`` (schema: 4 B sum(hidden widths) values) has the C++ kernel's layout: per hidden layer l, four
contiguous (B, n_l) blocks h_l, s'(a_l), s''(a_l), m_l. The backward reads it and recomputes nothing; it is the
hand-written reverse-over-reverse of csrc/critic_grad/critic_grad_cpu.cpp (the same GEMMs as autograd with
create_graph=True, exact through s'').

Launch path: no host synchronisation and no host-to-device copy (CUDA-graph capturable), under a device guard for
v's device. Inputs of any strides (v and grad_out are made contiguous, the GEMMs take the others as they are); the
workspace must be the contiguous one critic_grad returned (both backends raise otherwise).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mclcore.ops import _members
from mclcore.ops.triton._act import sigmoid_pair, softplus, tanh
from mclcore.ops.triton._launch import device_guard

ACTIVATIONS = {"gelu": 0, "relu": 1, "silu": 2, "tanh": 3, "softplus": 4}
_BLOCK = 1024


@triton.jit
def _act_kernel(a_ptr, h_ptr, s1_ptr, s2_ptr, N, ACT: tl.constexpr, BLOCK: tl.constexpr):
    """h = s(a), s1 = s'(a), s2 = s''(a) for N contiguous elements."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    a = tl.load(a_ptr + offs, mask=mask, other=0.0)
    if ACT == 0:  # exact (erf) GELU, as nn.GELU(): s' = Phi + a phi, s'' = phi (2 - a^2)
        phi = tl.exp(-0.5 * a * a) * 0.3989422804014327
        Phi = 0.5 * (1.0 + tl.erf(a * 0.7071067811865476))
        h = a * Phi
        s1 = Phi + a * phi
        s2 = phi * (2.0 - a * a)
    elif ACT == 1:  # relu: derivative 0 at 0, as torch's backward
        h = tl.maximum(a, 0.0)
        s1 = tl.where(a > 0, 1.0, 0.0).to(a.dtype)
        s2 = tl.zeros_like(a)
    elif ACT == 2:  # silu: s' = sg (1 + a (1 - sg)), s'' = sg (1 - sg) (2 + a (1 - 2 sg))
        sg, om = sigmoid_pair(a)
        h = a * sg
        s1 = sg * (1.0 + a * om)
        s2 = sg * om * (2.0 + a * (om - sg))
    elif ACT == 3:  # tanh: s' = 1 - t^2, s'' = -2 t s'
        t = tanh(a)
        h = t
        s1 = 1.0 - t * t
        s2 = -2.0 * t * s1
    else:  # softplus as nn.Softplus (beta 1, threshold 20): linear above 20, so s'' = 0 there
        sg, om = sigmoid_pair(a)
        linear = a > 20.0
        h = tl.where(linear, a, softplus(a))
        s1 = tl.where(linear, 1.0, sg)
        s2 = tl.where(linear, 0.0, sg * om)
    tl.store(h_ptr + offs, h, mask=mask)
    tl.store(s1_ptr + offs, s1, mask=mask)
    tl.store(s2_ptr + offs, s2, mask=mask)


@triton.jit
def _mul_kernel(x_ptr, y_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * tl.load(y_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _gate_kernel(dd_ptr, s1_ptr, m_ptr, s2_ptr, dm_ptr, da_ptr, N, BLOCK: tl.constexpr):
    """Through delta = m * s'(a): dm = d_delta * s'(a), and the s'' term of da = d_delta * m * s''(a)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    dd = tl.load(dd_ptr + offs, mask=mask)
    tl.store(dm_ptr + offs, dd * tl.load(s1_ptr + offs, mask=mask), mask=mask)
    tl.store(da_ptr + offs, dd * tl.load(m_ptr + offs, mask=mask) * tl.load(s2_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _addcmul_kernel(acc_ptr, x_ptr, y_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    acc = tl.load(acc_ptr + offs, mask=mask)
    tl.store(acc_ptr + offs, acc + tl.load(x_ptr + offs, mask=mask) * tl.load(y_ptr + offs, mask=mask), mask=mask)


def _grid(n):
    return (triton.cdiv(n, _BLOCK),)


def _mul(x, y):
    out = torch.empty_like(x)
    _mul_kernel[_grid(x.numel())](x, y, out, x.numel(), BLOCK=_BLOCK)
    return out


def _check_inputs(v, weights, biases, activation):
    # The messages of check_inputs in csrc/critic_grad/critic_grad_cpu.cpp (RuntimeError, as TORCH_CHECK).
    if v.dim() != 2:
        raise RuntimeError(f"critic_grad: v must be (B, dv), got {tuple(v.shape)}")
    if v.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"critic_grad: v must be float32 or float64, got {v.dtype}")
    L = len(weights)
    if L < 2:
        raise RuntimeError(f"critic_grad: need at least 2 linear layers (one hidden), got {L}")
    if len(biases) != L:
        raise RuntimeError("critic_grad: weights and biases must have equal length")
    fan_in = v.shape[1]
    for l, (W, b) in enumerate(zip(weights, biases)):
        if W.dim() != 2 or W.shape[1] != fan_in:
            raise RuntimeError(f"critic_grad: weights[{l}] must be (out, {fan_in}), got {tuple(W.shape)}")
        if W.dtype != v.dtype or b.dtype != v.dtype:
            raise RuntimeError(f"critic_grad: weights[{l}]/biases[{l}] dtype must match v")
        if W.device != v.device or b.device != v.device:
            raise RuntimeError("critic_grad: all tensors must be on v's device")
        if b.dim() != 1 or b.shape[0] != W.shape[0]:
            raise RuntimeError(f"critic_grad: biases[{l}] must be ({W.shape[0]}), got {tuple(b.shape)}")
        fan_in = W.shape[0]
    if fan_in != 1:
        raise RuntimeError(f"critic_grad: the last layer must have one output (a scalar critic), got {fan_in}")
    if activation not in ACTIVATIONS:
        raise RuntimeError(f"critic_grad: activation must be one of gelu, relu, silu, tanh, softplus; got "
                           f"'{activation}'")


def _views(saved, B, weights):
    """Per hidden layer l: (h, s1, s2, m), each a contiguous (B, n_l) view of the workspace."""
    out, off = [], 0
    for W in weights[:-1]:
        n = W.shape[0]
        blocks = []
        for _ in range(4):
            blocks.append(saved[off:off + B * n].view(B, n))
            off += B * n
        out.append(tuple(blocks))
    return out


def critic_grad(v, weights, biases, activation):
    """mclcore::critic_grad: (grad_v c (B, dv) contiguous, saved workspace (4 B sum(n_l),)); member-stacked v
    (M, B, dv) runs member by member (mclcore/ops/_members.py)."""
    if v.dim() == 3:
        return _members.critic_grad(critic_grad, v, weights, biases, activation)
    _check_inputs(v, weights, biases, activation)
    with device_guard(v):
        return _critic_grad(v, weights, biases, activation)


def _critic_grad(v, weights, biases, activation):
    v = v.contiguous()
    B = v.shape[0]
    H = len(weights) - 1
    saved = torch.empty(4 * B * sum(W.shape[0] for W in weights[:-1]), dtype=v.dtype, device=v.device)
    ws = _views(saved, B, weights)
    x = v
    for l in range(H):
        h, s1, s2, _ = ws[l]
        a = torch.addmm(biases[l], x, weights[l].t())  # (B, n_l)
        _act_kernel[_grid(a.numel())](a, h, s1, s2, a.numel(), ACT=ACTIVATIONS[activation], BLOCK=_BLOCK)
        x = h
    ws[H - 1][3].copy_(weights[H].expand(B, weights[H].shape[1]))  # m_{H-1} = w_L
    delta = _mul(ws[H - 1][3], ws[H - 1][1])
    for l in range(H - 1, 0, -1):
        torch.mm(delta, weights[l], out=ws[l - 1][3])  # m_{l-1}: (B, n_{l-1})
        delta = _mul(ws[l - 1][3], ws[l - 1][1])
    return torch.mm(delta, weights[0]), saved


def critic_grad_backward(grad_out, v, weights, biases, saved, activation):
    """mclcore::critic_grad_backward: (dL/dv (B, dv), [dL/dW_l], [dL/db_l]) given G = dL/d(grad_v c); member-stacked
    v (M, B, dv) runs member by member."""
    if v.dim() == 3:
        return _members.critic_grad_backward(critic_grad_backward, grad_out, v, weights, biases, saved, activation)
    _check_inputs(v, weights, biases, activation)
    if tuple(grad_out.shape) != tuple(v.shape):
        raise RuntimeError(f"critic_grad_backward: grad_out must be {list(v.shape)}, got {list(grad_out.shape)}")
    B = v.shape[0]
    numel = 4 * B * sum(W.shape[0] for W in weights[:-1])
    if saved.dim() != 1 or saved.numel() != numel or not saved.is_contiguous() or saved.device != v.device:
        raise RuntimeError("critic_grad_backward: saved must be the workspace returned by critic_grad")
    with device_guard(v):
        return _critic_grad_backward(grad_out, v, weights, biases, saved, activation)


def _critic_grad_backward(grad_out, v, weights, biases, saved, activation):
    B = v.shape[0]
    H = len(weights) - 1
    v = v.contiguous()
    G = grad_out.to(v.dtype).contiguous()
    ws = _views(saved, B, weights)
    gW, gb, da = [None] * (H + 1), [None] * (H + 1), [None] * H
    # Up the gradient chain: grad_v c = delta_0 W_0, delta_l = m_l s'(a_l), m_l = delta_{l+1} W_{l+1}.
    delta = _mul(ws[0][3], ws[0][1])
    gW[0] = torch.mm(delta.t(), G)                    # (n_0, dv)
    ddelta = torch.mm(G, weights[0].t())              # (B, n_0)
    for l in range(H):
        _, s1, s2, m = ws[l]
        dm, da[l] = torch.empty_like(ddelta), torch.empty_like(ddelta)
        _gate_kernel[_grid(dm.numel())](ddelta, s1, m, s2, dm, da[l], dm.numel(), BLOCK=_BLOCK)
        if l + 1 < H:
            delta = _mul(ws[l + 1][3], ws[l + 1][1])
            gW[l + 1] = torch.mm(delta.t(), dm)       # (n_{l+1}, n_l)
            ddelta = torch.mm(dm, weights[l + 1].t())  # (B, n_{l+1})
        else:
            gW[H] = dm.sum(0, keepdim=True)           # d w_L: (1, n_{H-1})
    gb[H] = torch.zeros_like(biases[H])               # grad_v c does not depend on b_L
    # Down the forward chain: a_l = W_l h_{l-1} + b_l, h_l = s(a_l).
    gv = None
    for l in range(H - 1, -1, -1):
        x = v if l == 0 else ws[l - 1][0]
        gb[l] = da[l].sum(0)
        gW[l].addmm_(da[l].t(), x)
        dx = torch.mm(da[l], weights[l])              # (B, n_{l-1}) or (B, dv)
        if l == 0:
            gv = dx
        else:
            _addcmul_kernel[_grid(dx.numel())](da[l - 1], dx, ws[l - 1][1], dx.numel(), BLOCK=_BLOCK)
    return gv, gW, gb
