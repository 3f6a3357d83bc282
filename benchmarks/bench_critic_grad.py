"""critic_grad op vs pure autograd (python/critic_grad.py): forward (grad_v c) and forward+backward (the
second-order step to every critic weight), the paper's critic [z, x, u] -> 256 -> 256 -> 1 with GELU.

    python benchmarks/bench_critic_grad.py [--quick]
    python benchmarks/bench_critic_grad.py --device cuda [--backend triton]   # GPU (Triton: the only GPU backend)
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (add_device_args, add_paired_args, append_rows, paired_times,  # noqa: E402
                               peak_extra_bytes, print_table, setup_device)
from mclcore.ops.critic_grad import critic_grad  # noqa: E402
from python.critic_grad import critic_grad as ref_critic_grad  # noqa: E402
from python.critic_grad import sample_inputs  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--dv", type=int, default=10 + 64 + 16)
    ap.add_argument("--hidden", type=int, default=256)
    add_paired_args(ap)
    add_device_args(ap)
    args = ap.parse_args(argv)
    backend = setup_device(args)
    dev = args.device
    if args.quick:
        args.batch, args.reps, args.rounds = [32], 3, 1
    rows = []
    for B in args.batch:
        inputs = sample_inputs(B, args.dv, hidden=(args.hidden, args.hidden), bias_std=0.0, dtype=torch.float32,
                               device=dev, requires_grad=True)
        v, ws, bs, _ = inputs
        up = torch.randn(B, args.dv, generator=torch.Generator().manual_seed(1)).to(dev)
        params = inputs.tensors()

        def fwd(fn):
            with torch.no_grad():
                return fn(v.detach(), [w.detach() for w in ws], [b.detach() for b in bs])

        def full(fn):
            out = fn(v, ws, bs)
            return torch.autograd.grad((out * up).sum(), params, allow_unused=True)

        for phase, run in (("forward", fwd), ("forward+backward", full)):
            if phase == "forward":
                # autograd needs grad mode for the input gradient even when nothing is trained
                t_op, t_ref = paired_times([lambda: fwd(critic_grad),
                                            lambda: ref_critic_grad(v, ws, bs, create_graph=False)],
                                           rounds=args.rounds, reps=args.reps, device=dev)
            else:
                t_op, t_ref = paired_times([lambda: full(critic_grad), lambda: full(ref_critic_grad)],
                                           rounds=args.rounds, reps=args.reps, device=dev)
            m_op = peak_extra_bytes(lambda: full(critic_grad), device=dev)
            m_ref = peak_extra_bytes(lambda: full(ref_critic_grad), device=dev)
            r = dict(op="critic_grad", phase=phase, B=B, dv=args.dv, hidden=args.hidden, dtype="float32",
                     op_ms=t_op * 1e3, ref_ms=t_ref * 1e3, speedup=t_ref / t_op,
                     op_peak_mib=m_op / 2**20, ref_peak_mib=m_ref / 2**20)
            if dev == "cuda":
                r["backend"] = backend
            rows.append(r)
    print_table(rows, ["phase", "B", "op_ms", "ref_ms", "speedup", "op_peak_mib", "ref_peak_mib"])
    if not args.quick:
        print("appended to", append_rows("critic_grad", rows, device=dev))


if __name__ == "__main__":
    main()
