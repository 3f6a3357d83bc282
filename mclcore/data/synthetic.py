"""Synthetic identifiability data: the paper's GMD process (App. D.3) and iVAE's LRD process, on one footing.

Both processes share the alphabet of conditions, the mixing network and the noise, and differ only in *where* u
acts, so each identifiability principle can be tested on the other's home ground (paper §2, §5.1):

* ``"gmd"`` (generating mechanism diversity, the paper's App. D.3 / docs/DESIGN.md §3)::

      u ~ Uniform{u^(1), ..., u^(|U|)},  u^(n) ~ N(0, I_16) drawn once
      z ~ N(0, I_dz)                     independent of u  (the GMD assumption z ⟂ u)
      x = h(z * m(u) + b(u)) + eps,      eps ~ N(0, noise_var I)

  with :class:`~mclcore.models.generators.GMDGenerator` (m, b two-layer leaky-ReLU MLPs of u, scale
  ``exp(tanh(m(u)))``; h a 3-layer invertible MLP ``dz -> w -> w -> w``, ``w = max(64, 4 dz)``).
* ``"lrd"`` (latent distribution diversity, the iVAE simulation of Khemakhem et al. 2020)::

      z | u^(n) ~ N(mu_n, diag(s_n^2)),  mu_n ~ U(-mean_bound, mean_bound)^dz,  s_n ~ U(0.5, 3)^dz
      x = h(z) + eps                     (fixed mixing: u never touches the generator)

  ``s_n ~ U(0.5, 3)`` is iVAE's ``var_bounds`` (their code multiplies N(0, 1) sources by it, so it is a standard
  deviation). iVAE draws the means from U(-5, 5) when ``uncentered``; we default to ``mean_bound = 2`` so the
  latents sit on the same scale as the GMD process's ``y = z * m(u) + b(u)`` (``m`` in [1/e, e], ``|b| ~ 1``)
  and h sees comparable inputs in both processes. ``mean_bound = 0`` (iVAE's centered default) modulates only the
  variances; then the LRD vector ``(-(z - mu)/s^2, -1/s^2)`` has rank <= dz and Assumption 1 cannot hold.

Mixing family (``mixing``): ``"leaky_relu"`` (the paper's, slope 0.2; piecewise linear, so the GMD certificate of
the true generator reports it degenerate: V(z,u) = 0 almost everywhere), ``"smooth_leaky"`` (``0.2 x + 0.8
softplus(x)``, under which Theorem 1's regularity holds), both with iVAE/TCL well-conditioned layers (entries
U(-1, 1), unit-norm rows, condition number below the 25th percentile), or ``"orthonormal"``: the same leaky ReLU
(0.2) with Haar-random orthonormal layers instead (square ``w x w`` layers orthogonal, the first ``w x dz`` layer
with orthonormal columns), drawn from their own stream; m, b and the alphabet are then those of ``"leaky_relu"``
for the same seed, so only h changes.

Modulation axes of the GMD process (ignored by LRD, whose FiLM maps are zero): ``modulation_range`` r bounds the
log-scale, ``m(u) = exp(r tanh(.))`` in ``[e^-r, e^r]`` (default 1, the paper's ``[1/e, e]``; 0 switches the
scale off), and ``shift_scale`` multiplies the shift ``b(u)`` (default 1; 0 switches it off). The defaults draw
exactly the data of the code before these axes existed (tested bit for bit).

Everything is drawn from seeds derived from ``seed`` (the generator's weights and alphabet, the LRD prior, the
samples and the noise each from their own stream); the global RNG is never touched. Samples are i.i.d., so the
split is positional: the first ``1 - test_frac`` of the rows are the training split, the rest the test split
(the paper's 80/20).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn

from mclcore.models.generators import FiLMGenerator, GMDGenerator

__all__ = ["PROCESSES", "MIXINGS", "SyntheticData", "make_gmd", "make_lrd", "make_dataset", "derive_seed"]

PROCESSES = ("gmd", "lrd")
MIXINGS = ("leaky_relu", "smooth_leaky", "orthonormal")

# Stream tags for derive_seed: one independent random stream per purpose.
_GEN, _SAMPLE, _PRIOR, _ORTHO = 1, 2, 3, 4


def derive_seed(seed: int, *tags: int) -> int:
    """A 63-bit seed for the stream ``(seed, *tags)`` (numpy SeedSequence: distinct tags give independent
    streams, so e.g. the generator's weights and the samples never reuse the same random numbers)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    state = np.random.SeedSequence([int(seed), *map(int, tags)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class _Zero(nn.Module):
    """(B, du) -> (B, dz) zeros: the FiLM maps of a generator that ignores u (scale exp(tanh 0) = 1, shift 0)."""

    def __init__(self, dz: int):
        super().__init__()
        self.dz = int(dz)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u.new_zeros(u.shape[0], self.dz)


@dataclasses.dataclass
class SyntheticData:
    """One simulated dataset.

    Attributes:
        process: ``"gmd"`` or ``"lrd"``.
        z: (N, dz) true latents. u: (N, du) conditions. u_index: (N,) int64 index into ``alphabet``.
        x: (N, dx) observations (with noise). x_clean: (N, dx) noiseless ``g(z, u)``.
        alphabet: (|U|, du) the conditions u^(n).
        n_train: the first ``n_train`` rows are the training split, the rest the test split.
        generator: the true ``x = G(z, u)`` as a FiLM generator (``G.h``, ``G.film(u)``), usable by
            :func:`mclcore.mechanism.certify`; for ``"lrd"`` its FiLM maps are zero (u is ignored).
        prior_mean, prior_std: (|U|, dz) the conditional prior N(mu_n, diag s_n^2) (zeros / ones for ``"gmd"``,
            where p(z | u) = N(0, I)).
        seed: the seed everything was derived from.
    """

    process: str
    z: torch.Tensor
    u: torch.Tensor
    u_index: torch.Tensor
    x: torch.Tensor
    x_clean: torch.Tensor
    alphabet: torch.Tensor
    n_train: int
    generator: FiLMGenerator
    prior_mean: torch.Tensor
    prior_std: torch.Tensor
    seed: int

    @property
    def dz(self) -> int:
        return self.z.shape[1]

    @property
    def dx(self) -> int:
        return self.x.shape[1]

    @property
    def du(self) -> int:
        return self.u.shape[1]

    @property
    def n_alphabet(self) -> int:
        return self.alphabet.shape[0]

    def snr(self, noise_var: float) -> float:
        """Signal-to-noise ratio ``mean_j var(x_clean[:, j]) / noise_var`` over all rows (inf for noise_var = 0)."""
        signal = float(self.x_clean.double().var(dim=0).mean())
        return signal / noise_var if noise_var > 0 else math.inf

    def u_blind(self, rows: slice | None = None) -> torch.Tensor:
        """``y = z * m(u) + b(u)`` (float64, (N, dz)) from the true generator's FiLM maps: the most a model whose
        encoder or decoder cannot undo the u-dependent affine map can recover (``y = z`` for ``"lrd"``)."""
        sl = slice(None) if rows is None else rows
        with torch.no_grad():
            scale, shift = self.generator.film(self.u[sl])
        return self.z[sl].double() * scale.double() + shift.double()

    def split(self, name: str) -> dict[str, torch.Tensor]:
        """``"train"`` or ``"test"``: dict of ``z, u, u_index, x`` restricted to that split."""
        if name == "train":
            sl = slice(0, self.n_train)
        elif name == "test":
            sl = slice(self.n_train, None)
        else:
            raise ValueError(f"name: expected 'train' or 'test', got {name!r}")
        return {"z": self.z[sl], "u": self.u[sl], "u_index": self.u_index[sl], "x": self.x[sl]}

    def log_prior(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``log p(z | u)`` (B,) of the true prior for z (B, dz), u (B, du) rows of the alphabet (the LRD
        certificate's input, :func:`mclcore.mechanism.certify_lrd`). u is matched to its nearest alphabet row."""
        alphabet = self.alphabet.to(u.dtype)
        idx = torch.cdist(u, alphabet).argmin(dim=1)                       # (B,)
        mean, std = self.prior_mean.to(z.dtype)[idx], self.prior_std.to(z.dtype)[idx]  # (B, dz)
        return (-0.5 * ((z - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(dim=1)


def _check(n: int, dz: int, n_alphabet: int, du: int, noise_var: float, test_frac: float, mixing: str,
           modulation_range: float = 1.0, shift_scale: float = 1.0):
    for name, v, lo in (("n", n, 2), ("dz", dz, 1), ("n_alphabet", n_alphabet, 1), ("du", du, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    if not (isinstance(noise_var, (int, float)) and math.isfinite(noise_var) and noise_var >= 0):
        raise ValueError(f"noise_var: expected a finite number >= 0, got {noise_var!r}")
    if not (isinstance(test_frac, (int, float)) and 0 < test_frac < 1):
        raise ValueError(f"test_frac: expected a number in (0, 1), got {test_frac!r}")
    n_test = int(round(n * test_frac))
    if n_test < 2 or n - n_test < 2:
        raise ValueError(f"n: {n} samples with test_frac = {test_frac} leave fewer than 2 rows in a split")
    if mixing not in MIXINGS:
        raise ValueError(f"mixing: expected one of {MIXINGS}, got {mixing!r}")
    for name, v in (("modulation_range", modulation_range), ("shift_scale", shift_scale)):
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    return n - n_test


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A Haar-random (rows x cols) matrix with orthonormal columns (rows >= cols): the first cols columns of the Q
    of a Gaussian matrix's QR, signs fixed by R's diagonal."""
    q, r = torch.linalg.qr(torch.randn(rows, rows, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q[:, :cols]


def _generator(dz, n_alphabet, du, mixing, noise_var, seed, modulation_range: float = 1.0,
               shift_scale: float = 1.0) -> GMDGenerator:
    # GMDGenerator draws its weights from its own seeded generator, but building its nn.Linear layers first runs
    # PyTorch's default init, which advances the global RNG; fork_rng keeps the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        G = GMDGenerator(dz, n_alphabet=n_alphabet, du=du,
                         activation="leaky_relu" if mixing == "orthonormal" else mixing,
                         seed=derive_seed(seed, _GEN), noise_std=math.sqrt(noise_var))
    if mixing == "orthonormal":        # replace h's well-conditioned layers; m, b, alphabet stay leaky_relu's
        go = torch.Generator().manual_seed(derive_seed(seed, _ORTHO))
        with torch.no_grad():
            for lin in (mod for mod in G.h if isinstance(mod, nn.Linear)):
                fan_out, fan_in = lin.weight.shape
                lin.weight.copy_(_orthonormal(fan_out, fan_in, go))
    if modulation_range != 1.0:        # scale = exp(r tanh(m(u))): FiLMGenerator's scale_bound
        G.scale_bound = float(modulation_range)
    if shift_scale != 1.0:             # b(u) -> shift_scale * b(u): its last layer is linear, scale it
        last = [mod for mod in G.b if isinstance(mod, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(shift_scale)
            last.bias.mul_(shift_scale)
    return G


def make_gmd(dz: int, n_alphabet: int = 8, *, n: int = 50_000, du: int = 16, noise_var: float = 0.01,
             mixing: str = "leaky_relu", test_frac: float = 0.2, seed: int = 0, modulation_range: float = 1.0,
             shift_scale: float = 1.0) -> SyntheticData:
    """The GMD process of App. D.3: z ~ N(0, I) independent of u, ``x = h(z * m(u) + b(u)) + eps``.

    Args:
        dz: latent dimension (paper: 5, 10, 20). n_alphabet: |U| (paper: 2..32, default 8).
        n: number of samples (paper: 50,000). du: condition dimension (16). noise_var: variance of eps (0.01).
        mixing: ``"leaky_relu"`` (paper), ``"smooth_leaky"`` or ``"orthonormal"`` (module doc).
        test_frac: test fraction (0.2). seed: everything (generator weights, alphabet, samples, noise) derives from it.
        modulation_range: r in ``m(u) = exp(r tanh(.))`` (1: the paper's [1/e, e]). shift_scale: factor on b(u) (1).

    Returns:
        :class:`SyntheticData` with x of dimension ``max(64, 4 dz)``.
    """
    n_train = _check(n, dz, n_alphabet, du, noise_var, test_frac, mixing, modulation_range, shift_scale)
    G = _generator(dz, n_alphabet, du, mixing, noise_var, seed, modulation_range, shift_scale)
    s = G.sample(n, seed=derive_seed(seed, _SAMPLE))  # z (n, dz), u_index (n,), u (n, du), x_clean, x (n, dx)
    return SyntheticData("gmd", s["z"], s["u"], s["u_index"], s["x"], s["x_clean"], G.alphabet.clone(), n_train,
                         G, torch.zeros(n_alphabet, dz), torch.ones(n_alphabet, dz), int(seed))


def make_lrd(dz: int, n_alphabet: int = 8, *, n: int = 50_000, du: int = 16, noise_var: float = 0.01,
             mixing: str = "leaky_relu", test_frac: float = 0.2, seed: int = 0, mean_bound: float = 2.0,
             std_bounds: tuple[float, float] = (0.5, 3.0)) -> SyntheticData:
    """The LRD process of iVAE: ``z | u^(n) ~ N(mu_n, diag s_n^2)``, ``x = h(z) + eps`` with a fixed mixing h.

    h is the same network class as in :func:`make_gmd` (drawn the same way from ``seed``); u shifts only p(z|u).
    Args as :func:`make_gmd`, plus ``mean_bound`` (mu_n ~ U(-mean_bound, mean_bound)) and ``std_bounds``
    (s_n ~ U(*std_bounds), iVAE's (0.5, 3)).
    """
    n_train = _check(n, dz, n_alphabet, du, noise_var, test_frac, mixing)
    if not (math.isfinite(mean_bound) and mean_bound >= 0):
        raise ValueError(f"mean_bound: expected a finite number >= 0, got {mean_bound!r}")
    lo, hi = std_bounds
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"std_bounds: expected 0 < low <= high, got {std_bounds!r}")
    G = _generator(dz, n_alphabet, du, mixing, noise_var, seed)
    mixing_only = FiLMGenerator(G.h, _Zero(dz), _Zero(dz))                 # x = h(z): u never reaches it
    gp = torch.Generator().manual_seed(derive_seed(seed, _PRIOR))
    mean = (torch.rand(n_alphabet, dz, generator=gp, dtype=torch.float64) * 2 - 1) * mean_bound
    std = lo + (hi - lo) * torch.rand(n_alphabet, dz, generator=gp, dtype=torch.float64)
    gs = torch.Generator().manual_seed(derive_seed(seed, _SAMPLE))
    u_index = torch.randint(n_alphabet, (n,), generator=gs)                # (n,)
    eps_z = torch.randn(n, dz, generator=gs, dtype=torch.float64)
    z = (mean[u_index] + std[u_index] * eps_z).float()                     # (n, dz)
    u = G.alphabet[u_index]                                                # (n, du)
    with torch.no_grad():
        x_clean = mixing_only(z, u)                                        # (n, dx)
    x = x_clean + math.sqrt(noise_var) * torch.randn(x_clean.shape, generator=gs, dtype=torch.float64).float()
    return SyntheticData("lrd", z, u, u_index, x, x_clean, G.alphabet.clone(), n_train, mixing_only,
                         mean.float(), std.float(), int(seed))


def make_dataset(process: str, dz: int, n_alphabet: int = 8, **kwargs) -> SyntheticData:
    """``make_gmd`` or ``make_lrd`` by name (``process`` in ``PROCESSES``); LRD-only keyword arguments
    (``mean_bound``, ``std_bounds``) are ignored for ``"gmd"``, GMD-only ones (``modulation_range``,
    ``shift_scale``: LRD's FiLM maps are zero) for ``"lrd"``."""
    if process == "gmd":
        kwargs.pop("mean_bound", None)
        kwargs.pop("std_bounds", None)
        return make_gmd(dz, n_alphabet, **kwargs)
    if process == "lrd":
        kwargs.pop("modulation_range", None)
        kwargs.pop("shift_scale", None)
        return make_lrd(dz, n_alphabet, **kwargs)
    raise ValueError(f"process: expected one of {PROCESSES}, got {process!r}")
