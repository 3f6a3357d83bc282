"""Image utilities shared by file loaders and procedural twins (numpy only; no PIL or torchvision)."""
from __future__ import annotations

import numpy as np

__all__ = ["resize_area"]


def resize_area(images: np.ndarray, size: int = 64) -> np.ndarray:
    """Area (box-filter) resize of (N, H, W, C) images to (N, size, size, C), uint8 in -> uint8 out.

    Each output pixel is the mean of the input area it covers (exact 2x2 means for 128 -> 64), implemented as two
    small matrix products so it works for any input size without PIL or torchvision.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images: expected (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    if h % size == 0 and w % size == 0:
        # integer factor: a reshape-mean is exact and was ~10x faster than the einsum path (2-core AMD EPYC VM,
        # 2026-11)
        fh, fw = h // size, w // size
        x = images.reshape(n, size, fh, size, fw, c).mean(axis=(2, 4), dtype=np.float32)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8) if images.dtype == np.uint8 else x
    rows, cols = _area_matrix(h, size), _area_matrix(w, size)
    x = images.astype(np.float32)
    x = np.einsum("oh,nhwc->nowc", rows, x, optimize=True)
    x = np.einsum("pw,nowc->nopc", cols, x, optimize=True)
    if images.dtype == np.uint8:
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: the overlap of output cell [o, o+1) * n_in/n_out with each input pixel, rows sum 1."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)
