"""Qualitative figures of the disentanglement study, written as PNG (paper Fig. 6, Fig. 8, Fig. 9).

* :func:`swap_grid` (Fig. 6): row 1 source images (SRC), row 2 targets (TRT), then one row per latent dimension k:
  SRC with code dimension k replaced by TRT's. Diffusion models decode with the same DDIM start noise per column;
  VAEs decode the posterior means.
* :func:`traversals` (Fig. 8): one row per latent dimension, sweeping it from its 2nd to 98th percentile over
  encoded data while the others stay at a source image's code.
* :func:`attention_maps` (Fig. 9, diffusion models only): the U-Net's cross-attention weights of every concept
  token (columns) over spatial locations, averaged over heads, cross-attention layers and the DDIM steps, upsampled
  to 64x64, for a few source images (rows).

Every PNG is written atomically (:func:`mclcore._io.save_figure`): a killed evaluation leaves the previous figure
or none, never half a file.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from mclcore._io import save_figure

__all__ = ["swap_grid", "traversals", "attention_maps", "write_all"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _decode_codes(model, cfg, codes: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Codes (N, K) -> images (N, 3, 64, 64) in [0, 1] (diffusion: DDIM from ``noise``; VAE: decoder)."""
    if hasattr(model, "generate"):
        return model.generate(codes, num_steps=cfg.eval.ddim_steps, x_T=noise).float().cpu()
    return model.decode(codes).float().cpu()


def _encode(model, x):
    return model.concepts(x) if hasattr(model, "concepts") else model(x)


def _noise(model, n, seed, device):
    if not hasattr(model, "latent_shape"):
        return None
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(n, *model.latent_shape, generator=g, device=device)


def _grid(rows: list[torch.Tensor]) -> np.ndarray:
    """list of (C, 3, 64, 64) rows -> (R*66, C*66, 3) image with 2-pixel white gaps."""
    r, c = len(rows), rows[0].shape[0]
    out = np.ones((r * 66, c * 66, 3), dtype=np.float32)
    for i, row in enumerate(rows):
        for j in range(c):
            out[i * 66 + 1:i * 66 + 65, j * 66 + 1:j * 66 + 65] = row[j].permute(1, 2, 0).numpy()
    return out


def _save(path, img, row_labels, title):
    plt = _plt()
    h, w = img.shape[:2]
    fig = plt.figure(figsize=(w / 66 * 0.8 + 1.0, h / 66 * 0.8 + 0.4), dpi=100)
    ax = fig.add_axes([0.9 / (w / 66 * 0.8 + 1.0), 0, 1 - 0.9 / (w / 66 * 0.8 + 1.0), 1 - 0.35 / (h / 66 * 0.8 + 0.4)])
    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([i * 66 + 33 for i in range(len(row_labels))], row_labels, fontsize=7)
    ax.set_title(title, fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


@torch.no_grad()
def swap_grid(model, cfg, dataset, path: str, device, n_pairs: int = 6, seed: int = 0) -> str:
    from mclcore.data import to_float_nchw

    rng = np.random.default_rng([seed, 61])
    src = to_float_nchw(dataset.observations_at(dataset.sample_index(n_pairs, rng))).to(device)
    trt = to_float_nchw(dataset.observations_at(dataset.sample_index(n_pairs, rng))).to(device)
    s_src, s_trt = _encode(model, src), _encode(model, trt)                  # (P, K)
    k = s_src.shape[1]
    codes = s_src[None].repeat(k, 1, 1)                                      # (K, P, K)
    for d in range(k):
        codes[d, :, d] = s_trt[:, d]
    noise = _noise(model, n_pairs, seed, device)
    noise_all = None if noise is None else noise.repeat(k, 1, 1, 1)
    imgs = _decode_codes(model, cfg, codes.reshape(k * n_pairs, k), noise_all).view(k, n_pairs, 3, 64, 64)
    rows = [src.cpu(), trt.cpu(), *imgs]
    _save(path, _grid(rows), ["SRC", "TRT", *[f"z{d}" for d in range(k)]],
          f"{cfg.model} on {cfg.data.dataset}: swap one code dimension from TRT into SRC (Fig. 6)")
    return path


@torch.no_grad()
def traversals(model, cfg, dataset, path: str, device, n_values: int = 8, seed: int = 0) -> str:
    from mclcore.data import to_float_nchw

    rng = np.random.default_rng([seed, 81])
    ref = to_float_nchw(dataset.observations_at(dataset.sample_index(512, rng))).to(device)
    codes = _encode(model, ref)                                               # (512, K)
    lo, hi = torch.quantile(codes.float(), 0.02, dim=0), torch.quantile(codes.float(), 0.98, dim=0)
    s0 = codes[:1]                                                            # the source image's code
    k = codes.shape[1]
    alphas = torch.linspace(0, 1, n_values, device=device)
    grid = s0.repeat(k, n_values, 1).view(k, n_values, k).clone()             # (K, V, K)
    for d in range(k):
        grid[d, :, d] = lo[d] + alphas * (hi[d] - lo[d])
    noise = _noise(model, 1, seed, device)
    noise_all = None if noise is None else noise.repeat(k * n_values, 1, 1, 1)
    imgs = _decode_codes(model, cfg, grid.view(k * n_values, k), noise_all).view(k, n_values, 3, 64, 64)
    _save(path, _grid(list(imgs)), [f"z{d}" for d in range(k)],
          f"{cfg.model} on {cfg.data.dataset}: latent traversals, 2nd..98th percentile (Fig. 8)")
    return path


@torch.no_grad()
def attention_maps(model, cfg, dataset, path: str, device, n_images: int = 4, seed: int = 0) -> str:
    from mclcore.data import to_float_nchw

    rng = np.random.default_rng([seed, 91])
    x = to_float_nchw(dataset.observations_at(dataset.sample_index(n_images, rng))).to(device)
    s = model.concepts(x)
    acc = torch.zeros(n_images, s.shape[1], 64, 64, device=device)

    model.unet.record_attention = True
    try:
        maps = []

        def collect(i, t, z_t):
            for _, m in model.unet.cross_attentions:
                if m.last_attention is not None:
                    maps.append(m.last_attention.float())

        model.sample_latents(s, num_steps=cfg.eval.ddim_steps, x_T=_noise(model, n_images, seed, device),
                             callback=collect)
        collect(-1, 0, None)   # the last step's maps
    finally:
        model.unet.record_attention = False
    for a in maps:                                                            # (B, heads, HW, K)
        b, _, hw, k = a.shape
        side = int(round(hw ** 0.5))
        m = a.mean(1).transpose(1, 2).reshape(b, k, side, side)
        m = m / m.flatten(2).sum(-1).clamp_min(1e-12)[..., None, None]       # each token's map sums to 1
        acc += F.interpolate(m, size=(64, 64), mode="bilinear", align_corners=False)
    acc = acc / max(1, len(maps))
    plt = _plt()
    k = s.shape[1]
    fig, axes = plt.subplots(n_images, k + 1, figsize=(0.75 * (k + 1), 0.8 * n_images + 0.4), squeeze=False)
    # One colour scale for every panel: each panel on its own scale made noise look like structure.
    vmax = float(acc.max()) if acc.numel() else 1.0
    for r in range(n_images):
        axes[r, 0].imshow(x[r].permute(1, 2, 0).cpu().numpy())
        for j in range(k):
            im = axes[r, j + 1].imshow(acc[r, j].cpu().numpy(), cmap="magma", vmin=0.0, vmax=vmax)
            if r == 0:
                axes[r, j + 1].set_title(f"tok {j}", fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=6)
    if k:
        fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), fraction=0.02, pad=0.01).ax.tick_params(labelsize=5)
    fig.suptitle(f"{cfg.model} on {cfg.data.dataset}: cross-attention per concept token (Fig. 9; one colour scale, "
                 f"uniform = {1 / (64 * 64):.1e})", fontsize=8)
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def write_all(model, cfg, dataset, out_dir: str, device) -> dict:
    """All figures of the run into ``out_dir/figures``; returns {name: path}."""
    d = os.path.join(out_dir, "figures")
    os.makedirs(d, exist_ok=True)
    out = {"swap": swap_grid(model, cfg, dataset, os.path.join(d, "fig6_swap.png"), device, seed=cfg.seed),
           "traversal": traversals(model, cfg, dataset, os.path.join(d, "fig8_traversals.png"), device,
                                   seed=cfg.seed)}
    if hasattr(model, "unet"):
        out["attention"] = attention_maps(model, cfg, dataset, os.path.join(d, "fig9_attention.png"), device,
                                          seed=cfg.seed)
    return out
