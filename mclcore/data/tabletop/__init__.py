"""Procedural tabletop manipulation data for the action-conditioned world model (paper §5.3, App. D.5).

A numpy stand-in for RoboTwin's ``place_a2b_left`` / ``place_a2b_right`` under the low-data target-embodiment
setting: a table seen by a fixed oblique camera (64x64 RGB), one arm with a parallel gripper, and two objects A and
B (cube / cylinder / triangular prism, six colours, two sizes). No physics engine, no new dependency.

World (table) coordinates, metres: the table top is z = 0; **x points to the camera's right, so "left of B" means
smaller x than B (the image's left)**; y points away from the camera; z up. The end-effector position is that of
the fingertips; an object's z is the height of its bottom (0 when on the table).

Embodiments (``EMBODIMENTS``), same actions, different looks and kinematics (the arm is drawn from an
inverse-kinematics solution of the end-effector position, so the same actions give different arm images):

* ``arm_a``: light grey 2-link arm on a column at the back centre, thin links, dark parallel-jaw gripper;
* ``arm_b``: dark teal 3-link arm (the last link at a fixed 40-degree pitch) mounted at the back right, thicker
  links, yellow joints, wide silver fingers; a slightly different workspace box.

State, float32 (S = 11), ``STATE_NAMES``: ``ee_x, ee_y, ee_z, gripper`` (opening in [0, 1], 1 = open),
``a_x, a_y, a_z, b_x, b_y, b_z, grasped`` (1.0 while A is held).

Action, float32 (4), ``ACTION_NAMES``: ``dx, dy, dz`` end-effector displacement per step, clipped to
[-0.08, 0.08] x [-0.08, 0.08] x [-0.06, 0.06] m, and ``gripper_command``, the target opening in [0, 1] (the opening
moves towards it by at most 0.5 per step). The same bounds for both arms, so action sequences transfer.

Physics rules (:class:`TabletopEnv`): the end-effector is clipped to the arm's workspace box; closing (the opening
falling to <= 0.35) within 0.03 m (planar) of A's centre with the fingertips between A's bottom and top grasps A;
a grasped A keeps its offset to the end-effector; opening (> 0.35) releases it and it drops onto the table.

Success (:func:`success_from_states`, RoboTwin's ``check_success``): 0.08 < |A_xy - B_xy| < 0.2, A at smaller x
than B (left) or larger x (right), |A_y - B_y| < 0.05, gripper opening >= 0.5 and A not grasped.

Expert (:func:`expert_policy`): above A, down, close, lift, above a point U(0.11, 0.15) m to the named side of B,
down, open, lift, hold (and back to A if a grasp missed); Gaussian action noise (std ``noise`` = 0.003 m by
default). A place takes about 20 steps (at most 28 in 1200 measured episodes), so T = 32 recorded steps cover an
episode without frame skipping (no frame_skip option is needed). Measured success at T = 32: 100% of 500 episodes
for each task x embodiment at the default noise (and at 0.006; 97.8-98.0% at 0.01); the tests check >= 90% on 20.

Episode file format (``format_version`` 1), one HDF5 file per generated set, written atomically (temporary file
in the same folder, then ``os.replace``)::

    frames      uint8   (N, T+1, 64, 64, 3)  frame t is the observation before action t (chunked per episode,
                                             lzf-compressed by default)
    actions     float32 (N, T, 4)            (dx, dy, dz, gripper_command), as executed (inside the bounds)
    states      float32 (N, T+1, 11)         columns STATE_NAMES; states[:, t] is the state shown in frames[:, t]
    embodiment  int64   (N,)                 index into attrs["embodiment_names"]
    task        int64   (N,)                 index into attrs["task_names"]
    success     bool    (N,)                 success_from_states(states[:, -1], task)
    seed        int64   (N,)                 episode seed: TabletopEnv(embodiment, seed).reset() is the scene,
                                             np.random.default_rng([seed, 1]) the expert's generator
    object_assets int64 (N, 2, 2)            extra: (shape, colour) indices into SHAPES / COLOURS for A, B
    object_sizes  float32 (N, 2)             extra: object widths (m);  object_yaw float32 (N, 2): yaw (rad)
    attrs: task_names   json ["place_a2b_left", "place_a2b_right"]
           embodiment_names json ["arm_a", "arm_b"]
           action_names json, state_names json, format_version = 1, T, image_size = 64,
           config       json of the generator's settings (n, task, embodiment, T, seed, noise, asset_set,
                        action bounds, camera, expert speed)

Readers (all validate ``format_version``, dtypes and shapes, raising :class:`EpisodeFileError` naming the file):
:func:`read_episodes` (the arrays a world model trains on and the file's name lists; it also accepts name lists
stored as arrays of byte strings), :func:`load_episodes` (everything) and :class:`EpisodeDataset` (on demand).

API::

    from mclcore.data.tabletop import (TabletopEnv, expert_policy, generate_episodes, read_episodes,
                                       load_episodes, EpisodeDataset, make_lowdata_splits, success_from_states,
                                       project, draw_trajectory)
    env = TabletopEnv("arm_b", seed=0); obs = env.reset()       # {"frame": (64,64,3) uint8, "state": (11,)}
    obs = env.step([0.02, 0.0, -0.01, 1.0]); env.render(); env.state(); env.success("place_a2b_left")
    generate_episodes("left_a.h5", n=1000, task="place_a2b_left", embodiment="arm_a", T=32, seed=0)
    ep = read_episodes("left_a.h5")  # EpisodeArrays: frames, actions, states, embodiment, task, task_names, ...
    ds = EpisodeDataset("left_a.h5", split="train")   # items {"frames" (T+1,3,64,64) float in [0,1],
                                                      #        "actions" (T,4), "states" (T+1,11), "embodiment", "task"}
    paths = make_lowdata_splits("data/tabletop")      # source_train / target_train / target_eval / transfer_eval

Low-data target-embodiment recipe (Table 2): :func:`make_lowdata_splits` writes 1000 ``arm_a`` episodes and 100
(10%) ``arm_b`` episodes of place_a2b_left for training, and 100 held-out ``arm_b`` episodes each of
place_a2b_left (target task) and place_a2b_right (zero-shot transfer task) for evaluation. Also from the shell:
``mcl tabletop lowdata --out data/tabletop``. Each of its files has its own seed; note that ``generate_episodes``
with the same seed for both arms gives the same scenes and expert actions (paired episodes), which is what the
sample image shows.

Generation speed (``generate_episodes``, 1000 episodes x 33 frames, lzf; shared 2-core AMD EPYC VM, 2026-11): 16 s
of CPU time on one core (28 s wall at load ~5): ~12 s rendering (0.37 ms per frame), ~2 s simulation and expert, ~2 s
compression; the file is 118 MB (408 MB uncompressed). Rendering is batched over frames in numpy
(:mod:`mclcore.data.tabletop.render`).

Sample image ``docs/samples_tabletop.png`` (both embodiments, frames of one episode each)::

    mcl tabletop sample --out docs/samples_tabletop.png
"""
from mclcore.data.tabletop.episodes import (FORMAT_VERSION, EpisodeArrays, EpisodeDataset, EpisodeFileError,
                                            episode_seeds, generate_episodes, load_episodes, make_lowdata_splits,
                                            read_episodes, simulate_episode)
from mclcore.data.tabletop.expert import ExpertPolicy, expert_policy
from mclcore.data.tabletop.render import CAMERA, IMAGE_SIZE, draw_trajectory, project, render_states
from mclcore.data.tabletop.sim import TabletopEnv, success_from_states
from mclcore.data.tabletop.spec import (ACTION_DIM, ACTION_HIGH, ACTION_LOW, ACTION_NAMES, ASSET_SETS, COLOURS,
                                        EMBODIMENTS, SHAPES, SIZES, STATE_DIM, STATE_NAMES, TASKS, Embodiment,
                                        get_embodiment)

__all__ = [
    "TabletopEnv", "expert_policy", "ExpertPolicy", "generate_episodes", "load_episodes", "read_episodes",
    "EpisodeArrays", "EpisodeDataset",
    "make_lowdata_splits", "simulate_episode", "episode_seeds", "success_from_states", "project", "draw_trajectory",
    "render_states", "EpisodeFileError", "FORMAT_VERSION", "TASKS", "EMBODIMENTS", "STATE_NAMES", "ACTION_NAMES",
    "STATE_DIM", "ACTION_DIM", "ACTION_LOW", "ACTION_HIGH", "ASSET_SETS", "SHAPES", "COLOURS", "SIZES", "CAMERA",
    "IMAGE_SIZE", "Embodiment", "get_embodiment",
]
