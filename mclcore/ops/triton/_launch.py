"""What every Triton launcher of mclcore shares: the device guard, the CUDA-graph capture test, the tl.dot precision
of float32 operands, and the opt-in finiteness check.

The launch paths are sync-free and copy nothing from the host (tests/ops/test_gpu_paths.py checks it under the
Triton interpreter): scalars (1/tau, eps, activation parameters) are kernel arguments, index tables are built on the
device once per device and cached, and no launcher reads a tensor's value on the host (``.item()``, ``bool()``,
``.tolist()``, ``.cpu()``) unless ``MCLCORE_TRITON_CHECK_FINITE=1`` asks for it.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# float32 operands of tl.dot (InfoNCE's tile products):
#   "auto" (default): follow PyTorch's float32 matmul setting, as torch.mm does: "tf32" when TF32 is allowed
#       (torch.backends.cuda.matmul.fp32_precision = "tf32", or the legacy allow_tf32 = True, or
#       torch.set_float32_matmul_precision("high")), else "ieee";
#   "ieee": exact float32 products on the FMA units;  "tf32": one TF32 tensor-core product (operands rounded to
#   10 mantissa bits);  "tf32x3": three TF32 products that recover nearly float32 accuracy (Triton's 3xTF32).
FP32_DOT_ENV = "MCLCORE_TRITON_FP32_DOT"
FP32_DOT_CHOICES = ("auto", "ieee", "tf32", "tf32x3")
# "1": the InfoNCE launchers check p and k for NaN / inf and raise like the C++ op, at the price of one host
# synchronisation per call (skipped while a CUDA graph is being captured). Default: no check, no synchronisation;
# a non-finite row of p or k then makes the loss NaN (the rows it touches have NaN gradients).
CHECK_FINITE_ENV = "MCLCORE_TRITON_CHECK_FINITE"


def device_guard(t: torch.Tensor):
    """``torch.cuda.device(t.device)`` for a CUDA tensor (Triton launches on the current device's current stream),
    a no-op context otherwise (CPU tensors under the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def capturing(t: torch.Tensor) -> bool:
    """Whether the current CUDA stream is being captured into a CUDA graph (False for CPU tensors). Nothing may be
    cached from inside a capture: tensors written there hold their values only once the graph is replayed."""
    return t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def check_finite_enabled() -> bool:
    return os.environ.get(CHECK_FINITE_ENV, "0").strip() == "1"


def _tf32_allowed() -> bool:
    """PyTorch's float32 matmul setting for CUDA, read without raising on any mix of its old and new APIs."""
    matmul = torch.backends.cuda.matmul
    try:  # torch >= 2.9: "tf32", "ieee" or "none" (inherits torch.backends.fp32_precision)
        precision = matmul.fp32_precision
    except (AttributeError, RuntimeError):
        precision = "none"
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    try:
        precision = torch.backends.fp32_precision
    except (AttributeError, RuntimeError):
        precision = "none"
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    try:  # the legacy flag (raises in torch 2.13 once the new API was used: handled above)
        return bool(matmul.allow_tf32)
    except (AttributeError, RuntimeError):
        return False


def fp32_dot_precision() -> str:
    """``input_precision`` of tl.dot for float32 operands (``MCLCORE_TRITON_FP32_DOT``, read at every call)."""
    mode = os.environ.get(FP32_DOT_ENV, "auto").strip().lower() or "auto"
    if mode not in FP32_DOT_CHOICES:
        raise ValueError(f"{FP32_DOT_ENV}={mode!r}: expected one of {', '.join(FP32_DOT_CHOICES)} (auto: TF32 when "
                         f"torch.backends.cuda.matmul allows it, else ieee)")
    if mode == "auto":
        return "tf32" if _tf32_allowed() else "ieee"
    return mode


@triton.jit
def f64(x):
    """A float64 scalar argument (annotated ``tl.float64``) as a float64 value, compiled and interpreted alike: the
    interpreter passes it as a Python float, which alone would become a float32 constant."""
    return tl.zeros([], tl.float64) + x


MLP_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "silu", "smooth_leaky", "relu", "leaky_relu", "identity")


def check_mlp(op: str, z, weights, biases, activations, act_params, per_sample=()) -> int:
    """The raw-op argument checks of the MLP-generator ops (mech_derivs, comp_contrast) on the Triton path, with
    the C++ kernels' messages (RuntimeError, as TORCH_CHECK): z (B, dz) float32/float64, per layer a weight
    (h, fan_in) and bias (h,) on z's device and dtype, one activation (and parameter) per hidden layer or per
    layer, and ``per_sample``: ``(name, tensor or None, columns)`` inputs of shape (B, columns). Returns dx."""
    if z.dim() != 2:
        raise RuntimeError(f"{op}: z: expected shape (B, dz), got {list(z.shape)}")
    if z.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: z: expected float32 or float64, got {z.dtype}")
    if z.shape[1] < 1:
        raise RuntimeError(f"{op}: z: expected dz >= 1, got shape {list(z.shape)}")
    nl, na = len(weights), len(activations)
    if nl < 1:
        raise RuntimeError(f"{op}: weights: expected at least one layer")
    if len(biases) != nl:
        raise RuntimeError(f"{op}: biases: expected {nl} tensors (one per layer), got {len(biases)}")
    if na not in (nl - 1, nl):
        raise RuntimeError(f"{op}: activations: expected {nl - 1} (hidden layers) or {nl} (also on the output) "
                           f"entries, got {na}")
    if len(act_params) != na:
        raise RuntimeError(f"{op}: act_params: expected {na} entries (one per activation), got {len(act_params)}")
    fan_in = z.shape[1]
    for l, (w, b) in enumerate(zip(weights, biases)):
        if w.device != z.device or b.device != z.device:
            raise RuntimeError(f"{op}: weights[{l}], biases[{l}]: expected tensors on {z.device} (that of z)")
        if w.dtype != z.dtype or b.dtype != z.dtype:
            raise RuntimeError(f"{op}: weights[{l}], biases[{l}]: expected dtype {z.dtype} (that of z)")
        if w.dim() != 2 or w.shape[1] != fan_in:
            raise RuntimeError(f"{op}: weights[{l}]: expected shape (h, {fan_in}), got {list(w.shape)}")
        if w.shape[0] < 1:
            raise RuntimeError(f"{op}: weights[{l}]: empty layer")
        if b.dim() != 1 or b.shape[0] != w.shape[0]:
            raise RuntimeError(f"{op}: biases[{l}]: expected shape ({w.shape[0]}), got {list(b.shape)}")
        fan_in = w.shape[0]
    for l, (a, prm) in enumerate(zip(activations, act_params)):
        if a not in MLP_ACTIVATIONS:
            raise RuntimeError(f"{op}: activations: expected tanh, sigmoid, softplus, gelu, silu, smooth_leaky, relu, "
                               f"leaky_relu or identity; got '{a}'")
        if a == "softplus" and not prm > 0:
            raise RuntimeError(f"{op}: act_params[{l}]: softplus beta must be > 0, got {prm}")
    for name, t, cols in per_sample:
        if t is None:
            continue
        if t.device != z.device:
            raise RuntimeError(f"{op}: {name}: expected a tensor on {z.device} (that of z)")
        if t.dtype != z.dtype:
            raise RuntimeError(f"{op}: {name}: expected dtype {z.dtype} (that of z), got {t.dtype}")
        if t.dim() != 2 or tuple(t.shape) != (z.shape[0], cols):
            raise RuntimeError(f"{op}: {name}: expected shape ({z.shape[0]}, {cols}), got {list(t.shape)}")
    return fan_in
