"""DisDiff (Yang et al., "DisDiff: Unsupervised Disentanglement of Diffusion Probabilistic Models", NeurIPS 2023) on
the EncDiff/MDDiff backbone: the same VQ first stage and 3x16x16 latent, the same :class:`~mclcore.models.unet.UNet`
as the pretrained diffusion model, the same :class:`~mclcore.models.encdiff.Encoder4` as the concept encoder, the
same DDPM/DDIM (:mod:`mclcore.models.diffusion`). Table 1's "Diffusion / DisDiff" row.

What DisDiff is (and what is implemented here):

* a **pretrained, frozen** unconditional DPM ``eps_theta(z_t, t)``. Our U-Net always cross-attends to a context, so
  "unconditional" is a learned constant context of one token (``null_context``, trained with the U-Net in
  ``stage1``): attention over a single token is a constant per layer, i.e. no conditioning;
* an **encoder** ``E_phi(x) -> (z^1 .. z^N)``: Encoder4 with ``N * concept_dim`` outputs split into N concept
  representations (their ``Encoder4(latent_dim=192)`` chunked into ``latent_unit`` parts of ``repre_emb_channels``
  = 32);
* a **decoder** ``G_psi(z_t, z^k, t) -> g^k``, one gradient field per concept. As in their code
  (``openaimodel_shift.UNetModel`` with ``seprate_decoder`` and ``orth_emb``) it is a trainable copy of the U-Net's
  *upsampling half* (middle block, up blocks, zero-initialised output conv) that reads the frozen U-Net's
  downsampling features (bottleneck + skips) of ``z_t``; concept k enters every residual block twice: the time
  embedding plus a concept-index embedding (row k of the orthogonal matrix ``expm(W - W^T)``, a Linear to the time
  width) as one FiLM scale/shift, and ``Linear(z^k)`` as a second FiLM (their ``ResBlockShift`` with
  ``use_scale_shift_norm``). Where our U-Net has a transformer block the decoder has one too, cross-attending to
  ``z^k`` as a single token (their config uses plain self-attention there: ``use_spatial_transformer`` is off);
* the fields sum into the frozen noise prediction: in training ``eps = eps_theta + c_t sum_k g^k`` with their
  ``shift_coef`` ``c_t = -sqrt(alpha_t) (1 - abar_{t-1}) / sqrt(1 - abar_t)`` (PDAE's mean shift), in sampling and
  in the disentangling loss with their ``ddim_coef`` ``c_t = -sqrt(1 - abar_t)`` (classifier-guidance form);
* the **disentangling loss** (their ``LatentDiffusion.dis_loss``): per sample a concept ``c`` is drawn uniformly;
  ``x0_hat`` is decoded from the frozen prediction and ``x0_hat^c`` from ``eps_theta + c_t g^c`` (concept c's field
  alone; the first-stage decoder without quantisation, their ``force_not_quantize``), both are re-encoded by the
  encoder **with its parameters held fixed** (their ``deepcopy`` with ``requires_grad_(False)``,
  ``train_enc_flag=False``) into ``z_hat``, ``z_hat^c`` (B, N, d). With ``z`` the (detached) representation of the
  real image: logits ``|z_hat - z| - |z_hat^c - z|`` (which concept moved towards the truth, per concept norm)
  and ``|z_hat - z_hat^c|`` (which concept moved at all), each a cross-entropy against ``c``; the sum is weighted
  per sample by the (constant) image distance ``mean (x0_hat - x0_hat^c)^2`` (``dis_loss_type="IM"``; ``"Z"``
  weighs by the latent distance instead) and by ``dis_weight`` (1.0);
* total ``L = L_diffusion(eps vs noise) + L_dis``; the diffusion loss is ``diffusion.loss`` (their configs: l1).
  Trained: the decoder, the concept-index embedding and the encoder (``cond_stage_trainable: true``; it learns
  through the diffusion loss only, the dis loss never reaches it); the U-Net and the first stage stay frozen;
* **representation**: their evaluation fits a 1-component PCA per concept over the encoded dataset and scores the N
  projections. Here :meth:`DisDiff.fit_pca` fits it on a fixed sample of training images at the end of training
  (buffers, checkpointed) and :meth:`DisDiff.concepts` / ``forward`` return the N projections.

Defaults taken from the public code (``ThomasMrY/DisDiff``, ``configs/latent-diffusion/*-vq-4-16-dis.yaml`` and
``ldm/models/diffusion/ddpm.py``, read 2026-12-06): ``concept_dim = 32`` (``repre_emb_channels``), ``dis_weight =
1.0``, ``dis_loss_type = "IM"``, the two coefficients above, the frozen-encoder copy, unquantised decoding, one
concept drawn uniformly per sample, the l1 noise loss (configurable), PCA(1) per concept for the metrics. Their
``latent_unit`` is 6 on Shapes3D; the paper's Table 1 uses N = 20 for every method, our default.

Simplifications: the concept loop of their forward (N decoder passes) is one batched pass over ``B * N`` rows; the
frozen U-Net's down path runs once per step and is shared by all concepts (as theirs). Swapping or traversing the
scalar representation (figures) maps a scalar back to a code by the PCA's rank-1 reconstruction
``mean_k + s_k dir_k`` (:meth:`codes_from_scalars`); FID samples and reconstructions use the full codes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from mclcore.models.autoencoder import VQAutoencoder
from mclcore.models.diffusion import GaussianDiffusion
from mclcore.models.encdiff import Encoder4
from mclcore.models.unet import SpatialTransformer, UNet, norm, timestep_embedding

__all__ = ["DisDiff", "GradientFieldDecoder", "FiLMResBlock", "DIS_LOSS_TYPES", "unet_down", "unet_up"]

DIS_LOSS_TYPES = ("IM", "Z")


# ------------------------------------------------------------------------------------ the frozen U-Net, in halves
def unet_down(unet: UNet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor):
    """The U-Net's time embedding and downsampling path: ``(h, skips, temb)``. With :func:`unet_up` it is exactly
    ``unet(x, t, context)`` (tested); split so the gradient-field decoder can read the features."""
    temb = unet.time_mlp(timestep_embedding(t, unet.channels))
    h = unet.conv_in(x)
    hs = [h]
    for blk in unet.down:
        h = blk(h, temb, context) if hasattr(blk, "res") else blk(h)    # a res(+attention) block or a downsample
        hs.append(h)
    return h, hs, temb


def unet_up(unet: UNet, h: torch.Tensor, hs: list, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The U-Net's middle and upsampling path and output (see :func:`unet_down`)."""
    hs = list(hs)
    h = unet.mid2(unet.mid(h, temb, context), temb)
    for blk in unet.up:
        h = blk(torch.cat([h, hs.pop()], dim=1), temb, context) if hasattr(blk, "res") else blk(h)
    return unet.out(h)


# ------------------------------------------------------------------------------------------------- the decoder
class FiLMResBlock(nn.Module):
    """DisDiff's ``ResBlockShift`` with scale-shift norm: GN-SiLU-conv, GN, ``* (1 + s_t) + b_t`` from the (time +
    concept-index) embedding, ``* (1 + s_c) + b_c`` from the concept code's embedding, SiLU-conv (zero init),
    residual."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.cond = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2, self.conv2 = norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)      # their zero_module: each block starts as its skip path
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        s, b = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + s) + b
        s, b = self.cond(F.silu(cond))[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + s) + b
        return self.skip(x) + self.conv2(F.silu(h))


class GradientFieldDecoder(nn.Module):
    """``G_psi``: the frozen U-Net's down features of ``z_t`` + a concept (index k, code ``z^k``) -> gradient field
    ``g^k`` of the latent's shape. Mirrors the upsampling half of :class:`UNet` with the same sizes.

    ``forward(h, hs, temb, codes)``: ``h`` (B, C, h, w) bottleneck, ``hs`` the skips, ``temb`` (B, 4C), ``codes``
    (B, N, d) -> (B, N, C_latent, H, W): all N concepts in one batched pass over B * N rows."""

    def __init__(self, num_concepts: int, concept_dim: int, *, in_channels: int = 3, channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 attention_ds: Sequence[int] = (2, 4, 8), heads: int = 8):
        super().__init__()
        temb = 4 * channels
        self.num_concepts, self.concept_dim = num_concepts, concept_dim
        # concept-index embedding: rows of an orthogonal matrix expm(W - W^T) (their orth_emb), at least N rows
        m = max(temb // 2, num_concepts)
        self.part_latents = nn.Parameter(torch.randn(m, m))
        self.part_emb = nn.Linear(m, temb)
        self.repre_embed = nn.Linear(concept_dim, temb)
        # channel bookkeeping of UNet.__init__ (the skips its down path produces)
        skips, ch, ds = [channels], channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                ch = channels * mult
                skips.append(ch)
            if level != len(channel_mult) - 1:
                skips.append(ch)
                ds *= 2

        def tf(c, d):
            return SpatialTransformer(c, concept_dim, heads) if d in attention_ds else None

        self.mid1, self.mid_attn = FiLMResBlock(ch, ch, temb), SpatialTransformer(ch, concept_dim, heads)
        self.mid2 = FiLMResBlock(ch, ch, temb)
        self.res, self.attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self._plan: list[bool] = []             # per up entry: followed by an upsample?
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                self.res.append(FiLMResBlock(ch + skips.pop(), channels * mult, temb))
                ch = channels * mult
                self.attn.append(tf(ch, ds) or nn.Identity())
                up = level != 0 and i == num_res_blocks
                self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                   nn.Conv2d(ch, ch, 3, padding=1)) if up else nn.Identity())
                if up:
                    ds //= 2
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)    # their zero_module(shift_out): the fields start at 0 (= the DPM)
        nn.init.zeros_(self.out[-1].bias)

    def concept_embeddings(self) -> torch.Tensor:
        """(N, 4C): the concept-index embeddings (rows of an orthogonal matrix, mapped to the time width)."""
        w = self.part_latents
        return self.part_emb(torch.linalg.matrix_exp(w - w.T)[: self.num_concepts])

    def forward(self, h: torch.Tensor, hs: list, temb: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        b, n = codes.shape[:2]
        if n != self.num_concepts or codes.shape[2] != self.concept_dim:
            raise ValueError(f"codes: expected (B, {self.num_concepts}, {self.concept_dim}), got {tuple(codes.shape)}")
        rep = lambda a: a.repeat_interleave(n, dim=0)                          # row b * N + k: sample b, concept k
        emb = rep(temb) + self.concept_embeddings().repeat(b, 1)               # (B N, 4C)
        flat = codes.reshape(b * n, -1)                                        # (B N, d)
        cond, ctx = self.repre_embed(flat), flat[:, None, :]                   # FiLM input, one-token context
        hs = [rep(s) for s in hs]
        x = self.mid2(self.mid_attn(self.mid1(rep(h), emb, cond), ctx), emb, cond)
        for res, attn, up in zip(self.res, self.attn, self.upsample):
            x = res(torch.cat([x, hs.pop()], dim=1), emb, cond)
            x = attn(x, ctx) if isinstance(attn, SpatialTransformer) else x
            x = up(x)
        g = self.out(x)                                                        # (B N, C, H, W)
        return g.view(b, n, *g.shape[1:])


# ------------------------------------------------------------------------------------------------------- DisDiff
class DisDiff(nn.Module):
    """DisDiff on the EncDiff backbone (see the module docstring).

    Args:
        first_stage: the VQ autoencoder (frozen here). num_concepts: N. concept_dim: d per concept (32).
        encoder_hidden, encoder_fc: Encoder4 sizes. unet: keyword arguments of :class:`UNet` (the pretrained DPM;
        its ``attention_ds``, widths and heads also size the decoder). context_dim: the width of the DPM's constant
        context token. diffusion: keyword arguments of :class:`GaussianDiffusion`. dis_weight, dis_loss_type:
        the disentangling loss's weight and per-sample weighting (``"IM"`` or ``"Z"``).
    """

    def __init__(self, first_stage: VQAutoencoder, *, num_concepts: int = 20, concept_dim: int = 32,
                 encoder_hidden: int = 128, encoder_fc: int = 256, unet: dict | None = None, context_dim: int = 16,
                 diffusion: dict | None = None, dis_weight: float = 1.0, dis_loss_type: str = "IM",
                 image_size: int = 64):
        super().__init__()
        if not isinstance(num_concepts, int) or num_concepts < 1:
            raise ValueError(f"num_concepts: expected an int >= 1, got {num_concepts!r}")
        if not isinstance(concept_dim, int) or concept_dim < 1:
            raise ValueError(f"concept_dim: expected an int >= 1, got {concept_dim!r}")
        if dis_loss_type not in DIS_LOSS_TYPES:
            raise ValueError(f"dis_loss_type: expected one of {DIS_LOSS_TYPES}, got {dis_loss_type!r}")
        if not (math.isfinite(dis_weight) and dis_weight >= 0):
            raise ValueError(f"dis_weight: expected a finite number >= 0, got {dis_weight!r}")
        self.first_stage = first_stage
        for p in self.first_stage.parameters():
            p.requires_grad_(False)
        self.latent_shape = first_stage.latent_shape(image_size)
        unet = dict(unet or {})
        self.dpm = UNet(in_channels=self.latent_shape[0], context_dim=context_dim, **unet)
        self.null_context = nn.Parameter(torch.zeros(1, 1, context_dim))
        self.concept_encoder = Encoder4(num_concepts * concept_dim, encoder_hidden, encoder_fc)
        dec_kw = {k: unet[k] for k in ("channels", "channel_mult", "num_res_blocks", "attention_ds", "heads")
                  if k in unet}
        self.decoder = GradientFieldDecoder(num_concepts, concept_dim, in_channels=self.latent_shape[0], **dec_kw)
        self.diffusion = GaussianDiffusion(**(diffusion or {}))
        abar = self.diffusion.alphas_cumprod.double()
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        alpha = 1 - self.diffusion.betas.double()
        # their shift_coef (training) and ddim_coef (sampling, dis loss); see the module docstring
        self.register_buffer("shift_coef", (-alpha.sqrt() * (1 - abar_prev) / (1 - abar).sqrt()).float(),
                             persistent=False)
        self.register_buffer("ddim_coef", (-(1 - abar).sqrt()).float(), persistent=False)
        # per-concept PCA(1) of the codes (fit_pca): the scored representation
        self.register_buffer("pca_mean", torch.zeros(num_concepts, concept_dim))
        self.register_buffer("pca_dir", torch.zeros(num_concepts, concept_dim))
        self.register_buffer("pca_fitted", torch.zeros((), dtype=torch.bool))
        self.num_concepts, self.concept_dim, self.image_size = num_concepts, concept_dim, image_size
        self.dis_weight, self.dis_loss_type = float(dis_weight), dis_loss_type

    # ------------------------------------------------------------------------------------------- building blocks
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 64, 64) in [0, 1] -> concept codes (B, N, d)."""
        return self.concept_encoder(x).view(len(x), self.num_concepts, self.concept_dim)

    def _frozen_codes(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`codes` with the encoder's parameters held fixed (gradient flows to the input only): their
        ``eval_encoder``, a frozen copy, without copying."""
        params = {k: v.detach() for k, v in self.concept_encoder.named_parameters()}
        out = functional_call(self.concept_encoder, params, (x,))
        return out.view(len(x), self.num_concepts, self.concept_dim)

    def context(self, batch: int) -> torch.Tensor:
        return self.null_context.expand(batch, -1, -1)

    def eps_uncond(self, z_t: torch.Tensor, t: torch.Tensor, context=None) -> torch.Tensor:
        """The pretrained DPM's noise prediction (``context`` is ignored: the DPM is unconditional)."""
        return self.dpm(z_t, t, self.context(len(z_t)))

    def fields(self, z_t: torch.Tensor, t: torch.Tensor, codes: torch.Tensor):
        """``(eps_theta, g)``: the frozen DPM's prediction (no graph) and the N gradient fields (B, N, C, H, W)."""
        ctx = self.context(len(z_t))
        with torch.no_grad():
            h, hs, temb = unet_down(self.dpm, z_t, t, ctx)
            eps0 = unet_up(self.dpm, h, hs, temb, ctx)
        return eps0, self.decoder(h, hs, temb, codes)

    def eps(self, z_t: torch.Tensor, t: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Sampling noise prediction ``eps_theta + ddim_coef_t sum_k g^k`` (an EpsModel of :meth:`ddim_sample`)."""
        eps0, g = self.fields(z_t, t, codes)
        return eps0 + self.ddim_coef[t].view(-1, 1, 1, 1) * g.sum(1)

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.first_stage.encode(x)

    def _decode_unquantised(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> image in [0, 1] without the quantiser (their ``force_not_quantize``), differentiable in z."""
        fs = self.first_stage
        return (fs.decoder(fs.post_quant_conv(z / fs.scale_factor)) + 1) / 2

    # ------------------------------------------------------------------------------------------------ losses
    def pretrain_losses(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> dict:
        """Stage 1: the unconditional DPM's diffusion loss on images in [0, 1]."""
        z0 = self.latents(x)
        out = self.diffusion.training_losses(self.eps_uncond, z0, None, generator=generator)
        return {"loss": out["loss"], "diffusion": out["loss"].detach()}

    def losses(self, x: torch.Tensor, *, generator: torch.Generator | None = None, **_) -> dict:
        """Stage 2: ``L_diffusion + L_dis`` (module docstring). Randomness (t, noise, the concept c of each sample)
        comes from ``generator``."""
        b = len(x)
        z0 = self.latents(x)                                                    # (B, C, H, W)
        codes = self.codes(x)                                                   # (B, N, d)
        dev = generator.device if generator is not None else z0.device
        t = torch.randint(0, self.diffusion.num_timesteps, (b,), generator=generator, device=dev).to(z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=dev).to(z0)
        c = torch.randint(0, self.num_concepts, (b,), generator=generator, device=dev).to(z0.device)
        z_t = self.diffusion.q_sample(z0, t, noise)
        eps0, g = self.fields(z_t, t, codes)
        eps = eps0 + self.shift_coef[t].view(-1, 1, 1, 1) * g.sum(1)
        err = eps.float() - noise.float()
        l_diff = err.abs().mean() if getattr(self.diffusion, "loss", "mse") == "l1" else err.pow(2).mean()
        out = {"diffusion": l_diff.detach(), "codes": codes}
        loss = l_diff
        if self.dis_weight:
            l_dis, acc = self.dis_loss(z_t, t, eps0, g[torch.arange(b, device=g.device), c], codes, c)
            loss = loss + self.dis_weight * l_dis
            out.update(dis=l_dis.detach(), dis_acc=acc)
        out["loss"] = loss
        return out

    def dis_loss(self, z_t, t, eps0, g_c, codes, c):
        """DisDiff's disentangling loss for the sampled concepts ``c`` (B,) with their fields ``g_c`` (B, C, H, W).
        Returns (loss, accuracy of the first logits' argmax at ``c``, detached)."""
        coef = self.ddim_coef[t].view(-1, 1, 1, 1)
        target = codes.detach()
        with torch.no_grad():
            z0_hat = self.diffusion.predict_x0(z_t, t, eps0)
            img = self._decode_unquantised(z0_hat)
            z_hat = self._frozen_codes(img)                                      # (B, N, d)
        z0_new = self.diffusion.predict_x0(z_t, t, eps0 + coef * g_c)
        img_new = self._decode_unquantised(z0_new)
        z_new = self._frozen_codes(img_new)
        logits = (z_hat - target).norm(dim=-1) - (z_new - target).norm(dim=-1)  # (B, N): moved towards the truth
        logits_moved = (z_hat - z_new).norm(dim=-1)                              # (B, N): moved at all
        ce = F.cross_entropy(logits.float(), c, reduction="none") + \
            F.cross_entropy(logits_moved.float(), c, reduction="none")
        if self.dis_loss_type == "IM":
            w = (img - img_new.detach()).pow(2).flatten(1).mean(1)
        else:
            w = (z0_hat - z0_new.detach()).pow(2).flatten(1).mean(1)
        acc = (logits.argmax(1) == c).float().mean().detach()
        return (w.float() * ce).mean(), acc

    # -------------------------------------------------------------------------------------------- representation
    @torch.no_grad()
    def fit_pca(self, x: torch.Tensor, batch_size: int = 256) -> None:
        """Fit PCA(1) per concept on the codes of images ``x`` (their evaluation). The direction's sign is fixed so
        that its largest-magnitude entry is positive (a deterministic representation)."""
        codes = torch.cat([self.codes(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).double()
        mean = codes.mean(0)                                                    # (N, d)
        dirs = []
        for k in range(self.num_concepts):
            _, _, vh = torch.linalg.svd(codes[:, k] - mean[k], full_matrices=False)
            v = vh[0]
            dirs.append(v * torch.sign(v[v.abs().argmax()]))
        self.pca_mean.copy_(mean.float())
        self.pca_dir.copy_(torch.stack(dirs).float())
        self.pca_fitted.fill_(True)

    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """The representation: (B, N) projections of each concept code on its principal direction."""
        if not bool(self.pca_fitted):
            raise ValueError("concepts: the PCA of the codes is not fitted yet (fit_pca, done at the end of training)")
        return ((self.codes(x) - self.pca_mean) * self.pca_dir).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.concepts(x)

    def codes_from_scalars(self, s: torch.Tensor) -> torch.Tensor:
        """(B, N) scalars -> (B, N, d) codes by the PCA's rank-1 reconstruction (swaps and traversals)."""
        return self.pca_mean + s[..., None] * self.pca_dir

    # ------------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_latents(self, codes: torch.Tensor, *, num_steps: int = 50, x_T: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
        """DDIM latents guided by the gradient fields of ``codes`` (B, N, d)."""
        shape = (codes.shape[0], *self.latent_shape)
        return self.diffusion.ddim_sample(self.eps, shape, codes, num_steps=num_steps, x_T=x_T, generator=generator,
                                          callback=callback)

    @torch.no_grad()
    def generate_codes(self, codes: torch.Tensor, **kw) -> torch.Tensor:
        """Images in [0, 1] from full codes (B, N, d): DDIM, then the first stage's (quantising) decoder."""
        return VQAutoencoder.to_image(self.first_stage.decode(self.sample_latents(codes, **kw)).float())

    @torch.no_grad()
    def generate(self, s: torch.Tensor, **kw) -> torch.Tensor:
        """Images from the scalar representation (B, N) (figures): codes by :meth:`codes_from_scalars`."""
        return self.generate_codes(self.codes_from_scalars(s), **kw)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """EncDiff's reconstruction protocol: DDIM from noise guided by the full codes of x."""
        return self.generate_codes(self.codes(x), **kw)
