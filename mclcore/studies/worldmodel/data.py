"""Episodes of the world-model study: the training set and the two evaluation splits (see :class:`DataConfig`).

Setting (Table 2, "low-data target embodiment"): the training set is ``data.n_source`` episodes of the source
embodiment plus only ``data.n_target`` episodes of the target embodiment, all on the target task; evaluation uses
held-out target-embodiment episodes of the target task and, zero-shot, of the transfer task.

Episode files are read only through the tabletop module's validating reader
(:func:`mclcore.data.tabletop.episodes.read_episodes`: format version, datasets, dtypes, shapes and name indices
checked, errors name the file), whichever of the three places they come from: generated once into a cache folder,
a folder written by ``make_lowdata_splits``, or one file holding every task and embodiment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from mclcore.studies.worldmodel.config import RunConfig

__all__ = ["Episodes", "DataError", "read_episode_file", "load_splits", "encode_episodes"]


class DataError(ValueError):
    """The episodes do not fit the config (unknown source, names or too few episodes); the message names the key."""


@dataclass
class Episodes:
    """frames uint8 (N, T+1, 64, 64, 3); actions float32 (N, T, 4); states float32 (N, T+1, S); embodiment, task
    int64 (N,)."""
    frames: np.ndarray
    actions: np.ndarray
    states: np.ndarray
    embodiment: np.ndarray
    task: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    @staticmethod
    def concat(parts: list["Episodes"]) -> "Episodes":
        return Episodes(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Episodes)))

    def subset(self, idx) -> "Episodes":
        return Episodes(*(getattr(self, f.name)[idx] for f in fields(Episodes)))

    def float_frames(self, idx=slice(None)) -> torch.Tensor:  # (n, T+1, 3, 64, 64) in [0, 1]
        return torch.from_numpy(self.frames[idx]).permute(0, 1, 4, 2, 3).float().div_(255.0)


def read_episode_file(path: str) -> tuple[Episodes, list[str], list[str]]:
    """An episode file in the simulator's format -> (Episodes, task_names, embodiment_names).

    Validation (format version, datasets, dtypes, shapes, name indices) is the episode module's: an invalid file
    raises its :class:`~mclcore.data.tabletop.episodes.EpisodeFileError` (a ValueError) naming the file.
    """
    from mclcore.data.tabletop.episodes import read_episodes

    r = read_episodes(path)
    return Episodes(r.frames, r.actions, r.states, r.embodiment, r.task), r.task_names, r.embodiment_names


def _random_episodes(n: int, T: int, task: int, embodiment: int, seed: int) -> Episodes:
    rng = np.random.default_rng([seed, task, embodiment])
    return Episodes(rng.integers(0, 256, (n, T + 1, 64, 64, 3), dtype=np.uint8),
                    rng.normal(size=(n, T, 4)).astype(np.float32), rng.normal(size=(n, T + 1, 11)).astype(np.float32),
                    np.full(n, embodiment, np.int64), np.full(n, task, np.int64))


def _generated(cache_dir: str, task: str, embodiment: str, n: int, T: int, seed: int) -> Episodes:
    """Simulator episodes, generated once into ``cache_dir`` and read back (a later run reuses the file)."""
    from mclcore.data import tabletop

    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{task}-{embodiment}-n{n}-T{T}-seed{seed}.h5")
    if not os.path.exists(path):      # generate_episodes writes atomically (temporary file, then rename)
        tabletop.generate_episodes(path, n, task, embodiment, T=T, seed=seed, progress=False)
    return read_episode_file(path)[0]


def _from_folder(cfg: RunConfig) -> dict[str, Episodes]:
    """A folder written by ``make_lowdata_splits`` (its four files; the first n of each)."""
    d = cfg.data
    files = {k: os.path.join(d.path, f"{k}.h5") for k in ("source_train", "target_train", "target_eval",
                                                          "transfer_eval")}
    missing = [p for p in files.values() if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"--data-path: the folder lacks {missing} (expected make_lowdata_splits output)")
    r = {k: read_episode_file(p)[0] for k, p in files.items()}
    return {"train": Episodes.concat([r["source_train"].subset(slice(d.n_source)),
                                      r["target_train"].subset(slice(d.n_target))]),
            "target": r["target_eval"].subset(slice(d.n_eval)),
            "transfer": r["transfer_eval"].subset(slice(d.n_eval))}


def _from_file(cfg: RunConfig) -> dict[str, Episodes]:
    """One episode file holding every task and embodiment, split by the names in its attributes."""
    d = cfg.data
    if not os.path.exists(d.path):
        raise FileNotFoundError(f"--data-path: no such file or folder {d.path!r}")
    ep, task_names, emb_names = read_episode_file(d.path)
    for name, val, known in (("data.task", d.task, task_names), ("data.transfer_task", d.transfer_task, task_names),
                             ("data.source_embodiment", d.source_embodiment, emb_names),
                             ("data.target_embodiment", d.target_embodiment, emb_names)):
        if val not in known:
            raise DataError(f"{name}: {val!r} is not in the file's names {known}")
    ti, tt = task_names.index(d.task), task_names.index(d.transfer_task)
    es, et = emb_names.index(d.source_embodiment), emb_names.index(d.target_embodiment)
    src = np.flatnonzero((ep.task == ti) & (ep.embodiment == es))[: d.n_source]
    tgt = np.flatnonzero((ep.task == ti) & (ep.embodiment == et))
    tra = np.flatnonzero((ep.task == tt) & (ep.embodiment == et))[: d.n_eval]
    if len(tgt) < d.n_target + 1 or len(tra) == 0:
        raise DataError(f"--data-path: need > {d.n_target} target-embodiment episodes of {d.task!r} and some "
                         f"of {d.transfer_task!r}; the file has {len(tgt)} and {len(tra)}")
    return {"train": ep.subset(np.concatenate([src, tgt[: d.n_target]])),
            "target": ep.subset(tgt[d.n_target: d.n_target + d.n_eval]), "transfer": ep.subset(tra)}


def load_splits(cfg: RunConfig, cache_dir: str) -> dict[str, Episodes]:
    """{"train": Episodes, "target": Episodes, "transfer": Episodes} (see :class:`DataConfig`); simulator episodes
    are generated into ``cache_dir`` unless ``data.path`` is given."""
    d, T = cfg.data, cfg.data.episode_len
    if d.source == "random":
        tasks, embs = ("place_a2b_left", "place_a2b_right"), ("arm_a", "arm_b")
        ti, tt = tasks.index(d.task), tasks.index(d.transfer_task)
        es, et = embs.index(d.source_embodiment), embs.index(d.target_embodiment)
        train = Episodes.concat([_random_episodes(d.n_source, T, ti, es, 1),
                                 _random_episodes(d.n_target, T, ti, et, 2)])
        return {"train": train, "target": _random_episodes(d.n_eval, T, ti, et, 3),
                "transfer": _random_episodes(d.n_eval, T, tt, et, 4)}
    if d.source != "tabletop":
        raise DataError(f"data.source: expected 'tabletop' or 'random', got {d.source!r}")
    if d.path is not None:
        return _from_folder(cfg) if os.path.isdir(d.path) else _from_file(cfg)
    # seeds: disjoint episode streams per split
    gen = lambda task, emb, n, s: _generated(cache_dir, task, emb, n, T, s)  # noqa: E731
    train = Episodes.concat([gen(d.task, d.source_embodiment, d.n_source, 1000),
                             gen(d.task, d.target_embodiment, d.n_target, 2000)])
    return {"train": train, "target": gen(d.task, d.target_embodiment, d.n_eval, 3000),
            "transfer": gen(d.transfer_task, d.target_embodiment, d.n_eval, 4000)}


@torch.no_grad()
def encode_episodes(model, episodes: Episodes, device, batch: int = 256) -> torch.Tensor:
    """Frozen-AE latents of every frame: (N, T+1, C, 16, 16) on ``device`` (the AE is put in eval mode)."""
    model.ae.eval()
    n, t1 = episodes.frames.shape[:2]
    flat = episodes.frames.reshape(n * t1, 64, 64, 3)
    out = []
    for i in range(0, len(flat), batch):
        x = torch.from_numpy(flat[i:i + batch]).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        out.append(model.ae.encode(x))
    return torch.cat(out).unflatten(0, (n, t1))
