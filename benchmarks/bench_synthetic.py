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
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import append_rows, print_table  # noqa: E402
from mclcore.studies.synthetic import members as members_module  # noqa: E402
from mclcore.studies.synthetic.train import TrainConfig, train  # noqa: E402


def step_time(cfg: TrainConfig, seeds, warmup: int, device: str) -> float:
    """Median seconds per optimiser step of ``train(cfg, seeds)`` (all members of the stack together)."""
    stamps = []
    train(cfg, seeds, on_step=lambda n: stamps.append(time.perf_counter()), device=device)
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return statistics.median(gaps)


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
    args = p.parse_args(argv)
    if args.steps <= args.warmup + 1:
        p.error(f"--steps: expected more than --warmup + 1 = {args.warmup + 1}, got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
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
                times["one_by_one"] = sum(step_time(cfg, [s], args.warmup, args.device) for s in seeds)
            base = times.get("batched_mcl_loop", times.get("one_by_one", times["batched"]))
            for mode, t in times.items():
                rows.append({"model": model, "dz": dz, "members": args.members, "mode": mode, "batch": 256,
                             "threads": torch.get_num_threads(), "ms_per_step_all_members": 1e3 * t,
                             "model_steps_per_s": args.members / t, "speedup": base / t,
                             "load_avg_1min": os.getloadavg()[0]})
            print(f"{model} dz={dz}: " + ", ".join(f"{mode} {args.members / t:.1f} model-steps/s ({base / t:.2f}x)"
                                                    for mode, t in times.items()), flush=True)
    print_table(rows, ["model", "dz", "members", "mode", "ms_per_step_all_members", "model_steps_per_s",
                       "speedup"])
    if not args.no_save:
        print("appended to", append_rows("synthetic", rows, device=args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
