"""What the MCL diagnostics cost: a training step with and without `readout` + `gradient_norms` on that step.

The shapes of bench_mcl_step (the paper's MLP setting: generator G([z, u]) dz+du -> 64 -> 64 -> dx, critic
[z, x, u] -> 256 -> 256 -> 1, heads into 128 dims), a host loss that trains the generator (MSE of G(z, u) against a
fixed random target) and Adam on every parameter. Timed in alternating rounds (benchmarks.common.paired_times):

    step             host + lam * L_MCL, zero_grad, backward, optimizer step
    diagnostic_step  the same step, plus readout(mcl, G, z, u) and gradient_norms(lam * L_MCL, host, G's params)
                     on it, as a study does every MCLConfig.diagnose_every steps (default 50)
    readout          readout alone          gradient_norms   gradient_norms alone, on a retained graph

Overhead at diagnose_every = k: extra / (k * step), extra = diagnostic_step - step (readout, gradient_norms: their
own time). Target of the MCL-as-an-instrument issue: diagnostics <= 5% of step time at B = 256, every 50.

    python benchmarks/bench_mcl_diagnostics.py [--threads N]      # B=256, dz=10, dx=64, du=16
    python benchmarks/bench_mcl_diagnostics.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_mcl_step import add_shape_args, build  # noqa: E402
from benchmarks.common import (add_device_args, add_paired_args, append_rows, paired_times,  # noqa: E402
                               print_table, setup_device)
from mclcore.losses.diagnostics import gradient_norms, readout  # noqa: E402

EVERY = (1, 10, 50)


def setup(B, dz, dx, du, device, lam):
    """Model, inputs, optimizer and the losses of one step (host MSE, lam * L_MCL) for a given state."""
    G, mcl, z, u, params = build(B, dz, dx, du, device, torch.float32)
    target = torch.randn(B, dx, device=device, generator=torch.Generator(device).manual_seed(1))
    opt = torch.optim.Adam(params, lr=1e-4)

    def losses():
        return F.mse_loss(G(z, u), target), lam * mcl(G, z, u)

    def diagnose(host, term):
        return readout(mcl, G, z, u), gradient_norms(term, host, list(G.parameters()))

    def step(diag: bool, update: bool = True):
        opt.zero_grad(set_to_none=True)
        host, term = losses()
        if diag:
            diagnose(host, term)
        (host + term).backward()
        if update:
            opt.step()

    return G, mcl, z, u, params, losses, step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    ap.add_argument("--lam", type=float, default=1.0, help="MCL weight lambda (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    add_paired_args(ap, reps_help="timed steps per round")
    add_device_args(ap)
    args = ap.parse_args(argv)
    backend = setup_device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.reps, args.rounds = [32], 3, 1
    rows = []
    for B in args.batch:
        shape = (B, args.dz, args.dx, args.du, args.device, args.lam)
        # diagnostics must not change the step: same state, gradients with and without them
        grads = []
        for diag in (False, True):
            _, _, _, _, p, _, step = setup(*shape)
            step(diag, update=False)
            grads.append([q.grad for q in p])
        diff = max(((a - b).abs().max().item() if a is not None else 0.0) for a, b in zip(*grads))
        # the two steps train one model (alternating); readout / gradient_norms alone run on an untouched copy
        _, _, _, _, _, _, step = setup(*shape)
        G2, mcl2, z2, u2, _, losses2, _ = setup(*shape)
        host2, term2 = losses2()
        gp2 = list(G2.parameters())
        fns = [lambda: step(False), lambda: step(True), lambda: readout(mcl2, G2, z2, u2),
               lambda: gradient_norms(term2, host2, gp2)]
        t_step, t_diag, t_ro, t_gn = paired_times(fns, device=args.device, rounds=args.rounds, reps=args.reps)
        base = dict(case="mcl_diagnostics", B=B, dz=args.dz, dx=args.dx, du=args.du, dtype="float32", lam=args.lam,
                    threads=torch.get_num_threads(), max_abs_grad_diff=diff,
                    **({"backend": backend} if args.device == "cuda" else {}))
        for what, t, extra in (("step", t_step, None), ("diagnostic_step", t_diag, t_diag - t_step),
                               ("readout", t_ro, t_ro), ("gradient_norms", t_gn, t_gn)):
            r = dict(base, what=what, ms=t * 1e3)
            if extra is not None:
                r["extra_ms"] = extra * 1e3
                r.update({f"overhead_every_{k}": extra / (k * t_step) for k in EVERY})
            rows.append(r)
        del fns, host2, term2
    print_table(rows, ["B", "what", "ms", "extra_ms", *(f"overhead_every_{k}" for k in EVERY), "max_abs_grad_diff"])
    if not args.quick:
        print("appended to", append_rows("mcl_diagnostics", rows, device=args.device))
        for r in rows:
            if r["B"] == 256 and r["what"] == "diagnostic_step":
                o = r["overhead_every_50"]
                print(f"target diagnostics <= 5% of step time at B = 256, every 50: {100 * o:.2f}% "
                      f"{'met' if o <= 0.05 else 'not met'}")


if __name__ == "__main__":
    main()
