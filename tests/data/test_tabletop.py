"""Tabletop simulator, expert, episode files, dataset and CLI (mclcore.data.tabletop)."""
import json
import os

import h5py
import numpy as np
import pytest
import torch

from mclcore.cli import main as mcl_main
from mclcore.data import tabletop as tt
from mclcore.data.tabletop import episodes as episodes_mod
from mclcore.data.tabletop.spec import get_embodiment


def _state(ee=(0.0, 0.0, 0.1), grip=1.0, a=(-0.12, 0.0, 0.0), b=(0.0, 0.0, 0.0), grasped=0.0):
    return np.array([*ee, grip, *a, *b, grasped], dtype=np.float32)


def _render(state, emb, env):
    return tt.render_states(state[None], env.assets[None], env.sizes[None], env.yaw[None], emb)[0]


# ------------------------------------------------------------------------------------------------ success rule
@pytest.mark.parametrize("task,dx,expected", [
    ("place_a2b_left", -0.12, True), ("place_a2b_left", 0.12, False),
    ("place_a2b_right", 0.12, True), ("place_a2b_right", -0.12, False),
    ("place_a2b_left", -0.07, False), ("place_a2b_left", -0.21, False),     # outside the (0.08, 0.2) band
    ("place_a2b_left", -0.19, True), ("place_a2b_right", 0.09, True),
])
def test_success_side_and_distance_band(task, dx, expected):
    b = (0.03, -0.02, 0.0)
    s = _state(a=(b[0] + dx, b[1] + 0.01, 0.0), b=b)
    assert bool(tt.success_from_states(s, task)) is expected


def test_success_needs_open_gripper_released_object_and_same_row():
    ok = _state(a=(-0.12, 0.0, 0.0))
    assert tt.success_from_states(ok, "place_a2b_left")
    assert not tt.success_from_states(_state(a=(-0.12, 0.0, 0.0), grip=0.3), "place_a2b_left")        # closed
    assert not tt.success_from_states(_state(a=(-0.12, 0.0, 0.0), grasped=1.0), "place_a2b_left")     # held
    assert not tt.success_from_states(_state(a=(-0.12, 0.06, 0.0)), "place_a2b_left")                 # |dy| > 0.05
    batch = np.stack([ok, _state(a=(0.12, 0.0, 0.0))])
    assert tt.success_from_states(batch, 0).tolist() == [True, False]
    assert tt.success_from_states(batch, 1).tolist() == [False, True]


# ------------------------------------------------------------------------------------------------ env, physics
def test_env_determinism_and_observations():
    a, b = tt.TabletopEnv("arm_a", seed=7), tt.TabletopEnv("arm_a", seed=7)
    oa, ob = a.reset(), b.reset()
    assert oa["frame"].shape == (64, 64, 3) and oa["frame"].dtype == np.uint8 and oa["state"].shape == (11,)
    act = np.array([0.03, -0.02, -0.01, 0.5], dtype=np.float32)
    for _ in range(3):
        oa, ob = a.step(act), b.step(act)
    assert oa["frame"].tobytes() == ob["frame"].tobytes() and oa["state"].tobytes() == ob["state"].tobytes()
    assert np.array_equal(a.render(), oa["frame"])
    c = tt.TabletopEnv("arm_a", seed=8)
    assert not np.array_equal(c.reset()["state"], tt.TabletopEnv("arm_a", seed=7).reset()["state"])


def test_actions_are_clipped_and_workspace_bounded():
    env = tt.TabletopEnv("arm_b", seed=0)
    s0 = env.reset()["state"]
    s1 = env.step([1.0, 0.0, 0.0, 1.0])["state"]
    assert s1[0] - s0[0] == pytest.approx(0.08, abs=1e-6)                     # dx clipped to 0.08
    for _ in range(20):
        s = env.step([1.0, -1.0, -1.0, 1.0])["state"]
    emb = get_embodiment("arm_b")
    assert np.allclose(s[:3], [emb.hi[0], emb.lo[1], emb.lo[2]], atol=1e-6)


def test_grasp_carry_release():
    env = tt.TabletopEnv("arm_a", seed=3, render_obs=False)
    s = env.reset()["state"]
    h = env.heights[0]
    # move above A, descend to half its height, close
    for _ in range(12):
        s = env.step(np.append(np.clip([s[4] - s[0], s[5] - s[1], 0.12 - s[2]], -0.08, 0.08), 1.0))["state"]
    for _ in range(4):
        s = env.step([0.0, 0.0, np.clip(0.5 * h - s[2], -0.06, 0.06), 1.0])["state"]
    assert s[10] == 0.0
    s = env.step([0, 0, 0, 0.0])["state"]
    assert s[10] == 0.0 and s[3] == pytest.approx(0.5)                        # half closed: not yet holding
    s = env.step([0, 0, 0, 0.0])["state"]
    assert s[10] == 1.0
    a_before = s[4:7].copy()
    s = env.step([0.05, 0.02, 0.06, 0.0])["state"]
    assert np.allclose(s[4:7] - a_before, [0.05, 0.02, 0.06], atol=1e-6)     # A follows the gripper
    s = env.step([0, 0, 0, 1.0])["state"]
    assert s[10] == 0.0 and s[6] == 0.0                                      # released: drops onto the table


def test_closing_away_from_object_does_not_grasp():
    env = tt.TabletopEnv("arm_a", seed=3, render_obs=False)
    env.reset()
    for _ in range(3):
        s = env.step([0, 0, 0, 0.0])["state"]                                # closing high above the table
    assert s[10] == 0.0 and s[3] == 0.0


def test_every_workspace_point_is_reachable():
    for name in tt.EMBODIMENTS:
        emb = get_embodiment(name)
        axes = [np.linspace(emb.lo[i], emb.hi[i], 7) for i in range(3)]
        grid = np.stack(np.meshgrid(*axes), -1).reshape(-1, 3)
        assert emb.reach_margin(grid).min() > 0, name


def test_embodiments_render_differently_for_same_state_and_actions():
    env_a, env_b = tt.TabletopEnv("arm_a", seed=5), tt.TabletopEnv("arm_b", seed=5)
    fa, fb = env_a.reset()["frame"], env_b.reset()["frame"]
    assert np.array_equal(env_a.state(), env_b.state())                     # same seed: same scene
    diff = np.abs(fa.astype(int) - fb.astype(int)).sum(-1)
    assert (diff > 30).sum() > 60                                            # the arms differ on many pixels
    for _ in range(4):
        oa, ob = env_a.step([-0.04, -0.03, -0.02, 0.0]), env_b.step([-0.04, -0.03, -0.02, 0.0])
    assert np.array_equal(oa["state"], ob["state"])
    assert (np.abs(oa["frame"].astype(int) - ob["frame"].astype(int)).sum(-1) > 30).sum() > 60
    # ... and both frames show the same objects: the pixels far from any arm agree
    same = (np.abs(oa["frame"].astype(int) - ob["frame"].astype(int)).sum(-1) == 0).mean()
    assert same > 0.6


def test_render_shows_what_moves():
    env = tt.TabletopEnv("arm_a", seed=2)
    env.reset()
    s = env.state()
    base = _render(s, "arm_a", env)
    for col, delta in ((0, 0.05), (2, 0.08), (3, -1.0), (4, 0.05), (8, 0.05)):
        s2 = s.copy()
        s2[col] += delta
        assert np.abs(_render(s2, "arm_a", env).astype(int) - base.astype(int)).sum() > 500, tt.STATE_NAMES[col]


def test_project_and_draw_trajectory():
    centre = tt.project(np.array([tt.CAMERA["target"]]))[0]
    assert np.allclose(centre, [32, 32], atol=1e-6)
    left, right = tt.project(np.array([[-0.1, 0.0, 0.0], [0.1, 0.0, 0.0]]))
    assert left[0] < right[0]                                                # -x is the image's left
    frame = np.zeros((128, 128, 3), dtype=np.uint8)
    states = np.array([_state(ee=(-0.1, 0.0, 0.0)), _state(ee=(0.1, 0.0, 0.0))])
    out = tt.draw_trajectory(frame, states, colour=(255, 220, 0))
    assert out.shape == frame.shape and frame.sum() == 0                     # input untouched
    row = int(round(tt.project(np.zeros((1, 3)), 128)[0, 1]))
    lit = out[row - 1:row + 2].max(0)[:, 0] > 100
    x0, x1 = tt.project(states[:, :3], 128)[:, 0]
    span = lit[int(x0) + 1:int(x1) - 1]
    assert 0.3 < span.mean() < 0.95                                          # dashed: partly on, partly off
    with pytest.raises(ValueError, match="track"):
        tt.draw_trajectory(frame, np.zeros(5))


# ------------------------------------------------------------------------------------------------ expert
@pytest.mark.parametrize("emb", tt.EMBODIMENTS)
@pytest.mark.parametrize("task", tt.TASKS)
def test_expert_success_rate(task, emb):
    seeds = tt.episode_seeds(123, 20)
    ok = [tt.success_from_states(tt.simulate_episode(task, emb, s, T=32)[0][-1], task) for s in seeds]
    assert np.mean(ok) >= 0.9
    # and the episode is not a success before the expert acts (A starts off B's row)
    states, actions, _ = tt.simulate_episode(task, emb, seeds[0], T=32)
    assert not tt.success_from_states(states[0], task)
    assert np.all(actions >= tt.ACTION_LOW) and np.all(actions <= tt.ACTION_HIGH)


def test_expert_places_on_the_named_side():
    seed = int(tt.episode_seeds(9, 1)[0])
    left = tt.simulate_episode("place_a2b_left", "arm_a", seed)[0][-1]
    right = tt.simulate_episode("place_a2b_right", "arm_a", seed)[0][-1]
    assert left[4] < left[7] and right[4] > right[7]


# ------------------------------------------------------------------------------------------------ files
@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tt") / "ep.h5")
    return tt.generate_episodes(path, 3, "place_a2b_right", "arm_b", T=6, seed=4, progress=False)


def test_file_format_round_trip(small_file):
    d = tt.load_episodes(small_file)
    assert d["frames"].shape == (3, 7, 64, 64, 3) and d["frames"].dtype == np.uint8
    assert d["actions"].shape == (3, 6, 4) and d["actions"].dtype == np.float32
    assert d["states"].shape == (3, 7, 11) and d["states"].dtype == np.float32
    for key, dtype in (("embodiment", np.int64), ("task", np.int64), ("success", np.bool_), ("seed", np.int64)):
        assert d[key].shape == (3,) and d[key].dtype == dtype
    a = d["attrs"]
    assert a["task_names"] == ["place_a2b_left", "place_a2b_right"] and a["embodiment_names"] == ["arm_a", "arm_b"]
    assert a["state_names"] == list(tt.STATE_NAMES) and a["action_names"] == list(tt.ACTION_NAMES)
    assert a["format_version"] == 1 and a["T"] == 6 and a["image_size"] == 64 and a["config"]["seed"] == 4
    assert (d["task"] == 1).all() and (d["embodiment"] == 1).all()
    # the stored frames, states and actions replay exactly from the episode seed
    states, actions, env = tt.simulate_episode("place_a2b_right", "arm_b", d["seed"][1], T=6)
    assert np.array_equal(states, d["states"][1]) and np.array_equal(actions, d["actions"][1])
    env2 = tt.TabletopEnv("arm_b", seed=int(d["seed"][1]))
    obs = env2.reset()
    assert np.array_equal(obs["frame"], d["frames"][1, 0])
    for t in range(6):
        obs = env2.step(d["actions"][1, t])
    assert np.array_equal(obs["frame"], d["frames"][1, 6]) and np.array_equal(obs["state"], d["states"][1, 6])


def test_generation_is_deterministic_and_prefix_stable(small_file, tmp_path):
    again = tt.generate_episodes(tmp_path / "again.h5", 3, "place_a2b_right", "arm_b", T=6, seed=4, progress=False)
    longer = tt.generate_episodes(tmp_path / "longer.h5", 4, "place_a2b_right", "arm_b", T=6, seed=4, progress=False)
    x, y, z = tt.load_episodes(small_file), tt.load_episodes(again), tt.load_episodes(longer)
    for key in ("frames", "actions", "states", "seed"):
        assert x[key].tobytes() == y[key].tobytes()
        assert x[key].tobytes() == z[key][:3].tobytes()


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "out.h5"
    calls = {"n": 0}
    real = episodes_mod.render_states

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(episodes_mod, "render_states", failing)
    monkeypatch.setattr(episodes_mod, "_RENDER_FRAMES", 8)
    with pytest.raises(KeyboardInterrupt):
        tt.generate_episodes(path, 2, T=6, progress=False)
    assert calls["n"] == 2 and os.listdir(tmp_path) == []
    # an existing file is replaced only by a complete one
    monkeypatch.setattr(episodes_mod, "render_states", real)
    tt.generate_episodes(path, 1, T=4, progress=False)
    before = path.read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(episodes_mod, "render_states", failing)
    with pytest.raises(KeyboardInterrupt):
        tt.generate_episodes(path, 2, T=6, progress=False)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["out.h5"]


@pytest.mark.parametrize("kwargs,name", [
    ({"task": "stack_blocks"}, "task"), ({"embodiment": "arm_c"}, "embodiment"), ({"n": 0}, "n"),
    ({"T": 0}, "T"), ({"n": 2.5}, "n"), ({"noise": -0.1}, "noise"), ({"asset_set": "nope"}, "asset_set"),
    ({"seed": -1}, "seed"),
])
def test_bad_generate_arguments_name_the_argument(tmp_path, kwargs, name):
    args = {"path": tmp_path / "x.h5", "n": 1, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name}:"):
        tt.generate_episodes(**args)
    assert not (tmp_path / "x.h5").exists()


def test_bad_env_inputs():
    with pytest.raises(ValueError, match="^embodiment:"):
        tt.TabletopEnv("arm_z", 0)
    with pytest.raises(ValueError, match="^asset_set:"):
        tt.TabletopEnv("arm_a", 0, asset_set="nope")
    env = tt.TabletopEnv("arm_a", 0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0, 0, 0, 1])
    env.reset()
    with pytest.raises(ValueError, match="^action:"):
        env.step([0, 0, 1])
    with pytest.raises(ValueError, match="^task:"):
        env.success("place_a2b_up")
    with pytest.raises(ValueError, match="^noise:"):
        tt.expert_policy("place_a2b_left", env, np.random.default_rng(0), noise=-1)


def test_load_rejects_wrong_files(tmp_path, small_file):
    with pytest.raises(tt.EpisodeFileError, match="no such"):
        tt.load_episodes(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(tt.EpisodeFileError, match="format_version"):
        tt.load_episodes(bad)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(tt.EpisodeFileError, match="HDF5"):
        tt.load_episodes(tmp_path / "text.h5")


def _copy(src, dst):
    import shutil

    shutil.copy(src, dst)
    return str(dst)


def test_read_episodes_matches_the_file(small_file):
    ep = tt.read_episodes(small_file)
    raw = tt.load_episodes(small_file)
    assert isinstance(ep, tt.EpisodeArrays) and len(ep) == 3 and ep.T == 6
    for key, dtype, shape in (("frames", np.uint8, (3, 7, 64, 64, 3)), ("actions", np.float32, (3, 6, 4)),
                              ("states", np.float32, (3, 7, 11)), ("embodiment", np.int64, (3,)),
                              ("task", np.int64, (3,))):
        arr = getattr(ep, key)
        assert arr.dtype == dtype and arr.shape == shape and np.array_equal(arr, raw[key])
    assert ep.task_names == ["place_a2b_left", "place_a2b_right"] == list(tt.TASKS)
    assert ep.embodiment_names == ["arm_a", "arm_b"] == list(tt.EMBODIMENTS)
    assert all(type(n) is str for n in ep.task_names + ep.embodiment_names)


def test_read_episodes_accepts_byte_string_names_and_no_extras(small_file, tmp_path):
    path = _copy(small_file, tmp_path / "bytes.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["task_names"] = np.array([b"place_a2b_left", b"place_a2b_right"])          # fixed-length bytes
        f.attrs.create("embodiment_names", ["arm_a", "arm_b"], dtype=h5py.string_dtype())  # variable-length str
        for key in ("success", "seed", "object_assets", "object_sizes", "object_yaw"):
            del f[key]
        for key in ("action_names", "state_names", "config"):
            del f.attrs[key]
    ep = tt.read_episodes(path)
    assert ep.task_names == ["place_a2b_left", "place_a2b_right"] and ep.embodiment_names == ["arm_a", "arm_b"]
    assert np.array_equal(ep.frames, tt.read_episodes(small_file).frames)
    with pytest.raises(tt.EpisodeFileError, match="no attribute 'action_names'"):   # load_episodes needs all
        tt.load_episodes(path)


@pytest.mark.parametrize("edit,message", [
    (lambda f: f.attrs.__setitem__("format_version", 2), "format_version 2, expected 1"),
    (lambda f: f.attrs.__delitem__("format_version"), "format_version None, expected 1"),
    (lambda f: f.attrs.__delitem__("task_names"), "no attribute 'task_names'"),
    (lambda f: f.attrs.__setitem__("task_names", "place_a2b_left"), "'task_names' is neither a JSON list"),
    (lambda f: (f.__delitem__("actions"), f.create_dataset("actions", data=np.zeros((3, 6, 4)))),
     "'actions' has dtype float64, expected float32"),
    (lambda f: (f.__delitem__("states"), f.create_dataset("states", data=np.zeros((3, 7, 9), np.float32))),
     r"'states' has shape \(3, 7, 9\), expected \(3, 7, 11\)"),
    (lambda f: (f.__delitem__("task"), f.create_dataset("task", data=np.zeros(2, np.int64))),
     "'task' holds 2 episodes, 'frames' 3"),
    (lambda f: f["task"].__setitem__(1, 5), r"'task' holds indices 1..5, but 'task_names' has 2 entries"),
    (lambda f: f.__delitem__("frames"), "no dataset 'frames'"),
])
def test_read_episodes_rejects_bad_files_naming_them(small_file, tmp_path, edit, message):
    path = _copy(small_file, tmp_path / "edited.h5")
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(tt.EpisodeFileError, match=message) as info:
        tt.read_episodes(path)
    assert str(info.value).startswith(f"{path}: ")


def test_read_episodes_missing_or_not_hdf5(tmp_path):
    with pytest.raises(tt.EpisodeFileError, match="no such episode file"):
        tt.read_episodes(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(tt.EpisodeFileError, match=r"text\.h5: not a readable HDF5 file"):
        tt.read_episodes(tmp_path / "text.h5")


# ------------------------------------------------------------------------------------------------ dataset
def test_episode_dataset_items_filters_and_splits(small_file, tmp_path):
    other = tt.generate_episodes(tmp_path / "a.h5", 4, "place_a2b_left", "arm_a", T=6, seed=1, progress=False)
    ds = tt.EpisodeDataset([small_file, other])
    assert len(ds) == 7
    item = ds[0]
    assert set(item) == {"frames", "actions", "states", "embodiment", "task"}
    assert item["frames"].shape == (7, 3, 64, 64) and item["frames"].dtype == torch.float32
    assert 0.0 <= float(item["frames"].min()) and float(item["frames"].max()) <= 1.0
    assert item["actions"].shape == (6, 4) and item["states"].shape == (7, 11)
    raw = tt.load_episodes(small_file)
    assert torch.equal(item["frames"], torch.from_numpy(raw["frames"][0]).permute(0, 3, 1, 2).float() / 255)
    assert (item["embodiment"], item["task"]) == (1, 1)
    assert len(tt.EpisodeDataset([small_file, other], embodiment="arm_a")) == 4
    assert len(tt.EpisodeDataset([small_file, other], task="place_a2b_right")) == 3
    assert len(tt.EpisodeDataset([small_file, other], embodiment=0, task=1)) == 0
    train = tt.EpisodeDataset(other, split="train", val_fraction=0.25)
    val = tt.EpisodeDataset(other, split="val", val_fraction=0.25)
    assert len(train) == 3 and len(val) == 1
    assert torch.equal(val[0]["actions"], tt.EpisodeDataset(other)[3]["actions"])
    mem = tt.EpisodeDataset(other, split=[2, 0], in_memory=True)
    assert torch.equal(mem[0]["frames"], tt.EpisodeDataset(other)[2]["frames"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["frames"].shape == (2, 7, 3, 64, 64) and batch["task"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="^split:"):
        tt.EpisodeDataset(other, split="test")
    with pytest.raises(ValueError, match="^task:"):
        tt.EpisodeDataset(other, task="nope")


def test_lowdata_splits(tmp_path):
    paths = tt.make_lowdata_splits(tmp_path, n_source=10, target_fraction=0.2, n_eval=2, T=4, progress=False)
    assert set(paths) == {"source_train", "target_train", "target_eval", "transfer_eval"}
    d = {k: tt.load_episodes(p) for k, p in paths.items()}
    assert len(d["source_train"]["seed"]) == 10 and len(d["target_train"]["seed"]) == 2
    assert (d["source_train"]["embodiment"] == 0).all() and (d["target_train"]["embodiment"] == 1).all()
    assert (d["target_eval"]["task"] == 0).all() and (d["transfer_eval"]["task"] == 1).all()
    assert (d["target_eval"]["embodiment"] == 1).all() and (d["transfer_eval"]["embodiment"] == 1).all()
    all_seeds = np.concatenate([x["seed"] for x in d.values()])
    assert len(np.unique(all_seeds)) == len(all_seeds)                       # no episode shared between files
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["files"]["transfer_eval"]["task"] == "place_a2b_right"
    with pytest.raises(ValueError, match="^target:"):
        tt.make_lowdata_splits(tmp_path / "x", source="arm_a", target="arm_a")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_generate_and_preview(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert mcl_main(["tabletop", "generate", "--out", str(out), "--task", "place_a2b_left", "--embodiment", "arm_b",
                     "-n", "2", "--T", "5", "--seed", "1", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["episodes"] == 2 and report["T"] == 5
    assert tt.load_episodes(out)["frames"].shape == (2, 6, 64, 64, 3)
    png = tmp_path / "p.png"
    assert mcl_main(["tabletop", "preview", "--data", str(out), "--out", str(png), "--frames", "3",
                     "--trajectory"]) == 0
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] == 2 * 64 * 4 + 2 and img.shape[1] == 3 * 64 * 4 + 4
    with pytest.raises(SystemExit):
        mcl_main(["tabletop", "generate", "--out", str(out), "--task", "nope"])


def test_moving_object_a_changes_only_pixels_near_it():
    """No stray pixels: moving A (on the table or carried) changes the image only around A's old and new place."""
    from mclcore.data.tabletop.render import _project

    for seed in tt.episode_seeds(11, 6):
        states, _, env = tt.simulate_episode("place_a2b_left", "arm_b", seed, T=32)
        n = len(states)
        moved = states.copy()
        moved[:, 4:7] = [0.35, -0.25, 0.0]                                    # the table's front-right corner
        args = (np.repeat(env.assets[None], n, 0), np.repeat(env.sizes[None], n, 0), np.repeat(env.yaw[None], n, 0))
        f1 = tt.render_states(states, *args, "arm_b").astype(int)
        f2 = tt.render_states(moved, *args, "arm_b").astype(int)
        h, r = env.heights[0], 0.75 * env.sizes[0]
        for t in range(n):
            pts = [[a[0] + dx, a[1] + dy, z] for a in (states[t, 4:7], moved[t, 4:7]) for dx in (-r, r)
                   for dy in (-r, r) for z in (0.0, a[2], a[2] + h)]
            p, _ = _project(np.array(pts))
            lo, hi = np.floor(p.min(0) - 4).astype(int).clip(0, 64), np.ceil(p.max(0) + 4).astype(int).clip(0, 64)
            near = np.zeros((64, 64), dtype=bool)
            near[lo[1]:hi[1], lo[0]:hi[0]] = True
            changed = np.abs(f1[t] - f2[t]).sum(-1) > 0
            if states[t, 10] > 0.5:                                           # a held A also opens the fingers
                continue
            assert changed.any() and not (changed & ~near).any(), (seed, t)
