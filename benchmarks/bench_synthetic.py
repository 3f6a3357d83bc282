"""Training throughput of the synthetic study (mclcore.studies.synthetic.train): model-steps per second, seeds batched
(one stack of M members) vs one by one (M stacks of one member).

    python benchmarks/bench_synthetic.py                       # CPU, 1 thread, dz 5 and 20, M = 10
    python benchmarks/bench_synthetic.py --members 30 --device cuda
    python benchmarks/bench_synthetic.py --models mdvae_mcl --dzs 5 --mcl-loop   # stacked MCL vs per-member loop

Times the real trainer: ``train()`` runs one epoch of ``--steps`` steps and its ``on_step`` callback stamps each
optimiser step; the median interval (after ``--warmup`` steps) is the step time, so data generation and the MCC
evaluation are excluded. A model-step is one member's optimiser step (batch 256). Rows are appended to
``benchmarks/results/synthetic.csv``.

``--mcl-loop`` (mdvae_mcl) adds the mode ``batched_mcl_loop``: the same stack of members with the MCL term run by a
loop over per-member MCL modules (``members.STACK_MCL = False``: the path before the member-stacked ops)
instead of one StackedMCL call; its ``speedup`` column is then stacked over loop, measured in the same run.
``speedup_over_one_by_one`` is always over the one-by-one row of the same run (wall time), and the ``cpu_`` columns
are the same from this process's CPU time (``time.process_time``, 1 thread), which the load of other processes on a
shared VM inflates much less than wall time.

``--gemm-floor`` (no CSV rows) counts the matrix-product FLOPs of one optimiser step of each stack (torch.profiler's
recorded shapes of every mm / addmm / addmm_ / bmm / baddbmm, the native ops' products included), times a
256 x 256 x 256 float32 product on the same threads as the reachable rate, and prints the time the products alone
need: the floor of the step whatever the overheads (benchmarks/README.md, "Synthetic study: seeds stacked").
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import add_malloc_arg, append_rows, apply_malloc_arg, print_table  # noqa: E402
from mclcore.studies.synthetic import members as members_module  # noqa: E402
from mclcore.studies.synthetic.train import TrainConfig, train  # noqa: E402


def step_time(cfg: TrainConfig, seeds, warmup: int, device: str) -> tuple[float, float]:
    """Median seconds per optimiser step of ``train(cfg, seeds)`` (all members of the stack together): wall time,
    and this process's CPU time (``time.process_time``), which other processes' load on a shared machine inflates
    far less: six runs of ``--models mdvae_mcl --dzs 5 --mcl-loop`` at 1-min load averages 3.3-5.0 on the 2-core
    dev VM (2026-12-06) read 1.05-2.05x stacked over one by one in wall time and 1.50-1.68x in CPU time."""
    stamps = []
    train(cfg, seeds, on_step=lambda n: stamps.append((time.perf_counter(), time.process_time())), device=device)
    s = stamps[warmup:]
    return tuple(statistics.median(b[i] - a[i] for a, b in zip(s, s[1:])) for i in (0, 1))


_GEMMS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")


def gemm_flops(cfg: TrainConfig, seeds, device: str, at_step: int = 5, steps: int = 3) -> float:
    """Matrix-product FLOPs of one optimiser step of ``train(cfg, seeds)`` (mean over ``steps`` steps from
    ``at_step``): 2 m n k per product, from the shapes torch.profiler records (its own FLOP counter skips addmm_)."""
    from torch.profiler import ProfilerActivity, profile

    state = {"n": 0, "prof": None}

    def on_step(n):
        state["n"] += 1
        if state["n"] == at_step:
            state["prof"] = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
            state["prof"].__enter__()
        elif state["n"] == at_step + steps:
            state["prof"].__exit__(None, None, None)

    train(cfg, seeds, on_step=on_step, device=device)
    total = 0
    for e in state["prof"].events():
        if e.name not in _GEMMS:
            continue
        shapes = e.input_shapes
        a, b = (shapes[1], shapes[2]) if e.name in ("aten::addmm", "aten::addmm_", "aten::baddbmm") else shapes[:2]
        total += 2 * (a[0] if len(a) == 3 else 1) * a[-2] * a[-1] * b[-1]
    return total / steps


def gemm_rate(n: int = 256, reps: int = 200) -> float:
    """FLOP/s of an n x n x n float32 torch.mm on the current threads (the best of 5 rounds)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n ** 3 / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["betavae", "ivae", "mdvae", "mdvae_mcl"])
    p.add_argument("--dzs", nargs="+", type=int, default=[5, 20])
    p.add_argument("--members", type=int, default=10, help="seeds per stack (M)")
    p.add_argument("--steps", type=int, default=30, help="optimiser steps timed per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mcl-loop", action="store_true",
                   help="mdvae_mcl: also time the per-member MCL loop on the same stack (stacked vs loop)")
    p.add_argument("--no-one-by-one", action="store_true", help="skip the one-by-one runs (M stacks of one)")
    p.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/synthetic.csv")
    p.add_argument("--gemm-floor", action="store_true",
                   help="print the matrix-product FLOPs per step and the time they need at the measured rate, "
                        "for the batched stack and one member (no timing rows)")
    # glibc by default: the trainer runs with the allocator's defaults (steady: benchmarks.common.steady_malloc)
    add_malloc_arg(p)
    p.set_defaults(malloc="glibc")
    args = p.parse_args(argv)
    apply_malloc_arg(args)
    if args.steps <= args.warmup + 1:
        p.error(f"--steps: expected more than --warmup + 1 = {args.warmup + 1}, got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gemm_floor:
        rate = gemm_rate()
        print(f"float32 256x256x256 torch.mm: {rate / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} thread(s)")
        for dz in args.dzs:
            for model in args.models:
                cfg = TrainConfig(model=model, dz=dz, epochs=1, n=int(args.steps * 256 / 0.8), checkpoint_every=0)
                stacked = gemm_flops(cfg, list(range(args.members)), args.device)
                one = gemm_flops(cfg, [0], args.device)
                print(f"{model} dz={dz}: products per step {stacked / 1e6:.0f} MFLOP batched (M = {args.members}), "
                      f"{one / 1e6:.1f} MFLOP one member; at {rate / 1e9:.1f} GFLOP/s they need "
                      f"{1e3 * stacked / rate:.1f} ms resp. {1e3 * one / rate:.2f} ms x {args.members} = "
                      f"{1e3 * args.members * one / rate:.1f} ms")
        return 0
    rows = []
    for dz in args.dzs:
        for model in args.models:
            # n such that one epoch of the 80% training split is exactly --steps steps of batch 256.
            cfg = TrainConfig(model=model, dz=dz, epochs=1, n=int(args.steps * 256 / 0.8), checkpoint_every=0)
            seeds = list(range(args.members))
            times = {"batched": step_time(cfg, seeds, args.warmup, args.device)}
            if args.mcl_loop and model == "mdvae_mcl":
                members_module.STACK_MCL = False
                try:
                    times["batched_mcl_loop"] = step_time(cfg, seeds, args.warmup, args.device)
                finally:
                    members_module.STACK_MCL = True
            if not args.no_one_by_one:
                per_seed = [step_time(cfg, [s], args.warmup, args.device) for s in seeds]
                times["one_by_one"] = tuple(sum(t[i] for t in per_seed) for i in (0, 1))
            base = times.get("batched_mcl_loop", times.get("one_by_one", times["batched"]))
            obo = times.get("one_by_one")
            for mode, (t, c) in times.items():
                rows.append({"model": model, "dz": dz, "members": args.members, "mode": mode, "batch": 256,
                             "threads": torch.get_num_threads(), "ms_per_step_all_members": 1e3 * t,
                             "model_steps_per_s": args.members / t, "speedup": base[0] / t,
                             "load_avg_1min": os.getloadavg()[0], "cpu_ms_per_step_all_members": 1e3 * c,
                             "speedup_over_one_by_one": obo[0] / t if obo else None,
                             "cpu_speedup_over_one_by_one": obo[1] / c if obo else None})
            print(f"{model} dz={dz}: " + ", ".join(f"{mode} {args.members / t:.1f} model-steps/s ({base[0] / t:.2f}x)"
                                                    for mode, (t, _) in times.items()), flush=True)
            if obo:
                print(f"  over one by one: wall {obo[0] / times['batched'][0]:.2f}x, CPU time "
                      f"{obo[1] / times['batched'][1]:.2f}x (load average {os.getloadavg()[0]:.2f})", flush=True)
    print_table(rows, ["model", "dz", "members", "mode", "ms_per_step_all_members", "model_steps_per_s",
                       "speedup", "cpu_ms_per_step_all_members"])
    if not args.no_save:
        print("appended to", append_rows("synthetic", rows, device=args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
