"""Maximum Mean Discrepancy (MMD) between two samples, stacked over a member axis, and prior samplers.

The "programmable prior" principle (Fruytier et al. 2025, "Sculpting latent spaces with MMD"): instead of the
per-sample KL of a VAE, which need not make the *aggregate* posterior match the prior, penalise a two-sample
distance between a batch of latent codes (samples of the aggregate posterior q(z)) and samples of the chosen prior
p(z). The prior is "programmable": anything one can sample from. The distance is the squared MMD with kernel k::

    MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y),        x, x' ~ P,  y, y' ~ Q

estimated without bias (Gretton et al. 2012, Lemma 6) from x (n rows) and y (m rows)::

    MMD_u^2 = 1/(n(n-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j) - 2/(n m) sum_{i,j} k(x_i, y_j)

(the diagonal terms k(x_i, x_i) are left out, so the estimate can be slightly negative when P = Q; its expectation
is exactly MMD^2, tested). Kernels of d = |a - b|^2:

* ``"rbf"``: a mixture of Gaussian kernels ``sum_s exp(-d / (2 s^2))`` over the bandwidths ``s`` (default
  ``RBF_BANDWIDTHS``: a mixture covers several scales at once, so no single bandwidth has to be tuned; for unit
  variance priors the distances between samples are ~ sqrt(2 dz)).
* ``"imq"``: inverse multiquadrics ``sum_s C_s / (C_s + d)`` with ``C_s = s * 2 dz sigma^2`` (the WAE paper's
  choice, Tolstikhin et al. 2018: C = 2 dz sigma^2 is the expected squared distance of two samples of the prior
  N(0, sigma^2 I_dz), and a sum over scales ``s`` in ``IMQ_SCALES``); ``sigma2`` is the prior variance (1).
  Heavier tails than the RBF, so far-apart samples keep a gradient.

Shapes: x (n, d) and y (m, d) give a scalar; x (M, n, d) and y (M, m, d) give (M,), member m's MMD from its own
rows only (the members of a stacked model never interact).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["mmd", "KERNELS", "PRIORS", "RBF_BANDWIDTHS", "IMQ_SCALES", "sample_prior", "kernel_matrix"]

KERNELS = ("rbf", "imq")
PRIORS = ("gaussian", "laplace", "uniform")
RBF_BANDWIDTHS = (0.5, 1.0, 2.0, 4.0)
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., n, m) squared distances, from |a|^2 + |b|^2 - 2 a.b (clamped at 0 against rounding)."""
    aa = a.pow(2).sum(-1, keepdim=True)                                   # (..., n, 1)
    bb = b.pow(2).sum(-1, keepdim=True).transpose(-1, -2)                 # (..., 1, m)
    return (aa + bb - 2.0 * a @ b.transpose(-1, -2)).clamp_min(0.0)


def kernel_matrix(a: torch.Tensor, b: torch.Tensor, kernel: str = "rbf", *,
                  bandwidths: Sequence[float] = RBF_BANDWIDTHS, scales: Sequence[float] = IMQ_SCALES,
                  sigma2: float = 1.0) -> torch.Tensor:
    """k(a_i, b_j) as an (..., n, m) matrix for a (..., n, d), b (..., m, d) (see the module doc)."""
    d2 = _sq_dists(a, b)
    if kernel == "rbf":
        return sum(torch.exp(d2 * (-0.5 / (s * s))) for s in bandwidths)
    base = 2.0 * a.shape[-1] * sigma2
    return sum((s * base) / (s * base + d2) for s in scales)


def _check(kernel, bandwidths, scales, sigma2) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    for name, vals in (("bandwidths", bandwidths), ("scales", scales)):
        if len(vals) == 0 or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                 or v <= 0 for v in vals):
            raise ValueError(f"{name}: expected a non-empty list of positive finite numbers, got {list(vals)!r}")
    if isinstance(sigma2, bool) or not isinstance(sigma2, (int, float)) or not math.isfinite(sigma2) or sigma2 <= 0:
        raise ValueError(f"sigma2: expected a positive finite number, got {sigma2!r}")


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "rbf", *, bandwidths: Sequence[float] = RBF_BANDWIDTHS,
        scales: Sequence[float] = IMQ_SCALES, sigma2: float = 1.0) -> torch.Tensor:
    """Unbiased squared MMD between the rows of ``x`` and of ``y`` (module doc): (n, d), (m, d) -> scalar;
    (M, n, d), (M, m, d) -> (M,). Differentiable in both inputs.

    Args:
        kernel: ``"rbf"`` (mixture over ``bandwidths``) or ``"imq"`` (sum over ``scales`` of
            ``C = scale * 2 d sigma2``).
        sigma2: the prior variance in the IMQ's C (ignored by ``"rbf"``).
    """
    _check(kernel, bandwidths, scales, sigma2)
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3) or not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating tensor (n, d) or (M, n, d), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if x.dim() != y.dim() or x.shape[-1] != y.shape[-1] or (x.dim() == 3 and x.shape[0] != y.shape[0]):
        raise ValueError(f"y: expected the member axis and feature size of x {tuple(x.shape)}, got {tuple(y.shape)}")
    n, m = x.shape[-2], y.shape[-2]
    if n < 2 or m < 2:
        raise ValueError(f"x: the unbiased estimator needs at least 2 rows in each sample, got n = {n}, m = {m}")
    kw = dict(bandwidths=bandwidths, scales=scales, sigma2=sigma2)
    kxx, kyy = kernel_matrix(x, x, kernel, **kw), kernel_matrix(y, y, kernel, **kw)
    kxy = kernel_matrix(x, y, kernel, **kw)
    # Off-diagonal sums: the whole sum minus the trace (k(a, a) is the kernel at distance 0, but the rounding of
    # _sq_dists makes the computed diagonal differ from it slightly, so subtract the computed one).
    sxx = kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)
    syy = kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * kxy.sum((-1, -2)) / (n * m)


def sample_prior(prior: str, shape: Sequence[int], generator: torch.Generator | None = None,
                 dtype=torch.float32) -> torch.Tensor:
    """Samples of a factorised prior with mean 0 and unit variance per coordinate: ``"gaussian"`` N(0, 1),
    ``"laplace"`` (scale 1/sqrt 2), ``"uniform"`` U(-sqrt 3, sqrt 3). One ``torch.rand``/``randn`` call on
    ``generator``, so the stream it consumes is fixed by ``shape`` alone."""
    if prior == "gaussian":
        return torch.randn(*shape, generator=generator, dtype=dtype)
    if prior == "uniform":
        return (torch.rand(*shape, generator=generator, dtype=dtype) * 2 - 1) * math.sqrt(3.0)
    if prior == "laplace":
        # inverse CDF of Laplace(0, b), b = 1/sqrt(2) (variance 2 b^2 = 1); u in (-1/2, 1/2), kept off +-1/2
        u = torch.rand(*shape, generator=generator, dtype=dtype).clamp(1e-7, 1 - 1e-7) - 0.5
        return -math.sqrt(0.5) * u.sign() * torch.log1p(-2 * u.abs())
    raise ValueError(f"prior: expected one of {PRIORS}, got {prior!r}")
