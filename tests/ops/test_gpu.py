"""Correctness of the GPU backends (``triton`` and ``cuda``, mclcore/ops/_backend.py) on a CUDA device.

Skipped without one (marker ``gpu``). Every case runs under each backend: ``triton`` needs the triton package,
``cuda`` the CUDA C++ kernels of a CUDA build (``torch.ops.mclcore._cuda_<op>``); a backend that is absent is
skipped, except where the point is the error it raises.

Acceptance rule (issue #7): against a float64 reference on the same (rounded) inputs, the op's error is at most
twice the error of the pure-PyTorch reference (python/) run in the inputs' precision on the same device, or within a
floor of a few units of the input precision's rounding (a reference can be lucky on one sample; the floors are
written next to each use). Inputs: float32, bfloat16 and float16, odd sizes, non-contiguous rows, multi-positive
groups; gradients too.
"""
from __future__ import annotations

import os

import pytest
import torch

import mclcore
import mclcore.ops  # noqa: F401  (registers the ops)
from mclcore.ops import _backend, use_backend
from mclcore.ops.comp_contrast import comp_contrast
from mclcore.ops.critic_grad import critic_grad
from mclcore.ops.infonce import infonce
from mclcore.ops.mech_derivs import mech_derivs
from python.critic_grad import critic_grad as ref_critic_grad
from python.infonce import infonce as ref_infonce
from python.mech_derivs import mech_derivs as ref_mech_derivs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEV = "cuda"
# Unit roundoff of each input precision.
UNIT = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def _available(backend: str, op: str) -> bool:
    if backend == "triton":
        return _backend.triton_available()
    return _backend.cuda_available(op)


@pytest.fixture(params=["triton", "cuda"])
def backend(request):
    """Selects the backend for the duration of the test (tests call :func:`_need` for the op they exercise)."""
    with use_backend(request.param):
        yield request.param


def _need(backend: str, op: str) -> None:
    if not _available(backend, op):
        pytest.skip(f"backend {backend!r} has no kernel for {op} in this environment")


def _within(err: float, ref_err: float, floor: float, what: str):
    bound = max(2.0 * ref_err, floor)
    assert err <= bound, f"{what}: error {err:.3g} > {bound:.3g} (2x the same-precision reference: {ref_err:.3g})"


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------
# infonce


def _make(B, d, dtype, seed, n_groups=None, non_contiguous=False):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    p = torch.randn(B, d, generator=gen, dtype=torch.float64)
    k = torch.randn(B, d, generator=gen, dtype=torch.float64)
    groups = None if n_groups is None else torch.randint(0, n_groups, (B,), generator=gen).to(DEV)
    p, k = p.to(DEV, dtype), k.to(DEV, dtype)
    if non_contiguous:
        p = p.t().contiguous().t()
        k = torch.stack([k, k], 2)[:, :, 0]
    return p, k, groups


def _loss_grads(fn, p, k, groups, tau, dtype=None):
    """Loss and gradients of ``fn`` on p, k (cast to ``dtype`` when given; strides kept otherwise)."""
    p_ = p.detach().to(dtype or p.dtype).requires_grad_()
    k_ = k.detach().to(dtype or k.dtype).requires_grad_()
    loss = fn(p_, k_, tau, groups=groups)
    dp, dk = torch.autograd.grad(loss, (p_, k_))
    return loss.detach(), dp, dk


def _plain(p, k, tau, *, groups=None):
    """The inference op differentiated through mclcore::infonce_backward (the other kernel path)."""
    return torch.ops.mclcore.infonce.default(p, k, groups, tau, 1e-12)[0]


@pytest.mark.parametrize("path", ["public", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,d,n_groups,non_contiguous", [(2, 1, None, False), (257, 67, None, True),
                                                         (1000, 128, 8, False), (333, 5, 3, True)])
def test_infonce_matches_float64(backend, path, dtype, B, d, n_groups, non_contiguous):
    _need(backend, "infonce_with_grad" if path == "public" else "infonce_backward")
    tau = 0.1
    p, k, groups = _make(B, d, dtype, seed=B + d, n_groups=n_groups, non_contiguous=non_contiguous)
    fn = infonce if path == "public" else _plain
    loss, dp, dk = _loss_grads(fn, p, k, groups, tau)
    rl, rdp, rdk = _loss_grads(ref_infonce, p, k, groups, tau, torch.float64)
    sl, sdp, sdk = _loss_grads(ref_infonce, p, k, groups, tau, dtype)  # the same-precision reference
    assert loss.dtype == torch.float32 and dp.dtype == dtype and dk.dtype == dtype
    assert dp.is_contiguous() and dk.is_contiguous()
    u = UNIT[dtype]
    # Floors: rounding the unit rows to the input precision moves S_ij by ~2u/tau, the loss by about as much;
    # gradients relative to their scale (the d = 1 gradient is exactly 0: its scale is 1 / (B tau |p|)).
    norms = torch.cat([p.double().norm(dim=1), k.double().norm(dim=1)])
    scale = max(rdp.abs().max().item(), rdk.abs().max().item(), 1.0 / (B * tau * norms.min().item()))
    _within(_max_err(loss, rl), _max_err(sl, rl), 4 * u / tau, "loss")
    _within(_max_err(dp, rdp), _max_err(sdp, rdp), 16 * u * scale, "dp")
    _within(_max_err(dk, rdk), _max_err(sdk, rdk), 16 * u * scale, "dk")


@pytest.mark.parametrize("half_dot", [None, "input", "float32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,d,n_groups", [(257, 67, None), (1000, 128, 8)])
def test_infonce_triton_half_precision_paths(monkeypatch, half_dot, dtype, B, d, n_groups):
    # Default (None) = "input": 16-bit tensor-core products of the rows rounded to the input dtype, float32
    # accumulation (flash-attention convention); "float32": the exact opt-out, float32 products like the C++ op.
    if not _backend.triton_available():
        pytest.skip("triton does not import")
    if half_dot is None:
        monkeypatch.delenv("MCLCORE_TRITON_HALF_DOT", raising=False)
    else:
        monkeypatch.setenv("MCLCORE_TRITON_HALF_DOT", half_dot)
    tau = 0.1
    with use_backend("triton"):
        p, k, groups = _make(B, d, dtype, seed=B + 2 * d, n_groups=n_groups, non_contiguous=True)
        loss, dp, dk = _loss_grads(infonce, p, k, groups, tau)
    rl, rdp, rdk = _loss_grads(ref_infonce, p, k, groups, tau, torch.float64)
    sl, sdp, sdk = _loss_grads(ref_infonce, p, k, groups, tau, dtype)
    u = UNIT[dtype]
    scale = max(rdp.abs().max().item(), rdk.abs().max().item())
    _within(_max_err(loss, rl), _max_err(sl, rl), 4 * u / tau, "loss")
    _within(_max_err(dp, rdp), _max_err(sdp, rdp), 16 * u * scale, "dp")
    _within(_max_err(dk, rdk), _max_err(sdk, rdk), 16 * u * scale, "dk")


@pytest.mark.parametrize("tau", [0.01, 1.0])
def test_infonce_temperatures_and_row_statistics(backend, tau):
    _need(backend, "infonce_with_grad")
    p, k, groups = _make(513, 32, torch.float32, seed=3, n_groups=5)
    loss, la, lp = torch.ops.mclcore.infonce(p, k, groups, tau, 1e-12)
    q = p.double() / p.double().norm(dim=1, keepdim=True)
    kh = k.double() / k.double().norm(dim=1, keepdim=True)
    S = q @ kh.t() / tau
    same = groups[:, None] == groups[None, :]
    torch.testing.assert_close(la.double(), torch.logsumexp(S, 1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lp.double(), torch.logsumexp(S.masked_fill(~same, float("-inf")), 1), rtol=1e-5,
                               atol=1e-4)
    torch.testing.assert_close(loss.double(), (torch.logsumexp(S, 1) - lp.double()).mean(), rtol=1e-5, atol=1e-5)


def test_infonce_float64(backend):
    _need(backend, "infonce_with_grad")
    p, k, groups = _make(300, 17, torch.float64, seed=4, n_groups=4)
    loss, dp, dk = _loss_grads(infonce, p, k, groups, 0.2)
    rl, rdp, rdk = _loss_grads(ref_infonce, p, k, groups, 0.2, torch.float64)
    torch.testing.assert_close(loss, rl, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dp, rdp, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(dk, rdk, rtol=1e-9, atol=1e-12)


def test_infonce_matches_the_cpu_kernel(backend):
    _need(backend, "infonce_with_grad")
    p, k, groups = _make(301, 24, torch.float32, seed=5, n_groups=7)
    for a, b in zip(torch.ops.mclcore.infonce_with_grad(p, k, groups, 0.1, 1e-12),
                    torch.ops.mclcore.infonce_with_grad(p.cpu(), k.cpu(), groups.cpu(), 0.1, 1e-12)):
        assert a.device.type == "cuda" and a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-6)


def test_infonce_nonfinite_input(backend, monkeypatch):
    # Neither backend synchronises by default (the loss is NaN); MCLCORE_TRITON_CHECK_FINITE=1 resp.
    # MCLCORE_CUDA_CHECK_FINITE=1 (read at every call) checks, at one synchronisation per call.
    _need(backend, "infonce_with_grad")
    p, k, _ = _make(9, 4, torch.float32, seed=6)
    p[4, 2] = float("inf")
    var = "MCLCORE_TRITON_CHECK_FINITE" if backend == "triton" else "MCLCORE_CUDA_CHECK_FINITE"
    monkeypatch.delenv(var, raising=False)
    assert torch.isnan(infonce(p, k))
    monkeypatch.setenv(var, "1")
    with pytest.raises(ValueError, match="p: contains NaN or infinite values"):
        infonce(p, k)


@pytest.mark.parametrize("dtype,fp32_dot", [(torch.bfloat16, None), (torch.float16, None), (torch.float32, "tf32"),
                                           (torch.float32, "ieee"), (torch.float64, None)])
@pytest.mark.parametrize("B,N,d,n_groups", [(1000, 1000, 128, None), (257, 257, 67, 8), (300, 1200, 128, 5)])
def test_infonce_triton_backward_designs(monkeypatch, dtype, fp32_dot, B, N, d, n_groups):
    # The fused backward (one S per tile, dq by float32 atomic adds) and the split one (S twice, deterministic),
    # each forced, against the float64 reference (the 2x rule) and each other; square, multi-positive and
    # rectangular (offset = 2 B). float32 "ieee" forces the fused kernel where it spills (the default is split
    # there): still correct, only slower.
    if not _backend.triton_available():
        pytest.skip("triton does not import")
    from mclcore.ops import triton as tk

    if fp32_dot:
        monkeypatch.setenv("MCLCORE_TRITON_FP32_DOT", fp32_dot)
    gen = torch.Generator(device="cpu").manual_seed(B + N + d)
    p = torch.randn(B, d, generator=gen, dtype=torch.float64).to(DEV, dtype)
    k = torch.randn(N, d, generator=gen, dtype=torch.float64).to(DEV, dtype)
    groups = None if n_groups is None else torch.randint(0, n_groups, (N,), generator=gen).to(DEV)
    offset = None if N == B else 2 * B
    rect = {} if offset is None else {"offset": offset}
    tau = 0.1

    def ref(p_, k_, dt):
        p_, k_ = p_.detach().to(dt).requires_grad_(), k_.detach().to(dt).requires_grad_()
        loss = ref_infonce(p_, k_, tau, groups=groups, eps=1e-12, offset=offset)
        return torch.autograd.grad(loss, (p_, k_))

    rdp, rdk = ref(p, k, torch.float64)
    sdp, sdk = ref(p, k, dtype)
    scale = max(rdp.abs().max().item(), rdk.abs().max().item())
    u = 2.0**-11 if fp32_dot == "tf32" else UNIT[dtype]  # TF32 keeps 10 mantissa bits
    out = {}
    for design in ("fused", "split"):
        monkeypatch.setenv("MCLCORE_TRITON_INFONCE_BWD", design)
        loss, dp, dk = tk.infonce_with_grad(p, k, groups, tau, 1e-12, **rect)
        _, la, lp = tk.infonce(p, k, groups, tau, 1e-12, **rect)
        dp2, dk2 = tk.infonce_backward(torch.tensor(1.0, device=DEV, dtype=la.dtype), p, k, groups, la, lp, tau,
                                       1e-12, **rect)
        for name, a, r, s_ in (("dp", dp, rdp, sdp), ("dk", dk, rdk, sdk), ("dp bwd", dp2, rdp, sdp),
                               ("dk bwd", dk2, rdk, sdk)):
            _within(_max_err(a, r), _max_err(s_, r), 16 * u * scale, f"{design} {name}")
        out[design] = (dp, dk)
    tol = 64 * u * scale
    for a, b, name in zip(out["fused"], out["split"], ("dp", "dk")):
        assert _max_err(a, b) <= tol, f"fused vs split {name}: {_max_err(a, b):.3g} > {tol:.3g}"


def test_infonce_triton_backward_determinism(monkeypatch):
    # The split backward is bitwise reproducible, and torch.use_deterministic_algorithms(True) selects it whatever
    # MCLCORE_TRITON_INFONCE_BWD says; the fused one's dk is too (one program per key row), its dp may differ in
    # the last bits between runs (float32 atomic adds in arrival order).
    if not _backend.triton_available():
        pytest.skip("triton does not import")
    from mclcore.ops import triton as tk

    p, k, groups = _make(2048, 128, torch.bfloat16, seed=12, n_groups=16)
    monkeypatch.setenv("MCLCORE_TRITON_INFONCE_BWD", "split")
    split = [tk.infonce_with_grad(p, k, groups, 0.1, 1e-12) for _ in range(3)]
    for run in split[1:]:
        for a, b in zip(run, split[0]):
            assert torch.equal(a, b)
    monkeypatch.setenv("MCLCORE_TRITON_INFONCE_BWD", "fused")
    torch.use_deterministic_algorithms(True)
    try:
        det = tk.infonce_with_grad(p, k, groups, 0.1, 1e-12)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(det, split[0]):
        assert torch.equal(a, b)
    fused = [tk.infonce_with_grad(p, k, groups, 0.1, 1e-12) for _ in range(3)]
    scale = split[0][1].double().abs().max().item()
    for run in fused:
        assert torch.equal(run[2], fused[0][2])                         # dk: no atomics
        assert _max_err(run[1], split[0][1]) <= 2.0**-7 * scale         # dp: bf16 output rounding of a reordering


def test_infonce_memory_is_linear_in_B(backend):
    _need(backend, "infonce_with_grad")
    # B = 16384: the B x B logits alone would take 512 MiB in bf16; the op keeps O(B d).
    p, k, _ = _make(16384, 128, torch.bfloat16, seed=7)
    p.requires_grad_()
    k.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.autograd.grad(infonce(p, k), (p, k))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 64 * 2**20, f"peak extra memory {extra / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------------------------
# infonce, rectangular mode (offset: B rows against N keys, the cross-rank InfoNCE)


def _make_rect(B, N, d, dtype, seed, n_groups=None, non_contiguous=False):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    p = torch.randn(B, d, generator=gen, dtype=torch.float64).to(DEV, dtype)
    k = torch.randn(N, d, generator=gen, dtype=torch.float64).to(DEV, dtype)
    groups = None if n_groups is None else torch.randint(0, n_groups, (N,), generator=gen).to(DEV)
    if non_contiguous:
        p = p.t().contiguous().t()
        k = torch.stack([k, k], 2)[:, :, 0]
    return p, k, groups


def _rect_loss_grads(fn, p, k, groups, tau, offset, dtype=None):
    p_ = p.detach().to(dtype or p.dtype).requires_grad_()
    k_ = k.detach().to(dtype or k.dtype).requires_grad_()
    loss = fn(p_, k_, tau, groups=groups, offset=offset)
    dp, dk = torch.autograd.grad(loss, (p_, k_))
    return loss.detach(), dp, dk


def _plain_rect(p, k, tau, *, groups=None, offset=None):
    return torch.ops.mclcore.infonce.default(p, k, groups, tau, 1e-12, offset)[0]


@pytest.mark.parametrize("path", ["public", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,N,d,n_groups,non_contiguous", [(1, 3, 5, None, False), (7, 21, 67, 3, True),
                                                           (257, 1028, 128, 8, False), (333, 999, 5, None, True)])
def test_infonce_rectangular_matches_float64(backend, path, dtype, B, N, d, n_groups, non_contiguous):
    _need(backend, "infonce_with_grad" if path == "public" else "infonce_backward")
    tau = 0.1
    p, k, groups = _make_rect(B, N, d, dtype, seed=B + N + d, n_groups=n_groups, non_contiguous=non_contiguous)
    fn = infonce if path == "public" else _plain_rect
    for offset in sorted({0, (N - B) // 2, N - B}):
        loss, dp, dk = _rect_loss_grads(fn, p, k, groups, tau, offset)
        rl, rdp, rdk = _rect_loss_grads(ref_infonce, p, k, groups, tau, offset, torch.float64)
        sl, sdp, sdk = _rect_loss_grads(ref_infonce, p, k, groups, tau, offset, dtype)
        assert dp.shape == (B, d) and dk.shape == (N, d) and dp.dtype == dtype and dk.dtype == dtype
        u = UNIT[dtype]
        scale = max(rdp.abs().max().item(), rdk.abs().max().item())
        _within(_max_err(loss, rl), _max_err(sl, rl), 4 * u / tau, f"loss (offset {offset})")
        _within(_max_err(dp, rdp), _max_err(sdp, rdp), 16 * u * scale, f"dp (offset {offset})")
        _within(_max_err(dk, rdk), _max_err(sdk, rdk), 16 * u * scale, f"dk (offset {offset})")


def test_infonce_rectangular_float64_and_the_cpu_kernel(backend):
    _need(backend, "infonce_with_grad")
    p, k, groups = _make_rect(150, 600, 17, torch.float64, seed=8, n_groups=4)
    for offset in (0, 225, 450):
        loss, dp, dk = _rect_loss_grads(infonce, p, k, groups, 0.2, offset)
        rl, rdp, rdk = _rect_loss_grads(ref_infonce, p, k, groups, 0.2, offset, torch.float64)
        torch.testing.assert_close(loss, rl, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dp, rdp, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(dk, rdk, rtol=1e-9, atol=1e-12)
        for a, b in zip(torch.ops.mclcore.infonce(p, k, groups, 0.2, 1e-12, offset),
                        torch.ops.mclcore.infonce(p.cpu(), k.cpu(), groups.cpu(), 0.2, 1e-12, offset)):
            assert a.device.type == "cuda" and a.shape == b.shape
            torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)


def test_infonce_rectangular_ranks_make_the_whole_batch(backend):
    # The per-rank losses (offset r B) average to the square loss of the whole batch; their dk sum to world x dk.
    _need(backend, "infonce_with_grad")
    world, B = 4, 96
    p, k, groups = _make_rect(world * B, world * B, 32, torch.float32, seed=9, n_groups=6)
    full, _, fdk = _loss_grads(infonce, p, k, groups, 0.1)
    parts = [_rect_loss_grads(infonce, p[r * B:(r + 1) * B], k, groups, 0.1, r * B) for r in range(world)]
    torch.testing.assert_close(torch.stack([x[0] for x in parts]).mean(), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack([x[2] for x in parts]).sum(0) / world, fdk, rtol=1e-4,
                               atol=1e-5 * fdk.abs().max().item())


def test_infonce_rectangular_memory_is_linear(backend):
    _need(backend, "infonce_with_grad")
    # 4096 rows against 32768 keys: the B x N logits alone would take 256 MiB in bf16.
    p, k, _ = _make_rect(4096, 32768, 128, torch.bfloat16, seed=10)
    p.requires_grad_()
    k.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.autograd.grad(infonce(p, k, offset=8192), (p, k))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 96 * 2**20, f"peak extra memory {extra / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------------------------
# critic_grad (Triton only: it has no CUDA C++ kernel)


def _critic(dtype, seed=0, B=37, dims=(29, 64, 48, 1)):
    gen = torch.Generator().manual_seed(seed)
    ws = [(torch.randn(o, i, generator=gen, dtype=torch.float64) / i**0.5) for i, o in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(o, generator=gen, dtype=torch.float64) * 0.1 for o in dims[1:]]
    v = torch.randn(B, dims[0], generator=gen, dtype=torch.float64)
    up = torch.randn(B, dims[0], generator=gen, dtype=torch.float64)
    cast = lambda t: t.to(DEV, dtype)  # noqa: E731
    return cast(v), [cast(w) for w in ws], [cast(b) for b in bs], cast(up)


def _critic_grads(fn, v, ws, bs, up, activation, dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (v, *ws, *bs)]
    n = len(ws)
    out = fn(leaves[0], leaves[1:1 + n], leaves[1 + n:], activation)
    grads = torch.autograd.grad((out * up.to(out.dtype)).sum(), leaves, allow_unused=True, materialize_grads=True)
    return [out.detach(), *grads]


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "tanh", "softplus"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_critic_grad_matches_float64(backend, activation, dtype):
    _need(backend, "critic_grad")
    v, ws, bs, up = _critic(dtype, seed=len(activation))
    got = _critic_grads(critic_grad, v, ws, bs, up, activation)
    want = _critic_grads(ref_critic_grad, v, ws, bs, up, activation, torch.float64)
    same = _critic_grads(ref_critic_grad, v, ws, bs, up, activation)  # the same-precision reference
    names = ["grad_v c", "d v"] + [f"d W{i}" for i in range(len(ws))] + [f"d b{i}" for i in range(len(bs))]
    for name, a, b, s in zip(names, got, want, same):
        scale = max(b.abs().max().item(), 1e-30)
        # Half inputs are upcast to float32 by critic_grad (docs/DESIGN.md §2.2: s'' of GELU loses all digits in bf16), so the
        # floor is a float32 (float64) rounding budget over a few GEMMs of width <= 64.
        floor = (1e-12 if dtype == torch.float64 else 1e-5) * scale
        _within(_max_err(a, b), _max_err(s, b), floor, name)


def test_critic_grad_cuda_backend_is_an_error():
    v, ws, bs, _ = _critic(torch.float32)
    with use_backend("cuda"):
        with pytest.raises(RuntimeError, match="critic_grad: backend 'cuda'"):
            critic_grad(v, ws, bs)


# ---------------------------------------------------------------------------------------------------------------
# mech_derivs


def _generator(dtype, dz=4, widths=(33, 21), act="tanh", seed=0, B=19):
    gen = torch.Generator().manual_seed(seed)
    dims = [dz, *widths]
    ws = [torch.randn(o, i, generator=gen, dtype=torch.float64) / i**0.5 for i, o in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(o, generator=gen, dtype=torch.float64) * 0.1 for o in dims[1:]]
    z = torch.randn(B, dz, generator=gen, dtype=torch.float64)
    scale = torch.rand(B, dz, generator=gen, dtype=torch.float64) + 0.5
    shift = torch.randn(B, dz, generator=gen, dtype=torch.float64) * 0.1
    ib = torch.randn(B, widths[0], generator=gen, dtype=torch.float64) * 0.1
    cast = lambda t: t.to(DEV, dtype)  # noqa: E731
    return cast(z), [cast(w) for w in ws], [cast(b) for b in bs], cast(ib), cast(scale), cast(shift)


@pytest.mark.parametrize("act", ["tanh", "gelu", "smooth_leaky", "softplus"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mech_derivs_matches_reference(backend, act, dtype):
    _need(backend, "mech_derivs")
    z, ws, bs, ib, sc, sh = _generator(dtype, act=act, seed=len(act))
    V, L = mech_derivs(z, ws, bs, in_bias=ib, film_scale=sc, film_shift=sh, activation=act)
    assert V.device.type == "cuda" and V.dtype == dtype and V.shape == (19, 8) and L.shape == (19,)
    d64 = lambda t: t.double().cpu()  # noqa: E731
    rV, rL = ref_mech_derivs(d64(z), [d64(w) for w in ws], [d64(b) for b in bs], d64(ib), d64(sc), d64(sh), act)
    # float64: the same formulas as the float64 reference; float32 propagation with float64 algebra: docs/DESIGN.md §2.3
    # measured median 4e-6, max 1.4e-3 relative; these generators are well conditioned.
    rtol = 1e-8 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(V.double().cpu(), rV, rtol=rtol, atol=rtol * rV.abs().max().item())
    torch.testing.assert_close(L.double().cpu(), rL, rtol=rtol, atol=rtol)
    # And the C++ CPU kernel on the same inputs (the contract: same outputs).
    cV, cL = mech_derivs(z.cpu(), [w.cpu() for w in ws], [b.cpu() for b in bs], in_bias=ib.cpu(),
                         film_scale=sc.cpu(), film_shift=sh.cpu(), activation=act)
    torch.testing.assert_close(V.cpu(), cV, rtol=rtol * 10, atol=rtol * 10 * cV.abs().max().item())


# ---------------------------------------------------------------------------------------------------------------
# comp_contrast (Triton only: it has no CUDA C++ kernel; its matrix products are torch.mm, i.e. cuBLAS)


def _cc_inputs(dtype, device, act, B=257, dz=7, widths=(67, 67, 67), seed=0, non_contiguous=True):
    """Leaves (z, weights, biases, in_bias) of a generator dz -> 67 -> 67 -> 67 at odd sizes (B = 257: not a
    multiple of anything; dz = 7 tangent rows; width 67 = one full BLOCK of 64 plus a 3-column tail), built in
    float64 on the CPU and rounded once to ``dtype``, so every device and precision sees the same values. With
    ``non_contiguous``: z a column slice of a wider tensor (row stride 2 dz + 1), weights[0] and weights[2]
    column-major, in_bias every other column of a wider tensor."""
    gen = torch.Generator().manual_seed(seed)
    dims = [dz, *widths]
    ws = [torch.randn(o, i, generator=gen, dtype=torch.float64) / i**0.5 for i, o in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(o, generator=gen, dtype=torch.float64) * 0.1 for o in dims[1:]]
    z = torch.randn(B, dz, generator=gen, dtype=torch.float64)
    ib = torch.randn(B, widths[0], generator=gen, dtype=torch.float64) * 0.1
    w = torch.randn(B, generator=gen, dtype=torch.float64)  # per-sample weights of the scalar to differentiate
    cast = lambda t: t.to(device, dtype)  # noqa: E731
    z, ws, bs, ib, w = cast(z), [cast(x) for x in ws], [cast(x) for x in bs], cast(ib), cast(w)
    if non_contiguous:
        wide = torch.zeros(B, 2 * dz + 1, dtype=dtype, device=device)
        wide[:, 1::2] = z
        z = wide[:, 1::2]
        ws = [x.t().contiguous().t() if i != 1 else x for i, x in enumerate(ws)]
        wib = torch.zeros(B, 2 * widths[0], dtype=dtype, device=device)
        wib[:, ::2] = ib
        ib = wib[:, ::2]
        assert not (z.is_contiguous() or ws[0].is_contiguous() or ib.is_contiguous())
    leaves = [t.detach().requires_grad_() for t in (z, *ws, *bs, ib)]  # detach keeps the strides
    return leaves, w


def _cc_call(leaves, w, act, final, normalize):
    """C and the gradient of sum_b w_b C_b w.r.t. every leaf (z, weights, biases, in_bias)."""
    n = (len(leaves) - 2) // 2
    z, ws, bs, ib = leaves[0], leaves[1:1 + n], leaves[1 + n:1 + 2 * n], leaves[-1]
    C = comp_contrast(z, ws, bs, act, in_bias=ib, final_activation=final, normalize=normalize)
    return [C.detach(), *torch.autograd.grad((C * w).sum(), leaves)]


# Curved (s'' != 0) and piecewise-linear activations, on the hidden layers alone and on the output too, both
# normalisations: the kernel branches (ACT, CURVED, which workspace slice the contrast reads).
_CC_CASES = [("gelu", False, "none"), ("leaky_relu", False, "jacobian"), ("tanh", True, "none"),
             ("softplus", True, "jacobian")]


@pytest.mark.parametrize("act,final,normalize", _CC_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_comp_contrast_triton_matches_the_cpu_op(act, final, normalize, dtype):
    if not _backend.triton_available():
        pytest.skip("triton does not import")
    names = ["C", "d z", "d W0", "d W1", "d W2", "d b0", "d b1", "d b2", "d in_bias"]
    with use_backend("triton"):
        leaves, w = _cc_inputs(dtype, DEV, act)
        got = _cc_call(leaves, w, act, final, normalize)
    assert got[0].device.type == "cuda" and got[0].dtype == dtype and got[0].shape == (257,)
    # The C++ CPU op on the same (rounded) values, in float64 (the reference) and in the inputs' precision.
    l64, w64 = _cc_inputs(torch.float64, "cpu", act, non_contiguous=False)
    want = _cc_call(l64, w64, act, final, normalize)
    same = _cc_call(*_cc_inputs(dtype, "cpu", act), act, final, normalize) if dtype != torch.float64 else None
    for name, a, b, c in zip(names, got, want, same or want):
        scale = max(b.abs().max().item(), 1e-30)
        if dtype == torch.float64:
            # Same arithmetic, other summation orders (cuBLAS vs the C++ GEMMs; Triton's and C++'s reductions):
            # a few float64 roundings through three GEMMs of width <= 67 and the |J| sums over dz = 7.
            assert _max_err(a.cpu(), b) <= 1e-11 * scale, f"{name}: {_max_err(a.cpu(), b):.3g} vs scale {scale:.3g}"
        else:
            # Within 2x the CPU op's own float32 error, or a float32 budget over the same GEMMs (the CPU op can be
            # lucky on one entry): docs/DESIGN.md §2.5 keeps s', s'' in the working dtype, as the C++ float32 path.
            _within(_max_err(a.cpu(), b), _max_err(c, b), 1e-5 * scale, name)


def test_comp_contrast_matches_the_reference_on_cuda():
    # The torch.func reference (python/comp_contrast.py) on the GPU, float64: the op's CUDA route end to end
    # against an independent formula, not only against the C++ kernel it was written from.
    if not _backend.triton_available():
        pytest.skip("triton does not import")
    from python import comp_contrast as ref

    leaves, w = _cc_inputs(torch.float64, DEV, "gelu", B=65, seed=3)
    got = _cc_call(leaves, w, "gelu", False, "none")
    z, ws, bs, ib = leaves[0], leaves[1:4], leaves[4:7], leaves[7]
    Cr = ref.comp_contrast(z, ws, bs, ib, "gelu", None, False)
    want = [Cr.detach(), *torch.autograd.grad((Cr * w).sum(), leaves, allow_unused=True, materialize_grads=True)]
    # d b2 (the output bias) does not change J: 0 on both sides (materialised by autograd on the reference's side).
    for n, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11 * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"output {n}: {m}")


def test_comp_contrast_cuda_backend_is_an_error():
    leaves, _ = _cc_inputs(torch.float32, DEV, "tanh", B=5, non_contiguous=False)
    with use_backend("cuda"):
        with pytest.raises(RuntimeError, match="comp_contrast: backend 'cuda'"):
            comp_contrast(leaves[0], leaves[1:4], leaves[4:7], "tanh")


# ---------------------------------------------------------------------------------------------------------------
# The MCL loss (Algorithm 1) on CUDA, forward and backward, against python/mcl.py


@pytest.mark.parametrize("multi_positive", [False, True])
def test_mcl_loss_forward_backward_on_cuda(backend, multi_positive):
    _need(backend, "critic_grad")  # the MLP-critic path runs critic_grad, which only the Triton backend has
    import torch.nn as nn

    from mclcore.losses.mcl import condition_groups
    from python import mcl as ref

    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(5 + 4, 24), nn.Tanh(), nn.Linear(24, 12)).to(DEV, torch.float64)

    def decoder(z, u):
        return G(torch.cat([z, u], 1))

    mcl = mclcore.MCL((5,), (12,), 4, critic_hidden=(32, 32), proj_dim=16,
                      multi_positive=multi_positive).to(DEV, torch.float64)
    z = torch.randn(33, 5, dtype=torch.float64, device=DEV)
    u = torch.randn(3, 4, dtype=torch.float64, device=DEV)[torch.arange(33, device=DEV) % 3]
    loss = mcl(decoder, z, u)
    kw = dict(tau=mcl.tau, clip=mcl.clip, create_graph=mcl.create_graph)
    if multi_positive:
        kw["groups"] = condition_groups(u)
    expected = ref.mcl_loss(decoder, z, u, critic=mcl.critic, Pi_g=mcl.Pi_g, Pi_u=mcl.Pi_u, **kw)
    assert loss.device.type == "cuda"
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-10)
    ps = [*G.parameters(), *mcl.parameters()]
    for a, b in zip(torch.autograd.grad(loss, ps, allow_unused=True, materialize_grads=True),
                    torch.autograd.grad(expected, ps, allow_unused=True, materialize_grads=True)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * max(1.0, b.abs().max().item()))
