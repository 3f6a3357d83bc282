"""Building blocks of the action-conditioned world model (paper section 5.3, App. D.5).

* :class:`FrameAutoencoder` -- the frozen first stage (the paper's causal VAE): a **plain (deterministic)
  convolutional autoencoder** 64x64x3 <-> C x 16 x 16 (C = 4 by default), trained with an MSE pixel loss and frozen
  afterwards. Latents are standardised by ``scale`` (1 / std of the training latents, LDM's ``scale_by_std``). A
  per-frame autoencoder, not a causal video VAE: one latent frame per video frame.
* :class:`InverseDynamics` -- the IDM ``q_phi(a_t | v_t, v_{t+1}) = N(mu_t, diag(sigma_t^2))`` over a d_a-dim latent
  action, sampled with the reparameterisation ``a_t = mu_t + sigma_t * eps``; :func:`kl_standard_normal` is its KL
  to N(0, I).
* :class:`ActionInterface` -- ``A_psi``: lifts a per-frame action (the recorded 4-d action for ACG, the latent action
  for LACG) to the conditioning vector that the forward model's AdaLN layers turn into per-frame scale/shift/gate.
* :class:`ForwardDynamics` -- the FDM: a small DiT over patchified latent frames. Tokens are the patches of the noisy
  target frame concatenated (channel-wise) with the patches of the context frame(s); every block is AdaLN-Zero
  conditioned on ``c = TimeEmbed(tau) + A_psi(u_t)``; the network output is x0 or the velocity (see
  :class:`~mclcore.models.worldmodel.model.WorldModel`). Trained by rectified flow matching, see
  :func:`flow_matching_pair`.
* :class:`GradReverse` / :class:`EmbodimentClassifier` -- the gradient-reversal embodiment-invariance term
  ``L_GRL``: the classifier minimises the cross-entropy, the IDM (through the reversed gradient) maximises it.

Flow convention (rectified flow): ``x_tau = (1 - tau) x_0 + tau eps`` with ``x_0`` the clean next latent frame and
``eps ~ N(0, I)``; the network predicts the velocity ``v = eps - x_0``; sampling integrates ``dx/dtau = v`` from
tau = 1 (noise) to 0 (data).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FrameAutoencoder", "InverseDynamics", "ActionInterface", "ForwardDynamics", "GradReverse",
           "grad_reverse", "EmbodimentClassifier", "kl_standard_normal", "kl_per_dim", "flow_matching_pair",
           "timestep_embedding", "sample_flow"]


def _check_image(x: torch.Tensor, name: str, channels: int, size: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a (B, {channels}, H, W) tensor, got {got}")
    if size is not None and x.shape[-2:] != (size, size):
        raise ValueError(f"{name}: expected spatial size {size}x{size}, got {tuple(x.shape[-2:])}")


# ------------------------------------------------------------------------------------------------ autoencoder
class FrameAutoencoder(nn.Module):
    """Plain convolutional autoencoder, (B, 3, 64, 64) in [0, 1] <-> (B, latent_channels, 16, 16).

    ``encode`` returns standardised latents ``scale * E(x)``; ``decode`` undoes the scale and returns images in
    [0, 1] (sigmoid output). ``loss(x)`` is the stage-1 objective ``|D(E(x)) - x|^2`` (mean).
    """

    def __init__(self, latent_channels: int = 4, ch: int = 32, image_size: int = 64):
        super().__init__()
        self.latent_channels, self.image_size = int(latent_channels), int(image_size)
        c = int(ch)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c, 3, 1, 1), nn.SiLU(),
            nn.Conv2d(c, c, 4, 2, 1), nn.SiLU(),                  # 32x32
            nn.Conv2d(c, 2 * c, 3, 1, 1), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 4, 2, 1), nn.SiLU(),          # 16x16
            nn.Conv2d(2 * c, latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * c, 3, 1, 1), nn.SiLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.SiLU(),     # 32x32
            nn.Conv2d(c, c, 3, 1, 1), nn.SiLU(),
            nn.ConvTranspose2d(c, c, 4, 2, 1), nn.SiLU(),         # 64x64
            nn.Conv2d(c, 3, 3, 1, 1),
        )
        self.register_buffer("scale", torch.ones(()))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.image_size // 4, self.image_size // 4)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 64, 64) -> (B, C, 16, 16)
        _check_image(x, "x", 3, self.image_size)
        return self.encoder(x) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, 16, 16) -> (B, 3, 64, 64) in [0, 1]
        _check_image(z, "z", self.latent_channels, self.image_size // 4)
        return torch.sigmoid(self.decoder(z / self.scale))

    def loss(self, x: torch.Tensor) -> dict:
        rec = self.decode(self.encode(x))
        mse = F.mse_loss(rec, x)
        return {"loss": mse, "mse": mse.detach()}

    @torch.no_grad()
    def set_scale_from(self, x: torch.Tensor) -> None:
        """scale = 1 / std of the raw latents of ``x`` (B, 3, 64, 64), so the flow works on unit-variance latents."""
        self.scale.fill_(1.0)
        self.scale.fill_(1.0 / float(self.encoder(x).std().clamp_min(1e-6)))


# --------------------------------------------------------------------------------------------- inverse dynamics
class InverseDynamics(nn.Module):
    """IDM: (v_t, v_{t+1}) latent frames (B, C, 16, 16) each -> diagonal Gaussian over a (B, action_dim) latent action.

    ``logvar_init``: None (PyTorch's default init, logvar ~ 0 at the start) or the initial bias of the log-variance
    outputs (e.g. -6: sigma ~ 0.05, so the latent action starts as a readable signal rather than noise).
    ``norm``: pass the mean through BatchNorm1d (affine). Measured (experiments/worldmodel/README.md): at the default
    init the mean varies across transitions by ~1e-3 (a frame pair differs in a few latent pixels), so the forward
    model sees a constant latent action, never learns to read it, and the KL empties it (posterior collapse);
    normalised, the mean starts with unit spread across the batch. ``inputs``: "frames" (v_t, v_{t+1} and their
    difference, stacked) or "delta" (only the frame change, scaled by the buffer ``delta_scale``).

    ``forward`` returns ``(a, mu, logvar)`` with ``a = mu + exp(logvar / 2) * eps`` (reparameterised; ``eps`` from
    ``generator``) or ``a = mu`` when ``sample=False``.
    """

    def __init__(self, latent_channels: int = 4, action_dim: int = 8, ch: int = 32, hidden: int = 128,
                 logvar_init: float | None = None, norm: bool = False, inputs: str = "frames"):
        super().__init__()
        if inputs not in ("frames", "delta"):
            raise ValueError(f"inputs: expected 'frames' or 'delta', got {inputs!r}")
        self.latent_channels, self.action_dim, self.inputs = int(latent_channels), int(action_dim), inputs
        # inputs="delta": the IDM reads only the scaled frame change s (v_{t+1} - v_t) (s set with the world model's
        # delta_scale), not the two frames, whose scene content otherwise dominates its features
        self.register_buffer("delta_scale", torch.ones(()), persistent=False)   # the owner's (WorldModel) copy is saved
        # norm: the posterior mean through BatchNorm (learned scale and shift, running statistics at eval time)
        self.mu_norm = nn.BatchNorm1d(action_dim) if norm else None
        c = int(ch)
        self.net = nn.Sequential(
            nn.Conv2d((3 if inputs == "frames" else 1) * latent_channels, c, 3, 1, 1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.SiLU(),              # 8x8
            nn.Conv2d(2 * c, 2 * c, 4, 2, 1), nn.SiLU(),          # 4x4
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(2 * c * 16, hidden), nn.SiLU(), nn.Linear(hidden, 2 * action_dim))
        if logvar_init is not None:
            # start with a narrow posterior: with logvar ~ 0 the sampled latent action is mostly noise at first, the
            # forward model learns to ignore the channel and the KL then empties it (posterior collapse)
            with torch.no_grad():
                self.head[-1].bias[action_dim:].fill_(float(logvar_init))

    def forward(self, v_t: torch.Tensor, v_next: torch.Tensor, *, sample: bool = True,
                generator: torch.Generator | None = None):
        _check_image(v_t, "v_t", self.latent_channels)
        _check_image(v_next, "v_next", self.latent_channels)
        if v_t.shape != v_next.shape:
            raise ValueError(f"v_next: expected the shape of v_t {tuple(v_t.shape)}, got {tuple(v_next.shape)}")
        if self.inputs == "frames":
            h = self.net(torch.cat([v_t, v_next, v_next - v_t], dim=1))  # (B, 2c * 16)
        else:
            h = self.net((v_next - v_t) * self.delta_scale)               # (B, 2c * 16)
        mu, logvar = self.head(h).chunk(2, dim=1)                         # (B, d_a) each
        if self.mu_norm is not None:
            mu = self.mu_norm(mu)
        logvar = logvar.clamp(-10.0, 5.0)
        if not sample:
            return mu, mu, logvar
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps, mu, logvar


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float = 0.0) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) summed over dims, averaged over the batch: scalar.

    ``0.5 * sum(mu^2 + exp(logvar) - logvar - 1)``. ``free_bits`` > 0 (nats per latent dimension; Kingma et al.
    2016): ``sum_d max(KL_d, free_bits)`` with ``KL_d`` the batch mean of dimension d's KL, so a dimension whose KL is
    below the floor is not pushed further towards the prior (no gradient) -- the usual guard against posterior
    collapse. ``free_bits=0`` is the plain KL.
    """
    if free_bits < 0:
        raise ValueError(f"free_bits: expected a number >= 0, got {free_bits!r}")
    if free_bits == 0:
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=1).mean()
    return kl_per_dim(mu, logvar).clamp_min(free_bits).sum()


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL to N(0, 1) per latent dimension, averaged over the batch: (d,) in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).mean(dim=0)


# ------------------------------------------------------------------------------------------ gradient reversal
class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-lam`` (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x, lam: float):
        ctx.lam = float(lam)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    return GradReverse.apply(x, lam)


class EmbodimentClassifier(nn.Module):
    """Predicts the embodiment from the latent action *through* a gradient-reversal layer: (B, d_a) -> (B, n) logits.

    Minimising ``CE(classifier(GRL(a)), e)`` trains the classifier to recognise the embodiment and, with the sign
    flipped at the GRL, trains the IDM to make ``a`` embodiment-invariant (L_GRL of App. D.5).
    """

    def __init__(self, action_dim: int, num_embodiments: int = 2, hidden: int = 64, grl_scale: float = 1.0):
        super().__init__()
        self.grl_scale = float(grl_scale)
        self.net = nn.Sequential(nn.Linear(action_dim, hidden), nn.SiLU(), nn.Linear(hidden, num_embodiments))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.net(grad_reverse(a, self.grl_scale))


# ------------------------------------------------------------------------------------------ action interface
class ActionInterface(nn.Module):
    """A_psi: per-frame action (B, d_u) or (B, F, d_u) -> AdaLN conditioning (B, dim) or (B, F, dim).

    ``Linear -> SiLU -> Linear``; the forward model's AdaLN layers map the result (added to the flow-time embedding)
    to per-frame scale, shift and gate.
    """

    def __init__(self, action_dim: int, dim: int):
        super().__init__()
        self.action_dim = int(action_dim)
        self.net = nn.Sequential(nn.Linear(action_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if not isinstance(u, torch.Tensor) or u.ndim not in (2, 3) or u.shape[-1] != self.action_dim:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"u: expected a (B, {self.action_dim}) or (B, F, {self.action_dim}) action, got {got}")
        return self.net(u)


# --------------------------------------------------------------------------------------------------- the DiT
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow times ``t`` (B,) in [0, 1] (scaled by 1000): (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (h * w, dim)."""
    if dim % 4:
        raise ValueError(f"dim: the 2-D position embedding needs a multiple of 4, got {dim}")
    q = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float32) / q)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = [torch.sin(ys.flatten()[:, None] * omega), torch.cos(ys.flatten()[:, None] * omega),
           torch.sin(xs.flatten()[:, None] * omega), torch.cos(xs.flatten()[:, None] * omega)]
    return torch.cat(out, dim=1)


def _modulate(x, shift, scale):  # x (B, N, D); shift/scale (B, D)
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block with AdaLN-Zero: ``Linear(SiLU(c)) -> (shift, scale, gate) x 2``, zero-initialised
    so the block starts as the identity (Peebles & Xie 2023)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x (B, N, D), c (B, D)
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=1)
        h = _modulate(self.norm1(x), s1, sc1)
        x = x + g1[:, None] * self.attn(h, h, h, need_weights=False)[0]
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), s2, sc2))


def check_forward_inputs(model, x_tau, tau, context, cond) -> torch.Tensor:
    """Validate a forward model's inputs against its ``latent_shape`` (C, H, W), ``context_frames`` K and
    ``cond_dim``: x_tau (B, C, H, W), tau (B,), context (B, K, C, H, W) or (B, C, H, W) when K = 1, cond
    (B, cond_dim). Shared by :class:`ForwardDynamics` and the Wan adapter; returns context as (B, K, C, H, W)."""
    c, h, w = model.latent_shape
    if not isinstance(x_tau, torch.Tensor) or tuple(x_tau.shape[1:]) != (c, h, w):
        got = tuple(x_tau.shape) if isinstance(x_tau, torch.Tensor) else type(x_tau).__name__
        raise ValueError(f"x_tau: expected (B, {c}, {h}, {w}), got {got}")
    b = x_tau.shape[0]
    if context.ndim == 4:
        context = context[:, None]
    if tuple(context.shape) != (b, model.context_frames, c, h, w):
        raise ValueError(f"context: expected ({b}, {model.context_frames}, {c}, {h}, {w}), got "
                         f"{tuple(context.shape)}")
    if tau.shape != (b,):
        raise ValueError(f"tau: expected shape ({b},), got {tuple(tau.shape)}")
    if cond.shape != (b, model.cond_dim):
        raise ValueError(f"cond: expected shape ({b}, {model.cond_dim}), got {tuple(cond.shape)}")
    return context


class ForwardDynamics(nn.Module):
    """Small DiT ``f_theta(x_tau, tau, context, c)`` (an x0 or a velocity prediction, see ``WorldModel.prediction``).

    Args of ``forward``:
        x_tau: (B, C, H, W) noisy next latent frame at flow time ``tau``.
        tau: (B,) flow times in [0, 1].
        context: (B, K, C, H, W) (or (B, C, H, W) for K = 1) clean previous latent frame(s).
        cond: (B, dim) AdaLN conditioning from :class:`ActionInterface` (the action channel).
    Returns (B, C, H, W).

    Tokens: the (1 + K) C-channel frames are stacked on channels and cut into ``patch x patch`` patches (N = HW /
    patch^2 tokens), embedded linearly, plus a fixed 2-D sin-cos position embedding. Every block and the final layer
    are modulated by ``c = MLP(timestep_embedding(tau)) + cond``.
    """

    def __init__(self, latent_shape: Sequence[int] = (4, 16, 16), context_frames: int = 1, dim: int = 128,
                 depth: int = 4, heads: int = 4, patch: int = 2, mlp_ratio: float = 4.0):
        super().__init__()
        c, h, w = map(int, latent_shape)
        if h % patch or w % patch:
            raise ValueError(f"patch: {patch} must divide the latent size {h}x{w}")
        if dim % heads:
            raise ValueError(f"heads: {heads} must divide dim {dim}")
        self.latent_shape, self.context_frames, self.patch, self.dim = (c, h, w), int(context_frames), patch, dim
        self.embed = nn.Linear((1 + context_frames) * c * patch * patch, dim)
        self.register_buffer("pos", _sincos_2d(dim, h // patch, w // patch)[None], persistent=False)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, c * patch * patch)
        # AdaLN-Zero: every modulation starts at zero, so the blocks start as the identity and the condition has no
        # effect. The output layer starts *small* rather than zero (DiT zeroes it): with an x0-predicting world
        # model, a zero output would make g(z, u) independent of z at step 0, and MCL's mechanism gradient with it.
        nn.init.zeros_(self.ada_out[1].weight)
        nn.init.zeros_(self.ada_out[1].bias)
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)

    @property
    def cond_dim(self) -> int:
        return self.dim

    def check_inputs(self, x_tau, tau, context, cond):
        return check_forward_inputs(self, x_tau, tau, context, cond)

    def forward(self, x_tau: torch.Tensor, tau: torch.Tensor, context: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        context = self.check_inputs(x_tau, tau, context, cond)                  # (B, K, C, H, W)
        b, (c, h, w), p = x_tau.shape[0], self.latent_shape, self.patch
        frames = torch.cat([x_tau[:, None], context], dim=1).flatten(1, 2)     # (B, (1+K)C, H, W)
        tok = F.unfold(frames, p, stride=p).transpose(1, 2)                    # (B, N, (1+K)C p^2)
        x = self.embed(tok) + self.pos                                          # (B, N, D)
        cvec = self.time(timestep_embedding(tau, self.dim)) + cond              # (B, D)
        for blk in self.blocks:
            x = blk(x, cvec)
        shift, scale = self.ada_out(cvec).chunk(2, dim=1)
        x = self.out(_modulate(self.norm_out(x), shift, scale))                 # (B, N, C p^2)
        return F.fold(x.transpose(1, 2), (h, w), p, stride=p)                   # (B, C, H, W)


# ------------------------------------------------------------------------------------------------ flow helpers
def flow_matching_pair(x0: torch.Tensor, tau: torch.Tensor, eps: torch.Tensor):
    """Rectified flow: ``x_tau = (1 - tau) x0 + tau eps`` and the velocity target ``eps - x0``."""
    t = tau.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * eps, eps - x0


@torch.no_grad()
def sample_flow(velocity, x1: torch.Tensor, steps: int = 4, method: str = "euler") -> torch.Tensor:
    """Integrate ``dx/dtau = velocity(x, tau)`` from tau = 1 (``x1``, noise) to 0 in ``steps`` uniform steps.

    ``method``: ``"euler"`` (one call per step) or ``"heun"`` (two calls per step, the last step Euler).
    """
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    if method not in ("euler", "heun"):
        raise ValueError(f"method: expected 'euler' or 'heun', got {method!r}")
    x, b = x1, x1.shape[0]
    ts = torch.linspace(1.0, 0.0, steps + 1, device=x1.device)
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        v = velocity(x, t.expand(b))
        x_e = x + (t_next - t) * v
        if method == "heun" and i < steps - 1:
            v2 = velocity(x_e, t_next.expand(b))
            x = x + (t_next - t) * 0.5 * (v + v2)
        else:
            x = x_e
    return x
