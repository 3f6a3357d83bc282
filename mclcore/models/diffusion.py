"""DDPM noise schedule, the epsilon-prediction training loss and DDIM sampling (paper App. D.4).

MDDiff and EncDiff train a latent diffusion model with ``T = 1000`` steps and a "linear" schedule from
``beta_min = 0.0015`` to ``beta_max = 0.0155`` (App. D.4). Two readings of "linear" exist and both are offered:

* ``"ldm_linear"`` (default): the latent-diffusion code base that EncDiff builds on calls this schedule "linear" but
  spaces ``sqrt(beta)`` linearly, ``beta_t = (sqrt(b0) + t/(T-1) (sqrt(b1) - sqrt(b0)))^2``;
* ``"linear"``: ``beta_t`` itself spaced linearly.

Both have the same endpoints ``beta_0 = 0.0015`` and ``beta_{T-1} = 0.0155``. Every schedule quantity is computed in
float64 and stored as float32 buffers.

Notation (0-based t): ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``,
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho et al. 2020, Eq. 4); the network predicts ``eps``.
DDIM (Song et al. 2021, Eq. 12) with ``eta = 0`` is deterministic given ``x_T``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

__all__ = ["make_beta_schedule", "GaussianDiffusion", "SCHEDULES", "LOSSES"]

SCHEDULES = ("ldm_linear", "linear")
# The loss on the predicted noise: "mse" (Ho et al. 2020's simple loss, our default) or "l1" (the public MDDiff /
# EncDiff configs' ``loss_type: l1``: LDM's get_loss, mean |eps - eps_theta|).
LOSSES = ("mse", "l1")


def make_beta_schedule(num_timesteps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0155,
                       kind: str = "ldm_linear") -> torch.Tensor:
    """(T,) float64 betas; see the module docstring for the two kinds."""
    if not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise ValueError(f"num_timesteps: expected an int >= 2, got {num_timesteps!r}")
    if not 0 < beta_start < beta_end < 1:
        raise ValueError(f"beta_start, beta_end: expected 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    if kind == "ldm_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    raise ValueError(f"kind: expected one of {SCHEDULES}, got {kind!r}")


EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t, context) -> eps


class GaussianDiffusion(nn.Module):
    """Schedule buffers plus ``q_sample``, the training loss and DDIM sampling. Holds no learnable parameters.

    ``loss``: ``"mse"`` (default) or ``"l1"`` on the predicted noise (see :data:`LOSSES`)."""

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0155,
                 schedule: str = "ldm_linear", loss: str = "mse"):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
        self.loss = loss
        betas = make_beta_schedule(num_timesteps, beta_start, beta_end, schedule)
        abar = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = num_timesteps
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", abar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1.0 - abar).sqrt().float(), persistent=False)

    @staticmethod
    def _at(buf: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return buf[t].view(-1, *([1] * (ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise (B, ...), t (B,) int64."""
        return self._at(self.sqrt_alphas_cumprod, t, x0.ndim) * x0 + \
            self._at(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (x_t - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * eps) / \
            self._at(self.sqrt_alphas_cumprod, t, x_t.ndim)

    def training_losses(self, model: EpsModel, x0: torch.Tensor, context: torch.Tensor, *,
                        generator: torch.Generator | None = None) -> dict:
        """Simple DDPM loss ``E_{t, eps} |eps - eps_theta(x_t, t, context)|^2`` (mean over all elements; the mean
        absolute error with ``loss="l1"``).

        ``t`` uniform in [0, T) and ``eps ~ N(0, I)`` are drawn from ``generator`` (on x0's device), so a training
        step is reproducible from its seed. Returns ``{"loss", "t", "x_t", "eps", "eps_pred", "x0_pred"}``.
        """
        b = x0.shape[0]
        t = torch.randint(0, self.num_timesteps, (b,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        eps_pred = model(x_t, t, context)
        err = eps_pred.float() - noise.float()
        loss = err.abs().mean() if self.loss == "l1" else err.pow(2).mean()
        return {"loss": loss, "t": t, "x_t": x_t, "eps": noise, "eps_pred": eps_pred,
                "x0_pred": self.predict_x0(x_t, t, eps_pred.to(x_t.dtype))}

    def ddim_timesteps(self, num_steps: int) -> torch.Tensor:
        """(num_steps,) increasing 0-based timesteps, uniformly spaced (LDM's ``ddim_discretize="uniform"``)."""
        if not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"num_steps: expected 1 <= num_steps <= {self.num_timesteps}, got {num_steps}")
        c = self.num_timesteps // num_steps
        return torch.arange(0, num_steps * c, c, dtype=torch.long) + (self.num_timesteps - 1 - (num_steps - 1) * c)

    @torch.no_grad()
    def ddim_sample(self, model: EpsModel, shape, context: torch.Tensor, *, num_steps: int = 50, eta: float = 0.0,
                    x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    callback: Callable | None = None) -> torch.Tensor:
        """DDIM sampling from ``x_T ~ N(0, I)`` (or the given ``x_T``) down to x_0. Returns (B, ...) latents.

        ``callback(i, t, x_t)`` is called before each denoising step (e.g. to record attention maps).
        The last step jumps to ``abar = 1``, i.e. it returns the model's x0 prediction.
        """
        device = self.betas.device
        x = torch.randn(shape, device=device, generator=generator) if x_T is None else x_T.to(device)
        ts = self.ddim_timesteps(num_steps).to(device)
        abar = self.alphas_cumprod
        for i in range(num_steps - 1, -1, -1):
            t = ts[i]
            if callback is not None:
                callback(num_steps - 1 - i, int(t), x)
            tb = t.expand(shape[0])
            eps = model(x, tb, context).to(x.dtype)
            a_t = abar[t]
            a_prev = abar[ts[i - 1]] if i > 0 else torch.ones((), device=device)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
            dir_xt = (1 - a_prev - sigma ** 2).clamp_min(0).sqrt() * eps
            x = a_prev.sqrt() * x0 + dir_xt
            if eta > 0 and i > 0:
                x = x + sigma * torch.randn(shape, device=device, generator=generator)
        return x
