"""Triton kernels (mclcore/ops/triton/) on the CPU through the Triton interpreter, and the GPU backend selection
(mclcore/ops/_backend.py), all without a GPU.

The interpreter needs ``TRITON_INTERPRET=1`` before the first ``import triton`` of a process, so the kernel checks
run in one subprocess: this file executed as a script (``python tests/ops/test_triton.py``) runs every check of
:data:`CHECKS` and prints one JSON object ``{name: null or failure message}``; the ``test_kernel`` cases read it.
Sizes are small (the interpreter runs each program in numpy) and tiles are 16 x 16 so that B = 17 and 33 span several
row and column tiles with ragged edges (the ``infonce-rect-*`` checks: the rectangular mode, B rows against N keys
with the positives at an offset). In the interpreter ``tl.dot`` on bfloat16 is wrong (garbage, docs/DESIGN.md
§5), so half precision is checked in float16 only: bfloat16 cannot be checked without a GPU (it runs in
tests/ops/test_gpu.py).

The ``infonce-bwd-designs-*`` checks force each backward design (MCLCORE_TRITON_INFONCE_BWD=fused: one S per tile,
dq by atomic adds; =split: _dq_kernel + _dk_kernel) and compare them with the reference and with each other.
Tolerances against float64 references on the same (rounded) inputs: float64 inputs 1e-9 relative (the kernels
compute in float64), float32 1e-5 (IEEE float32 products: TF32 is off by default, as in PyTorch; the interpreter
multiplies exactly whatever the precision, see tests/ops/test_gpu_paths.py for the TF32 switch). float16 with
tensor-core products (the default, 16-bit tl.dot operands, float32 accumulation): the kernel's error must be at most
twice that of the float16 PyTorch reference (python/infonce.py in float16, the acceptance rule of test_gpu.py); at
B = 3 or d = 1 the reference is sometimes lucky, so those small cases may instead stay within the error that
rounding the unit rows to float16 alone causes (2^-10 / tau on the loss, 2^-9 of the gradient scale); the
``infonce-f16-2x-*`` cases (B >= 48) apply the 2x rule with no floor. float16 on the exact opt-out path
(MCLCORE_TRITON_HALF_DOT=float32: float32 products, like the C++ op): 1e-5 on the loss and 2e-3 on the gradients
(rounded to float16 on output).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # run as a script (the interpreter subprocess): import mclcore and python/ from the checkout
    sys.path.insert(0, ROOT)
TILES = dict(block_m=16, block_n=16)

# ---------------------------------------------------------------------------------------------------------------
# The checks, run in the interpreter subprocess. Each raises (AssertionError or other) on failure.


def _tk():
    from mclcore.ops import triton as tk  # the launchers, one per op

    return tk


def _make(B, d, dtype, seed, n_groups=None, n_keys=None):
    """p (B, d), k (n_keys, d) (n_keys None: B), groups one id per key row or None."""
    n_keys = B if n_keys is None else n_keys
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(B, d, generator=gen, dtype=torch.float64).to(dtype)
    k = torch.randn(n_keys, d, generator=gen, dtype=torch.float64).to(dtype)
    groups = None if n_groups is None else torch.randint(0, n_groups, (n_keys,), generator=gen)
    return p, k, groups


def _ref_infonce(p, k, groups, tau, eps, dtype=torch.float64, offset=None):
    """Loss and gradients of python/infonce.py on the same inputs, computed in ``dtype``."""
    from python.infonce import infonce as ref

    p_ = p.detach().to(dtype).requires_grad_()
    k_ = k.detach().to(dtype).requires_grad_()
    loss = ref(p_, k_, tau, groups=groups, eps=eps, offset=offset)
    dp, dk = torch.autograd.grad(loss, (p_, k_))
    return loss.detach().double(), dp.double(), dk.double()


def _close(actual, expected, dtype, *, ref16=None, scale=1.0, floor16=0.0, what="", output_half=False):
    # (floor16 = 0: the plain 2x rule.)
    """Per-dtype acceptance (module docstring). ref16: the float16 reference's value, for the 2x rule (tensor-core
    mode; None: float16 inputs computed in float32); floor16: the error that rounding the unit rows to float16 alone
    can cause (a 3-row reference is sometimes lucky); output_half: the value was rounded to float16 on output."""
    actual, expected = actual.double(), expected.double()
    if dtype == torch.float16 and ref16 is None:
        rtol = 2e-3 if output_half else 1e-5
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")
        return
    if dtype == torch.float16:
        err = (actual - expected).abs().max().item()
        bound = max(2.0 * (ref16.double() - expected).abs().max().item(), floor16)
        assert err <= bound, f"{what}: float16 error {err:.3g} > bound {bound:.3g} (2x the PyTorch float16 error)"
        return
    rtol = 1e-9 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")


def _check_infonce(B, d, dtype, n_groups, seed, tau=0.1, eps=1e-12, tiles=TILES, transform=None, half_dot=None,
                   floors=True, n_keys=None, offset=None):
    """half_dot: MCLCORE_TRITON_HALF_DOT for the call ("float32": the exact opt-out; None: the default, 16-bit
    tensor-core products). floors=False: the float16 tensor-core results must meet the plain 2x rule. n_keys,
    offset: the rectangular mode (B rows against n_keys keys, row i's positive at key offset + i)."""
    if half_dot is not None:
        os.environ["MCLCORE_TRITON_HALF_DOT"] = half_dot
        try:
            return _check_infonce(B, d, dtype, n_groups, seed, tau, eps, tiles, transform, floors=floors,
                                  n_keys=n_keys, offset=offset)
        finally:
            del os.environ["MCLCORE_TRITON_HALF_DOT"]
    import importlib

    tk = _tk()
    p, k, groups = _make(B, d, dtype, seed, n_groups, n_keys)
    if transform is not None:
        p, k, groups = transform(p, k, groups)
    rl, rdp, rdk = _ref_infonce(p, k, groups, tau, eps, offset=offset)
    tensor_cores = dtype == torch.float16 and \
        importlib.import_module("mclcore.ops.triton.infonce").dot_dtype(dtype) == torch.float16
    ref16 = _ref_infonce(p, k, groups, tau, eps, torch.float16, offset) if tensor_cores else (None,) * 3
    rect = {} if offset is None else {"offset": offset}  # square calls keep the op's default
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    # Gradient scale: at d = 1 the true gradient is 0 (a unit q_i cannot move) and what remains is the rounding of
    # dq_i - q_i (q_i . dq_i), of the size of dq_i ~ 1 / (B tau |p_i|) (as in test_infonce.py).
    norms = torch.cat([p.double().norm(dim=1), k.double().norm(dim=1)])
    min_norm = norms[norms > eps].min().item()  # rows at or below eps have the large gradient dq / eps anyway
    scale = max(rdp.abs().max().item(), rdk.abs().max().item(), 1.0 / (B * tau * min_norm))

    # float16 floors: rounding q / tau and k^ to float16 moves each S_ij by up to ~2^-11 |S_ij| <= 2^-11 / tau per
    # operand, so the loss by about 2^-10 / tau; gradients, relative to their scale, by about 2^-9.
    fl_loss, fl_grad = (2.0**-10 / tau, 2.0**-9 * scale) if floors else (0.0, 0.0)
    loss, la, lp = tk.infonce(p, k, groups, tau, eps, **rect, **tiles)
    assert loss.dtype == ct and la.dtype == ct and lp.dtype == ct and loss.shape == () and la.shape == (B,)
    _close(loss, rl, dtype, ref16=ref16[0], floor16=fl_loss, what="infonce loss")
    # Row statistics, against the dense logits of the rounded inputs.
    q = p.double() / p.double().norm(dim=1, keepdim=True).clamp_min(eps)
    kh = k.double() / k.double().norm(dim=1, keepdim=True).clamp_min(eps)
    S = q @ kh.t() / tau                                            # (B, N)
    own = torch.arange(B) + (offset or 0)                           # each row's positive key
    if groups is None:
        want_lp = S[torch.arange(B), own]
    else:
        pos = groups[own][:, None] == groups[None, :]
        want_lp = torch.logsumexp(S.masked_fill(~pos, float("-inf")), 1)
    stat_tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    if tensor_cores:  # S from rows rounded to float16: |dS| <~ 2 * 2^-11 / tau
        stat_tol = dict(rtol=2e-3, atol=2.0**-9 / tau)
    torch.testing.assert_close(la.double(), torch.logsumexp(S, 1), **stat_tol)
    torch.testing.assert_close(lp.double(), want_lp, **stat_tol)

    g = torch.tensor(1.7, dtype=ct)
    dp, dk = tk.infonce_backward(g, p, k, groups, la, lp, tau, eps, **rect, **tiles)
    assert dp.dtype == dtype and dk.dtype == dtype and dp.is_contiguous() and dk.is_contiguous()
    assert dp.shape == p.shape and dk.shape == k.shape
    _close(dp / 1.7, rdp, dtype, ref16=ref16[1], scale=scale, floor16=fl_grad, what="infonce_backward dp", output_half=True)
    _close(dk / 1.7, rdk, dtype, ref16=ref16[2], scale=scale, floor16=fl_grad, what="infonce_backward dk", output_half=True)

    loss2, dp2, dk2 = tk.infonce_with_grad(p, k, groups, tau, eps, **rect, **tiles)
    assert loss2.dtype == ct and dp2.dtype == dtype and dk2.dtype == dtype
    _close(loss2, rl, dtype, ref16=ref16[0], floor16=fl_loss, what="infonce_with_grad loss")
    _close(dp2, rdp, dtype, ref16=ref16[1], scale=scale, floor16=fl_grad, what="infonce_with_grad dp", output_half=True)
    _close(dk2, rdk, dtype, ref16=ref16[2], scale=scale, floor16=fl_grad, what="infonce_with_grad dk", output_half=True)


def _non_contiguous(p, k, groups):
    p = p.t().contiguous().t()                                   # stride (1, B)
    k = torch.stack([k, k], 2)[:, :, 0]                          # stride (2d, 2)
    assert not p.is_contiguous() and not k.is_contiguous()
    return p, k, groups


def _zero_rows(p, k, groups):
    p = p.clone()
    k = k.clone()
    p[2] = 0.0
    k[4] = 1e-3
    return p, k, groups


def _check_infonce_matches_cpu_op():
    # The same outputs as the C++ CPU op (the contract of the CUDA kernel), in float32, multi-positive.
    tk = _tk()
    p, k, groups = _make(33, 5, torch.float32, 11, 4)
    for a, b in zip(tk.infonce(p, k, groups, 0.2, 1e-12, **TILES), torch.ops.mclcore.infonce(p, k, groups, 0.2, 1e-12)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert a.dtype == b.dtype and a.shape == b.shape
    for a, b in zip(tk.infonce_with_grad(p, k, groups, 0.2, 1e-12, **TILES),
                    torch.ops.mclcore.infonce_with_grad(p, k, groups, 0.2, 1e-12)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert a.dtype == b.dtype and a.shape == b.shape


def _check_infonce_stacked_matches_cpu_op():
    # Member-stacked inputs (M = 3, mclcore/ops/_members.py): the launchers' member loop returns the C++ op's stacked
    # outputs (shapes (M,), (M, B), (M, B, d)), float64, multi-positive and diagonal, non-contiguous p.
    tk = _tk()
    for n_groups in (3, None):
        ms = [_make(17, 5, torch.float64, 30 + m, n_groups) for m in range(3)]
        p, k = torch.stack([x[0] for x in ms]), torch.stack([x[1] for x in ms])
        p = p.transpose(1, 2).contiguous().transpose(1, 2)
        groups = None if n_groups is None else torch.stack([x[2] for x in ms])
        tol = dict(rtol=1e-10, atol=1e-12)
        fwd = tk.infonce(p, k, groups, 0.2, 1e-12, **TILES)
        for a, b in zip(fwd, torch.ops.mclcore.infonce(p, k, groups, 0.2, 1e-12)):
            torch.testing.assert_close(a, b, **tol)
            assert a.dtype == b.dtype and a.shape == b.shape
        for a, b in zip(tk.infonce_with_grad(p, k, groups, 0.2, 1e-12, **TILES),
                        torch.ops.mclcore.infonce_with_grad(p, k, groups, 0.2, 1e-12)):
            torch.testing.assert_close(a, b, **tol)
            assert a.dtype == b.dtype and a.shape == b.shape
        g = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
        for a, b in zip(tk.infonce_backward(g, p, k, groups, fwd[1], fwd[2], 0.2, 1e-12, **TILES),
                        torch.ops.mclcore.infonce_backward(g, p, k, groups, fwd[1], fwd[2], 0.2, 1e-12)):
            torch.testing.assert_close(a, b, **tol)
            assert a.shape == b.shape


def _check_infonce_rect_matches_cpu_op():
    # Rectangular mode (offset): the C++ op's outputs (loss, row statistics, dp (B, d), dk (N, d)), unstacked in
    # float32 and member-stacked (M = 2, k (M, N, d), groups (M, N)) in float64.
    tk = _tk()
    p, k, groups = _make(9, 5, torch.float32, 12, 4, n_keys=36)
    for off in (0, 13, 27):
        for a, b in zip(tk.infonce(p, k, groups, 0.2, 1e-12, off, **TILES),
                        torch.ops.mclcore.infonce(p, k, groups, 0.2, 1e-12, off)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            assert a.dtype == b.dtype and a.shape == b.shape
        for a, b in zip(tk.infonce_with_grad(p, k, groups, 0.2, 1e-12, off, **TILES),
                        torch.ops.mclcore.infonce_with_grad(p, k, groups, 0.2, 1e-12, off)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            assert a.dtype == b.dtype and a.shape == b.shape
    ms = [_make(5, 4, torch.float64, 40 + m, 3, n_keys=20) for m in range(2)]
    p, k, groups = (torch.stack([x[i] for x in ms]) for i in range(3))
    tol = dict(rtol=1e-10, atol=1e-12)
    fwd = tk.infonce(p, k, groups, 0.2, 1e-12, 15, **TILES)
    for a, b in zip(fwd, torch.ops.mclcore.infonce(p, k, groups, 0.2, 1e-12, 15)):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(tk.infonce_with_grad(p, k, groups, 0.2, 1e-12, 15, **TILES),
                    torch.ops.mclcore.infonce_with_grad(p, k, groups, 0.2, 1e-12, 15)):
        torch.testing.assert_close(a, b, **tol)
        assert a.shape == b.shape
    g = torch.tensor([0.5, -1.0], dtype=torch.float64)
    for a, b in zip(tk.infonce_backward(g, p, k, groups, fwd[1], fwd[2], 0.2, 1e-12, 15, **TILES),
                    torch.ops.mclcore.infonce_backward(g, p, k, groups, fwd[1], fwd[2], 0.2, 1e-12, 15)):
        torch.testing.assert_close(a, b, **tol)
        assert a.shape == b.shape


@__import__("contextlib").contextmanager
def _bwd_design(design):
    """MCLCORE_TRITON_INFONCE_BWD=design inside (None: unset, the default)."""
    var = "MCLCORE_TRITON_INFONCE_BWD"
    old = os.environ.pop(var, None)
    if design is not None:
        os.environ[var] = design
    try:
        yield
    finally:
        os.environ.pop(var, None)
        if old is not None:
            os.environ[var] = old


def _check_backward_designs(B, d, dtype, n_groups, seed, n_keys=None, offset=None, transform=None, tiles=TILES):
    """The fused backward (_dqdk_kernel + _dq_finish_kernel: one S per tile, dq by atomic adds) and the split one
    (_dq_kernel + _dk_kernel), each forced, against the float64 reference (float64: 1e-10 relative to the gradient
    scale; float32: 1e-5; float16 tensor-core products: the 2x rule) through infonce_backward (upstream gradient
    1.7) and infonce_with_grad, and against each other (float64 1e-12, float32 1e-5, float16 2e-3 of the scale:
    the summation orders differ, and float16 outputs are rounded)."""
    tk = _tk()
    p, k, groups = _make(B, d, dtype, seed, n_groups, n_keys)
    if transform is not None:
        p, k, groups = transform(p, k, groups)
    tau, eps = 0.1, 1e-12
    rect = {} if offset is None else {"offset": offset}
    _, rdp, rdk = _ref_infonce(p, k, groups, tau, eps, offset=offset)
    ref16 = _ref_infonce(p, k, groups, tau, eps, torch.float16, offset) if dtype == torch.float16 else (None,) * 3
    norms = torch.cat([p.double().norm(dim=1), k.double().norm(dim=1)])
    scale = max(rdp.abs().max().item(), rdk.abs().max().item(), 1.0 / (B * tau * norms[norms > eps].min().item()))
    _, la, lp = tk.infonce(p, k, groups, tau, eps, **rect, **tiles)
    ct = la.dtype
    out = {}
    for design in ("fused", "split"):
        with _bwd_design(design):
            dp, dk = tk.infonce_backward(torch.tensor(1.7, dtype=ct), p, k, groups, la, lp, tau, eps, **rect, **tiles)
            _, dp1, dk1 = tk.infonce_with_grad(p, k, groups, tau, eps, **rect, **tiles)
        assert dp.dtype == dk.dtype == dtype and dp.shape == p.shape and dk.shape == k.shape, design
        assert dp.is_contiguous() and dk.is_contiguous()
        for name, a, want, r16 in (("dp", dp / 1.7, rdp, ref16[1]), ("dk", dk / 1.7, rdk, ref16[2]),
                                   ("with_grad dp", dp1, rdp, ref16[1]), ("with_grad dk", dk1, rdk, ref16[2])):
            if dtype == torch.float64:
                torch.testing.assert_close(a.double(), want, rtol=1e-10, atol=1e-10 * scale,
                                           msg=lambda m: f"{design} {name}: {m}")
            else:
                _close(a, want, dtype, ref16=r16, scale=scale, floor16=2.0**-9 * scale, output_half=True,
                       what=f"{design} {name}")
        out[design] = (dp, dk, dp1, dk1)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    for name, a, b in zip(("dp", "dk", "with_grad dp", "with_grad dk"), out["fused"], out["split"]):
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * scale * (1.7 if len(name) == 2 else 1),
                                   msg=lambda m: f"fused vs split {name}: {m}")


def _check_fused_backward_stacked():
    # Member-stacked launches (M = 3, the launchers' member loop) on the fused backward, float32 (whose default is
    # the split one), square with groups and rectangular: the C++ op's stacked gradients.
    tk = _tk()
    with _bwd_design("fused"):
        for n_keys, offset, ng in ((None, None, 3), (33, 21, None)):
            ms = [_make(7, 5, torch.float32, 60 + m, ng, n_keys) for m in range(3)]
            p, k = torch.stack([x[0] for x in ms]), torch.stack([x[1] for x in ms])
            groups = None if ng is None else torch.stack([x[2] for x in ms])
            rect = {} if offset is None else {"offset": offset}
            fwd = torch.ops.mclcore.infonce(p, k, groups, 0.2, 1e-12, **rect)
            g = torch.tensor([0.5, -1.0, 2.0])
            for a, b in zip(tk.infonce_backward(g, p, k, groups, fwd[1], fwd[2], 0.2, 1e-12, **rect, **TILES),
                            torch.ops.mclcore.infonce_backward(g, p, k, groups, fwd[1], fwd[2], 0.2, 1e-12, **rect)):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            for a, b in zip(tk.infonce_with_grad(p, k, groups, 0.2, 1e-12, **rect, **TILES),
                            torch.ops.mclcore.infonce_with_grad(p, k, groups, 0.2, 1e-12, **rect)):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _backward_design_cases():
    cases = {
        # float64 (1e-10): B = 1 (rectangular), 7, 33; d = 5, 67; square, groups, rectangular at an offset that is
        # no multiple of the 16-wide tiles.
        "f64-B1-N3-off2": (1, 5, torch.float64, None, dict(n_keys=3, offset=2)),
        "f64-B7-d67-g3": (7, 67, torch.float64, 3, {}),
        "f64-B33-d5": (33, 5, torch.float64, None, {}),
        "f64-B33-d67-N70-off20-g4": (33, 67, torch.float64, 4, dict(n_keys=70, offset=20)),
        "f64-B7-d5-non-contiguous-g2": (7, 5, torch.float64, 2, dict(transform=_non_contiguous)),
        # float32 (1e-5; its default backward is the split one: here both are forced).
        "f32-B33-d67-g3": (33, 67, torch.float32, 3, {}),
        "f32-B7-d5-N21-off14": (7, 5, torch.float32, None, dict(n_keys=21, offset=14)),
        "f32-B17-d5-rect-non-contiguous-g2": (17, 5, torch.float32, 2, dict(transform=_non_contiguous, n_keys=21,
                                                                            offset=3)),
        "f32-B40-d40-default-tiles-N130-off77-g5": (40, 40, torch.float32, 5, dict(tiles={}, n_keys=130,
                                                                                   offset=77)),
        # float16 on tensor cores (16-bit tl.dot operands): the 2x rule.
        "f16-B33-d5-g3": (33, 5, torch.float16, 3, {}),
        "f16-B7-d67": (7, 67, torch.float16, None, {}),
        "f16-B17-d32-N34-off17-g3": (17, 32, torch.float16, 3, dict(n_keys=34, offset=17)),
    }
    return {f"infonce-bwd-designs-{name}": (lambda a=a, seed=i: _check_backward_designs(*a[:4], seed=70 + seed, **a[4]))
            for i, (name, a) in enumerate(cases.items())}


def _check_critic_stacked_matches_cpu_op():
    # Member-stacked critic (M = 3): v (M, B, dv), weights (M, out, in); forward, workspace and backward as the C++ op.
    tk = _tk()
    cases = [_critic_params(torch.float64, seed=40 + m) for m in range(3)]
    v = torch.stack([c[0] for c in cases])
    ws = [torch.stack([c[1][l] for c in cases]) for l in range(len(cases[0][1]))]
    bs = [torch.stack([c[2][l] for c in cases]) for l in range(len(cases[0][2]))]
    G = torch.stack([c[3] for c in cases])
    tol = dict(rtol=1e-10, atol=1e-10)
    out, saved = tk.critic_grad(v, ws, bs, "gelu")
    cpu_out, cpu_saved = torch.ops.mclcore.critic_grad(v, ws, bs, "gelu")
    assert out.shape == cpu_out.shape and saved.shape == cpu_saved.shape
    torch.testing.assert_close(out, cpu_out, **tol)
    torch.testing.assert_close(saved, cpu_saved, **tol)
    got = tk.critic_grad_backward(G, v, ws, bs, saved, "gelu")
    want = torch.ops.mclcore.critic_grad_backward(G, v, ws, bs, cpu_saved, "gelu")
    for a, b in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want[2]]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def _check_infonce_nonfinite():
    # Opt-in check (one host synchronisation): MCLCORE_TRITON_CHECK_FINITE=1 raises as the C++ op does.
    tk = _tk()
    p, k, _ = _make(5, 3, torch.float32, 0)
    k[3, 1] = float("nan")
    os.environ["MCLCORE_TRITON_CHECK_FINITE"] = "1"
    try:
        tk.infonce(p, k, None, 0.1, 1e-12, **TILES)
    except RuntimeError as err:
        assert "mclcore.infonce: k contains NaN or infinite values (row 3)" in str(err), str(err)
    else:
        raise AssertionError("no error for a NaN in k")
    finally:
        del os.environ["MCLCORE_TRITON_CHECK_FINITE"]


def _check_infonce_nonfinite_is_nan():
    # The default (no synchronisation): a NaN or inf in p or k gives a NaN loss, never a finite wrong one, on every
    # entry point, with and without groups; the rows that depend on it are NaN in the split (default) and the fused
    # backward alike.
    tk = _tk()
    for name, value in (("p", float("nan")), ("k", float("nan")), ("p", float("inf")), ("k", float("-inf"))):
        for groups in (None, torch.tensor([0, 1, 0, 1, 1])):
            p, k, _ = _make(5, 3, torch.float32, 0)
            (p if name == "p" else k)[3, 1] = value
            loss, la, lp = tk.infonce(p, k, groups, 0.1, 1e-12, **TILES)
            assert torch.isnan(loss), (name, value, loss)
            for design in (None, "fused"):
                with _bwd_design(design):
                    loss2, dp, dk = tk.infonce_with_grad(p, k, groups, 0.1, 1e-12, **TILES)
                assert torch.isnan(loss2), (name, value, design, loss2)
                if name == "k" and value != value:                # NaN in k: its row of dk is NaN
                    assert bool(torch.isnan(dk[3]).all()), (design, dk)
            dp, dk = tk.infonce_backward(torch.tensor(1.0), p, k, groups, la, lp, 0.1, 1e-12, **TILES)
            assert bool(torch.isnan(dp if name == "p" else dk)[3].all()), (name, value)


def _check_infonce_bad_arguments():
    tk = _tk()
    p, k, _ = _make(5, 3, torch.float32, 0)
    keys = torch.cat([k, k])  # (10, 3): the rectangular mode's keys
    cases = [((p, k[:4], None, 0.1, 1e-12), "same shape"), ((p, k, None, 0.0, 1e-12), "tau"),
             ((p, k, torch.zeros(5, dtype=torch.int32), 0.1, 1e-12), "groups must be int64"),
             ((p, k.double(), None, 0.1, 1e-12), "same dtype"),
             ((p, keys, None, 0.1, 1e-12), "need an offset"),
             ((p, keys, None, 0.1, 1e-12, 6), "offset must satisfy 0 <= offset <= N - B = 5"),
             ((p, keys, None, 0.1, 1e-12, -1), "offset must satisfy"),
             ((p, k[:4], None, 0.1, 1e-12, 0), "N >= B"),
             ((p, keys[:, :2], None, 0.1, 1e-12, 0), "same number of features"),
             ((p, keys, torch.zeros(5, dtype=torch.int64), 0.1, 1e-12, 0), "groups must have shape (N,) = (10,)")]
    for args, words in cases:
        try:
            tk.infonce(*args, **TILES)
        except RuntimeError as err:
            assert words in str(err), f"{words!r} not in {err}"
        else:
            raise AssertionError(f"no error for {words}")


def _check_routing():
    # The registered CUDA kernel (called directly with CPU tensors: only the interpreter can run it here) goes to the
    # Triton launcher under use_backend("triton") and under MCLCORE_BACKEND=triton.
    from mclcore.ops import _backend, use_backend

    p, k, groups = _make(17, 5, torch.float32, 3, 3)
    want = torch.ops.mclcore.infonce(p, k, groups, 0.1, 1e-12)
    with use_backend("triton"):
        got = _backend.CUDA_KERNELS["infonce"](p, k, groups, 0.1, 1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # The rectangular mode's offset reaches the launcher through the registered kernel (positionally, as the
    # dispatcher passes it).
    pr, kr, gr = _make(5, 5, torch.float32, 4, 3, n_keys=15)
    with use_backend("triton"):
        got = _backend.CUDA_KERNELS["infonce_with_grad"](pr, kr, gr, 0.1, 1e-12, 10)
    for a, b in zip(got, torch.ops.mclcore.infonce_with_grad(pr, kr, gr, 0.1, 1e-12, 10)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    z, W, b = p[:2, :2].contiguous(), torch.randn(3, 2), torch.zeros(3)
    os.environ["MCLCORE_BACKEND"] = "triton"
    try:
        got = _backend.CUDA_KERNELS["mech_derivs"](z, [W], [b], None, None, None, [], [])
    finally:
        del os.environ["MCLCORE_BACKEND"]
    for a, b_ in zip(got, torch.ops.mclcore.mech_derivs(z, [W], [b], None, None, None, [], [])):
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-6)


def _critic_params(dtype, seed, dims=(7, 6, 5, 1)):
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o, i, generator=gen, dtype=torch.float64).div(i ** 0.5).to(dtype)
          for i, o in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(o, generator=gen, dtype=torch.float64).mul(0.5).to(dtype) for o in dims[1:]]
    v = torch.randn(9, dims[0], generator=gen, dtype=torch.float64).mul(2).to(dtype)
    G = torch.randn(9, dims[0], generator=gen, dtype=torch.float64).to(dtype)
    return v, ws, bs, G


def _check_critic(activation, dtype):
    from python.critic_grad import critic_grad as ref

    tk = _tk()
    v, ws, bs, G = _critic_params(dtype, seed=len(activation))
    v_nc = torch.stack([v, v], 2)[:, :, 0]  # non-contiguous input, same values
    out, saved = tk.critic_grad(v_nc, ws, bs, activation)
    cpu_out, cpu_saved = torch.ops.mclcore.critic_grad(v, ws, bs, activation)
    assert out.is_contiguous() and out.dtype == dtype and saved.shape == cpu_saved.shape
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    # The workspace has the C++ layout (h, s', s'', m per hidden layer), so either backward can read it.
    torch.testing.assert_close(saved, cpu_saved, **tol)
    leaves = [t.double().requires_grad_() for t in (v, *ws, *bs)]
    r = ref(leaves[0], leaves[1:1 + len(ws)], leaves[1 + len(ws):], activation)
    torch.testing.assert_close(out.double(), r, **tol)
    gv, gW, gb = tk.critic_grad_backward(G, v_nc, ws, bs, saved, activation)
    want = torch.autograd.grad((r * G.double()).sum(), leaves, allow_unused=True)
    want = [torch.zeros_like(x) if w is None else w for w, x in zip(want, leaves)]  # b_L: grad_v c ignores it
    for name, a, b in zip(["v"] + [f"W{i}" for i in range(len(ws))] + [f"b{i}" for i in range(len(bs))],
                          [gv, *gW, *gb], want):
        scale = max(b.abs().max().item(), 1.0)
        torch.testing.assert_close(a.double(), b, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * scale,
                                   msg=lambda m: f"d{name}: {m}")


def _mech_case(dtype, activation, dx, film, final, seed):
    gen = torch.Generator().manual_seed(seed)
    dz, h = 3, 5
    dims = [dz, h, dx]
    ws = [torch.randn(o, i, generator=gen, dtype=torch.float64).mul(0.9).to(dtype)
          for i, o in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(o, generator=gen, dtype=torch.float64).mul(0.3).to(dtype) for o in dims[1:]]
    z = torch.randn(dz, 4, generator=gen, dtype=torch.float64).to(dtype).t()  # (4, dz), non-contiguous
    in_bias = torch.randn(4, h, generator=gen, dtype=torch.float64).mul(0.3).to(dtype) if film else None
    scale = (torch.rand(4, dz, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if film else None
    shift = torch.randn(4, dz, generator=gen, dtype=torch.float64).mul(0.2).to(dtype) if film else None
    n_act = 2 if final else 1
    return z, ws, bs, in_bias, scale, shift, [activation] * n_act, [0.7 if activation == "softplus" else 0.2] * n_act


def _check_mech(dtype, activation, dx, film, final):
    from python.mech_derivs import mech_derivs as ref

    tk = _tk()
    z, ws, bs, ib, sc, sh, acts, prms = _mech_case(dtype, activation, dx, film, final, seed=dx + len(activation))
    V, L = tk.mech_derivs(z, ws, bs, ib, sc, sh, acts, prms, block=16, chunk=3)  # two chunks of samples
    assert V.dtype == dtype and V.shape == (4, 6) and L.shape == (4,) and V.is_contiguous()
    d64 = [t.double() if t is not None else None for t in (z, *ws, *bs, ib, sc, sh)]
    z64, ws64, bs64, ib64, sc64, sh64 = d64[0], d64[1:3], d64[3:5], d64[5], d64[6], d64[7]
    rV, rL = ref(z64, ws64, bs64, ib64, sc64, sh64, acts, prms, final_activation=final)
    rtol = 1e-8 if dtype == torch.float64 else 2e-3
    scale = rV.abs().max().item()
    torch.testing.assert_close(V.double(), rV, rtol=rtol, atol=rtol * scale)
    torch.testing.assert_close(L.double(), rL, rtol=rtol, atol=rtol)
    # Same outputs as the C++ CPU kernel.
    cV, cL = torch.ops.mclcore.mech_derivs(z, ws, bs, ib, sc, sh, acts, prms)
    torch.testing.assert_close(V, cV, rtol=rtol, atol=rtol * scale)
    torch.testing.assert_close(L, cL, rtol=rtol, atol=rtol)


def _check_mech_rank_deficient():
    # Two identical columns of W_0 (linear generator): J has rank 1 < dz = 2 -> V = NaN, L = -inf, as the C++ op.
    tk = _tk()
    W = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]], dtype=torch.float64)
    z = torch.randn(3, 2, dtype=torch.float64)
    V, L = tk.mech_derivs(z, [W], [torch.zeros(3, dtype=torch.float64)], None, None, None, [], [], block=16)
    assert bool(torch.isnan(V).all()) and bool((L == float("-inf")).all()), (V, L)
    # Full rank linear: V = 0, L = 1/2 logdet(W^T W).
    W2 = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.5, -1.0]], dtype=torch.float64)
    V, L = tk.mech_derivs(z, [W2], [torch.zeros(3, dtype=torch.float64)], None, None, None, [], [], block=16)
    assert bool((V.abs() < 1e-12).all())
    torch.testing.assert_close(L, torch.full((3,), 0.5 * torch.logdet(W2.t() @ W2).item(), dtype=torch.float64))


def _infonce_cases():
    cases = {}
    # float32 over the size grid (groups alternate: diagonal and multi-positive both meet ragged tiles).
    # d = 67: four 32-feature chunks in the float32 forward product (the last one ragged).
    for i, (B, d) in enumerate([(2, 1), (3, 5), (17, 32), (33, 5), (17, 1), (33, 32), (3, 67)]):
        ng = None if i % 2 == 0 else 3
        cases[f"infonce-f32-B{B}-d{d}-g{ng}"] = (B, d, torch.float32, ng)
    # float16 on the exact opt-out path (float32 products, as the C++ op).
    for B, d, ng in [(3, 5, None), (33, 1, 2)]:
        cases[f"infonce-f16-exact-B{B}-d{d}-g{ng}"] = (B, d, torch.float16, ng, "float32")
    # float16 by default: 16-bit tensor-core products (bfloat16 cannot be checked here: interpreter tl.dot).
    for B, d, ng in [(3, 5, None), (17, 32, 3), (33, 5, None), (33, 1, 2)]:
        cases[f"infonce-f16-tensorcore-B{B}-d{d}-g{ng}"] = (B, d, torch.float16, ng)
    for B, d, ng in [(17, 5, 3), (33, 32, None)]:
        cases[f"infonce-f64-B{B}-d{d}-g{ng}"] = (B, d, torch.float64, ng)
    return {name: (lambda a=args, seed=i: _check_infonce(*a[:4], seed=seed, half_dot=(a[4:] or (None,))[0]))
            for i, (name, args) in enumerate(cases.items())}


CHECKS = {
    **_infonce_cases(),
    "infonce-non-contiguous": lambda: _check_infonce(17, 5, torch.float32, 2, 1, transform=_non_contiguous),
    "infonce-zero-rows-eps": lambda: _check_infonce(6, 4, torch.float64, None, 4, tau=0.5, eps=1e-2,
                                                    transform=_zero_rows),
    "infonce-tau-0.01": lambda: _check_infonce(33, 5, torch.float32, 4, 5, tau=0.01),
    "infonce-default-tiles": lambda: _check_infonce(33, 5, torch.float32, 3, 6, tiles={}),
    # The GPU tile table (float32: 64 x 64 forward, 32 x 64 split backward) over several row and column tiles with
    # ragged edges.
    "infonce-default-tiles-B130": lambda: _check_infonce(130, 40, torch.float32, 4, 7, tiles={}),
    "infonce-matches-cpu-op": _check_infonce_matches_cpu_op,
    # The error rule with no floor: at most 2x the error of the float16 PyTorch reference (measured 2026-12-06 under
    # the interpreter on the 2-core AMD EPYC VM: ratios 0.01-0.83 over loss, dp, dk at these sizes).
    "infonce-f16-2x-B64-d32-g8": lambda: _check_infonce(64, 32, torch.float16, 8, 21, floors=False),
    "infonce-f16-2x-B48-d64-tau0.07": lambda: _check_infonce(48, 64, torch.float16, None, 22, tau=0.07,
                                                            floors=False),
    "infonce-f16-2x-default-tiles-B100": lambda: _check_infonce(100, 32, torch.float16, None, 23, tiles={},
                                                               floors=False),
    "infonce-stacked-matches-cpu-op": _check_infonce_stacked_matches_cpu_op,
    # Rectangular mode: B rows against N keys, the positives at offset + i (first, middle and last block; offsets
    # that are no multiple of the 16-wide tiles; B = 1).
    "infonce-rect-f32-B1-N3-off2": lambda: _check_infonce(1, 5, torch.float32, None, 50, n_keys=3, offset=2),
    "infonce-rect-f32-B7-N21-off9-g3": lambda: _check_infonce(7, 67, torch.float32, 3, 51, n_keys=21, offset=9),
    "infonce-rect-f64-B17-N51-off0": lambda: _check_infonce(17, 5, torch.float64, None, 52, n_keys=51, offset=0),
    "infonce-rect-f64-B17-N51-off34-g4": lambda: _check_infonce(17, 32, torch.float64, 4, 53, n_keys=51, offset=34),
    "infonce-rect-f32-B33-N99-off40": lambda: _check_infonce(33, 5, torch.float32, None, 54, n_keys=99, offset=40),
    "infonce-rect-f16-tensorcore-B17-N34-off17-g3": lambda: _check_infonce(17, 32, torch.float16, 3, 55, n_keys=34,
                                                                          offset=17),
    "infonce-rect-f16-exact-B7-N21-off14": lambda: _check_infonce(7, 5, torch.float16, None, 56, n_keys=21,
                                                                  offset=14, half_dot="float32"),
    "infonce-rect-default-tiles-B40-N130-off77-g5": lambda: _check_infonce(40, 40, torch.float32, 5, 57, tiles={},
                                                                          n_keys=130, offset=77),
    "infonce-rect-non-contiguous": lambda: _check_infonce(7, 5, torch.float32, 2, 58, transform=_non_contiguous,
                                                          n_keys=21, offset=7),
    "infonce-rect-matches-cpu-op": _check_infonce_rect_matches_cpu_op,
    # The two backward designs (fused: 4 tile products in forward + backward, dq by atomic adds; split: 5).
    **_backward_design_cases(),
    "infonce-bwd-fused-stacked": _check_fused_backward_stacked,
    "critic-stacked-matches-cpu-op": _check_critic_stacked_matches_cpu_op,
    "infonce-nonfinite": _check_infonce_nonfinite,
    "infonce-nonfinite-is-nan": _check_infonce_nonfinite_is_nan,
    "infonce-bad-arguments": _check_infonce_bad_arguments,
    "routing": _check_routing,
    **{f"critic-{a}-f64": (lambda a=a: _check_critic(a, torch.float64))
       for a in ("gelu", "relu", "silu", "tanh", "softplus")},
    "critic-gelu-f32": lambda: _check_critic("gelu", torch.float32),
    "critic-tanh-f32": lambda: _check_critic("tanh", torch.float32),
    "mech-tanh-f64-dx5-film": lambda: _check_mech(torch.float64, "tanh", 5, True, False),
    "mech-gelu-f64-dx3-square": lambda: _check_mech(torch.float64, "gelu", 3, False, False),
    "mech-softplus-f64-final": lambda: _check_mech(torch.float64, "softplus", 4, True, True),
    "mech-silu-f32-dx5": lambda: _check_mech(torch.float32, "silu", 5, True, False),
    "mech-smooth_leaky-f64": lambda: _check_mech(torch.float64, "smooth_leaky", 4, False, True),
    "mech-sigmoid-f64": lambda: _check_mech(torch.float64, "sigmoid", 5, False, False),
    "mech-rank-deficient": _check_mech_rank_deficient,
}


def _worker() -> None:
    """Run every check (this process has TRITON_INTERPRET=1) and print {name: None or message} as JSON."""
    import mclcore.ops  # noqa: F401  (registers torch.ops.mclcore)
    from tests.ops._interpreter import run_checks

    run_checks(CHECKS)


@pytest.fixture(scope="module")
def interpreted():
    from tests.ops._interpreter import run_file

    pytest.importorskip("triton")
    t0 = time.time()
    results = run_file(__file__)
    results["_seconds"] = time.time() - t0
    return results


@pytest.mark.parametrize("name", list(CHECKS))
def test_kernel(interpreted, name):
    assert name in interpreted, f"check {name} did not run"
    assert interpreted[name] is None, interpreted[name]


# ---------------------------------------------------------------------------------------------------------------
# Backend selection: no GPU needed (the routing itself runs in the "routing" check above).

import mclcore.ops  # noqa: E402  (registers the ops and their CUDA kernels)
from mclcore.ops import _backend, use_backend  # noqa: E402


@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv(_backend.ENV, raising=False)
    monkeypatch.setattr(_backend, "_override", None)


def test_every_public_op_has_a_cuda_kernel():
    for op in _backend.OPS:
        assert _backend._has_kernel(op, "CUDA"), op
        assert op in _backend.CUDA_KERNELS
    # CPU tensors still reach the C++ kernels, whatever backend is selected.
    with use_backend("cuda"):
        loss, _, _ = torch.ops.mclcore.infonce(torch.randn(4, 3), torch.randn(4, 3), None, 0.1, 1e-12)
    assert torch.isfinite(loss)


def test_unknown_backend_is_a_value_error_naming_the_variable(no_override, monkeypatch):
    monkeypatch.setenv("MCLCORE_BACKEND", "opencl")
    with pytest.raises(ValueError, match="MCLCORE_BACKEND.*opencl|opencl.*MCLCORE_BACKEND"):
        _backend.selected()
    with pytest.raises(ValueError, match="MCLCORE_BACKEND"):
        _backend.implementation("infonce")
    with pytest.raises(ValueError, match="MCLCORE_BACKEND"):
        use_backend("tpu")


def test_selection_order(no_override, monkeypatch):
    monkeypatch.setenv("MCLCORE_BACKEND", "cuda")
    assert _backend.selected() == "cuda"
    with use_backend("triton"):                      # the programmatic choice wins over the variable
        assert _backend.selected() == "triton"
        with use_backend("cuda"):
            assert _backend.selected() == "cuda"
        assert _backend.selected() == "triton"       # restored on exit
    assert _backend.selected() == "cuda"
    monkeypatch.setenv("MCLCORE_BACKEND", " Triton ")
    assert _backend.selected() == "triton"
    monkeypatch.delenv("MCLCORE_BACKEND")
    monkeypatch.setattr(_backend, "_triton_module", None)
    monkeypatch.setattr(_backend, "_triton_error", "ImportError: No module named 'triton'")
    assert _backend.selected() == "cuda"             # default without triton
    monkeypatch.setattr(_backend, "_triton_module", object())
    assert _backend.selected() == "triton"           # default with triton


def test_unavailable_cuda_backend_raises_naming_backend_and_op(no_override):
    if _backend.cuda_available("infonce"):
        pytest.skip("this build has the CUDA C++ kernels")
    with use_backend("cuda"):
        for op in (op for op, info in _backend.OPS.items() if info.cuda_cpp):
            with pytest.raises(RuntimeError, match=rf"mclcore\.{op}: backend 'cuda' is not available.*_cuda_{op}"):
                _backend.implementation(op)
        with pytest.raises(RuntimeError, match="critic_grad: backend 'cuda'.*no CUDA C\\+\\+ kernel"):
            _backend.implementation("critic_grad")
        with pytest.raises(RuntimeError, match="backend 'cuda'"):  # through the registered kernel itself
            _backend.CUDA_KERNELS["infonce"](torch.randn(3, 2), torch.randn(3, 2), None, 0.1, 1e-12)


def test_critic_grad_has_no_cuda_backend(no_override, monkeypatch):
    monkeypatch.setenv("MCLCORE_BACKEND", "cuda")
    for op in (op for op, info in _backend.OPS.items() if not info.cuda_cpp):
        with pytest.raises(RuntimeError, match=rf"mclcore\.{op}: backend 'cuda'.*MCLCORE_BACKEND=triton"):
            _backend.implementation(op)


def test_no_backend_at_all_says_so(no_override, monkeypatch):
    if _backend.cuda_available("infonce"):
        pytest.skip("this build has the CUDA C++ kernels")
    monkeypatch.setattr(_backend, "_triton_module", None)
    monkeypatch.setattr(_backend, "_triton_error", "ImportError: No module named 'triton'")
    with pytest.raises(RuntimeError, match=r"mclcore\.infonce: no GPU backend.*triton does not import.*_cuda_infonce"):
        _backend.implementation("infonce")
    with pytest.raises(RuntimeError, match=r"mclcore\.critic_grad: no GPU backend.*triton does not import.*no CUDA C"):
        _backend.implementation("critic_grad")


def test_unavailable_triton_backend_raises_naming_backend_and_op(no_override, monkeypatch):
    monkeypatch.setattr(_backend, "_triton_module", None)
    monkeypatch.setattr(_backend, "_triton_error", "ImportError: No module named 'triton'")
    with use_backend("triton"):
        with pytest.raises(RuntimeError, match=r"mclcore\.mech_derivs: backend 'triton' is not available.*No mod"):
            _backend.implementation("mech_derivs")


def test_triton_backend_resolves_to_the_launchers(no_override):
    pytest.importorskip("triton")
    from mclcore.ops import triton as tk

    with use_backend("triton"):
        for op in _backend.OPS:
            assert _backend.implementation(op) is getattr(tk, op)


# ---------------------------------------------------------------------------------------------------------------
# Compilation for a GPU target without a GPU (opt-in: ~20 s with an empty triton cache, 2-core AMD EPYC VM, 2026-12).
# The interpreter accepts programs the GPU compiler rejects (layouts, dtypes of tl.dot / tl.where operands, constexpr
# branches); triton.compile with an sm_90 target runs the real pipeline down to a cubin with the ptxas bundled in the
# triton wheel.


def _compile_sm90() -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    inf = importlib.import_module("mclcore.ops.triton.infonce")
    cg = importlib.import_module("mclcore.ops.triton.critic_grad")
    md = importlib.import_module("mclcore.ops.triton.mech_derivs")
    target = GPUTarget("cuda", 90, 32)
    ptr = lambda t: "*" + t  # noqa: E731
    cases = {}
    # (raw input dtype, dtype of the normalised rows fed to tl.dot, input_precision): 16-bit inputs default to
    # 16-bit products (the float32 rows are the MCLCORE_TRITON_HALF_DOT=float32 opt-out); float32 products follow
    # the TF32 setting (ieee by default) or MCLCORE_TRITON_FP32_DOT (tf32, tf32x3).
    for raw, dt, prec in (("bf16", "bf16", "ieee"), ("fp16", "fp16", "ieee"), ("bf16", "fp32", "ieee"),
                          ("fp32", "fp32", "ieee"), ("fp32", "fp32", "tf32"), ("fp32", "fp32", "tf32x3"),
                          ("fp64", "fp64", "ieee")):
        acc = "fp64" if dt == "fp64" else "fp32"
        tag = f"{raw}->{dt} {prec}"
        tiles = dict(HAS_GROUPS=True, IS_F64=dt == "fp64", BLOCK_M=16 if dt == "fp64" else 64,
                     BLOCK_N=16 if dt == "fp64" else 32, BLOCK_D=128, PRECISION=prec)
        flags = {k: "constexpr" for k in tiles}
        rows = dict(q_ptr=ptr(dt), k_ptr=ptr(dt), g_ptr="*i64", la_ptr=ptr(acc), lp_ptr=ptr(acc))
        fwd = dict(tiles, D_CHUNK=32)
        cases[f"infonce fwd {tag}"] = (inf._forward_kernel, {**rows, "B": "i32", "N": "i32", "offset": "i32",
                                       "d": "i32", **flags, "D_CHUNK": "constexpr"}, fwd)
        # The scalars are float64 kernel arguments (no device copy of constants).
        cases[f"infonce dq {tag}"] = (inf._dq_kernel, {**rows, "grad_ptr": ptr(acc), "inv_tau": "fp64",
                                      "eps": "fp64", "inv_b": "fp64", "p_ptr": ptr(raw), "p_stride_b": "i32",
                                      "p_stride_d": "i32", "pnorm_ptr": "*fp64", "dp_ptr": ptr(raw), "B": "i32",
                                      "N": "i32", "offset": "i32", "d": "i32", **flags}, tiles)
        cases[f"infonce dk {tag}"] = (inf._dk_kernel, {**rows, "grad_ptr": ptr(acc), "eps": "fp64", "inv_b": "fp64",
                                      "kraw_ptr": ptr(raw), "k_stride_b": "i32", "k_stride_d": "i32",
                                      "knorm_ptr": "*fp64", "dk_ptr": ptr(raw), "B": "i32", "N": "i32",
                                      "offset": "i32", "d": "i32", **flags}, tiles)
        cases[f"infonce dqdk {tag}"] = (inf._dqdk_kernel, {**rows, "grad_ptr": ptr(acc), "eps": "fp64",
                                        "inv_b": "fp64", "kraw_ptr": ptr(raw), "k_stride_b": "i32",
                                        "k_stride_d": "i32", "knorm_ptr": "*fp64", "dk_ptr": ptr(raw),
                                        "dq_ptr": ptr(acc), "B": "i32", "N": "i32", "offset": "i32", "d": "i32",
                                        **flags}, tiles)
        cases[f"infonce normalize {tag}"] = (inf._normalize_kernel, dict(
            x_ptr=ptr(raw), out_ptr=ptr(dt), norm_ptr="*fp64", B="i32", d="i32", stride_b="i32", stride_d="i32",
            scale="fp64", eps="fp64", BLOCK_R="constexpr", BLOCK_D="constexpr"), dict(BLOCK_R=16, BLOCK_D=128))
    for dt in ("fp32", "fp64"):
        cases[f"critic act gelu {dt}"] = (cg._act_kernel, dict(a_ptr=ptr(dt), h_ptr=ptr(dt), s1_ptr=ptr(dt),
                                          s2_ptr=ptr(dt), N="i32", ACT="constexpr", BLOCK="constexpr"),
                                          dict(ACT=0, BLOCK=1024))
        cases[f"critic gate {dt}"] = (cg._gate_kernel, dict(dd_ptr=ptr(dt), s1_ptr=ptr(dt), m_ptr=ptr(dt),
                                      s2_ptr=ptr(dt), dm_ptr=ptr(dt), da_ptr=ptr(dt), N="i32", BLOCK="constexpr"),
                                      dict(BLOCK=1024))
        cases[f"mech coef smooth_leaky {dt}"] = (md._coef_kernel, dict(a_ptr=ptr(dt), c_ptr=ptr(dt), prm="fp64",
                                                 N="i32", ACT="constexpr", BLOCK="constexpr"), dict(ACT=5, BLOCK=128))
        cases[f"mech t3 {dt}"] = (md._t3_kernel, dict(a_ptr=ptr(dt), o_ptr=ptr(dt), c_ptr=ptr(dt), bc="i32", n="i32",
                                  dz="i32", P="i32", BLOCK="constexpr"), dict(BLOCK=128))
    out = {}
    for name, (fn, sig, constexprs) in cases.items():
        try:
            kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=target,
                                    options={"num_warps": 8})
            out[name] = None
            # Tensor cores by construction: every infonce tile product of 16-bit rows, of float32 rows under
            # tf32 / tf32x3, and of float64 rows (DMMA on sm_90) is a wgmma / mma instruction; only IEEE float32
            # products run on the FMA units.
            if name.split()[1] in ("fwd", "dq", "dk", "dqdk"):
                tensor_core = "wgmma.mma_async" in kernel.asm["ptx"] or "mma.sync" in kernel.asm["ptx"]
                want = not ("->fp32" in name and name.endswith("ieee"))
                if tensor_core != want:
                    out[name] = f"tensor-core instructions: {tensor_core}, expected {want}"
        except Exception as err:
            out[name] = f"{type(err).__name__}: {err}"[:2000]
    return out


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MCLCORE_TEST_TRITON_COMPILE") != "1",
                    reason="opt-in (about 20 s): set MCLCORE_TEST_TRITON_COMPILE=1")
def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--compile-sm90"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")]
    assert proc.returncode == 0 and lines, f"compile worker failed:\n{proc.stdout}\n{proc.stderr}"
    failed = {k: v for k, v in json.loads(lines[-1][5:]).items() if v}
    assert not failed, failed


if __name__ == "__main__":
    if "--compile-sm90" in sys.argv:
        import warnings

        warnings.simplefilter("ignore")
        print("JSON:" + json.dumps(_compile_sm90()))
    else:
        _worker()
