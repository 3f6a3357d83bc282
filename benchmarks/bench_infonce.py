"""infonce op (tiled, csrc/infonce) vs the pure-autograd reference (python/infonce.py, full B x B logits).

float32, d = 128, tau = 0.1: medians at B = 256, 1024, 4096 in both modes (diagonal positives; multi-positive with
8 conditions), the best of five alternating rounds each (--rounds), for four phases, all through the public
functions:

    forward            under torch.no_grad (inference: the op's plain forward, mclcore::infonce)
    forward(train)     p, k requiring grad, grad mode on, no backward: the reference builds its graph; the op runs
                       mclcore::infonce_with_grad, which computes the gradients already
    backward           torch.autograd.grad on a retained graph (the op only scales its saved gradients)
    forward+backward   a training step, forward(train) then backward: the row the team target is about

then the op alone at B = 16384 with its time and peak extra memory. The reference runs there too when the machine
has the memory for its B x B tensors (about 5 GiB), else its row says skipped. Rows go to benchmarks/results/infonce.csv.

    python benchmarks/bench_infonce.py            # full run (a few minutes: 2-core AMD EPYC VM, 2026-11)
    python benchmarks/bench_infonce.py --quick    # smoke check: tiny sizes, few reps, nothing appended
    python benchmarks/bench_infonce.py --threads 1 --large 0   # one core: steadier on a shared machine

Team targets (2-core CPU, same run): forward+backward at B = 256 >= 2x faster than the reference; B = 16384 peak
extra memory <= 64 MiB. Both are checked and printed at the end.

On a GPU (``--device cuda``): bfloat16 by default, B = 256, 4096, 65536 at d = 128, through the backend chosen by
``--backend triton|cuda`` (default: triton if it imports), times with torch.cuda.synchronize, peak memory from
torch.cuda.max_memory_allocated. A reference that does not fit the free GPU memory (its B x B tensors: ~40 GiB in
bfloat16 at B = 65536) is skipped. When the ``inf_cl`` package (Inf-CL, Cheng et al. 2024) imports, its single-GPU
tiled loss ``cal_flash_loss`` is timed as a peer (diagonal mode only, on F.normalize'd rows: it has no
multi-positive mode and no normalisation of its own; it computes in float32 whatever the input dtype).

    python benchmarks/bench_infonce.py --device cuda [--backend triton] [--dtype bfloat16] [--quick]
    python benchmarks/bench_infonce.py --device cuda --half-dot float32   # Triton: the old exact fp32 products
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (add_device_args, add_paired_args, append_rows, median_time, paired_times,  # noqa: E402
                               peak_extra_bytes, print_table, setup_device)
from mclcore.ops.infonce import infonce  # noqa: E402
from python.infonce import infonce as ref_infonce  # noqa: E402
from python.infonce import sample_inputs  # noqa: E402

TAU = 0.1
N_CONDITIONS = 8  # multi-positive rows: |U| = 8 conditions, as in docs/DESIGN.md §2.1's duplicate-condition example


def mem_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def inf_cl_peer():
    """Inf-CL's single-GPU tiled InfoNCE as ``fn(p, k, tau, groups=None)``, or None when inf_cl does not import."""
    try:
        from inf_cl import cal_flash_loss
    except Exception:
        return None

    def peer(p, k, tau, groups=None):
        # cal_flash_loss takes unit rows and returns per-row losses; head_dim = d keeps one "head".
        qn, kn = F.normalize(p, dim=1), F.normalize(k, dim=1)
        return cal_flash_loss(qn, kn, scale=1.0 / tau, head_dim=p.shape[1]).mean()

    return peer


def gpu_free_bytes() -> int:
    return torch.cuda.mem_get_info()[0]


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


def row(B, d, mode, phase, t_op, t_ref, m_op=None, m_ref=None, reps=None, note="", dtype="float32", gpu=None):
    r = dict(op="infonce", B=B, d=d, dtype=dtype, mode=mode, phase=phase, threads=torch.get_num_threads(),
             reps=reps, op_ms=t_op * 1e3, ref_ms="skipped" if t_ref is None else t_ref * 1e3,
             speedup="" if t_ref is None else t_ref / t_op,
             op_peak_mib="" if m_op is None else m_op / 2**20,
             ref_peak_mib="" if m_ref is None else ("skipped" if m_ref == "skipped" else m_ref / 2**20), note=note)
    if gpu is not None:  # GPU rows: the backend and the Inf-CL peer (CPU rows keep their columns)
        r.update(gpu)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch sizes (default: 256 1024 4096 on CPU, 256 4096 65536 on CUDA)")
    ap.add_argument("--large", type=int, default=None,
                    help="batch size of the large (memory) run; 0 skips it (default: 16384 on CPU, 0 on CUDA)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="input dtype (default: float32 on CPU, bfloat16 on CUDA)")
    add_paired_args(ap, reps_help="repetitions per round at B = 256 (fewer for larger B)",
                    quick_help="tiny sizes, few reps, no CSV")
    ap.add_argument("--no-large-ref", action="store_true", help="never run the reference at the large size")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--half-dot", default=None, choices=["float32", "input"],
                    help="Triton backend, float16/bfloat16 inputs: products on tensor cores in the input dtype with "
                         "float32 accumulation (default since 2026-12-06) or exact float32 products like the C++ op "
                         "(sets MCLCORE_TRITON_HALF_DOT)")
    add_device_args(ap)
    args = ap.parse_args(argv)
    backend = setup_device(args)
    device, on_gpu = args.device, args.device == "cuda"
    if args.half_dot:
        os.environ["MCLCORE_TRITON_HALF_DOT"] = args.half_dot
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or ([256, 4096, 65536] if on_gpu else [256, 1024, 4096])
    args.large = (0 if on_gpu else 16384) if args.large is None else args.large
    dtype_name = args.dtype or ("bfloat16" if on_gpu else "float32")
    dtype = getattr(torch, dtype_name)
    if args.quick:
        args.batch, args.large, args.reps, args.rounds = [64, 300], 0 if on_gpu else 1024, 3, 1
    peer = inf_cl_peer() if on_gpu else None
    d = args.d
    rows = []
    for B in args.batch:
        reps = max(3, args.reps * 256 // B)  # ~30 at 256, 7 at 1024, 3 at 4096
        for mode in ("diagonal", "multi"):
            p, k, groups = sample_inputs(B, d, n_groups=N_CONDITIONS if mode == "multi" else None, dtype=dtype,
                                         device=device, requires_grad=True)
            op_ph, ref_ph = phases(infonce, p, k, groups), phases(ref_infonce, p, k, groups)
            peer_ph = phases(peer, p, k, groups) if peer is not None and mode == "diagonal" else None
            # The reference's B x B tensors (logits, softmax, their gradients: ~5 of them) may not fit the GPU.
            ref_fits = not on_gpu or gpu_free_bytes() > 6 * B * B * p.element_size()
            for phase in op_ph:
                # Alternating rounds, best median of each side (None: not run, or out of GPU memory).
                t_op, t_ref, t_peer = paired_times(
                    [op_ph[phase], ref_ph[phase] if ref_fits else None, peer_ph[phase] if peer_ph else None],
                    device=device, rounds=args.rounds, reps=reps, warmup=2)
                mem = {}
                if phase == "forward+backward":
                    mem = dict(m_op=peak_extra_bytes(op_ph[phase], device=device),
                               m_ref=peak_extra_bytes(ref_ph[phase], device=device) if t_ref is not None else "skipped")
                gpu = None
                if on_gpu:
                    gpu = dict(backend=backend, half_dot=os.environ.get("MCLCORE_TRITON_HALF_DOT", "input"),
                               peer="inf_cl" if peer_ph is not None else ("inf_cl: no multi-positive mode"
                                                                          if peer is not None else "inf_cl not installed"),
                               peer_ms="" if peer_ph is None or t_peer is None else t_peer * 1e3)
                note = "" if t_ref is not None else "reference skipped: out of GPU memory"
                rows.append(row(B, d, mode, phase, t_op, t_ref, reps=reps, note=note, dtype=dtype_name, gpu=gpu,
                                **mem))
            del op_ph, ref_ph, peer_ph

    if args.large:
        B = args.large
        p, k, _ = sample_inputs(B, d, dtype=dtype, device=device, requires_grad=True)
        op_ph = phases(infonce, p, k, None)
        m_op = peak_extra_bytes(op_ph["forward+backward"], device=device)
        t_op = median_time(op_ph["forward+backward"], reps=3, warmup=1, device=device)
        # Reference: the B x B logits and about four more B x B float32 tensors alive around the backward.
        need = 5 * B * B * 4
        free = gpu_free_bytes() if on_gpu else mem_available_bytes()
        gpu = dict(backend=backend) if on_gpu else None
        if args.no_large_ref or free < 2 * need:
            note = f"reference skipped: needs ~{need / 2**30:.1f} GiB, available {free / 2**30:.1f}"
            rows.append(row(B, d, "diagonal", "forward+backward", t_op, None, m_op, "skipped", reps=3, note=note,
                            dtype=dtype_name, gpu=gpu))
        else:
            ref_ph = phases(ref_infonce, p, k, None)
            m_ref = peak_extra_bytes(ref_ph["forward+backward"], device=device)
            t_ref = median_time(ref_ph["forward+backward"], reps=1, warmup=0, device=device)
            rows.append(row(B, d, "diagonal", "forward+backward", t_op, t_ref, m_op, m_ref, reps=3,
                            note="reference: 1 rep", dtype=dtype_name, gpu=gpu))
            del ref_ph
        del op_ph

    columns = ["B", "mode", "phase", "op_ms", "ref_ms", "speedup", "op_peak_mib", "ref_peak_mib"]
    print_table(rows, columns + (["backend", "peer_ms"] if on_gpu else []))
    if args.quick:
        return rows
    print("appended to", append_rows("infonce", rows, device=device))
    if on_gpu:
        return rows
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
