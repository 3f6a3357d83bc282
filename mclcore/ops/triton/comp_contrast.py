"""Triton implementation of ``mclcore::comp_contrast`` and ``mclcore::comp_contrast_backward`` (docs/DESIGN.md §2.5).

Same arithmetic and the same workspace layout as the C++ CPU kernels (csrc/comp_contrast/comp_contrast_cpu.cpp), so
the saved workspace and the fake kernels agree whatever the device. Per sample a stack of 1 + dz rows (value row,
then the tangent rows d./dz_i), sample-major, for every layer:

* linear layer ``P_l = X_{l-1} W_l^T`` over all B (1 + dz) rows: one ``torch.mm`` (cuBLAS), the bias added to the
  value rows; the first layer's tangent rows are the columns of W_0;
* activation, in Triton (``_act_kernel``, one program per sample and column block): ``X_l = [s(a); s'(a) A]``,
  keeping s' and s'' (evaluated in float64, rounded to the working dtype, as the C++ kernel's float64 path);
* ``_contrast_kernel`` (one program per sample): ``C = sum_n sum_j |J_nj| sum_{i<j} |J_ni|``, ``Q = sum J^2``,
  accumulated in float64.

Backward: ``_jacobian_adjoint_kernel`` gives ``dJ = gC sign(J) sum_{i' != i} |J_ni'| + 2 gQ J`` (prefix and suffix
sums: no cancellation), ``_deactivate_kernel`` the activation rule ``dA = s' dT``, ``da = s' dh + s'' sum_i A_i
dT_i``, and torch.mm the linear layers' ``dW_l = dP_l^T X_{l-1}``, ``dX_{l-1} = dP_l W_l``. No host synchronisation,
no host-to-device copy (CUDA-graph capturable); inputs of any strides (each goes through PyTorch ops first).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mclcore.ops.triton._act import sigmoid_pair, softplus, tanh
from mclcore.ops.triton._launch import check_mlp, device_guard, f64

ACTIVATIONS = {"tanh": 0, "sigmoid": 1, "softplus": 2, "gelu": 3, "silu": 4, "smooth_leaky": 5, "relu": 6,
               "leaky_relu": 7, "identity": 8}
CURVED = {"tanh", "sigmoid", "softplus", "gelu", "silu", "smooth_leaky"}  # s'' != 0


@triton.jit
def _act_kernel(p_ptr, x_ptr, s1_ptr, s2_ptr, h, dz, prm: tl.float64, ACT: tl.constexpr, BLOCK: tl.constexpr):
    """Sample b = program_id(0), columns of block program_id(1): X = [s(a); s'(a) A_i], s1 = s'(a), s2 = s''(a)."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < h
    S = 1 + dz
    base = b * S * h
    a = tl.load(p_ptr + base + cols, mask=mask, other=0.0).to(tl.float64)
    p = f64(prm)
    zero = tl.zeros_like(a)
    if ACT == 0:  # tanh
        t = tanh(a)
        d = 1.0 - t * t
        s0, s1, s2 = t, d, -2.0 * t * d
    elif ACT == 1:  # sigmoid
        sg, om = sigmoid_pair(a)
        d1 = sg * om
        s0, s1, s2 = sg, d1, d1 * (om - sg)
    elif ACT == 2:  # softplus (1/beta) log(1 + exp(beta a)), no threshold
        sg, om = sigmoid_pair(p * a)
        s0, s1, s2 = softplus(p * a) / p, sg, p * sg * om
    elif ACT == 3:  # gelu, exact erf form
        Phi = 0.5 * (1.0 + tl.erf(a * 0.7071067811865476))
        phi = 0.3989422804014327 * tl.exp(-0.5 * a * a)
        s0, s1, s2 = a * Phi, Phi + a * phi, (2.0 - a * a) * phi
    elif ACT == 4:  # silu a sigma(a)
        sg, om = sigmoid_pair(a)
        d1 = sg * om
        s0, s1, s2 = a * sg, sg + a * d1, 2.0 * d1 + a * d1 * (om - sg)
    elif ACT == 5:  # smooth_leaky p a + (1 - p) softplus(a)
        sg, om = sigmoid_pair(a)
        q = 1.0 - p
        s0, s1, s2 = p * a + q * softplus(a), p + q * sg, q * sg * om
    elif ACT == 6:  # relu (derivative 0 at 0, as torch)
        s0, s1, s2 = tl.where(a > 0, a, 0.0), tl.where(a > 0, 1.0, 0.0), zero
    elif ACT == 7:  # leaky_relu (slope p at a <= 0, as torch)
        s0, s1, s2 = tl.where(a > 0, a, p * a), tl.where(a > 0, 1.0, p + zero), zero
    else:  # identity
        s0, s1, s2 = a, zero + 1.0, zero
    ty = x_ptr.dtype.element_ty
    d1 = s1.to(ty)
    tl.store(x_ptr + base + cols, s0.to(ty), mask=mask)
    tl.store(s1_ptr + b * h + cols, d1, mask=mask)
    tl.store(s2_ptr + b * h + cols, s2.to(ty), mask=mask)
    for i in range(1, S):
        ai = tl.load(p_ptr + base + i * h + cols, mask=mask, other=0.0)
        tl.store(x_ptr + base + i * h + cols, d1 * ai, mask=mask)


@triton.jit
def _contrast_kernel(j_ptr, c_ptr, q_ptr, dz, dx, BLOCK: tl.constexpr):
    """Sample b = program_id(0): C_b and Q_b from the tangent rows (rows 1..dz of its stack, width dx)."""
    b = tl.program_id(0)
    S = 1 + dz
    c = tl.zeros([BLOCK], tl.float64)
    q = tl.zeros([BLOCK], tl.float64)
    for k0 in range(0, dx, BLOCK):
        cols = k0 + tl.arange(0, BLOCK)
        mask = cols < dx
        pre = tl.zeros([BLOCK], tl.float64)
        for i in range(0, dz):
            a = tl.abs(tl.load(j_ptr + (b * S + 1 + i) * dx + cols, mask=mask, other=0.0).to(tl.float64))
            c += a * pre
            q += a * a
            pre += a
    ty = c_ptr.dtype.element_ty
    tl.store(c_ptr + b, tl.sum(c, 0).to(ty))
    tl.store(q_ptr + b, tl.sum(q, 0).to(ty))


@triton.jit
def _jacobian_adjoint_kernel(j_ptr, gc_ptr, gq_ptr, g_ptr, dz, dx, BLOCK: tl.constexpr):
    """Sample b = program_id(0), output columns of block program_id(1): the adjoint of the tangent rows,
    dJ = gC sign(J) (prefix + suffix of |J| over the other rows) + 2 gQ J; the value row gets 0."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < dx
    S = 1 + dz
    base = b * S * dx
    gc = tl.load(gc_ptr + b).to(tl.float64)
    gq2 = 2.0 * tl.load(gq_ptr + b).to(tl.float64)
    ty = g_ptr.dtype.element_ty
    tl.store(g_ptr + base + cols, tl.zeros([BLOCK], tl.float64).to(ty), mask=mask)
    acc = tl.zeros([BLOCK], tl.float64)
    for i in range(0, dz):  # prefix sums sum_{i' < i} |J|, parked in the output rows
        j = tl.load(j_ptr + base + (1 + i) * dx + cols, mask=mask, other=0.0).to(tl.float64)
        tl.store(g_ptr + base + (1 + i) * dx + cols, acc.to(ty), mask=mask)
        acc += tl.abs(j)
    acc = tl.zeros([BLOCK], tl.float64)
    for k in range(0, dz):  # from the last row up: add the suffix sums
        i = dz - 1 - k
        j = tl.load(j_ptr + base + (1 + i) * dx + cols, mask=mask, other=0.0).to(tl.float64)
        others = tl.load(g_ptr + base + (1 + i) * dx + cols, mask=mask, other=0.0).to(tl.float64) + acc
        sg = tl.where(j > 0, 1.0, tl.where(j < 0, -1.0, 0.0))  # sign(0) = 0, as torch's abs backward
        tl.store(g_ptr + base + (1 + i) * dx + cols, (gc * sg * others + gq2 * j).to(ty), mask=mask)
        acc += tl.abs(j)


@triton.jit
def _deactivate_kernel(g_ptr, p_ptr, s1_ptr, s2_ptr, h, dz, CURVED: tl.constexpr, BLOCK: tl.constexpr):
    """In place: the adjoint of X_l (rows of sample program_id(0)) becomes that of P_l: dA = s' dT,
    da = s' dh + s'' sum_i A_i dT_i (the s'' term only for curved activations)."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < h
    S = 1 + dz
    base = b * S * h
    d1 = tl.load(s1_ptr + b * h + cols, mask=mask, other=0.0)
    ga = tl.load(g_ptr + base + cols, mask=mask, other=0.0) * d1
    if CURVED:
        d2 = tl.load(s2_ptr + b * h + cols, mask=mask, other=0.0)
    for i in range(1, S):
        gi = tl.load(g_ptr + base + i * h + cols, mask=mask, other=0.0)
        if CURVED:
            ai = tl.load(p_ptr + base + i * h + cols, mask=mask, other=0.0)
            ga += d2 * ai * gi
        tl.store(g_ptr + base + i * h + cols, d1 * gi, mask=mask)
    tl.store(g_ptr + base + cols, ga, mask=mask)


def _check(op, z, weights, biases, in_bias, activations, act_params):
    # The messages of check_inputs in csrc/comp_contrast/comp_contrast_cpu.cpp (shared with mech_derivs).
    check_mlp(op, z, weights, biases, activations, act_params,
              per_sample=(("in_bias", in_bias, weights[0].shape[0] if weights else 0),))


def _workspace_numel(B, dz, widths, n_act):
    return sum((1 + dz) * B * h + ((1 + dz) * B * h + 2 * B * h if l < n_act else 0) for l, h in enumerate(widths))


def _workspace_views(saved, B, dz, widths, n_act):
    """(P, X, s1, s2) per layer as in the C++ kernel (X, s1, s2 None for a layer without activation)."""
    S, off, out = 1 + dz, 0, []
    for l, h in enumerate(widths):
        P = saved[off:off + S * B * h].view(S * B, h)
        off += S * B * h
        X = s1 = s2 = None
        if l < n_act:
            X = saved[off:off + S * B * h].view(S * B, h)
            off += S * B * h
            s1 = saved[off:off + B * h].view(B, h)
            off += B * h
            s2 = saved[off:off + B * h].view(B, h)
            off += B * h
        out.append((P, X, s1, s2))
    return out, off


def comp_contrast(z, weights, biases, in_bias, activations, act_params, *, block=64):
    """mclcore::comp_contrast: (C (B,), Q (B,), saved) in z's dtype, contiguous."""
    activations, act_params = list(activations), list(act_params)
    _check("comp_contrast", z, weights, biases, in_bias, activations, act_params)
    with device_guard(z):
        B, dz = z.shape
        S = 1 + dz
        widths = [w.shape[0] for w in weights]
        n_act = len(activations)
        saved = torch.empty((_workspace_numel(B, dz, widths, n_act),), dtype=z.dtype, device=z.device)
        views, _ = _workspace_views(saved, B, dz, widths, n_act)
        C = torch.empty((B,), dtype=z.dtype, device=z.device)
        Q = torch.empty((B,), dtype=z.dtype, device=z.device)
        if B == 0:
            return C, Q, saved
        W = [w.detach() for w in weights]
        zd = z.detach()
        for l, (P, X, s1, s2) in enumerate(views):
            h = widths[l]
            P3 = P.view(B, S, h)
            if l == 0:
                a0 = torch.addmm(biases[0].detach(), zd, W[0].t())
                if in_bias is not None:
                    a0 = a0 + in_bias.detach()
                P3[:, 0] = a0
                P3[:, 1:] = W[0].t().unsqueeze(0)  # tangent rows: the columns of W_0, the same for every sample
            else:
                torch.mm(views[l - 1][1], W[l].t(), out=P)
                P3[:, 0] += biases[l].detach()
            if l < n_act:
                grid = (B, triton.cdiv(h, block))
                _act_kernel[grid](P, X, s1, s2, h, dz, float(act_params[l]), ACT=ACTIVATIONS[activations[l]],
                                  BLOCK=block)
        last = views[-1][1] if n_act == len(weights) else views[-1][0]
        _contrast_kernel[(B,)](last, C, Q, dz, widths[-1], BLOCK=block)
    return C, Q, saved


def comp_contrast_backward(grad_c, grad_q, z, weights, biases, in_bias, saved, activations, act_params, *,
                           block=64):
    """mclcore::comp_contrast_backward: (dz (B, dz), [dW_l], [db_l], d in_bias (B, h_0)), contiguous."""
    activations, act_params = list(activations), list(act_params)
    _check("comp_contrast_backward", z, weights, biases, in_bias, activations, act_params)
    B, dz = z.shape
    S = 1 + dz
    widths = [w.shape[0] for w in weights]
    n_act, L = len(activations), len(weights)
    if tuple(grad_c.shape) != (B,) or tuple(grad_q.shape) != (B,):
        raise RuntimeError(f"comp_contrast_backward: grad_c, grad_q: expected shape ({B}), got {list(grad_c.shape)} "
                           f"and {list(grad_q.shape)}")
    if (saved.dim() != 1 or saved.numel() != _workspace_numel(B, dz, widths, n_act) or saved.dtype != z.dtype
            or not saved.is_contiguous()):
        raise RuntimeError("comp_contrast_backward: saved must be the workspace returned by comp_contrast for these "
                           "inputs")
    views, _ = _workspace_views(saved, B, dz, widths, n_act)
    with device_guard(z):
        gc = grad_c.detach().to(z.dtype).contiguous()
        gq = grad_q.detach().to(z.dtype).contiguous()
        W = [w.detach() for w in weights]
        gW = [torch.zeros_like(w, memory_format=torch.contiguous_format) for w in W]
        gb = [torch.zeros((w.shape[0],), dtype=z.dtype, device=z.device) for w in W]
        gz = torch.zeros((B, dz), dtype=z.dtype, device=z.device)
        gib = torch.zeros((B, widths[0]), dtype=z.dtype, device=z.device)
        if B == 0:
            return gz, gW, gb, gib
        last = views[-1][1] if n_act == L else views[-1][0]
        G = torch.empty((S * B, widths[-1]), dtype=z.dtype, device=z.device)
        _jacobian_adjoint_kernel[(B, triton.cdiv(widths[-1], block))](last, gc, gq, G, dz, widths[-1], BLOCK=block)

        def deactivate(G, l):
            P, _, s1, s2 = views[l]
            _deactivate_kernel[(B, triton.cdiv(widths[l], block))](G, P, s1, s2, widths[l], dz,
                                                                   CURVED=activations[l] in CURVED, BLOCK=block)

        if n_act == L:
            deactivate(G, L - 1)
        for l in range(L - 1, -1, -1):
            h = widths[l]
            G3 = G.view(B, S, h)
            ga = G3[:, 0]  # da_l, (B, h)
            gb[l] = ga.sum(0)
            if l > 0:
                gW[l] = G.t() @ views[l - 1][1]
                G = G @ W[l]
                deactivate(G, l - 1)
            else:
                # X_{-1} = [z; I]: dW_0 = da_0^T z + sum_b dA_0[b]^T; dz = da_0 W_0; d in_bias = da_0.
                gW[0] = ga.t() @ z.detach() + G3[:, 1:].sum(0).t()
                gz = ga @ W[0]
                gib = ga.contiguous()
    return gz, gW, gb, gib
