"""The op table of mclcore, and which implementation runs each public op: C++ on the CPU, Triton or CUDA C++ on CUDA.

:data:`OPS` is the one list of the public ops (``torch.ops.mclcore.<op>``, schemas in csrc/registration.cpp) and of
the implementations each has; everything in mclcore that needs every op name (CUDA registration, backend choice,
:func:`available`, the Triton package's exports, the tests) reads it here.

PyTorch routes by dispatch key: CPU tensors reach the C++ CPU kernels (csrc/<op>/<op>_cpu.cpp) and nothing here is
involved. For CUDA tensors each public op has one CUDA kernel, registered from Python by :func:`register_cuda` in the
op's module, that picks the backend at call time:

* ``"triton"``: the kernels of :mod:`mclcore.ops.triton` (needs the ``triton`` package, ``pip install mclcore[gpu]``);
* ``"cuda"``: the CUDA C++ kernels of a CUDA build, exposed as ``torch.ops.mclcore._cuda_<op>`` with the public
  op's schema (declared in csrc/registration.cpp for every build) and a CUDA kernel only in CUDA builds
  (csrc/<op>/<op>_cuda.cu). A CPU-only build declares them without kernels, and ``critic_grad`` /
  ``critic_grad_backward`` have no CUDA C++ twin at all.

For speed, use ``"triton"`` (the default). The CUDA C++ ``infonce`` (csrc/infonce/infonce_cuda.cu) is the reference
fallback: its tile products are shared-memory FMA GEMMs in float32 / float64, without tensor cores (no mma / WMMA),
for machines without Triton and as an independent check of the Triton kernels, whose 16-bit (and, where TF32 is
allowed, float32) products run on tensor cores. It is not offered as the fast choice.

The choice, first match wins: :func:`use_backend` (a setter and a context manager), the environment variable
``MCLCORE_BACKEND`` (``triton`` or ``cuda``, read at every call), else the default: ``triton`` if it imports, else
``cuda``. An explicitly requested backend that cannot run the op raises RuntimeError naming the backend, the op and
the reason; it never falls back silently. An unknown name is a ValueError naming ``MCLCORE_BACKEND``.

Callers that want to fall back (e.g. a trainer that runs on the CPU when the GPU cannot run an op) ask
:func:`available` first, which answers without running anything. This module is the only place in mclcore that asks
``torch._C`` (the dispatcher) anything: through :func:`_has_kernel`, which tests replace to simulate a missing kernel.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

ENV = "MCLCORE_BACKEND"
BACKENDS = ("triton", "cuda")


@dataclass(frozen=True)
class Op:
    """The implementations of one public op ``mclcore::<name>``: what exists in the source tree (whether this build
    and this machine can run them is :func:`available`'s question)."""

    family: str             # csrc/<family>/ holds its kernels, mclcore/ops/<family>.py its Python registrations
    cpu: bool = True        # a C++ CPU kernel (csrc/<family>/<family>_cpu.cpp)
    triton: bool = True     # a Triton launcher, mclcore.ops.triton.<name>
    cuda_cpp: bool = False  # a CUDA C++ twin mclcore::_cuda_<name> (csrc/<family>/<family>_cuda.cu, CUDA builds)


# Every public op. critic_grad's GEMMs are cuBLAS either way: it has only the Triton GPU implementation.
OPS: dict[str, Op] = {
    "infonce": Op("infonce", cuda_cpp=True),
    "infonce_backward": Op("infonce", cuda_cpp=True),
    "infonce_with_grad": Op("infonce", cuda_cpp=True),
    "mech_derivs": Op("mech_derivs", cuda_cpp=True),
    "critic_grad": Op("critic_grad"),
    "critic_grad_backward": Op("critic_grad"),
    "comp_contrast": Op("comp_contrast"),
    "comp_contrast_backward": Op("comp_contrast"),
}

_override: str | None = None
_lock = threading.Lock()
_triton_module = None
_triton_error: str | None = None


def _has_kernel(op: str, key: str) -> bool:
    """Whether the dispatcher holds a kernel of ``mclcore::<op>`` (``op`` as in ``torch.ops.mclcore``, e.g.
    ``"infonce"`` or ``"_cuda_infonce"``) for the dispatch key ``key`` (``"CPU"``, ``"CUDA"``); False for an op
    or key this build does not know.

    The only call into ``torch._C`` in mclcore. Tests simulate a missing kernel by replacing it, e.g.
    ``monkeypatch.setattr(_backend, "_has_kernel", lambda op, key: False)``.
    """
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"mclcore::{op}", key))
    except RuntimeError:  # "operator ... does not exist", "could not parse dispatch key"
        return False


def _cuda_devices() -> int:
    """How many CUDA devices torch sees (0 without CUDA). Tests simulate a GPU with
    ``monkeypatch.setattr(_backend, "_cuda_devices", lambda: 1)``."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check_op(op: str) -> Op:
    if op not in OPS:
        raise ValueError(f"op: unknown mclcore op {op!r}; known ops: {', '.join(OPS)}")
    return OPS[op]


def _validate(name, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)} "
                         f"(the values of the environment variable {ENV})")
    return name


class use_backend:
    """Select the GPU backend of the mclcore ops: ``"triton"``, ``"cuda"``, or None (back to ``MCLCORE_BACKEND`` /
    the default).

    Takes effect at once, for the whole process::

        mclcore.ops.use_backend("cuda")

    or for a block, restoring the previous choice on exit::

        with mclcore.ops.use_backend("triton"):
            loss = mclcore.ops.infonce(p, k)
    """

    def __init__(self, name: str | None):
        global _override
        if name is not None:
            _validate(name, "use_backend")
        with _lock:
            self._previous = _override
            _override = name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _override
        with _lock:
            _override = self._previous
        return False


def _triton():
    """The imported mclcore.ops.triton package, or None (the import error is kept for messages). Tests simulate a
    missing triton with ``monkeypatch.setattr(_backend, "_triton_module", None)`` and ``_triton_error`` set to a
    message."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            from mclcore.ops import triton as module  # imports the triton package itself

            _triton_module = module
        except Exception as err:  # ImportError, or a broken triton install
            _triton_error = f"{type(err).__name__}: {err}"
    return _triton_module


def triton_available() -> bool:
    return _triton() is not None


def cuda_available(op: str) -> bool:
    """True when ``op`` has a CUDA C++ twin and this build registers a CUDA kernel for ``mclcore::_cuda_<op>``.

    The twin's schema exists in every build (csrc/registration.cpp), so ``hasattr(torch.ops.mclcore, ...)`` says
    nothing: only a CUDA build's csrc/<op>/<op>_cuda.cu adds the kernel."""
    info = OPS.get(op)
    return info is not None and info.cuda_cpp and _has_kernel(f"_cuda_{op}", "CUDA")


def selected() -> str:
    """The backend requested by use_backend or MCLCORE_BACKEND, else the default (triton if it imports, else cuda)."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV, "").strip()
    if env:
        return _validate(env.lower(), f"{ENV}={env!r}")
    return "triton" if triton_available() else "cuda"


def _resolve(op: str) -> tuple[Callable | None, str]:
    """``(callable, "")`` that runs ``op`` on CUDA tensors under the selected backend, or ``(None, why)``: why it
    cannot, a message without the ``mclcore.<op>: `` prefix. Shared by :func:`implementation` (which raises it) and
    :func:`available` (which returns it). A bad MCLCORE_BACKEND raises ValueError here."""
    info = OPS[op]
    backend = selected()
    if backend == "triton":
        module = _triton()
        if module is None:
            return None, (f"backend 'triton' is not available: the triton package does not import ({_triton_error})."
                          f" Install it (pip install 'mclcore[gpu]') or select {ENV}=cuda")
        launcher = getattr(module, op, None) if info.triton else None
        if launcher is None:
            return None, (f"backend 'triton' is not available: mclcore.ops.triton has no launcher for this op. "
                          f"Select {ENV}=cuda")
        return launcher, ""
    explicit = _override is not None or bool(os.environ.get(ENV, "").strip())
    no_kernel = (f"torch.ops.mclcore._cuda_{op} has no CUDA kernel (this build of the extension has no CUDA "
                 f"kernels: build it with a CUDA torch, see docs/DESIGN.md §5)")
    if not explicit and not cuda_available(op):
        # The default fell back to cuda because triton does not import, and cuda cannot run this op either.
        why = "it has no CUDA C++ kernel" if not info.cuda_cpp else no_kernel
        return None, (f"no GPU backend is available for CUDA tensors: triton does not import ({_triton_error}), "
                      f"and {why}. Install triton (pip install 'mclcore[gpu]')")
    if not info.cuda_cpp:
        return None, (f"backend 'cuda' is not available: this op has no CUDA C++ kernel (its GPU implementation is "
                      f"the Triton one). Select {ENV}=triton or use_backend('triton')")
    if not cuda_available(op):
        return None, f"backend 'cuda' is not available: {no_kernel}. Select {ENV}=triton"
    return getattr(torch.ops.mclcore, f"_cuda_{op}").default, ""


def implementation(op: str) -> Callable:
    """The callable that runs ``op`` on CUDA tensors under the selected backend, or a RuntimeError saying why not."""
    if op not in OPS:
        raise ValueError(f"op: no GPU backend selection for {op!r}; known ops: {', '.join(OPS)}")
    impl, why = _resolve(op)
    if impl is None:
        raise RuntimeError(f"mclcore.{op}: {why}")
    return impl


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device: expected a str or torch.device, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: {device!r} is not a device torch knows ({err})") from None


def _available_one(op: str, dev: torch.device) -> str:
    """Why ``op`` cannot run on ``dev`` (one line), or "" when it can."""
    info = OPS[op]
    where = f"mclcore.{op} on {dev}"
    if dev.type == "cpu":
        if not info.cpu:
            return f"{where}: this op has no CPU kernel"
        if not _has_kernel(op, "CPU"):
            return (f"{where}: this build registers no CPU kernel for mclcore::{op} (csrc/{info.family}/"
                    f"{info.family}_cpu.cpp was not compiled in, e.g. a just-in-time build with MCLCORE_JIT_OPS)")
        return ""
    if dev.type == "cuda":
        count = _cuda_devices()
        if count == 0:
            why = "this torch was built without CUDA" if torch.version.cuda is None else "torch finds no CUDA device"
            return f"{where}: no CUDA device is available ({why}; torch.cuda.is_available() is False)"
        if dev.index is not None and dev.index >= count:
            return f"{where}: there is no CUDA device {dev.index} (torch sees {count})"
        if not _has_kernel(op, "CUDA"):
            return (f"{where}: mclcore::{op} has no CUDA kernel (mclcore.ops.{info.family} registers it through "
                    f"mclcore.ops._backend.register_cuda on import)")
        _, why = _resolve(op)
        return f"{where}: {why}" if why else ""
    return f"{where}: mclcore runs its ops on cpu and cuda tensors only, not on {dev.type}"


def available(op: str | Sequence[str], device: str | torch.device) -> tuple[bool, str]:
    """Whether calling the public op ``op`` (``torch.ops.mclcore.<op>``, or the wrapper that calls it) with tensors
    on ``device`` would run, without running it: ``(True, "")`` or ``(False, reason)``.

    Ask this before committing to a device, e.g. a trainer that falls back to the CPU (checking that the op is
    registered is not enough: the public op always has a CUDA kernel, the one that picks the backend and raises when
    none can run)::

        ok, why = mclcore.ops.available(("critic_grad", "critic_grad_backward", "infonce_with_grad"), "cuda")
        if not ok:
            print(why, "- running on the CPU", file=sys.stderr)

    Args:
        op: a name of :data:`OPS`, or a tuple / list of them (all must be available; the reason names the first
            that is not).
        device: a str (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or torch.device.

    Returns:
        ``(ok, reason)``. ``reason`` is one line naming the op, the device and why (a missing CPU kernel; no CUDA
        device; the selected GPU backend, see :func:`use_backend`, cannot run it: triton does not import or the
        ``_cuda_<op>`` twin has no kernel in this build), and ``""`` when ``ok``. Device types other than cpu and
        cuda are never available.

    Raises:
        ValueError: an unknown op name (the message lists the known ones), an empty list of ops, a device string
            torch cannot parse, or (for cuda) a bad ``MCLCORE_BACKEND``.

    Tests simulate what is missing by replacing this module's hooks (pytest's ``monkeypatch.setattr(_backend, ...)``):
    ``_has_kernel`` (``lambda op, key: False`` drops every kernel; ``op`` is e.g. ``"infonce"`` or
    ``"_cuda_infonce"``, ``key`` ``"CPU"`` or ``"CUDA"``), ``_cuda_devices`` (``lambda: 1`` simulates a GPU), and
    ``_triton_module = None`` with ``_triton_error = "ImportError: ..."`` (triton does not import).
    """
    names = [op] if isinstance(op, str) else list(op) if isinstance(op, (tuple, list)) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(f"op: expected an op name or a tuple / list of them, got {op!r}")
    if not names:
        raise ValueError(f"op: expected at least one op name; known ops: {', '.join(OPS)}")
    for name in names:
        _check_op(name)
    dev = _device(device)
    for name in names:
        why = _available_one(name, dev)
        if why:
            return False, why
    return True, ""


def host_checks(t: torch.Tensor) -> bool:
    """Whether the public wrappers may run their eager checks that read a tensor's values on the host (e.g. "z holds
    no NaN") for tensors on ``t``'s device: True on the CPU (no cost worth avoiding; the C++ kernels raise the same
    errors anyway), False on CUDA, where each would be a host synchronisation per call and would break CUDA-graph
    capture (the GPU kernels then return NaN for non-finite inputs instead of raising).

    tests/ops/test_gpu_paths.py replaces it (``lambda t: False``) to run the wrappers' CUDA route on CPU tensors."""
    return t.device.type != "cuda"


# The registered CUDA kernels by op name (tests call them directly to check the routing without a GPU).
CUDA_KERNELS: dict[str, Callable] = {}


def register_cuda(op: str) -> None:
    """Register the CUDA kernel of ``mclcore::<op>``: it runs :func:`implementation` (op) with the call's arguments.

    Each op module calls it for its own ops (after its fake kernel and autograd formula); every op of :data:`OPS`
    must be registered once mclcore.ops is imported (tests/ops/test_backend.py checks it)."""
    if op not in OPS:
        raise ValueError(f"op: {op!r} is not one of {', '.join(OPS)}")

    def kernel(*args, **kwargs):
        return implementation(op)(*args, **kwargs)

    kernel.__name__ = f"{op}_cuda"
    kernel.__doc__ = f"CUDA kernel of mclcore::{op}: the backend chosen by mclcore.ops._backend.implementation."
    torch.library.register_kernel(f"mclcore::{op}", "cuda", kernel)
    CUDA_KERNELS[op] = kernel
