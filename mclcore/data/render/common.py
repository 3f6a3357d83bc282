"""Helpers shared by the procedural renderers: colours, batching, image assembly."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["hsv_to_rgb", "to_uint8", "compose_linear", "chunks"]


def hsv_to_rgb(h, s=1.0, v=1.0) -> np.ndarray:
    """Hue/saturation/value in [0, 1] (broadcast) -> (..., 3) float64 RGB in [0, 1]."""
    h, s, v = np.broadcast_arrays(np.asarray(h, dtype=np.float64), np.asarray(s, dtype=np.float64),
                                  np.asarray(v, dtype=np.float64))
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float tensor in [0, 1] -> uint8 numpy (round half up, clipped)."""
    return x.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()


def compose_linear(maps: torch.Tensor, keys: np.ndarray, colours: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Images that are linear in a few colours: ``out[n] = maps[keys[n]] @ colours[n]``.

    Args:
        maps: (K, P, C) float32, per geometry key the per-pixel weight of each of C colour slots (shading times
            coverage), P = H*W pixels.
        keys: (N,) int geometry keys.
        colours: (N, C, 3) RGB of each colour slot in [0, 1].
    Returns:
        (N, P, 3) uint8.
    A batched matmul with an inner dimension of C (= 3 or 4) is memory-bound; chunks of 512 images keep the float
    intermediate at 25 MB.
    """
    n = keys.shape[0]
    out = np.empty((n, maps.shape[1], 3), dtype=np.uint8)
    col = torch.as_tensor(np.ascontiguousarray(colours), dtype=torch.float32)
    k = torch.as_tensor(keys, dtype=torch.long)
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        out[sl] = to_uint8(torch.bmm(maps[k[sl]], col[sl]))
    return out


def chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))
