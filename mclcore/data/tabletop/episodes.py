"""Expert episode files (HDF5): generation, loading, a torch Dataset and the low-data target-embodiment splits.

The file format is documented in :mod:`mclcore.data.tabletop`. Every reader here goes through one validation
(``_open_checked``: ``format_version``, dtypes, shapes); :func:`read_episodes` is the reader for training code
(the arrays a world model needs, plus the file's task and embodiment names), :func:`load_episodes` returns
everything in the file and :class:`EpisodeDataset` reads episodes on demand.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from mclcore._io import atomic_path, write_text_atomic

from mclcore.data.tabletop.expert import expert_policy
from mclcore.data.tabletop.render import CAMERA, IMAGE_SIZE, render_states
from mclcore.data.tabletop.sim import TabletopEnv, success_from_states
from mclcore.data.tabletop.spec import (ACTION_DIM, ACTION_HIGH, ACTION_LOW, ACTION_NAMES, ASSET_SETS, EMBODIMENTS,
                                        STATE_DIM, STATE_NAMES, TASKS, embodiment_index, task_index)

__all__ = ["FORMAT_VERSION", "episode_seeds", "simulate_episode", "generate_episodes", "load_episodes",
           "read_episodes", "EpisodeArrays", "EpisodeDataset", "make_lowdata_splits", "EpisodeFileError"]

FORMAT_VERSION = 1
_RENDER_FRAMES = 256            # frames per render batch (bounds the renderer's temporary arrays to ~30 MB)
_WRITE_EPISODES = 64            # episodes simulated, rendered and written per chunk


class EpisodeFileError(ValueError):
    """An episode file is missing or not in the documented format (the message says which and why)."""


def episode_seeds(seed: int, n: int) -> np.ndarray:
    """(n,) int64 per-episode seeds derived from ``seed``; the first k are the same whatever n is."""
    words = np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint64)
    return (words >> np.uint64(1)).astype(np.int64)


def simulate_episode(task, embodiment, seed: int, T: int = 32, noise: float = 0.003, asset_set="default"):
    """Run the expert for T steps in the scene of episode seed ``seed`` (no rendering).

    The scene comes from ``TabletopEnv(embodiment, seed).reset()``, the expert's noise and placement from
    ``np.random.default_rng([seed, 1])``. Returns (states (T+1, 11) float32, actions (T, 4) float32, env).
    """
    env = TabletopEnv(embodiment, seed=int(seed), asset_set=asset_set, render_obs=False)
    obs = env.reset()
    policy = expert_policy(task, env, np.random.default_rng([int(seed), 1]), noise=noise)
    states = np.empty((T + 1, STATE_DIM), dtype=np.float32)
    actions = np.empty((T, ACTION_DIM), dtype=np.float32)
    states[0] = obs["state"]
    for t in range(T):
        actions[t] = policy(obs["state"])
        obs = env.step(actions[t])
        states[t + 1] = obs["state"]
    return states, actions, env


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def generate_episodes(path, n: int, task: str = "place_a2b_left", embodiment: str = "arm_a", T: int = 32,
                      seed: int = 0, noise: float = 0.003, asset_set: str = "default", progress: bool = True,
                      compression: str | None = "lzf") -> str:
    """Generate ``n`` expert episodes of ``task`` with ``embodiment`` and write them to the HDF5 file ``path``.

    Episode i uses seed ``episode_seeds(seed, n)[i]`` (see :func:`simulate_episode`): the same ``seed`` gives the
    same scenes and expert noise for either embodiment (paired data), and a file of n episodes starts with the
    episodes of a file of fewer. The file is written to a temporary name in the same folder and renamed into
    place when complete, so ``path`` never holds a partial file. Returns ``path``.
    """
    t_id, e_id = task_index(task), embodiment_index(embodiment)
    n = _check_positive_int(n, "n")
    T = _check_positive_int(T, "T")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if not noise >= 0:
        raise ValueError(f"noise: expected a non-negative action noise std, got {noise!r}")
    if asset_set not in ASSET_SETS:
        raise ValueError(f"asset_set: unknown asset set {asset_set!r}; expected one of {tuple(ASSET_SETS)}")
    import h5py
    from tqdm.auto import tqdm

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    seeds = episode_seeds(seed, n)
    config = {"n": n, "task": TASKS[t_id], "embodiment": EMBODIMENTS[e_id], "T": T, "seed": int(seed),
              "noise": float(noise), "asset_set": asset_set, "action_low": ACTION_LOW.tolist(),
              "action_high": ACTION_HIGH.tolist(), "camera": CAMERA, "expert_speed": 0.7}
    # a unique temporary name next to the target (mclcore._io.atomic_path): an interrupted or failed run leaves
    # neither a partial file at path nor the temporary file; h5py creates it with the usual permissions
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "x") as f:
            frames = f.create_dataset("frames", (n, T + 1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8,
                                      chunks=(1, T + 1, IMAGE_SIZE, IMAGE_SIZE, 3), compression=compression)
            actions = f.create_dataset("actions", (n, T, ACTION_DIM), dtype=np.float32)
            states = f.create_dataset("states", (n, T + 1, STATE_DIM), dtype=np.float32)
            assets = f.create_dataset("object_assets", (n, 2, 2), dtype=np.int64)
            sizes = f.create_dataset("object_sizes", (n, 2), dtype=np.float32)
            yaws = f.create_dataset("object_yaw", (n, 2), dtype=np.float32)
            success = np.zeros(n, dtype=bool)
            bar = tqdm(total=n, desc=f"{TASKS[t_id]}/{EMBODIMENTS[e_id]}", unit="ep", disable=not progress)
            for lo in range(0, n, _WRITE_EPISODES):
                hi = min(n, lo + _WRITE_EPISODES)
                m = hi - lo
                st = np.empty((m, T + 1, STATE_DIM), dtype=np.float32)
                ac = np.empty((m, T, ACTION_DIM), dtype=np.float32)
                asset = np.empty((m, 2, 2), dtype=np.int64)
                size = np.empty((m, 2), dtype=np.float32)
                yaw = np.empty((m, 2), dtype=np.float32)
                for i in range(m):
                    st[i], ac[i], env = simulate_episode(t_id, e_id, seeds[lo + i], T, noise, asset_set)
                    asset[i], size[i], yaw[i] = env.assets, env.sizes, env.yaw
                # render every frame of the chunk in batches (each episode's assets repeated over its frames)
                flat = st.reshape(-1, STATE_DIM)
                rep = lambda a: np.repeat(a, T + 1, axis=0)  # noqa: E731
                fa, fs, fy = rep(asset), rep(size), rep(yaw)
                img = np.empty((m * (T + 1), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
                for b in range(0, len(flat), _RENDER_FRAMES):
                    sl = slice(b, b + _RENDER_FRAMES)
                    img[sl] = render_states(flat[sl], fa[sl], fs[sl], fy[sl], e_id)
                frames[lo:hi] = img.reshape(m, T + 1, IMAGE_SIZE, IMAGE_SIZE, 3)
                actions[lo:hi], states[lo:hi] = ac, st
                assets[lo:hi], sizes[lo:hi], yaws[lo:hi] = asset, size, yaw
                success[lo:hi] = success_from_states(st[:, -1], t_id)
                bar.update(m)
            bar.close()
            f.create_dataset("embodiment", data=np.full(n, e_id, dtype=np.int64))
            f.create_dataset("task", data=np.full(n, t_id, dtype=np.int64))
            f.create_dataset("success", data=success)
            f.create_dataset("seed", data=seeds)
            f.attrs["task_names"] = json.dumps(list(TASKS))
            f.attrs["embodiment_names"] = json.dumps(list(EMBODIMENTS))
            f.attrs["action_names"] = json.dumps(list(ACTION_NAMES))
            f.attrs["state_names"] = json.dumps(list(STATE_NAMES))
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["T"] = T
            f.attrs["image_size"] = IMAGE_SIZE
            f.attrs["config"] = json.dumps(config)
    return path


# --------------------------------------------------------------------------------------------------- reading
# the datasets load_episodes and EpisodeDataset require: everything generate_episodes writes
_REQUIRED = {"frames": np.uint8, "actions": np.float32, "states": np.float32, "embodiment": np.int64,
             "task": np.int64, "success": np.bool_, "seed": np.int64}
_REQUIRED_ATTRS = ("T", "task_names", "embodiment_names", "action_names", "state_names", "config")
# what read_episodes returns (and so requires): episodes from other writers may lack success, seed and the extras
_EPISODE_ARRAYS = {k: _REQUIRED[k] for k in ("frames", "actions", "states", "embodiment", "task")}
_EPISODE_ATTRS = ("T", "task_names", "embodiment_names")
_NAME_ATTRS = ("task_names", "embodiment_names", "action_names", "state_names")


@dataclass
class EpisodeArrays:
    """The episodes of one file, in memory (:func:`read_episodes`).

    Attributes:
        frames: uint8 (N, T+1, 64, 64, 3); frame t is the observation before action t.
        actions: float32 (N, T, 4), columns ``ACTION_NAMES``.
        states: float32 (N, T+1, 11), columns ``STATE_NAMES``.
        embodiment, task: int64 (N,), indices into ``embodiment_names`` / ``task_names``.
        task_names, embodiment_names: the file's own name lists (``generate_episodes`` writes ``TASKS`` and
            ``EMBODIMENTS``).
    """

    frames: np.ndarray
    actions: np.ndarray
    states: np.ndarray
    embodiment: np.ndarray
    task: np.ndarray
    task_names: list[str]
    embodiment_names: list[str]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def T(self) -> int:
        """Actions per episode (frames and states have T + 1)."""
        return int(self.actions.shape[1])


def _names_attr(value, path: str, key: str) -> list[str]:
    """A name-list attribute: a JSON list (as ``generate_episodes`` writes it) or an array of (byte) strings."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise EpisodeFileError(f"{path}: attribute {key!r} is neither a JSON list nor an array of strings "
                                   f"({e})") from None
        if not isinstance(value, list):
            raise EpisodeFileError(f"{path}: attribute {key!r} holds JSON {type(value).__name__}, expected a list")
        return [str(n) for n in value]
    if isinstance(value, (np.ndarray, list, tuple)):
        return [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(value, dtype=object).reshape(-1)]
    raise EpisodeFileError(f"{path}: attribute {key!r} is a {type(value).__name__}, expected a JSON list or an "
                           f"array of strings")


def _open_checked(path, required=_REQUIRED, required_attrs=_REQUIRED_ATTRS):
    """Open an episode file with h5py and validate it; returns (h5py.File, attrs dict with json decoded).

    Checks ``format_version``, that the attributes ``required_attrs`` and the datasets ``required`` (name ->
    dtype) exist, their dtypes, that they hold the same number of episodes, and the shapes of frames, actions and
    states against ``T``. Name lists (``task_names``, ...) may be JSON strings or arrays of (byte) strings and come
    back as lists of str; ``config`` is JSON-decoded. Any failure is an :class:`EpisodeFileError` naming the file.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EpisodeFileError(f"path: no such episode file {path!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise EpisodeFileError(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        attrs = {k: f.attrs[k] for k in f.attrs}
        try:
            version = int(attrs.get("format_version", -1))
        except (TypeError, ValueError):
            version = None
        if version != FORMAT_VERSION:
            found = attrs.get("format_version")
            found = found.item() if isinstance(found, np.generic) else found  # 2, not np.int64(2)
            raise EpisodeFileError(f"{path}: format_version {found!r}, expected {FORMAT_VERSION}")
        for key in required_attrs:
            if key not in attrs:
                raise EpisodeFileError(f"{path}: no attribute {key!r} (found {sorted(attrs)})")
        for key in _NAME_ATTRS:
            if key in attrs:
                attrs[key] = _names_attr(attrs[key], path, key)
        if "config" in attrs:
            try:
                attrs["config"] = json.loads(attrs["config"])
            except (TypeError, ValueError) as e:
                raise EpisodeFileError(f"{path}: attribute 'config' is not JSON ({e})") from None
        try:
            T = int(attrs["T"])
        except (TypeError, ValueError):
            raise EpisodeFileError(f"{path}: attribute 'T' is {attrs['T']!r}, expected an integer") from None
        n = None
        for key, dtype in required.items():
            if key not in f:
                raise EpisodeFileError(f"{path}: no dataset {key!r}")
            if f[key].dtype != dtype:
                raise EpisodeFileError(f"{path}: {key!r} has dtype {f[key].dtype}, expected {np.dtype(dtype)}")
            n = f[key].shape[0] if n is None else n
            if f[key].shape[0] != n:
                raise EpisodeFileError(f"{path}: {key!r} holds {f[key].shape[0]} episodes, 'frames' {n}")
        expect = {"frames": (n, T + 1, IMAGE_SIZE, IMAGE_SIZE, 3), "actions": (n, T, ACTION_DIM),
                  "states": (n, T + 1, STATE_DIM)}
        for key, shape in expect.items():
            if f[key].shape != shape:
                raise EpisodeFileError(f"{path}: {key!r} has shape {f[key].shape}, expected {shape}")
    except BaseException:
        f.close()
        raise
    return f, attrs


def read_episodes(path) -> EpisodeArrays:
    """Read the episodes of one file into memory, validated: the one reader for training code.

    Goes through the checks of :func:`load_episodes` (``format_version``, dtypes, shapes against ``T``, equal
    episode counts) for the arrays it returns, and checks that every ``task`` / ``embodiment`` index names an entry
    of the file's ``task_names`` / ``embodiment_names`` (JSON strings, as ``generate_episodes`` writes them, or
    arrays of (byte) strings). ``success``, ``seed`` and the asset arrays are not needed (files from other writers
    may lack them) and are not read. Raises :class:`EpisodeFileError` naming the file and the problem.
    """
    f, attrs = _open_checked(path, required=_EPISODE_ARRAYS, required_attrs=_EPISODE_ATTRS)
    path = os.fspath(path)
    with f:
        arrays = {k: f[k][()] for k in _EPISODE_ARRAYS}
    names = {"task": attrs["task_names"], "embodiment": attrs["embodiment_names"]}
    for key, known in names.items():
        idx = arrays[key]
        if idx.size and (idx.min() < 0 or idx.max() >= len(known)):
            raise EpisodeFileError(f"{path}: {key!r} holds indices {int(idx.min())}..{int(idx.max())}, but "
                                   f"'{key}_names' has {len(known)} entries {known}")
    return EpisodeArrays(**arrays, task_names=names["task"], embodiment_names=names["embodiment"])


def load_episodes(path) -> dict:
    """Read a whole episode file into memory.

    Returns a dict of numpy arrays ``frames`` (N, T+1, 64, 64, 3) uint8, ``actions`` (N, T, 4) float32, ``states``
    (N, T+1, 11) float32, ``embodiment``/``task``/``seed`` (N,) int64, ``success`` (N,) bool, ``object_assets``
    (N, 2, 2) int64, ``object_sizes``/``object_yaw`` (N, 2) float32 (when present), and ``attrs`` (the file's
    attributes, json decoded)."""
    f, attrs = _open_checked(path)
    with f:
        out = {k: f[k][()] for k in f.keys()}
    out["attrs"] = attrs
    return out


class EpisodeDataset(Dataset):
    """A torch Dataset of whole episodes from one or more episode files.

    Args:
        path: an episode file or a list of them (same T).
        embodiment, task: keep only these (name or index); None keeps all.
        split: None (all kept episodes), "train" / "val" (the first ``1 - val_fraction`` / the last
            ``val_fraction`` of the kept episodes, in file order; episodes are i.i.d., so this is a random split),
            or a sequence of positions into the kept episodes.
        in_memory: read everything once (fast; 13 MB per 32 episodes of T = 32) instead of reading each item
            from the file (files are opened lazily in each worker process).
    Items: dicts {"frames": float32 tensor (T+1, 3, 64, 64) in [0, 1], "actions": (T, 4) float32, "states":
    (T+1, 11) float32, "embodiment": int, "task": int}.
    """

    def __init__(self, path, embodiment=None, task=None, split=None, val_fraction: float = 0.1,
                 in_memory: bool = False):
        self.paths = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]
        if not self.paths:
            raise ValueError("path: expected an episode file or a non-empty list of them")
        e_id = None if embodiment is None else embodiment_index(embodiment)
        t_id = None if task is None else task_index(task)
        index, self.T = [], None
        for k, p in enumerate(self.paths):
            f, attrs = _open_checked(p)
            with f:
                if self.T is None:
                    self.T = int(attrs["T"])
                elif int(attrs["T"]) != self.T:
                    raise ValueError(f"path: {p} has T = {attrs['T']}, {self.paths[0]} has T = {self.T}")
                emb, tsk = f["embodiment"][()], f["task"][()]
            keep = np.ones(len(emb), dtype=bool)
            if e_id is not None:
                keep &= emb == e_id
            if t_id is not None:
                keep &= tsk == t_id
            index += [(k, int(i), int(emb[i]), int(tsk[i])) for i in np.flatnonzero(keep)]
        if split is not None:
            if isinstance(split, str):
                if split not in ("train", "val"):
                    raise ValueError(f"split: expected None, 'train', 'val' or a sequence of indices, got {split!r}")
                if not 0 < val_fraction < 1:
                    raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {val_fraction!r}")
                cut = len(index) - int(round(val_fraction * len(index)))
                index = index[:cut] if split == "train" else index[cut:]
            else:
                pos = np.asarray(split, dtype=np.int64).reshape(-1)
                if pos.size and (pos.min() < -len(index) or pos.max() >= len(index)):
                    raise ValueError(f"split: index out of range for {len(index)} kept episodes")
                index = [index[i] for i in pos]
        self.index = index
        self._files, self._pid = None, None
        self._memory = None
        if in_memory:
            self._memory = {}
            for k in range(len(self.paths)):
                rows = [r for (kk, r, _, _) in index if kk == k]
                if rows:
                    f, _ = _open_checked(self.paths[k])
                    with f:
                        sel = np.asarray(sorted(set(rows)))
                        self._memory[k] = {key: dict(zip(sel, f[key][sel])) for key in ("frames", "actions",
                                                                                          "states")}

    def __len__(self) -> int:
        return len(self.index)

    def _file(self, k):
        # h5py handles do not survive fork: (re)open lazily in each process
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        if k not in self._files:
            self._files[k] = _open_checked(self.paths[k])[0]
        return self._files[k]

    def __getitem__(self, i):
        import torch

        k, row, emb, tsk = self.index[i]
        if self._memory is not None:
            src = self._memory[k]
            frames, actions, states = src["frames"][row], src["actions"][row], src["states"][row]
        else:
            f = self._file(k)
            frames, actions, states = f["frames"][row], f["actions"][row], f["states"][row]
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        return {"frames": x, "actions": torch.from_numpy(np.asarray(actions, dtype=np.float32)),
                "states": torch.from_numpy(np.asarray(states, dtype=np.float32)), "embodiment": emb, "task": tsk}

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_files"], d["_pid"] = None, None
        return d


# ----------------------------------------------------------------------------------------- low-data splits
def make_lowdata_splits(out_dir, n_source: int = 1000, target_fraction: float = 0.1, n_eval: int = 100,
                        source: str = "arm_a", target: str = "arm_b", T: int = 32, seed: int = 0,
                        noise: float = 0.003, progress: bool = True) -> dict:
    """Write the paper's low-data target-embodiment setting (Table 2) as four episode files in ``out_dir``.

    * ``source_train.h5``: ``n_source`` episodes of place_a2b_left with the source embodiment;
    * ``target_train.h5``: ``round(target_fraction * n_source)`` episodes of place_a2b_left with the target
      embodiment (the few target-embodiment demonstrations);
    * ``target_eval.h5``: ``n_eval`` held-out target-embodiment episodes of place_a2b_left (target task);
    * ``transfer_eval.h5``: ``n_eval`` target-embodiment episodes of place_a2b_right (zero-shot transfer task:
      no place_a2b_right episode is in either training file).

    Each file has its own seed (derived from ``seed``), so no scene is shared between files. Train on
    ``EpisodeDataset([source_train, target_train])``; evaluate on the two eval files. A ``manifest.json`` lists
    the files and settings. Returns {name: path}.
    """
    n_source = _check_positive_int(n_source, "n_source")
    n_eval = _check_positive_int(n_eval, "n_eval")
    if not 0 < target_fraction <= 1:
        raise ValueError(f"target_fraction: expected a fraction in (0, 1], got {target_fraction!r}")
    embodiment_index(source), embodiment_index(target)
    if source == target:
        raise ValueError(f"target: expected an embodiment other than the source {source!r}")
    n_target = max(1, int(round(target_fraction * n_source)))
    sets = {"source_train": ("place_a2b_left", source, n_source),
            "target_train": ("place_a2b_left", target, n_target),
            "target_eval": ("place_a2b_left", target, n_eval),
            "transfer_eval": ("place_a2b_right", target, n_eval)}
    set_seeds = np.random.SeedSequence(int(seed)).generate_state(len(sets), dtype=np.uint32)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for (name, (task, emb, n)), s in zip(sets.items(), set_seeds):
        paths[name] = generate_episodes(os.path.join(out_dir, name + ".h5"), n, task, emb, T=T, seed=int(s),
                                        noise=noise, progress=progress)
    manifest = {"setting": "low-data target embodiment", "seed": int(seed), "T": T, "noise": noise,
                "files": {k: {"path": os.path.basename(p), "task": sets[k][0], "embodiment": sets[k][1],
                              "n": sets[k][2], "seed": int(s)} for (k, p), s in zip(paths.items(), set_seeds)}}
    write_text_atomic(os.path.join(out_dir, "manifest.json"), json.dumps(manifest, indent=2))
    return paths
