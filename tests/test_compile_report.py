"""The compile report (benchmarks/compile_report.py): every Triton kernel compiled for sm_90 and sm_80 without a GPU.

The report runs once per session in a subprocess (TRITON_INTERPRET and every MCLCORE_TRITON_* switch unset: the
production defaults; its Triton cache is a fresh temporary folder), with ``--no-csv --json``; the tests read its
rows. It needs the triton package and the ptxas of its wheel (triton/backends/nvidia/bin/), no GPU and no CUDA
driver. Assertions, for every kernel, dtype and target:

* it compiled, and every ``@triton.jit`` ``*_kernel`` of mclcore/ops/triton/ was compiled for both targets;
* no register spills (ptxas: 0 bytes spill stores and loads), none excepted;
* shared memory within the per-block maximum (227 KiB on sm_90, 163 KiB on sm_80: the SM's 228 / 164 KiB less the
  1 KiB reserved per block; a launch asking for more fails);
* tensor-core instructions (mma / wgmma in the PTX) in every 16-bit infonce kernel with a tl.dot, in both backward
  designs (the fused default and MCLCORE_TRITON_INFONCE_BWD=split, which the report always compiles too);
* comp_contrast by name: its four kernels in float32 and float64 on both targets, _act_kernel for every activation,
  _deactivate_kernel with and without the s'' term, none spilling, shared memory within the maximum, and no
  tl.dot / tensor-core instruction (its products are torch.mm's);
* the whole report within 2 minutes (measured here, on the CI machine).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "benchmarks", "compile_report.py")
LIMIT_S = 120.0
# triton is not imported in this process: the report runs in a subprocess
_TRITON = importlib.util.find_spec("triton")
pytestmark = pytest.mark.skipif(_TRITON is None, reason="triton is not installed")


def _ptxas_available() -> bool:
    bin_dir = os.path.join(os.path.dirname(_TRITON.origin), "backends", "nvidia", "bin")
    return os.path.exists(os.path.join(bin_dir, "ptxas")) or bool(os.environ.get("TRITON_PTXAS_PATH"))


def _module():
    return importlib.import_module("benchmarks.compile_report")  # stdlib imports only at import time


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not _ptxas_available():
        pytest.skip("triton's wheel has no ptxas (triton/backends/nvidia/bin/ptxas)")
    out = tmp_path_factory.mktemp("compile_report") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("MCLCORE_TRITON_")}
    env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, REPORT, "--no-csv", "--quiet", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    assert proc.returncode in (0, 1), f"compile_report crashed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    data = json.loads(out.read_text())
    data["wall_s"] = wall
    data["stdout"] = proc.stdout
    return data


def _where(r) -> str:
    return f"{r['target']} {r['op']}.{r['kernel']} {r['dtype']} ({r['setting']}) [{r['constexprs']}]"


def test_every_kernel_compiles_for_both_targets(report):
    rows = report["rows"]
    errors = [f"{_where(r)}: {r['error']}" for r in rows if r.get("error")]
    assert not errors, "compile errors:\n" + "\n".join(errors)
    assert report["expected_kernels"], "no @triton.jit *_kernel found in mclcore/ops/triton/"
    for target in ("sm_90", "sm_80"):
        got = {f"{r['module']}.{r['kernel']}" for r in rows if r["target"] == target}
        missing = sorted(set(report["expected_kernels"]) - got)
        assert not missing, f"{target}: no production launch compiled {missing}"
    for r in rows:
        assert isinstance(r["registers"], int) and 0 < r["registers"] <= 255, _where(r)
        assert r["spill_stores"] is not None, f"{_where(r)}: ptxas's log was not captured"


def test_no_register_spills(report):
    # None known, on either target: a spill anywhere fails (the tile table's notes in infonce.py say how the last
    # sm_80 ones went, 2026-12-06).
    spills = [_where(r) + f": {r['spill_stores']} B stores, {r['spill_loads']} B loads" for r in report["rows"]
              if not r.get("error") and r["spill_stores"] + r["spill_loads"] > 0]
    assert not spills, "register spills:\n" + "\n".join(spills)


def test_shared_memory_within_the_per_block_maximum(report):
    limit = {"sm_90": 227 * 1024, "sm_80": 163 * 1024}
    over = [f"{_where(r)}: {r['shared_bytes']} B > {limit[r['target']]} B" for r in report["rows"]
            if not r.get("error") and r["shared_bytes"] > limit[r["target"]]]
    assert not over, "shared memory over the per-block maximum:\n" + "\n".join(over)


def test_tensor_cores_in_every_16bit_infonce_kernel(report):
    # The production defaults and the split backward (MCLCORE_TRITON_INFONCE_BWD=split, also what deterministic
    # algorithms select).
    rows = [r for r in report["rows"] if r["op"] == "infonce" and r["dtype"] in ("float16", "bfloat16")
            and r["setting"] in ("default", "MCLCORE_TRITON_INFONCE_BWD=split") and not r.get("error")]
    with_dot = [r for r in rows if r["dot_operand"]]
    # forward, fused dq/dk, split dq and split dk (the kernels with tl.dot) x 2 dtypes x 2 modes x 2 targets
    assert len(with_dot) >= 32, f"expected >= 32 16-bit infonce kernels with tl.dot, got {len(with_dot)}"
    kernels = {r["kernel"] for r in with_dot}
    assert kernels >= {"_forward_kernel", "_dqdk_kernel", "_dq_kernel", "_dk_kernel"}, kernels
    missing = [f"{_where(r)}: tl.dot on {r['dot_operand']}, no mma / wgmma in the PTX" for r in with_dot
               if not r["tensor_core"]]
    assert not missing, "16-bit infonce kernels without tensor-core instructions:\n" + "\n".join(missing)


def _comp_contrast_activations() -> dict:
    """ACTIVATIONS of mclcore/ops/triton/comp_contrast.py, read from its source (triton is not imported here)."""
    import ast

    src = open(os.path.join(ROOT, "mclcore", "ops", "triton", "comp_contrast.py")).read()
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ACTIVATIONS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("no ACTIVATIONS table in mclcore/ops/triton/comp_contrast.py")


def test_comp_contrast_kernels(report):
    # The generic tests above cover these rows too; this one also fails if the comp_contrast cases stop reaching a
    # kernel, an activation or a dtype (e.g. a launcher change that skips the backward in the report's capture).
    rows = [r for r in report["rows"] if r["op"] == "comp_contrast"]
    assert rows, "the report compiled no comp_contrast kernel"
    errors = [f"{_where(r)}: {r['error']}" for r in rows if r.get("error")]
    assert not errors, "compile errors:\n" + "\n".join(errors)
    kernels = {k.split(".", 1)[1] for k in report["expected_kernels"] if k.startswith("comp_contrast.")}
    assert kernels == {"_act_kernel", "_contrast_kernel", "_jacobian_adjoint_kernel", "_deactivate_kernel"}, kernels
    acts = {str(v) for v in _comp_contrast_activations().values()}
    limit = {"sm_90": 227 * 1024, "sm_80": 163 * 1024}
    for target in ("sm_90", "sm_80"):
        for dtype in ("float32", "float64"):
            sel = [r for r in rows if r["target"] == target and r["dtype"] == dtype]
            assert {r["kernel"] for r in sel} == kernels, (target, dtype, sorted({r["kernel"] for r in sel}))
            consts = lambda k, name: {c.split("=", 1)[1] for r in sel if r["kernel"] == k  # noqa: E731
                                      for c in r["constexprs"].split() if c.startswith(name + "=")}
            assert consts("_act_kernel", "ACT") == acts, (target, dtype)
            assert consts("_deactivate_kernel", "CURVED") == {"True", "False"}, (target, dtype)
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{_where(r)}: spills"
        assert r["shared_bytes"] <= limit[r["target"]], f"{_where(r)}: {r['shared_bytes']} B shared memory"
        # Elementwise kernels and per-sample reductions: the matrix products are torch.mm (cuBLAS), outside Triton.
        assert not r["dot_operand"] and not r["tensor_core"], f"{_where(r)}: tl.dot / tensor cores in comp_contrast"


def test_the_report_runs_within_two_minutes(report):
    assert report["wall_s"] <= LIMIT_S, (f"compile_report took {report['wall_s']:.0f} s (limit {LIMIT_S:.0f} s); "
                                         f"its own timing: {report['meta']}")


def test_report_rows_carry_their_provenance(report):
    meta = report["meta"]
    assert meta["triton"] == importlib.metadata.version("triton")
    assert meta["kernel_src"] and meta["src_dirty"] in ("yes", "no", "unknown")
    for r in report["rows"][:3]:
        assert r["ptxas"] and r["num_warps"] >= 1 and r["num_stages"] >= 1


def test_ptxas_log_parsing():
    mod = _module()
    log = ("ptxas info    : Compiling entry function '_dq_kernel' for 'sm_80'\n"
           "ptxas info    : Function properties for _dq_kernel\n"
           "    16 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size, 384 bytes smem\n")
    assert mod._ptxas_info(log) == dict(registers=255, stack_bytes=16, spill_stores=12, spill_loads=12,
                                        static_smem=384)


def test_occupancy_estimate():
    mod = _module()
    # 8 warps x 128 registers: 32 K registers per block -> 2 blocks; 64 KiB shared -> 3; warps -> 8
    assert mod.blocks_per_sm(90, 128, 8, 64 * 1024) == 2
    # 255 registers round up to 256 per thread: 8 warps need 64 K registers -> 1 block
    assert mod.blocks_per_sm(80, 255, 8, 0) == 1
    # tiny elementwise kernel: capped by the 32 blocks per SM rule? 4 warps -> 64 / 4 = 16 first
    assert mod.blocks_per_sm(90, 16, 4, 0) == 16
    # shared memory bound: 100 KiB + 1 KiB reserved per block on 164 KiB -> 1
    assert mod.blocks_per_sm(80, 32, 4, 100 * 1024) == 1


def test_committed_results_have_the_required_columns():
    path = os.path.join(ROOT, "benchmarks", "results", "compile.csv")
    assert os.path.exists(path), "benchmarks/results/compile.csv: run python benchmarks/compile_report.py"
    import csv

    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows
    for col in ("timestamp", "git_sha", "triton", "target", "kernel", "dtype", "registers", "spill_stores",
                "spill_loads", "shared_bytes", "tensor_core"):
        assert col in rows[0], col
    assert {r["target"] for r in rows} >= {"sm_90", "sm_80"}
