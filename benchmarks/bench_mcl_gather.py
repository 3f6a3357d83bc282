"""MCL training step across processes: ``MCLConfig(gather=True)`` on several processes vs one process.

One step = the MCL loss of a small MLP generator (forward, the mechanism gradient with create_graph) and its
gradient to every parameter (generator, critic, heads); with several processes also the gradient average over the
ranks (one all-reduce of the flattened gradients, as a DDP step would do). The global batch is the same everywhere
(``--batch``, default 256 rows, 8 conditions); each process of a run holds its share of it.

**On the CPU** (default; no torchrun): the script spawns 2 gloo processes itself (FileStore) and times four routes:

    1 proc x 1 thread               the whole batch in one process, one thread
    1 proc x 2 threads              the whole batch in one process, two threads (the alternative on 2 cores)
    2 procs x 1 thread, gather      each rank its half; keys all-gathered, rectangular InfoNCE (the loss of the
                                    whole batch: N - 1 negatives per row)
    2 procs x 1 thread, no gather   each rank its half, contrasted only against its own keys (B/2 - 1 negatives:
                                    a different loss; the price of the gather is the difference to the row above)

**Under torchrun** (any ``--nproc-per-node`` W; ``--device cuda``: NCCL, each rank on ``cuda:LOCAL_RANK``, through
``mclcore.distributed.init``; ``--device cpu``: gloo, one thread per rank), three routes: ``1 proc`` (the whole
batch on rank 0 while the others wait in a barrier), ``W procs, gather`` and ``W procs, no gather``.
**``--device cuda`` without torchrun** (one GPU): one process, the ``1 proc`` route alone (it says so): the baseline
a multi-GPU run is compared with, and a check that the script runs on the GPU.

All routes of a run alternate in rounds, each keeping its best round median (benchmarks/common.py's paired_times
convention); on CUDA every timed step is bracketed by ``torch.cuda.synchronize``. samples/s is the global batch over
the step time (the slowest rank's for several processes). The gathered run is checked against the one-process step
on the same batch (loss and averaged gradients, float32).

    python benchmarks/bench_mcl_gather.py           # appends to benchmarks/results/mcl_gather.csv
    python benchmarks/bench_mcl_gather.py --quick   # smoke run, no CSV row
    torchrun --standalone --nproc-per-node 8 benchmarks/bench_mcl_gather.py --device cuda --batch 4096
    python benchmarks/bench_mcl_gather.py --device cuda --batch 4096      # one GPU: the 1-process baseline only
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
from benchmarks import bench_mcl_step, common  # noqa: E402
from benchmarks.common import add_device_args, append_rows, print_table, setup_device  # noqa: E402
from mclcore import distributed  # noqa: E402

ROUTES = ("1 proc x 1 thread", "1 proc x 2 threads", "2 procs x 1 thread, gather", "2 procs x 1 thread, no gather")
ONE = "1 proc"  # the one-process route of a torchrun or one-GPU run


def routes_of(world: int) -> tuple[str, ...]:
    """The routes of a torchrun (or one-process CUDA) run of ``world`` processes."""
    return (ONE,) if world == 1 else (ONE, f"{world} procs, gather", f"{world} procs, no gather")


# the small MLP generator of bench_mcl_step.py: [z, u] -> 64 -> 64 -> dx, leaky ReLU (one definition)
Generator = bench_mcl_step.Generator


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _bench(rank: int, world: int, cfg: dict, device: torch.device, pair_routes: bool) -> dict:
    """Every route on this rank of ``world`` (a process group exists when world > 1). ``pair_routes``: the CPU
    pair's four routes (ROUTES, with threads), else :func:`routes_of`. Returns the best times (the slowest rank's
    for a multi-process route), the check of the gathered step and the load average."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)  # the same modules and batch on every rank (drawn on the CPU, then moved)
    G = Generator(cfg["dz"], cfg["du"], cfg["dx"]).to(device)
    mcl = mclcore.MCL(cfg["dz"], cfg["dx"], cfg["du"]).to(device)
    params = [*G.parameters(), *mcl.parameters()]
    B = cfg["batch"]
    z = torch.randn(B, cfg["dz"]).to(device)
    u = torch.randn(8, cfg["du"])[torch.randint(0, 8, (B,))].to(device)
    mine = slice(rank * B // world, (rank + 1) * B // world)

    def grads(loss):
        return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)

    def single():
        mcl.gather = False
        loss = mcl(G, z, u)
        return loss.detach(), grads(loss)

    def shard(gather):
        mcl.gather = gather
        loss = mcl(G, z[mine], u[mine])
        flat = torch.cat([g.reshape(-1) for g in grads(loss)])
        dist.all_reduce(flat)          # the gradient average a DDP step does
        return loss.detach(), flat.div_(world)

    check = {}
    if world > 1:  # correctness first: the gathered run's mean loss and averaged gradients are the one-process step's
        loss1, g1 = single()
        loss2, flat2 = shard(True)
        dist.all_reduce(loss2)
        flat1 = torch.cat([g.reshape(-1) for g in g1])
        check = dict(loss_rel_diff=abs(loss2.item() / world - loss1.item()) / abs(loss1.item()),
                     grad_rel_diff=((flat2 - flat1).abs().max() / flat1.abs().max()).item())

    if pair_routes:
        routes = {ROUTES[0]: (True, 1, single), ROUTES[1]: (True, 2, single),
                  ROUTES[2]: (False, 1, lambda: shard(True)), ROUTES[3]: (False, 1, lambda: shard(False))}
    else:  # threads None: left as they are (CUDA; one thread per rank on the CPU, set by the caller)
        names = routes_of(world)
        routes = {names[0]: (True, None, single)}
        if world > 1:
            routes.update({names[1]: (False, None, lambda: shard(True)), names[2]: (False, None, lambda: shard(False))})
    best = {name: float("inf") for name in routes}
    idle_cpu = 0.0  # CPU seconds the other ranks spend waiting while rank 0 runs a single-process route
    load0 = os.getloadavg()[0]
    for rnd in range(cfg["rounds"] + 1):  # round 0 warms up
        for name, (alone, threads, fn) in routes.items():
            _barrier(world)
            if alone and rank != 0:
                c0 = time.process_time()
                _barrier(world)          # waits for rank 0's timed steps
                idle_cpu += time.process_time() - c0
                continue
            if threads:
                torch.set_num_threads(threads)
            times = []
            for _ in range(cfg["reps"] if rnd else 2):
                common.sync(device)
                t0 = time.perf_counter()
                fn()
                common.sync(device)      # CUDA: the step's kernels are done
                times.append(time.perf_counter() - t0)
            if threads:
                torch.set_num_threads(1)
            med = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
            if alone:
                _barrier(world)
            else:
                dist.all_reduce(med, op=dist.ReduceOp.MAX)  # a multi-process step is as fast as its slowest rank
            if rnd:
                best[name] = min(best[name], med.item())
    return dict(best=best, check=check, load_avg_start=load0, load_avg_end=os.getloadavg()[0], idle_cpu_s=idle_cpu,
                cuda=cuda)


def _worker(rank: int, world: int, store: str, out: str, cfg: dict) -> None:
    """A rank of the CPU pair the script spawns itself (gloo, FileStore)."""
    if cfg["malloc"] == "steady":
        common.steady_malloc()
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        res = _bench(rank, world, cfg, torch.device("cpu"), pair_routes=True)
        if rank == 0:
            with open(os.path.join(out, "result.json"), "w") as f:
                json.dump(dict(res, malloc=common.MALLOC), f)
        else:
            with open(os.path.join(out, "idle.json"), "w") as f:
                json.dump(dict(idle_cpu_s=res["idle_cpu_s"]), f)
    finally:
        dist.destroy_process_group()


def _cpu_pair(args, cfg) -> list[dict]:
    """The default CPU run: 2 spawned gloo processes, the four ROUTES."""
    if args.batch % 2:
        raise SystemExit("--batch: expected an even global batch (two processes hold half each)")
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
    return rows


def _ranks(args, cfg) -> tuple[list[dict], torch.device] | None:
    """A torchrun run (this process is one rank; NCCL on cuda:LOCAL_RANK for --device cuda, gloo otherwise) or one
    CUDA process without torchrun. Returns (rows, device) on rank 0, None on the others."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    ctx = distributed.init(args.device)          # first: each rank's current GPU is cuda:LOCAL_RANK from here on
    device = distributed.device_for(args.device)
    world = ctx.world_size
    try:
        backend = setup_device(args)             # --backend, --malloc (this process)
        if args.batch % world:
            raise SystemExit(f"--batch: the global batch {args.batch} is not divisible by the {world} processes")
        if device.type == "cpu":
            torch.set_num_threads(1)
        if world == 1 and ctx.is_main:
            print(f"one process on {device} ({'torchrun with one process' if distributed.launched() else 'no torchrun'}"
                  f"): the {ONE!r} route alone, nothing to scale; torchrun --nproc-per-node N (N > 1 GPUs) adds "
                  f"the gathered and ungathered N-process routes")
        res = _bench(ctx.rank, world, cfg, device, pair_routes=False)
    finally:
        distributed.destroy()
    if not ctx.is_main:
        return None
    base = res["best"][ONE]
    rows = []
    for name in routes_of(world):
        t = res["best"][name]
        procs = 1 if name == ONE else world
        rows.append(dict(route=name, processes=procs, threads_per_process=1 if device.type == "cpu" else None,
                         gather=name.endswith(", gather"), B_global=args.batch, B_local=args.batch // procs,
                         dz=args.dz, dx=args.dx, du=args.du, dtype="float32", ms_per_step=t * 1e3,
                         samples_per_s=args.batch / t, speedup_vs_1x1=base / t,
                         load_avg_1min_start=round(res["load_avg_start"], 2),
                         load_avg_1min_end=round(res["load_avg_end"], 2), cpus=os.cpu_count(),
                         idle_rank_cpu_s=round(res["idle_cpu_s"], 3), **res["check"],
                         **({"backend": backend} if device.type == "cuda" else {})))
    print_table(rows, ["route", "ms_per_step", "samples_per_s", "speedup_vs_1x1", "B_local"])
    if res["check"]:
        print(f"gathered {world} processes vs one process: loss rel diff {res['check']['loss_rel_diff']:.2e}, "
              f"gradient rel diff {res['check']['grad_rel_diff']:.2e} (float32)")
    return rows, device


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256, help="global batch (rows over all processes)")
    ap.add_argument("--dz", type=int, default=10)
    ap.add_argument("--dx", type=int, default=64)
    ap.add_argument("--du", type=int, default=16)
    common.add_paired_args(ap, reps_help="timed steps per round and route")
    add_device_args(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.reps, args.rounds = 32, 3, 1
    cfg = dict(batch=args.batch, dz=args.dz, dx=args.dx, du=args.du, reps=args.reps, rounds=args.rounds,
               malloc=args.malloc)
    if distributed.launched() or args.device == "cuda":
        got = _ranks(args, cfg)
        if got is None:
            return
        rows, device = got
    else:
        if args.backend:
            print(f"note: --backend {args.backend} only applies to CUDA tensors", file=sys.stderr)
        rows, device = _cpu_pair(args, cfg), "cpu"
    if not args.quick:
        print("appended to", append_rows("mcl_gather", rows, device=device))


if __name__ == "__main__":
    main()
