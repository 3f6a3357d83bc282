"""comp_contrast op vs the torch.func reference (python/comp_contrast.py), gradcheck, opcheck, and its contracts.

Errors are normwise per tensor, ``max|a - b| / max|b|``. Random MLPs come from ``python.mech_derivs.sample_inputs``
(semi-orthogonal layers, about unit pre-activations, so every activation is exercised in its curved region).
"""
import os
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # run as a script (the Triton interpreter subprocess, below): import from the checkout
    sys.path.insert(0, ROOT)

from mclcore.ops.comp_contrast import comp_contrast  # noqa: E402
from mclcore.ops.mech_derivs import ACTIVATIONS  # noqa: E402
from python import comp_contrast as ref  # noqa: E402
from python.mech_derivs import sample_inputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py

F64 = torch.float64


def rel(a, b):
    a, b = a.detach(), b.detach()
    if not b.numel():
        return 0.0
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale if scale > 0 else float(a.abs().max())


def leaves_of(inputs):
    out = [inputs.z, *inputs.weights, *inputs.biases]
    return out + ([inputs.in_bias] if inputs.in_bias is not None else [])


def grads(C, leaves, seed=0):
    """Gradient of a random weighting of the per-sample values (so every sample's gradient counts separately); a
    leaf C does not depend on (the output bias) gets zeros, as the op returns."""
    w = torch.randn(C.shape, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(C.dtype)
    gs = torch.autograd.grad((C * w).sum(), leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, gs)]


def check_against_reference(inputs, activation, final=False, normalize="none", tol=1e-10):
    z, ws, bs, ib = inputs.z, inputs.weights, inputs.biases, inputs.in_bias
    C = comp_contrast(z, ws, bs, activation, in_bias=ib, final_activation=final, normalize=normalize)
    Cr = ref.comp_contrast(z, ws, bs, ib, activation, None, final, normalize=normalize)
    assert C.shape == (z.shape[0],) and C.dtype == z.dtype
    assert rel(C, Cr) <= tol, rel(C, Cr)
    leaves = leaves_of(inputs)
    for i, (g, gr) in enumerate(zip(grads(C, leaves), grads(Cr, leaves))):
        assert rel(g, gr) <= tol, (i, rel(g, gr))
    return C


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("final", [False, True])
def test_matches_reference_every_activation(activation, final):
    inputs = sample_inputs(5, 3, widths=(7, 6, 8), seed=1, requires_grad=True)
    C = check_against_reference(inputs, activation, final)
    # dense random layers: the outputs mix the latents (a ReLU layer may switch off for a sample: C = 0 there)
    assert int((C.detach() > 0).sum()) >= 4


def test_in_bias_mixed_activations_and_normalisation_match_reference():
    inputs = sample_inputs(6, 4, widths=(9, 8, 10), conditioning="in_bias", seed=3, requires_grad=True)
    acts = ["gelu", "smooth_leaky", "tanh"]
    for normalize in ("none", "jacobian"):
        check_against_reference(inputs, acts, final=True, normalize=normalize)


def test_jacrev_and_jacfwd_references_agree():
    # The benchmark's two baselines compute the same function.
    inputs = sample_inputs(4, 3, widths=(6, 5), seed=4)
    a = ref.comp_contrast(inputs.z, inputs.weights, inputs.biases, None, "silu", mode="fwd")
    b = ref.comp_contrast(inputs.z, inputs.weights, inputs.biases, None, "silu", mode="rev")
    assert rel(a, b) <= 1e-12


def test_closed_form_of_a_linear_generator():
    # x = W z: J = W for every sample, so C = sum_n sum_{i<j} |W_ni| |W_nj| = 1/2 sum_n ((sum_i |W_ni|)^2 - |W_n|^2).
    W = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 0.0], [-1.0, 1.0, 3.0]], dtype=F64)
    z = torch.randn(4, 3, dtype=F64)
    C = comp_contrast(z, [W], [None], [])
    want = 1.0 * 2.0 + 0.0 + (1.0 * 1.0 + 1.0 * 3.0 + 1.0 * 3.0)  # row 0: |1||-2|; row 1: one latent; row 2: 3 pairs
    torch.testing.assert_close(C, torch.full((4,), want, dtype=F64), rtol=0, atol=1e-14)
    Cn = comp_contrast(z, [W], [None], [], normalize="jacobian")
    torch.testing.assert_close(Cn, C / W.square().sum(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("activation,normalize", [("gelu", "none"), ("tanh", "jacobian"), ("softplus", "none"),
                                                  ("leaky_relu", "none")])
def test_gradcheck_float64(activation, normalize):
    inputs = sample_inputs(3, 3, widths=(5, 4), conditioning="in_bias", seed=5, requires_grad=True)

    def fn(z, w0, w1, b0, b1, ib):
        return comp_contrast(z, [w0, w1], [b0, b1], activation, in_bias=ib, final_activation=True,
                             normalize=normalize)

    assert torch.autograd.gradcheck(fn, tuple(leaves_of(inputs)))


def test_gradient_of_q_alone_and_of_both_outputs():
    # The raw op's two outputs: gradients through Q only (C unused) and through a mix of both match the reference.
    inputs = sample_inputs(4, 3, widths=(6, 5), seed=6, requires_grad=True)
    z, ws, bs = inputs.z, inputs.weights, inputs.biases
    C, Q, _ = torch.ops.mclcore.comp_contrast(z, ws, bs, None, ["tanh"], [0.0])

    def jac_ref():
        return ref.jacobians(lambda zb, _: ref.mlp(zb, ws, bs, None, "tanh"), z)

    leaves = leaves_of(inputs)
    Qr = jac_ref().square().sum(dim=(1, 2))
    assert rel(Q, Qr) <= 1e-12
    for g, gr in zip(grads(Q, leaves), grads(Qr, leaves)):
        assert rel(g, gr) <= 1e-10
    C, Q, _ = torch.ops.mclcore.comp_contrast(z, ws, bs, None, ["tanh"], [0.0])
    Cr = ref.contrast_of_jacobian(jac_ref())
    for g, gr in zip(grads(C - 0.3 * Q, leaves), grads(Cr - 0.3 * jac_ref().square().sum(dim=(1, 2)), leaves)):
        assert rel(g, gr) <= 1e-10


def test_float32_tolerance():
    i64 = sample_inputs(64, 10, widths=(64, 64, 64), conditioning="in_bias", seed=7, requires_grad=True)
    i32 = sample_inputs(64, 10, widths=(64, 64, 64), conditioning="in_bias", seed=7, dtype=torch.float32,
                        requires_grad=True)
    C64 = comp_contrast(i64.z, i64.weights, i64.biases, "gelu", in_bias=i64.in_bias)
    C32 = comp_contrast(i32.z, i32.weights, i32.biases, "gelu", in_bias=i32.in_bias)
    assert C32.dtype == torch.float32
    assert float(((C32.double() - C64) / C64).abs().max().detach()) <= 1e-5
    for g32, g64 in zip(grads(C32, leaves_of(i32)), grads(C64, leaves_of(i64))):
        assert g32.dtype == torch.float32
        assert rel(g32.double(), g64) <= 1e-5


def _op_args(dtype, with_in_bias, contiguous=True, final=False):
    inputs = sample_inputs(4, 3, widths=(6, 5), conditioning="in_bias" if with_in_bias else "none", dtype=dtype,
                           seed=9, contiguous=contiguous)
    acts = ["gelu", "tanh"] if final else ["gelu"]
    return (inputs.z, inputs.weights, inputs.biases, inputs.in_bias, acts, [0.0] * len(acts))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("with_in_bias", [False, True])
def test_opcheck(dtype, with_in_bias):
    args = _op_args(dtype, with_in_bias, final=with_in_bias)
    grad_args = (args[0].requires_grad_(), [w.requires_grad_() for w in args[1]],
                 [b.requires_grad_() for b in args[2]], args[3], *args[4:])
    torch.library.opcheck(torch.ops.mclcore.comp_contrast.default, grad_args)
    C, Q, saved = torch.ops.mclcore.comp_contrast(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    g = torch.randn_like(C)
    det = lambda t: t.detach() if isinstance(t, torch.Tensor) else t  # noqa: E731
    torch.library.opcheck(torch.ops.mclcore.comp_contrast_backward.default,
                          (g, 0.5 * g, det(args[0]), [det(w) for w in args[1]], [det(b) for b in args[2]],
                           det(args[3]), saved, args[4], args[5]))


def test_noncontiguous_inputs_give_the_same_values_and_gradients():
    a = sample_inputs(5, 3, widths=(6, 5), conditioning="in_bias", seed=10, contiguous=False, requires_grad=True)
    b = sample_inputs(5, 3, widths=(6, 5), conditioning="in_bias", seed=10, requires_grad=True)
    assert not a.z.is_contiguous() and not a.weights[0].is_contiguous() and not a.biases[0].is_contiguous()
    assert not a.in_bias.is_contiguous()
    Ca = comp_contrast(a.z, a.weights, a.biases, "silu", in_bias=a.in_bias)
    Cb = comp_contrast(b.z, b.weights, b.biases, "silu", in_bias=b.in_bias)
    assert torch.equal(Ca, Cb) and Ca.is_contiguous()
    for ga, gb in zip(grads(Ca, leaves_of(a)), grads(Cb, leaves_of(b))):
        torch.testing.assert_close(ga, gb, rtol=1e-14, atol=1e-14)
    torch.library.opcheck(torch.ops.mclcore.comp_contrast.default, _op_args(F64, True, contiguous=False))


@pytest.mark.parametrize("B,dz,widths,final", [(1, 1, [1], True), (2, 1, [5, 3], False), (7, 7, [13, 1], False),
                                               (33, 2, [3, 3, 3, 4], False), (3, 5, [2], False),
                                               (0, 3, [5, 4], False)])
def test_odd_sizes_match_reference(B, dz, widths, final):
    inputs = sample_inputs(B, dz, widths=widths, seed=11, requires_grad=True)
    C = comp_contrast(inputs.z, inputs.weights, inputs.biases, "softplus", final_activation=final)
    assert C.shape == (B,)
    if B:
        check_against_reference(inputs, "softplus", final)
    else:  # an empty batch has zero gradients
        gs = torch.autograd.grad(C.sum(), leaves_of(inputs), allow_unused=True)
        assert all(g is None or not g.any() for g in gs)
    if dz == 1:  # one latent: no pairs
        assert not C.any()


def test_chunking_and_threads_do_not_change_results():
    # B large enough for several chunks on 2 threads and several blocks per chunk; every sample must equal its own
    # single-sample evaluation, and the parameter gradients the one-thread sums.
    inputs = sample_inputs(300, 4, widths=(16, 12), seed=13, requires_grad=True)
    z, ws, bs = inputs.z, inputs.weights, inputs.biases
    C1 = comp_contrast(z, ws, bs, "tanh")
    g1 = grads(C1, leaves_of(inputs))
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        C2 = comp_contrast(z, ws, bs, "tanh")
        g2 = grads(C2, leaves_of(inputs))
    finally:
        torch.set_num_threads(n)
    torch.testing.assert_close(C2, C1, rtol=1e-13, atol=0)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    for b in (0, 77, 299):
        torch.testing.assert_close(comp_contrast(z[b:b + 1], ws, bs, "tanh"), C1[b:b + 1], rtol=1e-13, atol=0)


@given(dz=st.integers(1, 5), width=st.integers(1, 8), dx=st.integers(1, 6), seed=st.integers(0, 10_000),
       activation=st.sampled_from(ACTIVATIONS), final=st.booleans())
def test_property_matches_reference(dz, width, dx, seed, activation, final):
    inputs = sample_inputs(3, dz, widths=(width, dx), seed=seed, requires_grad=True)
    # 1e-9: a draw whose |J| entries nearly cancel loses a few digits in both computations; a wrong formula is O(1)
    check_against_reference(inputs, activation, final, tol=1e-9)


@given(dz=st.integers(2, 4), dx=st.integers(1, 6), seed=st.integers(0, 10_000),
       activation=st.sampled_from(ACTIVATIONS), scale=st.floats(0.1, 10.0))
def test_property_invariances(dz, dx, seed, activation, scale):
    # Permuting the latents (z and the columns of W_0), permuting the outputs or flipping their signs (rows of the
    # last layer) leave C unchanged; scaling the output by a scales C by a^2 and leaves C / ||J||_F^2 unchanged;
    # 0 <= C <= (dz - 1) / 2 ||J||_F^2.
    z, ws, bs, *_ = sample_inputs(4, dz, widths=(dz + 3, dx), seed=seed)
    g = torch.Generator().manual_seed(seed)
    perm, operm = torch.randperm(dz, generator=g), torch.randperm(dx, generator=g)
    signs = torch.randint(0, 2, (dx, 1), generator=g, dtype=F64) * 2 - 1
    C = comp_contrast(z, ws, bs, activation)
    Cp = comp_contrast(z[:, perm], [ws[0][:, perm], ws[1]], bs, activation)
    Co = comp_contrast(z, [ws[0], (signs * ws[1])[operm]], [bs[0], bs[1][operm]], activation)
    Cs = comp_contrast(z, [ws[0], scale * ws[1]], bs, activation)
    torch.testing.assert_close(Cp, C, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(Co, C, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(Cs, scale ** 2 * C, rtol=1e-12, atol=1e-14)
    Cn = comp_contrast(z, ws, bs, activation, normalize="jacobian")
    torch.testing.assert_close(comp_contrast(z, [ws[0], scale * ws[1]], bs, activation, normalize="jacobian"), Cn,
                               rtol=1e-12, atol=1e-14)
    assert (C >= 0).all() and (Cn <= (dz - 1) / 2 + 1e-12).all()


def test_double_backward_raises():
    inputs = sample_inputs(2, 3, widths=(6, 5), seed=14, requires_grad=True)
    C = comp_contrast(inputs.z, inputs.weights, inputs.biases, "tanh")
    (gz,) = torch.autograd.grad(C.sum(), inputs.z, create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable again"):
        gz.sum().backward()


from tests.ops._mlp_cases import bad as _bad, layers as _layers  # noqa: E402


@pytest.mark.parametrize("kw,err,match", [
    (_bad(z=torch.randn(4, 3, 1, dtype=F64)), ValueError, r"z: expected a 2-D"),
    (_bad(z=[[0.0, 1.0, 2.0]]), TypeError, r"z: expected a torch.Tensor"),
    (_bad(z=torch.randn(4, 3, dtype=torch.float16)), TypeError, r"z: expected float32 or float64"),
    (_bad(z=torch.zeros(4, 0, dtype=F64)), ValueError, r"z: expected at least one latent"),
    (_bad(z=torch.randn(4, 2, dtype=F64)), ValueError, r"weights\[0\]: expected 2 input features"),
    (_bad(weights=[], biases=[]), ValueError, r"weights: expected at least one layer"),
    (_bad(weights=torch.zeros(8, 3, dtype=F64)), TypeError, r"weights, biases: expected a list"),
    (_bad(biases=_layers((8, 6))[1][:1]), ValueError, r"biases: expected 2 entries"),
    (_bad(biases=[torch.zeros(8, dtype=F64), torch.zeros(5, dtype=F64)]), ValueError, r"biases\[1\]: expected shape"),
    (_bad(biases=[torch.zeros(8, dtype=F64), torch.zeros(6)]), TypeError, r"biases\[1\]: expected dtype"),
    (_bad(weights=[w.float() for w in _layers((8, 6))[0]]), TypeError, r"weights\[0\]: expected dtype"),
    (_bad(activation="swish"), ValueError, r"activation: expected one of"),
    (_bad(activation=["tanh", "tanh"]), ValueError, r"activation: expected one entry per activation \(1\)"),
    (_bad(activation="softplus", act_param=-1.0), ValueError, r"softplus beta"),
    (_bad(act_param=[0.1, 0.2]), ValueError, r"act_param: expected one entry per activation"),
    (_bad(in_bias=torch.zeros(4, 6, dtype=F64)), ValueError, r"in_bias: expected shape \(4, 8\)"),
    (_bad(in_bias=torch.zeros(4, 8)), TypeError, r"in_bias: expected dtype torch.float64"),
    (_bad(normalize="l1"), ValueError, r"normalize: expected one of"),
    (_bad(z=torch.full((4, 3), float("nan"), dtype=F64)), ValueError, r"z: contains NaN"),
])
def test_bad_inputs_raise_clear_errors(kw, err, match):
    with pytest.raises(err, match=match):
        comp_contrast(**kw)


def test_raw_op_checks_its_arguments():
    ws, bs = _layers((8, 6), seed=19)
    z = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(RuntimeError, match="comp_contrast: activations: expected tanh"):
        torch.ops.mclcore.comp_contrast(z, ws, bs, None, ["nope"], [0.0])
    with pytest.raises(RuntimeError, match="act_params: expected 1"):
        torch.ops.mclcore.comp_contrast(z, ws, bs, None, ["tanh"], [])
    with pytest.raises(RuntimeError, match=r"in_bias: expected shape \(2, 8\)"):
        torch.ops.mclcore.comp_contrast(z, ws, bs, torch.zeros(2, 5, dtype=F64), ["tanh"], [0.0])
    C, Q, saved = torch.ops.mclcore.comp_contrast(z, ws, bs, None, ["tanh"], [0.0])
    with pytest.raises(RuntimeError, match="saved must be the workspace"):
        torch.ops.mclcore.comp_contrast_backward(C, Q, z, ws, bs, None, saved[1:], ["tanh"], [0.0])
    with pytest.raises(RuntimeError, match=r"grad_c, grad_q: expected shape \(2\)"):
        torch.ops.mclcore.comp_contrast_backward(C[:1], Q, z, ws, bs, None, saved, ["tanh"], [0.0])


# ---------------------------------------------------------------------------------------------------------------
# The Triton kernels (mclcore/ops/triton/comp_contrast.py) on the CPU under the Triton interpreter. TRITON_INTERPRET=1
# must be set before triton is first imported, so this file re-runs itself as a script in a subprocess
# (tests/ops/_interpreter.py) that runs TRITON_CHECKS and prints their results; test_triton_kernel reads them. The
# launchers must return what the C++ kernels return: C, Q, the saved workspace (same layout) and every gradient.


def _check_triton(dtype, activation, final=False, conditioning="none", B=5, dz=3, widths=(7, 6), seed=0):
    from mclcore.ops import triton as tk

    inputs = sample_inputs(B, dz, widths=widths, conditioning=conditioning, dtype=dtype, seed=seed,
                           contiguous=False)
    n_act = len(widths) if final else len(widths) - 1
    acts = [activation] * n_act
    prms = [0.7 if activation == "softplus" else 0.2] * n_act
    args = (inputs.z, inputs.weights, inputs.biases, inputs.in_bias, acts, prms)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=2e-5, atol=2e-5)
    C, Q, saved = tk.comp_contrast(*args, block=16)
    cC, cQ, csaved = torch.ops.mclcore.comp_contrast(*args)
    assert C.dtype == dtype and C.shape == (B,) and saved.shape == csaved.shape
    for a, b in ((C, cC), (Q, cQ), (saved, csaved)):
        torch.testing.assert_close(a, b, **tol)
    g = torch.randn(B, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype)
    got = tk.comp_contrast_backward(g, 0.5 * g, *args[:4], saved, acts, prms, block=16)
    want = torch.ops.mclcore.comp_contrast_backward(g, 0.5 * g, *args[:4], csaved, acts, prms)
    flat = lambda out: [out[0], *out[1], *out[2], out[3]]  # noqa: E731
    for a, b in zip(flat(got), flat(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


def _check_triton_routing():
    # The public op's CUDA kernel (registered by mclcore.ops.comp_contrast through _backend.register_cuda) runs the
    # Triton launchers when the Triton backend is selected; called directly on CPU tensors here.
    from mclcore.ops import _backend

    inputs = sample_inputs(4, 3, widths=(6, 5), seed=30)
    args = (inputs.z, inputs.weights, inputs.biases, None, ["tanh"], [0.0])
    with _backend.use_backend("triton"):
        C, Q, saved = _backend.CUDA_KERNELS["comp_contrast"](*args)
        g = _backend.CUDA_KERNELS["comp_contrast_backward"](torch.ones(4, dtype=F64), torch.zeros(4, dtype=F64),
                                                            *args[:4], saved, *args[4:])
    cC, _, csaved = torch.ops.mclcore.comp_contrast(*args)
    cg = torch.ops.mclcore.comp_contrast_backward(torch.ones(4, dtype=F64), torch.zeros(4, dtype=F64), *args[:4],
                                                  csaved, *args[4:])
    torch.testing.assert_close(C, cC, rtol=1e-12, atol=0)
    torch.testing.assert_close(g[0], cg[0], rtol=1e-12, atol=1e-14)


def _check_triton_bad_arguments():
    from mclcore.ops import triton as tk

    inputs = sample_inputs(2, 3, widths=(6, 5), seed=31)
    with pytest.raises(RuntimeError, match="comp_contrast: activations: expected tanh"):
        tk.comp_contrast(inputs.z, inputs.weights, inputs.biases, None, ["nope"], [0.0])
    C, Q, saved = tk.comp_contrast(inputs.z, inputs.weights, inputs.biases, None, ["tanh"], [0.0])
    with pytest.raises(RuntimeError, match="saved must be the workspace"):
        tk.comp_contrast_backward(C, Q, inputs.z, inputs.weights, inputs.biases, None, saved[1:], ["tanh"], [0.0])


TRITON_CHECKS = {
    **{f"f64-{a}": (lambda a=a: _check_triton(F64, a, seed=len(a))) for a in ACTIVATIONS},
    "f64-gelu-final-in_bias": lambda: _check_triton(F64, "gelu", final=True, conditioning="in_bias", seed=20),
    "f64-softplus-deep-ragged": lambda: _check_triton(F64, "softplus", B=17, dz=4, widths=(20, 9, 33), seed=21),
    "f64-dz1": lambda: _check_triton(F64, "tanh", dz=1, seed=22),
    "f64-linear-one-layer": lambda: _check_triton(F64, "tanh", widths=(4,), seed=23),
    "f64-empty-batch": lambda: _check_triton(F64, "silu", B=0, seed=24),
    "f32-gelu-in_bias": lambda: _check_triton(torch.float32, "gelu", conditioning="in_bias", seed=25),
    "f32-leaky_relu-final": lambda: _check_triton(torch.float32, "leaky_relu", final=True, seed=26),
    "routing": _check_triton_routing,
    "bad-arguments": _check_triton_bad_arguments,
}


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    from tests.ops._interpreter import run_file

    return run_file(__file__)


@pytest.mark.parametrize("name", list(TRITON_CHECKS))
def test_triton_kernel(interpreted, name):
    assert name in interpreted, f"check {name} did not run"
    assert interpreted[name] is None, interpreted[name]


if __name__ == "__main__":
    import mclcore.ops  # noqa: F401  (registers torch.ops.mclcore)
    from tests.ops._interpreter import run_checks

    run_checks(TRITON_CHECKS)
