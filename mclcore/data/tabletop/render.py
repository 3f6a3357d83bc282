"""Batched numpy renderer of tabletop states: fixed oblique camera, 64x64 RGB, analytic anti-aliasing.

The table (with a faint 10 cm checker so positions read off the image) is ray-cast once at 4x4 supersampling and
cached. Everything that moves is drawn per batch of frames in small screen-space windows around each primitive:

* objects are vertical prisms over a 12-vertex footprint (a cube is a square with 3 vertices per side, a triangular
  prism a triangle with 4, a cylinder a 12-gon), drawn as their front-facing faces (back faces are culled by the
  projected winding) with flat Lambert shading;
* arm links, joints and fingers are screen-space capsules whose radius follows perspective and whose depth is
  interpolated along the segment; soft shadows are discs on the table under each object and the gripper.

Coverage is the clipped signed distance to the primitive's edge (``clip(0.5 - sdf, 0, 1)``, in pixels), which
anti-aliases edges without supersampling; primitives are composited with a per-pixel depth test. Every primitive
is evaluated for all frames of the batch at once in a window of the batch's largest extent, so the numpy call count
does not grow with the number of frames (about 0.37 ms per frame in batches of 256, one core of a 2-core AMD EPYC
VM, 2026-11).
"""
from __future__ import annotations

import numpy as np

from mclcore.data.tabletop.spec import COLOURS, HEIGHT_RATIO, SHAPES, STATE_DIM, embodiment_index, get_embodiment

__all__ = ["IMAGE_SIZE", "project", "render_states", "draw_trajectory", "CAMERA"]

IMAGE_SIZE = 64
CAMERA = {"eye": (0.0, -0.34, 1.0), "target": (0.0, 0.09, 0.0), "fov_deg": 42.0}
TABLE = {"x": (-0.42, 0.42), "y": (-0.28, 0.50), "thickness": 0.04}
_LIGHT = np.array([-0.35, -0.45, 0.82]) / np.linalg.norm([-0.35, -0.45, 0.82])
_AMBIENT = 0.42
_K = 12                                    # footprint vertices of every object
_VIS = 7                                   # the most sides of a 12-vertex convex prism that face the camera


def _camera():
    eye = np.array(CAMERA["eye"], dtype=np.float64)
    fwd = np.array(CAMERA["target"], dtype=np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    f = (IMAGE_SIZE / 2) / np.tan(np.deg2rad(CAMERA["fov_deg"]) / 2)
    return eye, np.stack([right, up, fwd]), f


_EYE, _ROT, _F = _camera()


def _project(points):
    """World points (..., 3) -> (pixels (..., 2) x right / y down, pixel centres at i + 0.5; depth (...,))."""
    cam = (np.asarray(points, dtype=np.float64) - _EYE) @ _ROT.T
    z = cam[..., 2]
    return np.stack([IMAGE_SIZE / 2 + _F * cam[..., 0] / z, IMAGE_SIZE / 2 - _F * cam[..., 1] / z], -1), z


def project(points, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """World (table) coordinates (..., 3) -> pixel coordinates (..., 2) (x right, y down) in an image of
    ``image_size`` pixels (the 64-pixel camera scaled; pixel (i, j)'s centre is at (i + 0.5, j + 0.5)).

    ``project(states[..., 0:3])`` gives the end-effector's (fingertip) pixel track."""
    xy, _ = _project(points)
    return xy * (image_size / IMAGE_SIZE)


# ------------------------------------------------------------------------------------------------ background
_BG_CACHE: dict = {}


def _background() -> np.ndarray:
    """(64, 64, 3) float32 table, table edge and floor, ray-cast at 4x4 samples per pixel (computed once)."""
    if "bg" in _BG_CACHE:
        return _BG_CACHE["bg"]
    ss = 4
    n = IMAGE_SIZE * ss
    c = (np.arange(n) + 0.5) / ss
    u, v = np.meshgrid(c, c)                                   # u: x pixel, v: y pixel
    d = np.stack([(u - IMAGE_SIZE / 2) / _F, -(v - IMAGE_SIZE / 2) / _F, np.ones_like(u)], -1) @ _ROT
    img = np.empty((n, n, 3))
    # floor far below, darker towards the top of the image
    img[:] = (0.22 + 0.08 * (v / IMAGE_SIZE))[..., None] * np.array([0.85, 0.9, 1.0])
    (x0, x1), (y0, y1), th = TABLE["x"], TABLE["y"], TABLE["thickness"]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -_EYE[2] / d[..., 2]                               # ray hits z = 0
        p = _EYE + t[..., None] * d
        top = (t > 0) & (p[..., 0] >= x0) & (p[..., 0] <= x1) & (p[..., 1] >= y0) & (p[..., 1] <= y1)
        tf = (y0 - _EYE[1]) / d[..., 1]                        # ray hits the table's front face y = y0
        q = _EYE + tf[..., None] * d
        front = ~top & (tf > 0) & (q[..., 0] >= x0) & (q[..., 0] <= x1) & (q[..., 2] <= 0) & (q[..., 2] >= -th)
    checker = (np.floor(p[..., 0] / 0.1) + np.floor(p[..., 1] / 0.1)) % 2
    wood = np.array([0.80, 0.66, 0.48])
    img[top] = (wood * (1.0 - 0.045 * checker[..., None]))[top]
    img[front] = wood * 0.55
    bg = img.reshape(IMAGE_SIZE, ss, IMAGE_SIZE, ss, 3).mean((1, 3)).astype(np.float32)
    _BG_CACHE["bg"] = bg
    return bg


# ------------------------------------------------------------------------------------------------ primitives
class _Canvas:
    """A batch of F float images with a depth buffer; primitives are composited in windows."""

    def __init__(self, n: int):
        self.img = np.broadcast_to(_background(), (n, IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
        self.zbuf = np.full((n, IMAGE_SIZE, IMAGE_SIZE), np.inf, dtype=np.float32)
        self.fi = np.arange(n)[:, None, None]

    def window(self, lo, hi):
        """Pixel bounding boxes lo/hi (F, 2) -> window index arrays and pixel-centre coordinates.

        One window size (the batch's largest box, clipped to the image) for all frames, so the primitive is
        evaluated as one (F, Wy, Wx) array; each frame's window origin is clipped into the image."""
        lo = np.floor(np.nan_to_num(lo, nan=0.0)).astype(np.int64) - 1
        hi = np.ceil(np.nan_to_num(hi, nan=0.0)).astype(np.int64) + 1
        lo = np.clip(lo, 0, IMAGE_SIZE)
        hi = np.clip(hi, 0, IMAGE_SIZE)
        w = np.clip((hi - lo).max(0), 1, IMAGE_SIZE)            # (2,) = (Wx, Wy)
        o = np.minimum(lo, IMAGE_SIZE - w)
        xi = o[:, 0, None, None] + np.arange(w[0])[None, None, :]
        yi = o[:, 1, None, None] + np.arange(w[1])[None, :, None]
        return yi, xi, (xi + 0.5).astype(np.float32), (yi + 0.5).astype(np.float32)

    def hits(self, yi, xi, alpha):
        """The covered pixels of a window: (mask (F, Wy, Wx), flat pixel indices (H,), frame of each (H,),
        coverage (H,)). Blending only these is what keeps thin, slanted links cheap: their windows are mostly
        empty."""
        hit = alpha > 0
        lin = np.broadcast_to((self.fi * IMAGE_SIZE + yi) * IMAGE_SIZE + xi, alpha.shape)[hit]
        return hit, lin, lin // (IMAGE_SIZE * IMAGE_SIZE), alpha[hit]

    def composite(self, lin, a, rgb, depth):
        """Blend colours ``rgb`` (H, 3) with coverage ``a`` (H,) into the flat pixels ``lin`` (H,) where ``depth``
        (H,) passes the depth test; the depth buffer is written where the coverage is > 0.5, so that an
        anti-aliased fringe does not hide what lies behind it."""
        zflat = self.zbuf.reshape(-1)
        z = zflat[lin]
        front = depth < z
        a = a * front
        w = front & (a > 0.5)
        zflat[lin[w]] = depth[w]
        flat = self.img.reshape(-1, 3)
        cur = flat[lin]
        flat[lin] = cur + a[:, None] * (rgb - cur)

    def shade(self, yi, xi, factor):
        """Multiply the image by ``factor`` (F, Wy, Wx) (shadows), touching only the pixels it darkens."""
        hit = factor < 1
        lin = np.broadcast_to((self.fi * IMAGE_SIZE + yi) * IMAGE_SIZE + xi, factor.shape)[hit]
        self.img.reshape(-1, 3)[lin] *= factor[hit][:, None]


def _polygon_sdf(verts, px, py):
    """Signed distance (pixels, approximate outside near corners) to convex polygons.

    verts: (F, ..., K, 2) vertices in either winding; px (F, 1, Wx), py (F, Wy, 1) pixel centres.
    Returns (F, ..., Wy, Wx): max over edges of the distance to the edge's line, negative inside."""
    e = np.roll(verts, -1, axis=-2) - verts
    area = (verts[..., 0] * np.roll(verts[..., 1], -1, -1) - np.roll(verts[..., 0], -1, -1) * verts[..., 1]).sum(-1)
    sign = np.where(area >= 0, 1.0, -1.0)[..., None]
    length = np.maximum(np.linalg.norm(e, axis=-1), 1e-9)
    nx, ny = sign * e[..., 1] / length, -sign * e[..., 0] / length          # outward unit normals (..., K)
    c = (nx * verts[..., 0] + ny * verts[..., 1]).astype(np.float32)
    nx, ny = nx.astype(np.float32), ny.astype(np.float32)
    extra = verts.ndim - 3                                                   # axes between F and K
    shape = (px.shape[0],) + (1,) * extra
    pxx = px.reshape(shape + (1, 1, px.shape[-1]))
    pyy = py.reshape(shape + (1, py.shape[-2], 1))
    d = nx[..., None, None] * pxx + ny[..., None, None] * pyy - c[..., None, None]
    return d.max(axis=-3), area


def _footprint(shape: np.ndarray) -> np.ndarray:
    """(F,) shape indices -> (F, 12, 2) unit footprints (width 1), counter-clockwise seen from above."""
    ang = np.arange(_K) * 2 * np.pi / _K
    circle = 0.5 * np.stack([np.cos(ang), np.sin(ang)], -1)
    # Same vertex count for every shape so that all objects of a batch are one array: extra vertices lie on edges.
    t = np.arange(3) / 3
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    square = np.concatenate([corners[i] + t[:, None] * (corners[(i + 1) % 4] - corners[i]) for i in range(4)])
    tri_c = 0.58 * np.stack([np.cos(np.pi / 2 + np.arange(3) * 2 * np.pi / 3),
                             np.sin(np.pi / 2 + np.arange(3) * 2 * np.pi / 3)], -1)
    t4 = np.arange(4) / 4
    tri = np.concatenate([tri_c[i] + t4[:, None] * (tri_c[(i + 1) % 3] - tri_c[i]) for i in range(3)])
    table = {"cube": square, "cylinder": circle, "prism": tri}
    return np.stack([table[s] for s in SHAPES])[shape]


def _draw_object(cv: _Canvas, pos, shape, colour, size, yaw):
    """Objects (F,) of footprint ``shape``, RGB ``colour`` (F, 3), width ``size`` (F,), yaw (F,) with bottom
    centre ``pos`` (F, 3)."""
    n = pos.shape[0]
    h = size * np.array([HEIGHT_RATIO[s] for s in SHAPES])[shape]
    c, s = np.cos(yaw), np.sin(yaw)
    fp = _footprint(shape) * size[:, None, None]
    c, s = c[:, None], s[:, None]
    fp = np.stack([c * fp[..., 0] - s * fp[..., 1], s * fp[..., 0] + c * fp[..., 1]], -1) + pos[:, None, :2]
    bottom = np.concatenate([fp, np.broadcast_to(pos[:, None, 2:3], (n, _K, 1))], -1)
    top = bottom + np.stack([np.zeros(n), np.zeros(n), h], -1)[:, None, :]
    pb, _ = _project(bottom)
    pt, _ = _project(top)
    allp = np.concatenate([pb, pt], 1)
    yi, xi, px, py = cv.window(allp.min(1), allp.max(1))
    sdf_top, area_top = _polygon_sdf(pt, px, py)
    quads = np.stack([pb, np.roll(pb, -1, 1), np.roll(pt, -1, 1), pt], 2)          # (F, K, 4, 2)
    # Front-facing sides wind like the top face on screen (both are counter-clockwise seen from outside). At most
    # _VIS of the 12 sides face the camera: evaluate only those (padding masked), not all 12.
    qa = 0.5 * ((quads[..., 0] * np.roll(quads[..., 1], -1, -1)) - (np.roll(quads[..., 0], -1, -1) * quads[..., 1])
                ).sum(-1)
    # Near edge-on sides are dropped: their projected quads degenerate and the half-plane test of a degenerate
    # quad leaks along its lines (stray pixels); a face under a quarter pixel of area adds nothing visible.
    visible = (np.sign(qa) == np.sign(area_top)[:, None]) & (np.abs(qa) > 0.25)
    pick = np.argsort(~visible, axis=1, kind="stable")[:, :_VIS]                     # visible sides first
    quads = np.take_along_axis(quads, pick[..., None, None], 1)
    visible = np.take_along_axis(visible, pick, 1)
    sdf_side, _ = _polygon_sdf(quads, px, py)
    cov_top = np.clip(0.5 - sdf_top, 0, 1)
    cov_side = np.clip(0.5 - sdf_side, 0, 1) * visible[..., None, None]
    # Lambert shading per face: outward normals of the footprint edges, and +z for the top.
    e = np.roll(bottom, -1, 1) - bottom
    nrm = np.stack([e[..., 1], -e[..., 0], np.zeros_like(e[..., 0])], -1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)
    lam_side = np.take_along_axis(_AMBIENT + (1 - _AMBIENT) * np.clip(nrm @ _LIGHT, 0, 1), pick, 1)  # (F, _VIS)
    lam_top = _AMBIENT + (1 - _AMBIENT) * _LIGHT[2]
    # Adjacent faces' fringes sum to full coverage (no background seam); colour is the coverage-weighted mean.
    total = cov_top + cov_side.sum(1)
    # Guard: nothing of the object outside its projected bounding box (+ half a pixel of anti-aliasing), whatever
    # the numerics of a nearly degenerate face.
    lo, hi = allp.min(1).astype(np.float32) - 0.5, allp.max(1).astype(np.float32) + 0.5
    inside = ((px >= lo[:, 0, None, None]) & (px <= hi[:, 0, None, None]) & (py >= lo[:, 1, None, None])
              & (py <= hi[:, 1, None, None]))
    hit, lin, frame, a = cv.hits(yi, xi, np.minimum(total, 1) * inside)
    light = (cov_top[hit] * lam_top + np.einsum("hk,hk->h", np.moveaxis(cov_side, 1, -1)[hit], lam_side[frame])
             ) / np.maximum(total[hit], 1e-6)
    # Depth of the object's centre: objects never interpenetrate, so one depth per object orders them.
    _, depth = _project(pos + np.stack([np.zeros(n), np.zeros(n), h / 2], -1))
    cv.composite(lin, a, colour[frame].astype(np.float32) * light[:, None].astype(np.float32),
                 depth.astype(np.float32)[frame])


def _draw_capsules(cv: _Canvas, p0, p1, width, rgb, shading=0.35, depth_bias=0.0):
    """3D segments p0 -> p1 (F, 3) of thickness ``width`` (metres, scalar or (F,)) as shaded screen capsules."""
    (a, za), (b, zb) = _project(p0), _project(p1)
    ra, rb = 0.5 * width * _F / za, 0.5 * width * _F / zb
    r = np.maximum(ra, rb)[:, None]
    yi, xi, px, py = cv.window(np.minimum(a, b) - r, np.maximum(a, b) + r)
    f32 = lambda v: np.asarray(v, dtype=np.float32)[:, None, None]  # noqa: E731  (per-frame scalars, float32)
    ab = b - a
    abx, aby, inv = f32(ab[:, 0]), f32(ab[:, 1]), f32(1.0 / np.maximum((ab ** 2).sum(-1), 1e-9))
    dx, dy = px - f32(a[:, 0]), py - f32(a[:, 1])
    t = np.clip((dx * abx + dy * aby) * inv, 0, 1)
    ex, ey = dx - t * abx, dy - t * aby
    dist = np.sqrt(ex * ex + ey * ey)
    rad = f32(ra) + t * f32(rb - ra)
    alpha = np.clip(rad - dist + 0.5, 0, 1)
    hit, lin, frame, a = cv.hits(yi, xi, alpha)
    t, dist, rad = t[hit], dist[hit], rad[hit]
    # a cylinder-like highlight: brighter along the axis
    q = np.minimum(dist / np.maximum(rad, 1e-6), 1)
    light = (1 - shading) + shading * np.sqrt(1 - q * q)
    depth = (za - depth_bias).astype(np.float32)[frame] + t * (zb - za).astype(np.float32)[frame]
    col = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    col = col[frame] if len(col) > 1 else col
    cv.composite(lin, a, col * light[:, None], depth)


def _draw_shadow(cv: _Canvas, xy, radius, strength):
    """Soft dark discs on the table at xy (F, 2), radius (F,) metres, darkness ``strength`` (F,) in [0, 1]."""
    n = xy.shape[0]
    ang = np.arange(8) * 2 * np.pi / 8                         # soft-edged, so an octagon is round enough
    ring = xy[:, None, :] + radius[:, None, None] * np.stack([np.cos(ang), np.sin(ang)], -1)
    pts, _ = _project(np.concatenate([ring, np.zeros((n, 8, 1))], -1))
    yi, xi, px, py = cv.window(pts.min(1) - 1, pts.max(1) + 1)
    sdf, _ = _polygon_sdf(pts, px, py)
    cov = np.clip((0.5 - sdf) / 2.0 + 0.25, 0, 1)                  # 2-pixel soft edge
    cv.shade(yi, xi, 1 - strength[:, None, None] * cov)


# ------------------------------------------------------------------------------------------------ the scene
def render_states(states, assets, sizes, yaw, embodiment) -> np.ndarray:
    """Render a batch of states.

    Args:
        states: (F, 11) float states (columns ``STATE_NAMES``).
        assets: (F, 2, 2) int (shape, colour) indices into ``SHAPES`` / ``COLOURS`` for objects A and B.
        sizes: (F, 2) object widths in metres; yaw: (F, 2) object yaw in radians.
        embodiment: name or index, one for the whole batch.
    Returns:
        (F, 64, 64, 3) uint8.
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != STATE_DIM:
        raise ValueError(f"states: expected (F, {STATE_DIM}), got {states.shape}")
    n = states.shape[0]
    assets = np.asarray(assets).reshape(n, 2, 2)
    sizes = np.asarray(sizes, dtype=np.float64).reshape(n, 2)
    yaw = np.asarray(yaw, dtype=np.float64).reshape(n, 2)
    emb = get_embodiment(embodiment_index(embodiment) if not isinstance(embodiment, str) else embodiment)
    palette = np.array(list(COLOURS.values()))
    cv = _Canvas(n)
    ee, grip, grasped = states[:, 0:3], states[:, 3], states[:, 10] > 0.5

    # shadows first (decals on the table): objects (offset away from the light), then the gripper's, fading with
    # height so that the end-effector's height reads off the gap between gripper and shadow
    for k, col in ((1, 7), (0, 4)):
        off = -_LIGHT[:2] / _LIGHT[2] * (states[:, col + 2] + 0.5 * sizes[:, k])[:, None]
        _draw_shadow(cv, states[:, col:col + 2] + off * 0.5, 0.55 * sizes[:, k],
                     np.clip(0.45 - 1.2 * states[:, col + 2], 0.1, 0.45))
    _draw_shadow(cv, ee[:, :2], np.full(n, 0.03), np.clip(0.5 - 1.2 * ee[:, 2], 0.12, 0.5))

    for k, col in ((1, 7), (0, 4)):
        _draw_object(cv, states[:, col:col + 3], assets[:, k, 0], palette[assets[:, k, 1]], sizes[:, k], yaw[:, k])

    j = emb.joints(ee)                                   # (F, J, 3)
    w = emb.link_width
    _draw_capsules(cv, j[:, 0], j[:, 1], 1.4 * w, np.array(emb.link_rgb) * 0.6)               # base column
    for a in range(1, j.shape[1] - 2):                                                        # links
        _draw_capsules(cv, j[:, a], j[:, a + 1], w, emb.link_rgb)
    for a in range(1, j.shape[1] - 1):                                                        # joints on top
        _draw_capsules(cv, j[:, a], j[:, a], 1.25 * w, emb.joint_rgb, depth_bias=0.6 * w)
    # gripper: hand down to the palm, a palm bar across x, two fingers down to the fingertips (the end-effector)
    gap = grip * emb.max_gap
    gap = np.where(grasped, np.maximum(gap, sizes[:, 0] + 0.3 * emb.finger_width), gap)
    palm = ee + np.array([0.0, 0.0, emb.finger_len])
    _draw_capsules(cv, j[:, -2], palm, 0.6 * w, emb.palm_rgb)
    half = np.stack([0.5 * gap + 0.5 * emb.finger_width, np.zeros(n), np.zeros(n)], -1)
    _draw_capsules(cv, palm - half, palm + half, 0.8 * emb.finger_width, emb.palm_rgb)
    for sgn in (-1, 1):
        off = sgn * np.stack([0.5 * gap, np.zeros(n), np.zeros(n)], -1)
        _draw_capsules(cv, palm + off, ee + off, emb.finger_width, emb.gripper_rgb, shading=0.25)
    return np.clip(cv.img * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ overlays
def draw_trajectory(frame, track, colour=(255, 220, 0), dashed: bool = True, width: float = 1.0) -> np.ndarray:
    """Draw a (dashed) polyline of the end-effector's track on a copy of ``frame``.

    Args:
        frame: (H, W, 3) uint8 (any square size; coordinates are scaled from the 64-pixel camera).
        track: (K, 2) pixel coordinates in the 64-pixel camera (as from :func:`project`), or (K, S) states with
            S >= 3 whose first three columns are the end-effector's (x, y, z), which are projected.
        colour: RGB 0-255 (the paper's figure uses yellow); dashed: 2-on / 1.5-off dashes in 64-pixel units.
    Returns:
        (H, W, 3) uint8.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] != frame.shape[1]:
        raise ValueError(f"frame: expected a square (H, W, 3) image, got {frame.shape}")
    track = np.asarray(track, dtype=np.float64)
    if track.ndim != 2 or track.shape[1] < 2:
        raise ValueError(f"track: expected (K, 2) pixels or (K, S>=3) states, got {track.shape}")
    pix = track if track.shape[1] == 2 else project(track[:, :3])
    size = frame.shape[0]
    pix = pix * (size / IMAGE_SIZE)
    out = frame.astype(np.float32).copy()
    if len(pix) < 2:
        return frame.copy()
    # sample points densely along the polyline; keep the "on" part of each dash; splat with an anti-aliased disc
    seg = np.diff(pix, axis=0)
    seglen = np.linalg.norm(seg, axis=1)
    step = 0.25 * size / IMAGE_SIZE
    pts, arc = [], []
    acc = 0.0
    for p, d, L in zip(pix[:-1], seg, seglen):
        m = max(int(np.ceil(L / step)), 1)
        t = np.arange(m) / m
        pts.append(p + t[:, None] * d)
        arc.append(acc + t * L)
        acc += L
    pts, arc = np.concatenate(pts), np.concatenate(arc) / (size / IMAGE_SIZE)
    if dashed:
        pts = pts[(arc % 3.5) < 2.0]
    r = 0.5 * width * size / IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    alpha = np.zeros((size, size), dtype=np.float32)
    for chunk in np.array_split(pts, max(1, len(pts) // 256)):
        lo = np.clip(np.floor(chunk.min(0) - r - 1).astype(int), 0, size)
        hi = np.clip(np.ceil(chunk.max(0) + r + 1).astype(int), 0, size)
        sub_x, sub_y = xx[lo[1]:hi[1], lo[0]:hi[0]], yy[lo[1]:hi[1], lo[0]:hi[0]]
        d = np.sqrt((sub_x[None] - chunk[:, 0, None, None]) ** 2 + (sub_y[None] - chunk[:, 1, None, None]) ** 2)
        a = np.clip(r - d + 0.5, 0, 1).max(0)
        alpha[lo[1]:hi[1], lo[0]:hi[0]] = np.maximum(alpha[lo[1]:hi[1], lo[0]:hi[0]], a)
    out += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
