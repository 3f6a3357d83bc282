"""``mcl demo``: a small conditional generator trained with MCL, printing its losses falling.

Data: a mechanism-diverse process in the spirit of the paper's App. D.3, kept tiny so it runs in about a minute
on a laptop CPU: u uniform over an alphabet of ``--alphabet`` vectors in R^16, z ~ N(0, I_dz) independent of u,
x = h(z * m(u) + b(u)) + noise with m(u) = exp(tanh(A u)) and a smooth random MLP h.
Model: an MD-VAE (encoder q(z | x, u), fixed N(0, I) prior, decoder G(z, u)) with the MCL regulariser:

    loss = recon + KL + lambda * MCL(G, z, u)                    (paper Eq. 1 + section 4.2)

MCL uses the multi-positive InfoNCE here because u takes only ``--alphabet`` values (see mclcore.MCL).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import mclcore


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
    p.add_argument("--dz", type=int, default=4)
    p.add_argument("--alphabet", type=int, default=8, help="number of distinct conditions u")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lam", type=float, default=0.1, help="MCL weight lambda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def mlp(sizes, act=nn.LeakyReLU):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def make_data(n, dz, alphabet, seed, dx=32, du=16):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(alphabet, du, generator=g)
    A, Bm = torch.randn(du, dz, generator=g) / du**0.5, torch.randn(du, dz, generator=g) / du**0.5
    W1, W2 = torch.randn(dz, dx, generator=g) / dz**0.5, torch.randn(dx, dx, generator=g) / dx**0.5
    idx = torch.randint(0, alphabet, (n,), generator=g)
    u = U[idx]
    z = torch.randn(n, dz, generator=g)
    y = z * torch.exp(torch.tanh(u @ A)) + u @ Bm
    x = torch.tanh(torch.tanh(y @ W1) @ W2) + 0.1 * torch.randn(n, dx, generator=g)
    return z, u, x


def _check(args) -> str | None:
    """One line naming the first bad argument, or None."""
    import math

    for flag, value, lo in (("--steps", args.steps, 1), ("--dz", args.dz, 1), ("--alphabet", args.alphabet, 2),
                            ("--batch", args.batch, 2), ("--seed", args.seed, 0)):
        if value < lo:
            return f"{flag}: expected an integer >= {lo}, got {value}"
    if not (math.isfinite(args.lam) and args.lam >= 0):
        return f"--lam: expected a finite number >= 0, got {args.lam}"
    if args.batch > 10_000:
        return f"--batch: expected at most the 10000 training samples, got {args.batch}"
    return None


def run(args) -> int:
    import sys

    from mclcore.metrics import mcc

    why = _check(args)
    if why is None:
        try:
            dev = torch.device(args.device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                why = f"--device: {args.device!r} requested but CUDA is not available on this machine"
        except RuntimeError:
            why = f"--device: expected cpu, cuda or cuda:N, got {args.device!r}"
    if why is not None:
        print(f"mcl demo: {why}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    z_true, u, x = make_data(12_000, args.dz, args.alphabet, args.seed)
    n_train = 10_000
    dx, du, dz = x.shape[1], u.shape[1], args.dz

    encoder = mlp([dx + du, 64, 64, 2 * dz]).to(dev)                    # q(z | x, u): mean, log-variance
    decoder_net = mlp([dz + du, 64, 64, dx]).to(dev)

    def G(z, u):                                                        # (B, dz), (B, du) -> (B, dx)
        return decoder_net(torch.cat([z, u], 1))

    mcl = mclcore.MCL(dz, dx, du, multi_positive=True).to(dev)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder_net.parameters(), *mcl.parameters()], lr=1e-3)

    print(f"mcl demo: MD-VAE + MCL on a synthetic GMD process (dz={dz}, |U|={args.alphabet}, dx={dx}), "
          f"{args.steps} steps of batch {args.batch} on {dev}")
    print(f"{'step':>6} {'recon':>9} {'kl':>8} {'mcl':>8}")
    history, t0 = [], time.time()
    bar = tqdm(range(1, args.steps + 1), desc="training", leave=False)
    for step in bar:
        i = torch.randint(0, n_train, (args.batch,))
        xb, ub = x[i].to(dev), u[i].to(dev)                             # (B, dx), (B, du)
        mu, logvar = encoder(torch.cat([xb, ub], 1)).chunk(2, dim=1)     # (B, dz) each
        zs = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = ((G(zs, ub) - xb) ** 2).sum(1).mean()
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
        l_mcl = mcl(G, zs, ub)
        loss = recon + kl + args.lam * l_mcl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append((recon.item(), kl.item(), l_mcl.item()))
        if step % max(1, args.steps // 10) == 0 or step == 1:
            r, k, m = np.mean(history[-50:], axis=0)
            tqdm.write(f"{step:>6} {r:>9.4f} {k:>8.4f} {m:>8.4f}")

    with torch.no_grad():
        mu, _ = encoder(torch.cat([x[n_train:], u[n_train:]], 1).to(dev)).chunk(2, dim=1)
    first, last = np.mean(history[:20], axis=0), np.mean(history[-20:], axis=0)
    print(f"MCL loss {first[2]:.4f} -> {last[2]:.4f}, reconstruction {first[0]:.4f} -> {last[0]:.4f} "
          f"({time.time() - t0:.1f} s)")
    print(f"MCC of posterior means vs true z on {len(mu)} held-out samples: "
          f"{mcc(z_true[n_train:].double().numpy(), mu.cpu().double().numpy())['mcc.mean']:.3f}")
    return 0
