"""First stage of the latent diffusion model: a VQ autoencoder 64x64x3 <-> 3x16x16, with a u-conditioned decoder.

**VQ, not KL.** EncDiff (and hence MDDiff, App. D.4 "the pixel-level VQ-VAE reconstruction loss") runs diffusion in
the latent of a VQ autoencoder with downsampling factor 4; we use a 2048-entry codebook of 3-dim codes. As in the
latent-diffusion code, the diffusion model works on the *pre-quantisation* latent ``h = quant_conv(E(x))`` (scaled
by ``scale_factor``, set from the latents' standard deviation, LDM's ``scale_by_std``), and decoding quantises
first: ``D(q(h))``. The quantiser uses the straight-through estimator, so ``x_hat = D(q(h), u)`` is differentiable in
``h``: this is what lets MCL take ``grad_z`` of the critic through the decoder.

**u-conditioned decoder (MDDiff, App. D.4).** With ``u_dim > 0`` the decoder becomes ``g(z, u)``: the concept-token
sequence (B, K, d_tok) is flattened and, at every upsampling stage, mapped by its own ``Linear -> SiLU`` to
``u_channels`` features that are broadcast over the feature map, concatenated to it and fused back by a 1x1
convolution. The fusion starts as the identity on the image channels and zero on the u channels, so a decoder
trained unconditionally (stage 0) is exactly reproduced until training moves the fusion weights.

Training here uses an L1 + MSE pixel loss and the VQ codebook/commitment losses (beta = 0.25). The perceptual and
adversarial losses of VQGAN (taming's ``VQLPIPSWithDiscriminator``, which the public MDDiff code trains its first
stage with) are options of :meth:`VQAutoencoder.loss`, off by default: an LPIPS perceptual term (needs
user-supplied LPIPS weights, :mod:`mclcore.metrics.lpips`) and a hinge-loss :class:`PatchDiscriminator` with
taming's adaptive weight.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mclcore.models.unet import ResBlock, norm

__all__ = ["VectorQuantizer", "AEEncoder", "AEDecoder", "VQAutoencoder", "PatchDiscriminator", "hinge_d_loss"]


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser with the straight-through estimator (van den Oord et al. 2017).

    ``forward(h)`` on (B, C, H, W) returns ``(q_st, loss, indices)``: ``q_st = h + (q - h).detach()``,
    ``loss = |sg(h) - q|^2 + beta |h - sg(q)|^2`` and (B, H, W) code indices.
    """

    def __init__(self, n_embed: int = 2048, embed_dim: int = 3, beta: float = 0.25):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def forward(self, h: torch.Tensor):
        b, c, hh, ww = h.shape
        flat = h.permute(0, 2, 3, 1).reshape(-1, c)                                   # (B*H*W, C)
        w = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ w.t() + w.pow(2).sum(1)[None]
        idx = d.argmin(dim=1)
        q = self.embedding(idx).view(b, hh, ww, c).permute(0, 3, 1, 2)
        loss = F.mse_loss(q, h.detach()) + self.beta * F.mse_loss(h, q.detach())
        return h + (q - h).detach(), loss, idx.view(b, hh, ww)


class AEEncoder(nn.Module):
    """conv_in -> [ResBlock x n, stride-2 conv] per level (none after the last) -> mid ResBlock -> GN-SiLU-conv."""

    def __init__(self, in_channels=3, ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, padding=1)]
        c = ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(c, ch * mult))
                c = ch * mult
            if level != len(ch_mult) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [ResBlock(c, c), norm(c), nn.SiLU(), nn.Conv2d(c, z_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class _UFuse(nn.Module):
    """Concatenate broadcast u-features to the feature map and fuse by a 1x1 conv (identity/zero initialised)."""

    def __init__(self, channels: int, u_dim: int, u_channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(u_dim, u_channels), nn.SiLU())
        self.fuse = nn.Conv2d(channels + u_channels, channels, 1)
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.weight[:, :channels, 0, 0].copy_(torch.eye(channels))
            self.fuse.bias.zero_()

    def forward(self, h: torch.Tensor, u_flat: torch.Tensor) -> torch.Tensor:
        f = self.proj(u_flat)[:, :, None, None].expand(-1, -1, *h.shape[-2:])     # (B, Cu, H, W)
        return self.fuse(torch.cat([h, f.to(h.dtype)], dim=1))


class AEDecoder(nn.Module):
    """Mirror of :class:`AEEncoder`; with ``u_dim > 0`` every upsampling stage is conditioned on u (App. D.4)."""

    def __init__(self, out_channels=3, ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3, u_dim: int = 0,
                 u_channels: int = 32):
        super().__init__()
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = ResBlock(c, c)
        self.u_dim = u_dim
        self.levels = nn.ModuleList()
        self.fuses = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            blocks: list[nn.Module] = []
            if u_dim:
                self.fuses.append(_UFuse(c, u_dim, u_channels))
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(c, ch * mult))
                c = ch * mult
            if level != 0:
                blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
            self.levels.append(nn.Sequential(*blocks))
        self.out = nn.Sequential(norm(c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1))

    def forward(self, z: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, z_channels, h, w) [, u (B, K, d_tok) or (B, u_dim)] -> (B, 3, 4h, 4w). With u=None a u-conditioned
        decoder skips its fusion layers, which equals their initial (identity) state."""
        h = self.mid(self.conv_in(z))                         # (B, C*mult[-1], h, w)
        conditioned = self.u_dim and u is not None            # u=None: the unconditional path (stage-0 training)
        if conditioned:
            u_flat = u.flatten(1)
            if u_flat.shape[1] != self.u_dim:
                raise ValueError(f"u: expected {self.u_dim} features per sample (flattened tokens), "
                                 f"got {u_flat.shape[1]}")
        for i, level in enumerate(self.levels):
            if conditioned:
                h = self.fuses[i](h, u_flat)                  # concat u-features at each upsampling stage
            h = level(h)
        return self.out(h)                                    # (B, 3, H, W), images in [-1, 1] scale


class VQAutoencoder(nn.Module):
    """E: (B, 3, 64, 64) in [0, 1] -> z (B, 3, 16, 16) (scaled pre-quantisation latent); D: z [, u] -> image.

    Args:
        ch, ch_mult, num_res_blocks: width, per-level multipliers (len 3 = downsampling factor 4) and depth.
        z_channels: latent channels (3). n_embed: codebook size (2048). u_dim: flattened concept-token size for the
        u-conditioned decoder (0 = unconditional, EncDiff). u_channels: u-feature width per upsampling stage.
    """

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4), num_res_blocks: int = 2,
                 z_channels: int = 3, n_embed: int = 2048, u_dim: int = 0, u_channels: int = 32):
        super().__init__()
        self.encoder = AEEncoder(3, ch, ch_mult, num_res_blocks, z_channels)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        self.quantize = VectorQuantizer(n_embed, z_channels)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        self.decoder = AEDecoder(3, ch, ch_mult, num_res_blocks, z_channels, u_dim, u_channels)
        self.register_buffer("scale_factor", torch.ones(()))
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.z_channels = z_channels

    def latent_shape(self, image_size: int = 64) -> tuple[int, int, int]:
        s = image_size // self.downsample
        return (self.z_channels, s, s)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, 64, 64) -> scaled pre-quantisation latent (B, 3, 16, 16)."""
        return self.quant_conv(self.encoder(x * 2 - 1)) * self.scale_factor

    def decode(self, z: torch.Tensor, u: torch.Tensor | None = None, *, return_vq_loss: bool = False):
        """Scaled latent (B, 3, 16, 16) [+ tokens] -> image logits in [-1, 1] scale (B, 3, 64, 64).

        Quantises with the straight-through estimator (gradient flows to z).
        """
        q, vq_loss, _ = self.quantize(z / self.scale_factor)
        x = self.decoder(self.post_quant_conv(q), u)
        return (x, vq_loss) if return_vq_loss else x

    @staticmethod
    def to_image(x: torch.Tensor) -> torch.Tensor:
        """Decoder output ([-1, 1] scale) -> images clamped to [0, 1]."""
        return ((x + 1) / 2).clamp(0, 1)

    def forward(self, x: torch.Tensor, u: torch.Tensor | None = None):
        """Reconstruction ``(x_rec in [-1,1] scale, vq_loss)`` of images x in [0, 1]."""
        return self.decode(self.encode(x), u, return_vq_loss=True)

    def loss(self, x: torch.Tensor, u: torch.Tensor | None = None, *, perceptual: nn.Module | None = None,
             perceptual_weight: float = 0.0, discriminator: nn.Module | None = None,
             adversarial_weight: float = 0.0) -> dict:
        """L1 + MSE pixel loss (on the [-1, 1] scale) + VQ loss; see the module docstring. Optional (VQGAN's):

        * ``perceptual_weight x mean LPIPS(x, x_rec)`` with ``perceptual`` an LPIPS module taking images in [0, 1]
          (:class:`mclcore.metrics.lpips.LPIPS`; the reconstruction is mapped unclamped so gradients pass);
        * ``adversarial_weight x w x (-mean D(x_rec))`` with ``discriminator`` D (:class:`PatchDiscriminator`),
          ``w = |grad_L L_nll| / (|grad_L L_G| + 1e-4)`` clamped to [0, 1e4] and detached, ``L`` the decoder's last
          convolution weight (taming's ``calculate_adaptive_weight``; L_nll = pixel + perceptual). The step's images
          and detached reconstructions come back as ``x_real``, ``x_rec`` (both on the [-1, 1] scale D sees) for
          the discriminator's own step.
        """
        if perceptual_weight and perceptual is None:
            raise ValueError("perceptual: perceptual_weight > 0 needs an LPIPS module")
        if adversarial_weight and discriminator is None:
            raise ValueError("discriminator: adversarial_weight > 0 needs a discriminator")
        rec, vq = self(x, u)
        target = x * 2 - 1
        rec_loss = (rec.float() - target).abs().mean() + (rec.float() - target).pow(2).mean()
        out = {}
        nll = rec_loss
        if perceptual_weight:
            p_loss = perceptual((rec.float() + 1) / 2, x.float()).mean()
            nll = nll + perceptual_weight * p_loss
            out["perceptual"] = p_loss.detach()
        loss = nll + vq
        if adversarial_weight:
            g_loss = -discriminator(rec.float()).mean()
            last = self.decoder.out[-1].weight
            if torch.is_grad_enabled() and last.requires_grad:
                g_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
                g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
                w = (g_nll.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()
            else:                                   # no graph (evaluation): taming uses 0 there too
                w = torch.zeros((), device=x.device)
            loss = loss + adversarial_weight * w * g_loss
            # both on the decoder's [-1, 1] scale, what D saw above, for the discriminator's own step
            out.update(g_loss=g_loss.detach(), adv_weight=w, x_real=target.detach(), x_rec=rec.detach().float())
        return {"loss": loss, "rec": rec_loss, "vq": vq, **out}

    @torch.no_grad()
    def set_scale_from(self, x: torch.Tensor) -> float:
        """LDM's scale_by_std: scale_factor = 1 / std of the unscaled latents of the batch ``x``."""
        self.scale_factor.fill_(1.0)
        std = float(self.encode(x).float().std())
        self.scale_factor.fill_(1.0 / max(std, 1e-6))
        return float(self.scale_factor)

    def codebook_usage(self, x: torch.Tensor) -> float:
        """Fraction of the codebook hit by the latents of ``x`` (a health check for small-scale training)."""
        with torch.no_grad():
            idx = self.quantize(self.encode(x) / self.scale_factor)[2]
        return float(idx.unique().numel()) / self.quantize.n_embed


class PatchDiscriminator(nn.Module):
    """The pix2pix / taming PatchGAN (``NLayerDiscriminator``): (B, 3, H, W) on the [-1, 1] scale -> patch logits.

    Conv(4x4/2) + LeakyReLU(0.2); then ``n_layers - 1`` blocks Conv(4x4/2, no bias) + BatchNorm + LeakyReLU with
    widths ``ndf x min(2^n, 8)``; one more such block at stride 1; a final Conv(4x4/1) to one channel. Weights
    initialised as taming's ``weights_init``: conv N(0, 0.02), BatchNorm weight N(1, 0.02), bias 0.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_rec))): the discriminator's hinge loss (taming's default)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

