"""Compile report: every Triton kernel of mclcore/ops/triton/ compiled for sm_90 and sm_80, without a GPU.

    python benchmarks/compile_report.py            # both targets, table printed, rows appended to results/compile.csv
    python benchmarks/compile_report.py --no-csv --json out.json --arch 90
    python benchmarks/compile_report.py --variants --infonce-d 128 512   # also the switches and d = 512 (~4x longer)

What is compiled: exactly the launches the production launchers make. Each launcher of :mod:`mclcore.ops.triton`
(infonce, infonce_backward, infonce_with_grad, critic_grad, critic_grad_backward, mech_derivs, comp_contrast,
comp_contrast_backward) is called on CPU tensors with ``JITFunction.run`` replaced by a recorder, so the tile sizes,
``num_warps``, ``num_stages`` (Triton's default 3 where the launcher passes none; infonce's split _dk_kernel takes
2 for 16-bit operands, ``_DK_STAGES``), the tl.dot operand dtype and precision and the type and alignment of every
argument are whatever the launcher picks from its tile table (``_TILES`` / ``_tiles`` / ``_DK_STAGES`` /
``_FWD_D_CHUNK`` / ``dot_dtype`` / ``dot_precision`` in infonce.py, ``_BLOCK`` in critic_grad.py,
``block=128`` in mech_derivs.py, ``block=64`` in comp_contrast.py) at that moment: nothing of the table is copied
here, so the report follows the kernels as they change. The recorder zero-fills the floating tensors of each launch
instead of running it (so that a host-side check of the results, such as infonce's opt-in finiteness check, passes
and the launcher goes on to its next launch). Every ``MCLCORE_TRITON_*`` variable is unset first: the production
defaults. The cases:

* infonce: float16, bfloat16, float32, float64 inputs; diagonal and multi-positive (groups); B = 4096, d = 128 (the
  benchmarks' width: the full tile table). Both backward designs in every run (``backward_design`` in infonce.py):
  the default one per dtype and precision (setting ``default``: the fused _dqdk_kernel + _dq_finish_kernel for
  16-bit and float64, the split _dq_kernel + _dk_kernel for IEEE float32), the split one for every dtype (setting
  ``MCLCORE_TRITON_INFONCE_BWD=split``, also what deterministic algorithms select) and the fused one of float32 as
  TF32 runs it (setting ``MCLCORE_TRITON_FP32_DOT=tf32``, backward only). ``--infonce-d 128 512`` adds d = 512
  (MAX_D, where ``_tiles`` shrinks the row tiles); ``--variants`` adds every value of MCLCORE_TRITON_HALF_DOT
  (16-bit) and MCLCORE_TRITON_FP32_DOT (float32) (column ``setting``);
* critic_grad / critic_grad_backward: every activation, float32 and float64, critic 90 -> 256 -> 256 -> 1, B = 256;
* mech_derivs: every activation, float32 and float64, generator 10 -> 64 -> 64 -> 64, B = 64;
* comp_contrast / comp_contrast_backward: every activation, float32 and float64, generator 10 -> 64 -> 64 -> 64
  (bench_comp_contrast's: two activated hidden layers, linear output), B = 256, forward then backward (its four
  kernels: _act_kernel per activation, _contrast_kernel, _jacobian_adjoint_kernel, _deactivate_kernel with and
  without the s'' term). Its matrix products are torch.mm (cuBLAS) and not in the report: the Triton kernels are
  elementwise and per-sample reductions, with no tl.dot, so no tensor-core instruction is expected there. One
  generator: the sizes reach the kernels only as integer arguments (widths, dz), which Triton specialises on
  divisibility by 16 and on == 1, and the launch configuration (block, warps) does not depend on them; other sizes
  (an odd width, dz = 1) compile such variants of the same kernels, not in this run (each would add ~6 s to it).

Each distinct specialisation (kernel, argument types and divisibility, constexprs, options) is compiled once per
target with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90 | 80, 32), options=...)``: no GPU and no
CUDA driver are needed, Triton's wheel ships ptxas (triton/backends/nvidia/bin/: ptxas 12.9 for sm_80,
"ptxas-blackwell" 13.4 for sm_90 and up; sm_90 compiles as sm_90a). Triton's kernel cache goes to a fresh temporary
folder per run, so nothing is reused across runs. Recorded per kernel, dtype and target:

* ``registers``, ``spill_stores`` / ``spill_loads`` / ``stack_bytes``: from ptxas's ``-v`` log (Triton always runs
  ptxas with -v; ``knobs.nvidia.dump_ptxas_log`` makes it print the log, captured here);
* ``shared_bytes``: the dynamic shared memory the launch requests (Triton's ``metadata.shared``) plus any static
  shared memory ptxas reports; checked against the per-block maximum (227 KiB on sm_90, 163 KiB on sm_80: the
  SM's 228 / 164 KiB less the 1 KiB the hardware reserves per block: a launch asking for more fails);
* ``dot_operand``: the element type of the ``tt.dot`` operands in the Triton IR (empty: no tl.dot);
  ``tensor_core``: whether the PTX holds ``mma.sync`` or ``wgmma.mma_async`` instructions (``tc_instr``: which);
* ``blocks_per_sm``: resident blocks per SM by the occupancy rules (registers in units of 256 per warp, 64K per
  SM; shared memory plus 1 KiB per block against 228 / 164 KiB; 64 warps; 32 blocks): an estimate, not measured.

Not measurable without a GPU: times, achieved bandwidth / FLOP/s, achieved occupancy, whether the tiles are the
fastest ones; also anything the CUDA driver decides at load time (the JIT of the cubin is not needed: ptxas made it).
The checks (here and in ``tests/test_compile_report.py``): every kernel compiled, no spills, shared memory within
the per-block maximum; the test adds tensor-core instructions in every 16-bit infonce kernel with a tl.dot.
The exit status is 1 when a check fails.

Rows go to ``benchmarks/results/compile.csv`` with the Triton and ptxas versions, the git sha, the date and a hash
of mclcore/ops/triton/*.py (``kernel_src``; ``src_dirty`` says whether those files differ from the commit).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import importlib
import io
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARCHS = (90, 80)
# Shared memory per SM (maximum carve-out) and per block (opt-in maximum = per SM less 1 KiB reserved per block).
SMEM_PER_SM = {90: 228 * 1024, 80: 164 * 1024}
SMEM_PER_BLOCK = {90: 227 * 1024, 80: 163 * 1024}
SMEM_RESERVED_PER_BLOCK = 1024
REGS_PER_SM, MAX_WARPS_PER_SM, MAX_BLOCKS_PER_SM = 65536, 64, 32
INFONCE_B = 4096
INFONCE_D = (128,)
CSV_NAME = "compile"

# ---------------------------------------------------------------------------------------------------------------
# Capturing the launches


@dataclass
class Launch:
    op: str            # the launcher called (infonce, critic_grad, ...)
    case: str          # what the call was (dtype, mode, sizes)
    dtype: str         # input dtype of the launcher call
    setting: str       # "default", or the MCLCORE_TRITON_* switch set during the call (variants)
    fn: object         # the triton JITFunction launched
    args: tuple
    kwargs: dict
    cases: list = field(default_factory=list)


def _triton_modules():
    """The modules of the mclcore.ops.triton package (kernels, tile tables)."""
    import mclcore.ops.triton as pkg

    names = sorted(os.path.splitext(os.path.basename(p))[0]
                   for p in glob.glob(os.path.join(os.path.dirname(pkg.__file__), "*.py")))
    return [importlib.import_module(f"mclcore.ops.triton.{n}") for n in names if n != "__init__"]


def kernel_names() -> list[str]:
    """``module.name`` of every ``@triton.jit`` function of the package named ``*_kernel`` (the launched kernels;
    the others are device functions inlined into them)."""
    from triton.runtime.jit import JITFunction

    out = set()
    for mod in _triton_modules():
        for name, obj in vars(mod).items():
            if isinstance(obj, JITFunction) and name.endswith("_kernel") and obj.__module__ == mod.__name__:
                out.add(f"{mod.__name__.rsplit('.', 1)[-1]}.{name}")
    return sorted(out)


def _kernel_id(fn) -> str:
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


@contextlib.contextmanager
def _recording(sink: list):
    """Replace JITFunction.run by a recorder: (fn, args, kwargs) appended to ``sink``, floating tensors zeroed."""
    import torch
    from triton.runtime.jit import JITFunction

    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        sink.append((self, args, dict(kwargs)))
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                a.zero_()

    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = original


def _switches(variants: bool) -> dict:
    """Per dtype family, the settings of the launchers' environment switches to capture: ``{family: [(label,
    {var: value})]}``. "default" (every ``MCLCORE_TRITON_*`` variable unset, PyTorch's default float32 matmul
    precision) always; with ``variants`` also every value of MCLCORE_TRITON_HALF_DOT (16-bit inputs) and
    MCLCORE_TRITON_FP32_DOT (float32 inputs), where the kernels' modules define them."""
    inf = importlib.import_module("mclcore.ops.triton.infonce")
    try:
        launch = importlib.import_module("mclcore.ops.triton._launch")
    except ImportError:
        launch = None
    out = {"16bit": [("default", {})], "float32": [("default", {})], "float64": [("default", {})]}
    if variants:
        half_env = getattr(inf, "HALF_DOT_ENV", None)
        if half_env:
            out["16bit"] += [(f"{half_env}={c}", {half_env: c})
                             for c in getattr(inf, "HALF_DOT_CHOICES", ("input", "float32"))]
        fp32_env = getattr(launch, "FP32_DOT_ENV", None) or getattr(inf, "FP32_DOT_ENV", None)
        if fp32_env:
            choices = getattr(launch, "FP32_DOT_CHOICES", None) or getattr(inf, "FP32_DOT_CHOICES", ())
            out["float32"] += [(f"{fp32_env}={c}", {fp32_env: c}) for c in choices if c != "auto"]
    return out


def _backward_designs(bwd_env, fp32_env, family: str, setting: str, variants: bool) -> list:
    """The infonce backward launches captured besides a setting's own (the production defaults pick one design per
    dtype and precision, mclcore.ops.triton.infonce.backward_design): ``[(label, {var: value})]``. Always the split
    design (MCLCORE_TRITON_INFONCE_BWD=split, which torch.use_deterministic_algorithms(True) also selects); for
    float32 also the fused design as TF32 runs it (MCLCORE_TRITON_FP32_DOT=tf32; already there with ``variants``)."""
    if not bwd_env:
        return []
    out = [(f"{bwd_env}=split" if setting == "default" else f"{setting} {bwd_env}=split", {bwd_env: "split"})]
    if family == "float32" and setting == "default" and fp32_env and not variants:
        out.append((f"{fp32_env}=tf32", {fp32_env: "tf32"}))
    return out


@contextlib.contextmanager
def _env(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def capture_launches(infonce_d=INFONCE_D, variants: bool = False) -> list[Launch]:
    """Call every launcher on CPU tensors over the cases of the module docstring; the recorded launches, in order.
    Every ``MCLCORE_TRITON_*`` variable is unset first (the production defaults), then set per variant."""
    import torch

    from mclcore.ops import triton as tk

    for var in [v for v in os.environ if v.startswith("MCLCORE_TRITON_")]:
        del os.environ[var]
    cg = importlib.import_module("mclcore.ops.triton.critic_grad")
    md = importlib.import_module("mclcore.ops.triton.mech_derivs")
    cc = importlib.import_module("mclcore.ops.triton.comp_contrast")
    switches = _switches(variants)
    # The infonce backward's second design (MCLCORE_TRITON_INFONCE_BWD=split, also what
    # torch.use_deterministic_algorithms(True) selects): captured in every run, labelled by its setting.
    bwd_env = getattr(importlib.import_module("mclcore.ops.triton.infonce"), "BWD_ENV", None)
    fp32_env = getattr(importlib.import_module("mclcore.ops.triton._launch"), "FP32_DOT_ENV", None)
    launches: list[Launch] = []

    def record(op, case, dtype, setting, call):
        sink: list = []
        with _recording(sink):
            call()
        launches.extend(Launch(op, case, str(dtype).replace("torch.", ""), setting, fn, a, kw)
                        for fn, a, kw in sink)

    gen = torch.Generator().manual_seed(0)
    tau, eps = 0.1, 1e-12
    for d in infonce_d:
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            family = "16bit" if dtype in (torch.float16, torch.bfloat16) else str(dtype)[6:]
            for setting, env in switches[family]:
                for mode in ("diagonal", "groups"):
                    p = torch.randn(INFONCE_B, d, generator=gen).to(dtype)
                    k = torch.randn(INFONCE_B, d, generator=gen).to(dtype)
                    groups = torch.randint(0, 8, (INFONCE_B,), generator=gen) if mode == "groups" else None
                    ct = torch.float64 if dtype == torch.float64 else torch.float32
                    la = torch.zeros(INFONCE_B, dtype=ct)

                    def calls(p=p, k=k, groups=groups, la=la, ct=ct):
                        tk.infonce(p, k, groups, tau, eps)
                        tk.infonce_backward(torch.ones((), dtype=ct), p, k, groups, la, la.clone(), tau, eps)
                        tk.infonce_with_grad(p, k, groups, tau, eps)

                    def backward(p=p, k=k, groups=groups, la=la, ct=ct):
                        tk.infonce_backward(torch.ones((), dtype=ct), p, k, groups, la, la.clone(), tau, eps)

                    case = f"{mode} B={INFONCE_B} d={d}"
                    with _env(env):
                        record("infonce", case, dtype, setting, calls)
                    for label, extra in _backward_designs(bwd_env, fp32_env, family, setting, variants):
                        with _env({**env, **extra}):
                            record("infonce", case, dtype, label, backward)
    B, dv, hidden = 256, 10 + 64 + 16, 256
    for dtype in (torch.float32, torch.float64):
        for act in cg.ACTIVATIONS:
            v = torch.randn(B, dv, generator=gen, dtype=dtype)
            ws = [torch.randn(hidden, dv, dtype=dtype), torch.randn(hidden, hidden, dtype=dtype),
                  torch.randn(1, hidden, dtype=dtype)]
            bs = [torch.zeros(w.shape[0], dtype=dtype) for w in ws]

            def calls(v=v, ws=ws, bs=bs, act=act):
                _, saved = tk.critic_grad(v, ws, bs, act)
                tk.critic_grad_backward(torch.ones_like(v), v, ws, bs, saved, act)

            record("critic_grad", f"{act} B={B} {dv}->{hidden}->{hidden}->1", dtype, "default", calls)
    params = {"softplus": 1.0, "smooth_leaky": 0.2, "leaky_relu": 0.2}

    def mlp(B, dz, width, dtype):
        """z (B, dz) and a generator dz -> width -> width -> width (weights, zero biases) of the MLP ops."""
        z = torch.randn(B, dz, generator=gen, dtype=dtype)
        ws = [torch.randn(width, dz, dtype=dtype), torch.randn(width, width, dtype=dtype),
              torch.randn(width, width, dtype=dtype)]
        return z, ws, [torch.zeros(width, dtype=dtype) for _ in ws]

    B, dz, width = 64, 10, 64
    for dtype in (torch.float32, torch.float64):
        for act in md.ACTIVATIONS:
            z, ws, bs = mlp(B, dz, width, dtype)

            def calls(z=z, ws=ws, bs=bs, act=act):
                tk.mech_derivs(z, ws, bs, None, None, None, [act, act], [params.get(act, 0.0)] * 2)

            record("mech_derivs", f"{act} B={B} {dz}->{width}->{width}->{width}", dtype, "default", calls)
    # comp_contrast: bench_comp_contrast's generator (dz 10 -> 64 -> 64 -> dx 64, activated hidden layers, linear
    # output), every activation; the launchers' own block (no block= passed: the production default).
    B, dz, width = 256, 10, 64
    for dtype in (torch.float32, torch.float64):
        for act in cc.ACTIVATIONS:
            z, ws, bs = mlp(B, dz, width, dtype)
            acts, prms = [act, act], [params.get(act, 0.0)] * 2

            def calls(z=z, ws=ws, bs=bs, acts=acts, prms=prms, dtype=dtype):
                _, _, saved = tk.comp_contrast(z, ws, bs, None, acts, prms)
                ones = torch.ones(B, dtype=dtype)
                tk.comp_contrast_backward(ones, ones, z, ws, bs, None, saved, acts, prms)

            record("comp_contrast", f"{act} B={B} {dz}->{width}->{width}->{width}", dtype, "default", calls)
    return launches


# ---------------------------------------------------------------------------------------------------------------
# Compiling


_LAUNCHES: list[Launch] = []  # the work list of the pool's workers (inherited through fork)


def _specialise(launch: Launch, arch: int):
    """(ASTSource, options, key) of a launch for target sm_<arch>, as JITFunction.run would build them."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = launch.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound_args, specialization,
                                                          options)
    names = fn.arg_names
    consts = {names[k[0]]: v for k, v in constexprs.items() if len(k) == 1}
    key = (_kernel_id(fn), tuple(signature.items()), tuple(sorted((str(k), repr(v)) for k, v in constexprs.items())),
           repr(sorted(attrs.items())), options.num_warps, options.num_stages, options.num_ctas)
    return ASTSource(fn, signature, constexprs, attrs), options, key, signature, consts


_PTXAS = {
    "registers": r"Used (\d+) registers",
    "stack_bytes": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "static_smem": r"(\d+) bytes smem",
}


def _ptxas_info(log: str) -> dict:
    out = {}
    for k, pat in _PTXAS.items():
        m = re.findall(pat, log)
        out[k] = int(m[-1]) if m else (0 if k == "static_smem" else None)
    return out


def _cuobjdump_info(cubin: bytes) -> dict:
    """Registers / stack from ``cuobjdump --dump-resource-usage`` (used when no ptxas log came back)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              timeout=60).stdout
    reg = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return {"registers": int(reg.group(1)) if reg else None, "stack_bytes": int(stack.group(1)) if stack else None}


def blocks_per_sm(arch: int, registers: int, num_warps: int, shared: int) -> int:
    """Resident blocks per SM by the CUDA occupancy rules (an estimate: no GPU was asked)."""
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_regs = (REGS_PER_SM // regs_per_warp) // num_warps
    by_smem = SMEM_PER_SM[arch] // (shared + SMEM_RESERVED_PER_BLOCK)
    return int(min(by_regs, by_smem, MAX_WARPS_PER_SM // num_warps, MAX_BLOCKS_PER_SM))


_TC = re.compile(r"^\s*((?:wgmma\.mma_async|mma\.sync)[\w.]*)", re.M)
_DOT = re.compile(r"tt\.dot\b[^\n]*?:\s*tensor<(?:\d+x)+(\w+)>")  # element type of the first operand


def compile_one(index: int, arch: int) -> dict:
    """Compile _LAUNCHES[index] for sm_<arch>; the report row."""
    import triton
    from triton import knobs

    launch = _LAUNCHES[index]
    t0 = time.perf_counter()
    src, options, _key, signature, consts = _specialise(launch, arch)
    row = dict(target=f"sm_{arch}", op=launch.op, module=_kernel_id(launch.fn).split(".")[0],
               kernel=launch.fn.__name__, dtype=launch.dtype,
               setting=launch.setting, cases="; ".join(launch.cases),
               constexprs=" ".join(f"{k}={v}" for k, v in consts.items()),
               pointers=" ".join(f"{k}:{v}" for k, v in signature.items() if v.startswith("*")),
               num_warps=options.num_warps, num_stages=options.num_stages)
    log = io.StringIO()
    try:
        with knobs.nvidia.scope():
            knobs.nvidia.dump_ptxas_log = True
            with contextlib.redirect_stdout(log):
                from triton.backends.compiler import GPUTarget

                ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options.__dict__)
    except Exception as err:  # a compile error is a row, not a crash of the report
        first = (str(err).strip().splitlines() or [""])[0]
        row.update(error=f"{type(err).__name__}: {first[:300]}",
                   compile_s=round(time.perf_counter() - t0, 3))
        return row
    info = _ptxas_info(log.getvalue())
    if info["registers"] is None:
        info.update(_cuobjdump_info(ck.asm["cubin"]))
        info["spill_stores"] = info["spill_loads"] = None  # only ptxas's log states spills
    shared = int(ck.metadata.shared) + int(info.pop("static_smem") or 0)
    dots = sorted(set(_DOT.findall(ck.asm["ttir"])))
    tc = sorted(set(_TC.findall(ck.asm["ptx"])))
    row.update(info, shared_bytes=shared, dot_operand="/".join(dots), tensor_core=bool(tc),
               tc_instr=" ".join(tc), blocks_per_sm=blocks_per_sm(arch, info["registers"] or 0,
                                                                  options.num_warps, shared),
               compile_s=round(time.perf_counter() - t0, 3), error="")
    return row


def _compile_task(task):
    return compile_one(*task)


def compile_all(launches: list[Launch], archs, jobs: int) -> list[dict]:
    """Distinct specialisations of ``launches`` compiled for every target (``jobs`` worker processes)."""
    global _LAUNCHES
    unique: dict = {}
    for launch in launches:
        _, _, key, _, _ = _specialise(launch, archs[0])
        first = unique.setdefault(key, launch)
        label = f"{launch.op}/{launch.dtype}/{launch.setting}: {launch.case}"
        if label not in first.cases:
            first.cases.append(label)
    _LAUNCHES = list(unique.values())
    # Big kernels first, so that the pool's last tasks are short ones.
    tasks = sorted(((i, a) for a in archs for i in range(len(_LAUNCHES))),
                   key=lambda t: (_LAUNCHES[t[0]].op != "infonce", t[0], t[1]))
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            rows = pool.map(_compile_task, tasks, chunksize=1)
    else:
        rows = [_compile_task(t) for t in tasks]
    order = {"infonce": 0, "critic_grad": 1, "mech_derivs": 2, "comp_contrast": 3}
    return sorted(rows, key=lambda r: (r["target"] != "sm_90", order.get(r["op"], 9), r["kernel"], r["dtype"],
                                       r["setting"], r["constexprs"]))


# ---------------------------------------------------------------------------------------------------------------
# Provenance and output


def _kernel_sources():
    return sorted(glob.glob(os.path.join(ROOT, "mclcore", "ops", "triton", "*.py")))


def kernel_src_hash() -> str:
    h = hashlib.sha256()
    for path in _kernel_sources():
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + f.read())
    return h.hexdigest()[:12]


def src_dirty() -> str:
    """Whether mclcore/ops/triton/ differs from HEAD ("yes" / "no" / "unknown"): read-only git."""
    try:
        proc = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--", "mclcore/ops/triton"],
                              cwd=ROOT, capture_output=True, text=True, timeout=20)
        return "unknown" if proc.returncode else ("yes" if proc.stdout.strip() else "no")
    except Exception:
        return "unknown"


def ptxas_versions(archs) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    out = {}
    for a in archs:
        tool = get_ptxas(a)
        out[a] = f"{os.path.basename(tool.path)} {tool.version}"
    return out


def _tiles(r) -> str:
    keep = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "D_CHUNK", "BLOCK_R", "BLOCK", "HAS_GROUPS", "SCALED", "ACT", "CURVED")
    c = dict(kv.split("=", 1) for kv in r["constexprs"].split() if "=" in kv)
    return " ".join(f"{k}={c[k]}" for k in keep if k in c)


def table_rows(rows: list[dict], *, by_act: bool = True) -> list[dict]:
    """Rows of the printed table: identical results of one kernel, target, dtype and tile choice merged (they
    differ in a pointer's alignment or a constexpr that changes nothing here), with their number in ``n``;
    ``by_act=False`` also merges the activations (ACT) of the elementwise kernels, keeping the worst values."""
    out: dict = {}
    for r in rows:
        tiles = _tiles(r)
        if not by_act:
            tiles = " ".join(t for t in tiles.split() if not t.startswith(("ACT=", "SCALED=", "CURVED=")))
        if r.get("error"):
            key = (r["target"], r["op"], r["kernel"], r["dtype"], r["setting"], tiles, "error", r["error"])
            out.setdefault(key, dict(r, tiles=tiles, n=0))["n"] += 1
            continue
        sp = None if r["spill_stores"] is None else r["spill_stores"] + r["spill_loads"]
        tc = (r["tc_instr"].split()[0] if r["tensor_core"] else "no") if r["dot_operand"] else "-"
        key = (r["target"], r["op"], r["kernel"], r["dtype"], r["setting"], tiles, r["num_warps"],
               r["num_stages"], r["dot_operand"], tc) + ((r["registers"], sp, r["shared_bytes"]) if by_act else ())
        m = out.get(key)
        if m is None:
            out[key] = dict(r, tiles=tiles, n=1, spills=sp, tc=tc)
        else:
            m["n"] += 1
            m["registers"] = max(m["registers"], r["registers"])
            m["spills"] = None if sp is None or m["spills"] is None else max(m["spills"], sp)
            m["shared_bytes"] = max(m["shared_bytes"], r["shared_bytes"])
            m["blocks_per_sm"] = min(m["blocks_per_sm"], r["blocks_per_sm"])
    return list(out.values())


def _fmt_table(rows: list[dict], by_act: bool = True) -> str:
    cols = ["target", "op", "kernel", "dtype", "setting", "tiles", "n", "warps", "stages", "regs", "spill_B",
            "smem_KiB", "blocks/SM", "dot", "tensor_core"]
    cells = []
    for r in table_rows(rows, by_act=by_act):
        if r.get("error"):
            cells.append([r["target"], r["op"], r["kernel"], r["dtype"], r["setting"], r["tiles"], str(r["n"])]
                         + [""] * 7 + ["ERROR " + r["error"][:80]])
            continue
        cells.append([r["target"], r["op"], r["kernel"], r["dtype"], r["setting"], r["tiles"], str(r["n"]),
                      str(r["num_warps"]), str(r["num_stages"]), str(r["registers"]),
                      "?" if r["spills"] is None else str(r["spills"]), f"{r['shared_bytes'] / 1024:.1f}",
                      str(r["blocks_per_sm"]), r["dot_operand"] or "-", r["tc"]])
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip() for x in cells]
    return "\n".join(lines)


def check(rows: list[dict], expected_kernels: list[str], archs) -> list[str]:
    """The report's own verdicts (the test asserts the same): compile errors, spills, shared memory, coverage."""
    problems = []
    for r in rows:
        where = f"{r['target']} {r['op']}.{r['kernel']} {r['dtype']} {r['setting']} [{r['constexprs']}]"
        if r.get("error"):
            problems.append(f"compile error: {where}: {r['error']}")
            continue
        if (r["spill_stores"] or 0) + (r["spill_loads"] or 0) > 0:
            problems.append(f"spills: {where}: {r['spill_stores']} B stores, {r['spill_loads']} B loads")
        arch = int(r["target"][3:])
        if r["shared_bytes"] > SMEM_PER_BLOCK[arch]:
            problems.append(f"shared memory: {where}: {r['shared_bytes']} B > {SMEM_PER_BLOCK[arch]} B")
    for a in archs:
        got = {_row_kernel_id(r) for r in rows if r["target"] == f"sm_{a}"}
        for k in expected_kernels:
            if k not in got:
                problems.append(f"not compiled for sm_{a}: {k} (no production case launches it)")
    return problems


def _row_kernel_id(r) -> str:
    return f"{r['module']}.{r['kernel']}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=[80, 86, 89, 90],
                    help="compute capabilities to compile for (default: 90 80)")
    ap.add_argument("--infonce-d", type=int, nargs="+", default=list(INFONCE_D),
                    help="feature widths of the infonce cases (default: 128; 512 = MAX_D adds the shrunk tiles, "
                         "about 2.5x the compile time)")
    ap.add_argument("--variants", action="store_true",
                    help="also every value of the launchers' switches MCLCORE_TRITON_HALF_DOT (16-bit inputs) and "
                         "MCLCORE_TRITON_FP32_DOT (float32 inputs); default: the production defaults only")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="compiler processes (default: min(2, CPUs))")
    ap.add_argument("--json", default=None, help="also write {meta, rows, problems} to this JSON file")
    ap.add_argument("--no-csv", action="store_true", help=f"do not append to benchmarks/results/{CSV_NAME}.csv")
    ap.add_argument("--quiet", action="store_true", help="no table (summary and problems only)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("compile_report: unset TRITON_INTERPRET (the interpreter replaces triton.jit's kernels)")
    cache = tempfile.TemporaryDirectory(prefix="mclcore-compile-report-")
    os.environ["TRITON_CACHE_DIR"] = cache.name  # nothing reused across runs
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import triton

    torch.set_num_threads(1)
    launches = capture_launches(tuple(args.infonce_d), variants=args.variants)
    t_capture = time.perf_counter() - t_start
    rows = compile_all(launches, args.arch, max(1, args.jobs))
    wall = time.perf_counter() - t_start
    expected = kernel_names()
    problems = check(rows, expected, args.arch)
    ptxas = ptxas_versions(args.arch)
    meta = dict(triton=triton.__version__, ptxas="; ".join(f"sm_{a}: {v}" for a, v in ptxas.items()),
                kernel_src=kernel_src_hash(), src_dirty=src_dirty(), wall_s=round(wall, 1),
                capture_s=round(t_capture, 1), jobs=args.jobs, launches=len(launches),
                specialisations=len(_LAUNCHES), compiles=len(rows))
    for r in rows:
        r["ptxas"] = ptxas[int(r["target"][3:])]
    if not args.quiet:
        print(_fmt_table(rows))
    print(f"\n{len(launches)} launches -> {len(_LAUNCHES)} distinct kernels x {len(args.arch)} targets = "
          f"{len(rows)} compiles in {wall:.1f} s ({args.jobs} processes; capture {t_capture:.1f} s); "
          f"triton {triton.__version__}; {meta['ptxas']}; kernel sources {meta['kernel_src']} "
          f"(modified vs HEAD: {meta['src_dirty']})")
    tc16 = [r for r in rows if r["op"] == "infonce" and r["dtype"] in ("float16", "bfloat16") and r["dot_operand"]]
    for hd in sorted({r["setting"] for r in tc16}):
        sel = [r for r in tc16 if r["setting"] == hd]
        print(f"16-bit infonce kernels with tl.dot, {hd}: {sum(r['tensor_core'] for r in sel)} of "
              f"{len(sel)} use tensor-core instructions")
    cc = [r for r in rows if r["op"] == "comp_contrast" and not r.get("error")]
    if cc:  # none expected: elementwise kernels and per-sample reductions, the products are torch.mm (cuBLAS)
        print(f"comp_contrast kernels: {sum(bool(r['dot_operand'] or r['tensor_core']) for r in cc)} of {len(cc)} "
              f"with tl.dot or tensor-core instructions (expected 0: its matrix products are cuBLAS's)")
    if problems:
        print(f"{len(problems)} problem(s):")
        for p in problems:
            print("  " + p)
    else:
        print("no compile errors, no spills, shared memory within the per-block maximum, every kernel compiled")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows, problems=problems, expected_kernels=expected), f, indent=1)
    if not args.no_csv:
        from benchmarks.common import append_rows

        csv_rows = [r | {
            "triton": meta["triton"], "kernel_src": meta["kernel_src"], "src_dirty": meta["src_dirty"],
            "report_wall_s": meta["wall_s"]} for r in rows]
        print("appended to", append_rows(CSV_NAME, csv_rows))
    cache.cleanup()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
