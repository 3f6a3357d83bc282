"""comp_contrast op vs the torch.func references (python/comp_contrast.py): forward + backward of the regulariser.

Generator: an MLP dz -> 64 -> 64 -> dx = 64 (two hidden layers, linear output; semi-orthogonal layers from
``python.mech_derivs.sample_inputs``), B = 256 latents, dz = 10, float32, activation leaky ReLU (slope 0.2, the
paper's synthetic generators) and GELU. What is timed, on every side: the mean compositional contrast over the batch
and its gradient w.r.t. z and every weight and bias (``torch.autograd.grad``), i.e. one regulariser step:

* op: ``mclcore.ops.comp_contrast`` (C++ forward-mode Jacobian, registered backward op);
* jacfwd / jacrev: ``vmap(jacfwd(g))`` / ``vmap(jacrev(g))`` per sample, C from J, autograd through the transform
  (the "create_graph" path a user would write).

Times are best-of-rounds medians in alternating rounds (benchmarks.common.paired_times), so the ratios compare the
sides under the same load; on CUDA every timed call ends with torch.cuda.synchronize (benchmarks.common.median_time),
as in the other benchmarks. ``err_f64`` is the largest normwise relative error of C and of every gradient, op vs the
jacfwd reference, in float64 on the same generator (at B = min(batch, 64)).

``--device cuda`` runs all three sides on the GPU: the op through its CUDA kernel (the Triton launchers of
mclcore/ops/triton/comp_contrast.py with cuBLAS products; comp_contrast has no CUDA C++ twin, so ``--backend cuda``
fails with the backend's error), the torch.func references as plain torch ops; default batches B = 256 and 4096
(the GPU's regime; the CPU default is 256 alone). Without a CUDA device it exits at once with one line.

    python benchmarks/bench_comp_contrast.py [--quick] [--threads 2] [--reps 30] [--rounds 5]
    python benchmarks/bench_comp_contrast.py --device cuda [--backend triton] [--batch 256 4096] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (add_device_args, add_paired_args, append_rows, paired_times, print_table,  # noqa: E402
                               setup_device)
from mclcore.ops.comp_contrast import comp_contrast  # noqa: E402
from python import comp_contrast as ref  # noqa: E402
from python.mech_derivs import sample_inputs  # noqa: E402


def _step(fn, leaves):
    """One regulariser step: mean C over the batch and its gradient w.r.t. every leaf."""

    def run():
        return torch.autograd.grad(fn().mean(), leaves, allow_unused=True)

    return run


def _sides(inputs, activation):
    z, ws, bs = inputs.z, inputs.weights, inputs.biases
    leaves = [z, *ws, *bs]
    op = _step(lambda: comp_contrast(z, ws, bs, activation), leaves)
    fwd = _step(lambda: ref.comp_contrast(z, ws, bs, None, activation, mode="fwd"), leaves)
    rev = _step(lambda: ref.comp_contrast(z, ws, bs, None, activation, mode="rev"), leaves)
    return op, fwd, rev


def rel_err_f64(B, dz, widths, activation, device) -> float:
    """Largest normwise relative error of C and of each gradient, op vs vmap(jacfwd), float64."""
    inputs = sample_inputs(B, dz, widths=widths, seed=3, device=device, requires_grad=True)
    z, ws, bs = inputs.z, inputs.weights, inputs.biases
    leaves = [z, *ws, *bs]
    C = comp_contrast(z, ws, bs, activation)
    Cr = ref.comp_contrast(z, ws, bs, None, activation, mode="fwd")
    w = torch.randn(B, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    g = torch.autograd.grad((C * w).sum(), leaves, allow_unused=True)
    gr = torch.autograd.grad((Cr * w).sum(), leaves, allow_unused=True)
    C, Cr = C.detach(), Cr.detach()
    errs = [float((C - Cr).abs().max() / Cr.abs().max())]
    for a, b in zip(g, gr):
        b = torch.zeros_like(a) if b is None else b  # the output bias does not change J: the reference has no grad
        errs.append(float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if b.abs().max() > 0
                    else float(a.abs().max()))
    return max(errs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dz", type=int, default=10)
    ap.add_argument("--dx", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch sizes B (default: 256 on the CPU, 256 4096 with --device cuda)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--activation", nargs="+", default=["leaky_relu", "gelu"])
    add_paired_args(ap)
    add_device_args(ap)
    args = ap.parse_args(argv)
    backend = setup_device(args)
    dev = args.device
    torch.set_num_threads(args.threads)
    if args.batch is None:
        args.batch = [256, 4096] if dev == "cuda" else [256]
    if args.quick:
        args.batch, args.reps, args.rounds = [16], 2, 1
    widths = (args.width, args.width, args.dx)
    rows = []
    for activation in args.activation:
        err = rel_err_f64(min(min(args.batch), 64), args.dz, widths, activation, dev)  # once: it does not depend on B
        for batch in args.batch:
            inputs = sample_inputs(batch, args.dz, widths=widths, seed=1, dtype=torch.float32, device=dev,
                                   requires_grad=True)
            t_op, t_fwd, t_rev = paired_times(list(_sides(inputs, activation)), device=dev, rounds=args.rounds,
                                              reps=args.reps)
            # a reference that ran out of GPU memory comes back as None (paired_times): reported, not compared
            refs = [t for t in (t_fwd, t_rev) if t is not None]
            ratio = lambda t: None if t is None or t_op is None else t / t_op  # noqa: E731
            ms = lambda t: None if t is None else 1e3 * t  # noqa: E731
            rows.append({"activation": activation, "dz": args.dz, "dx": args.dx, "width": args.width, "B": batch,
                         "dtype": "float32", "threads": torch.get_num_threads(), "op_ms": ms(t_op),
                         "jacfwd_ms": ms(t_fwd), "jacrev_ms": ms(t_rev),
                         "speedup_vs_best": ratio(min(refs)) if refs else None,
                         "speedup_vs_jacfwd": ratio(t_fwd), "speedup_vs_jacrev": ratio(t_rev), "err_f64": err,
                         **({"backend": backend} if dev == "cuda" else {})})
    print_table(rows, ["activation", "dz", "dx", "width", "B", "threads", "op_ms", "jacfwd_ms", "jacrev_ms",
                       "speedup_vs_best", "speedup_vs_jacfwd", "speedup_vs_jacrev", "err_f64"])
    if not args.quick:
        print("appended to", append_rows("comp_contrast", rows, device=dev))


if __name__ == "__main__":
    main()
