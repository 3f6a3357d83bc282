"""The tabletop's shared specification: tasks, state and action layout, object assets and the two embodiments.

Everything both the simulator (:mod:`~mclcore.data.tabletop.sim`, the step and success rules) and the renderer
(:mod:`~mclcore.data.tabletop.render`) need lives here, so neither imports the other's module for it. Coordinates
(metres): the table top is the plane z = 0; x points to the camera's right, y away from the camera (towards the
arms' mounts at the back of the table), z up. Object z is the height of the object's *bottom* above the table (0
when resting on it); the end-effector z is the height of the fingertips.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "TASKS", "EMBODIMENTS", "STATE_NAMES", "STATE_DIM", "EE", "GRIP", "A_POS", "B_POS", "GRASPED", "ACTION_NAMES",
    "ACTION_DIM", "ACTION_LOW", "ACTION_HIGH", "SHAPES", "HEIGHT_RATIO", "COLOURS", "SIZES", "ASSET_SETS",
    "object_height", "task_index", "embodiment_index", "Embodiment", "get_embodiment",
]

TASKS = ("place_a2b_left", "place_a2b_right")
EMBODIMENTS = ("arm_a", "arm_b")

STATE_NAMES = ("ee_x", "ee_y", "ee_z", "gripper", "a_x", "a_y", "a_z", "b_x", "b_y", "b_z", "grasped")
STATE_DIM = len(STATE_NAMES)
EE, GRIP, A_POS, B_POS, GRASPED = slice(0, 3), 3, slice(4, 7), slice(7, 10), 10

# Action = end-effector displacement (metres per step) and the gripper's target opening (0 closed, 1 open).
# Actions are clipped to these bounds by ``step``; the same bounds hold for both embodiments, so an action
# sequence means the same end-effector motion whichever arm executes it (up to each arm's workspace box).
ACTION_NAMES = ("dx", "dy", "dz", "gripper_command")
ACTION_DIM = 4
ACTION_LOW = np.array([-0.08, -0.08, -0.06, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([0.08, 0.08, 0.06, 1.0], dtype=np.float32)

# Assets: footprint shape x colour x size. ``size`` is the footprint width (cube side, cylinder diameter,
# triangle circumdiameter-ish); heights are size * HEIGHT_RATIO[shape].
SHAPES = ("cube", "cylinder", "prism")
HEIGHT_RATIO = {"cube": 1.0, "cylinder": 1.25, "prism": 0.8}
COLOURS = {
    "red": (0.85, 0.16, 0.14), "green": (0.18, 0.68, 0.24), "blue": (0.16, 0.36, 0.88),
    "yellow": (0.95, 0.80, 0.12), "purple": (0.58, 0.26, 0.78), "orange": (0.96, 0.50, 0.10),
}
SIZES = (0.055, 0.07)
ASSET_SETS = {
    # name -> (shapes, colours, sizes) the scene draws A and B from (A and B never share a colour)
    "default": (SHAPES, tuple(COLOURS), SIZES),
    "cubes": (("cube",), ("red", "blue", "green"), (0.07,)),
}


def object_height(shape: str, size: float) -> float:
    return float(size) * HEIGHT_RATIO[shape]


def task_index(task) -> int:
    """Task name or index -> index into TASKS; a ValueError naming ``task`` otherwise."""
    if isinstance(task, (int, np.integer)) and 0 <= int(task) < len(TASKS):
        return int(task)
    if task in TASKS:
        return TASKS.index(task)
    raise ValueError(f"task: unknown task {task!r}; expected one of {TASKS}")


def embodiment_index(embodiment) -> int:
    if isinstance(embodiment, (int, np.integer)) and 0 <= int(embodiment) < len(EMBODIMENTS):
        return int(embodiment)
    if embodiment in EMBODIMENTS:
        return EMBODIMENTS.index(embodiment)
    raise ValueError(f"embodiment: unknown embodiment {embodiment!r}; expected one of {EMBODIMENTS}")


# ------------------------------------------------------------------------------------------------ embodiments
@dataclass(frozen=True)
class Embodiment:
    """An arm: kinematics (base, link lengths, wrist geometry, workspace box) and appearance.

    Kinematic chain: a vertical base column from ``base`` (on the table) up to the shoulder at height
    ``shoulder_h``; the shoulder yaws towards the target and two links (``l1``, ``l2``) move in that vertical plane
    (elbow-up solution); an optional third link of length ``l3`` at a fixed downward pitch ``pitch3`` (radians,
    from horizontal, pointing away from the base) ends at the wrist; the hand hangs vertically ``hand`` metres from
    the wrist down to the fingertips (the end-effector). ``lo``/``hi`` bound the end-effector position; every point
    of that box is reachable (tested).
    """
    name: str
    base: tuple
    shoulder_h: float
    l1: float
    l2: float
    l3: float
    pitch3: float
    hand: float
    lo: tuple
    hi: tuple
    link_width: float
    link_rgb: tuple
    joint_rgb: tuple
    gripper_rgb: tuple
    finger_len: float
    finger_width: float
    max_gap: float          # finger gap at opening 1 (metres)
    palm_rgb: tuple = field(default=(0.2, 0.2, 0.22))

    def joints(self, ee: np.ndarray) -> np.ndarray:
        """End-effector positions (..., 3) -> joint positions (..., J, 3): base, shoulder, elbow, [link-3 start],
        wrist, fingertip centre. J = 5 for 2-link arms, 6 with a third link."""
        ee = np.asarray(ee, dtype=np.float64)
        base = np.broadcast_to(np.asarray(self.base, dtype=np.float64), ee.shape)
        shoulder = base + np.array([0.0, 0.0, self.shoulder_h])
        wrist = ee + np.array([0.0, 0.0, self.hand])
        d = wrist[..., :2] - shoulder[..., :2]
        r = np.linalg.norm(d, axis=-1, keepdims=True)
        # Reaching straight down over the base leaves the yaw undefined: face the table centre then.
        u = np.where(r > 1e-6, d / np.maximum(r, 1e-9), -shoulder[..., :2] / np.linalg.norm(shoulder[..., :2], axis=-1,
                                                                                           keepdims=True))
        u3 = np.concatenate([u, np.zeros_like(r)], -1)
        zhat = np.array([0.0, 0.0, 1.0])
        if self.l3 > 0:
            # the third link points away from the base and down: its start is back towards the base and up
            l3_start = wrist - self.l3 * (np.cos(self.pitch3) * u3 - np.sin(self.pitch3) * zhat)
            target = l3_start
        else:
            target = wrist
        rel = target - shoulder
        rh = np.einsum("...i,...i->...", rel[..., :2], u)
        h = rel[..., 2]
        dist = np.clip(np.hypot(rh, h), abs(self.l1 - self.l2) + 1e-6, self.l1 + self.l2 - 1e-6)
        alpha = np.arctan2(h, rh)
        beta = np.arccos(np.clip((self.l1 ** 2 + dist ** 2 - self.l2 ** 2) / (2 * self.l1 * dist), -1, 1))
        elev = (alpha + beta)[..., None]
        elbow = shoulder + self.l1 * (np.cos(elev) * u3 + np.sin(elev) * zhat)
        parts = [base, shoulder, elbow] + ([l3_start] if self.l3 > 0 else []) + [wrist, ee]
        return np.stack(parts, -2)

    def reach_margin(self, ee: np.ndarray) -> np.ndarray:
        """(l1 + l2) minus the shoulder-to-target distance (> 0 where the end-effector position is reachable)."""
        j = self.joints(ee)
        target = j[..., -3, :] if self.l3 > 0 else j[..., -2, :]
        return (self.l1 + self.l2) - np.linalg.norm(target - j[..., 1, :], axis=-1)


_EMBODIMENTS = {
    # A light grey two-link arm mounted at the back centre of the table, thin links, dark parallel-jaw gripper.
    "arm_a": Embodiment(
        name="arm_a", base=(0.0, 0.32, 0.0), shoulder_h=0.12, l1=0.31, l2=0.34, l3=0.0, pitch3=0.0, hand=0.07,
        lo=(-0.27, -0.22, 0.01), hi=(0.27, 0.20, 0.26), link_width=0.034, link_rgb=(0.88, 0.88, 0.86),
        joint_rgb=(0.25, 0.25, 0.28), gripper_rgb=(0.12, 0.12, 0.13), finger_len=0.045, finger_width=0.014,
        max_gap=0.09, palm_rgb=(0.30, 0.30, 0.33)),
    # A dark teal three-link arm mounted at the back right corner, thicker links, a forward-pitched last link,
    # wide silver fingers; its box is a little smaller on the far left (furthest from its mount).
    "arm_b": Embodiment(
        name="arm_b", base=(0.36, 0.26, 0.0), shoulder_h=0.08, l1=0.40, l2=0.36, l3=0.11, pitch3=np.deg2rad(40.0),
        hand=0.05, lo=(-0.25, -0.22, 0.01), hi=(0.28, 0.18, 0.24), link_width=0.046, link_rgb=(0.10, 0.36, 0.42),
        joint_rgb=(0.90, 0.72, 0.20), gripper_rgb=(0.72, 0.74, 0.78), finger_len=0.035, finger_width=0.022,
        max_gap=0.10, palm_rgb=(0.55, 0.57, 0.60)),
}


def get_embodiment(embodiment) -> Embodiment:
    return _EMBODIMENTS[EMBODIMENTS[embodiment_index(embodiment)]]
