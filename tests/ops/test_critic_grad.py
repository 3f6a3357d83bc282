"""critic_grad op vs the pure-autograd reference (python/critic_grad.py)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mclcore.ops.critic_grad import ACTIVATIONS, critic_grad
from python.critic_grad import critic_grad as ref_critic_grad
from python.critic_grad import sample_inputs

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def all_grads(out, upstream, inputs):
    return torch.autograd.grad((out * upstream).sum(), inputs, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("B,dv,hidden", [(2, 1, (5,)), (3, 127, (8, 6)), (257, 9, (16, 16)), (4, 3, (7, 5, 4))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference_forward_and_second_order(activation, B, dv, hidden, dtype):
    inputs = sample_inputs(B, dv, hidden=hidden, activation=activation, dtype=dtype, requires_grad=True)
    out = critic_grad(*inputs)
    ref = ref_critic_grad(*inputs)
    assert out.shape == (B, dv) and out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    upstream = torch.randn(B, dv, dtype=dtype)
    for a, b in zip(all_grads(out, upstream, inputs.tensors()), all_grads(ref, upstream, inputs.tensors())):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_activations_over_a_wide_range(activation):
    # float32 GELU / ReLU / SiLU run a fused vector pass with their own exp and erf (csrc/critic_grad), the others
    # ATen's kernels. An identity first layer makes the pre-activations the inputs themselves: [-12, 12] and exact
    # zeros, 130 x 257 = 33410 entries (more than one 16384-entry chunk, and a tail that is not a multiple of 8).
    # Second layer and output random; compared with the float64 reference on the same float32-rounded inputs.
    B, n = 130, 257
    gen = torch.Generator().manual_seed(0)
    v = torch.linspace(-12, 12, B * n, dtype=torch.float64)[torch.randperm(B * n, generator=gen)].view(B, n)
    v[::7, ::5] = 0.0
    ws = [torch.eye(n, dtype=torch.float64), torch.randn(n, n, generator=gen, dtype=torch.float64) / n**0.5,
          torch.randn(1, n, generator=gen, dtype=torch.float64) / n**0.5]
    bs = [torch.zeros(n, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64) * 0.1,
          torch.zeros(1, dtype=torch.float64)]
    upstream = torch.randn(B, n, generator=gen, dtype=torch.float64)
    args32 = [t.float().requires_grad_() for t in (v, *ws, *bs)]
    args64 = [t.detach().double().requires_grad_() for t in args32]
    out32 = critic_grad(args32[0], args32[1:4], args32[4:], activation)
    out64 = ref_critic_grad(args64[0], args64[1:4], args64[4:], activation)
    assert torch.isfinite(out32).all()
    # Measured: errors within 1.1x of torch's own float32 autograd on the same inputs (7e-8 on grad_v c, <= 8e-6
    # on weight gradients of size ~20); the tolerances leave ~10x room and still catch any wrong s, s' or s''.
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-6)
    for a, b in zip(all_grads(out32, upstream.float(), args32), all_grads(out64, upstream, args64)):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=5e-6 * max(1.0, b.abs().max().item()))


def test_non_contiguous_inputs():
    # v (12, 6) strides (1, 12), weights column-major, biases stride 2
    v_nc, ws_nc, bs_nc, _ = sample_inputs(12, 6, hidden=(10, 8), requires_grad=True, contiguous=False)
    assert not v_nc.is_contiguous() and not ws_nc[0].is_contiguous() and not bs_nc[0].is_contiguous()
    torch.testing.assert_close(critic_grad(v_nc, ws_nc, bs_nc), ref_critic_grad(v_nc, ws_nc, bs_nc),
                               **TOL[torch.float64])


def test_half_inputs_are_upcast():
    v, ws, bs, _ = sample_inputs(8, 5, hidden=(6,), dtype=torch.float32, requires_grad=True)
    out = critic_grad(v.half(), ws, bs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref_critic_grad(v.half().float(), ws, bs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_opcheck(activation):
    v, ws, bs, _ = sample_inputs(5, 4, hidden=(6, 3), requires_grad=True)
    g = torch.randn(5, 4, dtype=torch.float64)
    wd, bd = [w.detach() for w in ws], [b.detach() for b in bs]
    torch.library.opcheck(torch.ops.mclcore.critic_grad.default, (v, ws, bs, activation))
    _, saved = torch.ops.mclcore.critic_grad(v.detach(), wd, bd, activation)
    torch.library.opcheck(torch.ops.mclcore.critic_grad_backward.default, (g, v.detach(), wd, bd, saved, activation))


def test_workspace_block_is_reused_only_once_released():
    # The CPU kernel hands its workspace block out again once no tensor holds it (csrc/critic_grad): a held
    # workspace must never be overwritten, and a released one is reused.
    op = torch.ops.mclcore.critic_grad.default
    v, *args = sample_inputs(6, 4, hidden=(5, 3), dtype=torch.float32)
    _, w1 = op(v, *args)
    kept = w1.clone()
    _, w2 = op(v * 2, *args)  # w1 still held: a new block
    assert w2.data_ptr() != w1.data_ptr()
    torch.testing.assert_close(w1, kept, rtol=0, atol=0)
    ptr = w2.data_ptr()
    del w1, w2
    _, w3 = op(v, *args)  # nothing holds the cached block any more
    assert w3.data_ptr() == ptr
    torch.testing.assert_close(w3, kept, rtol=0, atol=0)
    view = w3[2:]  # a view keeps the block alive too
    del w3
    _, w4 = op(v, *args)
    assert w4.data_ptr() != view.data_ptr() - 2 * view.element_size()


def test_interleaved_graphs_keep_their_own_workspaces():
    # Two forwards before either backward (and an inference-mode call between them): each backward must see its
    # own saved workspace, so both match the reference.
    v, ws, bs, _ = sample_inputs(7, 5, hidden=(6, 4), requires_grad=True)
    v2 = (v.detach() * -1.5).requires_grad_()
    up = torch.randn(7, 5, dtype=torch.float64)
    inputs = [*ws, *bs]
    out1 = critic_grad(v, ws, bs)
    out2 = critic_grad(v2, ws, bs)
    with torch.inference_mode():
        critic_grad(v.detach() + 1, [w.detach() for w in ws], [b.detach() for b in bs])
    g1 = all_grads(out1, up, [v, *inputs])
    g2 = all_grads(out2, up, [v2, *inputs])
    r1 = all_grads(ref_critic_grad(v, ws, bs), up, [v, *inputs])
    r2 = all_grads(ref_critic_grad(v2, ws, bs), up, [v2, *inputs])
    for a, b in zip(g1 + g2, r1 + r2):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("threads,B", [(3, 1000), (2, 300), (4, 130), (2, 127)])
def test_row_blocks_over_threads_match_the_reference(threads, B):
    # The kernels split the batch into one chunk per worker (>= 64 rows each) walked in blocks of <= 128 rows, and
    # sum the parameter gradients per chunk: uneven chunks (1000 rows on 3 threads: 333 + 333 + 334, each three
    # blocks and a tail), two chunks, one chunk of two blocks (130 rows: 130 // 64 = 2 chunks of 65) and one chunk on
    # the calling thread (127 rows) must all give the reference's values, and the same values as one thread.
    v, ws, bs, _ = sample_inputs(B, 11, hidden=(40, 24), dtype=torch.float64, seed=3, requires_grad=True)
    up = torch.randn(B, 11, dtype=torch.float64)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = critic_grad(v, ws, bs)
        grads = all_grads(out, up, [v, *ws, *bs])
        torch.set_num_threads(1)
        out1 = critic_grad(v, ws, bs)
        grads1 = all_grads(out1, up, [v, *ws, *bs])
    finally:
        torch.set_num_threads(n)
    ref = ref_critic_grad(v, ws, bs)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    torch.testing.assert_close(out, out1, rtol=1e-13, atol=1e-14)
    for a, b, c in zip(grads, all_grads(ref, up, [v, *ws, *bs]), grads1):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("activation", ["gelu", "tanh", "softplus", "silu"])
def test_gradcheck_float64(activation):
    inputs = sample_inputs(3, 4, hidden=(5, 3), weight_scale=0.8, requires_grad=True)
    n = len(inputs.weights)

    def fn(v, *params):
        return critic_grad(v, params[:n], params[n:], activation)

    assert torch.autograd.gradcheck(fn, tuple(inputs.tensors()))


def test_torch_compile_fullgraph():
    v, ws, bs, _ = sample_inputs(6, 5, hidden=(8, 8), requires_grad=True)

    def loss(v, ws, bs):
        return (critic_grad(v, ws, bs, "gelu") ** 2).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    a = torch.autograd.grad(loss(v, ws, bs), [v, *ws])
    b = torch.autograd.grad(compiled(v, ws, bs), [v, *ws])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


@given(B=st.integers(2, 40), dv=st.integers(1, 20), h=st.integers(1, 24), act=st.sampled_from(ACTIVATIONS),
       alpha=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_property_matches_reference_and_is_linear_in_output_weight(B, dv, h, act, alpha, seed):
    v, ws, bs, _ = sample_inputs(B, dv, hidden=(h,), seed=seed, requires_grad=True)
    out = critic_grad(v, ws, bs, act)
    torch.testing.assert_close(out, ref_critic_grad(v, ws, bs, act), **TOL[torch.float64])
    # grad_v c is linear in the output layer's weight and independent of its bias
    ws2 = ws[:-1] + [ws[-1] * alpha]
    bs2 = bs[:-1] + [bs[-1] + 3.0]
    torch.testing.assert_close(critic_grad(v, ws2, bs2, act), alpha * out, rtol=1e-9, atol=1e-12)


def test_bad_inputs():
    v, ws, bs, _ = sample_inputs(4, 3, hidden=(5,), requires_grad=True)
    with pytest.raises(ValueError, match="activation"):
        critic_grad(v, ws, bs, "elu")
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        critic_grad(torch.randn(4, 7, dtype=torch.float64), ws, bs)
    with pytest.raises(ValueError, match="biases"):
        critic_grad(v, ws, bs[:1])
    with pytest.raises(ValueError, match=r"weights\[-1\]"):
        critic_grad(v, [ws[0], torch.randn(2, 5, dtype=torch.float64)], [bs[0], torch.zeros(2, dtype=torch.float64)])
    with pytest.raises(ValueError, match="v: expected a 2-D"):
        critic_grad(v[0], ws, bs)
    with pytest.raises(TypeError, match="v: expected a floating-point"):
        critic_grad(torch.ones(4, 3, dtype=torch.int64), ws, bs)
