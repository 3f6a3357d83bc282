"""Member-stacked critic_grad and infonce (a leading member axis M on every tensor, one call for M independent
problems): equal to the per-member calls (the kernels loop over the members: the same arithmetic, up to the last
bit MKL may round differently on a differently aligned view; float64 to 1e-12), registered
(opcheck), differentiable (gradcheck in float64), and their Python wrappers' shape checks. The Triton launchers'
member loop is checked under the interpreter in tests/ops/test_triton.py."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mclcore.ops.critic_grad import critic_grad
from mclcore.ops.infonce import infonce
from python.critic_grad import critic_grad_stacked as ref_critic_grad_stacked
from python.critic_grad import sample_inputs as critic_inputs
from python.infonce import infonce_stacked as ref_infonce_stacked
from python.infonce import sample_inputs as infonce_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
# stacked vs per-member calls: the same operations on views of the stacked tensors, but MKL's products may round
# the last bit differently for a view at another alignment (seen: 1e-16 in float64 backward products)
SAME = {F64: dict(rtol=0, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6)}


def stacked_critic(M, B, dv, hidden=(5,), activation="gelu", dtype=F64, requires_grad=True, contiguous=True):
    """M members' critic_grad inputs (seeds 0..M-1), stacked: v (M, B, dv), weights[l] (M, out, in), biases (M, out);
    ``contiguous=False``: every stacked tensor a non-contiguous view (transposed or strided)."""
    ms = [critic_inputs(B, dv, hidden=hidden, activation=activation, dtype=dtype, seed=m) for m in range(M)]
    v = torch.stack([i.v for i in ms])
    ws = [torch.stack([i.weights[l] for i in ms]) for l in range(len(ms[0].weights))]
    bs = [torch.stack([i.biases[l] for i in ms]) for l in range(len(ms[0].biases))]
    if not contiguous:
        v = v.transpose(1, 2).contiguous().transpose(1, 2)
        ws = [w.transpose(1, 2).contiguous().transpose(1, 2) for w in ws]
        bs = [torch.stack([b, b], dim=2)[..., 0] for b in bs]
    if requires_grad:
        for t in (v, *ws, *bs):
            t.requires_grad_()
    return v, ws, bs


def stacked_infonce(M, B, d, n_groups=None, dtype=F64, requires_grad=True, contiguous=True):
    ms = [infonce_inputs(B, d, n_groups=n_groups, dtype=dtype, seed=10 + m) for m in range(M)]
    p, k = torch.stack([i.p for i in ms]), torch.stack([i.k for i in ms])
    groups = None if n_groups is None else torch.stack([i.groups for i in ms])
    if not contiguous:
        p = p.transpose(1, 2).contiguous().transpose(1, 2)
        k = torch.stack([k, k], dim=3)[..., 0]
    if requires_grad:
        p, k = p.requires_grad_(), k.requires_grad_()
    return p, k, groups


def grads(out, upstream, inputs):
    return torch.autograd.grad((out * upstream).sum(), inputs, allow_unused=True, materialize_grads=True)


# ---------------------------------------------------------------------------------------------------------------
# critic_grad


@pytest.mark.parametrize("activation", ["gelu", "tanh", "relu"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("contiguous", [True, False])
def test_critic_grad_stacked_equals_per_member_calls(activation, dtype, contiguous):
    M, B, dv = 3, 7, 5
    v, ws, bs = stacked_critic(M, B, dv, hidden=(6, 4), activation=activation, dtype=dtype, contiguous=contiguous)
    out = critic_grad(v, ws, bs, activation)
    assert out.shape == (M, B, dv) and out.dtype == dtype
    upstream = torch.randn(M, B, dv, dtype=dtype, generator=torch.Generator().manual_seed(1))
    g_stacked = grads(out, upstream, [v, *ws, *bs])
    for m in range(M):
        vm = v[m].detach().requires_grad_()
        wm = [w[m].detach().requires_grad_() for w in ws]
        bm = [b[m].detach().requires_grad_() for b in bs]
        om = critic_grad(vm, wm, bm, activation)
        torch.testing.assert_close(out[m], om, **SAME[dtype])   # the kernel loops over members: the same arithmetic
        for gs, gm in zip(g_stacked, grads(om, upstream[m], [vm, *wm, *bm])):
            torch.testing.assert_close(gs[m], gm, **SAME[dtype])


def test_critic_grad_stacked_matches_the_reference_to_1e12_in_float64():
    v, ws, bs = stacked_critic(3, 7, 5, hidden=(8, 6))
    out, ref = critic_grad(v, ws, bs), ref_critic_grad_stacked(v, ws, bs)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    up = torch.randn_like(out)
    for a, b in zip(grads(out, up, [v, *ws, *bs]), grads(ref, up, [v, *ws, *bs])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_critic_grad_stacked_backward_row_chunks_write_the_stacked_outputs(threads):
    # The stacked backward writes each member's gradients straight into its views of the stacked outputs (chunk 0 of
    # the rows sums into them, further chunks are added at the end). B = 160 >= 2 x 64 rows makes two chunks on two
    # threads; every member must still get exactly its own per-member call's gradients (float64, 1e-12).
    M, B, dv = 3, 160, 5
    v, ws, bs = stacked_critic(M, B, dv, hidden=(6, 4))
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = critic_grad(v, ws, bs)
        up = torch.randn(M, B, dv, dtype=F64, generator=torch.Generator().manual_seed(3))
        g_stacked = grads(out, up, [v, *ws, *bs])
        for m in range(M):
            vm = v[m].detach().requires_grad_()
            wm = [w[m].detach().requires_grad_() for w in ws]
            bm = [b[m].detach().requires_grad_() for b in bs]
            g_m = grads(critic_grad(vm, wm, bm), up[m], [vm, *wm, *bm])
            for gs, gm in zip(g_stacked, g_m):
                torch.testing.assert_close(gs[m], gm, rtol=0, atol=1e-12)
        assert not g_stacked[-1].any()          # the last bias never reaches grad_v c: its gradient is written 0
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("contiguous", [True, False])
def test_critic_grad_stacked_opcheck(contiguous):
    v, ws, bs = stacked_critic(3, 7, 5, hidden=(6,), contiguous=contiguous)
    torch.library.opcheck(torch.ops.mclcore.critic_grad.default, (v, ws, bs, "gelu"))
    gv, saved = torch.ops.mclcore.critic_grad(v.detach(), [w.detach() for w in ws], [b.detach() for b in bs], "gelu")
    assert saved.shape == (3 * 4 * 7 * 6,)
    g = torch.randn_like(gv)
    torch.library.opcheck(torch.ops.mclcore.critic_grad_backward.default,
                          (g, v.detach(), [w.detach() for w in ws], [b.detach() for b in bs], saved, "gelu"))


def test_critic_grad_stacked_gradcheck():
    v, ws, bs = stacked_critic(3, 7, 5, hidden=(4,), activation="tanh", contiguous=False)
    f = lambda v, w0, w1, b0, b1: critic_grad(v, [w0, w1], [b0, b1], "tanh")  # noqa: E731
    assert torch.autograd.gradcheck(f, (v, *ws, *bs))


@given(M=st.integers(1, 4), B=st.integers(1, 9), dv=st.integers(1, 6), h=st.integers(1, 7),
       act=st.sampled_from(["gelu", "silu", "softplus"]))
def test_critic_grad_stacked_property(M, B, dv, h, act):
    v, ws, bs = stacked_critic(M, B, dv, hidden=(h,), activation=act, requires_grad=False)
    out = critic_grad(v, ws, bs, act)
    for m in range(M):
        torch.testing.assert_close(out[m], critic_grad(v[m], [w[m] for w in ws], [b[m] for b in bs], act), **SAME[F64])


def test_critic_grad_stacked_bad_shapes():
    v, ws, bs = stacked_critic(3, 7, 5, requires_grad=False)
    with pytest.raises(ValueError, match=r"weights\[0\]: expected \(3, out, 5\)"):
        critic_grad(v, [ws[0][:2], ws[1]], bs)
    with pytest.raises(ValueError, match=r"biases\[1\]"):
        critic_grad(v, ws, [bs[0], bs[1][0]])
    with pytest.raises(ValueError, match="weights\\[0\\]: expected a 3-D"):
        critic_grad(v, [ws[0][0], ws[1]], bs)
    with pytest.raises(RuntimeError, match=r"needs weights\[0\] of shape \(M, out, in\)"):
        torch.ops.mclcore.critic_grad(v, [ws[0][:2], ws[1]], bs, "gelu")


# ---------------------------------------------------------------------------------------------------------------
# infonce


@pytest.mark.parametrize("n_groups", [None, 3])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("contiguous", [True, False])
def test_infonce_stacked_equals_per_member_calls(n_groups, dtype, contiguous):
    M, B, d = 3, 7, 5
    p, k, groups = stacked_infonce(M, B, d, n_groups, dtype, contiguous=contiguous)
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):           # infonce_with_grad, or infonce alone
            loss = infonce(p, k, 0.2, groups=groups)
            assert loss.shape == (M,) and loss.dtype == (F64 if dtype == F64 else torch.float32)
            for m in range(M):
                gm = None if groups is None else groups[m]
                torch.testing.assert_close(loss[m], infonce(p[m], k[m], 0.2, groups=gm), **SAME[dtype])
    up = torch.tensor([0.5, -1.0, 2.0], dtype=loss.dtype)
    dp, dk = torch.autograd.grad((infonce(p, k, 0.2, groups=groups) * up).sum(), [p, k])
    for m in range(M):
        pm, km = p[m].detach().requires_grad_(), k[m].detach().requires_grad_()
        gm = None if groups is None else groups[m]
        a, b = torch.autograd.grad(infonce(pm, km, 0.2, groups=gm) * up[m], [pm, km])
        torch.testing.assert_close(dp[m], a, **SAME[dtype])
        torch.testing.assert_close(dk[m], b, **SAME[dtype])
    # the inference op's own backward (infonce_backward) with one upstream gradient per member
    _, la, lp = torch.ops.mclcore.infonce(p.detach(), k.detach(), groups, 0.2, 1e-12)
    dpb, dkb = torch.ops.mclcore.infonce_backward(up, p.detach(), k.detach(), groups, la, lp, 0.2, 1e-12)
    torch.testing.assert_close(dpb, dp, rtol=1e-5 if dtype != F64 else 1e-12, atol=1e-6 if dtype != F64 else 1e-13)
    torch.testing.assert_close(dkb, dk, rtol=1e-5 if dtype != F64 else 1e-12, atol=1e-6 if dtype != F64 else 1e-13)


@pytest.mark.parametrize("n_groups", [None, 2])
def test_infonce_stacked_matches_the_reference_to_1e12_in_float64(n_groups):
    p, k, groups = stacked_infonce(3, 7, 5, n_groups)
    out, ref = infonce(p, k, 0.3, groups=groups), ref_infonce_stacked(p, k, 0.3, groups=groups)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    up = torch.randn(3, dtype=F64)
    for a, b in zip(grads(out, up, [p, k]), grads(ref, up, [p, k])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_groups", [None, 2])
@pytest.mark.parametrize("contiguous", [True, False])
def test_infonce_stacked_opcheck(n_groups, contiguous):
    p, k, groups = stacked_infonce(3, 7, 5, n_groups, contiguous=contiguous)
    torch.library.opcheck(torch.ops.mclcore.infonce.default, (p, k, groups, 0.1, 1e-12))
    torch.library.opcheck(torch.ops.mclcore.infonce_with_grad.default, (p, k, groups, 0.1, 1e-12))
    _, la, lp = torch.ops.mclcore.infonce(p.detach(), k.detach(), groups, 0.1, 1e-12)
    assert la.shape == lp.shape == (3, 7)
    g = torch.tensor([1.3, -0.2, 0.7], dtype=F64)
    torch.library.opcheck(torch.ops.mclcore.infonce_backward.default,
                          (g, p.detach(), k.detach(), groups, la, lp, 0.1, 1e-12))


@pytest.mark.parametrize("n_groups", [None, 2])
def test_infonce_stacked_gradcheck(n_groups):
    p, k, groups = stacked_infonce(3, 7, 5, n_groups, contiguous=False)
    assert torch.autograd.gradcheck(lambda p, k: infonce(p, k, 0.5, groups=groups), (p, k))
    # the inference op, differentiable through infonce_backward
    f = lambda p, k: torch.ops.mclcore.infonce(p, k, groups, 0.5, 1e-12)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (p, k))


@given(M=st.integers(1, 4), B=st.integers(2, 9), d=st.integers(1, 6), n_groups=st.sampled_from([None, 1, 3]),
       tau=st.floats(0.05, 2.0))
def test_infonce_stacked_property(M, B, d, n_groups, tau):
    p, k, groups = stacked_infonce(M, B, d, n_groups, requires_grad=False)
    loss = infonce(p, k, tau, groups=groups)
    for m in range(M):
        torch.testing.assert_close(loss[m], infonce(p[m], k[m], tau, groups=None if groups is None else groups[m]),
                                   **SAME[F64])


def test_infonce_stacked_bad_shapes():
    p, k, groups = stacked_infonce(3, 7, 5, 2, requires_grad=False)
    with pytest.raises(ValueError, match=r"groups: expected shape \(3, 7\)"):
        infonce(p, k, groups=groups[0])
    with pytest.raises(ValueError, match="k: expected a 3-D"):
        infonce(p, k[0])
    with pytest.raises(RuntimeError, match=r"groups of shape \(M, B\)"):
        torch.ops.mclcore.infonce(p, k, groups[:2], 0.1, 1e-12)
    with pytest.raises(RuntimeError, match=r"grad_loss of shape \(M,\)"):
        _, la, lp = torch.ops.mclcore.infonce(p, k, groups, 0.1, 1e-12)
        torch.ops.mclcore.infonce_backward(torch.ones(2, dtype=F64), p, k, groups, la, lp, 0.1, 1e-12)
    p[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="p: contains NaN"):
        infonce(p, k)
