"""``mcl certify``: check the sufficient-GMD condition (Assumption 2) of a generator and plot its margin.

    mcl certify --synthetic --dz 10 --alphabet 32 --seed 0                  # the paper's App. D.3 generator
    mcl certify --synthetic --dz 10 --alphabet 32 --activation smooth_leaky  # its smooth variant
    mcl certify model.pt --alphabet-file U.pt                               # a saved generator

A saved model is a file written by ``torch.save(generator)`` (the whole ``nn.Module``, called as ``G(z, u)``);
loading it unpickles Python objects, so only load files you trust. Its alphabet is, in order: ``--alphabet-file``
(a tensor (|U|, du) saved with ``torch.save``), the model's ``alphabet`` attribute, or ``--alphabet`` conditions
drawn from N(0, I_du) (``--du`` or the model's ``du``). Latents: ``--n-z`` draws from N(0, I_dz).

Prints the certificate (per-latent rank of the contrast matrix, sigma_min/sigma_max, pass fraction, reasons) and
writes a histogram of log10(sigma_min/sigma_max) to ``--out``. Exit status 0 when the assumption holds at every
latent checked, 1 when it does not, 2 on bad input.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a generator saved with torch.save(module); omit with --synthetic")
    p.add_argument("--synthetic", action="store_true", help="use the paper's synthetic GMD generator (App. D.3)")
    p.add_argument("--dz", type=int, default=None, help="latent dimension (default 10 with --synthetic, else the "
                                                        "model's dz attribute)")
    p.add_argument("--alphabet", type=int, default=None,
                   help="number of conditions |U| (default 32 with --synthetic; for a saved model without an "
                        "alphabet, this many draws from N(0, I_du))")
    p.add_argument("--alphabet-file", default=None, help="tensor (|U|, du) of conditions saved with torch.save")
    p.add_argument("--du", type=int, default=None, help="condition dimension for drawn alphabets (default: the "
                                                        "model's du, 16 with --synthetic)")
    p.add_argument("--activation", default="leaky_relu", choices=("leaky_relu", "smooth_leaky"),
                   help="activation of the synthetic generator: the paper's leaky_relu (piecewise linear, so "
                        "degenerate) or smooth_leaky 0.2x + 0.8 softplus(x)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic generator, the drawn alphabet and z")
    p.add_argument("--n-z", type=int, default=256, help="number of latents z ~ N(0, I) to check (default 256)")
    p.add_argument("--rtol", type=float, default=1e-6, help="numerical-rank threshold sigma_k > rtol * sigma_max")
    p.add_argument("--out", default="certify_sigma_ratio.png", help="histogram PNG path")
    p.add_argument("--batch-size", type=int, default=4096, help="(z, u) pairs per call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fail(msg: str) -> int:
    print(f"mcl certify: error: {msg}", file=sys.stderr)
    return 2


def _load(args):
    """(generator, dz, alphabet, description) from the arguments, or raise ValueError."""
    from mclcore.models.generators import GMDGenerator

    if args.synthetic:
        if args.model:
            raise ValueError("give either a model file or --synthetic, not both")
        dz = 10 if args.dz is None else args.dz
        n = 32 if args.alphabet is None else args.alphabet
        G = GMDGenerator(dz, n_alphabet=n, du=16 if args.du is None else args.du, activation=args.activation,
                         seed=args.seed)
        return G, dz, G.alphabet, f"synthetic GMD generator (App. D.3): {G.extra_repr()}"
    if not args.model:
        raise ValueError("give a model file (saved with torch.save(generator)) or --synthetic")
    if not os.path.exists(args.model):
        raise ValueError(f"model: no such file {args.model!r}")
    try:
        G = torch.load(args.model, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - pickle and zip errors of a damaged file take many forms
        raise ValueError(f"model: {args.model!r} is not a readable torch.save file ({type(err).__name__}: {err})") \
            from None
    if not isinstance(G, torch.nn.Module):
        raise ValueError(f"model: {args.model!r} holds a {type(G).__name__}, expected a whole nn.Module saved "
                         f"with torch.save(generator) (not a state_dict)")
    G.eval()
    dz = args.dz if args.dz is not None else getattr(G, "dz", None)
    if dz is None:
        raise ValueError("--dz: the model has no 'dz' attribute, so give the latent dimension")
    if args.alphabet_file:
        try:
            alphabet = torch.load(args.alphabet_file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"--alphabet-file: {args.alphabet_file!r} is not a readable tensor file "
                             f"({type(err).__name__}: {err})") from None
        if not isinstance(alphabet, torch.Tensor) or alphabet.dim() != 2:
            raise ValueError(f"--alphabet-file: expected a tensor of shape (|U|, du), got "
                             f"{getattr(alphabet, 'shape', type(alphabet).__name__)}")
    elif isinstance(getattr(G, "alphabet", None), torch.Tensor):
        alphabet = G.alphabet
    else:
        du = args.du if args.du is not None else getattr(G, "du", None)
        if du is None:
            raise ValueError("--du: the model has no alphabet or 'du' attribute; give --alphabet-file or --du")
        n = 32 if args.alphabet is None else args.alphabet
        alphabet = torch.randn(n, du, generator=torch.Generator().manual_seed(args.seed))
    return G, int(dz), alphabet, f"{type(G).__name__} from {args.model}"


def write_histogram(cert, path: str, title: str) -> None:
    """Histogram of log10(sigma_min/sigma_max) per latent (zero ratios drawn at the left edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = cert.ratio[torch.isfinite(cert.ratio)].double()
    floor = -17.0  # log10 of a ratio of 0 (degenerate or too small an alphabet) is drawn here
    vals = torch.where(ratio > 0, ratio.clamp_min(1e-300).log10(), torch.full_like(ratio, floor)).clamp_min(floor)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if vals.numel():
        ax.hist(vals.numpy(), bins=40, color="tab:blue", alpha=0.85)
    ax.axvline(math.log10(cert.rtol), color="tab:red", linestyle="--", label=f"rank threshold rtol = {cert.rtol:g}")
    ax.set_xlabel("log10(sigma_min / sigma_max) of the contrast matrix" + (" (0 drawn at -17)" if
                                                                            bool((ratio == 0).any()) else ""))
    ax.set_ylabel("latents z")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from mclcore.mechanism.certify import certify

    try:
        G, dz, alphabet, what = _load(args)
    except ValueError as err:
        return _fail(str(err))
    if args.n_z < 1:
        return _fail(f"--n-z: expected a positive number of latents, got {args.n_z}")
    z = torch.randn(args.n_z, dz, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    print(f"certifying {what}\n  |U| = {alphabet.shape[0]} conditions, {args.n_z} latents z ~ N(0, I_{dz})")
    try:
        cert = certify(G, z, alphabet.double(), rtol=args.rtol, batch_size=args.batch_size,
                       progress=not args.no_progress)
    except (ValueError, TypeError) as err:
        return _fail(str(err))
    print(cert.summary())
    write_histogram(cert, args.out, f"{cert.assumption}: {100 * cert.pass_fraction:.1f}% of {args.n_z} latents pass")
    print(f"histogram of sigma_min/sigma_max written to {args.out}")
    return 0 if cert.holds else 1
