"""A small z-buffered triangle rasterizer in numpy (flat colours, pixel-centre sampling).

Each triangle's edge functions and interpolated depth are evaluated (vectorised) on the pixels of its own bounding
box and compared with a depth buffer. With ~100 visible triangles and a 128x128 target (2x supersampling of
64x64) one image takes a few milliseconds.
"""
from __future__ import annotations

import numpy as np

__all__ = ["look_at", "project", "rasterize"]


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """(3, 3) rotation whose rows are the camera's right, up and forward axes in world coordinates."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(up, fwd)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(fwd, right), fwd])


def project(points, eye, rot, fov_deg: float, size: int):
    """World points (..., 3) -> (pixel xy (..., 2) with y down, depth (...,)) for a pinhole camera."""
    cam = (np.asarray(points) - eye) @ rot.T
    f = (size / 2) / np.tan(np.deg2rad(fov_deg) / 2)
    z = cam[..., 2]
    x = size / 2 + f * cam[..., 0] / z
    y = size / 2 - f * cam[..., 1] / z
    return np.stack([x, y], -1), z


def rasterize(tri_xy, tri_z, tri_rgb, size: int, background) -> np.ndarray:
    """Draw triangles with a z-buffer.

    Args:
        tri_xy: (T, 3, 2) vertex pixel coordinates (x right, y down; pixel centres at i + 0.5).
        tri_z: (T, 3) positive depths (interpolated linearly in screen space).
        tri_rgb: (T, 3) flat colours in [0, 1].
        size: output is (size, size, 3).
        background: RGB of uncovered pixels.
    Returns:
        (size, size, 3) float32.
    """
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = np.asarray(background, dtype=np.float32)
    zbuf = np.full((size, size), np.inf, dtype=np.float32)
    tri_xy = np.asarray(tri_xy, dtype=np.float32)
    tri_z = np.asarray(tri_z, dtype=np.float32)
    tri_rgb = np.asarray(tri_rgb, dtype=np.float32)
    lo = np.clip(np.floor(tri_xy.min(1) - 0.5).astype(np.int64), 0, size)     # (T, 2) pixel bbox per triangle
    hi = np.clip(np.ceil(tri_xy.max(1) + 0.5).astype(np.int64), 0, size)
    centres = np.arange(size, dtype=np.float32) + 0.5
    # One small numpy evaluation per triangle over its own bounding box: ~40 us of overhead per triangle beats
    # evaluating every triangle on every pixel (measured 34 ms -> ~4 ms per 128x128 car view; 2-core AMD EPYC dev VM, 2026-11).
    for t in np.flatnonzero((hi > lo).all(1)):
        (x0, y0), (x1, y1), (x2, y2) = tri_xy[t]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-6:
            continue
        x = centres[None, lo[t, 0]:hi[t, 0]]
        y = centres[lo[t, 1]:hi[t, 1], None]
        w0 = ((x1 - x) * (y2 - y) - (x2 - x) * (y1 - y)) / area
        w1 = ((x2 - x) * (y0 - y) - (x0 - x) * (y2 - y)) / area
        w2 = 1.0 - w0 - w1
        depth = w0 * tri_z[t, 0] + w1 * tri_z[t, 1] + w2 * tri_z[t, 2]
        zb = zbuf[lo[t, 1]:hi[t, 1], lo[t, 0]:hi[t, 0]]
        win = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (depth < zb)
        zb[win] = depth[win]
        img[lo[t, 1]:hi[t, 1], lo[t, 0]:hi[t, 0]][win] = tri_rgb[t]
    return img
