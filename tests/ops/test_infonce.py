"""infonce op (csrc/infonce, mclcore/ops/infonce.py) vs the pure-autograd reference (python/infonce.py).

Two kernel paths: training (``mclcore::infonce_with_grad``: loss and gradients in one call, which the public
function takes when a gradient is needed) and inference (``mclcore::infonce``, whose autograd formula calls
``mclcore::infonce_backward``). Most numerical tests run both through ``PATHS``. The last sections test the
rectangular mode (``offset``: B query rows against N >= B keys, the cross-rank InfoNCE).
"""
import ctypes
import math
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mclcore.ops.infonce import infonce
from python.infonce import infonce as ref_infonce
from python.infonce import sample_inputs

# Tolerances against the float64 reference: float64 computes natively; float32 accumulates in float32 (exp by a
# polynomial good to 1e-7 relative); half types are rounded once on input and computed in float32, so the comparison
# is against the float64 reference on the same rounded inputs.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}
# kColTile in csrc/infonce/infonce_cpu.cpp (rows come in blocks of <= 128): B = TILE + 1 = 257 ends on a one-column
# tile, B = 600 spans three column tiles and several row blocks.
TILE = 256


def fused(p, k, tau=0.1, *, groups=None, eps=1e-12, offset=None):
    """The training op called directly (its autograd formula scales the gradients it computed with the loss)."""
    return torch.ops.mclcore.infonce_with_grad.default(p, k, groups, tau, eps, offset)[0]


def plain(p, k, tau=0.1, *, groups=None, eps=1e-12, offset=None):
    """The inference op, differentiated through its registered backward (mclcore::infonce_backward)."""
    return torch.ops.mclcore.infonce.default(p, k, groups, tau, eps, offset)[0]


# "public" with inputs requiring grad takes the fused op (test_public_function_picks_the_kernel checks that).
PATHS = {"public": infonce, "fused": fused, "plain": plain}


def loss_and_grads(fn, p, k, **kw):
    loss = fn(p, k, **kw)
    dp, dk = torch.autograd.grad(loss, (p, k))
    return loss, dp, dk


def ref64(p, k, **kw):
    """Reference loss and gradients in float64 on the same (possibly rounded) inputs."""
    p64 = p.detach().double().requires_grad_()
    k64 = k.detach().double().requires_grad_()
    return loss_and_grads(ref_infonce, p64, k64, **kw)


@pytest.mark.parametrize("path", ["fused", "plain"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_groups", [None, 3])
@pytest.mark.parametrize("d", [1, 127])
@pytest.mark.parametrize("B", [2, 3, TILE + 1])
def test_matches_reference(B, d, n_groups, dtype, path):
    p, k, groups = sample_inputs(B, d, dtype=dtype, seed=B + d, n_groups=n_groups, requires_grad=True)
    loss, dp, dk = loss_and_grads(PATHS[path], p, k, tau=0.1, groups=groups)
    rl, rdp, rdk = ref64(p, k, tau=0.1, groups=groups)
    assert loss.shape == () and loss.dtype == dtype
    assert dp.dtype == dtype and dk.dtype == dtype
    torch.testing.assert_close(loss, rl.to(dtype), **TOL[dtype])
    # Absolute tolerance on the scale of the gradient before the normalisation's projection, |dq_i| / |p_i| ~
    # 1 / (B tau |p_i|): at d = 1 the true gradient is exactly 0 (q_i = +-1 cannot move) and what remains is the
    # rounding of dq_i - q_i (q_i . dq_i).
    min_norm = min(p.detach().double().norm(dim=1).min().item(), k.detach().double().norm(dim=1).min().item())
    scale = max(rdp.abs().max().item(), rdk.abs().max().item(), 1.0 / (B * 0.1 * min_norm))
    tol = dict(rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * scale)
    torch.testing.assert_close(dp, rdp.to(dtype), **tol)
    torch.testing.assert_close(dk, rdk.to(dtype), **tol)


@pytest.mark.parametrize("path", ["public", "plain"])
@pytest.mark.parametrize("tau", [0.01, 1.0, 5.0])
@pytest.mark.parametrize("n_groups", [None, 4])
def test_temperatures(tau, n_groups, path):
    # tau = 0.01 puts exp arguments down to -200: a fixed shift of 1/tau would underflow float32 there (the fused
    # path uses the fixed shift only for tau >= 0.025, the row maximum below).
    p, k, groups = sample_inputs(300, 16, dtype=torch.float32, seed=3, n_groups=n_groups, requires_grad=True)
    loss, dp, dk = loss_and_grads(PATHS[path], p, k, tau=tau, groups=groups)
    rl, rdp, rdk = ref64(p, k, tau=tau, groups=groups)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), rl, rtol=1e-5, atol=1e-5)
    scale = rdp.abs().max().item()
    torch.testing.assert_close(dp.double(), rdp, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(dk.double(), rdk, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("path", ["public", "plain"])
@pytest.mark.parametrize("n_groups", [None, 2])
def test_non_contiguous_inputs(n_groups, path):
    # p strides (1, B), k (2d, 2), groups (2,)
    p, k, groups = sample_inputs(37, 11, seed=1, n_groups=n_groups, requires_grad=True, contiguous=False)
    assert not p.is_contiguous() and not k.is_contiguous() and (groups is None or not groups.is_contiguous())
    loss, dp, dk = loss_and_grads(PATHS[path], p, k, tau=0.2, groups=groups)
    rl, rdp, rdk = ref64(p, k, tau=0.2, groups=groups)
    torch.testing.assert_close(loss, rl, **TOL[torch.float64])
    torch.testing.assert_close(dp, rdp, **TOL[torch.float64])
    torch.testing.assert_close(dk, rdk, **TOL[torch.float64])


@pytest.mark.parametrize("path", ["public", "plain"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_groups", [None, 5])
def test_half_precision_inputs_compute_in_float32(dtype, n_groups, path):
    p, k, groups = sample_inputs(70, 24, dtype=dtype, seed=5, n_groups=n_groups, requires_grad=True)
    loss, dp, dk = loss_and_grads(PATHS[path], p, k, tau=0.1, groups=groups)
    rl, rdp, rdk = ref64(p, k, tau=0.1, groups=groups)
    assert loss.dtype == torch.float32 and dp.dtype == dtype and dk.dtype == dtype
    torch.testing.assert_close(loss.double(), rl, rtol=1e-5, atol=1e-5)  # inputs are exact; compute is float32
    scale = rdp.abs().max().item()
    torch.testing.assert_close(dp.double(), rdp, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)
    torch.testing.assert_close(dk.double(), rdk, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)


def test_row_statistics():
    p, k, groups = sample_inputs(300, 9, seed=2, n_groups=7, requires_grad=True)
    q = p.detach() / p.detach().norm(dim=1, keepdim=True)
    kh = k.detach() / k.detach().norm(dim=1, keepdim=True)
    S = q @ kh.t() / 0.3
    loss, lse_all, lse_pos = torch.ops.mclcore.infonce(p.detach(), k.detach(), groups, 0.3, 1e-12)
    torch.testing.assert_close(lse_all, torch.logsumexp(S, 1), **TOL[torch.float64])
    same = groups[:, None] == groups[None, :]
    torch.testing.assert_close(lse_pos, torch.logsumexp(S.masked_fill(~same, -math.inf), 1), **TOL[torch.float64])
    _, _, diag = torch.ops.mclcore.infonce(p.detach(), k.detach(), None, 0.3, 1e-12)
    torch.testing.assert_close(diag, S.diagonal(), **TOL[torch.float64])
    for t in (loss, lse_all, lse_pos):
        assert t.is_contiguous()


@pytest.mark.parametrize("path", ["public", "plain"])
def test_zero_rows_follow_the_eps_branch(path):
    # q_i = p_i / eps for |p_i| <= eps: a zero row gives q_i = 0 and gradient dq_i / eps, like the reference.
    p, k, _ = sample_inputs(6, 4, seed=4, requires_grad=True)
    with torch.no_grad():
        p[2] = 0.0
        k[4] = 1e-3
    for eps in (1e-12, 1e-2):
        loss, dp, dk = loss_and_grads(PATHS[path], p, k, tau=0.5, eps=eps)
        rl, rdp, rdk = ref64(p, k, tau=0.5, eps=eps)
        torch.testing.assert_close(loss, rl, **TOL[torch.float64])
        torch.testing.assert_close(dp, rdp, rtol=1e-9, atol=1e-12 * rdp.abs().max().item())
        torch.testing.assert_close(dk, rdk, rtol=1e-9, atol=1e-12 * rdk.abs().max().item())


def test_large_finite_values_do_not_overflow_the_norm():
    # Entries near FLT_MAX: the squares overflow float32 (the kernel falls back to a rescaled float64 norm) and so
    # does the wrapper's one-sum finiteness test (it falls back to the exact check): still finite, still right.
    p, k, _ = sample_inputs(5, 3, dtype=torch.float32, seed=6, requires_grad=True)
    with torch.no_grad():
        big = p / p.abs().max() * 3e38
    assert torch.isinf(big.sum() * 2) or torch.isinf((big * big).sum())
    loss, dp, _ = loss_and_grads(infonce, big.requires_grad_(), k)
    torch.testing.assert_close(loss, infonce(p, k), rtol=1e-6, atol=1e-6)
    assert bool(torch.isfinite(dp).all())


def test_inference_mode_and_direct_backward_call():
    # The kernels' worker threads do not inherit the caller's inference-mode TLS: they must still write into the
    # (inference) tensors allocated by the calling thread.
    p, k, groups = sample_inputs(300, 16, dtype=torch.float32, seed=7, n_groups=4)
    expect = infonce(p, k, groups=groups)
    _, la, lp = torch.ops.mclcore.infonce(p, k, groups, 0.1, 1e-12)
    dp, dk = torch.ops.mclcore.infonce_backward(torch.tensor(2.0), p, k, groups, la, lp, 0.1, 1e-12)
    with torch.inference_mode():
        torch.testing.assert_close(infonce(p, k, groups=groups), expect)
        _, la2, lp2 = torch.ops.mclcore.infonce(p, k, groups, 0.1, 1e-12)
        dp2, dk2 = torch.ops.mclcore.infonce_backward(torch.tensor(2.0), p, k, groups, la2, lp2, 0.1, 1e-12)
    torch.testing.assert_close(dp2, dp)
    torch.testing.assert_close(dk2, dk)
    _, rdp, rdk = ref64(p, k, groups=groups)
    torch.testing.assert_close(dp.double(), 2 * rdp, rtol=1e-4, atol=1e-6 * rdp.abs().max().item())


@pytest.mark.parametrize("n_groups", [None, 3])
def test_dk_accumulation_paths_agree(monkeypatch, n_groups):
    # Per-thread dk buffers (default) and the second pass over column blocks (budget 0) must give the same result.
    p, k, groups = sample_inputs(2 * TILE + 88, 20, dtype=torch.float64, seed=8, n_groups=n_groups, requires_grad=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the two-pass path only differs with more than one worker
    try:
        _, dp1, dk1 = loss_and_grads(infonce, p, k, groups=groups)
        monkeypatch.setenv("MCLCORE_INFONCE_PARTIAL_BYTES", "0")
        _, dp2, dk2 = loss_and_grads(infonce, p, k, groups=groups)
        torch.set_num_threads(1)
        _, dp3, dk3 = loss_and_grads(infonce, p, k, groups=groups)
    finally:
        torch.set_num_threads(threads)
    _, rdp, rdk = ref64(p, k, groups=groups)
    for dp, dk in ((dp1, dk1), (dp2, dk2), (dp3, dk3)):
        torch.testing.assert_close(dp, rdp, **TOL[torch.float64])
        torch.testing.assert_close(dk, rdk, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_groups", [None, 3])
def test_with_grad_returns_the_loss_and_its_gradients(dtype, n_groups):
    # The raw outputs, no autograd: infonce's loss and d loss / dp, d loss / dk for an upstream gradient of 1.
    p, k, groups = sample_inputs(TILE + 1, 33, dtype=dtype, seed=15, n_groups=n_groups, requires_grad=True)
    p, k = p.detach(), k.detach()
    loss, dp, dk = torch.ops.mclcore.infonce_with_grad(p, k, groups, 0.1, 1e-12)
    rl, rdp, rdk = ref64(p, k, tau=0.1, groups=groups)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.shape == () and loss.dtype == ct
    assert dp.dtype == dtype and dk.dtype == dtype and dp.is_contiguous() and dk.is_contiguous()
    exact = dtype == torch.float64
    torch.testing.assert_close(loss.double(), rl, rtol=1e-10 if exact else 1e-5, atol=1e-12 if exact else 1e-6)
    torch.testing.assert_close(loss, torch.ops.mclcore.infonce(p, k, groups, 0.1, 1e-12)[0],
                               rtol=1e-10 if exact else 1e-5, atol=1e-12 if exact else 1e-6)
    scale = max(rdp.abs().max().item(), rdk.abs().max().item())
    tol = dict(rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * scale)
    torch.testing.assert_close(dp.double(), rdp, **tol)
    torch.testing.assert_close(dk.double(), rdk, **tol)


@pytest.mark.parametrize("path", ["public", "plain"])
@pytest.mark.parametrize("dtype, tau", [(torch.float32, 0.01), (torch.float64, 0.002)])
def test_multi_positive_with_positives_far_below_the_row_maximum(dtype, tau, path):
    # Rows of group 0 meet their positives head-on at S ~ -1/tau and every negative at S ~ +1/tau, so
    # lse_all - lse_pos ~ 2/tau: exp(S_ij - max_j S_ij) of those positives underflows (below -87 in float32, -708 in
    # float64), and the fused kernel recomputes them with their own maximum. Small tau keeps it off the fixed shift.
    B, d = 40, 3
    gen = torch.Generator().manual_seed(16)
    groups = torch.arange(B) % 4
    axis = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    sign = torch.where(groups == 0, -1.0, 1.0).to(torch.float64)[:, None]
    p = (torch.randn(B, d, generator=gen, dtype=torch.float64) * 0.05 + axis).to(dtype).requires_grad_()
    k = (torch.randn(B, d, generator=gen, dtype=torch.float64) * 0.05 + sign * axis).to(dtype).requires_grad_()
    _, la, lp = torch.ops.mclcore.infonce(p.detach(), k.detach(), groups, tau, 1e-12)
    assert (la - lp).max().item() > 1.5 / tau
    loss, dp, dk = loss_and_grads(PATHS[path], p, k, tau=tau, groups=groups)
    rl, rdp, rdk = ref64(p, k, tau=tau, groups=groups)
    scale = max(rdp.abs().max().item(), rdk.abs().max().item())
    if dtype == torch.float64:
        loss_tol, grad_tol = dict(rtol=1e-10, atol=1e-10), dict(rtol=1e-8, atol=1e-11 * scale)
    else:
        loss_tol, grad_tol = dict(rtol=1e-5, atol=1e-5), dict(rtol=1e-4, atol=3e-5 * scale)
    torch.testing.assert_close(loss.double(), rl, **loss_tol)
    torch.testing.assert_close(dp.double(), rdp, **grad_tol)
    torch.testing.assert_close(dk.double(), rdk, **grad_tol)


@pytest.mark.parametrize("n_groups", [None, 3])
def test_fused_budget_paths_agree(monkeypatch, n_groups):
    # infonce_with_grad with its default panels (one row block per worker here), with the panel budget cut to 128
    # rows per worker (several blocks per worker: dk and dp accumulate block by block) and with no budget (the
    # large-B fallback: forward_kernel + backward_kernel), on 2 threads and on 1.
    B = 2 * TILE + 88
    p, k, groups = sample_inputs(B, 20, dtype=torch.float64, seed=17, n_groups=n_groups, requires_grad=True)
    rl, rdp, rdk = ref64(p, k, groups=groups)
    threads = torch.get_num_threads()
    try:
        for nt in (2, 1):
            torch.set_num_threads(nt)
            for budget in (None, str(nt * B * 8 * 128), "0"):
                if budget is None:
                    monkeypatch.delenv("MCLCORE_INFONCE_FUSED_BYTES", raising=False)
                else:
                    monkeypatch.setenv("MCLCORE_INFONCE_FUSED_BYTES", budget)
                loss, dp, dk = loss_and_grads(infonce, p, k, groups=groups)
                torch.testing.assert_close(loss, rl, **TOL[torch.float64])
                torch.testing.assert_close(dp, rdp, **TOL[torch.float64])
                torch.testing.assert_close(dk, rdk, **TOL[torch.float64])
    finally:
        torch.set_num_threads(threads)


def test_public_function_picks_the_kernel():
    # Gradients needed (grad mode on and p or k requiring grad): the fused training op; otherwise the plain one.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func).startswith("mclcore."):
                self.seen.add(str(func))
            return func(*args, **(kwargs or {}))

    def kernels(fn):
        with Ops() as mode:
            fn()
        return mode.seen

    p, k, _ = sample_inputs(8, 3, dtype=torch.float32, seed=18, requires_grad=True)
    fused_op, plain_op = {"mclcore.infonce_with_grad.default"}, {"mclcore.infonce.default"}
    assert kernels(lambda: infonce(p, k)) == fused_op
    assert kernels(lambda: infonce(p.detach(), k)) == fused_op
    assert kernels(lambda: infonce(p.detach(), k.detach())) == plain_op
    with torch.no_grad():
        assert kernels(lambda: infonce(p, k)) == plain_op
    with torch.inference_mode():
        assert kernels(lambda: infonce(p, k)) == plain_op


def test_fused_backward_scales_by_the_upstream_gradient():
    # Saved gradients times grad_loss, also when only one input requires grad, and twice on a retained graph.
    p, k, groups = sample_inputs(50, 6, seed=19, n_groups=4, requires_grad=True)
    loss = infonce(p, k, groups=groups)
    g = torch.tensor(-2.5, dtype=torch.float64)
    dp, dk = torch.autograd.grad(loss, (p, k), g, retain_graph=True)
    dp2, dk2 = torch.autograd.grad(loss, (p, k), g)
    _, rdp, rdk = ref64(p, k, groups=groups)
    for a, b in ((dp, g * rdp), (dk, g * rdk), (dp2, dp), (dk2, dk)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    (dk_only,) = torch.autograd.grad(infonce(p.detach(), k, groups=groups), (k,))
    torch.testing.assert_close(dk_only, rdk, **TOL[torch.float64])


# ---------------------------------------------------------------------------------------------------------------
# Registration: opcheck, gradcheck, torch.compile.


@pytest.mark.parametrize("n_groups", [None, 2])
def test_opcheck(n_groups):
    p, k, groups = sample_inputs(9, 5, seed=9, n_groups=n_groups, requires_grad=True)
    torch.library.opcheck(torch.ops.mclcore.infonce.default, (p, k, groups, 0.1, 1e-12))
    torch.library.opcheck(torch.ops.mclcore.infonce_with_grad.default, (p, k, groups, 0.1, 1e-12))
    _, lse_all, lse_pos = torch.ops.mclcore.infonce(p.detach(), k.detach(), groups, 0.1, 1e-12)
    g = torch.tensor(1.3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.mclcore.infonce_backward.default,
                          (g, p.detach(), k.detach(), groups, lse_all, lse_pos, 0.1, 1e-12))


def test_opcheck_non_contiguous_and_half():
    p, k, _ = sample_inputs(7, 6, requires_grad=True, contiguous=False)
    assert not p.is_contiguous() and not k.is_contiguous()
    torch.library.opcheck(torch.ops.mclcore.infonce.default, (p, k, None, 0.5, 1e-12))
    torch.library.opcheck(torch.ops.mclcore.infonce_with_grad.default, (p, k, None, 0.5, 1e-12))
    ph, kh, _ = sample_inputs(7, 6, dtype=torch.bfloat16, seed=1)
    torch.library.opcheck(torch.ops.mclcore.infonce.default, (ph, kh, None, 0.5, 1e-12))
    torch.library.opcheck(torch.ops.mclcore.infonce_with_grad.default, (ph.requires_grad_(), kh, None, 0.5, 1e-12))


@pytest.mark.parametrize("n_groups", [None, 2])
def test_gradcheck_op_float64(n_groups):
    p, k, groups = sample_inputs(6, 4, seed=10, n_groups=n_groups, requires_grad=True)

    def fn(p, k):
        return torch.ops.mclcore.infonce(p, k, groups, 0.4, 1e-12)[0]

    assert torch.autograd.gradcheck(fn, (p, k))


@pytest.mark.parametrize("budget", [None, "0"])
def test_gradcheck_wrapper_float64(monkeypatch, budget):
    # The public function with inputs requiring grad: the fused op, with its panels and with the recompute fallback.
    if budget is not None:
        monkeypatch.setenv("MCLCORE_INFONCE_FUSED_BYTES", budget)
    p, k, groups = sample_inputs(5, 3, seed=11, n_groups=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, k: infonce(p, k, 0.3, groups=groups), (p, k))
    assert torch.autograd.gradcheck(lambda p, k: infonce(p, k, 0.3), (p, k))


@pytest.mark.parametrize("n_groups", [None, 3])
def test_torch_compile_fullgraph(n_groups):
    p, k, groups = sample_inputs(40, 8, dtype=torch.float32, seed=12, n_groups=n_groups, requires_grad=True)

    def fn(p, k, groups, tau):
        # the op between other ops, so the fake kernel's shapes and dtypes feed the surrounding graph
        return infonce(torch.tanh(p), k * 2.0, tau, groups=groups) * 3.0

    # dynamic=True: symbolic B in the fake kernels and a symbolic tau through the wrapper's checks
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for tau in (0.2, 0.5):
        expect = loss_and_grads(lambda p, k: fn(p, k, groups, tau), p, k)
        got = loss_and_grads(lambda p, k: compiled(p, k, groups, tau), p, k)
        for a, b in zip(got, expect):
            torch.testing.assert_close(a, b)
    p2, k2, groups2 = sample_inputs(23, 8, dtype=torch.float32, seed=14, n_groups=n_groups, requires_grad=True)
    torch.testing.assert_close(compiled(p2, k2, groups2, 0.2), fn(p2, k2, groups2, 0.2))
    with torch.no_grad():  # the inference kernel, mclcore::infonce, in a graph of its own
        torch.testing.assert_close(compiled(p2, k2, groups2, 0.2), fn(p2, k2, groups2, 0.2))


# ---------------------------------------------------------------------------------------------------------------
# Properties.

shapes = dict(B=st.integers(2, 40), d=st.integers(1, 16), seed=st.integers(0, 2**16))


@given(**shapes, n_groups=st.sampled_from([None, 1, 2, 5]), log_sp=st.floats(-3, 3), log_sk=st.floats(-3, 3))
def test_property_invariant_to_positive_row_scaling(B, d, seed, n_groups, log_sp, log_sk):
    p, k, groups = sample_inputs(B, d, seed=seed, n_groups=n_groups, requires_grad=True)
    gen = torch.Generator().manual_seed(seed + 1)
    sp = torch.exp(log_sp + torch.rand(B, 1, generator=gen, dtype=torch.float64))
    sk = torch.exp(log_sk + torch.rand(B, 1, generator=gen, dtype=torch.float64))
    base = infonce(p, k, 0.1, groups=groups)
    torch.testing.assert_close(infonce(p * sp, k * sk, 0.1, groups=groups), base, rtol=1e-12, atol=1e-12)


@given(**shapes, n_groups=st.sampled_from([None, 1, 3]), tau=st.floats(0.005, 10.0))
def test_property_loss_is_nonnegative(B, d, seed, n_groups, tau):
    p, k, groups = sample_inputs(B, d, dtype=torch.float32, seed=seed, n_groups=n_groups, requires_grad=True)
    with torch.no_grad():
        k.copy_(p if seed % 2 else k)  # aligned pairs push the loss towards its floor of 0
    loss, lse_all, lse_pos = torch.ops.mclcore.infonce(p.detach(), k.detach(), groups, tau, 1e-12)
    assert loss.item() >= 0
    # The row statistics themselves: a log-sum-exp over a subset never exceeds the one over all columns.
    assert bool((lse_all >= lse_pos - 1e-6 * lse_all.abs().clamp_min(1)).all())


@given(**shapes, n_groups=st.sampled_from([None, 2, 4]))
def test_property_consistent_permutation_leaves_loss_unchanged(B, d, seed, n_groups):
    p, k, groups = sample_inputs(B, d, seed=seed, n_groups=n_groups, requires_grad=True)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    g_perm = None if groups is None else groups[perm]
    torch.testing.assert_close(infonce(p[perm], k[perm], 0.1, groups=g_perm), infonce(p, k, 0.1, groups=groups),
                               rtol=1e-12, atol=1e-12)


@given(**shapes)
def test_property_distinct_groups_equal_diagonal_mode(B, d, seed):
    p, k, _ = sample_inputs(B, d, seed=seed, requires_grad=True)
    ids = torch.randperm(B, generator=torch.Generator().manual_seed(seed)) * 7 - 3  # distinct, any integers
    a = loss_and_grads(infonce, p, k, groups=ids)
    b = loss_and_grads(infonce, p, k)
    for x, y in zip(a, b):
        # atol 1e-12: at d = 1 the true gradients are 0 (a normalised 1-vector cannot turn), so both modes return
        # rounding noise of order 1e-14 whose difference an absolute 1e-14 cannot bound (hypothesis found 2.8e-14)
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_multi_positive_removes_the_log_group_size_floor():
    # 4 conditions x 8 rows, queries equal to their keys: diagonal mode is stuck at >= log 8, multi-positive is not.
    keys = torch.eye(4, 16, dtype=torch.float64).repeat_interleave(8, 0)
    groups = torch.arange(4).repeat_interleave(8)
    diag = infonce(keys.clone(), keys, 0.05)
    multi = infonce(keys.clone(), keys, 0.05, groups=groups)
    assert diag.item() >= math.log(8)
    assert multi.item() < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Memory: structural check of the tiling (the benchmark measures time and memory properly).


def _peak_extra_rss(fn):
    # Give freed heap memory back to the OS first: in the whole suite's process earlier tests left tens of MiB free
    # but resident, which a B x B tensor could reuse without raising the high-water mark (the reference measured 0
    # bytes in the full CI run of 2026-12-06, alone it measures > 64 MiB).
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):     # not glibc: the measurement keeps its premise check below
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident set

    def kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    base = kib("VmRSS")
    fn()
    return (kib("VmHWM") - base) * 1024


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_forward_backward_never_hold_a_b_by_b_tensor():
    B, d = 4096, 16
    p, k, _ = sample_inputs(B, d, dtype=torch.float32, seed=13, requires_grad=True)
    logits_bytes = B * B * 4  # 64 MiB: one B x B float32 tensor

    def op():
        infonce(p, k).backward()

    def ref():
        ref_infonce(p, k).backward()

    op()  # warm up threads and allocator pools
    op_peak = _peak_extra_rss(op)
    ref_peak = _peak_extra_rss(ref)
    assert ref_peak > logits_bytes  # the measurement sees a B x B tensor when there is one
    assert op_peak < logits_bytes / 8, f"op peak {op_peak / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs.


def test_bad_inputs_python_errors():
    p, k, groups = sample_inputs(4, 3, n_groups=2, requires_grad=True)
    with pytest.raises(ValueError, match="p: expected a 2-D"):
        infonce(p[0], k)
    with pytest.raises(ValueError, match="k: expected a 2-D"):
        infonce(p, k.reshape(-1))
    with pytest.raises(ValueError, match=r"k: expected the shape of p \(4, 3\)"):
        infonce(p, k[:, :2])
    with pytest.raises(ValueError, match="p: expected a batch of at least 2 rows"):
        infonce(p[:1], k[:1])
    for tau in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau: expected a positive finite number"):
            infonce(p, k, tau)
    with pytest.raises(TypeError, match="tau: expected a positive finite number"):
        infonce(p, k, "warm")
    with pytest.raises(ValueError, match="eps: expected a positive finite number"):
        infonce(p, k, eps=0.0)
    with pytest.raises(ValueError, match="p: contains NaN or infinite"):
        infonce(p.detach().index_fill(0, torch.tensor([1]), float("nan")), k)
    with pytest.raises(ValueError, match="k: contains NaN or infinite"):
        infonce(p, k.detach().index_fill(0, torch.tensor([2]), float("inf")))
    with pytest.raises(ValueError, match=r"groups: expected shape \(4,\)"):
        infonce(p, k, groups=groups[:3])
    with pytest.raises(TypeError, match="groups: expected an integer dtype"):
        infonce(p, k, groups=groups.double())
    with pytest.raises(TypeError, match="groups: expected a"):
        infonce(p, k, groups=[0, 1, 0, 1])
    with pytest.raises(TypeError, match=r"k: expected the dtype of p \(torch.float64\)"):
        infonce(p, k.float())
    with pytest.raises(TypeError, match="p: expected a floating-point"):
        infonce(torch.ones(4, 3, dtype=torch.int64), k)
    # int32 ids are accepted and mean the same as int64
    torch.testing.assert_close(infonce(p, k, groups=groups.int()), infonce(p, k, groups=groups))


def test_bad_inputs_kernel_errors():
    # The C++ checks stand on their own for callers of torch.ops.mclcore.infonce.
    p, k, groups = sample_inputs(4, 3, n_groups=2)
    op = torch.ops.mclcore.infonce
    with pytest.raises(RuntimeError, match="p contains NaN or infinite values"):
        op(p.index_fill(0, torch.tensor([3]), float("nan")), k, None, 0.1, 1e-12)
    with pytest.raises(RuntimeError, match="B >= 2"):
        op(p[:1], k[:1], None, 0.1, 1e-12)
    with pytest.raises(RuntimeError, match="same shape"):
        op(p, k[:3], None, 0.1, 1e-12)
    with pytest.raises(RuntimeError, match="same dtype"):
        op(p, k.float(), None, 0.1, 1e-12)
    with pytest.raises(RuntimeError, match="groups must be int64"):
        op(p, k, groups.int(), 0.1, 1e-12)
    with pytest.raises(RuntimeError, match=r"groups must have shape \(B,\)"):
        op(p, k, groups[:2], 0.1, 1e-12)
    with pytest.raises(RuntimeError, match="tau must be a positive finite"):
        op(p, k, None, 0.0, 1e-12)
    _, la, lp = op(p, k, None, 0.1, 1e-12)
    with pytest.raises(RuntimeError, match="lse_all/lse_pos must be"):
        torch.ops.mclcore.infonce_backward(torch.tensor(1.0), p, k, None, la.float(), lp, 0.1, 1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Rectangular mode (offset given): B query rows against N >= B keys, row i's positive at key offset + i.


def offsets(B, N):
    """The first, a middle and the last block of B keys (the positions of rank 0, a middle rank, the last rank)."""
    return sorted({0, (N - B) // 2, N - B})


RECT = [(B, d, off) for B in (1, 7) for d in (5, 67) for off in offsets(B, 3 * B)]


@pytest.mark.parametrize("path", ["fused", "plain", "public"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_groups", [None, 3])
@pytest.mark.parametrize("B, d, offset", RECT)
def test_rectangular_matches_reference(B, d, offset, n_groups, dtype, path):
    N = 3 * B
    p, k, groups = sample_inputs(B, d, n_keys=N, dtype=dtype, seed=B + d + offset, n_groups=n_groups,
                                 requires_grad=True)
    loss, dp, dk = loss_and_grads(PATHS[path], p, k, tau=0.1, groups=groups, offset=offset)
    rl, rdp, rdk = ref64(p, k, tau=0.1, groups=groups, offset=offset)
    assert loss.shape == () and loss.dtype == dtype and dp.shape == (B, d) and dk.shape == (N, d)
    torch.testing.assert_close(loss, rl.to(dtype), **TOL[dtype])
    scale = max(rdp.abs().max().item(), rdk.abs().max().item())
    tol = dict(rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * scale)
    torch.testing.assert_close(dp, rdp.to(dtype), **tol)
    torch.testing.assert_close(dk, rdk.to(dtype), **tol)


@pytest.mark.parametrize("path", ["fused", "plain"])
@pytest.mark.parametrize("n_groups", [None, 5])
def test_rectangular_over_several_tiles(n_groups, path):
    # B = TILE + 1 rows (several row blocks) against N = 3B keys (four column tiles, the last ragged); the offset of
    # the middle block is not a multiple of any tile, so positives straddle tile edges.
    B = TILE + 1
    N = 3 * B
    for offset in (0, B, N - B):
        p, k, groups = sample_inputs(B, 20, n_keys=N, seed=offset, n_groups=n_groups, requires_grad=True)
        got = loss_and_grads(PATHS[path], p, k, groups=groups, offset=offset)
        for a, b in zip(got, ref64(p, k, groups=groups, offset=offset)):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("path", ["public", "plain"])
@pytest.mark.parametrize("n_groups", [None, 2])
def test_rectangular_non_contiguous_inputs(n_groups, path):
    p, k, groups = sample_inputs(7, 11, n_keys=21, seed=1, n_groups=n_groups, requires_grad=True, contiguous=False)
    assert not p.is_contiguous() and not k.is_contiguous() and (groups is None or not groups.is_contiguous())
    got = loss_and_grads(PATHS[path], p, k, tau=0.2, groups=groups, offset=9)
    for a, b in zip(got, ref64(p, k, tau=0.2, groups=groups, offset=9)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_groups", [None, 5])
def test_rectangular_half_precision_inputs(dtype, n_groups):
    p, k, groups = sample_inputs(30, 24, n_keys=90, dtype=dtype, seed=5, n_groups=n_groups, requires_grad=True)
    loss, dp, dk = loss_and_grads(infonce, p, k, groups=groups, offset=60)
    rl, rdp, rdk = ref64(p, k, groups=groups, offset=60)
    assert loss.dtype == torch.float32 and dp.dtype == dtype and dk.dtype == dtype
    torch.testing.assert_close(loss.double(), rl, rtol=1e-5, atol=1e-5)  # inputs are exact; compute is float32
    scale = max(rdp.abs().max().item(), rdk.abs().max().item())
    torch.testing.assert_close(dp.double(), rdp, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)
    torch.testing.assert_close(dk.double(), rdk, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)


@pytest.mark.parametrize("path", ["fused", "plain", "public"])
@pytest.mark.parametrize("n_groups", [None, 3])
def test_rectangular_with_n_equal_b_offset_0_is_the_square_mode(n_groups, path):
    # Same kernels, same tiles: bit for bit, in float32 where a different summation order would show.
    p, k, groups = sample_inputs(40, 9, dtype=torch.float32, seed=20, n_groups=n_groups, requires_grad=True)
    square = loss_and_grads(PATHS[path], p, k, groups=groups)
    rect = loss_and_grads(PATHS[path], p, k, groups=groups, offset=0)
    for a, b in zip(rect, square):
        assert torch.equal(a, b)
    stats = torch.ops.mclcore.infonce(p.detach(), k.detach(), groups, 0.1, 1e-12, 0)
    for a, b in zip(stats, torch.ops.mclcore.infonce(p.detach(), k.detach(), groups, 0.1, 1e-12)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n_groups", [None, 4])
@pytest.mark.parametrize("path", ["public", "plain"])
def test_per_rank_losses_make_the_square_loss_of_the_whole_batch(world, n_groups, path):
    # The cross-rank decomposition: rank r holds rows r B .. r B + B - 1 of the batch and meets every key. The mean of
    # the ranks' losses is the square loss of the whole batch; the rows' dp, concatenated, are world times the whole
    # batch's (each rank's mean is over B rows, not world B); the ranks' dk summed (what the all-gather's backward
    # adds up) are world times the whole batch's dk.
    B, d = 9, 6
    N = world * B
    p, k, groups = sample_inputs(N, d, seed=21 + world, n_groups=n_groups, requires_grad=True)
    full, fdp, fdk = loss_and_grads(PATHS[path], p, k, groups=groups)
    losses, dps, dks = [], [], []
    for r in range(world):
        pr = p.detach()[r * B:(r + 1) * B].clone().requires_grad_()
        kr = k.detach().clone().requires_grad_()
        loss, dp, dk = loss_and_grads(PATHS[path], pr, kr, groups=groups, offset=r * B)
        losses.append(loss)
        dps.append(dp)
        dks.append(dk)
    torch.testing.assert_close(torch.stack(losses).mean(), full, **TOL[torch.float64])
    torch.testing.assert_close(torch.cat(dps) / world, fdp, **TOL[torch.float64])
    torch.testing.assert_close(torch.stack(dks).sum(0) / world, fdk, **TOL[torch.float64])


@pytest.mark.parametrize("n_groups", [None, 3])
def test_rectangular_accumulation_paths_agree(monkeypatch, n_groups):
    # B = 300 rows against N = 900 keys, 2 threads: per-thread dk buffers (default), the second pass over column blocks
    # of keys (partial budget 0), the fused panels (R_f x N) and their recompute fallback (fused budget 0), and 1
    # thread: the same gradients.
    B, N = 300, 900
    p, k, groups = sample_inputs(B, 20, n_keys=N, seed=22, n_groups=n_groups, requires_grad=True)
    rl, rdp, rdk = ref64(p, k, groups=groups, offset=450)
    threads = torch.get_num_threads()
    try:
        for nt in (2, 1):
            torch.set_num_threads(nt)
            for env in ({}, {"MCLCORE_INFONCE_PARTIAL_BYTES": "0"}, {"MCLCORE_INFONCE_FUSED_BYTES": "0"},
                        {"MCLCORE_INFONCE_PARTIAL_BYTES": "0", "MCLCORE_INFONCE_FUSED_BYTES": "0"}):
                for var in ("MCLCORE_INFONCE_PARTIAL_BYTES", "MCLCORE_INFONCE_FUSED_BYTES"):
                    monkeypatch.delenv(var, raising=False)
                for var, value in env.items():
                    monkeypatch.setenv(var, value)
                for fn in (infonce, plain):
                    got = loss_and_grads(fn, p, k, groups=groups, offset=450)
                    for a, b in zip(got, (rl, rdp, rdk)):
                        torch.testing.assert_close(a, b, **TOL[torch.float64])
    finally:
        torch.set_num_threads(threads)


def test_rectangular_row_statistics():
    p, k, groups = sample_inputs(30, 9, n_keys=120, seed=23, n_groups=7)
    q = p / p.norm(dim=1, keepdim=True)
    kh = k / k.norm(dim=1, keepdim=True)
    S = q @ kh.t() / 0.3                                        # (30, 120)
    own = torch.arange(30) + 50                                 # positive columns
    _, lse_all, lse_pos = torch.ops.mclcore.infonce(p, k, groups, 0.3, 1e-12, 50)
    torch.testing.assert_close(lse_all, torch.logsumexp(S, 1), **TOL[torch.float64])
    same = groups[own][:, None] == groups[None, :]
    torch.testing.assert_close(lse_pos, torch.logsumexp(S.masked_fill(~same, -math.inf), 1), **TOL[torch.float64])
    _, _, diag = torch.ops.mclcore.infonce(p, k, None, 0.3, 1e-12, 50)
    torch.testing.assert_close(diag, S[torch.arange(30), own], **TOL[torch.float64])


def test_rectangular_member_stacked():
    # p (M, B, d), k (M, N, d), groups (M, N): member m equals the unstacked call on its slices, all three ops.
    M, B, N, d, off = 3, 5, 15, 4, 10
    ms = [sample_inputs(B, d, n_keys=N, seed=30 + m, n_groups=3) for m in range(M)]
    p, k, g = (torch.stack([x[i] for x in ms]) for i in range(3))
    tol = TOL[torch.float64]
    fwd = torch.ops.mclcore.infonce(p, k, g, 0.2, 1e-12, off)
    assert fwd[0].shape == (M,) and fwd[1].shape == (M, B)
    wg = torch.ops.mclcore.infonce_with_grad(p, k, g, 0.2, 1e-12, off)
    assert wg[2].shape == (M, N, d)
    gl = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    bwd = torch.ops.mclcore.infonce_backward(gl, p, k, g, fwd[1], fwd[2], 0.2, 1e-12, off)
    for m in range(M):
        one = torch.ops.mclcore.infonce(p[m], k[m], g[m], 0.2, 1e-12, off)
        for a, b in zip(fwd, one):
            torch.testing.assert_close(a[m], b, **tol)
        for a, b in zip(wg, torch.ops.mclcore.infonce_with_grad(p[m], k[m], g[m], 0.2, 1e-12, off)):
            torch.testing.assert_close(a[m], b, **tol)
        for a, b in zip(bwd, torch.ops.mclcore.infonce_backward(gl[m], p[m], k[m], g[m], one[1], one[2], 0.2, 1e-12,
                                                                off)):
            torch.testing.assert_close(a[m], b, **tol)
    pl, kl = p.clone().requires_grad_(), k.clone().requires_grad_()
    got = infonce(pl, kl, 0.2, groups=g, offset=off)
    from python.infonce import infonce_stacked
    torch.testing.assert_close(got, infonce_stacked(p, k, 0.2, groups=g, offset=off), **tol)


@pytest.mark.parametrize("n_groups", [None, 2])
@pytest.mark.parametrize("offset", [0, 4, 9])
def test_rectangular_opcheck(n_groups, offset):
    p, k, groups = sample_inputs(3, 5, n_keys=12, seed=9, n_groups=n_groups, requires_grad=True)
    torch.library.opcheck(torch.ops.mclcore.infonce.default, (p, k, groups, 0.1, 1e-12, offset))
    torch.library.opcheck(torch.ops.mclcore.infonce_with_grad.default, (p, k, groups, 0.1, 1e-12, offset))
    _, lse_all, lse_pos = torch.ops.mclcore.infonce(p.detach(), k.detach(), groups, 0.1, 1e-12, offset)
    g = torch.tensor(1.3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.mclcore.infonce_backward.default,
                          (g, p.detach(), k.detach(), groups, lse_all, lse_pos, 0.1, 1e-12, offset))


def test_rectangular_opcheck_non_contiguous_and_half():
    p, k, _ = sample_inputs(2, 6, n_keys=7, requires_grad=True, contiguous=False)
    torch.library.opcheck(torch.ops.mclcore.infonce.default, (p, k, None, 0.5, 1e-12, 3))
    torch.library.opcheck(torch.ops.mclcore.infonce_with_grad.default, (p, k, None, 0.5, 1e-12, 5))
    ph, kh, _ = sample_inputs(2, 6, n_keys=7, dtype=torch.bfloat16, seed=1)
    torch.library.opcheck(torch.ops.mclcore.infonce_with_grad.default, (ph.requires_grad_(), kh, None, 0.5, 1e-12, 1))


@pytest.mark.parametrize("n_groups", [None, 2])
def test_rectangular_gradcheck_float64(n_groups):
    p, k, groups = sample_inputs(3, 4, n_keys=8, seed=10, n_groups=n_groups, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, k: torch.ops.mclcore.infonce(p, k, groups, 0.4, 1e-12, 2)[0], (p, k))
    assert torch.autograd.gradcheck(lambda p, k: infonce(p, k, 0.4, groups=groups, offset=5), (p, k))
    b1, k1, g1 = sample_inputs(1, 4, n_keys=3, seed=11, n_groups=n_groups, requires_grad=True)  # one query row
    assert torch.autograd.gradcheck(lambda p, k: infonce(p, k, 0.4, groups=g1, offset=2), (b1, k1))


def test_rectangular_torch_compile_fullgraph():
    p, k, groups = sample_inputs(10, 8, n_keys=30, dtype=torch.float32, seed=12, n_groups=3, requires_grad=True)

    def fn(p, k, groups, offset):
        return infonce(torch.tanh(p), k * 2.0, 0.2, groups=groups, offset=offset) * 3.0

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for offset in (0, 20):
        expect = loss_and_grads(lambda p, k: fn(p, k, groups, offset), p, k)
        got = loss_and_grads(lambda p, k: compiled(p, k, groups, offset), p, k)
        for a, b in zip(got, expect):
            torch.testing.assert_close(a, b)
    p2, k2, g2 = sample_inputs(7, 8, n_keys=28, dtype=torch.float32, seed=14, n_groups=3, requires_grad=True)
    torch.testing.assert_close(compiled(p2, k2, g2, 14), fn(p2, k2, g2, 14))


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_rectangular_never_holds_a_b_by_n_tensor():
    B, N, d = 2048, 8192, 16
    p, k, _ = sample_inputs(B, d, n_keys=N, dtype=torch.float32, seed=13, requires_grad=True)
    logits_bytes = B * N * 4  # 64 MiB: one B x N float32 tensor

    def op():
        infonce(p, k, offset=N - B).backward()

    def ref():
        ref_infonce(p, k, offset=N - B).backward()

    op()
    op_peak = _peak_extra_rss(op)
    ref_peak = _peak_extra_rss(ref)
    assert ref_peak > logits_bytes
    assert op_peak < logits_bytes / 4, f"op peak {op_peak / 2**20:.1f} MiB"


# Properties of the rectangular mode.


@given(B=st.integers(1, 12), extra=st.integers(0, 20), d=st.integers(1, 8), seed=st.integers(0, 2**16),
       n_groups=st.sampled_from([None, 1, 3]), where=st.floats(0, 1))
def test_property_rectangular_matches_reference(B, extra, d, seed, n_groups, where):
    N = max(B + extra, 2)
    offset = round(where * (N - B))
    p, k, groups = sample_inputs(B, d, n_keys=N, seed=seed, n_groups=n_groups, requires_grad=True)
    got = loss_and_grads(infonce, p, k, groups=groups, offset=offset)
    rl, rdp, rdk = ref64(p, k, groups=groups, offset=offset)
    torch.testing.assert_close(got[0], rl, rtol=1e-10, atol=1e-12)
    # atol 1e-12 on the gradients: at d = 1 the true gradients are 0 and both sides return rounding noise.
    torch.testing.assert_close(got[1], rdp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[2], rdk, rtol=1e-10, atol=1e-12)


@given(world=st.integers(1, 4), B=st.integers(1, 6), d=st.integers(1, 8), seed=st.integers(0, 2**16),
       n_groups=st.sampled_from([None, 2, 5]))
def test_property_rank_losses_average_to_the_square_loss(world, B, d, seed, n_groups):
    N = world * B
    if N < 2:
        return  # one row in all: no negatives, no InfoNCE
    p, k, groups = sample_inputs(N, d, seed=seed, n_groups=n_groups)
    parts = [infonce(p[r * B:(r + 1) * B], k, 0.1, groups=groups, offset=r * B) for r in range(world)]
    torch.testing.assert_close(torch.stack(parts).mean(), infonce(p, k, 0.1, groups=groups), rtol=1e-12,
                               atol=1e-12)


@given(B=st.integers(1, 10), extra=st.integers(1, 12), d=st.integers(1, 8), seed=st.integers(0, 2**16),
       n_groups=st.sampled_from([None, 3]))
def test_property_rectangular_invariant_to_a_consistent_key_permutation(B, extra, d, seed, n_groups):
    # Moving the block of positive keys to the front and shuffling the other keys changes nothing: the log-sum-exp
    # runs over a set of columns, and the positives move with their ids.
    N = B + extra
    offset = extra // 2
    p, k, groups = sample_inputs(B, d, n_keys=N, seed=seed, n_groups=n_groups)
    gen = torch.Generator().manual_seed(seed)
    pos = torch.arange(offset, offset + B)
    rest = torch.cat([torch.arange(0, offset), torch.arange(offset + B, N)])
    order = torch.cat([pos, rest[torch.randperm(rest.numel(), generator=gen)]])
    g2 = None if groups is None else groups[order]
    torch.testing.assert_close(infonce(p, k[order], 0.1, groups=g2, offset=0),
                               infonce(p, k, 0.1, groups=groups, offset=offset), rtol=1e-12, atol=1e-12)


def test_rectangular_bad_inputs_python_errors():
    p, k, groups = sample_inputs(4, 3, n_keys=12, n_groups=2, requires_grad=True)
    with pytest.raises(ValueError, match=r"k: expected the shape of p \(4, 3\).*offset="):
        infonce(p, k)                                               # more keys than rows, no offset
    for off in (-1, 9, 100):
        with pytest.raises(ValueError, match=r"offset: expected 0 <= offset <= N - B = 8 .*B = 4 rows, k N = 12.*"
                                             rf"got {off}"):
            infonce(p, k, offset=off)
    for off in (True, 1.0, "2", torch.tensor(1)):
        with pytest.raises(TypeError, match="offset: expected an integer"):
            infonce(p, k, offset=off)
    with pytest.raises(ValueError, match=r"groups: expected shape \(12,\), one id per row of k"):
        infonce(p, k, groups=groups[:4], offset=0)                  # ids of the query rows instead of the keys
    with pytest.raises(ValueError, match=r"k: expected shape \(N, 3\)"):
        infonce(p, k[:, :2], offset=0)
    with pytest.raises(ValueError, match=r"k: expected at least as many rows as p \(N >= B = 4\)"):
        infonce(p, k[:3], offset=0)
    with pytest.raises(ValueError, match="k: expected at least 2 key rows"):
        infonce(p[:1], k[:1], offset=0)
    with pytest.raises(ValueError, match=r"k: expected shape \(2, N, 3\)"):
        infonce(torch.stack([p, p]), torch.stack([k, k, k]), offset=0)
    torch.testing.assert_close(infonce(p[:1], k[:2], offset=1), ref_infonce(p[:1], k[:2], offset=1))  # B = 1 is fine


def test_rectangular_bad_inputs_kernel_errors():
    p, k, groups = sample_inputs(4, 3, n_keys=12, n_groups=2)
    op = torch.ops.mclcore.infonce
    with pytest.raises(RuntimeError, match=r"offset must satisfy 0 <= offset <= N - B = 8.*got offset = 9"):
        op(p, k, None, 0.1, 1e-12, 9)
    with pytest.raises(RuntimeError, match=r"offset must satisfy.*got offset = -1"):
        op(p, k, None, 0.1, 1e-12, -1)
    with pytest.raises(RuntimeError, match=r"groups must have shape \(N,\) = \(12,\) in rectangular mode"):
        op(p, k, groups[:4], 0.1, 1e-12, 0)
    with pytest.raises(RuntimeError, match=r"same number of features"):
        op(p, k[:, :2], None, 0.1, 1e-12, 0)
    with pytest.raises(RuntimeError, match=r"N >= B"):
        op(p, k[:3], None, 0.1, 1e-12, 0)
    with pytest.raises(RuntimeError, match=r"N >= 2"):
        op(p[:1], k[:1], None, 0.1, 1e-12, 0)
    with pytest.raises(RuntimeError, match=r"same shape.*need an offset"):
        op(p, k, None, 0.1, 1e-12)
    with pytest.raises(RuntimeError, match=r"k contains NaN or infinite values \(row 11\)"):
        op(p, k.index_fill(0, torch.tensor([11]), float("nan")), None, 0.1, 1e-12, 0)
    _, la, lp = op(p, k, None, 0.1, 1e-12, 8)
    with pytest.raises(RuntimeError, match=r"lse_all/lse_pos must have shape \(4,\)"):
        torch.ops.mclcore.infonce_backward(torch.tensor(1.0), p, k, None, la[:3], lp, 0.1, 1e-12, 8)
    with pytest.raises(RuntimeError, match=r"member-stacked p \(M, B, d\) with an offset needs k of shape"):
        op(torch.stack([p, p]), torch.stack([k, k, k]), None, 0.1, 1e-12, 0)
