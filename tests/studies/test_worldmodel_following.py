"""Action-following evaluation of the world model (worldmodel.following and .following_eval, issue #19 items 1, 5):
the moving region and its metrics against hand computations, paired gaps and bootstrap intervals (per run and pooled
over seeds), fake models that do / do not read their actions, the one-step and open-loop paths against the model's
own rollout, and evaluate() + report end to end (DiT and tiny Wan)."""
import json
import os

import numpy as np
import pytest
import torch

from mclcore.metrics.stats import summarize
from mclcore.studies.worldmodel import following as fol
from mclcore.studies.worldmodel import following_eval as fev
from mclcore.studies.worldmodel import report as wm_report
from mclcore.studies.worldmodel import seeds as wm_seeds
from mclcore.studies.worldmodel.data import Episodes
from mclcore.studies.worldmodel.evaluate import evaluate, rollouts
from mclcore.studies.worldmodel.run import train
from mclcore.train.config import apply_overrides
from tests.studies.test_worldmodel import finish, tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)


# ---------------------------------------------------------------------------------------------------- moving region
def square_video(positions, size=3, px=16, value=0.8):
    """(1, len(positions), 3, px, px): a grey square of side ``size`` at each (row, col) on black."""
    v = torch.zeros(1, len(positions), 3, px, px)
    for t, (r, c) in enumerate(positions):
        v[0, t, :, r: r + size, c: c + size] = value
    return v


def test_moving_mask_is_exactly_where_the_square_moved():
    v = square_video([(2, 2), (2, 6), (2, 6)])            # moves 4 px right, then stands still
    v[0, 1, 1, 10, 10] = 0.02                              # a faint change (shading): below the threshold
    m = fev.moving_mask(v, threshold=0.05)                 # (1, 2, 16, 16)
    want = torch.zeros(16, 16, dtype=torch.bool)
    want[2:5, 2:5] = True                                  # where it was
    want[2:5, 6:9] = True                                  # where it went
    assert m.shape == (1, 2, 16, 16) and torch.equal(m[0, 0], want)
    assert not m[0, 1].any()                               # frame 2: nothing moved
    grown = fev.moving_mask(v, threshold=0.05, dilate=1)
    assert torch.equal(grown[0, 0], torch.nn.functional.max_pool2d(want[None, None].float(), 3, 1, 1)[0, 0] > 0)
    assert fev.moving_mask(v, threshold=0.0)[0, 1, 10, 10]     # threshold 0: any change
    for bad, kw in (("threshold", {"threshold": 1.0}), ("threshold", {"threshold": -0.1}),
                    ("dilate", {"threshold": 0.1, "dilate": -1}), ("dilate", {"threshold": 0.1, "dilate": 1.5})):
        with pytest.raises(ValueError, match=bad):
            fev.moving_mask(v, **kw)


def test_moving_region_psnr_against_a_hand_computation():
    gt = square_video([(2, 2), (2, 6), (2, 6)])
    pred = gt[:, 1:].clone()
    pred[0, 0, :, 2:5, 6:9] = 0.5                          # frame 1: the square at 0.5 instead of 0.8
    pred[0, 0, 0, 12, 12] = 0.3                            # an error outside the moving region
    mask = fev.moving_mask(gt, threshold=0.05)
    fm = fev.frame_metrics(pred, gt[:, 1:], mask)
    moved = 9 + 9                                          # two 3x3 squares, 3 channels each
    want_mse = (9 * 3 * 0.3 ** 2) / (moved * 3)
    assert fm["moving_mse"][0, 0] == pytest.approx(want_mse)
    assert fm["moving_psnr"][0, 0] == pytest.approx(10 * np.log10(1 / want_mse))
    assert fm["mse"][0, 0] == pytest.approx((9 * 3 * 0.3 ** 2 + 0.3 ** 2) / (16 * 16 * 3))
    assert np.isnan(fm["moving_mse"][0, 1]) and fm["mse"][0, 1] == 0       # empty mask: skipped, not scored
    ep = fev.episode_metrics(fm)
    assert ep["moving_psnr"][0] == pytest.approx(fm["moving_psnr"][0, 0])  # the mean over frames with motion
    assert ep["psnr"][0] == pytest.approx((fm["psnr"][0, 0] + 100.0) / 2)  # a perfect frame is 100 dB
    still = fev.episode_metrics(fev.frame_metrics(gt[:, 1:], gt[:, 1:], torch.zeros_like(mask)))
    assert np.isnan(still["moving_psnr"][0])                               # nothing moved in the episode
    assert fol.summarize_episodes([1.0, np.nan, 3.0])["n"] == 2


# ------------------------------------------------------------------------------------------------------- statistics
def test_paired_gap_and_intervals():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 20), rng.normal(0, 1, 20)
    gap = fol.paired_gap(a, b)
    assert np.array_equal(gap, a - b)
    s = fol.summarize_episodes(gap)
    assert s == summarize(a - b) and s["lo"] <= s["mean"] <= s["hi"] and s["n"] == 20
    with pytest.raises(ValueError, match="b:"):
        fol.paired_gap(a, b[:3])
    # pooling seeds: mean of per-seed means; hierarchical covers the run-to-run spread, stratified does not
    seeds = [rng.normal(0, 0.1, 16), rng.normal(10, 0.1, 16), rng.normal(5, 0.1, 12)]
    h = fol.pool_seeds(seeds)
    st = fol.pool_seeds(seeds, method="stratified")
    assert h["mean"] == pytest.approx(np.mean([x.mean() for x in seeds])) == st["mean"]
    assert (h["n"], h["n_seeds"]) == (44, 3)
    assert h["lo"] <= h["mean"] <= h["hi"] and st["lo"] <= st["mean"] <= st["hi"]
    assert h["hi"] - h["lo"] > 10 * (st["hi"] - st["lo"])
    assert fol.pool_seeds(seeds) == h                                       # deterministic
    one = fol.pool_seeds([a - b])
    assert one["n_seeds"] == 1 and one["lo"] <= one["mean"] <= one["hi"]
    assert one["mean"] == pytest.approx(s["mean"])
    assert fol.pool_seeds([[np.nan, 2.0], [np.nan]])["n"] == 1
    with pytest.raises(ValueError, match="method"):
        fol.pool_seeds(seeds, method="flat")


# ------------------------------------------------------------------------------------------------------ fake models
class _IdentityAE(torch.nn.Module):
    def encode(self, x):
        return x

    def decode(self, v):
        return v


class FakeModel(torch.nn.Module):
    """ACG-like in pixel space: the 'latent' is the frame; the next frame is the context shifted by the action's
    (dx, dy) pixels (``follows``) or the context itself (action-blind), plus a little sampling noise."""
    variant, u_dim = "acg", 4

    def __init__(self, follows: bool):
        super().__init__()
        self.follows, self.ae = follows, _IdentityAE()

    def latent_actions(self, v_t, v_next, actions, embodiment, source="idm"):
        return actions

    def predict_next(self, v, u, *, steps=1, method="euler", generator=None):
        noise = 0.01 * torch.randn(v.shape, generator=generator, device=v.device)
        if self.follows:
            v = torch.stack([torch.roll(f, (int(a[1]), int(a[0])), dims=(-2, -1)) for f, a in zip(v, u)])
        return v + noise


def moving_square_episodes(n=8, T=6, seed=0):
    """Squares moving by their recorded (dx, dy) in {-3..3} px per step, inside 64 x 64 frames."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, T + 1, 64, 64, 3), np.uint8)
    actions = np.zeros((n, T, 4), np.float32)
    for i in range(n):
        r, c = rng.integers(20, 36, 2)
        for t in range(T + 1):
            frames[i, t, r: r + 8, c: c + 8] = (200, 120, 60)
            if t < T:
                dx, dy = rng.integers(-3, 4, 2)
                actions[i, t, :2] = dx, dy
                r, c = r + dy, c + dx
    return Episodes(frames, actions, np.zeros((n, T + 1, 11), np.float32), np.zeros(n, np.int64),
                    np.zeros(n, np.int64))


def test_a_model_that_follows_actions_has_a_positive_gap_and_a_blind_one_none():
    eps = moving_square_episodes()
    cfg = tiny("acg", extra=["eval.horizon=6", "eval.batch_size=3", "eval.moving_dilate=0"])
    out = {}
    for follows in (True, False):
        r = fev.split_following(FakeModel(follows), cfg, eps, "cpu")
        out[follows] = fol.summarize_following({"target": r})["target"]
        assert r["episodes"] == 8 and r["horizon"] == 6 and len(r["per_frame"]["one_step"]["right"]) == 6
        assert r["_frames"]["right"].shape == (cfg.eval.figure_episodes, 6, 3, 64, 64)
    for kind in fol.MODES:
        gap = out[True][kind]["right-shuffled"]
        assert gap["moving_psnr"]["lo"] > 0 and gap["psnr"]["lo"] > 0 and gap["moving_mse"]["hi"] < 0, kind
        blind = out[False][kind]["right-shuffled"]
        for m in fol.METRICS:                      # the same noise on both sides: the blind model's gap is 0
            assert blind[m]["lo"] <= 0 <= blind[m]["hi"], (kind, m)
    # the follower is near-perfect with the right actions and, with zero action, is the copy-last baseline + noise
    one = out[True]["one_step"]
    assert one["right"]["moving_psnr"]["mean"] > 35 > one["shuffled"]["moving_psnr"]["mean"]
    assert one["zero"]["moving_psnr"]["mean"] == pytest.approx(one["copy_last"]["moving_psnr"]["mean"], abs=0.5)
    assert one["right-copy_last"]["moving_psnr"]["lo"] > 0


def test_one_step_and_open_loop_match_the_models_own_rollout(tmp_path):
    cfg = tiny("acg")
    model, _ = train(cfg, str(tmp_path / "a"), progress=False, log=False)
    from mclcore.studies.worldmodel.data import load_splits

    eps = load_splits(cfg, str(tmp_path / "cache"))["target"]
    for mode in ("right", "shuffled", "zero"):
        ours = fev.predictions(model, cfg, eps, "cpu", "open_loop", mode)
        theirs, gt = rollouts(model, cfg, eps, "cpu", cfg.eval.lacg_actions, mode=mode)
        assert torch.equal(ours, theirs), mode
    assert torch.equal(rollouts(model, cfg, eps, "cpu", "idm", shuffle=True)[0],
                       rollouts(model, cfg, eps, "cpu", "idm", mode="shuffled")[0])
    with pytest.raises(ValueError, match="mode"):
        rollouts(model, cfg, eps, "cpu", "idm", mode="backwards")
    # one step from frame 0 is the first open-loop frame (same noise draw when H = 1; up to float rounding of
    # differently laid out batches)
    one = apply_overrides(tiny("acg"), ["eval.horizon=1"])
    torch.testing.assert_close(fev.predictions(model, one, eps, "cpu", "one_step", "right"),
                               fev.predictions(model, one, eps, "cpu", "open_loop", "right"), rtol=0, atol=1e-5)
    # the actions reach the trained model's predictions (it is not action-blind by construction)
    assert not torch.equal(fev.predictions(model, cfg, eps, "cpu", "one_step", "right"),
                           fev.predictions(model, cfg, eps, "cpu", "one_step", "zero"))


def test_lacg_zero_latent_action_rollout(tmp_path):
    cfg = tiny("lacg")
    model, _ = train(cfg, str(tmp_path / "a"), progress=False, log=False)
    from mclcore.studies.worldmodel.data import load_splits

    eps = load_splits(cfg, str(tmp_path / "cache"))["target"]
    lat = fev._encode(model, eps.float_frames(), 3)
    u = fev.conditioning(model, lat, torch.from_numpy(eps.actions), torch.from_numpy(eps.embodiment), "zero")
    assert u.shape == (3, 3, model.u_dim) and not u.any()
    pred, gt = rollouts(model, cfg, eps, "cpu", "idm", mode="zero")
    assert torch.equal(pred, fev.predictions(model, cfg, eps, "cpu", "open_loop", "zero")) and pred.shape == gt.shape
    # shuffled: the IDM reads the other episode's frames; the regressor reads only its actions
    idm = fev.predictions(model, cfg, eps, "cpu", "one_step", "shuffled")
    reg_cfg = apply_overrides(tiny("lacg"), ["eval.lacg_actions=regressor"])
    reg = fev.predictions(model, reg_cfg, eps, "cpu", "one_step", "shuffled")
    assert idm.shape == reg.shape == gt.shape and not torch.equal(idm, reg)
    with pytest.raises(ValueError, match="other_actions"):
        fev.conditioning(model, lat, torch.from_numpy(eps.actions), torch.from_numpy(eps.embodiment), "shuffled",
                         other_actions=torch.from_numpy(eps.actions))


# ---------------------------------------------------------------------------------------------------- end to end
SPLIT_KEYS = {"episodes", "horizon", "moving", "one_step", "open_loop"}


def _check_run(out, res):
    f = res["following"]
    assert set(f) == {"target", "transfer"}
    for split in f.values():
        assert SPLIT_KEYS <= set(split)
        for kind in fol.MODES:
            want = {*fol.ROWS[kind], *(f"{a}-{b}" for a, b in fol.GAPS[kind])}
            assert set(split[kind]) == want
            for row in split[kind].values():
                assert set(row) == set(fol.METRICS)
                assert set(row["psnr"]) >= {"n", "mean", "lo", "hi"} and row["psnr"]["n"] == 3
    data = json.load(open(os.path.join(out, "following.json")))
    assert data["moving_threshold"] == 0.05 and data["moving_dilate"] == 0      # the defaults: exactly the changing pixels
    pe = data["splits"]["target"]["per_episode"]
    assert set(pe) == set(fol.MODES) and all(len(v) == 3 for v in pe["one_step"]["right"].values())
    md = open(os.path.join(out, "following.md")).read()
    assert "**gap** right − shuffled" in md and "copy last GT frame" in md and "moving PSNR" in md
    for fig in ("following_rollout.png", "per_frame.png"):
        assert os.path.getsize(os.path.join(out, "figures", fig)) > 1000


def test_evaluate_writes_following_and_the_report_pools_seeds(tmp_path):
    dirs, first = [], None
    for seed in (0, 1):
        cfg = tiny("acg", seed=seed)
        out = str(tmp_path / f"acg-seed{seed}")
        model, _ = train(cfg, out, progress=False, log=False)
        res = evaluate(model, cfg, out)
        _check_run(out, res)
        assert "target" in res and "target_shuffled_actions" in res          # the Table 2 rows are still there
        finish(res, out)
        dirs.append(out)
        if seed == 0:
            first = json.load(open(os.path.join(out, "following.json")))
            again = evaluate(model, cfg, str(tmp_path / "again"))            # same seed, same numbers
            assert again["following"] == res["following"]
            assert json.load(open(tmp_path / "again" / "following.json")) == first
            # the open-loop "right"/"shuffled" rows are the Table 2 rollouts (same samples)
            assert res["following"]["target"]["open_loop"]["right"]["psnr"]["mean"] == \
                pytest.approx(res["target"]["psnr"])
            assert res["following"]["target"]["open_loop"]["shuffled"]["mse"]["mean"] == \
                pytest.approx(res["target_shuffled_actions"]["mse"], rel=1e-5)
            off = evaluate(model, apply_overrides(tiny("acg"), ["eval.following=false"]), str(tmp_path / "off"))
            assert "following" not in off and not os.path.exists(tmp_path / "off" / "following.json")
            assert off["target"] == res["target"]
            finish(off, str(tmp_path / "off"))      # a run without following.json: the report leaves the table out
            assert "following" not in wm_report.report([str(tmp_path / "off")], str(tmp_path / "report_off"))
    rep = wm_report.report(dirs, str(tmp_path / "report"))
    md = open(rep["following"]).read()
    assert "| ACG | cpu-smoke | 0,1 | target | one-step | **gap** right − shuffled | 6 |" in md
    assert "copy first GT frame" in md and "open-loop" in md
    pooled = fol.pool_runs([fol.load_following(d) for d in dirs])
    assert pooled["target"]["one_step"]["right"]["ssim"]["n_seeds"] == 2


def test_evaluation_config_is_validated():
    for bad, field in (("eval.moving_threshold=1.5", "eval.moving_threshold"),
                       ("eval.moving_threshold=-0.1", "eval.moving_threshold"),
                       ("eval.moving_dilate=-1", "eval.moving_dilate")):
        with pytest.raises(ValueError, match=field):
            apply_overrides(tiny(), [bad]).validate()
    assert apply_overrides(tiny(), ["eval.moving_threshold=0", "eval.moving_dilate=0"]).validate()


def test_wan_backbone_following_end_to_end(tmp_path):
    pytest.importorskip("diffusers")
    cfg = tiny("lacg", extra=["model.backbone=wan", "model.wan_layers=1", "model.wan_heads=2",
                              "model.wan_head_dim=12", "dynamics.steps=2"])
    out = str(tmp_path / "wan")
    model, done = train(cfg, out, progress=False, log=False)
    assert done and type(model.fdm).__name__ == "WanForwardModel"
    _check_run(out, evaluate(model, cfg, out))


def _fake_run(method, seed, shift=0.0, gap=0.0, n=5):
    """(metrics.json, following data) of a fake run: per-episode values with a known structure; ``shift`` is added
    to every right-action value, ``gap`` to the right - shuffled difference."""
    rng = np.random.default_rng(seed)
    per = {}
    for kind in fol.MODES:
        base = {m: rng.normal(20.0, 1.0, n) for m in fol.METRICS}
        per[kind] = {"right": {m: v + shift + gap for m, v in base.items()},
                     "shuffled": {m: v + shift for m, v in base.items()},
                     "zero": dict(base), "copy_first": dict(base), "copy_last": dict(base), "ae_recon": dict(base)}
    splits = {s: {"episodes": n, "horizon": 3, "per_episode": per} for s in ("target", "transfer")}
    metrics = {"method": method, "preset": "cpu", "seed": seed,
               **{s: {"ssim_l": 0.5 + seed / 10} for s in ("target", "transfer")}}
    return metrics, {"splits": splits}


def test_table2_pools_seeds_and_mcl_effect_is_paired_by_seed_and_episode():
    runs = []
    for seed in (0, 1, 2):
        m, f = _fake_run("ACG", seed)
        runs.append((m, f))
        mm, ff = _fake_run("ACG+MCL", seed, shift=0.25, gap=-0.5)       # same episodes as the base run + a shift
        runs.append((mm, ff))
    runs.append(_fake_run("LACG", 0))                                   # no LACG+MCL: no LACG effect rows
    rows = wm_seeds.mcl_effect(runs)
    assert {r["variant"] for r in rows} == {"ACG"} and all(r["seeds"] == [0, 1, 2] for r in rows)
    for r in rows:
        want = 0.25 - 0.5 if r["quantity"] == "right" else -0.5       # right = base + shift + gap; gap moves by gap
        assert r["diff"]["mean"] == pytest.approx(want) and r["diff"]["n_seeds"] == 3 and r["diff"]["n"] == 15
        assert r["diff"]["lo"] == pytest.approx(want) and r["diff"]["hi"] == pytest.approx(want)   # constant shift
    md = wm_seeds.mcl_effect_markdown(rows)
    assert "| ACG | cpu | 0,1,2 | target | action-following gap right − shuffled, one-step | moving psnr | 15 |" in md
    table = wm_seeds.pooled_table_markdown(runs)
    seed_means = [f["splits"]["target"]["per_episode"]["open_loop"]["right"]["psnr"].mean()
                  for m, f in runs if m["method"] == "ACG"]
    line = next(l for l in table.splitlines() if l.startswith("| ACG (ours, cpu) | 0,1,2 | 15 |"))
    assert f"{np.mean(seed_means):.2f} [" in line and "0.600 [0.500, 0.700]" in line      # SSIM-L: seeds' range
    assert "| Wan-ACG+MCL (paper) |" in table
    assert wm_seeds.mcl_effect_markdown([]).startswith("No variant")
