"""How much does the MCL term push the MD-VAE decoder? Gradient norms of -ELBO and L_MCL on the decoder weights.

    python experiments/synthetic/mcl_gradient_scale.py                     # dz 5, |U| 8, critic sees u
    python experiments/synthetic/mcl_gradient_scale.py --no-critic-u       # critic c(x, z) without u

Trains one MD-VAE + lambda * MCL (the trainer's model and loss, one seed) for ``--steps`` steps on the GMD
process and prints, every ``--every`` steps, -ELBO, L_MCL and the L2 norms of their gradients with respect to the
decoder's weights (before lambda). Used in experiments/synthetic/README.md to explain why MD-VAE+MCL matches
MD-VAE at lambda in [0.01, 0.1].
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

import mclcore  # noqa: E402
from mclcore.data.synthetic import make_gmd  # noqa: E402
from mclcore.models.vae import StackedVAE  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dz", type=int, default=5)
    p.add_argument("--alphabet", type=int, default=8)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--lam", type=float, default=0.1, help="lambda_MCL used for the training steps")
    p.add_argument("--critic-u", action=argparse.BooleanOptionalAction, default=True,
                   help="the critic sees u (the paper's c(x, z, u)); --no-critic-u: c(x, z)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = make_gmd(args.dz, args.alphabet, n=args.n, seed=args.seed)
    n_train, dz, dx, du = data.n_train, args.dz, data.dx, data.du
    vae = StackedVAE("mdvae", dx, du, dz, [args.seed])
    torch.manual_seed(args.seed)
    mcl = mclcore.MCL(dz, dx, du if args.critic_u else 0, u_key_dim=du, multi_positive=True)
    opt = torch.optim.Adam([*vae.parameters(), *mcl.parameters()], lr=1e-3)
    decoder = list(vae.decoder.parameters())
    g = torch.Generator().manual_seed(args.seed)
    print(f"{'step':>5} {'-ELBO':>10} {'L_MCL':>8} {'|grad_dec -ELBO|':>17} {'|grad_dec L_MCL|':>17} {'ratio':>9}")
    for step in range(args.steps + 1):
        i = torch.randint(0, n_train, (256,), generator=g)
        x, u, groups = data.x[i][None], data.u[i][None], data.u_index[i]       # (1, B, dx), (1, B, du), (B,)
        out = vae(x, u, torch.randn(1, 256, dz, generator=g))
        G = vae.decoder_member(0)
        if args.critic_u:
            l_mcl = mcl(G, out["z"][0], u[0], groups=groups)
        else:
            l_mcl = mcl(lambda z, _: G(z, u[0]), out["z"][0], u[0].new_zeros(256, 0), u_key=u[0], groups=groups)
        if step % args.every == 0:
            ge = torch.autograd.grad(out["loss"].sum(), decoder, retain_graph=True)
            gm = torch.autograd.grad(l_mcl, decoder, retain_graph=True)
            ne = torch.sqrt(sum((t ** 2).sum() for t in ge)).item()
            nm = torch.sqrt(sum((t ** 2).sum() for t in gm)).item()
            print(f"{step:>5} {out['loss'].item():>10.2f} {l_mcl.item():>8.4f} {ne:>17.4g} {nm:>17.4g} "
                  f"{nm / ne:>9.2g}", flush=True)
        opt.zero_grad()
        (out["loss"].sum() + args.lam * l_mcl).backward()
        opt.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
