"""Which GPU implementation runs the CUDA kernel of each public op: Triton or CUDA C++.

PyTorch routes by dispatch key: CPU tensors reach the C++ CPU kernels (csrc/<op>/<op>_cpu.cpp) and nothing here is
involved. For CUDA tensors each public op (``mclcore::infonce``, ``infonce_backward``, ``infonce_with_grad``,
``critic_grad``, ``critic_grad_backward``, ``mech_derivs``) has one CUDA kernel, registered from Python by
:func:`register_cuda` in the op's module, that picks the backend at call time:

* ``"triton"``: the kernels of :mod:`mclcore.ops.triton` (needs the ``triton`` package, ``pip install mclcore[gpu]``);
* ``"cuda"``: the CUDA C++ kernels of a CUDA build, exposed as ``torch.ops.mclcore._cuda_<op>`` with the public
  op's schema and a CUDA kernel only (csrc/<op>/<op>_cuda.cu). A CPU-only build has none, and ``critic_grad`` /
  ``critic_grad_backward`` have no CUDA C++ kernel at all.

The choice, first match wins: :func:`use_backend` (a setter and a context manager), the environment variable
``MCLCORE_BACKEND`` (``triton`` or ``cuda``, read at every call), else the default: ``triton`` if it imports, else
``cuda``. An explicitly requested backend that cannot run the op raises RuntimeError naming the backend, the op and
the reason; it never falls back silently. An unknown name is a ValueError naming ``MCLCORE_BACKEND``.
"""
from __future__ import annotations

import os
import threading

import torch

ENV = "MCLCORE_BACKEND"
BACKENDS = ("triton", "cuda")
# Public ops with a CUDA kernel chosen here, and whether a CUDA C++ implementation (``_cuda_<op>``) is part of the
# contract with csrc/ (critic_grad's GEMMs are cuBLAS either way; it has only the Triton implementation).
OPS = {
    "infonce": True,
    "infonce_backward": True,
    "infonce_with_grad": True,
    "mech_derivs": True,
    "critic_grad": False,
    "critic_grad_backward": False,
}

_override: str | None = None
_lock = threading.Lock()
_triton_module = None
_triton_error: str | None = None


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
    """The imported mclcore.ops.triton package, or None (the import error is kept for messages)."""
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
    """True when this build registers ``torch.ops.mclcore._cuda_<op>`` with a CUDA kernel."""
    if not OPS.get(op, False) or not hasattr(torch.ops.mclcore, f"_cuda_{op}"):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mclcore::_cuda_{op}", "CUDA")


def selected() -> str:
    """The backend requested by use_backend or MCLCORE_BACKEND, else the default (triton if it imports, else cuda)."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV, "").strip()
    if env:
        return _validate(env.lower(), f"{ENV}={env!r}")
    return "triton" if triton_available() else "cuda"


def implementation(op: str):
    """The callable that runs ``op`` on CUDA tensors under the selected backend, or a RuntimeError saying why not."""
    if op not in OPS:
        raise ValueError(f"op: no GPU backend selection for {op!r}; known ops: {', '.join(OPS)}")
    backend = selected()
    if backend == "triton":
        module = _triton()
        if module is None:
            raise RuntimeError(f"mclcore.{op}: backend 'triton' is not available: the triton package does not "
                               f"import ({_triton_error}). Install it (pip install 'mclcore[gpu]') or select "
                               f"{ENV}=cuda")
        return getattr(module, op)
    explicit = _override is not None or bool(os.environ.get(ENV, "").strip())
    if not explicit and not (OPS[op] and cuda_available(op)):
        # The default fell back to cuda because triton does not import, and cuda cannot run this op either.
        why = ("it has no CUDA C++ kernel" if not OPS[op] else
               f"torch.ops.mclcore._cuda_{op} is not registered (this build of the extension has no CUDA kernels)")
        raise RuntimeError(f"mclcore.{op}: no GPU backend is available for CUDA tensors: triton does not import "
                           f"({_triton_error}), and {why}. Install triton (pip install 'mclcore[gpu]')")
    if not OPS[op]:
        raise RuntimeError(f"mclcore.{op}: backend 'cuda' is not available: this op has no CUDA C++ kernel (its "
                           f"GPU implementation is the Triton one). Select {ENV}=triton or use_backend('triton')")
    if not cuda_available(op):
        raise RuntimeError(f"mclcore.{op}: backend 'cuda' is not available: torch.ops.mclcore._cuda_{op} is not "
                           f"registered (this build of the extension has no CUDA kernels: build it with a CUDA "
                           f"torch, see docs/DESIGN.md §5). Select {ENV}=triton")
    return getattr(torch.ops.mclcore, f"_cuda_{op}").default


# The registered CUDA kernels by op name (tests call them directly to check the routing without a GPU).
CUDA_KERNELS: dict = {}


def register_cuda(op: str) -> None:
    """Register the CUDA kernel of ``mclcore::<op>``: it runs :func:`implementation` (op) with the call's arguments."""
    if op not in OPS:
        raise ValueError(f"op: {op!r} is not one of {', '.join(OPS)}")

    def kernel(*args, **kwargs):
        return implementation(op)(*args, **kwargs)

    kernel.__name__ = f"{op}_cuda"
    kernel.__doc__ = f"CUDA kernel of mclcore::{op}: the backend chosen by mclcore.ops._backend.implementation."
    torch.library.register_kernel(f"mclcore::{op}", "cuda", kernel)
    CUDA_KERNELS[op] = kernel
