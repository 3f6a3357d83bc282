"""Triton implementation of ``mclcore::mech_derivs``: V(z,u) and the log-volume of an MLP generator (docs/DESIGN.md §2.3).

Per sample and latent directions i, j the Taylor coefficients of x in z go through the layers,
``T1_j = dx/dz_j``, ``T2_ij = d2x/dz_i dz_j`` (symmetric: i <= j only, P = dz(dz+1)/2 rows),
``T3_ij = d3x/dz_i^2 dz_j`` (dz^2 rows). A chunk of bc samples is one stack of rows (width n of the layer)::

    [primal (bc)] [T1 (bc dz)] [T2 (bc P)] [T3 (bc dz^2)]        sample-major inside each block

* linear layer ``A_n = W T_n``: one ``torch.mm`` of the whole stack (bias added to the primal rows only);
* nonlinearity, ``s_k = s^(k)(a)``, in Triton: ``_coef_kernel`` evaluates s, s', s'', s''' once per unit and
  sample (in float64, then rounded to the propagation dtype, as the C++ kernel), then ``_t1_kernel``,
  ``_t2_kernel``, ``_t3_kernel`` apply, out of place (so no ordering between them)::

      N1_j  = s1 A1_j
      N2_ij = s2 A1_i A1_j + s1 A2_ij
      N3_ij = s3 A1_i^2 A1_j + s2 (2 A1_i A2_ij + A2_ii A1_j) + s1 A3_ij

* the first layer's tangents are the columns of W_0 (the same for every sample), A2 = A3 = 0.

The output algebra is float64 ``torch.linalg`` on (bc, dz, dz) batches, with the C++ kernel's formulas: J (dx x dz),
``A = J^T J = Lc Lc^T`` (Cholesky; a relative pivot ``Lc_jj^2 / A_jj <= 1e-13`` marks J numerically rank deficient:
V = NaN, L = -inf), ``Y = A^-1 J^T``, ``E_i = Y H_i``, ``R_i = (I - J Y) H_i``::

    m'_i   = tr(E_i)
    m''_ii = tr(Y T_i) - tr(E_i^2) + tr(A^-1 R_i^T R_i)          (the last term vanishes for square J)
    L      = sum_j log Lc_jj (+ sum_i log|film_scale_i|)

FiLM ``y = z * scale + shift``: ``V[:, :dz] = scale * m'``, ``V[:, dz:] = scale^2 * m''``.
Outputs (V (B, 2dz), L (B,)) contiguous in z's dtype; float32 propagates in float32, the algebra is float64.

Launch path: no host synchronisation and no host-to-device copy (CUDA-graph capturable), under a device guard for
z's device. The activation parameters are float64 kernel arguments; the pair tables (i, j of each T2 row and the
symmetric gather index) are built on the device once per (dz, device) and cached (never from inside a CUDA-graph
capture); A^-1 comes from two triangular solves (``torch.cholesky_inverse`` checks its info array on the host).
Inputs of any strides (every tensor goes through PyTorch ops before a kernel sees it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mclcore.ops.triton._act import sigmoid_pair, softplus, tanh
from mclcore.ops.triton._launch import capturing, check_mlp, device_guard, f64

ACTIVATIONS = {"tanh": 0, "sigmoid": 1, "softplus": 2, "gelu": 3, "silu": 4, "smooth_leaky": 5, "relu": 6,
               "leaky_relu": 7, "identity": 8}
PIVOT_RTOL = 1e-13  # as kPivotRtol in csrc/mech_derivs/mech_derivs_cpu.cpp
_CHUNK_BYTES = 256 << 20  # working memory per chunk of samples (stacks and float64 algebra together)


@triton.jit
def _coef_kernel(a_ptr, c_ptr, prm: tl.float64, N, ACT: tl.constexpr, BLOCK: tl.constexpr):
    """c[k * N + e] = s^(k)(a[e]), k = 0..3, for N contiguous pre-activations (computed in float64); prm: softplus
    beta / (smooth) leaky slope."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    p = f64(prm)
    zero = tl.zeros_like(a)
    if ACT == 0:  # tanh
        t = tanh(a)
        d = 1.0 - t * t
        s0, s1, s2, s3 = t, d, -2.0 * t * d, d * (4.0 * t * t - 2.0 * d)
    elif ACT == 1:  # sigmoid
        sg, om = sigmoid_pair(a)
        d1 = sg * om
        s0, s1, s2, s3 = sg, d1, d1 * (om - sg), d1 * (1.0 - 6.0 * d1)
    elif ACT == 2:  # softplus (1/beta) log(1 + exp(beta a))
        sg, om = sigmoid_pair(p * a)
        d1 = sg * om
        s0, s1, s2, s3 = softplus(p * a) / p, sg, p * d1, p * p * d1 * (om - sg)
    elif ACT == 3:  # gelu, exact erf form
        Phi = 0.5 * (1.0 + tl.erf(a * 0.7071067811865476))
        phi = 0.3989422804014327 * tl.exp(-0.5 * a * a)
        s0, s1, s2, s3 = a * Phi, Phi + a * phi, (2.0 - a * a) * phi, (a * a * a - 4.0 * a) * phi
    elif ACT == 4:  # silu a sigma(a)
        sg, om = sigmoid_pair(a)
        d1 = sg * om
        d2 = d1 * (om - sg)
        d3 = d1 * (1.0 - 6.0 * d1)
        s0, s1, s2, s3 = a * sg, sg + a * d1, 2.0 * d1 + a * d2, 3.0 * d2 + a * d3
    elif ACT == 5:  # smooth_leaky p a + (1 - p) softplus(a)
        sg, om = sigmoid_pair(a)
        d1 = sg * om
        q = 1.0 - p
        s0, s1, s2, s3 = p * a + q * softplus(a), p + q * sg, q * d1, q * d1 * (om - sg)
    elif ACT == 6:  # relu (derivative 0 at 0, as torch)
        s0, s1, s2, s3 = tl.where(a > 0, a, 0.0), tl.where(a > 0, 1.0, 0.0), zero, zero
    elif ACT == 7:  # leaky_relu (slope p at a <= 0, as torch)
        s0, s1, s2, s3 = tl.where(a > 0, a, p * a), tl.where(a > 0, 1.0, p + zero), zero, zero
    else:  # identity
        s0, s1, s2, s3 = a, zero + 1.0, zero, zero
    ty = c_ptr.dtype.element_ty
    tl.store(c_ptr + offs, s0.to(ty), mask=mask)
    tl.store(c_ptr + N + offs, s1.to(ty), mask=mask)
    tl.store(c_ptr + 2 * N + offs, s2.to(ty), mask=mask)
    tl.store(c_ptr + 3 * N + offs, s3.to(ty), mask=mask)


@triton.jit
def _pair(i, j, dz):
    """Row of T2_ij (i <= j) in the upper triangle, row-major."""
    return i * dz - i * (i - 1) // 2 + (j - i)


@triton.jit
def _t1_kernel(a_ptr, o_ptr, c_ptr, bc, n, dz, BLOCK: tl.constexpr):
    """N1_j = s1 A1_j; program (b * dz + j, column block); the T1 rows start at row bc."""
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    b = r // dz
    s1 = tl.load(c_ptr + bc * n + b * n + cols, mask=mask)
    a1 = tl.load(a_ptr + (bc + r) * n + cols, mask=mask)
    tl.store(o_ptr + (bc + r) * n + cols, s1 * a1, mask=mask)


@triton.jit
def _t2_kernel(a_ptr, o_ptr, c_ptr, pi_ptr, pj_ptr, bc, n, dz, P, BLOCK: tl.constexpr):
    """N2_ij = s2 A1_i A1_j + s1 A2_ij; program (b * P + pair, column block)."""
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    b = r // P
    pr = r % P
    i = tl.load(pi_ptr + pr)
    j = tl.load(pj_ptr + pr)
    t1 = bc
    t2 = bc + bc * dz
    s1 = tl.load(c_ptr + bc * n + b * n + cols, mask=mask)
    s2 = tl.load(c_ptr + 2 * bc * n + b * n + cols, mask=mask)
    a1i = tl.load(a_ptr + (t1 + b * dz + i) * n + cols, mask=mask)
    a1j = tl.load(a_ptr + (t1 + b * dz + j) * n + cols, mask=mask)
    a2 = tl.load(a_ptr + (t2 + r) * n + cols, mask=mask)
    tl.store(o_ptr + (t2 + r) * n + cols, s2 * a1i * a1j + s1 * a2, mask=mask)


@triton.jit
def _t3_kernel(a_ptr, o_ptr, c_ptr, bc, n, dz, P, BLOCK: tl.constexpr):
    """N3_ij = s3 A1_i^2 A1_j + s2 (2 A1_i A2_ij + A2_ii A1_j) + s1 A3_ij; program (b dz^2 + i dz + j, block)."""
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    b = r // (dz * dz)
    i = (r // dz) % dz
    j = r % dz
    t1 = bc
    t2 = bc + bc * dz
    t3 = t2 + bc * P
    s1 = tl.load(c_ptr + bc * n + b * n + cols, mask=mask)
    s2 = tl.load(c_ptr + 2 * bc * n + b * n + cols, mask=mask)
    s3 = tl.load(c_ptr + 3 * bc * n + b * n + cols, mask=mask)
    a1i = tl.load(a_ptr + (t1 + b * dz + i) * n + cols, mask=mask)
    a1j = tl.load(a_ptr + (t1 + b * dz + j) * n + cols, mask=mask)
    a2ij = tl.load(a_ptr + (t2 + b * P + _pair(tl.minimum(i, j), tl.maximum(i, j), dz)) * n + cols, mask=mask)
    a2ii = tl.load(a_ptr + (t2 + b * P + _pair(i, i, dz)) * n + cols, mask=mask)
    a3 = tl.load(a_ptr + (t3 + r) * n + cols, mask=mask)
    out = s3 * a1i * a1i * a1j + s2 * (2.0 * a1i * a2ij + a2ii * a1j) + s1 * a3
    tl.store(o_ptr + (t3 + r) * n + cols, out, mask=mask)


def _check(z, weights, biases, in_bias, film_scale, film_shift, activations, act_params):
    # The messages of mech_derivs_cpu in csrc/mech_derivs/mech_derivs_cpu.cpp (shared with comp_contrast), plus
    # mech_derivs' own condition dx >= dz.
    h0 = weights[0].shape[0] if weights else 0
    dx = check_mlp("mech_derivs", z, weights, biases, activations, act_params,
                   per_sample=(("in_bias", in_bias, h0), ("film_scale", film_scale, z.shape[-1]),
                               ("film_shift", film_shift, z.shape[-1])))
    if dx < z.shape[1]:
        raise RuntimeError(f"mech_derivs: the generator's output has dx = {dx} < dz = {z.shape[1]}: J^T J is "
                           f"singular, so the log-volume 1/2 logdet(J^T J) and V are undefined")


class _Propagation:
    """Taylor propagation of one chunk of samples through the layers (see the module docstring)."""

    def __init__(self, z, weights, biases, activations, act_params, block):
        self.dz = z.shape[1]
        self.P = self.dz * (self.dz + 1) // 2
        self.weights = [w.detach() for w in weights]
        self.biases = [b.detach() for b in biases]
        self.acts = [ACTIVATIONS[a] for a in activations]
        self.params = [float(x) for x in act_params]  # kernel arguments (float64), no device copy
        self.pi, self.pj, self.full = _pair_tables(self.dz, z.device)
        self.block = block
        self.rows_per_sample = 1 + self.dz + self.P + self.dz * self.dz

    def nonlinearity(self, a, bc, n, l):
        """N stack from the pre-activation stack a (rows x n) for activation l."""
        out = torch.empty_like(a)
        prim = a[:bc]
        coef = torch.empty((4, bc, n), dtype=a.dtype, device=a.device)
        N = bc * n
        _coef_kernel[(triton.cdiv(N, self.block),)](prim, coef, self.params[l], N, ACT=self.acts[l],
                                                     BLOCK=self.block)
        out[:bc] = coef[0]
        nb = triton.cdiv(n, self.block)
        dz, P = self.dz, self.P
        _t1_kernel[(bc * dz, nb)](a, out, coef, bc, n, dz, BLOCK=self.block)
        _t2_kernel[(bc * P, nb)](a, out, coef, self.pi, self.pj, bc, n, dz, P, BLOCK=self.block)
        _t3_kernel[(bc * dz * dz, nb)](a, out, coef, bc, n, dz, P, BLOCK=self.block)
        return out

    def run(self, y, in_bias):
        """y: (bc, dz) generator inputs; returns the output stack (rows x dx)."""
        bc, dz, P = y.shape[0], self.dz, self.P
        W0, b0 = self.weights[0], self.biases[0]
        n = W0.shape[0]
        st = torch.zeros((bc * self.rows_per_sample, n), dtype=y.dtype, device=y.device)
        torch.addmm(b0, y, W0.t(), out=st[:bc])
        if in_bias is not None:
            st[:bc] += in_bias
        st[bc:bc + bc * dz].view(bc, dz, n).copy_(W0.t().unsqueeze(0).expand(bc, dz, n))  # A1_j = W_0[:, j]
        for l in range(len(self.weights)):
            if l > 0:
                W = self.weights[l]
                st = st @ W.t()                       # every row: A_n = W T_n (the primal too)
                st[:bc] += self.biases[l]
            if l < len(self.acts):
                st = self.nonlinearity(st, bc, st.shape[1], l)
        return st


# (dz, device) -> (pi, pj, full): the row i, j of each stored T2 pair (int32, (P,)) and the pair of every (i, j)
# (int64, (dz, dz)), built on the device: per call they were a host-to-device copy (triu_indices(...).to(device)).
_PAIR_TABLES: dict = {}


def _pair_tables(dz: int, device: torch.device):
    key = (dz, str(device))
    tables = _PAIR_TABLES.get(key)
    if tables is None:
        ar = torch.arange(dz, device=device)
        i, j = ar[:, None].expand(dz, dz), ar[None, :].expand(dz, dz)
        upper = torch.triu_indices(dz, dz, device=device)              # row-major i <= j: the T2 row order
        lo, hi = torch.minimum(i, j), torch.maximum(i, j)
        full = lo * dz - lo * (lo - 1) // 2 + (hi - lo)                 # _pair(min, max) for every (i, j)
        tables = (upper[0].to(torch.int32).contiguous(), upper[1].to(torch.int32).contiguous(), full.contiguous())
        # Never cached from inside a capture (such a table holds its values only once the graph replays), and never
        # evicted (a captured graph may read a cached table; there is one per latent size in use, a few KiB).
        if not capturing(ar):
            _PAIR_TABLES[key] = tables
    return tables


def _output_algebra(st, bc, dz, P, full, dtype):
    """V (bc, 2dz), L (bc,) from the output stack, in float64, cast to ``dtype``. full: the pair of every (i, j)."""
    dx = st.shape[1]
    t1, t2, t3 = bc, bc + bc * dz, bc + bc * dz + bc * P
    Jt = st[t1:t2].view(bc, dz, dx).double()                           # rows T1_j: J^T
    H = st[t2:t3].view(bc, P, dx).double()[:, full]                    # (bc, dz, dz, dx): H[b, i, j] = T2_ij
    T3 = st[t3:].view(bc, dz, dz, dx).double()                          # T3[b, i, j] = d3x / dz_i^2 dz_j
    A = Jt @ Jt.transpose(1, 2)                                         # J^T J
    Lc, info = torch.linalg.cholesky_ex(A)
    piv = torch.diagonal(Lc, dim1=1, dim2=2)
    diagA = torch.diagonal(A, dim1=1, dim2=2)
    # Relative pivot (sin^2 of the angle between column j of J and the span of the previous ones) as the C++ kernel.
    ok = (info == 0) & (piv * piv > PIVOT_RTOL * diagA).all(1) & torch.isfinite(A).flatten(1).all(1)
    eye = torch.eye(dz, dtype=A.dtype, device=A.device).expand(bc, dz, dz)
    Lc = torch.where(ok[:, None, None], Lc, eye)                        # keep the algebra finite on bad samples
    half_logdet = torch.log(torch.diagonal(Lc, dim1=1, dim2=2)).sum(1)
    # A^-1 = Lc^-T Lc^-1 by a triangular solve (cuBLAS trsm, no host synchronisation; cholesky_inverse would check
    # an info array on the host).
    Linv = torch.linalg.solve_triangular(Lc, eye, upper=False)
    Ainv = Linv.transpose(1, 2) @ Linv
    Y = Ainv @ torch.where(ok[:, None, None], Jt, 0.0)                 # (bc, dz, dx): rows y_k
    E = torch.einsum("bkx,bijx->bikj", Y, H)                            # E_i[k, j] = y_k . T2_ij
    m1 = torch.einsum("bikk->bi", E)
    m2 = torch.einsum("bjx,bijx->bi", Y, T3) - torch.einsum("bikj,bijk->bi", E, E)
    if dx > dz:
        R = H - torch.einsum("bikj,bkx->bijx", E, Jt)                  # (I - J Y) H_i, column j
        RtR = torch.einsum("bilx,bijx->bilj", R, R)                    # R_i^T R_i, (bc, dz, dz, dz)
        m2 = m2 + torch.einsum("bjl,bilj->bi", Ainv, RtR)               # tr(A^-1 R_i^T R_i)
    return m1, m2, half_logdet, ok


def mech_derivs(z, weights, biases, in_bias, film_scale, film_shift, activations, act_params, *, block=128,
                chunk=None):
    """mclcore::mech_derivs: (V (B, 2dz), L (B,)) contiguous in z's dtype. ``chunk``: samples per pass (default:
    as many as fit a 256 MiB working set)."""
    activations, act_params = list(activations), list(act_params)
    _check(z, weights, biases, in_bias, film_scale, film_shift, activations, act_params)
    with device_guard(z):
        return _mech_derivs(z, weights, biases, in_bias, film_scale, film_shift, activations, act_params, block,
                            chunk)


def _mech_derivs(z, weights, biases, in_bias, film_scale, film_shift, activations, act_params, block, chunk):
    B, dz = z.shape
    dtype = z.dtype
    prop = _Propagation(z, weights, biases, activations, act_params, block)
    wmax = max(w.shape[0] for w in weights)
    dx = weights[-1].shape[0]
    per_sample = 3 * prop.rows_per_sample * wmax * z.element_size() + 6 * dz * dz * dx * 8
    bc = chunk or max(1, min(B, _CHUNK_BYTES // per_sample))
    # The generator sees y in its own dtype; formed in float64 and rounded once, as the C++ kernel.
    y = z.detach().double()
    if film_scale is not None:
        y = y * film_scale.detach().double()
    if film_shift is not None:
        y = y + film_shift.detach().double()
    y = y.to(dtype)
    V = torch.empty((B, 2 * dz), dtype=dtype, device=z.device)
    L = torch.empty((B,), dtype=dtype, device=z.device)
    for b0 in range(0, B, bc):
        b1 = min(B, b0 + bc)
        ib = None if in_bias is None else in_bias.detach()[b0:b1]
        st = prop.run(y[b0:b1].contiguous(), ib)
        m1, m2, lv, ok = _output_algebra(st, b1 - b0, dz, prop.P, prop.full, dtype)
        if film_scale is not None:
            s = film_scale.detach()[b0:b1].double()
            m1, m2 = s * m1, s * s * m2
            lv = lv + torch.log(s.abs()).sum(1)
        v = torch.cat([m1, m2], 1)
        V[b0:b1] = torch.where(ok[:, None], v, float("nan")).to(dtype)
        L[b0:b1] = torch.where(ok, lv, float("-inf")).to(dtype)
    return V, L
