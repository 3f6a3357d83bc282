"""The op table of mclcore/ops/_backend.py and :func:`mclcore.ops.available`, all without a GPU.

``available(op, device)`` is what a caller asks before committing to a device (e.g. a trainer that falls back to the
CPU). The public ops always have a CUDA kernel (the Python one that picks the backend at call time), so "is a CUDA
kernel registered for mclcore::<op>" is always yes; these tests check that ``available`` looks further (a device, a
backend that can run the op) and that a missing backend, simulated through the module's hooks (``_has_kernel``,
``_cuda_devices``, ``_triton_module`` / ``_triton_error``), makes the fallback fire. They also check that the table,
the schemas in csrc/registration.cpp and the .cu files' kernel registrations agree.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import types

import pytest
import torch

import mclcore.ops
from mclcore.ops import _backend, available, use_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALL = tuple(_backend.OPS)
TWINS = tuple(op for op, info in _backend.OPS.items() if info.cuda_cpp)        # ops with a _cuda_<op> twin
TRITON_ONLY = tuple(op for op, info in _backend.OPS.items() if not info.cuda_cpp)
# What an MCL training step runs (the trainers' check).
TRAINING_OPS = ("critic_grad", "critic_grad_backward", "infonce_with_grad")
_REAL_HAS_KERNEL = _backend._has_kernel  # the dispatcher's answer, whatever a test has patched since


@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv(_backend.ENV, raising=False)
    monkeypatch.setattr(_backend, "_override", None)


@pytest.fixture
def gpu(no_override, monkeypatch):
    """A simulated machine with one CUDA device and the kernels of this build (no twin kernels unless a test adds
    them): only the device count is faked, so the backend logic runs as on a GPU machine."""
    monkeypatch.setattr(_backend, "_cuda_devices", lambda: 1)


def _with_triton(monkeypatch):
    # A stand-in for the imported mclcore.ops.triton package (one launcher per Triton op), without importing triton.
    launchers = {op: (lambda *a, **k: None) for op, info in _backend.OPS.items() if info.triton}
    monkeypatch.setattr(_backend, "_triton_module", types.SimpleNamespace(**launchers))
    monkeypatch.setattr(_backend, "_triton_error", None)


def _without_triton(monkeypatch):
    monkeypatch.setattr(_backend, "_triton_module", None)
    monkeypatch.setattr(_backend, "_triton_error", "ImportError: No module named 'triton'")


def _kernels(monkeypatch, *, twins: bool, missing: tuple[str, ...] = ()):
    """Replace _has_kernel: the real answer for the public ops except those in ``missing`` (no kernel for any key),
    and ``twins`` for every mclcore::_cuda_<op> on CUDA (a CUDA build has them, a CPU-only build not)."""
    real = _REAL_HAS_KERNEL

    def fake(op: str, key: str) -> bool:
        if op in missing:
            return False
        if op.startswith("_cuda_"):
            return twins and key == "CUDA"
        return real(op, key)

    monkeypatch.setattr(_backend, "_has_kernel", fake)


# ---------------------------------------------------------------------------------------------------------------
# The table, the schemas, the registrations


def test_table_entries_are_frozen_op_records():
    assert ALL, "empty op table"
    for op, info in _backend.OPS.items():
        assert isinstance(info, _backend.Op), op
        assert os.path.isdir(os.path.join(ROOT, "csrc", info.family)), f"{op}: no csrc/{info.family}/"
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.cuda_cpp = not info.cuda_cpp


def _defined_schemas(text: str) -> list[str]:
    # m.def("name(...) -> ...") with the string possibly split over lines; the name is the first identifier.
    return re.findall(r'm\.def\(\s*"(\w+)\(', text)


def test_registration_cpp_declares_every_schema_once():
    with open(os.path.join(ROOT, "csrc", "registration.cpp")) as f:
        names = _defined_schemas(f.read())
    assert len(names) == len(set(names)), f"declared twice: {sorted(n for n in names if names.count(n) > 1)}"
    want = set(ALL) | {f"_cuda_{op}" for op in TWINS}
    assert set(names) == want, (f"csrc/registration.cpp and _backend.OPS disagree: only in registration.cpp "
                                f"{sorted(set(names) - want)}, only in the table {sorted(want - set(names))}")


def test_every_op_has_a_schema_and_twins_share_it():
    for op in ALL:
        assert hasattr(torch.ops.mclcore, op), f"torch.ops.mclcore.{op} is not registered"
        schema = str(getattr(torch.ops.mclcore, op).default._schema)
        assert schema.startswith(f"mclcore::{op}("), schema
        twin = f"_cuda_{op}"
        if op in TWINS:
            assert hasattr(torch.ops.mclcore, twin), f"torch.ops.mclcore.{twin} is not registered"
            # The twin is called with the public op's arguments: same schema but for the name.
            assert str(getattr(torch.ops.mclcore, twin).default._schema) == schema.replace(
                f"mclcore::{op}(", f"mclcore::{twin}(", 1)
        else:
            assert not hasattr(torch.ops.mclcore, twin), f"{op} has no CUDA C++ twin in the table, but {twin} exists"


def test_cu_files_keep_only_their_impl_blocks():
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))
    assert sources
    for path in sources:
        with open(path) as f:
            text = f.read()
        rel = os.path.relpath(path, ROOT)
        assert "TORCH_LIBRARY_FRAGMENT" not in text and "TORCH_LIBRARY(" not in text, f"{rel} declares schemas"
        assert not _defined_schemas(text), f"{rel} declares schemas (csrc/registration.cpp holds them all)"
    for op in TWINS:
        family = _backend.OPS[op].family
        with open(os.path.join(ROOT, "csrc", family, f"{family}_cuda.cu")) as f:
            assert f'm.impl("_cuda_{op}"' in f.read(), f"csrc/{family}/{family}_cuda.cu has no kernel for _cuda_{op}"


def test_every_op_has_its_public_cuda_kernel_registered():
    assert set(_backend.CUDA_KERNELS) == set(ALL)
    for op in ALL:
        assert _backend._has_kernel(op, "CUDA"), op
        assert _backend._has_kernel(op, "CPU"), op


def test_register_cuda_rejects_an_op_outside_the_table():
    with pytest.raises(ValueError, match="'nope'.*infonce"):
        _backend.register_cuda("nope")


def test_has_kernel_is_false_for_unknown_names_and_keys():
    assert _backend._has_kernel("infonce", "CPU")
    assert not _backend._has_kernel("no_such_op", "CPU")
    assert not _backend._has_kernel("infonce", "NoSuchKey")


def test_cuda_available_needs_a_kernel_not_a_schema(monkeypatch):
    # The twins' schemas exist in every build; only a CUDA build's .cu files give them a kernel.
    for op in TWINS:
        assert hasattr(torch.ops.mclcore, f"_cuda_{op}")
        if torch.version.cuda is None:
            assert not _backend.cuda_available(op), op
    _kernels(monkeypatch, twins=True)
    assert all(_backend.cuda_available(op) for op in TWINS)
    assert not any(_backend.cuda_available(op) for op in TRITON_ONLY)
    _kernels(monkeypatch, twins=False)
    assert not any(_backend.cuda_available(op) for op in ALL)


def test_triton_package_exports_one_launcher_per_triton_op():
    pytest.importorskip("triton")
    from mclcore.ops import triton as tk

    want = [op for op, info in _backend.OPS.items() if info.triton]
    assert sorted(tk.__all__) == sorted(want)
    for op in want:
        assert callable(getattr(tk, op)), op



def test_available_is_exported():
    assert mclcore.ops.available is _backend.available
    assert "available" in mclcore.ops.__all__


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_every_op_is_available_on_cpu(device):
    for op in ALL:
        assert available(op, device) == (True, ""), op
    assert available(ALL, device) == (True, "")
    assert available(list(ALL), device) == (True, "")


def test_unknown_op_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"'infonse'.*known ops: infonce, "):
        available("infonse", "cpu")
    with pytest.raises(ValueError, match=r"'nope'"):
        available(("infonce", "nope"), "cpu")  # checked before anything is looked up
    with pytest.raises(ValueError, match="at least one op"):
        available((), "cpu")
    with pytest.raises(TypeError, match="op"):
        available(3, "cpu")
    with pytest.raises(ValueError, match="device"):
        available("infonce", "not_a_device")


def test_other_device_types_are_not_available():
    ok, why = available("infonce", "meta")
    assert not ok and "mclcore.infonce" in why and "meta" in why


def test_a_missing_cpu_kernel_is_reported(monkeypatch):
    # e.g. a just-in-time build with MCLCORE_JIT_OPS=infonce: the critic_grad schemas exist, their kernels not.
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, key: False)
    ok, why = available("infonce", "cpu")
    assert not ok and why.startswith("mclcore.infonce on cpu:") and "csrc/infonce/" in why
    assert "\n" not in why
    _kernels(monkeypatch, twins=False, missing=("critic_grad_backward",))
    ok, why = available(ALL, "cpu")
    assert not ok and why.startswith("mclcore.critic_grad_backward on cpu:")  # the first missing one
    assert available(("infonce", "critic_grad"), "cpu") == (True, "")


# ---------------------------------------------------------------------------------------------------------------
# available(): CUDA


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_nothing_is_available_on_cuda_without_a_gpu(device):
    for op in ALL:
        ok, why = available(op, device)
        assert not ok and why.startswith(f"mclcore.{op} on cuda") and "no CUDA device" in why, why
    ok, why = available(TRAINING_OPS, device)
    assert not ok and why.startswith("mclcore.critic_grad on cuda")


def test_with_triton_every_op_is_available_on_a_gpu(gpu, monkeypatch):
    _with_triton(monkeypatch)
    _kernels(monkeypatch, twins=False)
    assert available(ALL, "cuda") == (True, "")
    assert available(ALL, torch.device("cuda", 0)) == (True, "")
    ok, why = available("infonce", "cuda:1")  # one device only
    assert not ok and "cuda:1" in why


def test_without_triton_the_cuda_twins_run(gpu, monkeypatch):
    _without_triton(monkeypatch)
    _kernels(monkeypatch, twins=True)
    for op in TWINS:
        assert available(op, "cuda") == (True, ""), op
    for op in TRITON_ONLY:  # nothing runs critic_grad on CUDA without triton
        ok, why = available(op, "cuda")
        assert not ok and why.startswith(f"mclcore.{op} on cuda:") and "triton does not import" in why
        assert "no CUDA C++ kernel" in why


def test_the_fallback_fires_when_no_backend_can_run(gpu, monkeypatch):
    """A GPU machine whose build has no CUDA C++ kernels and no triton: the public ops still have their CUDA
    kernel (the old trainers' check said yes), but calling them would raise; available says no, so the caller falls
    back to the CPU."""
    _without_triton(monkeypatch)
    _kernels(monkeypatch, twins=False)
    assert all(_backend._has_kernel(op, "CUDA") for op in TRAINING_OPS)  # what the old check asked

    def pick_device() -> str:  # the trainers' fallback
        return "cuda" if available(TRAINING_OPS, "cuda")[0] else "cpu"

    assert pick_device() == "cpu"
    ok, why = available(TRAINING_OPS, "cuda")
    assert why.startswith("mclcore.critic_grad on cuda:") and "triton does not import" in why and "\n" not in why
    ok, why = available("infonce_with_grad", "cuda")
    assert not ok and "_cuda_infonce_with_grad has no CUDA kernel" in why
    with pytest.raises(RuntimeError, match="no GPU backend"):  # what calling it would have done
        _backend.implementation("infonce_with_grad")
    _with_triton(monkeypatch)
    assert pick_device() == "cuda"


def test_an_explicit_backend_that_cannot_run_is_not_available(gpu, monkeypatch):
    _with_triton(monkeypatch)
    _kernels(monkeypatch, twins=False)
    with use_backend("cuda"):  # chosen explicitly, never replaced by triton
        ok, why = available("mech_derivs", "cuda")
        assert not ok and why.startswith("mclcore.mech_derivs on cuda:") and "backend 'cuda'" in why
        assert "_cuda_mech_derivs" in why
        ok, why = available("critic_grad", "cuda")
        assert not ok and "no CUDA C++ kernel" in why
    _without_triton(monkeypatch)
    _kernels(monkeypatch, twins=True)
    monkeypatch.setenv(_backend.ENV, "triton")
    ok, why = available("infonce", "cuda")
    assert not ok and "backend 'triton'" in why and "No module named 'triton'" in why
    monkeypatch.setenv(_backend.ENV, "opencl")
    with pytest.raises(ValueError, match=_backend.ENV):
        available("infonce", "cuda")
    assert available("infonce", "cpu") == (True, "")  # the CPU never depends on the GPU backend


def test_a_missing_public_cuda_kernel_is_reported(gpu, monkeypatch):
    _with_triton(monkeypatch)
    _kernels(monkeypatch, twins=False, missing=("mech_derivs",))
    ok, why = available(("infonce", "mech_derivs"), "cuda")
    assert not ok and why.startswith("mclcore.mech_derivs on cuda:") and "register_cuda" in why


def test_every_hook_off_makes_everything_unavailable(gpu, monkeypatch):
    # The simplest simulation: no kernel anywhere (documented in available's docstring).
    _with_triton(monkeypatch)
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, key: False)
    for device in ("cpu", "cuda"):
        for op in ALL:
            ok, why = available(op, device)
            assert not ok and why.startswith(f"mclcore.{op} on {device}:"), why
