"""Conditional generators ``x = g(z, u)`` used to study mechanism diversity (paper §3.2, App. D.3).

* :class:`MLPGenerator`: ``g(z, u) = MLP([z, u])``, u concatenated to z, i.e. u enters as a per-sample bias of the
  first layer. The generic conditional decoder.
* :class:`FiLMGenerator`: ``g(z, u) = h(z * m(u) + b(u))``, u reshapes the mechanism through a per-coordinate
  scale and shift of the latent (FiLM), h an MLP.
* :class:`GMDGenerator`: the paper's synthetic mechanism-diverse generator (App. D.3): a FiLMGenerator with m, b
  two-layer MLPs (width 64, leaky ReLU) of u in R^16, h a 3-layer MLP ``dz -> w -> w -> w`` (``w = max(64, 4 dz)``)
  with iVAE-style well-conditioned layers, plus the alphabet of conditions and a sampler of the dataset.

All of them are plain ``nn.Module``s built from ``nn.Linear`` and activation modules, fully determined by ``seed``
(they never touch the global RNG), and recognised by :func:`mclcore.mechanism.derivatives`, which computes their
mechanism derivatives V(z,u) with the native ``mech_derivs`` op.

Activations by name (:func:`make_activation`): ``tanh, sigmoid, softplus, gelu, silu, smooth_leaky, relu,
leaky_relu``. ``smooth_leaky`` is :class:`SmoothLeakyReLU`, ``a x + (1 - a) softplus(x)``: the smooth stand-in for
the paper's leaky ReLU under which Theorem 1's C^3 regularity holds (a leaky-ReLU generator is piecewise linear, so
its V(z,u) vanishes almost everywhere).
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class SmoothLeakyReLU(nn.Module):
    """``slope * x + (1 - slope) * softplus(x)``: slope ``slope`` as x -> -inf, 1 as x -> +inf, C-infinity.

    With slope 0.2 it is the smooth counterpart of the paper's ``LeakyReLU(0.2)``.
    """

    def __init__(self, slope: float = 0.2):
        super().__init__()
        if not 0.0 <= slope < 1.0:
            raise ValueError(f"slope: expected a number in [0, 1), got {slope!r}")
        self.slope = float(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.slope * x + (1.0 - self.slope) * F.softplus(x)

    def extra_repr(self) -> str:
        return f"slope={self.slope}"


ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "silu", "smooth_leaky", "relu", "leaky_relu")


def make_activation(name: str, param: float | None = None) -> nn.Module:
    """The activation module called ``name``; ``param`` is the slope of (smooth) leaky ReLUs (default 0.2, the
    paper's) or the beta of softplus (default 1)."""
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "softplus":
        return nn.Softplus(beta=1.0 if param is None else float(param))
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    if name == "smooth_leaky":
        return SmoothLeakyReLU(0.2 if param is None else float(param))
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2 if param is None else float(param))
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {name!r}")


def _linear(*args, **kwargs) -> nn.Linear:
    # nn.Linear's default init draws from the global RNG; its weights are overwritten from our own generator anyway,
    # so build it with the global RNG state saved and restored: constructing a generator never touches it.
    with torch.random.fork_rng(devices=[]):
        return nn.Linear(*args, **kwargs)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _init_linear(layer: nn.Linear, gen: torch.Generator, std_gain: float | None = None) -> nn.Linear:
    """PyTorch's default Linear init (uniform +-1/sqrt(fan_in)) drawn from ``gen``; with ``std_gain``, weights
    N(0, std_gain^2 / fan_in) instead (variance-preserving through the following activation)."""
    fan_in = layer.weight.shape[1]
    with torch.no_grad():
        if std_gain is None:
            bound = fan_in ** -0.5
            w = torch.rand(layer.weight.shape, generator=gen, dtype=torch.float64) * 2 * bound - bound
        else:
            w = torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64) * std_gain * fan_in ** -0.5
        layer.weight.copy_(w)
        if layer.bias is not None:
            bound = fan_in ** -0.5
            layer.bias.copy_(torch.rand(layer.bias.shape, generator=gen, dtype=torch.float64) * 2 * bound - bound)
    return layer


class MLPGenerator(nn.Module):
    """``x = MLP([z, u])``: u concatenated to z (u is a per-sample first-layer bias), last layer linear.

    Args:
        dz, dx, du: latent, output and condition sizes (``du = 0``: unconditional, ``forward(z)``).
        widths: hidden widths; the network is ``Linear(dz+du, w_1), act, ..., Linear(w_k, dx)``.
        activation, act_param: see :func:`make_activation`.
        seed: all weights are drawn from ``torch.Generator().manual_seed(seed)`` (PyTorch's default init law).

    Shapes: z (B, dz), u (B, du) -> x (B, dx). The MLP is ``self.net`` (an ``nn.Sequential``).
    """

    def __init__(self, dz: int, dx: int, du: int = 0, widths: Sequence[int] = (64, 64), activation: str = "tanh",
                 act_param: float | None = None, seed: int = 0):
        super().__init__()
        if dz < 1 or dx < 1 or du < 0:
            raise ValueError(f"MLPGenerator: expected dz >= 1, dx >= 1, du >= 0, got dz={dz}, dx={dx}, du={du}")
        self.dz, self.dx, self.du = int(dz), int(dx), int(du)
        self.activation = activation
        gen = _generator(seed)
        sizes = [dz + du, *[int(w) for w in widths], dx]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(_init_linear(_linear(sizes[i], sizes[i + 1]), gen))
            if i < len(sizes) - 2:
                layers.append(make_activation(activation, act_param))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        if self.du:
            if u is None:
                raise ValueError(f"u: this MLPGenerator is conditional (du = {self.du}); "
                                 f"pass u of shape (B, {self.du})")
            return self.net(torch.cat([z, u], dim=-1))
        if u is not None and u.shape[-1] != 0:
            raise ValueError("u: this MLPGenerator is unconditional (du = 0); pass u=None")
        return self.net(z)


@functools.lru_cache(maxsize=None)
def condition_threshold(rows: int, cols: int, draws: int = 1000, percentile: float = 25.0) -> float:
    """The ``percentile``-th percentile of cond(A) over ``draws`` iVAE mixing matrices A (rows x cols): entries
    U(-1, 1), each row (one output unit's weights) scaled to unit norm.

    iVAE / TCL use 10^4 draws; 10^3 moves the 25th percentile by at most a few percent (measured: 80 x 80,
    159.1 vs 159.4; 64 x 64, 124.3 vs 127.4) at a tenth of the cost (0.6 s vs 5 s for 80 x 80 on the 2-core AMD EPYC dev VM, 2026-11).
    The draws use a fixed internal seed, so the threshold depends only on the shape.
    cond is computed as sqrt(lambda_max / lambda_min) of A^T A (eigvalsh: ~20x faster than batched SVD here; the
    relative difference at cond ~ 1e2 is ~1e-5, irrelevant for a threshold).
    """
    gen = _generator(1_000_003 + 7919 * rows + cols)
    conds = []
    for start in range(0, draws, 250):
        A = _ivae_matrix((min(250, draws - start), rows, cols), gen)
        conds.append(_cond(A))
    return float(torch.quantile(torch.cat(conds), percentile / 100.0))


def _ivae_matrix(shape, gen: torch.Generator) -> torch.Tensor:
    A = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    return A / A.norm(dim=-1, keepdim=True)


def _cond(A: torch.Tensor) -> torch.Tensor:
    e = torch.linalg.eigvalsh(A.mT @ A if A.shape[-2] >= A.shape[-1] else A @ A.mT)
    return (e[..., -1] / e[..., 0].clamp_min(1e-300)).sqrt()


def well_conditioned_matrix(rows: int, cols: int, gen: torch.Generator, draws: int = 1000,
                            max_tries: int = 10_000) -> torch.Tensor:
    """A (rows x cols) iVAE mixing matrix resampled until cond(A) < :func:`condition_threshold` (about 4 tries)."""
    threshold = condition_threshold(rows, cols, draws)
    for _ in range(max_tries):
        A = _ivae_matrix((rows, cols), gen)
        if float(_cond(A)) < threshold:
            return A
    raise RuntimeError(f"no {rows}x{cols} matrix below condition number {threshold:.3g} in {max_tries} draws")


class FiLMGenerator(nn.Module):
    """``g(z, u) = h(z * m(u) + b(u))`` with ``scale = exp(scale_bound * tanh(m(u)))`` (kept in
    ``[e^-bound, e^bound]``, away from 0, so ``z -> y`` stays invertible) and ``shift = b(u)``.

    Args:
        h: the mechanism ``nn.Sequential`` of ``nn.Linear`` layers and activations, ``dz -> ... -> dx``.
        m, b: modules ``(B, du) -> (B, dz)`` (any architecture).
        scale_bound: bound of ``|log scale|``.

    The FiLM protocol understood by :func:`mclcore.mechanism.derivatives`: an ``h`` attribute and a ``film(u)``
    method returning ``(scale, shift)``.
    """

    def __init__(self, h: nn.Sequential, m: nn.Module, b: nn.Module, scale_bound: float = 1.0):
        super().__init__()
        if not isinstance(h, nn.Sequential):
            raise TypeError(f"h: expected an nn.Sequential, got {type(h).__name__}")
        self.h, self.m, self.b = h, m, b
        self.scale_bound = float(scale_bound)

    def film(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (B, dz), for conditions u (B, du)."""
        return torch.exp(self.scale_bound * torch.tanh(self.m(u))), self.b(u)

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(u)
        return self.h(z * scale + shift)


def _film_mlp(du: int, width: int, dz: int, slope: float, gen: torch.Generator) -> nn.Sequential:
    # Kaiming-normal with the leaky-ReLU gain, so the output has ~unit spread across u ~ N(0, I): m(u) then varies
    # "meaningfully across n" (App. D.3): measured std of log m_i(u) over 32 conditions ~0.53 at dz = 10 (seed 0).
    gain = (2.0 / (1.0 + slope**2)) ** 0.5
    return nn.Sequential(
        _init_linear(_linear(du, width), gen, std_gain=1.0),
        nn.LeakyReLU(slope),
        _init_linear(_linear(width, dz), gen, std_gain=gain),
    )


class GMDGenerator(FiLMGenerator):
    """The paper's synthetic mechanism-diverse generator (App. D.3), ``x = h(z * m(u) + b(u)) + eps``.

    * alphabet: ``n_alphabet`` conditions u^(n) ~ N(0, I_du), ``du = 16``, drawn once (buffer ``alphabet``);
    * m, b: two-layer MLPs ``du -> 64 -> dz`` with leaky ReLU(0.2); ``scale = exp(tanh(m(u)))`` in
      ``[1/e, e]`` (kept away from 0, docs/DESIGN.md §3);
    * h: ``dz -> w -> w -> w``, ``w = max(64, 4 dz)``, no biases, activation after the first two layers, last
      layer linear; every layer an iVAE mixing matrix (entries U(-1,1), unit-norm rows) resampled until its
      condition number is below the 25th percentile of ``cond_draws`` draws (iVAE/TCL use 10^4; default 10^3, see
      :func:`condition_threshold`). The first layer has full column rank, so h is injective and dx = w;
    * activation ``"leaky_relu"`` (the paper's, slope 0.2: piecewise linear, so V(z,u) = 0 almost everywhere and
      the GMD certificate reports it degenerate) or ``"smooth_leaky"`` (``0.2 x + 0.8 softplus(x)``, smooth, so
      Theorem 1's regularity holds);
    * ``noise_std = 0.1`` (variance 0.01) for :meth:`sample`.

    Everything is drawn from ``torch.Generator().manual_seed(seed)``. Shapes: z (B, dz), u (B, du) -> x (B, w).
    """

    def __init__(self, dz: int, n_alphabet: int = 8, du: int = 16, width: int | None = None,
                 activation: str = "leaky_relu", slope: float = 0.2, film_width: int = 64, seed: int = 0,
                 cond_draws: int = 1000, noise_std: float = 0.1):
        if activation not in ("leaky_relu", "smooth_leaky"):
            raise ValueError(f"activation: expected 'leaky_relu' (the paper's) or 'smooth_leaky', got {activation!r}")
        if dz < 1 or du < 1 or n_alphabet < 1:
            raise ValueError(f"GMDGenerator: expected dz, du, n_alphabet >= 1, got {dz}, {du}, {n_alphabet}")
        gen = _generator(seed)
        w = max(64, 4 * dz) if width is None else int(width)
        if w < dz:
            raise ValueError(f"width: expected >= dz = {dz} (h must be injective), got {w}")
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate([(dz, w), (w, w), (w, w)]):
            lin = _linear(fan_in, fan_out, bias=False)
            with torch.no_grad():
                lin.weight.copy_(well_conditioned_matrix(fan_out, fan_in, gen, cond_draws))
            layers.append(lin)
            if i < 2:
                layers.append(make_activation(activation, slope))
        h = nn.Sequential(*layers)
        m = _film_mlp(du, film_width, dz, 0.2, gen)
        b = _film_mlp(du, film_width, dz, 0.2, gen)
        super().__init__(h, m, b, scale_bound=1.0)
        self.dz, self.du, self.dx, self.width = int(dz), int(du), w, w
        self.activation, self.slope, self.noise_std, self.seed = activation, float(slope), float(noise_std), seed
        self.register_buffer("alphabet", torch.randn(n_alphabet, du, generator=gen, dtype=torch.float64).float())

    @property
    def n_alphabet(self) -> int:
        return self.alphabet.shape[0]

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """A dataset of ``n`` samples: u uniform over the alphabet, z ~ N(0, I_dz) independent of u,
        ``x = g(z, u) + eps`` with ``eps ~ N(0, noise_std^2 I)``.

        Returns a dict: ``z`` (n, dz), ``u_index`` (n,) int64, ``u`` (n, du), ``x_clean`` (n, dx), ``x`` (n, dx).
        """
        gen = _generator(seed)
        dtype = self.alphabet.dtype
        u_index = torch.randint(self.n_alphabet, (n,), generator=gen)
        z = torch.randn(n, self.dz, generator=gen, dtype=torch.float64).to(dtype)
        u = self.alphabet[u_index]
        x_clean = self(z, u)
        x = x_clean + self.noise_std * torch.randn(x_clean.shape, generator=gen, dtype=torch.float64).to(dtype)
        return {"z": z, "u_index": u_index, "u": u, "x_clean": x_clean, "x": x}

    def extra_repr(self) -> str:
        return (f"dz={self.dz}, du={self.du}, width={self.width}, n_alphabet={self.n_alphabet}, "
                f"activation={self.activation!r}, slope={self.slope}, seed={self.seed}")
