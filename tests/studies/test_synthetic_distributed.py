"""The synthetic study under torchrun: units split over ranks, rank 0 merges, resume with another world size,
config mismatch across ranks (mclcore.studies.synthetic: run, units).

CPU only: 2 ranks with gloo, each one thread. A tiny study (n = 300, 1 epoch, dz = 2; 4 units: beta-VAE, MD-VAE,
and the MD-VAE+MCL tuning unit with its final unit) takes seconds; the torchrun launch is most of it (the
one-process reference runs meanwhile).
"""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from mclcore.studies.synthetic import run as study_run
from mclcore.studies.synthetic.config import StudyConfig
from mclcore.studies.synthetic.units import build_units, chains, rank_shares

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = {"dzs": [2], "alphabets": [3], "models": ["betavae", "mdvae", "mdvae_mcl"], "seeds": 2,
          "lambda_grid": [0.01, 0.1], "tune_seeds": 1, "tune_epochs": 1, "certify_latents": 4, "tensorboard": False,
          "threads": 1, "train": {"n": 300, "epochs": 1, "batch_size": 64, "hidden": 16,
                                  "mcl": {"critic_hidden": [16, 16]}, "checkpoint_every": 1}}
UNITS = ["gmd-leaky_relu-dz2-U3-betavae", "gmd-leaky_relu-dz2-U3-mdvae", "gmd-leaky_relu-dz2-U3-mdvae_mcl-tune",
         "gmd-leaky_relu-dz2-U3-mdvae_mcl"]
# torchrun's variables; the parent's (if pytest itself runs under torchrun) must not leak into the launches
_RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID")

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _RANK_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **{k: str(v) for k, v in extra.items()}}


def _records(out) -> dict:
    """uid -> unit record without its wall time (everything else is a result)."""
    recs = {}
    for name in sorted(os.listdir(os.path.join(out, "units"))):
        with open(os.path.join(out, "units", name)) as f:
            rec = json.load(f)
        rec.pop("seconds")
        recs[name.removesuffix(".json")] = rec
    return recs


def _csv(path) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("unit_seconds")
    return rows


def _same_results(out, ref) -> None:
    assert _records(out) == _records(ref)                   # every number of every unit, bit for bit
    for name in ("runs.csv", "tuning.csv"):
        assert _csv(os.path.join(out, name)) == _csv(os.path.join(ref, name)), name
    for name in ("config.json", "certificates.json", "certificates.md"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(ref, name), "rb") as b:
            assert a.read() == b.read(), name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The study under torchrun with 2 ranks and in one process (in this one, while torchrun starts: the launcher and
    its ranks spend their first seconds importing torch): the two output folders."""
    root = tmp_path_factory.mktemp("distributed")
    config = root / "tiny.json"
    config.write_text(json.dumps(CONFIG))
    one, two = root / "one", root / "two"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "mclcore", "synthetic", "--config", str(config), "--out", str(two),
                             "--no-progress"], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        study_run.run_study(StudyConfig.from_dict(CONFIG), str(one), progress=False)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stdout + stderr
    return one, two, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_two_ranks_give_the_results_of_one_process(runs):
    one, two, proc = runs
    assert sorted(_records(two)) == sorted(UNITS)
    _same_results(two, one)
    # the split by cost: the MCL chain (tuning unit, then its final unit) on one rank, the two VAEs on the other
    assert "rank 0 of 2 trains 2 on cpu" in proc.stderr and "rank 1 of 2 trains 2 on cpu" in proc.stderr
    assert proc.stdout.count("mcl synthetic: done.") == 1   # rank 0 alone prints (and writes) the tables
    assert not [f for _, _, files in os.walk(two) for f in files if f.startswith(".")]   # no temporary file left


def test_half_done_by_two_ranks_resumes_in_one_process(runs, tmp_path):
    one, two, _ = runs
    part = tmp_path / "part"
    shutil.copytree(two, part)
    # as if killed halfway: the MD-VAE unit and the final MCL unit never finished (their records and the final
    # unit's checkpoint gone); the tuning unit finished training but not its record (its final checkpoint stays)
    for uid in UNITS[1:]:
        os.remove(part / "units" / f"{uid}.json")
    for uid in (UNITS[1], UNITS[3]):
        os.remove(part / "checkpoints" / f"{uid}.pt")
    kept = os.path.getmtime(part / "units" / f"{UNITS[0]}.json")
    study_run.run_study(StudyConfig.from_dict(CONFIG), str(part), progress=False)
    assert os.path.getmtime(part / "units" / f"{UNITS[0]}.json") == kept      # the finished unit is not retrained
    _same_results(part, one)


def _rank_main(rank: int, world: int, store: str, argv: list, err_path: str) -> None:
    """Rank ``rank`` of ``world``: ``mcl synthetic argv`` with torchrun's variables and a process group joined by a
    FileStore (no port to race for); its stderr to ``err_path``; exits with the command's exit code."""
    import argparse
    import traceback

    import torch.distributed as dist

    from mclcore.studies.synthetic import cli

    sys.stderr = open(err_path, "w")
    try:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
        p = argparse.ArgumentParser()
        cli.add_arguments(p)
        rc = cli.run(p.parse_args(argv))
    except BaseException:
        traceback.print_exc()
        rc = 99
    sys.stderr.flush()
    os._exit(rc)


def _fork_ranks(tmp_path, per_rank_argv: list) -> list[tuple[int, list[str]]]:
    """Every rank's (exit code, stderr lines) of ``mcl synthetic`` run as ranks 0, 1, ... each with its own
    arguments (so that they can differ, which torchrun never does). Forked from this process, where torch is
    imported, a rank starts in milliseconds instead of the seconds of a fresh interpreter; the failures tested
    with it happen before any training, so no OpenMP pool is used in a forked child."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    world = len(per_rank_argv)
    errs = [str(tmp_path / f"stderr{r}") for r in range(world)]
    procs = [ctx.Process(target=_rank_main, args=(r, world, str(tmp_path / "store"), argv, errs[r]))
             for r, argv in enumerate(per_rank_argv)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=60)
        assert all(p.exitcode is not None for p in procs), "a rank did not finish in 60 s"
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join()
    result = []
    for p, path in zip(procs, errs):
        with open(path) as f:
            result.append((p.exitcode, f.read().strip().splitlines()))
    return result


def test_config_mismatch_across_ranks_fails_on_every_rank(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "out"
    argv = ["--config", str(config), "--out", str(out), "--no-progress"]
    for rc, lines in _fork_ranks(tmp_path, [argv, [*argv, "--seeds", "3"]]):
        assert rc == 2 and lines == ["mcl synthetic: study config: differs between ranks (rank 0 vs rank(s) 1); "
                                     "every rank must be started with the same command line and config"], lines
    assert not out.exists()                                 # refused before anything is written


def test_a_refusal_of_rank_0_fails_every_rank(tmp_path):
    # rank 0 alone checks --out (config.json): the others must stop too, not train into a folder it refused
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "out"
    study_run.run_study(StudyConfig.from_dict({**CONFIG, "models": ["betavae"], "certify_latents": 0}), str(out),
                        progress=False)
    argv = ["--config", str(config), "--out", str(out), "--no-progress"]
    (rc0, err0), (rc1, err1) = _fork_ranks(tmp_path, [argv, argv])
    assert rc0 == 2 and len(err0) == 1 and "holds a study with a different config" in err0[0], err0
    assert rc1 == 2 and len(err1) == 1, err1
    assert err1[0] == "mcl synthetic: rank 0 failed: " + "OutDirMismatch: " + err0[0].removeprefix("mcl synthetic: ")
    assert sorted(os.listdir(out / "units")) == ["gmd-leaky_relu-dz2-U3-betavae.json"]   # nothing trained


def test_rank_shares_split_every_pending_unit_once_chains_together_by_cost():
    study = StudyConfig.from_dict({**CONFIG, "dzs": [2, 3], "alphabets": [3, 4]})
    units = build_units(study)
    todo = [i for i in range(len(units)) if i % 5 != 2]     # some finished already
    for world in (1, 2, 3, 8):
        shares = rank_shares(study, units, todo, world)
        assert len(shares) == world and sorted(i for s in shares for i in s) == todo
        assert all(s == sorted(s) for s in shares)          # each rank in run order: a tuning unit before its final
        for chain in chains(units, todo):
            assert sum(chain[0] in s for s in shares) == 1 and any(set(chain) <= set(s) for s in shares)
        loads = [sum(units[i].cost(study) for i in s) for s in shares]
        biggest = max(sum(units[i].cost(study) for i in c) for c in chains(units, todo))
        # greedy by cost: no rank exceeds the ideal share by more than its costliest chain
        assert max(loads) <= sum(loads) / world + biggest
        assert rank_shares(study, units, todo, world) == shares
    assert rank_shares(study, units, todo, 1) == [todo]     # one process: everything, in run order
    pairs = [(i, i + 1) for i, u in enumerate(units) if u.tune and i in todo and i + 1 in todo]
    assert pairs and all([i, j] in chains(units, todo) for i, j in pairs)   # a tuning unit with its final unit


def test_gather_is_refused_units_train_in_one_process():
    """``train.mcl.gather=true`` has no other ranks' negatives to gather in this study (ranks share units, not
    batches): refused by name at validation, before anything runs."""
    from mclcore.train.config import apply_overrides

    with pytest.raises(ValueError, match="train.mcl.gather"):
        apply_overrides(StudyConfig(), ["train.mcl.gather=true"]).validate()
    StudyConfig().validate()                                  # the default (false) is fine
