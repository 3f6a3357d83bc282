"""How much a conditional denoiser uses its condition: the conditioning gap, per range of diffusion time.

A concept encoder (EncDiff, MDDiff) learns only through the denoising loss, and only as far as the denoiser's
prediction depends on the code: where ``eps_theta(x_t, t, c)`` predicts the noise as well from another image's code
as from the image's own, the loss sends the encoder no signal about that image. This measures that dependence,
paired (the same image, ``t`` and noise on both sides):

    err_own(i, t)   = loss(eps_theta(x_t, t, c_i), eps)
    err_other(i, t) = loss(eps_theta(x_t, t, c_j), eps),   j = pi(i), pi a random derangement of the images
    gap             = err_other - err_own          (> 0: the denoiser uses the code; 0: it ignores it)

with ``loss`` the per-image mean squared or absolute error (by default the diffusion's own training loss), ``t``
drawn uniformly inside each of ``buckets`` equal ranges of [0, T). Because the ranges are equal, the mean over buckets
is the gap of the training loss itself (uniform t), and ``rel_gap = gap / err_other`` is the share of the loss a
code-blind denoiser would pay that the code removes.
Intervals: percentile bootstrap over images (:mod:`mclcore.metrics.stats`).

    from mclcore.metrics.conditioning import conditioning_gap
    r = conditioning_gap(model.eps, model.diffusion, z0, model.tokens(s), generator=torch.Generator().manual_seed(0))
    r["all"]["gap"], r["all"]["lo"], r["all"]["hi"], [b["rel_gap"] for b in r["buckets"]]

Another image's code is the counterfactual of choice (not a zero or mean code): it stays on the code distribution the
denoiser was trained on, as the shuffled-action control of the world model does.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mclcore.metrics.stats import summarize

__all__ = ["conditioning_gap", "derangement"]


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) int64 permutation with no fixed point (n >= 2): position p[k] gets p[k + 1] for a random permutation p."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n: a derangement needs at least 2 items, got {n!r}")
    p = torch.randperm(n, generator=generator)
    out = torch.empty_like(p)
    out[p] = p.roll(-1)
    return out


@torch.no_grad()
def conditioning_gap(eps_model: Callable, diffusion, x0: torch.Tensor, context: torch.Tensor, *, buckets: int = 10,
                     other_context: torch.Tensor | None = None, loss: str | None = None,
                     generator: torch.Generator | None = None, batch_size: int = 128, level: float = 0.95) -> dict:
    """The conditioning gap of the module doc.

    Args:
        eps_model: ``(x_t, t, context) -> eps`` (e.g. ``EncDiff.eps``), evaluated without gradients.
        diffusion: a :class:`mclcore.models.diffusion.GaussianDiffusion` (its schedule and ``loss``).
        x0: (N, ...) clean inputs of the diffusion (the first-stage latents), N >= 2.
        context: (N, ...) their conditions (the concept tokens); row i belongs to x0[i].
        buckets: number of equal ranges of t.
        other_context: (N, ...) the counterfactual condition of each row, e.g. the code of an image that differs
            from x0[i]'s in one factor only; default ``context[derangement(N)]`` (another image's).
        loss: ``"mse"`` or ``"l1"``, the per-image error; default the diffusion's own (its training loss). Fix it
            to compare denoisers trained with different losses on one scale: the gaps' ratios depend on it (an L1
            error weighs small errors more than a squared one).
        generator: a CPU generator for t, the noise and the derangement
            (the result is a function of it). batch_size: images per forward pass. level: interval level.

    Returns ``{"n", "loss", "level", "buckets": [{"t_lo", "t_hi", "own", "other", "gap", "lo", "hi",
    "rel_gap"}, ...], "all": {same keys over uniform t}}``; own / other are mean errors, lo / hi the interval of
    the mean gap.
    """
    n = x0.shape[0]
    if context.shape[0] != n:
        raise ValueError(f"context: expected {n} rows (one per x0 row), got {tuple(context.shape)}")
    if n < 2:
        raise ValueError(f"x0: the gap needs at least 2 inputs (one's code against another's), got {n}")
    loss = diffusion.loss if loss is None else loss
    if loss not in ("mse", "l1"):
        raise ValueError(f"loss: expected 'mse' or 'l1' (or None: the diffusion's own), got {loss!r}")
    T = diffusion.num_timesteps
    if not isinstance(buckets, int) or not 1 <= buckets <= T:
        raise ValueError(f"buckets: expected an int in [1, {T}], got {buckets!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    edges = np.linspace(0, T, buckets + 1).round().astype(int)                      # equal ranges [lo, hi)
    if other_context is None:
        other_ctx = context[derangement(n, generator).to(context.device)]
    elif other_context.shape != context.shape:
        raise ValueError(f"other_context: expected the shape of context {tuple(context.shape)}, got "
                         f"{tuple(other_context.shape)}")
    else:
        other_ctx = other_context
    own = np.empty((buckets, n))
    other = np.empty((buckets, n))
    dims = tuple(range(1, x0.ndim))
    for b in range(buckets):
        lo, hi = int(edges[b]), int(edges[b + 1])
        t_all = torch.randint(lo, hi, (n,), generator=generator).to(x0.device)
        noise_all = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        for i in range(0, n, batch_size):
            sl = slice(i, min(i + batch_size, n))
            t, noise = t_all[sl], noise_all[sl]
            x_t = diffusion.q_sample(x0[sl], t, noise)
            for ctx, dst in ((context[sl], own), (other_ctx[sl], other)):
                err = eps_model(x_t, t, ctx).float() - noise.float()
                e = err.abs().mean(dims) if loss == "l1" else err.pow(2).mean(dims)   # (b,)
                dst[b, sl] = e.cpu().double().numpy()
    if not (np.isfinite(own).all() and np.isfinite(other).all()):
        raise ValueError("eps_model: returned NaN or infinite predictions")

    def _row(o: np.ndarray, c: np.ndarray) -> dict:
        s = summarize(c - o, level=level)
        return {"own": float(o.mean()), "other": float(c.mean()), "gap": s["mean"], "lo": s["lo"], "hi": s["hi"],
                "rel_gap": float((c.mean() - o.mean()) / c.mean()) if c.mean() > 0 else float("nan")}

    rows = [{"t_lo": int(edges[b]), "t_hi": int(edges[b + 1]), **_row(own[b], other[b])} for b in range(buckets)]
    return {"n": int(n), "loss": loss, "level": level, "buckets": rows,
            "all": _row(own.mean(0), other.mean(0))}
