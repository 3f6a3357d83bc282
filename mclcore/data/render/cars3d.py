"""Procedural Cars3D-like dataset: 183 parametric car meshes x 24 azimuths x 4 elevations, software-rasterized.

Factors (row-major, as the Cars3D loader orders them): elevation 4 (0, 10, 20, 30 degrees), azimuth 24 (0..345
in 15 degree steps), identity 183. Each identity is a car drawn from a parametric family seeded by its index
(``numpy.random.default_rng([0xCA75, identity])``): a side profile (bumpers, hood, windshield, roof, rear window,
trunk; sedan, hatchback or van) extruded across the width with a narrower cabin, glass faces and side windows, four
octagonal wheels with hubs, and a ground shadow; about 170 triangles, flat-shaded with a fixed light (so the
shading changes with the view). Drawn with :func:`mclcore.data.render.raster.rasterize` at 2x resolution and
box-filtered to 64x64, ~5 ms per view on one shared core (the full grid in ~90 s; 2-core AMD EPYC VM, 2026-11).
Images are cached in memory once drawn (17,568 x 12 KB = 216 MB for the full grid).
"""
from __future__ import annotations

import threading

import numpy as np

from mclcore.data.base import GroundTruthDataset
from mclcore.data.datasets.cars3d import SPEC
from mclcore.data.images import resize_area
from mclcore.data.render.common import hsv_to_rgb
from mclcore.data.render.raster import look_at, project, rasterize

__all__ = ["Cars3DRender", "car_mesh"]

_ELEVATIONS = np.array([0.0, 10.0, 20.0, 30.0])
_AZIMUTHS = np.arange(24) * 15.0
_TARGET = np.array([0.0, 0.75, 0.0])
_DIST, _FOV = 7.6, 34.0
_LIGHT = np.array([0.35, 1.0, -0.45]) / np.linalg.norm([0.35, 1.0, -0.45])
_BACKGROUND = (0.94, 0.94, 0.95)


def _octagon(cx, cy, r, n=8):
    a = np.arange(n) * 2 * np.pi / n + np.pi / n
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def car_mesh(identity: int):
    """Triangles of car ``identity``: (vertices (T, 3, 3) world coordinates, normals (T, 3), rgb (T, 3)).

    Colours already include the fixed directional lighting (flat shading); the ground shadow is unlit.
    """
    g = np.random.default_rng([0xCA75, int(identity)])
    style = int(g.integers(3))                       # 0 sedan, 1 hatchback, 2 van / SUV
    L, W = g.uniform(3.8, 4.9), g.uniform(1.65, 1.95)
    c = g.uniform(0.14, 0.28)
    hb = g.uniform(0.45, 0.7) + (0.12 if style == 2 else 0.0)
    hc = g.uniform(0.38, 0.55) + (0.12 if style == 2 else 0.0)
    hood = g.uniform(0.2, 0.3) * L * (0.55 if style == 2 else 1.0)
    shield = g.uniform(0.12, 0.2) * L
    roof = g.uniform(0.25, 0.34) * L * (1.35 if style == 2 else 1.0)
    front, rear = L / 2, -L / 2
    x_wb, x_rf = front - 0.03 * L - hood, front - 0.03 * L - hood - shield
    x_rr = max(x_rf - roof, rear + 0.08 * L)
    if style == 0:
        x_rb = max(x_rr - g.uniform(0.1, 0.16) * L, rear + 0.2 * L)
        top_rear = [(x_rb, c + hb), (rear + 0.03 * L, c + hb)]
    else:
        top_rear = [(rear + 0.04 * L, c + hb)]
    y_top = c + hb + hc
    taper = g.uniform(0.76, 0.88)
    # Side profile, counter-clockwise in (x forward, y up): (x, y, half-width).
    prof = [(rear, c, W / 2), (front, c, W / 2), (front, c + 0.78 * hb, W / 2),
            (front - 0.03 * L, c + hb, W / 2), (x_wb, c + hb, 0.97 * W / 2),
            (x_rf, y_top, taper * W / 2), (x_rr, y_top, taper * W / 2)]
    prof += [(x, y, (0.97 if i == 0 else 1.0) * W / 2) for i, (x, y) in enumerate(top_rear)]
    prof += [(rear, c + 0.78 * hb, W / 2)]
    prof = np.array(prof)
    glass_edges = {4, 6}                              # windshield (4 -> 5) and rear window (6 -> 7)

    hue = g.uniform()
    sat = 0.05 if g.uniform() < 0.35 else g.uniform(0.45, 0.9)
    val = g.uniform(0.25, 0.95)
    body = hsv_to_rgb(hue, sat, val)
    glass = np.array([0.12, 0.14, 0.18])
    tyre, hub = np.array([0.1, 0.1, 0.1]), np.array([0.72, 0.72, 0.74])

    tris, normals, cols = [], [], []

    def add(tri, n, col):
        tris.append(np.asarray(tri, dtype=np.float64))
        normals.append(np.asarray(n, dtype=np.float64) / np.linalg.norm(n))
        cols.append(col)

    k = len(prof)
    for i in range(k):                                # band around the profile
        (x0, y0, z0), (x1, y1, z1) = prof[i], prof[(i + 1) % k]
        n = np.array([y1 - y0, -(x1 - x0), 0.0])
        col = glass if i in glass_edges else (body * 0.6 if i == 0 else body)
        a, b, cc, d = (x0, y0, z0), (x1, y1, z1), (x1, y1, -z1), (x0, y0, -z0)
        add([a, b, cc], n, col)
        add([a, cc, d], n, col)
    centre_x = 0.5 * (x_wb + x_rr)
    for s in (1.0, -1.0):                             # side panels: fan from a point below the beltline
        ctr = (centre_x, c + 0.8 * hb, s * 0.985 * W / 2)
        for i in range(k):
            p0, p1 = prof[i], prof[(i + 1) % k]
            add([ctr, (p0[0], p0[1], s * p0[2]), (p1[0], p1[1], s * p1[2])], (0, 0, s), body)
        # side window: the cabin quad shrunk towards its centre, just outside the panel
        cab = prof[[4, 5, 6, 7]].copy()
        mid = cab.mean(0)
        cab = mid + 0.8 * (cab - mid)
        cab[:, 1] = np.maximum(cab[:, 1], c + hb + 0.04)
        win = [(p[0], p[1], s * (p[2] + 0.012)) for p in cab]
        add([win[0], win[1], win[2]], (0, 0, s), glass)
        add([win[0], win[2], win[3]], (0, 0, s), glass)
    wb = g.uniform(0.55, 0.65) * L
    rw = g.uniform(0.3, 0.38)
    for wx in (wb / 2, -wb / 2):                       # wheels: outer disc, hub, tread
        for s in (1.0, -1.0):
            zo, zi = s * (W / 2 + 0.03), s * (W / 2 - 0.2)
            ring, inner = _octagon(wx, rw, rw), _octagon(wx, rw, 0.55 * rw)
            for j in range(8):
                a, b = ring[j], ring[(j + 1) % 8]
                add([(wx, rw, zo), (a[0], a[1], zo), (b[0], b[1], zo)], (0, 0, s), tyre)
                ia, ib = inner[j], inner[(j + 1) % 8]
                zh = zo + s * 0.006
                add([(wx, rw, zh), (ia[0], ia[1], zh), (ib[0], ib[1], zh)], (0, 0, s), hub)
                rad = np.array([(a[0] + b[0]) / 2 - wx, (a[1] + b[1]) / 2 - rw, 0.0])
                add([(a[0], a[1], zo), (b[0], b[1], zo), (b[0], b[1], zi)], rad, tyre)
                add([(a[0], a[1], zo), (b[0], b[1], zi), (a[0], a[1], zi)], rad, tyre)
    verts, normals, cols = np.stack(tris), np.stack(normals), np.stack(cols)
    shade = 0.38 + 0.62 * np.clip(normals @ _LIGHT, 0, None)
    spec = np.where((cols == glass).all(1), 0.08, 0.0)
    rgb = np.clip(cols * shade[:, None] + spec[:, None], 0, 1)
    # Ground shadow (unlit, drawn under the car).
    sx, sz, y = L / 2 + 0.15, W / 2 + 0.12, 0.002
    quad = [(-sx, y, -sz), (sx, y, -sz), (sx, y, sz), (-sx, y, sz)]
    shadow = np.array([[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]])
    verts = np.concatenate([verts, shadow])
    normals = np.concatenate([normals, [[0, 1, 0], [0, 1, 0]]])
    rgb = np.concatenate([rgb, [[0.7, 0.7, 0.72], [0.7, 0.7, 0.72]]])
    return verts, normals, rgb


def render_car(identity: int, elevation_deg: float, azimuth_deg: float, size: int = 64, supersample: int = 2,
               mesh=None) -> np.ndarray:
    """One (size, size, 3) uint8 view of car ``identity``."""
    verts, normals, rgb = car_mesh(identity) if mesh is None else mesh
    e, a = np.deg2rad(elevation_deg), np.deg2rad(azimuth_deg)
    eye = _TARGET + _DIST * np.array([np.cos(e) * np.sin(a), np.sin(e), -np.cos(e) * np.cos(a)])
    rot = look_at(eye, _TARGET)
    visible = np.einsum("tc,tc->t", normals, eye - verts[:, 0]) > 1e-9    # back-face culling
    big = size * supersample
    xy, z = project(verts[visible], eye, rot, _FOV, big)
    img = rasterize(xy, z, rgb[visible], big, _BACKGROUND)
    img = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)[None]
    return resize_area(img, size)[0] if supersample > 1 else img[0]


class Cars3DRender(GroundTruthDataset):
    """Procedural Cars3D-like dataset with the (4, 24, 183) grid (17,568 images), deterministic by index.

    Args:
        supersample: anti-aliasing factor per axis (2: rendered at 128x128 and box-filtered).
        cache: keep drawn images in memory (216 MB for the whole grid); a second pass over the grid is free.
    """

    name = "cars3d"

    def __init__(self, supersample: int = 2, cache: bool = True):
        super().__init__(SPEC.factor_names, SPEC.factor_sizes,
                         [_ELEVATIONS, _AZIMUTHS, np.arange(SPEC.factor_sizes[2], dtype=np.float64)])
        self.supersample = int(supersample)
        self._cache = np.zeros((len(self), 64, 64, 3), dtype=np.uint8) if cache else None
        self._have = np.zeros(len(self), dtype=bool) if cache else None
        self._meshes: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def _mesh(self, ident):
        m = self._meshes.get(ident)
        if m is None:
            m = self._meshes[ident] = car_mesh(ident)
        return m

    def _observations(self, index):
        out = np.empty((index.size, 64, 64, 3), dtype=np.uint8)
        todo = np.arange(index.size) if self._cache is None else np.flatnonzero(~self._have[index])
        if todo.size:
            uniq, inv = np.unique(index[todo], return_inverse=True)
            f = self.index_to_factors(uniq)
            imgs = np.stack([render_car(int(i), _ELEVATIONS[e], _AZIMUTHS[a], 64, self.supersample,
                                        self._mesh(int(i))) for e, a, i in f])
            if self._cache is not None:
                with self._lock:
                    self._cache[uniq] = imgs
                    self._have[uniq] = True
            else:
                out[todo] = imgs[inv.reshape(-1)]
                return out
        return self._cache[index]
