"""infonce op (tiled, csrc/infonce) vs the pure-autograd reference (python/infonce.py, full B x B logits).

float32, d = 128, tau = 0.1: medians at B = 256, 1024, 4096 in both modes (diagonal positives; multi-positive with
8 conditions), the better of two alternating rounds each, for four phases, all through the public functions:

    forward            under torch.no_grad (inference: the op's plain forward, mclcore::infonce)
    forward(train)     p, k requiring grad, grad mode on, no backward: the reference builds its graph; the op runs
                       mclcore::infonce_with_grad, which computes the gradients already
    backward           torch.autograd.grad on a retained graph (the op only scales its saved gradients)
    forward+backward   a training step, forward(train) then backward: the row the team target is about

then the op alone at B = 16384 with its time and peak extra memory. The reference runs there too when the machine
has the memory for its B x B tensors (about 5 GiB), else its row says skipped. Rows go to benchmarks/results/infonce.csv.

    python benchmarks/bench_infonce.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_infonce.py --quick    # smoke check: tiny sizes, few reps, nothing appended
    python benchmarks/bench_infonce.py --threads 1 --large 0   # one core: steadier on a shared machine

Team targets (2-core CPU, same run): forward+backward at B = 256 >= 2x faster than the reference; B = 16384 peak
extra memory <= 64 MiB. Both are checked and printed at the end.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import append_rows, median_time, peak_extra_bytes, print_table  # noqa: E402
from mclcore.ops.infonce import infonce  # noqa: E402
from python.infonce import infonce as ref_infonce  # noqa: E402

TAU = 0.1
N_CONDITIONS = 8  # multi-positive rows: |U| = 8 conditions, as in DESIGN 2.1's duplicate-condition example


def mem_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fresh_peak_bytes(fn) -> int:
    """peak_extra_bytes after handing freed heap pages back to the OS (glibc malloc_trim), so that memory an
    earlier run freed but kept resident cannot hide this run's allocations from the RSS high-water mark."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return peak_extra_bytes(fn)


def make(B, d, mode, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(B, d, generator=gen).requires_grad_()
    k = torch.randn(B, d, generator=gen).requires_grad_()
    groups = torch.randint(0, N_CONDITIONS, (B,), generator=gen) if mode == "multi" else None
    return p, k, groups


def phases(fn, p, k, groups):
    """Callables timing the phases of the module docstring; p and k require grad (the path training hits)."""

    def fwd():
        with torch.no_grad():
            fn(p, k, TAU, groups=groups)

    def fwd_train():
        fn(p, k, TAU, groups=groups)

    graph = []  # built on the first backward call only (the reference's graph holds B x B tensors)

    def bwd():
        if not graph:
            graph.append(fn(p, k, TAU, groups=groups))
        torch.autograd.grad(graph[0], (p, k), retain_graph=True)

    def full():
        torch.autograd.grad(fn(p, k, TAU, groups=groups), (p, k))

    return {"forward": fwd, "forward(train)": fwd_train, "backward": bwd, "forward+backward": full}


def row(B, d, mode, phase, t_op, t_ref, m_op=None, m_ref=None, reps=None, note=""):
    r = dict(op="infonce", B=B, d=d, dtype="float32", mode=mode, phase=phase, threads=torch.get_num_threads(),
             reps=reps, op_ms=t_op * 1e3, ref_ms="skipped" if t_ref is None else t_ref * 1e3,
             speedup="" if t_ref is None else t_ref / t_op,
             op_peak_mib="" if m_op is None else m_op / 2**20,
             ref_peak_mib="" if m_ref is None else ("skipped" if m_ref == "skipped" else m_ref / 2**20), note=note)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--large", type=int, default=16384, help="batch size of the large (memory) run; 0 skips it")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--reps", type=int, default=30, help="repetitions at B = 256 (fewer for larger B)")
    ap.add_argument("--no-large-ref", action="store_true", help="never run the reference at the large size")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few reps, no CSV")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.large, args.reps = [64, 300], 1024, 3
    d = args.d
    rows = []
    for B in args.batch:
        reps = max(3, args.reps * 256 // B)  # ~30 at 256, 7 at 1024, 3 at 4096
        for mode in ("diagonal", "multi"):
            p, k, groups = make(B, d, mode)
            op_ph, ref_ph = phases(infonce, p, k, groups), phases(ref_infonce, p, k, groups)
            for phase in op_ph:
                # Two alternating rounds, best median of each: a burst of load from other processes on a shared
                # machine then hits both sides alike or neither.
                t_op, t_ref = float("inf"), float("inf")
                for _ in range(2):
                    t_op = min(t_op, median_time(op_ph[phase], reps=reps, warmup=2))
                    t_ref = min(t_ref, median_time(ref_ph[phase], reps=reps, warmup=2))
                mem = {}
                if phase == "forward+backward":
                    mem = dict(m_op=fresh_peak_bytes(op_ph[phase]), m_ref=fresh_peak_bytes(ref_ph[phase]))
                rows.append(row(B, d, mode, phase, t_op, t_ref, reps=reps, **mem))
            del op_ph, ref_ph

    if args.large:
        B = args.large
        p, k, _ = make(B, d, "diagonal")
        op_ph = phases(infonce, p, k, None)
        m_op = fresh_peak_bytes(op_ph["forward+backward"])
        t_op = median_time(op_ph["forward+backward"], reps=3, warmup=1)
        # Reference: the B x B logits and about four more B x B float32 tensors alive around the backward.
        need = 5 * B * B * 4
        if args.no_large_ref or mem_available_bytes() < 2 * need:
            note = f"reference skipped: needs ~{need / 2**30:.1f} GiB, MemAvailable {mem_available_bytes() / 2**30:.1f}"
            rows.append(row(B, d, "diagonal", "forward+backward", t_op, None, m_op, "skipped", reps=3, note=note))
        else:
            ref_ph = phases(ref_infonce, p, k, None)
            m_ref = fresh_peak_bytes(ref_ph["forward+backward"])
            t_ref = median_time(ref_ph["forward+backward"], reps=1, warmup=0)
            rows.append(row(B, d, "diagonal", "forward+backward", t_op, t_ref, m_op, m_ref, reps=3,
                            note="reference: 1 rep"))
            del ref_ph
        del op_ph

    print_table(rows, ["B", "mode", "phase", "op_ms", "ref_ms", "speedup", "op_peak_mib", "ref_peak_mib"])
    if args.quick:
        return rows
    print("appended to", append_rows("infonce", rows))
    # Targets (see the module docstring).
    fb256 = [r for r in rows if r["B"] == 256 and r["mode"] == "diagonal" and r["phase"] == "forward+backward"]
    large = [r for r in rows if r["B"] == args.large]
    if fb256:
        s = fb256[0]["speedup"]
        print(f"target fwd+bwd B=256 >= 2x reference: {s:.2f}x {'met' if s >= 2 else 'NOT met'}")
    if large:
        m = large[0]["op_peak_mib"]
        print(f"target B={args.large} peak extra <= 64 MiB: {m:.1f} MiB {'met' if m <= 64 else 'NOT met'}")
    return rows


if __name__ == "__main__":
    main()
