"""The denoising U-Net of EncDiff / MDDiff with cross-attention to concept tokens (paper App. D.4).

Paper size: base width 64, channel multipliers (1, 2, 4, 4), 2 residual blocks per resolution, 8-head spatial
cross-attention injecting the K = 20 concept tokens (context dim 16) at the three downsampled resolutions of the
3x16x16 latent (8x8, 4x4, 2x2; ``attention_ds = (2, 4, 8)``). The layout follows the latent-diffusion
``UNetModel``: ResBlocks with an additive timestep embedding, a transformer block (self-attention, cross-attention,
feed-forward) after each ResBlock at attention resolutions, skip connections from every down block, and a
zero-initialised output convolution. All sizes are arguments so tests and the ``cpu-smoke`` preset can shrink them.

Cross-attention maps (Fig. 9): set ``unet.record_attention = True``; every :class:`CrossAttention` then keeps its
last attention probabilities, (B, heads, H*W, K), in ``.last_attention``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["UNet", "ResBlock", "CrossAttention", "SpatialTransformer", "timestep_embedding", "norm"]


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of ``channels`` below 32 (small test widths)."""
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) as in the transformer / DDPM code."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class ResBlock(nn.Module):
    """GN-SiLU-conv, + Linear(temb), GN-SiLU-conv, residual (1x1 conv when the width changes).

    ``temb_dim = 0`` gives the time-free block used by the autoencoder.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch) if temb_dim else None
        self.norm2, self.conv2 = norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, N, dq) over a context (B, M, dc); self-attention when context is None."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 8):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        self.record = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        q, k, v = (a.view(b, a.shape[1], self.heads, -1).transpose(1, 2) for a in (q, k, v))  # (B, h, N|M, dh)
        attn = (q @ k.transpose(-1, -2) * self.scale).float().softmax(dim=-1).to(q.dtype)     # (B, h, N, M)
        if self.record:
            self.last_attention = attn.detach()
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)                                    # (B, N, h*dh)
        return self.to_out(out)


class SpatialTransformer(nn.Module):
    """GN -> 1x1 -> [x + SelfAttn(LN x); x + CrossAttn(LN x, tokens); x + FF(LN x)] -> 1x1 (zero init) + residual."""

    def __init__(self, channels: int, context_dim: int, heads: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads: {heads} must divide the channel width {channels} at an attention resolution")
        dh = channels // heads
        self.norm = norm(channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.ln1, self.attn1 = nn.LayerNorm(channels), CrossAttention(channels, None, heads, dh)
        self.ln2, self.attn2 = nn.LayerNorm(channels), CrossAttention(channels, context_dim, heads, dh)
        self.ln3 = nn.LayerNorm(channels)
        self.ff = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)          # (B, HW, C)
        y = y + self.attn1(self.ln1(y))
        y = y + self.attn2(self.ln2(y), context)                           # tokens (B, K, context_dim)
        y = y + self.ff(self.ln3(y))
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class _Block(nn.Module):
    """A ResBlock optionally followed by a SpatialTransformer (one entry of the U-Net's block lists)."""

    def __init__(self, res: ResBlock, attn: SpatialTransformer | None):
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x, temb, context):
        x = self.res(x, temb)
        return self.attn(x, context) if self.attn is not None else x


class UNet(nn.Module):
    """eps_theta(x_t, t, tokens): (B, C, H, W), (B,), (B, K, context_dim) -> (B, C, H, W).

    Args:
        in_channels: latent channels (3 for the 3x16x16 latent).
        channels: base width (paper 64). channel_mult: per-resolution multipliers (paper (1, 2, 4, 4)).
        num_res_blocks: ResBlocks per resolution (paper 2).
        attention_ds: downsampling factors with cross-attention (paper (2, 4, 8): the three downsampled
            resolutions of a 16x16 latent).
        heads: attention heads (paper 8). context_dim: concept-token width (paper 16).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, channel_mult: Sequence[int] = (1, 2, 4, 4),
                 num_res_blocks: int = 2, attention_ds: Sequence[int] = (2, 4, 8), heads: int = 8,
                 context_dim: int = 16, dropout: float = 0.0):
        super().__init__()
        self.channels = channels
        temb = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        def tf(ch, ds):
            return SpatialTransformer(ch, context_dim, heads) if ds in attention_ds else None

        self.down = nn.ModuleList()
        skips, ch, ds = [channels], channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(_Block(ResBlock(ch, channels * mult, temb, dropout), tf(channels * mult, ds)))
                ch = channels * mult
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                ds *= 2
        self.mid = _Block(ResBlock(ch, ch, temb, dropout), SpatialTransformer(ch, context_dim, heads))
        self.mid2 = ResBlock(ch, ch, temb, dropout)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                self.up.append(_Block(ResBlock(ch + skips.pop(), channels * mult, temb, dropout),
                                      tf(channels * mult, ds)))
                ch = channels * mult
            if level != 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
                ds //= 2
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.downsample_factor = 2 ** (len(channel_mult) - 1)

    @property
    def cross_attentions(self) -> list[tuple[str, CrossAttention]]:
        """(name, module) for every concept-token cross-attention (attn2 of each transformer)."""
        return [(n.removesuffix(".attn2"), m) for n, m in self.named_modules() if n.endswith("attn2")]

    @property
    def record_attention(self) -> bool:
        return any(m.record for _, m in self.cross_attentions)

    @record_attention.setter
    def record_attention(self, on: bool) -> None:
        for _, m in self.cross_attentions:
            m.record, m.last_attention = bool(on), None

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.downsample_factor or x.shape[-2] % self.downsample_factor:
            raise ValueError(f"x: spatial size {tuple(x.shape[-2:])} must be divisible by {self.downsample_factor} "
                             f"(2 ** (len(channel_mult) - 1))")
        temb = self.time_mlp(timestep_embedding(t, self.channels))   # (B, 4C)
        h = self.conv_in(x)                                          # (B, C, H, W)
        hs = [h]
        for blk in self.down:
            h = blk(h, temb, context) if isinstance(blk, _Block) else blk(h)
            hs.append(h)
        h = self.mid2(self.mid(h, temb, context), temb)
        for blk in self.up:
            if isinstance(blk, _Block):
                h = blk(torch.cat([h, hs.pop()], dim=1), temb, context)
            else:
                h = blk(h)
        return self.out(h)
