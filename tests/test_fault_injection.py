"""Fault injection: ``kill -9`` in the middle of a run of each study, then the same command again, must give the
weights of an uninterrupted run bit for bit; a damaged checkpoint or run file on resume is named in one line.

Each run is a subprocess of the real command line (``python -m mclcore ...``) with a driver that SIGKILLs the
process itself: after the k-th optimiser step (``torch.optim`` post-step hook; k drawn at random from the whole
run, so it falls between checkpoints and inside phases), or halfway through writing the j-th checkpoint (the
atomic writer must leave the previous one intact). Nothing is cleaned up by the killed process.
"""
import json
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs the mcl command line, killing itself at the KILL_STEP-th optimiser step or inside the KILL_SAVE-th torch.save.
DRIVER = r"""
import io, os, signal, sys
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
step, save = int(os.environ.get("KILL_STEP", 0)), int(os.environ.get("KILL_SAVE", 0))
count = {"step": 0, "save": 0}
def after_step(opt, args, kwargs):
    count["step"] += 1
    if count["step"] == step:
        os.kill(os.getpid(), signal.SIGKILL)
register_optimizer_step_post_hook(after_step)
real_save = torch.save
def dying_save(obj, f, *a, **kw):
    count["save"] += 1
    if count["save"] != save:
        return real_save(obj, f, *a, **kw)
    buf = io.BytesIO()
    real_save(obj, buf, *a, **kw)
    data = buf.getvalue()
    if hasattr(f, "write"):
        f.write(data[: len(data) // 2]); f.flush()
    else:
        open(f, "wb").write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
from mclcore.cli import main
sys.exit(main(sys.argv[1:]))
"""

DIS = ["log_every=1", "ckpt_every=2", "first_stage.ch=8", "first_stage.ch_mult=1,2,2", "first_stage.num_res_blocks=1",
       "first_stage.n_embed=64", "first_stage.u_channels=4", "first_stage.steps=2", "first_stage.batch_size=4",
       "diffusion.encoder_hidden=8", "diffusion.encoder_fc=16", "diffusion.unet_channels=8",
       "diffusion.unet_mult=1,2", "diffusion.heads=2", "diffusion.timesteps=100", "stages.batch_size=4",
       "stages.stage1_steps=3", "stages.stage2_steps=3", "stages.warmup1=2", "stages.warmup2=2",
       "mcl.critic_hidden=16", "mcl.proj_dim=8", "vae.hidden=8", "vae.fc=16", "vae.disc_width=16",
       "vae.disc_depth=2", "vae.steps=5", "vae.batch_size=4"]
WM = ["log_every=1", "ckpt_every=2", "data.source=random", "data.n_source=6", "data.n_target=3", "data.n_eval=3",
      "data.episode_len=4", "autoencoder.ch=4", "autoencoder.steps=3", "autoencoder.batch_size=4", "model.dim=16",
      "model.depth=1", "model.heads=2", "model.patch=4", "model.latent_action_dim=3", "model.idm_ch=4",
      "model.idm_hidden=8", "dynamics.steps=5", "dynamics.batch_size=4", "dynamics.warmup=2",
      "mcl.critic_hidden=8,8", "mcl.proj_dim=8", "dynamics.lambda_mcl=0.5"]
SETS = lambda items: sum((["--set", s] for s in items), [])  # noqa: E731
# name -> (command line after `--out DIR`, optimiser steps of a whole run, run folder holding checkpoint.pt)
CASES = {
    "mddiff": (["train", "mddiff", "--dataset", "mpi3d", "--no-eval", "--quiet", *SETS(DIS)], 8,
               "mddiff-mpi3d-cpu-smoke-seed0"),
    "factorvae": (["train", "factorvae", "--dataset", "mpi3d", "--no-eval", "--quiet", *SETS(DIS)], 10,
                  "factorvae-mpi3d-cpu-smoke-seed0"),
    "worldmodel": (["train", "worldmodel", "--variant", "lacg", "--mcl", "--no-eval", "--quiet", *SETS(WM)], 8,
                   "worldmodel-lacg-mcl-cpu-smoke-seed0"),
    "synthetic": (["synthetic", "--dzs", "2", "--alphabets", "3", "--models", "mdvae_mcl", "--seeds", "2",
                   "--lambda-grid", "0.1", "--certify-latents", "0", "--no-tensorboard", "--no-progress",
                   "--n", "400", "--epochs", "3", "--batch-size", "64", "--hidden", "16", "--mcl-critic-hidden", "16",
                   "16", "--checkpoint-every", "1"], 15, "checkpoints"),
}


def _run(argv, out, **env):
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **{k: str(v) for k, v in env.items()}}
    return subprocess.run([sys.executable, "-c", DRIVER, *argv[:1], "--out", str(out), *argv[1:]], env=full,
                          capture_output=True, text=True, timeout=600)


def _weights(out, folder):
    path = os.path.join(out, folder)
    # a write killed halfway leaves its hidden temporary file (".<name>.tmp<pid>-...") beside the checkpoints
    name = "checkpoint.pt" if folder != "checkpoints" else [f for f in os.listdir(path) if not f.startswith(".")][0]
    state = torch.load(os.path.join(path, name), map_location="cpu", weights_only=False)
    return state["model"], state["done"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", list(CASES))
def test_kill_9_anywhere_then_rerun_equals_one_uninterrupted_run(case, tmp_path):
    argv, steps, folder = CASES[case]
    assert _run(argv, tmp_path / "ref").returncode == 0
    ref, done = _weights(tmp_path / "ref", folder)
    assert done
    rng = random.Random(f"{case}-fault")
    for kind, env in (("step", {"KILL_STEP": rng.randint(1, steps - 1)}), ("save", {"KILL_SAVE": rng.randint(1, 3)})):
        out = tmp_path / kind
        killed = _run(argv, out, **env)
        assert killed.returncode == -signal.SIGKILL, (kind, env, killed.stderr[-2000:])
        again = _run(argv, out)
        assert again.returncode == 0, again.stderr[-2000:]
        got, done = _weights(out, folder)
        assert done and _same(ref, got), (kind, env)


def test_damaged_checkpoint_or_run_config_on_resume_is_named_in_one_line(tmp_path):
    argv, _, folder = CASES["factorvae"]
    assert _run(argv, tmp_path, KILL_STEP=5).returncode == -signal.SIGKILL
    ckpt = tmp_path / folder / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])                             # a truncated checkpoint
    r = _run(argv, tmp_path)
    assert r.returncode == 2 and str(ckpt) in r.stderr and "not a readable checkpoint" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    ckpt.write_bytes(data)
    cfg = tmp_path / folder / "config.json"
    cfg.write_text(cfg.read_text()[:40])                                 # a truncated run config
    r = _run(argv, tmp_path)
    assert r.returncode == 2 and str(cfg) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    json.loads(json.dumps(r.stderr))
