"""beta-VAE, iVAE and MD-VAE for the synthetic identifiability study (paper §4.1, §5.1, App. D.3), stacked.

All three share one backbone (App. D.3): 3-layer leaky-ReLU MLPs ``in -> w -> w -> out`` with hidden width
``w = max(64, 4 dz)``, latent dimension dz, a Gaussian encoder ``q(z | .) = N(mu, diag exp(logvar))`` and a
Gaussian decoder ``p(x | .) = N(x_hat, decoder_var I)``; they differ only in where u enters:

============  =====================  ======================  ================================  ==========
model         encoder                decoder                 prior                             KL weight
============  =====================  ======================  ================================  ==========
``betavae``   q(z | x)               p(x | z)                N(0, I)                           beta = 4
``ivae``      q(z | x, u)            p(x | z)                N(mu(u), diag s^2(u)), 2-layer    1
``mdvae``     q(z | x, u)            p(x | z, u)             N(0, I)  (fixed: z ⟂ u, GMD)      1
============  =====================  ======================  ================================  ==========

Objective (per sample; MD-VAE's is the conditional ELBO of the paper's Eq. 1)::

    ELBO = E_q[log p(x | z, .)] - beta * KL(q(z | .) || p(z | .))
    log p(x | z) = -|x - x_hat|^2 / (2 decoder_var) - dx/2 log(2 pi decoder_var)
    KL = 1/2 sum_i [ logvar_p - logvar + (exp(logvar) + (mu - mu_p)^2) / exp(logvar_p) - 1 ]

(one reparameterised sample ``z = mu + exp(logvar / 2) * eps``; the KL in closed form). ``decoder_var`` defaults
to 0.01, the true noise variance of the simulation (iVAE's code also fixes the decoder variance). App. D.3 does not
give it, and it is the main lever of the synthetic results (experiments/synthetic/README.md, "landscape"), so
``learn_decoder_var=True`` offers the other reading: one isotropic variance per member, learnt by the ELBO as a
log-variance parameter initialised at ``decoder_var`` (a scalar, not per pixel: the simulation's noise is
isotropic).

**Stacked seeds.** Every weight carries a leading member axis M: one :class:`StackedVAE` holds M independent
models (different seeds, possibly different data) and runs them with batched matmuls (``torch.baddbmm``):
inputs are (M, B, features). Members never interact: the training loss is the *sum* of the per-member losses, so
each member's gradient is exactly its own loss's gradient, and Adam is elementwise, so one optimizer over the
stacked tensors performs M independent Adam updates. Member m is initialised from ``torch.Generator`` seeded with
``init_seeds[m]`` with PyTorch's ``nn.Linear`` law (weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))), so a
stack of M members equals M stacks of one (tested in tests/train/test_synthetic.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MODELS", "StackedLinear", "StackedMLP", "StackedVAE", "hidden_width"]

MODELS = ("betavae", "ivae", "mdvae")

# model -> (u into encoder, u into decoder, u-conditional prior)
_U_ROUTES = {"betavae": (False, False, False), "ivae": (True, False, True), "mdvae": (True, True, False)}


def hidden_width(dz: int) -> int:
    """App. D.3's hidden width ``max(64, 4 dz)``."""
    return max(64, 4 * int(dz))


class StackedLinear(nn.Module):
    """M independent ``nn.Linear(fan_in, fan_out)`` layers: (M, B, fan_in) -> (M, B, fan_out).

    ``weight`` is (M, fan_in, fan_out) (transposed w.r.t. ``nn.Linear``, so the batched product needs no copy),
    ``bias`` (M, 1, fan_out).
    """

    def __init__(self, fan_in: int, fan_out: int, generators: Sequence[torch.Generator]):
        super().__init__()
        M = len(generators)
        bound = 1.0 / math.sqrt(fan_in)
        w = torch.empty(M, fan_in, fan_out)
        b = torch.empty(M, 1, fan_out)
        for m, gen in enumerate(generators):
            # Drawn as nn.Linear's (fan_out, fan_in) then transposed: same law and order as a plain Linear.
            w[m] = (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1).mul_(bound).T
            b[m, 0] = (torch.rand(fan_out, generator=gen) * 2 - 1).mul_(bound)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (M, B, fan_in) -> (M, B, fan_out)
        return torch.baddbmm(self.bias, x, self.weight)

    def member(self, m: int, x: torch.Tensor) -> torch.Tensor:  # (B, fan_in) -> (B, fan_out), member m only
        return torch.addmm(self.bias[m, 0], x, self.weight[m])

    def extra_repr(self) -> str:
        M, fan_in, fan_out = self.weight.shape
        return f"members={M}, fan_in={fan_in}, fan_out={fan_out}"


class StackedMLP(nn.Module):
    """``sizes[0] -> ... -> sizes[-1]`` with leaky ReLU between layers (none after the last), M members."""

    def __init__(self, sizes: Sequence[int], generators: Sequence[torch.Generator], slope: float = 0.2):
        super().__init__()
        self.layers = nn.ModuleList(StackedLinear(a, b, generators) for a, b in zip(sizes[:-1], sizes[1:]))
        self.slope = float(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (M, B, sizes[0]) -> (M, B, sizes[-1])
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.leaky_relu(x, self.slope)
        return x

    def member(self, m: int, x: torch.Tensor) -> torch.Tensor:  # (B, sizes[0]) -> (B, sizes[-1])
        for i, layer in enumerate(self.layers):
            x = layer.member(m, x)
            if i < len(self.layers) - 1:
                x = F.leaky_relu(x, self.slope)
        return x


class StackedVAE(nn.Module):
    """M independent beta-VAEs, iVAEs or MD-VAEs (see the module doc), run with batched matmuls.

    Args:
        model: ``"betavae"``, ``"ivae"`` or ``"mdvae"``.
        dx, du, dz: observation, condition and latent sizes.
        init_seeds: one seed per member (M = len(init_seeds)); member m's weights come only from its seed.
        hidden: hidden width (default ``max(64, 4 dz)``).
        slope: leaky-ReLU slope (0.2).
        beta: KL weight (the paper's beta-VAE: 4; iVAE / MD-VAE: 1).
        decoder_var: variance of the Gaussian decoder (0.01 = the simulation's noise variance); with
            ``learn_decoder_var`` its initial value.
        learn_decoder_var: learn one decoder variance per member (``log_decoder_var``, shape (M,)).

    Shapes: x (M, B, dx), u (M, B, du), eps (M, B, dz).
    """

    def __init__(self, model: str, dx: int, du: int, dz: int, init_seeds: Sequence[int], *,
                 hidden: int | None = None, slope: float = 0.2, beta: float = 1.0, decoder_var: float = 0.01,
                 learn_decoder_var: bool = False):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
        for name, v in (("dx", dx), ("du", du), ("dz", dz)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if len(init_seeds) < 1:
            raise ValueError("init_seeds: expected at least one seed (one per member)")
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta: expected a finite number >= 0, got {beta!r}")
        if not (math.isfinite(decoder_var) and decoder_var > 0):
            raise ValueError(f"decoder_var: expected a positive finite number, got {decoder_var!r}")
        w = hidden_width(dz) if hidden is None else int(hidden)
        if w < 1:
            raise ValueError(f"hidden: expected a positive width, got {hidden!r}")
        self.model, self.dx, self.du, self.dz, self.hidden = model, dx, du, dz, w
        self.beta, self.decoder_var = float(beta), float(decoder_var)
        self.u_enc, self.u_dec, self.u_prior = _U_ROUTES[model]
        gens = [torch.Generator().manual_seed(int(s)) for s in init_seeds]
        self.encoder = StackedMLP([dx + du * self.u_enc, w, w, 2 * dz], gens, slope)
        self.decoder = StackedMLP([dz + du * self.u_dec, w, w, dx], gens, slope)
        # iVAE's u-conditional Gaussian prior: a 2-layer MLP u -> w -> (mean, log-variance).
        self.prior = StackedMLP([du, w, 2 * dz], gens, slope) if self.u_prior else None
        self.learn_decoder_var = bool(learn_decoder_var)
        # (M,) log-variances; a parameter only when learnt, so fixed-variance checkpoints keep their keys
        self.log_decoder_var = nn.Parameter(torch.full((len(init_seeds),), math.log(decoder_var))) \
            if self.learn_decoder_var else None

    def decoder_variance(self) -> torch.Tensor:
        """The decoder variance of each member, (M,) (the fixed ``decoder_var`` repeated when not learnt)."""
        if self.log_decoder_var is None:
            return torch.full((self.members,), self.decoder_var)
        return self.log_decoder_var.detach().exp().cpu()

    @property
    def members(self) -> int:
        return self.encoder.layers[0].weight.shape[0]

    def encode(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (M, B, dz), of x (M, B, dx), u (M, B, du)."""
        h = torch.cat([x, u], dim=-1) if self.u_enc else x
        mu, logvar = self.encoder(h).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x_hat (M, B, dx) of z (M, B, dz), u (M, B, du)."""
        return self.decoder(torch.cat([z, u], dim=-1) if self.u_dec else z)

    def decoder_member(self, m: int):
        """Member m's generator ``G(z, u) -> x_hat``, z (B, dz), u (B, du) -> (B, dx): the host generator handed to
        :class:`mclcore.MCL` (its weights are views of the stacked parameters, so MCL's gradients reach them)."""
        if not self.u_dec:
            return lambda z, u: self.decoder.member(m, z)
        return lambda z, u: self.decoder.member(m, torch.cat([z, u], dim=-1))

    def prior_params(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """iVAE's prior mean and log-variance (M, B, dz) of u (M, B, du); None for a fixed N(0, I) prior."""
        if self.prior is None:
            return None
        mean, logvar = self.prior(u).chunk(2, dim=-1)
        return mean, logvar

    def forward(self, x: torch.Tensor, u: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        """One reparameterised pass. Returns per-member means over the batch, each (M,): ``loss`` (the negative
        ELBO with the KL weighted by beta), ``rec`` (E_q log p(x|z)), ``kl``; and ``z`` (M, B, dz), the sample."""
        mu, logvar = self.encode(x, u)                                     # (M, B, dz) each
        z = mu + torch.exp(0.5 * logvar) * eps                             # (M, B, dz)
        x_hat = self.decode(z, u)                                          # (M, B, dx)
        if self.log_decoder_var is None:
            rec = (-0.5 / self.decoder_var) * (x - x_hat).pow(2).sum(-1) \
                - 0.5 * self.dx * math.log(2 * math.pi * self.decoder_var)  # (M, B)
        else:
            lv = self.log_decoder_var[:, None]                               # (M, 1)
            rec = -0.5 * (x - x_hat).pow(2).sum(-1) * torch.exp(-lv) \
                - 0.5 * self.dx * (math.log(2 * math.pi) + lv)               # (M, B)
        prior = self.prior_params(u)
        if prior is None:
            kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)  # (M, B)
        else:
            mu_p, logvar_p = prior
            kl = 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p).pow(2)) / logvar_p.exp() - 1.0).sum(-1)
        rec, kl = rec.mean(1), kl.mean(1)                                  # (M,)
        return {"loss": -(rec - self.beta * kl), "rec": rec, "kl": kl, "z": z}

    @torch.no_grad()
    def posterior_mean(self, x: torch.Tensor, u: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """E_q[z] (M, N, dz) of x (M, N, dx), u (M, N, du), in chunks of ``chunk`` rows (the MCC's input)."""
        return torch.cat([self.encode(x[:, i:i + chunk], u[:, i:i + chunk])[0]
                          for i in range(0, x.shape[1], chunk)], dim=1)

    def extra_repr(self) -> str:
        return (f"model={self.model!r}, members={self.members}, dx={self.dx}, du={self.du}, dz={self.dz}, "
                f"hidden={self.hidden}, beta={self.beta}, decoder_var={self.decoder_var}"
                + (", learnt" if self.learn_decoder_var else ""))
