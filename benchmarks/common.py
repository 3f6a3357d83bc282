"""Shared benchmark plumbing: medians of repeated runs, peak extra memory, CSV records, a printed table.

Every benchmark appends rows to ``benchmarks/results/<name>.csv`` with the device, torch version and git sha, so
results from different machines and commits accumulate side by side.
"""
from __future__ import annotations

import csv
import ctypes
import datetime as _dt
import functools
import gc
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The CPU allocator policy of this process ("steady" once steady_malloc() took effect), recorded in every CSV row.
MALLOC = "glibc"


@functools.lru_cache(maxsize=None)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to set or trim
        return None


def steady_malloc() -> bool:
    """Make glibc keep freed CPU memory in the process, so both sides of a comparison reuse their memory.

    By default glibc gives freed memory at the top of a heap back to the OS once more than M_TRIM_THRESHOLD is free,
    and serves blocks above a *dynamic* mmap threshold with fresh mappings; either way the next use of that memory
    pays a page fault per 4 KiB. Which calls pay depends on the process's history (the threshold moves with every
    freed mapped block), and it hits the pure-autograd references, which allocate many more temporaries, far more
    than the ops. Measured on the 2-core dev VM (B = 256, paired rounds, five fresh processes per policy): with
    glibc's defaults the critic_grad reference took 3.75-4.12 ms and the speedup (reference / op) read 1.47-1.60x,
    the MCL step's 1.29-1.38x; with this policy 3.11-3.16 ms, 1.23-1.25x and 1.15-1.17x. The ops' own times did not
    move beyond the noise, and infonce's speedup (1.62-1.68x) not at all. Fixing one threshold alone did not help
    (the trim threshold alone made the critic_grad reference 6.6-6.7 ms in two runs). Here: M_MMAP_THRESHOLD = 32
    MiB (glibc's ceiling for its dynamic threshold on 64-bit) and M_TRIM_THRESHOLD = 1 GiB: memory is reused, as in
    a long training loop in a process with a caching allocator, and the ratios are the lower, reproducible ones.
    ``--malloc glibc`` keeps the defaults. Returns whether it took effect.
    """
    global MALLOC
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    if libc.mallopt(m_mmap_threshold, 32 << 20) != 1 or libc.mallopt(m_trim_threshold, 1 << 30) != 1:
        return False
    MALLOC = "steady"
    return True


def add_paired_args(ap, *, reps_help: str = "timed runs per round",
                    quick_help: str = "tiny run for a smoke check (no CSV row)") -> None:
    """``--reps``, ``--rounds`` (paired_times) and ``--quick``, as every paired CPU/GPU benchmark takes them."""
    ap.add_argument("--reps", type=int, default=30, help=reps_help)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds, op and reference (or every route) "
                                                          "in turn; each keeps its best round median")
    ap.add_argument("--quick", action="store_true", help=quick_help)


def add_malloc_arg(ap) -> None:
    ap.add_argument("--malloc", default="steady", choices=["steady", "glibc"],
                    help="CPU allocator policy (benchmarks.common.steady_malloc): steady (default) keeps freed "
                         "memory in the process, glibc leaves glibc's defaults (reference times then swing by up "
                         "to 30%% between runs)")


def apply_malloc_arg(args) -> None:
    if args.malloc == "steady" and not steady_malloc():
        print("note: --malloc steady needs glibc's mallopt; running with the allocator's defaults", file=sys.stderr)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, *, device="cpu", warmup: int = 3, reps: int = 20, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds over ``reps`` runs (at least ``min_time`` seconds in total)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_times(fns, *, device="cpu", rounds: int = 5, reps: int = 30, warmup: int = 3) -> list[float | None]:
    """Best-of-``rounds`` medians of several callables, timed in alternating rounds (A, B, A, B, ...).

    On a shared machine (the 2-core dev VM showed +-20% swings within a minute) a burst of outside load lands on
    whichever side runs at that moment; alternating short rounds exposes both sides to the same conditions, and
    the minimum over rounds of each side's median drops the rounds a burst hit. Ratios of the returned times are
    the ones benchmarks report. A ``None`` in ``fns`` (a side not run), or a side that runs out of GPU memory (a
    reference's B x B tensors), comes back as ``None`` and is not timed again.
    """
    best: list[float | None] = [None if fn is None else float("inf") for fn in fns]

    def timed(i, **kw):
        try:
            return median_time(fns[i], device=device, **kw)
        except torch.cuda.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            best[i] = None
            return None

    for i in range(len(fns)):
        if best[i] is not None:
            timed(i, warmup=warmup, reps=1)
    for _ in range(rounds):
        for i in range(len(fns)):
            if best[i] is not None:
                t = timed(i, warmup=0, reps=reps)
                if t is not None:
                    best[i] = min(best[i], t)
    return best


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(fn, *, device="cpu") -> int:
    """Peak memory above the level before ``fn()`` ran.

    CUDA: the caching allocator's peak. CPU: the process's resident-set high-water mark, reset through
    /proc/self/clear_refs just before the call (Linux), minus the resident set at that moment. Freed heap pages are
    handed back to the OS first (glibc malloc_trim), so that memory an earlier run freed but kept resident (always
    so under steady_malloc) cannot hide this run's allocations from the high-water mark.
    """
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    fn()
    return max(0, _rss_kib("VmHWM") - base) * 1024


def add_device_args(ap) -> None:
    """``--device cpu|cuda`` and ``--backend triton|cuda`` (the GPU implementation of the mclcore ops)."""
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where to run (default cpu; cuda times with torch.cuda.synchronize and measures peak memory "
                         "with torch.cuda.max_memory_allocated)")
    ap.add_argument("--backend", default=None, choices=["triton", "cuda"],
                    help="GPU backend of the mclcore ops for --device cuda (as MCLCORE_BACKEND; default: triton if "
                         "it imports, else the CUDA C++ kernels). CPU tensors always run the C++ CPU kernels")
    add_malloc_arg(ap)


def setup_device(args) -> str:
    """Check ``--device`` / ``--backend`` and select the backend; returns the label of what runs the ops
    ("cpu", or the GPU backend's name) for the CSV rows. Applies ``--malloc`` (host memory, either device)."""
    apply_malloc_arg(args)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
        import mclcore.ops  # noqa: F401  (registers the ops)
        from mclcore.ops import _backend, use_backend

        if args.backend:
            use_backend(args.backend)
        return _backend.selected()
    if args.backend:
        print(f"note: --backend {args.backend} only applies to CUDA tensors; --device cpu runs the C++ CPU kernels",
              file=sys.stderr)
    return "cpu"


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def git_sha() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def append_rows(name: str, rows: list[dict], *, device="cpu") -> str:
    """Append ``rows`` to benchmarks/results/<name>.csv (header written once; columns = union, in order)."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.csv")
    meta = {"timestamp": _dt.datetime.now().isoformat(timespec="seconds"), "device": device_name(device),
            "torch": torch.__version__, "git_sha": git_sha(), "malloc": MALLOC}
    rows = [{**meta, **r} for r in rows]
    fields = list(meta)
    for r in rows:
        fields += [k for k in r if k not in fields]
    existing = None
    if os.path.exists(path):
        with open(path) as f:
            existing = next(csv.reader(f), None)
    if existing and existing != fields:
        fields = existing + [k for k in fields if k not in existing]
        with open(path) as f:
            old = list(csv.DictReader(f))
        rows = old + rows
        mode = "w"
    else:
        mode = "a" if existing else "w"
    tmp = path + ".tmp"
    if mode == "w":
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)  # atomic
    else:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerows(rows)
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
