"""Triton kernels of ``mclcore::infonce``, ``mclcore::infonce_backward`` and ``mclcore::infonce_with_grad``.

Same semantics and outputs as the C++ CPU kernels (csrc/infonce/infonce_cpu.cpp, docs/DESIGN.md §2.1)::

    q_i = p_i / max(|p_i|, eps),   k^_j = k_j / max(|k_j|, eps),   S_ij = q_i . k^_j / tau
    lse_all_i = logsumexp_j S_ij
    lse_pos_i = S_ii (groups None)  or  logsumexp_{j : groups[j] == groups[i]} S_ij   (multi-positive mode)
    loss = mean_i max(0, lse_all_i - lse_pos_i)

    dS_ij = g/B (exp(S_ij - lse_all_i) - [j in P(i)] exp(S_ij - lse_pos_i))     (diagonal mode: - [i == j])
    dq_i  = sum_j dS_ij k^_j / tau,     dk^_j = sum_i dS_ij q_i / tau
    dp_i  = (dq_i - q_i (q_i . dq_i)) / |p_i|  if |p_i| > eps  else  dq_i / eps      (same for dk)

Rectangular mode (``offset`` given, as the C++ kernels): B query rows against N >= B keys, row i's positive is key
``c_i = offset + i`` (``S_ii`` / ``[i == j]`` above read ``S_{i c_i}`` / ``[j == c_i]``), groups has one id per key
(N,) and row i's own id is ``groups[c_i]``; 1/B is over the B rows, dk has N rows. Square mode is offset 0, N = B:
every kernel takes N and the offset, and the square calls pass N = B, offset = 0.

Flash-attention layout, no B x B tensor anywhere (memory O(B d)):

1. ``_normalize_kernel`` writes ``qs = q / tau`` and ``k^`` once, (B, d) each, in the *dot dtype*, and the row
   norms in float64 (a finite float32 row can have a norm above FLT_MAX).
2. ``_forward_kernel``: one program per block of BLOCK_M rows walks the keys BLOCK_N columns at a time,
   ``S_tile = qs_I k^_J^T`` (tl.dot), and keeps an online (running maximum, sum) log-sum-exp per row for all
   columns and, in multi-positive mode, for the positive columns. An online maximum rather than the fixed shift
   1/tau that |S| <= 1/tau allows: with a fixed shift every exp argument lies in [-2/tau, 0], which underflows
   float32 for tau < 0.023, and the rescale costs one exp per row and tile, nothing next to the tile product.
   The diagonal S_ii is extracted only on the tiles that hold part of the diagonal (a block-index test), not on
   every tile. Multi-positive mode still takes a second exp per positive-masked element here: the one-exp form
   (each element shifted by the maximum of its own set, the positives' share of the all-columns sum rescaled by one
   exp per row) spilled 12 B per thread on sm_80 in 16-bit at the (128, 64, 8 warps) tiles.
3. The backward, in one of two designs (:func:`backward_design`; both recompute S tile by tile from the row
   statistics, form dS and finish each gradient through the normalisation backward of the raw rows of p resp. k,
   reloaded in float32/float64 so the projection uses the exact unit vector, not its rounded dot-dtype copy):

   * **fused** (the default where the products run on tensor cores: 16-bit operands, float32 under TF32, float64):
     ``_dqdk_kernel``, one program per block of BLOCK_N keys walking the B rows BLOCK_M at a time (FlashAttention-2
     style), computes each S tile once and takes both gradient products from its dS tile: dk^_J += dS^T qs_I in
     registers, and dq_I += dS k^_J added with relaxed ``tl.atomic_add`` into a zero-filled (B, d) buffer in the
     compute dtype (float32; float64 for float64 inputs); ``_dq_finish_kernel`` (O(B d)) scales that buffer and
     takes it through p's normalisation. **Three** B x N x d tile products in the backward, **four** in forward +
     backward (``infonce_with_grad``: 1 + 3).
   * **split**: ``_dq_kernel`` (row blocks, walks the columns) and ``_dk_kernel`` (column blocks, walks the rows),
     each accumulating its gradient in registers: S is computed twice, **four** backward products, **five** in all.
     Deterministic: every output element is summed by one program in a fixed order.

   Why fused is the default where it is (measured without a GPU, benchmarks/compile_report.py at B = 4096, d = 128,
   the production tile table, 2026-12; benchmarks/results/compile.csv): at 16-bit (64, 64, 8 warps) it compiles
   with no spills on sm_90 (214 registers diagonal / 198 groups, 96.5-98 KiB shared memory, wgmma for all three
   products, 1 block per SM) and sm_80 (255 registers, no spills, mma.sync), against the split kernels' 120-167
   registers and 48-65 KiB (2 blocks per SM in diagonal mode, 1 in groups mode); float64 at (16, 16, 4 warps): 157-207
   registers, no spills, 64 KiB, 2-3 blocks per SM; float32 under TF32 at (64, 32, 8 warps): 168-255 registers, no
   spills. It saves one of five products (20% of the forward + backward FLOPs) and one exp per element of the
   backward. Split stays the default for float32 products on the FMA units ("ieee", PyTorch's default) and for
   "tf32x3": there the fused kernel holds the operands of three products in registers and spilled on sm_90 at every
   tile tried (multi-positive mode: 428-796 B per thread at (64, 32), (32, 32), (32, 64), (64, 16) with 8 warps,
   5176 B at (64, 32, 4 warps)); under tf32x3 316-712 B at (64, 32, 8 warps).
   What an H100 run must still confirm (bench_infonce.py --device cuda): that the atomics cost less than the product
   they save. The fused backward issues ceil(N / BLOCK_N) float32 atomic adds per element of dq (64 at
   N = 4096, BLOCK_N = 64: 33.5 M for B = 4096, d = 128, about one per 6 BLOCK_N = 384 tile FLOPs), all into L2;
   it runs ceil(N / BLOCK_N) programs (64 at N = 4096: under half of an H100's 132 SMs, as each split kernel) at 1
   block per SM where the split ones fit 2 in diagonal mode. If it loses, ``MCLCORE_TRITON_INFONCE_BWD=split`` (or a
   change of ``backward_design``'s auto rule) is the switch; a row split over a second grid axis (dk by atomics too)
   is the next step if occupancy is what limits.
   Determinism: float32 atomic adds complete in whatever order the programs reach them, so the fused dq (and dp) can
   differ between runs in the last bits (dk does not: one program sums each dk row in a fixed order).
   ``torch.use_deterministic_algorithms(True)`` (``torch.are_deterministic_algorithms_enabled()``, read at every
   call) selects the split design, as does ``MCLCORE_TRITON_INFONCE_BWD=split``; ``=fused`` forces the fused one
   (except under deterministic algorithms), ``auto`` (default) is the rule above.

   In diagonal mode dS carries no -[i == j] on any tile, in either design: its contribution, -k^_{offset+I} to dq
   and -qs_{J-offset} to dk, is applied once per row after the tile loop (the fused kernel adds dq's with one more
   atomic add per row). In multi-positive mode _dq_kernel and _dqdk_kernel take one exp per element: a positive's
   exp(S - lse_all) is exp(S - lse_pos) exp(lse_pos - lse_all) (one exp per row and row block), so
   dS = exp(S - lse_pos) (exp(lse_pos - lse_all) - 1) there; _dk_kernel (split) keeps the two-exp form (the extra
   row vector spilled 32-40 B per thread in float32 on sm_90 at (64, 32, 8 warps)). Counts per element of S in
   multi-positive mode: forward 2 exps (see above), fused backward 1 (+ BLOCK_M per tile for the row factors),
   split backward 1 (dq) + 2 (dk); diagonal mode: 1 per element in every kernel.

``infonce_with_grad`` is steps 1-3 with g = 1 (on a GPU the fused CPU trick of holding whole rows of S does not
pay: S would not stay in registers; the forward pass is one product out of four (fused) or five (split)).

dtypes (the default is fast: every product on tensor cores where the input precision allows it).

* float16 / bfloat16 inputs: the normalised rows are rounded to the input dtype and multiplied as 16-bit tl.dot
  operands with float32 accumulation (flash attention's convention); the log-sum-exps, dS (rounded only as the
  operand of the second product), the norms and the normalisation backward stay float32. Error rule: at most twice
  the error of python/infonce.py computed in the same 16-bit dtype, both against float64 (tests/ops/test_triton.py
  checks it in float16 under the Triton interpreter, where bfloat16 tl.dot is wrong; tests/ops/test_gpu.py in both
  on a GPU). Measured in float16 under the interpreter: loss and gradient errors 1.5-9x smaller than those of the
  float16 reference, which rounds S itself. Results differ from the C++ op's (which computes half inputs in
  float32) by the rounding of the rows (~2^-9 relative in bfloat16).
  ``MCLCORE_TRITON_HALF_DOT=float32`` (read at every call; the default is ``input``) opts out to the old exact path:
  float32 rows and float32 products, as the C++ op.
* float32 inputs: products as PyTorch's own float32 matmuls, ``torch.backends.cuda.matmul.fp32_precision`` /
  ``allow_tf32``: TF32 tensor cores when allowed, exact IEEE float32 otherwise (PyTorch's default, so results match
  the float32 reference). ``MCLCORE_TRITON_FP32_DOT`` overrides: ``ieee``, ``tf32``, or ``tf32x3`` (three TF32
  products, nearly float32 accuracy); ``auto`` is the default (see :mod:`mclcore.ops.triton._launch`).
* float64: float64 throughout (input precision "ieee").

Loss, lse_all and lse_pos come back in float32 (float64 for float64 inputs), dp and dk in the input dtype, like the
C++ op.

No host synchronisation and no host-to-device copy per call (CUDA-graph capturable): 1/tau, eps and 1/B are float64
kernel arguments, the upstream gradient is read on the device, the fused backward's dq buffer is zero-filled on the
device. Non-finite inputs are not looked for by default (that
needs a synchronisation): a NaN / inf row of p or k makes the loss NaN, and the gradients that depend on that row
(the normalisation turns the whole row into NaN). ``MCLCORE_TRITON_CHECK_FINITE=1`` restores the check of the C++ op,
``RuntimeError("mclcore.infonce: p contains NaN or infinite values (row r)")`` (the public wrapper turns it into a
ValueError), at one host synchronisation per call.

Inputs of any strides: p and k are read through their strides, groups is made contiguous (a no-op when it is).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mclcore.ops import _members
from mclcore.ops.triton._launch import (capturing, check_finite_enabled, device_guard, f64,
                                        fp32_dot_precision)

# Largest feature dimension: a program keeps a (BLOCK_M, next_pow2(d)) accumulator in registers.
MAX_D = 512
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF_DOT_ENV = "MCLCORE_TRITON_HALF_DOT"
HALF_DOT_CHOICES = ("input", "float32")
BWD_ENV = "MCLCORE_TRITON_INFONCE_BWD"
BWD_CHOICES = ("auto", "fused", "split")


def backward_design(operand_dtype: torch.dtype, precision: str) -> str:
    """The backward of tl.dot operands of ``operand_dtype`` at ``precision`` (module docstring, step 3): "fused"
    (_dqdk_kernel + _dq_finish_kernel: three tile products, dq by atomic adds) or "split" (_dq_kernel and _dk_kernel:
    four tile products, bitwise reproducible).

    ``MCLCORE_TRITON_INFONCE_BWD`` (read at every call): "auto" (default) is "fused" where the products run on tensor
    cores and the fused kernel compiles without spills at the tile table (16-bit operands, float32 under "tf32",
    float64), "split" for float32 products on the FMA units ("ieee": the fused kernel spilled on sm_90 at every tile
    tried) and under "tf32x3" (316-712 B per thread); "fused" / "split" force one. Whatever the variable says,
    ``torch.are_deterministic_algorithms_enabled()`` selects "split"."""
    mode = os.environ.get(BWD_ENV, "auto").strip().lower() or "auto"
    if mode not in BWD_CHOICES:
        raise ValueError(f"{BWD_ENV}={mode!r}: expected 'auto' (default: fused where the products run on tensor "
                         f"cores, split under torch.use_deterministic_algorithms), 'fused' or 'split'")
    if torch.are_deterministic_algorithms_enabled() or mode == "split":
        return "split"
    if mode == "fused":
        return "fused"
    return "split" if operand_dtype == torch.float32 and precision in ("ieee", "tf32x3") else "fused"


def dot_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the normalised rows fed to tl.dot for inputs of ``dtype`` (see the module docstring)."""
    if dtype in (torch.float16, torch.bfloat16):
        mode = os.environ.get(HALF_DOT_ENV, "input").strip().lower() or "input"
        if mode not in HALF_DOT_CHOICES:
            raise ValueError(f"{HALF_DOT_ENV}={mode!r}: expected 'input' (default: 16-bit tensor-core products with "
                             f"float32 accumulation) or 'float32' (float32 products, like the C++ op)")
        return dtype if mode == "input" else torch.float32
    return dtype


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of the kernels' tl.dot for inputs of ``dtype``: float32 inputs follow PyTorch's TF32
    setting or ``MCLCORE_TRITON_FP32_DOT`` (:func:`mclcore.ops.triton._launch.fp32_dot_precision`); everything
    else is "ieee" (16-bit operands ignore it; the float32 products of 16-bit inputs under
    MCLCORE_TRITON_HALF_DOT=float32 are the exact opt-out; float64 is float64)."""
    return fp32_dot_precision() if dtype == torch.float32 else "ieee"


# ----------------------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _normalize_kernel(x_ptr, out_ptr, norm_ptr, B, d, stride_b, stride_d, scale: tl.float64, eps: tl.float64,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """out_i = x_i * scale / max(|x_i|, eps) (out contiguous, in out's dtype); norm_i = |x_i| in float64.

    scale: 1/tau for the queries, 1 for the keys. The norm is taken as amax * |x / amax| so that finite rows whose
    squares overflow stay finite; a row holding NaN or inf gets a NaN norm (x / amax is NaN there), and the whole
    row of ``out`` becomes NaN, so the loss is NaN (the launcher raises instead only when
    MCLCORE_TRITON_CHECK_FINITE=1). Explicitly: the GPU's max ignores a NaN operand.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < B) & (cols[None, :] < d)
    x = tl.load(x_ptr + rows[:, None] * stride_b + cols[None, :] * stride_d, mask=mask, other=0.0).to(tl.float64)
    amax = tl.max(tl.abs(x), axis=1)
    safe = tl.where(amax > 0, amax, 1.0)
    xs = x / safe[:, None]
    nrm = amax * tl.sqrt(tl.sum(xs * xs, axis=1))
    tl.store(norm_ptr + rows, nrm, mask=rows < B)
    f = f64(scale) / tl.maximum(nrm, f64(eps))
    f = tl.where(nrm == nrm, f, nrm)  # NaN norm (non-finite row): NaN row
    tl.store(out_ptr + rows[:, None] * d + cols[None, :], (x * f[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _forward_kernel(q_ptr, k_ptr, g_ptr, la_ptr, lp_ptr, B, N, offset, d, HAS_GROUPS: tl.constexpr,
                    IS_F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    PRECISION: tl.constexpr, D_CHUNK: tl.constexpr):
    """Row statistics lse_all, lse_pos of one block of BLOCK_M of the B rows (online log-sum-exp over column tiles
    of the N keys; row i's positive is key offset + i).

    The tile product runs over the features D_CHUNK at a time (q re-read from cache per chunk): float32 products
    on FMA units hold both operands in registers, and the whole (BLOCK_M, 128) query block spilled ~370 bytes per
    thread at 64 x 32 tiles on sm_90, where 32-feature chunks compile without spills even at 64 x 64.
    """
    acc_t = tl.float64 if IS_F64 else tl.float32
    r0 = tl.program_id(0) * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    rmask = rows < B
    m = tl.full([BLOCK_M], float("-inf"), acc_t)
    s = tl.zeros([BLOCK_M], acc_t)
    mp = tl.full([BLOCK_M], float("-inf"), acc_t)
    sp = tl.zeros([BLOCK_M], acc_t)
    diag = tl.zeros([BLOCK_M], acc_t)
    if HAS_GROUPS:
        gi = tl.load(g_ptr + offset + rows, mask=rmask, other=0)  # each row's own id: that of its positive key
    for j0 in range(0, N, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        S = tl.zeros([BLOCK_M, BLOCK_N], acc_t)
        for c0 in tl.static_range(0, BLOCK_D, D_CHUNK):
            dc = c0 + tl.arange(0, D_CHUNK)
            qc = tl.load(q_ptr + rows[:, None] * d + dc[None, :], mask=rmask[:, None] & (dc[None, :] < d),
                         other=0.0)                                                 # (BLOCK_M, D_CHUNK)
            kc = tl.load(k_ptr + cols[:, None] * d + dc[None, :], mask=cmask[:, None] & (dc[None, :] < d),
                         other=0.0)                                                 # (BLOCK_N, D_CHUNK)
            S += tl.dot(qc, tl.trans(kc), input_precision=PRECISION, out_dtype=acc_t)
        S = tl.where(cmask[None, :], S, float("-inf"))
        m_new = tl.maximum(m, tl.max(S, axis=1))                                    # finite: column j0 is valid
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(S - m_new[:, None]), axis=1)
        if HAS_GROUPS:
            # Two exps per element here (positives again, shifted by their own maximum): the one-exp form (each
            # element shifted by the maximum of its own set, the positives' share of s rescaled per row) spilled
            # 12 B per thread on sm_80 in 16-bit at (128, 64, 8 warps); the exps are not the bottleneck next to
            # the tile product on tensor cores.
            gj = tl.load(g_ptr + cols, mask=cmask, other=0)
            Sp = tl.where((gi[:, None] == gj[None, :]) & cmask[None, :], S, float("-inf"))
            mp_new = tl.maximum(mp, tl.max(Sp, axis=1))
            # A tile without positives leaves mp at -inf: shift by 0 there so that no exp sees -inf - -inf.
            mp_safe = tl.where(mp_new == float("-inf"), 0.0, mp_new)
            sp = sp * tl.exp(mp - mp_safe) + tl.sum(tl.exp(Sp - mp_safe[:, None]), axis=1)
            mp = mp_new
        else:
            # S_{i, offset+i} from the same product the log-sum-exp sees (so lse_all_i >= S_{i, offset+i} holds
            # after rounding), only on the tiles that hold part of the (shifted) diagonal.
            if (j0 < r0 + offset + BLOCK_M) & (r0 + offset < j0 + BLOCK_N):
                diag += tl.sum(tl.where(rows[:, None] + offset == cols[None, :], S, 0.0), axis=1)
        m = m_new
    tl.store(la_ptr + rows, m + tl.log(s), mask=rmask)
    if HAS_GROUPS:
        tl.store(lp_ptr + rows, mp + tl.log(sp), mask=rmask)
    else:
        tl.store(lp_ptr + rows, diag, mask=rmask)


@triton.jit
def _ds_tile(S, la, lp, rm1, gi, gj, valid, HAS_GROUPS: tl.constexpr, ONE_EXP: tl.constexpr):
    """dS / coef on a tile without the diagonal mode's -[i == j] (applied once per row by the callers, outside the
    tile loop): exp(S - la) - [positive] exp(S - lp); 0 off ``valid``.

    Groups mode, ``ONE_EXP``: one exp per element; a positive is shifted by lp (exp(S - lp) <= 1) and its exp(S - la) is
    exp(S - lp) exp(lp - la), so dS = exp(S - lp) (exp(lp - la) - 1) with ``rm1`` = exp(lp - la) - 1 per row;
    the others are shifted by la. ``ONE_EXP`` False: the two-exp form (_dk_kernel, where the third row vector
    ``rm1`` spilled 32-40 B per thread in float32 on sm_90 at (64, 32, 8 warps))."""
    if HAS_GROUPS:
        pos = gi == gj
        if ONE_EXP:
            P = tl.exp(S - tl.where(pos, lp, la)) * tl.where(pos, rm1, 1.0)
        else:
            P = tl.exp(S - la) - tl.where(pos, tl.exp(S - lp), 0.0)
    else:
        P = tl.exp(S - la)
    return tl.where(valid, P, 0.0)


@triton.jit
def _normalize_backward(G, x_ptr, rows, dcols, rmask, d, stride_b, stride_d, norm_ptr, eps, acc_t: tl.constexpr):
    """Gradient w.r.t. raw rows x_i of u_i = x_i / max(|x_i|, eps), given G_i = d/du_i (BLOCK, BLOCK_D)."""
    mask = rmask[:, None] & (dcols[None, :] < d)
    x = tl.load(x_ptr + rows[:, None] * stride_b + dcols[None, :] * stride_d, mask=mask, other=0.0).to(acc_t)
    nrm = tl.load(norm_ptr + rows, mask=rmask, other=1.0).to(acc_t)
    u = x / tl.maximum(nrm, eps)[:, None]
    proj = tl.sum(u * G, axis=1)
    big = nrm > eps
    return tl.where(big[:, None], (G - u * proj[:, None]) / tl.where(big, nrm, 1.0)[:, None], G / eps)


@triton.jit
def _dq_kernel(q_ptr, k_ptr, g_ptr, la_ptr, lp_ptr, grad_ptr, inv_tau: tl.float64, eps: tl.float64,
               inv_b: tl.float64, p_ptr, p_stride_b, p_stride_d, pnorm_ptr, dp_ptr, B, N, offset, d,
               HAS_GROUPS: tl.constexpr, IS_F64: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """dp of one block of the B rows: dq_I = coef sum_J dS_IJ k^_J / tau over the N keys, then through the
    normalisation of p."""
    acc_t = tl.float64 if IS_F64 else tl.float32
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dcols = tl.arange(0, BLOCK_D)
    rmask = rows < B
    q = tl.load(q_ptr + rows[:, None] * d + dcols[None, :], mask=rmask[:, None] & (dcols[None, :] < d), other=0.0)
    la = tl.load(la_ptr + rows, mask=rmask, other=0.0).to(acc_t)
    lp = tl.load(lp_ptr + rows, mask=rmask, other=0.0).to(acc_t)
    gi = tl.load(g_ptr + offset + rows, mask=rmask, other=0) if HAS_GROUPS else rows
    rm1 = tl.exp(lp - la) - 1.0 if HAS_GROUPS else la  # (unused in diagonal mode)
    acc = tl.zeros([BLOCK_M, BLOCK_D], acc_t)
    for j0 in range(0, N, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        kb = tl.load(k_ptr + cols[:, None] * d + dcols[None, :], mask=cmask[:, None] & (dcols[None, :] < d),
                     other=0.0)                                                     # (BLOCK_N, BLOCK_D)
        S = tl.dot(q, tl.trans(kb), input_precision=PRECISION, out_dtype=acc_t)
        gj = tl.load(g_ptr + cols, mask=cmask, other=0) if HAS_GROUPS else cols
        P = _ds_tile(S, la[:, None], lp[:, None], rm1[:, None], gi[:, None], gj[None, :], cmask[None, :],
                     HAS_GROUPS, True)
        acc += tl.dot(P.to(kb.dtype), kb, input_precision=PRECISION, out_dtype=acc_t)
    if not HAS_GROUPS:
        # Diagonal mode: dS_{i, offset+i} carries -1, so dq_I gets -k^_{offset+I}: one row load per row instead of a
        # test per element.
        acc -= tl.load(k_ptr + (rows + offset)[:, None] * d + dcols[None, :],
                       mask=rmask[:, None] & (dcols[None, :] < d), other=0.0).to(acc_t)
    # coef = g / (B tau), formed in float64 (the scalar arguments are float64).
    coef = (tl.load(grad_ptr).to(tl.float64) * f64(inv_b) * f64(inv_tau)).to(acc_t)
    dq = acc * coef
    dp = _normalize_backward(dq, p_ptr, rows, dcols, rmask, d, p_stride_b, p_stride_d, pnorm_ptr,
                             f64(eps).to(acc_t), acc_t)
    tl.store(dp_ptr + rows[:, None] * d + dcols[None, :], dp.to(dp_ptr.dtype.element_ty),
             mask=rmask[:, None] & (dcols[None, :] < d))


@triton.jit
def _dk_kernel(q_ptr, k_ptr, g_ptr, la_ptr, lp_ptr, grad_ptr, eps: tl.float64, inv_b: tl.float64, kraw_ptr,
               k_stride_b, k_stride_d, knorm_ptr, dk_ptr, B, N, offset, d, HAS_GROUPS: tl.constexpr,
               IS_F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               PRECISION: tl.constexpr):
    """dk of one block of BLOCK_N of the N key rows: dk^_J = coef sum_I dS_IJ^T qs_I over the B query rows, then
    through the normalisation of k.

    Tiles are computed transposed, S^T = k^_J qs_I^T (BLOCK_N, BLOCK_M), so the accumulator is row-major in J.
    """
    acc_t = tl.float64 if IS_F64 else tl.float32
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dcols = tl.arange(0, BLOCK_D)
    cmask = cols < N
    kn = tl.load(k_ptr + cols[:, None] * d + dcols[None, :], mask=cmask[:, None] & (dcols[None, :] < d), other=0.0)
    gj = tl.load(g_ptr + cols, mask=cmask, other=0) if HAS_GROUPS else cols
    acc = tl.zeros([BLOCK_N, BLOCK_D], acc_t)
    for i0 in range(0, B, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        rmask = rows < B
        qb = tl.load(q_ptr + rows[:, None] * d + dcols[None, :], mask=rmask[:, None] & (dcols[None, :] < d),
                     other=0.0)                                                     # (BLOCK_M, BLOCK_D)
        St = tl.dot(kn, tl.trans(qb), input_precision=PRECISION, out_dtype=acc_t)     # (BLOCK_N, BLOCK_M) = S_IJ^T
        la = tl.load(la_ptr + rows, mask=rmask, other=0.0).to(acc_t)
        lp = tl.load(lp_ptr + rows, mask=rmask, other=0.0).to(acc_t)
        gi = tl.load(g_ptr + offset + rows, mask=rmask, other=0) if HAS_GROUPS else rows
        Pt = _ds_tile(St, la[None, :], lp[None, :], la[None, :], gi[None, :], gj[:, None], rmask[None, :],
                      HAS_GROUPS, False)
        acc += tl.dot(Pt.to(qb.dtype), qb, input_precision=PRECISION, out_dtype=acc_t)
    if not HAS_GROUPS:
        # Diagonal mode: dS_{j - offset, j} carries -1, so dk^_J gets -qs_{J - offset} where that row exists (one row
        # load per row, no test per element).
        own = cols - offset
        acc -= tl.load(q_ptr + own[:, None] * d + dcols[None, :],
                       mask=(cmask & (own >= 0) & (own < B))[:, None] & (dcols[None, :] < d), other=0.0).to(acc_t)
    coef = (tl.load(grad_ptr).to(tl.float64) * f64(inv_b)).to(acc_t)
    dkn = acc * coef  # qs already carries the 1/tau
    dk = _normalize_backward(dkn, kraw_ptr, cols, dcols, cmask, d, k_stride_b, k_stride_d, knorm_ptr,
                             f64(eps).to(acc_t), acc_t)
    tl.store(dk_ptr + cols[:, None] * d + dcols[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=cmask[:, None] & (dcols[None, :] < d))


@triton.jit
def _dqdk_kernel(q_ptr, k_ptr, g_ptr, la_ptr, lp_ptr, grad_ptr, eps: tl.float64, inv_b: tl.float64, kraw_ptr,
                 k_stride_b, k_stride_d, knorm_ptr, dk_ptr, dq_ptr, B, N, offset, d, HAS_GROUPS: tl.constexpr,
                 IS_F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 PRECISION: tl.constexpr):
    """The fused backward (FlashAttention-2 style): one program per block of BLOCK_N of the N keys walks the B query
    rows BLOCK_M at a time and computes each tile of S once, S^T = k^_J qs_I^T (BLOCK_N, BLOCK_M); from its dS
    tile it accumulates dk^_J += dS^T qs_I in registers (finished and stored like _dk_kernel's) and adds the raw
    dq_I contribution dS_IJ k^_J to the float32 (float64 for float64 inputs) buffer ``dq_ptr`` (B, d) with relaxed
    atomic adds; _dq_finish_kernel turns that buffer into dp. Three tile products per tile instead of the split
    path's four (S twice).

    Multi-positive mode takes one exp per element: exp(S - lse_pos) (exp(lse_pos - lse_all) - 1) on a positive,
    exp(S - lse_all) elsewhere, with the row factor exp(lse_pos - lse_all) - 1 formed once per row block (BLOCK_M
    exps per tile). Diagonal mode: no -[i == j] on any tile; after the loop dk^_J takes -qs_{J - offset} and the dq
    buffer -k^_J at rows J - offset (one atomic add per row)."""
    acc_t = tl.float64 if IS_F64 else tl.float32
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dcols = tl.arange(0, BLOCK_D)
    cmask = cols < N
    dmask = dcols[None, :] < d
    kn = tl.load(k_ptr + cols[:, None] * d + dcols[None, :], mask=cmask[:, None] & dmask, other=0.0)
    gj = tl.load(g_ptr + cols, mask=cmask, other=0) if HAS_GROUPS else cols
    acc = tl.zeros([BLOCK_N, BLOCK_D], acc_t)
    for i0 in range(0, B, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        rmask = rows < B
        qb = tl.load(q_ptr + rows[:, None] * d + dcols[None, :], mask=rmask[:, None] & dmask, other=0.0)
        St = tl.dot(kn, tl.trans(qb), input_precision=PRECISION, out_dtype=acc_t)     # (BLOCK_N, BLOCK_M) = S_IJ^T
        la = tl.load(la_ptr + rows, mask=rmask, other=0.0).to(acc_t)
        lp = tl.load(lp_ptr + rows, mask=rmask, other=0.0).to(acc_t)
        gi = tl.load(g_ptr + offset + rows, mask=rmask, other=0) if HAS_GROUPS else rows
        rm1 = tl.exp(lp - la) - 1.0 if HAS_GROUPS else la  # (unused in diagonal mode)
        # Key rows past N hold k^ = 0: their dS entries multiply zero rows in both products, no mask needed.
        Pt = _ds_tile(St, la[None, :], lp[None, :], rm1[None, :], gi[None, :], gj[:, None], rmask[None, :],
                      HAS_GROUPS, True).to(qb.dtype)
        acc += tl.dot(Pt, qb, input_precision=PRECISION, out_dtype=acc_t)
        dq = tl.dot(tl.trans(Pt), kn, input_precision=PRECISION, out_dtype=acc_t)   # (BLOCK_M, BLOCK_D)
        tl.atomic_add(dq_ptr + rows[:, None] * d + dcols[None, :], dq, mask=rmask[:, None] & dmask, sem="relaxed")
    if not HAS_GROUPS:
        # Diagonal mode's -[j == offset + i], once per key row: dk^_J gets -qs_{J - offset}, and dq_{J - offset} gets
        # -k^_J (one more atomic add per row; each query row's positive lies in exactly one key block).
        own = cols - offset
        omask = (cmask & (own >= 0) & (own < B))[:, None] & dmask
        acc -= tl.load(q_ptr + own[:, None] * d + dcols[None, :], mask=omask, other=0.0).to(acc_t)
        tl.atomic_add(dq_ptr + own[:, None] * d + dcols[None, :], -kn.to(acc_t), mask=omask, sem="relaxed")
    coef = (tl.load(grad_ptr).to(tl.float64) * f64(inv_b)).to(acc_t)
    dk = _normalize_backward(acc * coef, kraw_ptr, cols, dcols, cmask, d, k_stride_b, k_stride_d, knorm_ptr,
                             f64(eps).to(acc_t), acc_t)
    tl.store(dk_ptr + cols[:, None] * d + dcols[None, :], dk.to(dk_ptr.dtype.element_ty), mask=cmask[:, None] & dmask)


@triton.jit
def _dq_finish_kernel(dq_ptr, grad_ptr, inv_tau: tl.float64, eps: tl.float64, inv_b: tl.float64, p_ptr, p_stride_b,
                      p_stride_d, pnorm_ptr, dp_ptr, B, d, IS_F64: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """dp of BLOCK_R rows from the fused backward's dq buffer (sum_j dS_ij k^_j without the coefficient, the
    diagonal mode's -k^_{offset+i} included): the coefficient g / (B tau), then the normalisation backward of p.
    O(B d)."""
    acc_t = tl.float64 if IS_F64 else tl.float32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    dcols = tl.arange(0, BLOCK_D)
    rmask = rows < B
    mask = rmask[:, None] & (dcols[None, :] < d)
    acc = tl.load(dq_ptr + rows[:, None] * d + dcols[None, :], mask=mask, other=0.0).to(acc_t)
    coef = (tl.load(grad_ptr).to(tl.float64) * f64(inv_b) * f64(inv_tau)).to(acc_t)
    dp = _normalize_backward(acc * coef, p_ptr, rows, dcols, rmask, d, p_stride_b, p_stride_d, pnorm_ptr,
                             f64(eps).to(acc_t), acc_t)
    tl.store(dp_ptr + rows[:, None] * d + dcols[None, :], dp.to(dp_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Launchers (signatures of the registered ops, plus tile sizes for tests and tuning)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_inputs(p, k, groups, tau, eps, offset):
    """The rules and messages of the C++ kernels' check_inputs (csrc/infonce/infonce_checks.h), RuntimeError like
    TORCH_CHECK; returns the offset (0 in square mode, ``offset`` None)."""
    if p.dim() != 2:
        raise RuntimeError(f"mclcore.infonce: p must be 2-D (B, d), got shape {tuple(p.shape)}")
    if k.dim() != 2:
        raise RuntimeError(f"mclcore.infonce: k must be 2-D (B, d), or (N, d) with an offset, got shape "
                           f"{tuple(k.shape)}")
    B, d = p.shape
    N = k.shape[0]
    if offset is None:
        if p.shape != k.shape:
            raise RuntimeError(f"mclcore.infonce: p and k must have the same shape, got {tuple(p.shape)} and "
                               f"{tuple(k.shape)} (keys with more rows than p need an offset: rectangular mode)")
        if B < 2:
            raise RuntimeError(f"mclcore.infonce: needs a batch of at least 2 rows (B >= 2), got B = {B}")
    else:
        if k.shape[1] != d:
            raise RuntimeError(f"mclcore.infonce: p (B, d) and k (N, d) must have the same number of features d, "
                               f"got {tuple(p.shape)} and {tuple(k.shape)}")
        if B < 1:
            raise RuntimeError(f"mclcore.infonce: needs at least 1 query row (B >= 1), got B = {B}")
        if N < 2:
            raise RuntimeError(f"mclcore.infonce: needs at least 2 keys (N >= 2), got N = {N}")
        if N < B:
            raise RuntimeError(f"mclcore.infonce: k must have at least as many rows as p (N >= B), got B = {B}, "
                               f"N = {N}")
        if not 0 <= offset <= N - B:
            raise RuntimeError(f"mclcore.infonce: offset must satisfy 0 <= offset <= N - B = {N - B} (the positive "
                               f"of row i is key offset + i), got offset = {offset} with B = {B}, N = {N}")
    if d < 1:
        raise RuntimeError(f"mclcore.infonce: needs d >= 1 features, got d = {d}")
    if d > MAX_D:
        raise RuntimeError(f"mclcore.infonce: p: the Triton backend supports d <= {MAX_D} features, got d = {d} "
                           f"(use MCLCORE_BACKEND=cuda)")
    if p.dtype not in _FLOAT_DTYPES:
        raise RuntimeError(f"mclcore.infonce: p must be float16, bfloat16, float32 or float64, got {p.dtype}")
    if k.dtype != p.dtype:
        raise RuntimeError(f"mclcore.infonce: p and k must have the same dtype, got {p.dtype} and {k.dtype}")
    if k.device != p.device:
        raise RuntimeError(f"mclcore.infonce: p and k must be on the same device, got {p.device} and {k.device}")
    if not (tau > 0 and tau < float("inf")):
        raise RuntimeError(f"mclcore.infonce: tau must be a positive finite number, got {tau}")
    if not (eps > 0 and eps < float("inf")):
        raise RuntimeError(f"mclcore.infonce: eps must be a positive finite number, got {eps}")
    if groups is not None:
        if offset is not None and (groups.dim() != 1 or groups.shape[0] != N):
            raise RuntimeError(f"mclcore.infonce: groups must have shape (N,) = ({N},) in rectangular mode (one id "
                               f"per key row), got {tuple(groups.shape)}")
        if offset is None and (groups.dim() != 1 or groups.shape[0] != B):
            raise RuntimeError(f"mclcore.infonce: groups must have shape (B,) = ({B},), got {tuple(groups.shape)}")
        if groups.dtype != torch.int64:
            raise RuntimeError(f"mclcore.infonce: groups must be int64, got {groups.dtype}")
        if groups.device != p.device:
            raise RuntimeError(f"mclcore.infonce: groups must be on {p.device}, got {groups.device}")
    return 0 if offset is None else int(offset)


# (BLOCK_M, BLOCK_N, num_warps) per operand dtype and kernel ("fwd": _forward_kernel; "bwd": _dq_kernel and
# _dk_kernel, which also hold a (BLOCK, BLOCK_D) accumulator) at BLOCK_D <= 128. Chosen from the register use of
# the kernels compiled for sm_90 without a GPU (triton.compile + cuobjdump --dump-resource-usage): the largest tiles
# that do not spill, e.g. 16-bit "bwd" at (128, 64, 8 warps) spills 72-128 bytes per thread, (64, 64, 8) none.
# float32 products run on FMA units (IEEE), which keeps both operands in registers: "fwd" spilled ~370 bytes per
# thread even at (64, 32, 8) until its product went over 32 features at a time (_FWD_D_CHUNK; then 198 registers
# at (64, 64, 8), no spill); "bwd" at (64, 32, 8): dq none, dk 32 bytes. With TF32 allowed (or tf32x3) float32
# products run on tensor cores instead; the tiles stay those of the IEEE path. Timings on a GPU have not been taken
# yet (bench_infonce.py --device cuda is the place to tune these).
# "fused": _dqdk_kernel (BLOCK_N keys per program, BLOCK_M rows per step), chosen the same way: 16-bit (64, 64, 8)
# compiles without spills on sm_90 (wgmma for its three products) and sm_80, (64, 128, 8) spills on sm_80, 4 warps
# spill; float32 (64, 32, 8) is for TF32 products (no spills), the IEEE path runs the split design (see
# backward_design); float64 (16, 16, 4) no spills.
# sm_80 too (one table for both targets; benchmarks/compile_report.py at B = 4096, d = 128, sm_80 with ptxas 12.9
# and sm_90 with ptxas 13.4 from Triton's wheel, 2026-12-06, 2-core AMD EPYC VM; registers, spill B stores + loads
# per thread, diagonal / multi-positive mode). Both sm_80 spills were ptxas capping the diagonal-mode kernel at 128
# registers (2 blocks of 8 warps per SM) and spilling the rest; neither spilled on sm_90.
# * float32 "bwd" was (64, 32, 8): sm_80 dq 128 registers + 12+12 B (diagonal) / 254 (multi-positive). num_stages
#   1, 2, 4 instead of Triton's 3: dq still 16+16, 16+16, 12+12 B; maxnreg=255: sm_80 dq 146 / 254, no spill, but
#   sm_90 then 255 + 20+20 B / 255 + 40+44 B; (64, 64, 8) and (128, 32, 8) spill 0.3-1.2 KB on sm_90 and 13-16 KB
#   of stores on sm_80 (where ptxas then reports 32 registers), (64, 32, 4 warps) 16 KB on sm_80; (64, 16, 8) and
#   (32, 32, 8) compile clean on both but halve the tile. Now (32, 64, 8), the mirror of (64, 32): no spills on
#   either target (sm_90: dq 74 / 80, dk 116 / 114, 2 blocks per SM, where dq in multi-positive mode had 148 and 1;
#   sm_80: dq 112 / 128, dk 223 / 182, 1 block per SM, as the old dk and the old multi-positive dq; the old
#   diagonal dq fitted 2 with its spill; shared memory dq 88-89 KiB, dk 72-73, were 72-72.5 and 88.5-90). Same tile
#   area, and the same total operand traffic: dq re-reads k B / BLOCK_M times, dk re-reads q N / BLOCK_N times,
#   B N d (1 / BLOCK_M + 1 / BLOCK_N) in all either way round; the two grids swap sizes (dq 128 programs and dk 64
#   at B = N = 4096, were 64 and 128). Not timed.
# * 16-bit "bwd" (64, 64, 8): the split _dk_kernel spilled 8+8 B on sm_80 (128 registers, num_stages 3; 4 stages
#   8+8 B too); _DK_STAGES below launches it with 2 stages: sm_80 128 / 170 registers, no spill (1 stage: 128 / 149),
#   40-41 KiB shared memory (was 56.5-58); sm_90 124 / 132 registers (was 121 / 137), 48-49 KiB (was 64.5-66), same
#   blocks per SM (2 / 1). The costs: one tile of q in flight ahead of the products instead of two, on both targets,
#   and on sm_80 multi-positive mode 1 block per SM instead of 2 (170 registers, was 128), which only matters past
#   108 x 64 = 6912 keys (fewer programs than an A100's 108 SMs below). Not timed; the split design runs for 16-bit
#   inputs only under MCLCORE_TRITON_INFONCE_BWD=split or deterministic algorithms. maxnreg=255 also removed the
#   spill (sm_80 182 / 196 registers), at 1 block per SM in both modes.
_TILES = {
    "16bit": {"fwd": (128, 64, 8), "bwd": (64, 64, 8), "fused": (64, 64, 8)},
    "float32": {"fwd": (64, 64, 8), "bwd": (32, 64, 8), "fused": (64, 32, 8)},
    "float64": {"fwd": (32, 32, 4), "bwd": (16, 16, 4), "fused": (16, 16, 4)},
}
# num_stages of the split backward's _dk_kernel per operand family (absent: none passed, Triton's default 3): see
# the 16-bit "bwd" note above.
_DK_STAGES = {"16bit": 2}
# Rows per program of _dq_finish_kernel (the fused backward's O(B d) epilogue).
_FINISH_ROWS = 16
# Features per tile product in _forward_kernel (None: all of BLOCK_D at once).
_FWD_D_CHUNK = {"16bit": None, "float32": 32, "float64": None}


def _family(operand_dtype: torch.dtype) -> str:
    """The key of the tile tables for tl.dot operands of ``operand_dtype``: "16bit", "float32" or "float64"."""
    return "16bit" if operand_dtype in (torch.float16, torch.bfloat16) else str(operand_dtype).split(".")[-1]


def _tiles(d: int, operand_dtype: torch.dtype, kind: str, block_m=None, block_n=None):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps) of kernel ``kind``; wider rows (BLOCK_D > 128) shrink the row tiles in
    proportion (never below 16, the smallest tl.dot on a GPU). block_m / block_n override (tests, tuning)."""
    block_d = max(16, triton.next_power_of_2(d))
    bm, bn, warps = _TILES[_family(operand_dtype)][kind]
    shrink = max(1, block_d // 128)
    if shrink > 1:
        bm, bn, warps = max(16, bm // shrink), max(16, bn // shrink), 4
    return block_m or bm, block_n or bn, block_d, warps


def _fwd_d_chunk(operand_dtype: torch.dtype, block_d: int) -> int:
    chunk = _FWD_D_CHUNK[_family(operand_dtype)]
    return block_d if chunk is None else min(chunk, block_d)


class _Prepared:
    """qs = q / tau (B, d) and k^ (N, d) (contiguous, dot dtype), the float64 row norms of p and k, and the scalars
    the kernels take as float64 arguments (1/tau, eps, 1/B)."""

    def __init__(self, p, k, tau, eps, block_r=16):
        B, d = p.shape
        N = k.shape[0]
        self.dot_dtype = dot_dtype(p.dtype)  # the input dtype for half inputs unless MCLCORE_TRITON_HALF_DOT=float32
        self.precision = dot_precision(p.dtype)
        self.inv_tau, self.eps, self.inv_b = 1.0 / tau, eps, 1.0 / B
        self.qs = torch.empty((B, d), dtype=self.dot_dtype, device=p.device)
        self.kn = torch.empty((N, d), dtype=self.dot_dtype, device=p.device)
        norms = torch.empty((B + N,), dtype=torch.float64, device=p.device)
        self.pnorm, self.knorm = norms[:B], norms[B:]
        block_d = max(16, triton.next_power_of_2(d))
        _normalize_kernel[(triton.cdiv(B, block_r),)](p, self.qs, self.pnorm, B, d, p.stride(0), p.stride(1),
                                                      self.inv_tau, eps, BLOCK_R=block_r, BLOCK_D=block_d)
        _normalize_kernel[(triton.cdiv(N, block_r),)](k, self.kn, self.knorm, N, d, k.stride(0), k.stride(1), 1.0,
                                                      eps, BLOCK_R=block_r, BLOCK_D=block_d)
        if check_finite_enabled() and not capturing(p):
            # Opt-in (MCLCORE_TRITON_CHECK_FINITE=1): the one host synchronisation of the op.
            bad = ~torch.isfinite(norms)
            if bool(bad.any()):
                first = int(bad.nonzero()[0, 0])
                which, row = (0, first) if first < B else (1, first - B)
                raise RuntimeError(f"mclcore.infonce: {'pk'[which]} contains NaN or infinite values (row {row})")


def _forward(prep, groups, B, N, offset, d, ct, block_m, block_n):
    lse_all = torch.empty((B,), dtype=ct, device=prep.qs.device)
    lse_pos = torch.empty((B,), dtype=ct, device=prep.qs.device)
    bm, bn, bd, warps = _tiles(d, prep.dot_dtype, "fwd", block_m, block_n)
    has_groups = groups is not None
    # Without groups the kernels never read g_ptr; any tensor stands in for it.
    _forward_kernel[(triton.cdiv(B, bm),)](prep.qs, prep.kn, groups if has_groups else lse_all, lse_all, lse_pos,
                                           B, N, offset, d, HAS_GROUPS=has_groups, IS_F64=ct == torch.float64,
                                           BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PRECISION=prep.precision,
                                           D_CHUNK=_fwd_d_chunk(prep.dot_dtype, bd), num_warps=warps)
    return lse_all, lse_pos


def _loss(lse_all, lse_pos, ct):
    # max(0, .): two rounded log-sum-exps over nested sets can disagree in the last ulp (as in the C++ kernel).
    # Summed in float64, like the C++ kernel. clamp_min keeps a NaN (a non-finite input) a NaN.
    return ((lse_all.double() - lse_pos.double()).clamp_min_(0.0).sum() / lse_all.shape[0]).to(ct)


def _gradients(prep, p, k, groups, offset, lse_all, lse_pos, grad, block_m, block_n):
    """dp (B, d), dk (N, d) for the upstream gradient in the 1-element tensor ``grad`` (read on the device), by the
    backward design :func:`backward_design` picks."""
    B, d = p.shape
    N = k.shape[0]
    ct = _compute_dtype(p.dtype)
    fused = backward_design(prep.dot_dtype, prep.precision) == "fused"
    bm, bn, bd, warps = _tiles(d, prep.dot_dtype, "fused" if fused else "bwd", block_m, block_n)
    dp = torch.empty((B, d), dtype=p.dtype, device=p.device)
    dk = torch.empty((N, d), dtype=k.dtype, device=k.device)
    has_groups = groups is not None
    g = groups if has_groups else lse_all
    common = dict(HAS_GROUPS=has_groups, IS_F64=ct == torch.float64, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                  PRECISION=prep.precision, num_warps=warps)
    if fused:
        # dq accumulates in the compute dtype through atomic adds: zero-filled on the device (no host copy).
        dq = torch.zeros((B, d), dtype=ct, device=p.device)
        _dqdk_kernel[(triton.cdiv(N, bn),)](prep.qs, prep.kn, g, lse_all, lse_pos, grad, prep.eps, prep.inv_b, k,
                                            k.stride(0), k.stride(1), prep.knorm, dk, dq, B, N, offset, d, **common)
        _dq_finish_kernel[(triton.cdiv(B, _FINISH_ROWS),)](dq, grad, prep.inv_tau, prep.eps, prep.inv_b, p, p.stride(0),
                                                           p.stride(1), prep.pnorm, dp, B, d,
                                                           IS_F64=ct == torch.float64, BLOCK_R=_FINISH_ROWS,
                                                           BLOCK_D=bd, num_warps=4)
        return dp, dk
    _dq_kernel[(triton.cdiv(B, bm),)](prep.qs, prep.kn, g, lse_all, lse_pos, grad, prep.inv_tau, prep.eps,
                                      prep.inv_b, p, p.stride(0), p.stride(1), prep.pnorm, dp, B, N, offset, d,
                                      **common)
    stages = _DK_STAGES.get(_family(prep.dot_dtype))
    _dk_kernel[(triton.cdiv(N, bn),)](prep.qs, prep.kn, g, lse_all, lse_pos, grad, prep.eps, prep.inv_b, k,
                                      k.stride(0), k.stride(1), prep.knorm, dk, B, N, offset, d, **common,
                                      **({} if stages is None else dict(num_stages=stages)))
    return dp, dk


def _begin(p, k, groups, tau, eps, offset):
    """The checks and the normalisation pass every entry point starts with: (prep, groups, offset, B, N, d,
    compute dtype); offset 0 in square mode.

    groups comes back contiguous: the kernels index it with stride 1 (a strided view such as ``groups[::2]`` read
    that way gave a wrong loss without any error)."""
    tau, eps = float(tau), float(eps)
    offset = _check_inputs(p, k, groups, tau, eps, offset)
    if groups is not None:
        groups = groups.contiguous()
    B, d = p.shape
    return _Prepared(p, k, tau, eps), groups, offset, B, k.shape[0], d, _compute_dtype(p.dtype)


def infonce(p, k, groups, tau, eps, offset=None, *, block_m=None, block_n=None):
    """mclcore::infonce: (loss (), lse_all (B,), lse_pos (B,)) in the compute dtype (float64 or float32); member-stacked
    p, k (M, B, d) run member by member (mclcore/ops/_members.py)."""
    if p.dim() == 3:
        return _members.infonce(infonce, p, k, groups, tau, eps, offset=offset, block_m=block_m, block_n=block_n)
    with device_guard(p):
        prep, groups, offset, B, N, d, ct = _begin(p, k, groups, tau, eps, offset)
        lse_all, lse_pos = _forward(prep, groups, B, N, offset, d, ct, block_m, block_n)
        return _loss(lse_all, lse_pos, ct), lse_all, lse_pos


def infonce_backward(grad_loss, p, k, groups, lse_all, lse_pos, tau, eps, offset=None, *, block_m=None,
                     block_n=None):
    """mclcore::infonce_backward: (dp, dk), contiguous, in the dtypes of p and k; member-stacked p, k (M, B, d) with
    grad_loss (M,) run member by member."""
    if p.dim() == 3:
        return _members.infonce_backward(infonce_backward, grad_loss, p, k, groups, lse_all, lse_pos, tau, eps,
                                         offset=offset, block_m=block_m, block_n=block_n)
    with device_guard(p):
        prep, groups, offset, B, N, d, ct = _begin(p, k, groups, tau, eps, offset)
        if grad_loss.numel() != 1:
            raise RuntimeError(f"mclcore.infonce_backward: grad_loss must hold one value, got shape "
                               f"{tuple(grad_loss.shape)}")
        for t in (lse_all, lse_pos):
            if t.dim() != 1 or t.shape[0] != B:
                raise RuntimeError(f"mclcore.infonce_backward: lse_all/lse_pos must have shape ({B},), got "
                                   f"{tuple(t.shape)}")
            if t.dtype != ct:
                raise RuntimeError(f"mclcore.infonce_backward: lse_all/lse_pos must be {ct}, got {t.dtype}")
            if t.device != p.device:
                raise RuntimeError(f"mclcore.infonce_backward: lse_all/lse_pos must be on {p.device}")
        # The upstream gradient stays on the device (read by the kernels): no host synchronisation for it.
        grad = grad_loss.reshape(1).to(device=p.device)
        return _gradients(prep, p, k, groups, offset, lse_all.contiguous(), lse_pos.contiguous(), grad, block_m,
                          block_n)


def infonce_with_grad(p, k, groups, tau, eps, offset=None, *, block_m=None, block_n=None):
    """mclcore::infonce_with_grad: (loss, dp, dk) for an upstream gradient of 1, one normalisation pass; member-stacked
    p, k (M, B, d) run member by member."""
    if p.dim() == 3:
        return _members.infonce(infonce_with_grad, p, k, groups, tau, eps, offset=offset, block_m=block_m,
                                block_n=block_n)
    with device_guard(p):
        prep, groups, offset, B, N, d, ct = _begin(p, k, groups, tau, eps, offset)
        lse_all, lse_pos = _forward(prep, groups, B, N, offset, d, ct, block_m, block_n)
        one = torch.ones((1,), dtype=ct, device=p.device)  # a fill on the device, no copy from the host
        dp, dk = _gradients(prep, p, k, groups, offset, lse_all, lse_pos, one, block_m, block_n)
        return _loss(lse_all, lse_pos, ct), dp, dk
