"""Triton implementations of the mclcore ops for CUDA tensors (issue #7), one module per op.

Each launcher has the signature of its registered op (``torch.ops.mclcore.<op>``) and returns the same outputs
(shapes, dtypes, contiguity) as the C++ CPU kernel; :mod:`mclcore.ops._backend` calls them as the ops' CUDA kernels
when the Triton backend is selected. They also run on CPU tensors under ``TRITON_INTERPRET=1`` (set before the first
``import triton``), which is how tests/ops/test_triton.py checks them without a GPU; the tile-size keyword arguments
of the launchers exist for those small interpreted runs and for tuning.

Importing this package imports triton: an ImportError here is what makes the backend "unavailable".

Fast by construction: no launcher synchronises with the host or copies from it, so every op can be captured in a
CUDA graph (tests/ops/test_gpu_paths.py), and InfoNCE's tile products use tensor cores by default. The switches,
read at every call (mclcore/ops/triton/_launch.py, mclcore/ops/triton/infonce.py):

* ``MCLCORE_TRITON_HALF_DOT``: ``input`` (default: float16 / bfloat16 rows as 16-bit tl.dot operands, float32
  accumulation) or ``float32`` (the exact opt-out: float32 products, as the C++ op);
* ``MCLCORE_TRITON_FP32_DOT``: ``auto`` (default: TF32 exactly when ``torch.backends.cuda.matmul`` allows it, as
  torch.mm), ``ieee``, ``tf32`` or ``tf32x3``;
* ``MCLCORE_TRITON_CHECK_FINITE=1``: InfoNCE raises on NaN / inf inputs like the C++ op, at one host
  synchronisation per call (default: no check; the loss is NaN).

The launchers are re-exported here under the op names (``__all__``: the Triton ops of
``mclcore.ops._backend.OPS``), so ``mclcore.ops.triton.infonce`` is the function; the
submodule of the same name (kernels, tile tables, ``MCLCORE_TRITON_HALF_DOT``) is
``sys.modules["mclcore.ops.triton.infonce"]`` or ``importlib.import_module("mclcore.ops.triton.infonce")``.
"""
import triton  # noqa: F401  (fail early and clearly when triton is missing)

from mclcore.ops._backend import OPS as _OPS
from mclcore.ops.triton.critic_grad import critic_grad, critic_grad_backward
from mclcore.ops.triton.infonce import infonce, infonce_backward, infonce_with_grad
from mclcore.ops.triton.mech_derivs import mech_derivs
from mclcore.ops.triton.comp_contrast import comp_contrast, comp_contrast_backward

# One launcher per op of the table with a Triton implementation (tests/ops/test_backend.py checks that each exists).
__all__ = [op for op, info in _OPS.items() if info.triton]
