"""MCL training step across processes: ``MCLConfig(gather=True)`` on 2 gloo processes vs one process, on the CPU.

One step = the MCL loss of a small MLP generator (forward, the mechanism gradient with create_graph) and its
gradient to every parameter (generator, critic, heads); with 2 processes also the gradient average over the ranks
(one all-reduce of the flattened gradients, as a DDP step would do). The global batch is the same everywhere
(``--batch``, default 256 rows, 8 conditions); each process of a pair holds half of it. Routes:

    1 proc x 1 thread               the whole batch in one process, one thread
    1 proc x 2 threads              the whole batch in one process, two threads (the alternative on 2 cores)
    2 procs x 1 thread, gather      each rank its half; keys all-gathered, rectangular InfoNCE (the loss of the
                                    whole batch: N - 1 negatives per row)
    2 procs x 1 thread, no gather   each rank its half, contrasted only against its own keys (B/2 - 1 negatives:
                                    a different loss; the price of the gather is the difference to the row above)

All routes run in the same two spawned processes (gloo, FileStore), in alternating rounds (the single-process
routes on rank 0 while rank 1 waits in a barrier), each keeping its best round median (benchmarks/common.py's
paired_times convention); samples/s is the global batch over the step time (the slower rank's for a pair). The
gathered pair is checked against the one-process step on the same batch (loss and averaged gradients, float32).

    python benchmarks/bench_mcl_gather.py           # appends to benchmarks/results/mcl_gather.csv
    python benchmarks/bench_mcl_gather.py --quick   # smoke run, no CSV row
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mclcore  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.common import append_rows, print_table  # noqa: E402

ROUTES = ("1 proc x 1 thread", "1 proc x 2 threads", "2 procs x 1 thread, gather", "2 procs x 1 thread, no gather")


class Generator(nn.Module):
    """The small MLP generator of bench_mcl_step.py: [z, u] -> 64 -> 64 -> dx, leaky ReLU."""

    def __init__(self, dz, du, dx, width=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dz + du, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, dx))

    def forward(self, z, u):  # (B, dz), (B, du) -> (B, dx)
        return self.net(torch.cat([z, u], 1))


def _worker(rank: int, world: int, store: str, out: str, cfg: dict) -> None:
    common.steady_malloc()
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)  # the same modules and batch on both ranks
        G = Generator(cfg["dz"], cfg["du"], cfg["dx"])
        mcl = mclcore.MCL(cfg["dz"], cfg["dx"], cfg["du"])
        params = [*G.parameters(), *mcl.parameters()]
        B = cfg["batch"]
        z = torch.randn(B, cfg["dz"])
        u = torch.randn(8, cfg["du"])[torch.randint(0, 8, (B,))]
        half = slice(rank * B // world, (rank + 1) * B // world)

        def grads(loss):
            return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)

        def single():
            mcl.gather = False
            loss = mcl(G, z, u)
            return loss.detach(), grads(loss)

        def pair(gather):
            mcl.gather = gather
            loss = mcl(G, z[half], u[half])
            flat = torch.cat([g.reshape(-1) for g in grads(loss)])
            dist.all_reduce(flat)          # the gradient average a DDP step does
            return loss.detach(), flat.div_(world)

        # Correctness first: the gathered pair's mean loss and averaged gradients are the one-process step's.
        loss1, g1 = single()
        loss2, flat2 = pair(True)
        dist.all_reduce(loss2)
        flat1 = torch.cat([g.reshape(-1) for g in g1])
        check = dict(loss_rel_diff=abs(loss2.item() / world - loss1.item()) / abs(loss1.item()),
                     grad_rel_diff=((flat2 - flat1).abs().max() / flat1.abs().max()).item())

        routes = {ROUTES[0]: (True, 1, single), ROUTES[1]: (True, 2, single),
                  ROUTES[2]: (False, 1, lambda: pair(True)), ROUTES[3]: (False, 1, lambda: pair(False))}
        best = {name: float("inf") for name in routes}
        idle_cpu = 0.0  # CPU seconds rank 1 spends waiting while rank 0 runs a single-process route
        load0 = os.getloadavg()[0]
        for rnd in range(cfg["rounds"] + 1):  # round 0 warms up
            for name, (alone, threads, fn) in routes.items():
                dist.barrier()
                if alone and rank != 0:
                    c0 = time.process_time()
                    dist.barrier()          # waits for rank 0's timed steps
                    idle_cpu += time.process_time() - c0
                    continue
                torch.set_num_threads(threads)
                times = []
                for _ in range(cfg["reps"] if rnd else 2):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                torch.set_num_threads(1)
                med = torch.tensor([statistics.median(times)], dtype=torch.float64)
                if alone:
                    dist.barrier()
                else:
                    dist.all_reduce(med, op=dist.ReduceOp.MAX)  # a pair steps as fast as its slower rank
                if rnd:
                    best[name] = min(best[name], med.item())
        if rank == 0:
            with open(os.path.join(out, "result.json"), "w") as f:
                json.dump(dict(best=best, check=check, load_avg_start=load0, load_avg_end=os.getloadavg()[0],
                               malloc=common.MALLOC), f)
        else:
            with open(os.path.join(out, "idle.json"), "w") as f:
                json.dump(dict(idle_cpu_s=idle_cpu), f)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256, help="global batch (rows over all processes)")
    ap.add_argument("--dz", type=int, default=10)
    ap.add_argument("--dx", type=int, default=64)
    ap.add_argument("--du", type=int, default=16)
    common.add_paired_args(ap, reps_help="timed steps per round and route")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.reps, args.rounds = 32, 3, 1
    if args.batch % 2:
        raise SystemExit("--batch: expected an even global batch (two processes hold half each)")
    cfg = dict(batch=args.batch, dz=args.dz, dx=args.dx, du=args.du, reps=args.reps, rounds=args.rounds)
    with tempfile.TemporaryDirectory(prefix="mclcore_bench_gather_") as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "store"), tmp, cfg), nprocs=2, join=True)
        with open(os.path.join(tmp, "result.json")) as f:
            res = json.load(f)
        with open(os.path.join(tmp, "idle.json")) as f:
            idle = json.load(f)
    common.MALLOC = res["malloc"]  # the workers' allocator policy, recorded in the rows
    base = res["best"][ROUTES[0]]
    rows = []
    for name in ROUTES:
        t = res["best"][name]
        procs, threads = (2, 1) if name.startswith("2") else (1, 2 if "2 threads" in name else 1)
        rows.append(dict(route=name, processes=procs, threads_per_process=threads, gather="no gather" not in name
                         and procs == 2, B_global=args.batch, B_local=args.batch // procs, dz=args.dz, dx=args.dx,
                         du=args.du, dtype="float32", ms_per_step=t * 1e3, samples_per_s=args.batch / t,
                         speedup_vs_1x1=base / t, load_avg_1min_start=round(res["load_avg_start"], 2),
                         load_avg_1min_end=round(res["load_avg_end"], 2), cpus=os.cpu_count(),
                         idle_rank_cpu_s=round(idle["idle_cpu_s"], 3), **res["check"]))
    print_table(rows, ["route", "ms_per_step", "samples_per_s", "speedup_vs_1x1", "load_avg_1min_start",
                       "load_avg_1min_end"])
    print(f"gathered pair vs one process: loss rel diff {res['check']['loss_rel_diff']:.2e}, gradient rel diff "
          f"{res['check']['grad_rel_diff']:.2e} (float32); rank 1 used {idle['idle_cpu_s']:.3f} CPU s while "
          f"waiting out the single-process routes")
    if not args.quick:
        print("appended to", append_rows("mcl_gather", rows, device="cpu"))


if __name__ == "__main__":
    main()
