"""Builds the native extension ``mclcore._C`` from ``csrc/``.

* C++17, -O3, OpenMP (``at::parallel_for`` is a header template: without -fopenmp it silently runs serially).
* CUDA sources (``csrc/*/*_cuda.cu``) are compiled only when the installed torch was built with CUDA and a CUDA
  toolkit is found; set ``MCLCORE_NO_CUDA=1`` to skip them anyway.
* No network or git calls. Install with ``pip install --no-build-isolation -e .`` against an installed torch.
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda():
    if os.environ.get("MCLCORE_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extensions():
    cpp = _sources("csrc/*.cpp") + _sources("csrc/*/*_cpu.cpp")
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    if _want_cuda():
        cu = _sources("csrc/*/*_cuda.cu")
        return [
            cpp_extension.CUDAExtension(
                "mclcore._C",
                cpp + cu,
                extra_compile_args={"cxx": cxx + ["-DMCLCORE_WITH_CUDA"], "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        cpp_extension.CppExtension("mclcore._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)})
