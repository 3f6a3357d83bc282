"""Typed Python entry points of the native ops in ``torch.ops.mclcore``.

Each module registers the fake kernel (torch.compile / meta) and the autograd formula of its op, validates
arguments with clear errors, and exposes a friendly function. Kernels themselves are in ``csrc/`` (CPU, CUDA C++) and
``mclcore/ops/triton/``; :func:`use_backend` / ``MCLCORE_BACKEND`` pick Triton or CUDA C++ for CUDA tensors, and
:func:`available` says whether an op can run on a device (the op table is ``mclcore.ops._backend.OPS``).
"""
from mclcore import _ext

_ext.load()

from mclcore.ops.infonce import infonce  # noqa: E402
from mclcore.ops.critic_grad import critic_grad  # noqa: E402
from mclcore.ops.mech_derivs import mech_derivs  # noqa: E402
from mclcore.ops.comp_contrast import comp_contrast  # noqa: E402
from mclcore.ops._backend import available, use_backend  # noqa: E402

__all__ = ["infonce", "critic_grad", "mech_derivs", "comp_contrast", "use_backend", "available"]
