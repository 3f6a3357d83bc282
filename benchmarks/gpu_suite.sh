#!/usr/bin/env bash
# The prepared GPU run of issue #7 for one H100, within 9 minutes (the sum of the step timeouts is 540 s).
#
#   bash benchmarks/gpu_suite.sh                 # every step; logs and tables under benchmarks/results/gpu_suite/
#   bash benchmarks/gpu_suite.sh --dry-run       # print the steps (timeout and command) without running anything
#   bash benchmarks/gpu_suite.sh --out DIR       # logs, sanitizer reports, the profile table and a copy of the
#                                                # result CSVs under DIR (e.g. "$OUT" on the device machine)
#   bash benchmarks/gpu_suite.sh --skip-build    # the extension is already built for sm_90 (a warm machine)
#   bash benchmarks/gpu_suite.sh --only bench_infonce,profile     # some steps only (names: --dry-run)
#
# Steps, in order (each under its own timeout, so one hang cannot eat the budget; a failing step does not stop the
# suite; every failure is listed at the end and the exit status is 1 if there was one):
#   env                  GPU, driver, torch / triton versions; whether Inf-CL (inf_cl) imports
#   build                TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation -e . (offline: --no-deps
#                        --no-index), then checks that the CUDA C++ twins are registered
#   pytest_gpu           pytest -m gpu (tests/ops/test_gpu.py and any other gpu-marked test)
#   pytest_cuda_twins    the CUDA C++ twins against the CPU ops (tests/ops/test_cuda_compile.py, not gpu-marked)
#   odd_sizes            the sanitizer driver without a sanitizer: every op at B = 257, d = 67 (comp_contrast:
#                        dz = 7, widths 67 / 69), both backends
#                        (also compiles the Triton kernels once, so the sanitizer runs do not time the JIT)
#   memcheck, racecheck  compute-sanitizer --tool memcheck / racecheck on that driver (memcheck with
#                        PYTORCH_NO_CUDA_MEMORY_CACHING=1, so reads past a tensor inside a cached block are caught)
#   bench_*              every benchmark with --device cuda (bench_infonce: bf16, B = 256, 4096, 65536, d = 128,
#                        with the Inf-CL peer column when inf_cl imports; bench_comp_contrast: the op against
#                        vmap(jacfwd) / vmap(jacrev) at B = 256, 4096); rows appended to benchmarks/results/*.csv
#   profile              per-kernel split of the device time (torch.profiler) of infonce (bf16, B = 4096, 65536),
#                        critic_grad (B = 4096), mech_derivs (dz = 10), the MCL step (B = 256):
#                        benchmarks/results/gpu_profile.csv and <out>/profile.txt
#   bench_mcl_gather     MCLConfig(gather=True) across GPUs (issue #21): with more than one GPU visible, torchrun
#                        --nproc-per-node <#GPUs> (NCCL; 1 process vs N gathered vs N ungathered, B = 4096);
#                        with one GPU, one process (the 1-process route alone, and it says so)
#
# The two drivers (sanitize_driver.py, profile_driver.py) are embedded below and written to <out>/drivers/ at the
# start of a run (--write-drivers DIR writes them and exits: tests/test_gpu_suite.py runs them on the CPU).
# The timeouts are estimates made without a GPU: the summary prints each step's wall time to recalibrate them.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
OUT="benchmarks/results/gpu_suite"
BUDGET=540   # seconds: the suite starts no step after this (9 minutes)
DRY=0
SKIP_BUILD=0
ONLY=""

write_drivers() {
  mkdir -p "$1"
  cat > "$1/sanitize_driver.py" <<'PYEOF'
"""Every mclcore GPU op once at odd sizes (default B = 257, d = 67), under each GPU backend, for compute-sanitizer.

infonce (float16, bfloat16, float32, float64; diagonal and multi-positive; a non-contiguous p; forward alone under
no_grad, forward + backward, the fused training path), critic_grad (float32 / float64, every activation, forward +
second-order backward), mech_derivs (float32 / float64, tanh / smooth_leaky / gelu, FiLM) and comp_contrast
(float32 / float64, tanh / leaky_relu / gelu, dz = 7, odd widths d, d + 2, a non-contiguous z, in_bias; forward
alone under no_grad, forward + backward; the last activation on the output too). Backends: triton and cuda (an op
or backend that cannot run is reported and skipped: comp_contrast has no CUDA C++ twin). --device cpu runs the same
calls on the CPU ops (a smoke check of this driver without a GPU). Written by benchmarks/gpu_suite.sh.
"""
import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.getcwd())  # the suite runs from the repository root


def run_infonce(infonce, dev, B, d, gen):
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for multi in (False, True):
            groups = torch.randint(0, 5, (B,), generator=gen).to(dev) if multi else None
            p = torch.randn(B, d, generator=gen).to(dev, dtype).requires_grad_()
            k = torch.randn(B, d, generator=gen).to(dev, dtype).requires_grad_()
            with torch.no_grad():
                infonce(p, k, 0.1, groups=groups)                     # mclcore::infonce
            loss = infonce(p, k, 0.1, groups=groups)                   # infonce_with_grad, then its backward
            loss.backward()
            wide = torch.randn(B, 2 * d + 1, generator=gen).to(dev, dtype)
            pn = wide[:, 1:2 * d + 1:2].detach().requires_grad_()    # d columns, row stride 2d + 1
            infonce(pn, k.detach(), 0.07, groups=groups).backward()   # strided rows of p
    return "infonce"


def run_critic_grad(critic_grad, dev, B, d, gen):
    for dtype in (torch.float32, torch.float64):
        for act in ("gelu", "relu", "silu", "tanh", "softplus"):
            v = torch.randn(B, d, generator=gen).to(dev, dtype).requires_grad_()
            shapes = [(d + 2, d), (d + 2, d + 2), (1, d + 2)]  # odd hidden widths too
            ws = [(torch.randn(*s, generator=gen) / s[1] ** 0.5).to(dev, dtype).requires_grad_() for s in shapes]
            bs = [torch.randn(s[0], generator=gen).to(dev, dtype).requires_grad_() for s in shapes]
            out = critic_grad(v, ws, bs, act)
            (out * torch.randn(out.shape, generator=gen).to(dev, dtype)).sum().backward()
    return "critic_grad"


def run_mech_derivs(mech_derivs, dev, B, d, gen):
    dz = 5
    for dtype in (torch.float32, torch.float64):
        for act in ("tanh", "smooth_leaky", "gelu"):
            z = torch.randn(B, dz, generator=gen).to(dev, dtype)
            shapes = [(d, dz), (d, d), (d, d)]
            ws = [(torch.randn(*s, generator=gen) / s[1] ** 0.5).to(dev, dtype) for s in shapes]
            bs = [torch.randn(s[0], generator=gen).to(dev, dtype) for s in shapes]
            scale = (1.0 + 0.1 * torch.rand(B, dz, generator=gen)).to(dev, dtype)
            shift = torch.randn(B, dz, generator=gen).to(dev, dtype)
            mech_derivs(z, ws, bs, film_scale=scale, film_shift=shift, activation=act)
    return "mech_derivs"


def run_comp_contrast(comp_contrast, dev, B, d, gen):
    dz = 7
    for dtype in (torch.float32, torch.float64):
        for act in ("tanh", "leaky_relu", "gelu"):
            wide = torch.randn(B, 2 * dz + 1, generator=gen).to(dev, dtype)
            z = wide[:, 1:2 * dz + 1:2].detach().requires_grad_()    # dz columns, row stride 2dz + 1
            shapes = [(d, dz), (d + 2, d), (d, d + 2)]                  # odd widths, odd block tails (BLOCK 64)
            ws = [(torch.randn(*s, generator=gen) / s[1] ** 0.5).to(dev, dtype).requires_grad_() for s in shapes]
            bs = [torch.randn(s[0], generator=gen).to(dev, dtype).requires_grad_() for s in shapes]
            ib = (0.1 * torch.randn(B, d, generator=gen)).to(dev, dtype).requires_grad_()
            final = act == "tanh"  # the contrast then reads the activated output (the other workspace slice)
            with torch.no_grad():
                comp_contrast(z, ws, bs, act, in_bias=ib, final_activation=final)          # mclcore::comp_contrast
            C = comp_contrast(z, ws, bs, act, in_bias=ib, final_activation=final, normalize="jacobian")
            (C * torch.randn(B, generator=gen).to(dev, dtype)).sum().backward()        # comp_contrast_backward
    return "comp_contrast"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--B", type=int, default=257)
    ap.add_argument("--d", type=int, default=67)
    ap.add_argument("--backends", nargs="+", default=["triton", "cuda"], choices=["triton", "cuda"])
    args = ap.parse_args(argv)
    import mclcore.ops  # noqa: F401  (registers the ops)
    from mclcore.ops import _backend, use_backend
    from mclcore.ops.comp_contrast import comp_contrast
    from mclcore.ops.critic_grad import critic_grad
    from mclcore.ops.infonce import infonce
    from mclcore.ops.mech_derivs import mech_derivs

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("sanitize_driver: --device cuda, but torch sees no CUDA device")
    ops = {"infonce": (run_infonce, infonce, ("infonce", "infonce_with_grad", "infonce_backward")),
           "critic_grad": (run_critic_grad, critic_grad, ("critic_grad", "critic_grad_backward")),
           "mech_derivs": (run_mech_derivs, mech_derivs, ("mech_derivs",)),
           "comp_contrast": (run_comp_contrast, comp_contrast, ("comp_contrast", "comp_contrast_backward"))}
    ran, skipped = [], []
    for backend in (args.backends if dev == "cuda" else ["cpu"]):
        ctx = use_backend(backend) if dev == "cuda" else contextlib.nullcontext()
        with ctx:
            for name, (run, fn, names) in ops.items():
                ok, why = _backend.available(names, dev)
                if not ok:
                    skipped.append(f"{backend}/{name}: {why}")
                    continue
                gen = torch.Generator().manual_seed(0)
                run(fn, dev, args.B, args.d, gen)
                if dev == "cuda":
                    torch.cuda.synchronize()
                ran.append(f"{backend}/{name}")
    print(f"sanitize_driver: B={args.B} d={args.d} on {dev}: ran {', '.join(ran) or 'nothing'}")
    for s in skipped:
        print(f"sanitize_driver: skipped {s}")
    if not ran:
        raise SystemExit("sanitize_driver: no op ran")


if __name__ == "__main__":
    main()
PYEOF
  cat > "$1/profile_driver.py" <<'PYEOF'
"""Per-kernel split of the device time of the mclcore workloads (torch.profiler), one table per workload.

Workloads: infonce forward + backward (bfloat16, d = 128, B = 4096 and 65536, diagonal), critic_grad forward +
second-order backward (float32, critic 90 -> 256 -> 256 -> 1, B = 4096), mech_derivs (float32, dz = 10, generator
10 -> 64 -> 64 -> 64, B = 256), the MCL step (benchmarks/bench_mcl_step.py's model, B = 256, forward + backward).
Each: 2 warm-up iterations, then --iters profiled ones. Rows (workload, kernel, calls and ms per iteration, share of
the workload's device time) go to benchmarks/results/gpu_profile.csv (benchmarks.common.append_rows) and the tables
to <out-dir>/profile.txt. --device cpu profiles CPU operators instead (a smoke check without a GPU; --quick: small
sizes, one iteration). Written by benchmarks/gpu_suite.sh.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.getcwd())  # the suite runs from the repository root


def workloads(dev, quick):
    from benchmarks.bench_mcl_step import build, step_op
    from mclcore.ops.critic_grad import critic_grad
    from mclcore.ops.infonce import infonce
    from mclcore.ops.mech_derivs import mech_derivs

    gen = torch.Generator().manual_seed(0)
    half = torch.bfloat16 if dev == "cuda" else torch.float32
    out = {}
    for B in ((256,) if quick else (4096, 65536)):
        p = torch.randn(B, 128, generator=gen).to(dev, half).requires_grad_()
        k = torch.randn(B, 128, generator=gen).to(dev, half).requires_grad_()
        out[f"infonce_{str(half)[6:]}_B{B}"] = lambda p=p, k=k: infonce(p, k, 0.1).backward()
    B = 256 if quick else 4096
    dims = [90, 256, 256, 1]
    v = torch.randn(B, dims[0], generator=gen).to(dev).requires_grad_()
    ws = [(torch.randn(o, i, generator=gen) / i ** 0.5).to(dev).requires_grad_() for i, o in zip(dims, dims[1:])]
    bs = [torch.zeros(o).to(dev).requires_grad_() for o in dims[1:]]
    up = torch.randn(B, dims[0], generator=gen).to(dev)
    out[f"critic_grad_B{B}"] = lambda: (critic_grad(v, ws, bs, "gelu") * up).sum().backward()
    z = torch.randn(256, 10, generator=gen).to(dev)
    mw = [(torch.randn(o, i, generator=gen) / i ** 0.5).to(dev) for i, o in ((10, 64), (64, 64), (64, 64))]
    mb = [torch.zeros(64).to(dev) for _ in mw]
    out["mech_derivs_dz10_B256"] = lambda: mech_derivs(z, mw, mb, activation="smooth_leaky")
    G, mcl, zz, u, params = build(256, 10, 64, 16, dev, torch.float32)
    out["mcl_step_B256"] = lambda: step_op(G, mcl, zz, u, params)
    return out


def _time(e, cuda, attr):
    for name in ((f"{attr}device_time_total", f"{attr}cuda_time_total") if cuda else (f"{attr}cpu_time_total",)):
        if hasattr(e, name):
            return float(getattr(e, name))
    return 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--top", type=int, default=12, help="kernels listed per workload (the rest summed)")
    ap.add_argument("--out-dir", default=None, help="also write the tables to <out-dir>/profile.txt")
    ap.add_argument("--quick", action="store_true", help="small sizes, one iteration")
    ap.add_argument("--no-csv", action="store_true", help="do not append to benchmarks/results/gpu_profile.csv")
    args = ap.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.common import append_rows

    dev = args.device
    cuda = dev == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("profile_driver: --device cuda, but torch sees no CUDA device")
    iters = 1 if args.quick else args.iters
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    rows, text = [], []
    for name, fn in workloads(dev, args.quick).items():
        for _ in range(2):
            fn()
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=acts) as prof:
            for _ in range(iters):
                fn()
            if cuda:
                torch.cuda.synchronize()
        events = prof.key_averages()
        if cuda:
            events = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
                      and _time(e, True, "self_") > 0]
        else:
            events = [e for e in events if _time(e, False, "self_") > 0]
        events.sort(key=lambda e: -_time(e, cuda, "self_"))
        total = sum(_time(e, cuda, "self_") for e in events) or 1.0
        text.append(f"== {name}: {total / iters / 1e3:.3f} ms {'device' if cuda else 'CPU (self)'} time per "
                    f"iteration, {len(events)} kernels")
        shown = events[:args.top]
        rest = events[args.top:]
        for e in shown:
            t = _time(e, cuda, "self_")
            r = dict(workload=name, kernel=e.key[:120], calls_per_iter=e.count / iters, ms_per_iter=t / iters / 1e3,
                     share=t / total)
            rows.append(r)
            text.append(f"  {100 * r['share']:5.1f}%  {r['ms_per_iter']:9.4f} ms  x{r['calls_per_iter']:g}  "
                        f"{r['kernel'][:100]}")
        if rest:
            t = sum(_time(e, cuda, "self_") for e in rest)
            rows.append(dict(workload=name, kernel=f"({len(rest)} others)", calls_per_iter=sum(e.count for e in rest)
                             / iters, ms_per_iter=t / iters / 1e3, share=t / total))
            text.append(f"  {100 * t / total:5.1f}%  {t / iters / 1e3:9.4f} ms  ({len(rest)} others)")
    print("\n".join(text))
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(os.path.join(args.out_dir, "profile.txt"), "w") as f:
            f.write("\n".join(text) + "\n")
    if not args.no_csv:
        print("appended to", append_rows("gpu_profile", rows, device=dev))


if __name__ == "__main__":
    main()
PYEOF
}

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    --only) ONLY="${2:?--only needs step names}"; shift ;;
    --write-drivers) write_drivers "${2:?--write-drivers needs a folder}"; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

find_sanitizer() {
  local c
  for c in "${COMPUTE_SANITIZER:-}" "$(command -v compute-sanitizer 2>/dev/null)" \
           ${CUDA_HOME:+"$CUDA_HOME/bin/compute-sanitizer"} /usr/local/cuda/bin/compute-sanitizer \
           $(ls -d /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | sort -V -r); do
    if [[ -n "$c" && -x "$c" ]]; then echo "$c"; return 0; fi
  done
  echo "compute-sanitizer"   # not found: the step fails with "command not found" and the suite goes on
}

SAN="$(printf %q "$(find_sanitizer)")"
DRV="$OUT/drivers"
QOUT="$(printf %q "$OUT")"
QDRV="$(printf %q "$DRV")"
ODD="--device cuda --B 257 --d 67"
JOBS="$(nproc --all 2>/dev/null || echo 8)"   # --all: not capped by OMP_NUM_THREADS
TWINS="from mclcore.ops import _backend as b; ok = b.cuda_available('infonce') and b.cuda_available('mech_derivs')"

NAMES=(); TIMEOUTS=(); CMDS=()
add() { NAMES+=("$1"); TIMEOUTS+=("$2"); CMDS+=("$3"); }

add env 15 "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv && \
$PY -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, \
torch.cuda.get_device_name(0))' && { $PY -c 'import inf_cl' 2>/dev/null \
&& echo 'inf_cl: importable (bench_infonce times its peer column)' \
|| echo 'inf_cl: not installed (bench_infonce reports no peer)'; }"
if [[ $SKIP_BUILD == 1 ]]; then
  add build 100 "echo 'skipped (--skip-build)'; $PY -c \"$TWINS; print('CUDA C++ twins registered:', ok)\""
else
  add build 100 "TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$JOBS $PY -m pip install --no-build-isolation --no-deps \
--no-index -e . && $PY -c \"$TWINS; print('CUDA C++ twins registered:', ok); raise SystemExit(0 if ok else 1)\""
fi
add pytest_gpu 70 "$PY -m pytest -q -p no:cacheprovider -m gpu tests"
add pytest_cuda_twins 20 "$PY -m pytest -q -p no:cacheprovider tests/ops/test_cuda_compile.py \
-k 'matches_cpu or rejects_nonfinite'"
add odd_sizes 25 "$PY $QDRV/sanitize_driver.py $ODD"
add memcheck 40 "PYTORCH_NO_CUDA_MEMORY_CACHING=1 $SAN --tool memcheck --error-exitcode 1 --print-limit 20 \
$PY $QDRV/sanitize_driver.py $ODD"
add racecheck 40 "$SAN --tool racecheck --error-exitcode 1 --print-limit 20 $PY $QDRV/sanitize_driver.py $ODD"
add bench_infonce 65 "$PY benchmarks/bench_infonce.py --device cuda --dtype bfloat16 --batch 256 4096 65536 --rounds 3"
# The timeouts add up to the 540 s budget. bench_comp_contrast's 20 s (estimated, no GPU yet: ~8 s of start-up and
# CUDA context, a dozen small Triton kernels to compile at ~0.2 s each, then ~300 launch-bound calls of a few ms)
# came out of the estimates with the most room by the same reckoning: bench_mech_derivs 40 -> 30 s (the op 5 reps,
# the reference 3, at three dz), bench_critic_grad 30 -> 25 s and profile 30 -> 25 s (kernels already compiled by
# the steps before). The first GPU run's summary (wall time per step) is what to reset them from.
add bench_critic_grad 25 "$PY benchmarks/bench_critic_grad.py --device cuda --rounds 3"
add bench_mech_derivs 30 "$PY benchmarks/bench_mech_derivs.py --device cuda --backend triton --reps 5"
add bench_mcl_step 30 "$PY benchmarks/bench_mcl_step.py --device cuda --rounds 3"
add bench_mcl_diagnostics 25 "$PY benchmarks/bench_mcl_diagnostics.py --device cuda --rounds 3"
add bench_comp_contrast 20 "$PY benchmarks/bench_comp_contrast.py --device cuda --batch 256 4096 --rounds 3 --reps 10"
add profile 25 "$PY $QDRV/profile_driver.py --device cuda --out-dir $QOUT"
# last: the least to lose if the budget runs out. More than one GPU visible (CUDA_VISIBLE_DEVICES, else nvidia-smi):
# torchrun over all of them (NCCL, each rank on cuda:LOCAL_RANK); one GPU: one process, which says so
GATHER="benchmarks/bench_mcl_gather.py --device cuda --batch 4096 --rounds 3 --reps 10"
add bench_mcl_gather 10 "n=\$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); \
if [[ -n \"\${CUDA_VISIBLE_DEVICES:-}\" ]]; then n=\$(echo \"\$CUDA_VISIBLE_DEVICES\" | tr , ' ' | wc -w); fi; \
if (( n > 1 )); then echo \"\$n GPUs visible: torchrun --nproc-per-node \$n\"; \
$PY -m torch.distributed.run --standalone --nproc-per-node \$n $GATHER ; \
else echo \"\$n GPU visible: one process, the one-process route alone (no scaling to measure)\"; $PY $GATHER ; fi"

selected() {  # whether step $1 runs under --only
  [[ -z "$ONLY" ]] && return 0
  [[ ",$ONLY," == *",$1,"* ]]
}

if [[ -n "$ONLY" ]]; then
  for n in ${ONLY//,/ }; do
    [[ " ${NAMES[*]} " == *" $n "* ]] || { echo "gpu_suite.sh: --only: no step named $n (steps: ${NAMES[*]})" >&2; exit 2; }
  done
fi

if [[ $DRY == 1 ]]; then
  total=0
  echo "gpu_suite.sh --dry-run: ${#NAMES[@]} steps, logs under $OUT/ (drivers written to $DRV/ at the start of a run)"
  for i in "${!NAMES[@]}"; do
    selected "${NAMES[$i]}" || continue
    total=$((total + TIMEOUTS[i]))
    printf '[%02d] %s (timeout %d s): %s\n' "$((i + 1))" "${NAMES[$i]}" "${TIMEOUTS[$i]}" "${CMDS[$i]}"
  done
  echo "sum of timeouts: $total s (budget $BUDGET s)"
  exit 0
fi

mkdir -p "$OUT/logs"
write_drivers "$DRV"
LOG="$OUT/suite.log"
: > "$LOG"
export PYTHONUNBUFFERED=1
START=$(date +%s)
SHA="$(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')"
git diff --quiet HEAD -- 2>/dev/null; [[ $? == 1 ]] && SHA="$SHA (modified)"
echo "gpu_suite.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ) at $SHA, budget $BUDGET s" | tee -a "$LOG"

STATUS=(); WALL=()
FAILED=()
for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}"
  if ! selected "$name"; then STATUS[i]="-"; WALL[i]=0; continue; fi
  now=$(date +%s)
  left=$((START + BUDGET - now))
  t=${TIMEOUTS[$i]}
  (( t > left - 5 )) && t=$((left - 5))
  if (( t < 5 )); then
    STATUS[i]="SKIPPED (budget spent)"; WALL[i]=0; FAILED+=("$name: not run, the ${BUDGET} s budget was spent")
    echo "== [$name] not run: budget spent" | tee -a "$LOG"
    continue
  fi
  steplog="$OUT/logs/$name.log"
  echo "== [$name] (timeout $t s) ${CMDS[$i]}" | tee -a "$LOG"
  t0=$(date +%s)
  timeout -k 5 "$t" bash -c "${CMDS[$i]}" > "$steplog" 2>&1
  rc=$?
  WALL[i]=$(( $(date +%s) - t0 ))
  tail -n 40 "$steplog" | sed 's/^/   /' | tee -a "$LOG"
  if (( rc == 0 )); then
    STATUS[i]="ok"
  elif (( rc == 124 || rc == 137 )); then
    STATUS[i]="TIMEOUT"; FAILED+=("$name: timed out after $t s (log: $steplog)")
  else
    STATUS[i]="FAIL (exit $rc)"; FAILED+=("$name: exit $rc (log: $steplog)")
  fi
  echo "== [$name] ${STATUS[$i]} in ${WALL[$i]} s" | tee -a "$LOG"
done

if [[ "$(cd "$OUT" && pwd)" != "$ROOT/benchmarks/results"* ]]; then   # a copy of the CSVs where the logs go
  mkdir -p "$OUT/results" && cp benchmarks/results/*.csv "$OUT/results/" 2>/dev/null
fi
{
  echo
  echo "summary ($(( $(date +%s) - START )) s of $BUDGET):"
  for i in "${!NAMES[@]}"; do
    printf '  %-22s %-24s %4s s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${WALL[$i]}"
  done
  if (( ${#FAILED[@]} )); then
    echo "${#FAILED[@]} step(s) failed:"
    printf '  %s\n' "${FAILED[@]}"
  else
    echo "every step passed"
  fi
} | tee -a "$LOG" | tee "$OUT/summary.txt"
(( ${#FAILED[@]} == 0 ))
