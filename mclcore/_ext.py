"""Loads the native library that registers ``torch.ops.mclcore``.

Order: the compiled module ``mclcore._C`` (built by ``pip install --no-build-isolation -e .``); if it is missing,
a just-in-time build of ``csrc/`` with ninja (said once, on stderr); if that fails, an ImportError saying how to
build. ``MCLCORE_FORCE_JIT=1`` skips ``mclcore._C`` (useful while editing csrc/ in an editable install).
``MCLCORE_JIT_OPS=infonce,critic_grad`` restricts a JIT build to those ops' kernels (developer convenience: an
unfinished kernel elsewhere in csrc/ does not break your build); the schemas are always all registered.
"""
from __future__ import annotations

import glob
import os
import sys

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CSRC = os.path.join(_ROOT, "csrc")
_loaded = False
_how = ""

BUILD_HINT = (
    "mclcore's native extension is not built. From the repository root run:\n"
    "    python -m pip install torch==2.13.0 ninja   # or your own CUDA build of torch\n"
    "    python -m pip install --no-build-isolation -e .\n"
)


def _jit_build() -> str:
    from torch.utils import cpp_extension

    if not os.path.isdir(_CSRC):
        raise ImportError(BUILD_HINT + f"(no csrc/ next to the package at {_ROOT}, so a just-in-time build is impossible)")
    ops = [o for o in os.environ.get("MCLCORE_JIT_OPS", "").split(",") if o]
    sources = sorted(glob.glob(os.path.join(_CSRC, "*.cpp")))
    for path in sorted(glob.glob(os.path.join(_CSRC, "*", "*_cpu.cpp"))):
        if not ops or os.path.basename(os.path.dirname(path)) in ops:
            sources.append(path)
    name = "mclcore_C" + ("_" + "_".join(sorted(ops)) if ops else "")
    print(f"mclcore: mclcore._C not found; building {name} just-in-time with ninja (about a minute, once)...",
          file=sys.stderr, flush=True)
    cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=["-O3", "-std=c++17", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=os.environ.get("MCLCORE_VERBOSE_BUILD", "0") == "1",
    )
    return "jit"


def load() -> str:
    """Make sure ``torch.ops.mclcore`` is registered; returns how ('_C' or 'jit')."""
    global _loaded, _how
    if _loaded:
        return _how
    how = None
    if os.environ.get("MCLCORE_FORCE_JIT", "0") != "1":
        try:
            from mclcore import _C  # noqa: F401

            how = "_C"
        except ImportError:
            how = None
    if how is None:
        try:
            how = _jit_build()
        except Exception as err:  # compiler missing, ninja missing, build error
            raise ImportError(BUILD_HINT + f"(the just-in-time build failed: {err})") from err
    _loaded, _how = True, how
    return how
