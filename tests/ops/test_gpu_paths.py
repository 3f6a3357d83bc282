"""The GPU code paths of the mclcore ops, proven without a GPU as far as possible.

1. Strides. Every input of every op given as a non-contiguous view (every other element at a storage offset, or a
   column-major / every-third-element layout; the gaps hold NaN or out-of-range ids) gives the result of the
   contiguous call: ``infonce`` / ``infonce_with_grad`` p, k, groups; ``infonce_backward`` also lse_all, lse_pos (its
   0-dim grad_loss has no strides); ``critic_grad`` / ``critic_grad_backward`` v, grad_out, each weight and bias
   (not the (1,) output bias: a one-element tensor is always contiguous); ``mech_derivs`` z, each weight and bias,
   in_bias, film_scale, film_shift. On the C++ CPU kernels (in this process) and on the Triton launchers under the
   interpreter (a subprocess, as in tests/ops/test_triton.py). The workspace ``saved`` of critic_grad_backward is
   an op output, not a user input: both backends reject a non-contiguous one with the same error.
2. No host synchronisation and no host-to-device copy in the launch paths. Under the interpreter every launcher
   runs with a detector (:func:`no_host_sync`) that raises when code outside the triton package calls
   ``Tensor.item``, ``__bool__``, ``__int__``, ``__float__``, ``__index__``, ``tolist``, ``cpu``, ``numpy``,
   ``nonzero``, ``masked_select``, ``unique``, indexes with a boolean tensor, or when mclcore builds a tensor from
   host data (``torch.tensor``, ``as_tensor``, ``from_numpy``) or a factory tensor without a ``device``. The public
   wrappers' CUDA route runs the same way: the C++ CPU kernels are replaced by the Triton launchers and
   ``mclcore.ops._backend.host_checks`` answers as for CUDA tensors, so infonce (forward and backward, with groups),
   critic_grad (forward and its second-order backward), mech_derivs and comp_contrast (forward and backward) go
   wrapper -> dispatcher -> autograd -> launcher under the detector. Self-checks show the detector catches each kind of call, the opt-in
   MCLCORE_TRITON_CHECK_FINITE=1 and the wrappers' CPU-only finiteness check. The CUDA C++ InfoNCE's host code
   (C++, invisible to the detector) is read as source: its only synchronising call is the opt-in finiteness check
   (MCLCORE_CUDA_CHECK_FINITE=1); by default its device-side flag makes the outputs NaN instead.
   The eager checks of the wrappers that read values on the host (mech_derivs' "z holds no NaN") run on the CPU
   only (skipped for CUDA tensors, :func:`mclcore.ops._backend.host_checks`); infonce's non-finite check lives in
   the kernels (C++ CPU: raises; Triton: opt-in).
3. Tensor cores by default: the dtype of the tl.dot operands and the ``input_precision`` every infonce launch gets
   (16-bit inputs: 16-bit operands; float32: "tf32" exactly when PyTorch allows TF32, through either of its APIs,
   or as MCLCORE_TRITON_FP32_DOT says; the opt-outs). That the kernels then compile to tensor-core instructions is
   the opt-in sm_90 compile check of tests/ops/test_triton.py (MCLCORE_TEST_TRITON_COMPILE=1).
4. With a GPU only (marker ``gpu``, skipped here): each op captured in a CUDA graph and replayed on new inputs;
   each op under ``torch.cuda.set_sync_debug_mode("error")``; the TF32 / tf32x3 / IEEE accuracy of float32
   InfoNCE; the non-contiguous inputs of part 1 on CUDA for both backends; the device guard with tensors on a second
   GPU.
"""
from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # run as a script (the interpreter subprocess)
    sys.path.insert(0, ROOT)

import mclcore.ops  # noqa: E402  (registers torch.ops.mclcore)
from mclcore.ops import _backend  # noqa: E402
from tests.ops._interpreter import run_checks, run_file  # noqa: E402

TILES = dict(block_m=16, block_n=16)
KINDS = ("strided", "transposed")

# ---------------------------------------------------------------------------------------------------------------
# Part 1: the cases, shared by the CPU, interpreter and GPU runs


def _garbage(x: torch.Tensor, shape) -> torch.Tensor:
    if x.is_floating_point():
        return torch.full(shape, float("nan"), dtype=x.dtype, device=x.device)
    return torch.full(shape, 10**6, dtype=x.dtype, device=x.device)  # an id no row has


def non_contiguous(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A non-contiguous view holding x's values. "strided": every other element of the last dimension at storage
    offset 1 (``groups[1::2]`` of a longer buffer); "transposed": column-major for 2-D (every third element of the
    last dimension where that is still contiguous, as for a (1, n) tensor), every third element for 1-D."""
    view = None
    if kind == "transposed" and x.dim() == 2:
        view = _garbage(x, (x.shape[1], x.shape[0])).t()
    if view is None or view.is_contiguous():
        step, offset = (2, 1) if kind == "strided" else (3, 0)
        buf = _garbage(x, (*x.shape[:-1], step * x.shape[-1] + offset))
        view = buf[..., offset::step]
    view.copy_(x)
    assert not view.is_contiguous() and torch.equal(view.nan_to_num(0), x.nan_to_num(0)), (kind, tuple(x.shape))
    return view


def _randn(gen, *shape, dtype, device, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def op_cases(dtype=torch.float64, device="cpu", infonce_dtype=None):
    """{op: (args, inputs)}: positional args of ``torch.ops.mclcore.<op>`` with contiguous tensors, and the inputs
    to make non-contiguous as (name, index into args, index into a list argument or None)."""
    gen = torch.Generator().manual_seed(0)
    idt = infonce_dtype or dtype
    B, d, tau, eps = 17, 5, 0.1, 1e-12
    p, k = _randn(gen, B, d, dtype=idt, device=device), _randn(gen, B, d, dtype=idt, device=device)
    groups = torch.randint(0, 3, (B,), generator=gen).to(device)
    # lse_all, lse_pos of these inputs (from the C++ CPU op: the backward just needs consistent row statistics).
    _, la, lp = torch.ops.mclcore.infonce(p.cpu(), k.cpu(), groups.cpu(), tau, eps)
    la, lp = la.to(device), lp.to(device)
    grad = torch.tensor(1.3, dtype=la.dtype).to(device)
    pk = [("p", 0, None), ("k", 1, None), ("groups", 2, None)]
    cases = {
        "infonce": ([p, k, groups, tau, eps], pk),
        "infonce_with_grad": ([p, k, groups, tau, eps], pk),
        "infonce_backward": ([grad, p, k, groups, la, lp, tau, eps],
                             [("p", 1, None), ("k", 2, None), ("groups", 3, None), ("lse_all", 4, None),
                              ("lse_pos", 5, None)]),
    }
    dims = (7, 6, 5, 1)
    ws = [_randn(gen, o, i, dtype=dtype, device=device, scale=i**-0.5) for i, o in zip(dims[:-1], dims[1:])]
    bs = [_randn(gen, o, dtype=dtype, device=device, scale=0.5) for o in dims[1:]]
    v = _randn(gen, 9, dims[0], dtype=dtype, device=device, scale=2.0)
    up = _randn(gen, 9, dims[0], dtype=dtype, device=device)
    # The workspace from the C++ CPU op (both backends share its layout), so no GPU backend is needed to build it.
    saved = torch.ops.mclcore.critic_grad(v.cpu(), [w.cpu() for w in ws], [b.cpu() for b in bs], "gelu")[1].to(device)
    params = [(f"weights[{i}]", 1, i) for i in range(len(ws))] + [(f"biases[{i}]", 2, i) for i in range(len(bs) - 1)]
    cases["critic_grad"] = ([v, ws, bs, "gelu"], [("v", 0, None)] + params)
    cases["critic_grad_backward"] = ([up, v, ws, bs, saved, "gelu"],
                                     [("grad_out", 0, None), ("v", 1, None)]
                                     + [(n, i + 1, j) for n, i, j in params])
    dz, widths, Bm = 3, (5, 4), 4
    mdims = (dz, *widths)
    mws = [_randn(gen, o, i, dtype=dtype, device=device, scale=0.9) for i, o in zip(mdims[:-1], mdims[1:])]
    mbs = [_randn(gen, o, dtype=dtype, device=device, scale=0.3) for o in mdims[1:]]
    z = _randn(gen, Bm, dz, dtype=dtype, device=device)
    ib = _randn(gen, Bm, widths[0], dtype=dtype, device=device, scale=0.3)
    sc = (torch.rand(Bm, dz, generator=gen, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype)
    sh = _randn(gen, Bm, dz, dtype=dtype, device=device, scale=0.2)
    cases["mech_derivs"] = ([z, mws, mbs, ib, sc, sh, ["softplus"], [0.7]],
                            [("z", 0, None), ("in_bias", 3, None), ("film_scale", 4, None), ("film_shift", 5, None)]
                            + [(f"weights[{i}]", 1, i) for i in range(2)] + [(f"biases[{i}]", 2, i) for i in range(2)])
    # comp_contrast: the same generator (in_bias, no FiLM); the workspace from the C++ CPU op (shared layout).
    layers = [(f"weights[{i}]", 1, i) for i in range(2)] + [(f"biases[{i}]", 2, i) for i in range(2)]
    cargs = [z, mws, mbs, ib, ["tanh"], [0.0]]
    csaved = torch.ops.mclcore.comp_contrast(*[t.cpu() if isinstance(t, torch.Tensor) else
                                               [x.cpu() for x in t] if i in (1, 2) else t
                                               for i, t in enumerate(cargs)])[2].to(device)
    cases["comp_contrast"] = (cargs, [("z", 0, None), ("in_bias", 3, None)] + layers)
    gc, gq = _randn(gen, Bm, dtype=dtype, device=device), _randn(gen, Bm, dtype=dtype, device=device)
    cases["comp_contrast_backward"] = ([gc, gq, *cargs[:4], csaved, *cargs[4:]],
                                       [("grad_c", 0, None), ("grad_q", 1, None), ("z", 2, None), ("in_bias", 5, None)]
                                       + [(n, i + 2, j) for n, i, j in layers])
    return cases


def with_view(args, where, kind):
    """args with the input at ``where`` = (name, i, j) replaced by its non-contiguous view."""
    _, i, j = where
    args = list(args)
    if j is None:
        args[i] = non_contiguous(args[i], kind)
    else:
        lst = list(args[i])
        lst[j] = non_contiguous(lst[j], kind)
        args[i] = lst
    return args


def assert_same(got, want, what):
    if isinstance(want, (list, tuple)):
        assert len(got) == len(want), what
        for n, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{what}[{n}]")
        return
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    if not want.is_floating_point():
        assert torch.equal(got, want), what
        return
    # Same values in another layout: equal up to the GEMMs' summation order (C++ / cuBLAS pick kernels by layout).
    rtol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(want.dtype, 1e-3)
    scale = max(want.double().nan_to_num(0, 0, 0).abs().max().item(), 1.0)
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def check_every_input(call, cases, kinds=KINDS):
    """call(op, args) -> outputs; every input of every case, non-contiguous, against the contiguous call."""
    for op, (args, inputs) in cases.items():
        want = call(op, args)
        for where in inputs:
            for kind in kinds:
                assert_same(call(op, with_view(args, where, kind)), want, f"{op} {where[0]} {kind}")


def check_saved_must_be_contiguous(call, cases):
    args = list(cases["critic_grad_backward"][0])
    args[4] = non_contiguous(args[4], "strided")
    with pytest.raises(RuntimeError, match="saved must be the workspace returned by critic_grad"):
        call("critic_grad_backward", args)


def _cpu_call(op, args):
    return getattr(torch.ops.mclcore, op)(*args)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_kernels_take_every_input_non_contiguous(dtype):
    check_every_input(_cpu_call, op_cases(dtype))


def test_cpu_kernels_take_every_input_non_contiguous_half_infonce():
    cases = {op: c for op, c in op_cases(infonce_dtype=torch.float16).items() if op.startswith("infonce")}
    check_every_input(_cpu_call, cases)


def test_cpu_critic_grad_backward_rejects_a_non_contiguous_workspace():
    check_saved_must_be_contiguous(_cpu_call, op_cases())


def test_cases_cover_every_op_and_input():
    cases = op_cases()
    assert set(cases) == set(_backend.OPS)
    names = {op: {n for n, _, _ in inputs} for op, (_, inputs) in cases.items()}
    assert names["infonce"] == {"p", "k", "groups"}
    assert names["infonce_backward"] == {"p", "k", "groups", "lse_all", "lse_pos"}
    assert {"v", "weights[0]", "weights[2]", "biases[0]", "biases[1]"} <= names["critic_grad"]
    assert {"z", "in_bias", "film_scale", "film_shift", "weights[1]", "biases[1]"} <= names["mech_derivs"]


def test_device_guard_is_a_no_op_on_the_cpu():
    pytest.importorskip("triton")
    from mclcore.ops.triton._launch import capturing, device_guard

    x = torch.zeros(2)
    with device_guard(x) as ctx:
        assert ctx is None
    assert not capturing(x)


def test_host_checks_run_on_the_cpu_only():
    assert _backend.host_checks(torch.zeros(1))
    with pytest.raises(ValueError, match="z: contains NaN"):  # the wrapper's eager check, CPU route
        mclcore.ops.mech_derivs(torch.tensor([[float("nan")]]), [torch.ones(1, 1)], [None], activation="tanh",
                                final_activation=True)


# ---------------------------------------------------------------------------------------------------------------
# Part 2: the host-synchronisation detector


class HostSync(AssertionError):
    """A launch path read a tensor on the host or built one from host data."""


_SYNC_METHODS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "cpu", "numpy", "nonzero",
                 "masked_select", "unique")
_HOST_DATA = ("tensor", "as_tensor", "from_numpy", "nonzero", "masked_select", "unique")
_FACTORIES = ("arange", "empty", "eye", "full", "ones", "rand", "randn", "triu_indices", "tril_indices", "zeros")


def _caller_outside_triton(depth=2):
    import triton

    tri = os.path.dirname(os.path.abspath(triton.__file__))
    f = sys._getframe(depth)
    return f.f_code.co_filename, not os.path.abspath(f.f_code.co_filename).startswith(tri)


@contextlib.contextmanager
def no_host_sync():
    """Inside, the calls listed in the module docstring raise :class:`HostSync` (naming the call and the caller's
    file and line) when made outside the triton package (whose interpreter reads its arguments on the host, which a
    GPU launch never does)."""
    saved = []

    def patch(owner, name, make):
        original = getattr(owner, name)
        saved.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, make(original, name))

    def guarded(original, name):
        def method(*args, **kwargs):
            f = sys._getframe(1)
            fname, outside = _caller_outside_triton()
            if outside:
                raise HostSync(f"{name} called at {os.path.relpath(fname, ROOT)}:{f.f_lineno}")
            return original(*args, **kwargs)
        return method

    def host_data(original, name):
        def fn(*args, **kwargs):
            f = sys._getframe(1)
            if os.path.abspath(f.f_code.co_filename).startswith(ROOT):
                raise HostSync(f"torch.{name} called at {os.path.relpath(f.f_code.co_filename, ROOT)}:{f.f_lineno}")
            return original(*args, **kwargs)
        return fn

    def factory(original, name):
        def fn(*args, **kwargs):
            f = sys._getframe(1)
            if kwargs.get("device") is None and os.path.abspath(f.f_code.co_filename).startswith(ROOT):
                raise HostSync(f"torch.{name} without device= at {os.path.relpath(f.f_code.co_filename, ROOT)}:"
                               f"{f.f_lineno} (a host tensor; moving it to the GPU is a copy per call)")
            return original(*args, **kwargs)
        return fn

    def getitem(original, name):
        def method(self, index):
            items = index if isinstance(index, tuple) else (index,)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items):
                fname, outside = _caller_outside_triton()
                if outside:
                    raise HostSync(f"boolean-mask indexing ({name}) at {os.path.relpath(fname, ROOT)}")
            return original(self, index)
        return method

    try:
        for name in _SYNC_METHODS:
            patch(torch.Tensor, name, guarded)
        for name in _HOST_DATA:
            patch(torch, name, host_data)
        for name in _FACTORIES:
            patch(torch, name, factory)
        patch(torch.Tensor, "__getitem__", getitem)
        yield
    finally:
        for owner, name, original, own in reversed(saved):
            if own:
                setattr(owner, name, original)
            else:  # inherited (e.g. from torch._C.TensorBase): drop the shadowing attribute
                delattr(owner, name)


@contextlib.contextmanager
def cuda_route():
    """The public wrappers as on CUDA tensors, with CPU tensors: the Triton launchers registered as the mclcore ops'
    CPU kernels (the dispatcher then runs them exactly where it would run the CUDA kernel), and host_checks False."""
    from mclcore.ops import triton as tk

    lib = torch.library.Library("mclcore", "IMPL")
    original = _backend.host_checks
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel"
            for op in _backend.OPS:
                lib.impl(op, getattr(tk, op), "CPU")
        _backend.host_checks = lambda t: False
        yield
    finally:
        _backend.host_checks = original
        lib._destroy()


# ---------------------------------------------------------------------------------------------------------------
# The CUDA C++ InfoNCE (csrc/infonce/infonce_cuda.cu): the detector above cannot see C++ code, and its kernels need
# a GPU, so its host side is read as source: every call that can synchronise with the host sits inside the opt-in
# finiteness check (MCLCORE_CUDA_CHECK_FINITE=1). That the check is off unless the variable is 1, and that the
# device-side flag then makes the outputs NaN, is tested in tests/ops/test_cuda_compile.py (g++ and the CUDA
# emulation); on a GPU, test_gpu_ops_do_not_synchronise below runs it under torch.cuda.set_sync_debug_mode("error").

_CPP_SYNC = (r"\.cpu\(", r"\.item\s*[<(]", r"\.tolist\(", r"_local_scalar_dense", r"\bcudaMemcpy\s*\(",
             r"cudaMemcpyDeviceToHost", r"cudaStreamSynchronize", r"cudaDeviceSynchronize", r"cudaEventSynchronize",
             r"\bkCPU\b", r"\.equal\(", r"\.is_nonzero\(")


def _block_after(src: str, start: int) -> tuple[int, int]:
    """(begin, end) of the brace block that opens first at or after ``start``."""
    i = src.index("{", start)
    depth = 0
    for j in range(i, len(src)):
        depth += {"{": 1, "}": -1}.get(src[j], 0)
        if depth == 0:
            return i, j
    raise AssertionError("unbalanced braces")


def test_cuda_infonce_host_code_synchronises_only_when_asked():
    import re

    src = open(os.path.join(ROOT, "csrc", "infonce", "infonce_cuda.cu")).read()
    host = src.index("// Host side.")
    # Comments blanked out (same length, so offsets and line numbers stay).
    src = src[:host] + re.sub(r"//[^\n]*", lambda m: " " * len(m.group(0)), src[host:])
    guard = src.index("if (check_finite_enabled()", host)
    begin, end = _block_after(src, guard)
    hits = [(m.start(), m.group(0)) for pat in _CPP_SYNC for m in re.finditer(pat, src[host:])]
    assert any(begin < host + at < end for at, _ in hits), "the opt-in check no longer reads the flag back?"
    outside = [(src.count("\n", 0, host + at) + 1, what) for at, what in hits if not begin < host + at < end]
    assert not outside, f"host synchronisation outside the opt-in finiteness check (line, call): {outside}"
    # The launches pass the device flag on (the default path's replacement for the check).
    assert src.count("in.badptr()") >= 4, "combine_kernel, loss_kernel and both norm_bwd_kernel launches read the flag"


# ---------------------------------------------------------------------------------------------------------------
# The interpreter checks (this file run as a script with TRITON_INTERPRET=1)


def _tk():
    from mclcore.ops import triton as tk

    return tk


def _triton_call(op, args):
    kw = dict(TILES) if op.startswith("infonce") else dict(block=16) if op == "mech_derivs" else {}
    return getattr(_tk(), op)(*args, **kw)


def _check_triton_non_contiguous_f64():
    check_every_input(_triton_call, op_cases(torch.float64))


def _check_triton_non_contiguous_f32():
    check_every_input(_triton_call, op_cases(torch.float32), kinds=("strided",))


def _check_triton_non_contiguous_f16_infonce():
    # 16-bit inputs take the tensor-core path (16-bit tl.dot operands) by default.
    cases = {op: c for op, c in op_cases(infonce_dtype=torch.float16).items() if op.startswith("infonce")}
    check_every_input(_triton_call, cases)


def _check_triton_groups_view_regression():
    # The reported case: a strided view of int64 groups (groups[::2]) gave 1.610 instead of 1.884 with no error.
    tk = _tk()
    gen = torch.Generator().manual_seed(0)
    p, k = torch.randn(17, 5, generator=gen), torch.randn(17, 5, generator=gen)
    g = torch.randint(0, 3, (34,), generator=gen)[::2]
    for fn in (tk.infonce, tk.infonce_with_grad):
        assert_same(fn(p, k, g, 0.1, 1e-12, **TILES), fn(p, k, g.contiguous(), 0.1, 1e-12, **TILES), fn.__name__)
    assert_same(tk.infonce(p, k, g, 0.1, 1e-12, **TILES), torch.ops.mclcore.infonce(p, k, g, 0.1, 1e-12), "vs C++")


def _check_triton_saved_must_be_contiguous():
    check_saved_must_be_contiguous(_triton_call, op_cases())


def _sync_free_calls(cases):
    """Every launcher with its options on (groups, FiLM and in_bias, several activations, two sample chunks), on the
    inputs of ``cases`` (built beforehand: building them reads host data)."""
    tk = _tk()
    out = []
    for op in ("infonce", "infonce_with_grad", "infonce_backward", "critic_grad", "critic_grad_backward"):
        out.append(_triton_call(op, cases[op][0]))
    args = list(cases["infonce"][0])
    args[2] = None  # diagonal mode too
    out.append(_triton_call("infonce_with_grad", args))
    z, ws, bs, ib, sc, sh, _, _ = cases["mech_derivs"][0]
    out.append(tk.mech_derivs(z, ws, bs, ib, sc, sh, ["gelu", "smooth_leaky"], [0.0, 0.2], block=16, chunk=3))
    out.append(tk.mech_derivs(z, ws, bs, None, None, None, ["tanh"], [0.0], block=16))
    # comp_contrast forward and backward: a curved activation with in_bias, and a linear one on the output too
    for args in (cases["comp_contrast"][0], [*cases["comp_contrast"][0][:3], None, ["relu", "relu"], [0.0, 0.0]]):
        C, Q, saved = tk.comp_contrast(*args)
        out.append((C, Q, tk.comp_contrast_backward(C, Q, *args[:4], saved, *args[4:])))
    return out


def _check_launchers_sync_free():
    tk = _tk()
    c32, c64, c16 = op_cases(torch.float32), op_cases(torch.float64), op_cases(infonce_dtype=torch.float16)
    # mech_derivs at a dz no call has used yet: its first call builds the pair tables, on the device.
    dz = 7
    z = torch.randn(3, dz, dtype=torch.float64)
    ws = [torch.randn(8, dz, dtype=torch.float64), torch.randn(dz, 8, dtype=torch.float64)]
    bs = [torch.zeros(8, dtype=torch.float64), torch.zeros(dz, dtype=torch.float64)]
    with no_host_sync():
        tk.mech_derivs(z, ws, bs, None, None, None, ["tanh"], [0.0], block=16)
        for cases in (c32, c64, c64):  # cold and warm caches
            _sync_free_calls(cases)
        for op in ("infonce", "infonce_with_grad", "infonce_backward"):  # 16-bit tensor-core path
            _triton_call(op, c16[op][0])
        # Both backward designs on float32 (the default there is split; fused: a zero-filled dq buffer and atomics).
        os.environ["MCLCORE_TRITON_INFONCE_BWD"] = "fused"
        try:
            for op in ("infonce_with_grad", "infonce_backward"):
                _triton_call(op, c32[op][0])
        finally:
            del os.environ["MCLCORE_TRITON_INFONCE_BWD"]


def _check_wrappers_cuda_route_sync_free():
    from mclcore.ops import comp_contrast, critic_grad, infonce, mech_derivs

    cases = op_cases(torch.float64)
    p, k, groups = (t.clone() for t in cases["infonce"][0][:3])
    v, ws, bs, _ = cases["critic_grad"][0]
    z, mws, mbs, ib, sc, sh, _, _ = cases["mech_derivs"][0]
    with cuda_route():
        for _ in range(2):  # the second time with every cache warm
            with no_host_sync():
                for g in (groups, None):
                    pl, kl = p.clone().requires_grad_(), k.clone().requires_grad_()
                    loss = infonce(pl, kl, 0.1, groups=g)            # mclcore::infonce_with_grad + its backward
                    dp, dk = torch.autograd.grad(loss * 2.0, (pl, kl))
                    with torch.no_grad():
                        infonce(p, k, 0.07, groups=g)                    # mclcore::infonce
                    loss = torch.ops.mclcore.infonce(pl, kl, g, 0.1, 1e-12)[0]
                    torch.autograd.grad(loss, (pl, kl))                  # mclcore::infonce_backward
                leaves = [t.clone().requires_grad_() for t in (v, *ws, *bs)]
                out = critic_grad(leaves[0], leaves[1:4], leaves[4:], "gelu")
                torch.autograd.grad((out * out).sum(), leaves)          # critic_grad_backward
                mech_derivs(z, mws, mbs, in_bias=ib, film_scale=sc, film_shift=sh, activation="softplus")
                cl = [t.clone().requires_grad_() for t in (z, *mws, *mbs, ib)]
                C = comp_contrast(cl[0], cl[1:3], cl[3:5], "tanh", in_bias=cl[5], normalize="jacobian")
                torch.autograd.grad(C.sum(), cl)                           # comp_contrast_backward
    # And the values are those of the C++ route.
    with cuda_route():
        got = mech_derivs(z, mws, mbs, in_bias=ib, film_scale=sc, film_shift=sh, activation="softplus")
        lt = infonce(p, k, 0.1, groups=groups)
    assert_same(got, mech_derivs(z, mws, mbs, in_bias=ib, film_scale=sc, film_shift=sh, activation="softplus"),
                "mech_derivs via the CUDA route")
    torch.testing.assert_close(lt, infonce(p, k, 0.1, groups=groups), rtol=1e-12, atol=1e-12)


def _expect_host_sync(fn, words):
    try:
        fn()
    except HostSync as err:
        assert words in str(err), f"{words!r} not in {err}"
    else:
        raise AssertionError(f"the detector missed {words}")


def _check_detector_catches():
    t = torch.ones(3)

    def calls():
        return {
            "item": lambda: t.sum().item(), "__bool__": lambda: bool(t.sum() > 0), "tolist": lambda: t.tolist(),
            "cpu": lambda: t.cpu(), "__float__": lambda: float(t.sum()), "__int__": lambda: int(t.sum()),
            "nonzero": lambda: t.nonzero(), "torch.tensor": lambda: torch.tensor([1.0]),
            "torch.triu_indices without device": lambda: torch.triu_indices(3, 3),
            "boolean-mask": lambda: t[t > 0],
        }

    for words, fn in calls().items():
        with no_host_sync():
            _expect_host_sync(fn, words)
    # The opt-in finiteness check of the Triton InfoNCE is a synchronisation, and is seen as one.
    p, k = torch.randn(4, 3), torch.randn(4, 3)
    os.environ["MCLCORE_TRITON_CHECK_FINITE"] = "1"
    try:
        with no_host_sync():
            _expect_host_sync(lambda: _tk().infonce(p, k, None, 0.1, 1e-12, **TILES), "__bool__")
    finally:
        del os.environ["MCLCORE_TRITON_CHECK_FINITE"]
    # The wrappers' CPU-only check (mech_derivs: z holds no NaN) would be one on the CUDA route: it is seen when
    # host_checks says CPU.
    z, mws, mbs = op_cases()["mech_derivs"][0][:3]
    with cuda_route():
        _backend.host_checks = lambda t: True
        with no_host_sync():
            _expect_host_sync(lambda: mclcore.ops.mech_derivs(z, mws, mbs), "__bool__")


# Part 3: precision of every infonce launch.


@contextlib.contextmanager
def _recorded_launches(sink):
    """Replace the infonce kernels by recorders (no kernel runs): (kernel name, launch kwargs, operand dtype)."""
    import importlib

    inf = importlib.import_module("mclcore.ops.triton.infonce")
    names = ("_normalize_kernel", "_forward_kernel", "_dq_kernel", "_dk_kernel", "_dqdk_kernel", "_dq_finish_kernel")
    originals = {n: getattr(inf, n) for n in names}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                sink.append((self.name, kwargs, args[1].dtype if self.name == "_normalize_kernel" else args[0].dtype))
            return launch

    try:
        for n in names:
            setattr(inf, n, Recorder(n))
        yield
    finally:
        for n, fn in originals.items():
            setattr(inf, n, fn)


def _precisions(dtype, env=None):
    """{kernel: (PRECISION, operand dtype)} of one infonce_with_grad call on ``dtype`` inputs."""
    env = env or {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sink = []
    try:
        p = torch.randn(20, 8).to(dtype)
        with _recorded_launches(sink):
            _tk().infonce_with_grad(p, p, None, 0.1, 1e-12)
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    out = {name: (kw.get("PRECISION"), dt) for name, kw, dt in sink}
    # The backward is one of the two designs (mclcore.ops.triton.infonce.backward_design).
    assert set(out) in (set(_KERNELS["split"]), set(_KERNELS["fused"])), out
    return out


_KERNELS = {"split": ("_normalize_kernel", "_forward_kernel", "_dq_kernel", "_dk_kernel"),
            "fused": ("_normalize_kernel", "_forward_kernel", "_dqdk_kernel", "_dq_finish_kernel")}
_PRODUCT_KERNELS = ("_forward_kernel", "_dq_kernel", "_dk_kernel", "_dqdk_kernel")  # the kernels with tl.dot


def _design(dtype, env=None) -> str:
    """The backward design an infonce_with_grad call on ``dtype`` inputs launches."""
    names = set(_precisions(dtype, env))
    return "fused" if "_dqdk_kernel" in names else "split"


def _products(dtype, env=None):
    """(precision, operand dtype) shared by the product kernels of a call (they must agree)."""
    pr = _precisions(dtype, env)
    prods = {pr[n] for n in _PRODUCT_KERNELS if n in pr}
    assert len(prods) == 1, pr
    assert pr["_normalize_kernel"][1] == next(iter(prods))[1], pr  # rows are written in the operand dtype
    return next(iter(prods))


def _check_precision_defaults():
    m = torch.backends.cuda.matmul
    m.fp32_precision = "none"  # PyTorch's default state
    assert _products(torch.float16) == ("ieee", torch.float16)        # tensor cores: 16-bit operands
    assert _products(torch.bfloat16) == ("ieee", torch.bfloat16)
    assert _products(torch.float32) == ("ieee", torch.float32)        # TF32 off, as torch.mm
    assert _products(torch.float64) == ("ieee", torch.float64)


def _check_precision_follows_torch_tf32():
    m = torch.backends.cuda.matmul
    try:
        m.allow_tf32 = True                                            # the legacy API
        assert _products(torch.float32) == ("tf32", torch.float32)
        assert _products(torch.float16) == ("ieee", torch.float16)     # 16-bit and float64 are unaffected
        assert _products(torch.float64) == ("ieee", torch.float64)
        # The exact opt-out of 16-bit inputs stays exact even with TF32 allowed.
        assert _products(torch.float16, {"MCLCORE_TRITON_HALF_DOT": "float32"}) == ("ieee", torch.float32)
        m.allow_tf32 = False
        assert _products(torch.float32) == ("ieee", torch.float32)
        torch.set_float32_matmul_precision("high")                     # TF32 through the precision setting
        assert _products(torch.float32) == ("tf32", torch.float32)
        torch.set_float32_matmul_precision("highest")
        assert _products(torch.float32) == ("ieee", torch.float32)
        m.fp32_precision = "tf32"                                      # the new API (torch >= 2.9)
        assert _products(torch.float32) == ("tf32", torch.float32)
        m.fp32_precision = "ieee"
        assert _products(torch.float32) == ("ieee", torch.float32)
        # The override wins over PyTorch's setting.
        for mode in ("ieee", "tf32", "tf32x3"):
            assert _products(torch.float32, {"MCLCORE_TRITON_FP32_DOT": mode}) == (mode, torch.float32)
        m.fp32_precision = "tf32"
        assert _products(torch.float32, {"MCLCORE_TRITON_FP32_DOT": "ieee"}) == ("ieee", torch.float32)
        assert _products(torch.float32, {"MCLCORE_TRITON_FP32_DOT": "auto"}) == ("tf32", torch.float32)
    finally:
        m.fp32_precision = "none"


def _check_backward_design():
    # Fused (three tile products, dq by atomic adds) where the products run on tensor cores; split (four products,
    # bitwise reproducible) on the FMA units, under tf32x3, when asked, and always under deterministic algorithms.
    m = torch.backends.cuda.matmul
    m.fp32_precision = "none"
    try:
        assert _design(torch.float16) == _design(torch.bfloat16) == _design(torch.float64) == "fused"
        assert _design(torch.float32) == "split"                                           # IEEE: FMA units
        assert _design(torch.float16, {"MCLCORE_TRITON_HALF_DOT": "float32"}) == "split"   # float32 IEEE products
        assert _design(torch.float32, {"MCLCORE_TRITON_FP32_DOT": "tf32"}) == "fused"
        assert _design(torch.float32, {"MCLCORE_TRITON_FP32_DOT": "tf32x3"}) == "split"
        m.fp32_precision = "tf32"
        assert _design(torch.float32) == "fused"                                           # TF32 allowed
        m.fp32_precision = "none"
        env = "MCLCORE_TRITON_INFONCE_BWD"
        assert _design(torch.float32, {env: "fused"}) == "fused"
        assert _design(torch.float16, {env: "split"}) == _design(torch.float64, {env: " Split "}) == "split"
        assert _design(torch.float16, {env: "auto"}) == _design(torch.float16, {env: ""}) == "fused"
        torch.use_deterministic_algorithms(True)
        try:
            for dtype in (torch.float16, torch.float32, torch.float64):
                assert _design(dtype) == _design(dtype, {env: "fused"}) == "split", dtype
        finally:
            torch.use_deterministic_algorithms(False)
        try:
            _precisions(torch.float16, {env: "atomic"})
        except ValueError as err:
            assert env in str(err), str(err)
        else:
            raise AssertionError(f"no error for {env}=atomic")
    finally:
        m.fp32_precision = "none"


def _check_precision_bad_values():
    for env, words in (({"MCLCORE_TRITON_FP32_DOT": "fp16"}, "MCLCORE_TRITON_FP32_DOT"),
                       ({"MCLCORE_TRITON_HALF_DOT": "fp8"}, "MCLCORE_TRITON_HALF_DOT")):
        dtype = torch.float32 if "FP32" in words else torch.float16
        try:
            _precisions(dtype, env)
        except ValueError as err:
            assert words in str(err), str(err)
        else:
            raise AssertionError(f"no error for {env}")


def _check_tf32_modes_run():
    # The interpreter multiplies exactly whatever input_precision says: every mode runs and gives the IEEE values
    # (the sm_90 compile check shows tf32 / tf32x3 become TF32 tensor-core instructions).
    tk = _tk()
    gen = torch.Generator().manual_seed(5)
    p, k = torch.randn(17, 6, generator=gen), torch.randn(17, 6, generator=gen)
    groups = torch.randint(0, 3, (17,), generator=gen)
    want = tk.infonce_with_grad(p, k, groups, 0.1, 1e-12, **TILES)
    for mode in ("tf32", "tf32x3"):
        os.environ["MCLCORE_TRITON_FP32_DOT"] = mode
        try:
            assert_same(tk.infonce_with_grad(p, k, groups, 0.1, 1e-12, **TILES), want, mode)
        finally:
            del os.environ["MCLCORE_TRITON_FP32_DOT"]


def _check_scalar_arguments_are_float64():
    # 1/tau, eps, 1/B and the activation parameters are float64 kernel arguments: no float32 rounding of tau.
    tk = _tk()
    gen = torch.Generator().manual_seed(6)
    p, k = (torch.randn(9, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    for tau in (0.07, 1 / 3, 0.1234567890123):
        for a, b in zip(tk.infonce_with_grad(p, k, None, tau, 1e-12, **TILES),
                        torch.ops.mclcore.infonce_with_grad(p, k, None, tau, 1e-12)):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    z = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    ws = [torch.randn(4, 2, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64)]
    bs = [torch.zeros(4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]
    for act, prm in (("softplus", 0.7123456789), ("smooth_leaky", 0.2)):
        got = tk.mech_derivs(z, ws, bs, None, None, None, [act], [prm], block=16)
        want = torch.ops.mclcore.mech_derivs(z, ws, bs, None, None, None, [act], [prm])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


CHECKS = {
    "triton-non-contiguous-f64": _check_triton_non_contiguous_f64,
    "triton-non-contiguous-f32": _check_triton_non_contiguous_f32,
    "triton-non-contiguous-f16-infonce": _check_triton_non_contiguous_f16_infonce,
    "triton-groups-view-regression": _check_triton_groups_view_regression,
    "triton-saved-must-be-contiguous": _check_triton_saved_must_be_contiguous,
    "launchers-sync-free": _check_launchers_sync_free,
    "wrappers-cuda-route-sync-free": _check_wrappers_cuda_route_sync_free,
    "detector-catches": _check_detector_catches,
    "precision-defaults": _check_precision_defaults,
    "precision-follows-torch-tf32": _check_precision_follows_torch_tf32,
    "precision-bad-values": _check_precision_bad_values,
    "backward-design": _check_backward_design,
    "tf32-modes-run": _check_tf32_modes_run,
    "scalar-arguments-float64": _check_scalar_arguments_are_float64,
}


def _worker() -> None:
    # pytest.raises failures are BaseException: catch those too, so each check reports its own
    run_checks(CHECKS, catch=BaseException, limit=3000)


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")
    return run_file(__file__, drop_env=("MCLCORE_BACKEND", "MCLCORE_TRITON_HALF_DOT", "MCLCORE_TRITON_FP32_DOT",
                                        "MCLCORE_TRITON_CHECK_FINITE", "MCLCORE_TRITON_INFONCE_BWD"))


@pytest.mark.parametrize("name", list(CHECKS))
def test_interpreted(interpreted, name):
    assert name in interpreted, f"check {name} did not run"
    assert interpreted[name] is None, interpreted[name]


# ---------------------------------------------------------------------------------------------------------------
# Part 4: with a GPU only


def _backends_for(op):
    out = []
    if _backend.triton_available() and _backend.OPS[op].triton:
        out.append("triton")
    if _backend.cuda_available(op):
        out.append("cuda")
    return out


def _public_calls(device="cuda", dtype=torch.float32):
    """(name, fn, static inputs) per public entry point: fn() runs forward (and backward where there is one) on the
    static inputs and returns the outputs."""
    from mclcore.ops import comp_contrast, critic_grad, infonce, mech_derivs

    cases = op_cases(torch.float64, device)
    p, k, groups = (t.to(dtype) if t.is_floating_point() else t for t in cases["infonce"][0][:3])
    p, k = p.clone().requires_grad_(), k.clone().requires_grad_()

    def infonce_step():
        loss = infonce(p, k, 0.1, groups=groups)
        return (loss, *torch.autograd.grad(loss, (p, k)))

    def infonce_inference():
        with torch.no_grad():
            return (infonce(p, k, 0.1),)

    v, ws, bs, _ = cases["critic_grad"][0]
    leaves = [t.to(dtype).clone().requires_grad_() for t in (v, *ws, *bs)]

    def critic_step():
        out = critic_grad(leaves[0], leaves[1:4], leaves[4:], "gelu")
        return (out, *torch.autograd.grad((out * out).sum(), leaves))

    z, mws, mbs, ib, sc, sh, _, _ = cases["mech_derivs"][0]

    def mech():
        return mech_derivs(z, mws, mbs, in_bias=ib, film_scale=sc, film_shift=sh, activation="softplus")

    cz, cws, cbs, cib = cases["comp_contrast"][0][:4]
    cl = [t.to(dtype).clone().requires_grad_() for t in (cz, *cws, *cbs, cib)]

    def comp_contrast_step():
        C = comp_contrast(cl[0], cl[1:3], cl[3:5], "tanh", in_bias=cl[5], normalize="jacobian")
        return (C, *torch.autograd.grad(C.sum(), cl))

    return [("infonce_step", infonce_step, [p, k]), ("infonce_inference", infonce_inference, [p, k]),
            ("critic_step", critic_step, leaves), ("mech_derivs", mech, [z, ib, sc, sh]),
            ("comp_contrast_step", comp_contrast_step, [cl[0], cl[5]])]


_OP_OF = {"infonce_step": "infonce_with_grad", "infonce_inference": "infonce", "critic_step": "critic_grad",
          "mech_derivs": "mech_derivs", "comp_contrast_step": "comp_contrast"}


def test_public_calls_cover_every_op_family():
    # The GPU tests below take their cases from _public_calls: each op family must have one (built on the CPU here).
    names = [c[0] for c in _public_calls(device="cpu")]
    assert names == list(_OP_OF)
    assert {_backend.OPS[op].family for op in _OP_OF.values()} == {o.family for o in _backend.OPS.values()}


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("which", ["infonce_step", "infonce_inference", "critic_step", "mech_derivs",
                                   "comp_contrast_step"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_ops_capture_in_a_cuda_graph(backend, which):
    op = _OP_OF[which]
    if backend not in _backends_for(op):
        pytest.skip(f"backend {backend} cannot run {op} here")
    with mclcore.ops.use_backend(backend):
        name, fn, inputs = next(c for c in _public_calls() if c[0] == which)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compiles the Triton kernels, fills the launchers' caches
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn()
        gen = torch.Generator(device="cpu").manual_seed(1)
        with torch.no_grad():
            for t in inputs:
                t.copy_(t + 0.1 * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype))
        graph.replay()
        torch.cuda.synchronize()
        want = fn()  # eager, on the new inputs
        for n, (a, b) in enumerate(zip(static_out, want)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} output {n}: {m}")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("which", ["infonce_step", "infonce_inference", "critic_step", "mech_derivs",
                                   "comp_contrast_step"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_ops_do_not_synchronise(backend, which):
    op = _OP_OF[which]
    if backend not in _backends_for(op):
        pytest.skip(f"backend {backend} cannot run {op} here")
    if backend == "cuda" and op.startswith("infonce") and os.environ.get("MCLCORE_CUDA_CHECK_FINITE") == "1":
        # csrc/infonce/infonce_cuda.cu reads its finiteness flag back (a synchronisation) only when asked to.
        pytest.skip("MCLCORE_CUDA_CHECK_FINITE=1 opts the CUDA C++ InfoNCE into its synchronising finiteness check")
    with mclcore.ops.use_backend(backend):
        _, fn, _ = next(c for c in _public_calls() if c[0] == which)
        fn()
        fn()  # warm
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_every_input_non_contiguous(dtype):
    cases = op_cases(dtype, "cuda")
    for backend in ("triton", "cuda"):
        runnable = {op: c for op, c in cases.items() if backend in _backends_for(op)}
        with mclcore.ops.use_backend(backend):
            check_every_input(_cpu_call, runnable)  # torch.ops.mclcore.<op>: the CUDA kernel of the backend


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_every_input_non_contiguous_bf16_infonce():
    cases = {op: c for op, c in op_cases(device="cuda", infonce_dtype=torch.bfloat16).items()
             if op.startswith("infonce")}
    for backend in ("triton", "cuda"):
        with mclcore.ops.use_backend(backend):
            check_every_input(_cpu_call, {op: c for op, c in cases.items() if backend in _backends_for(op)})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_float32_products_follow_tf32(monkeypatch):
    # float32 InfoNCE on the Triton backend: IEEE by default (within 2x the float32 reference), TF32 when PyTorch
    # allows it (within 2x the TF32 reference, and visibly less exact than IEEE), tf32x3 nearly IEEE.
    if not _backend.triton_available():
        pytest.skip("triton does not import")
    from mclcore.ops import infonce
    from python.infonce import infonce as ref

    gen = torch.Generator().manual_seed(11)
    B, d, tau = 2048, 128, 0.1
    p64 = torch.randn(B, d, generator=gen, dtype=torch.float64).cuda()
    k64 = torch.randn(B, d, generator=gen, dtype=torch.float64).cuda()
    p32, k32 = p64.float(), k64.float()
    want = ref(p32.double(), k32.double(), tau)
    m = torch.backends.cuda.matmul
    previous = m.fp32_precision
    try:
        m.fp32_precision = "ieee"
        ref_ieee = (ref(p32, k32, tau).double() - want).abs().item()
        m.fp32_precision = "tf32"
        ref_tf32 = (ref(p32, k32, tau).double() - want).abs().item()
        errs = {}
        with mclcore.ops.use_backend("triton"):
            for setting, mode in (("ieee", "auto"), ("tf32", "auto"), ("tf32", "tf32x3"), ("tf32", "ieee")):
                m.fp32_precision = setting
                monkeypatch.setenv("MCLCORE_TRITON_FP32_DOT", mode)
                with torch.no_grad():
                    errs[(setting, mode)] = (infonce(p32, k32, tau).double() - want).abs().item()
    finally:
        m.fp32_precision = previous
    u = 2.0**-24
    assert errs[("ieee", "auto")] <= max(2 * ref_ieee, 64 * u / tau), errs
    assert errs[("tf32", "auto")] <= max(2 * ref_tf32, 64 * 2.0**-11 / tau), (errs, ref_tf32)
    assert errs[("tf32", "tf32x3")] <= max(2 * ref_ieee, 256 * u / tau), errs
    assert errs[("tf32", "ieee")] <= max(2 * ref_ieee, 64 * u / tau), errs


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_device_guard_second_device():
    # Tensors on cuda:1 while cuda:0 is current: the launchers switch device (their device guard).
    for backend in ("triton", "cuda"):
        cases = op_cases(torch.float64, "cuda:1")
        with mclcore.ops.use_backend(backend), torch.cuda.device(0):
            for op, (args, _) in cases.items():
                if backend not in _backends_for(op):
                    continue
                got = _cpu_call(op, args)
                cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else [t.cpu() for t in a]
                            if isinstance(a, list) and a and isinstance(a[0], torch.Tensor) else a for a in args]
                want = _cpu_call(op, cpu_args)
                for a, b in zip(_flat(got), _flat(want)):
                    assert a.device == torch.device("cuda:1"), (op, a.device)
                    torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-9 * max(1.0, b.abs().max().item()),
                                               equal_nan=True, msg=lambda m: f"{backend} {op} on cuda:1: {m}")


def _flat(x):
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _flat(item)]
    return [x]


if __name__ == "__main__":
    _worker()
