"""Typed Python entry points of the native ops in ``torch.ops.mclcore``.

Each module registers the fake kernel (torch.compile / meta) and the autograd formula of its op, validates
arguments with clear errors, and exposes a friendly function. Kernels themselves are in ``csrc/``.
"""
from mclcore import _ext

_ext.load()

from mclcore.ops import infonce as _infonce_mod  # noqa: E402,F401
from mclcore.ops import critic_grad as _critic_grad_mod  # noqa: E402,F401

__all__ = ["infonce", "critic_grad"]
