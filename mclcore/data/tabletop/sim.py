"""Tabletop simulator: the step rule, the success rule and the scene generator (:class:`TabletopEnv`).

The state and action layout, assets and embodiments are in :mod:`~mclcore.data.tabletop.spec` (shared with the
renderer). Coordinates (metres): the table top is the plane z = 0; x points to the camera's right, y away from the
camera (towards the arms' mounts at the back of the table), z up. "Left of B" therefore means smaller x than B,
which is the left of the image. Object z is the height of the object's *bottom* above the table (0 when resting on
it); the end-effector z is the height of the fingertips.
"""
from __future__ import annotations

import numpy as np

from mclcore.data.tabletop.render import render_states
from mclcore.data.tabletop.spec import (A_POS, ACTION_DIM, ACTION_HIGH, ACTION_LOW, ACTION_NAMES, ASSET_SETS, B_POS,
                                        COLOURS, EE, GRASPED, GRIP, SHAPES, STATE_DIM, STATE_NAMES, embodiment_index,
                                        get_embodiment, object_height, task_index)

__all__ = ["TabletopEnv", "success_from_states", "SPAWN_A", "SPAWN_B"]

GRIPPER_RATE = 0.5        # the opening moves towards the command by at most this much per step (closing takes 2)
GRIP_CLOSED = 0.35        # opening at or below which the fingers hold an object
GRASP_RADIUS = 0.03       # planar distance end-effector -> A centre within which closing grasps A
OPEN_FOR_SUCCESS = 0.5    # "gripper open" in the success rule

# RoboTwin's check_success for place_a2b_{left,right}: planar distance in (0.08, 0.2), A on the named side of B
# along x, |dy| < 0.05, grippers open. We also require that A is not held.
SUCCESS_DIST = (0.08, 0.2)
SUCCESS_DY = 0.05

# Object spawn boxes (x range, y range); both tasks use the same scenes, like RoboTwin's two tasks. B stays
# near the middle so that both of its sides have room for A inside every arm's workspace.
SPAWN_A = ((-0.20, 0.20), (-0.14, 0.10))
SPAWN_B = ((-0.08, 0.08), (-0.12, 0.08))
MIN_AB_DIST, MIN_AB_DY = 0.10, 0.06   # as RoboTwin: A starts away from B and off B's row (never a success at t=0)


# ---------------------------------------------------------------------------------------------- success rule
def success_from_states(states, task) -> np.ndarray:
    """Task success of each state row (RoboTwin's rule for place_a2b_left / place_a2b_right).

    Args:
        states: (..., S) float states (columns STATE_NAMES); pass ``states[:, -1]`` for the end of episodes.
        task: "place_a2b_left" (A at smaller x than B) or "place_a2b_right" (A at larger x), or its index.
    Returns:
        (...,) bool: 0.08 < |A_xy - B_xy| < 0.2, A on the named side of B along x, |A_y - B_y| < 0.05,
        gripper opening >= 0.5 and A not grasped.
    """
    t = task_index(task)
    s = np.asarray(states, dtype=np.float64)
    if s.shape[-1] != STATE_DIM:
        raise ValueError(f"states: expected last dimension {STATE_DIM} ({', '.join(STATE_NAMES)}), got {s.shape}")
    dxy = s[..., 4:6] - s[..., 7:9]
    dist = np.linalg.norm(dxy, axis=-1)
    side = dxy[..., 0] < 0 if t == 0 else dxy[..., 0] > 0
    return ((dist > SUCCESS_DIST[0]) & (dist < SUCCESS_DIST[1]) & side & (np.abs(dxy[..., 1]) < SUCCESS_DY)
            & (s[..., GRIP] >= OPEN_FOR_SUCCESS) & (s[..., GRASPED] < 0.5))


# ------------------------------------------------------------------------------------------------------ env
def _spawn(rng: np.random.Generator, box) -> np.ndarray:
    (x0, x1), (y0, y1) = box
    return np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])


class TabletopEnv:
    """A tabletop pick-and-place scene with one arm and two objects A and B.

    ``TabletopEnv(embodiment, seed, asset_set="default")``: everything random (scene layout, assets, start pose)
    comes from ``np.random.default_rng(seed)``; the dynamics are deterministic. ``reset()`` draws a new scene and
    returns the observation ``{"frame": (64, 64, 3) uint8, "state": (11,) float32}``; ``step(action)`` applies a
    (4,) action (clipped to ACTION_LOW/HIGH) and returns the next observation. ``render_obs=False`` skips the
    frame in observations (the episode generator renders whole batches at once instead).

    Step rule: the end-effector moves by the clipped (dx, dy, dz) and is clipped to the embodiment's workspace box;
    the opening moves towards the command by at most 0.5; A is grasped when the opening falls to <= 0.35 on this step
    while the fingertips are within 0.03 (planar) of A's centre and between A's bottom and top; a grasped A keeps its
    offset to the end-effector (never below the table); A is released, and drops to the table, as soon as the
    opening rises above 0.35.
    """

    def __init__(self, embodiment: str = "arm_a", seed: int = 0, asset_set="default", render_obs: bool = True):
        self.embodiment = get_embodiment(embodiment)
        self.embodiment_id = embodiment_index(embodiment)
        if isinstance(asset_set, str):
            if asset_set not in ASSET_SETS:
                raise ValueError(f"asset_set: unknown asset set {asset_set!r}; expected one of {tuple(ASSET_SETS)}")
            asset_set = ASSET_SETS[asset_set]
        shapes, colours, sizes = asset_set
        if not shapes or len(colours) < 2 or not sizes:
            raise ValueError("asset_set: expected (shapes, colours, sizes) with >= 1 shape, >= 2 colours, >= 1 size")
        self.asset_set = (tuple(shapes), tuple(colours), tuple(float(s) for s in sizes))
        self.rng = np.random.default_rng(seed)
        self.render_obs = render_obs
        self._lo, self._hi = np.array(self.embodiment.lo), np.array(self.embodiment.hi)
        self._s = None

    # -- scene
    def reset(self, seed=None):
        """Draw a new scene (from ``seed`` if given, else the env's generator); returns the first observation."""
        rng = self.rng if seed is None else np.random.default_rng(seed)
        shapes, colours, sizes = self.asset_set
        col = rng.choice(len(colours), size=2, replace=False)
        # assets[k] = (shape, colour) indices into SHAPES / COLOURS for k = A, B; sizes in metres; yaw in radians
        self.assets = np.array([[SHAPES.index(shapes[rng.integers(len(shapes))]), list(COLOURS).index(colours[c])]
                                for c in col], dtype=np.int64)
        self.sizes = np.array([sizes[rng.integers(len(sizes))] for _ in range(2)])
        self.yaw = rng.uniform(0, 2 * np.pi, size=2)
        self._heights = np.array([object_height(SHAPES[self.assets[k, 0]], self.sizes[k]) for k in range(2)])
        b = _spawn(rng, SPAWN_B)
        for _ in range(1000):
            a = _spawn(rng, SPAWN_A)
            if np.linalg.norm(a - b) >= MIN_AB_DIST and abs(a[1] - b[1]) >= MIN_AB_DY:
                break
        else:  # pragma: no cover - about half of the spawn box qualifies, so this takes a few draws
            raise RuntimeError("TabletopEnv.reset: found no placement of A away from B")
        ee = np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.05, 0.15), rng.uniform(0.12, 0.22)])
        s = np.zeros(STATE_DIM)
        s[EE] = np.clip(ee, self._lo, self._hi)
        s[GRIP] = 1.0
        s[A_POS] = (*a, 0.0)
        s[B_POS] = (*b, 0.0)
        self._s = s
        self._offset = np.zeros(3)
        return self._obs()

    @property
    def heights(self) -> np.ndarray:
        """(2,) heights of A and B."""
        return self._heights.copy()

    def state(self) -> np.ndarray:
        """(11,) float32 copy of the state (columns STATE_NAMES)."""
        self._require_reset()
        return self._s.astype(np.float32)

    def _require_reset(self):
        if self._s is None:
            raise RuntimeError("TabletopEnv: call reset() before step(), state(), render() or success()")

    # -- dynamics
    def step(self, action):
        """Apply a (4,) action (dx, dy, dz, gripper_command), clipped to ACTION_LOW/HIGH; returns the next
        observation (see the class docstring for the rules)."""
        self._require_reset()
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action: expected {ACTION_DIM} finite numbers {ACTION_NAMES}, got {np.asarray(action)!r}")
        # np.minimum/maximum rather than np.clip: this runs 33 times per episode on 4-vectors, where np.clip's
        # Python-level overhead dominates
        a = np.minimum(np.maximum(a, ACTION_LOW), ACTION_HIGH)
        s = self._s
        s[EE] = np.minimum(np.maximum(s[EE] + a[:3], self._lo), self._hi)
        before = s[GRIP]
        s[GRIP] = before + min(max(a[3] - before, -GRIPPER_RATE), GRIPPER_RATE)
        h_a = self._heights[0]
        if s[GRASPED] > 0.5:
            if s[GRIP] > GRIP_CLOSED:                       # released: A drops straight down onto the table
                s[GRASPED] = 0.0
                s[6] = 0.0
            else:
                s[A_POS] = s[EE] + self._offset
                s[6] = max(s[6], 0.0)
        elif before > GRIP_CLOSED >= s[GRIP]:
            near = np.hypot(*(s[0:2] - s[4:6])) <= GRASP_RADIUS
            if near and s[6] <= s[2] <= s[6] + h_a:
                s[GRASPED] = 1.0
                self._offset = s[A_POS] - s[EE]
        return self._obs()

    def success(self, task) -> bool:
        self._require_reset()
        return bool(success_from_states(self._s, task))

    # -- observation
    def render(self) -> np.ndarray:
        """(64, 64, 3) uint8 frame of the current state."""
        self._require_reset()
        # from the float32 state, exactly as generate_episodes renders the stored states
        return render_states(self.state()[None], self.assets[None], self.sizes[None], self.yaw[None],
                             self.embodiment_id)[0]

    def _obs(self):
        return {"frame": self.render() if self.render_obs else None, "state": self.state()}
