"""Data parallel training under torchrun (mclcore.train.loop + mclcore.distributed) on the CPU: gloo, 2 processes.

One spawn of 2 ranks (a FileStore in tmp_path) runs every distributed scenario once (module fixture ``ranks``); the
tests compare what each rank returned with one process. The kill test launches ``torchrun`` itself.

What "the single-process step on the global batch" is here: rank r of 2 draws its shard from its own streams
(``StepContext(rank=r, world_size=2)``), so one process reproduces the step by drawing both shards the same way:
* the float64 toy takes ONE step on the concatenation of the two shards (loss = mean over all 8 rows): the 2-rank
  step must equal it to 1e-12;
* each study's smallest model is compared with one process whose loss is the mean of the two shards' losses (the
  global batch's loss for per-row mean losses; for the batch-coupled terms -- MCL's negatives, the IDM's
  BatchNorm -- what a rank sees is its shard, in both), after one step of every phase. The studies force float32
  (uint8 frames -> ``.float()``, losses cast with ``.float()`` for bf16 autocast). Both sides run the same
  per-shard computations and averaging two gradients is exact ((a + b) / 2 = a / 2 + b / 2); what differs is the
  order in which autograd adds up a parameter's contributions when it is used more than once (the generator runs
  again inside MCL): one process adds both shards' in one backward pass, two ranks add each shard's and then
  average. Measured: a float32 ulp or two (9.3e-10 on MDDiff, 1.9e-9 on the world model, 0 on the beta-VAE), so
  the tolerance is rtol 1e-6 + atol 1e-9; a wrong shard or a wrong average moves a parameter by ~lr (>= 1e-4);
* with ``mcl.gather=true`` (the world model, :class:`GlobalMCL`) the same, except that the MCL term is ONE InfoNCE
  over the concatenation of both shards' (z, u): the global batch's negatives. Same tolerance.
"""
import argparse
import contextlib
import datetime
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import torch.distributed as dist

from mclcore import distributed
from mclcore._io import load_checkpoint
from mclcore.train import loop
from mclcore.train.config import apply_overrides, from_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)

WORLD = 2
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# the smallest model of each study (tests/studies' tiny configs), one step per phase
VAE = ["log_every=1", "ckpt_every=2", "vae.hidden=8", "vae.fc=16", "vae.steps=1", "vae.batch_size=4"]
MDDIFF = ["log_every=1", "ckpt_every=2", "first_stage.ch=8", "first_stage.ch_mult=1,2,2",
          "first_stage.num_res_blocks=1", "first_stage.n_embed=64", "first_stage.u_channels=4", "first_stage.steps=1",
          "first_stage.batch_size=4",
          "diffusion.encoder_hidden=8", "diffusion.encoder_fc=16", "diffusion.unet_channels=8",
          "diffusion.unet_mult=1,2", "diffusion.heads=2", "diffusion.timesteps=100", "stages.batch_size=6",
          "stages.stage1_steps=1", "stages.stage2_steps=1", "stages.warmup1=2", "stages.warmup2=2",
          "mcl.critic_hidden=16", "mcl.proj_dim=8"]
WORLDMODEL = ["log_every=1", "ckpt_every=2", "data.source=random", "data.n_source=6", "data.n_target=3",
              "data.n_eval=3", "data.episode_len=4", "autoencoder.ch=4", "autoencoder.steps=1",
              "autoencoder.batch_size=4", "model.dim=16", "model.depth=1", "model.heads=2", "model.patch=4",
              "model.latent_action_dim=3", "model.idm_ch=4", "model.idm_hidden=8", "model.idm_norm=true",
              "dynamics.steps=1", "dynamics.batch_size=6", "dynamics.warmup=2", "mcl.critic_hidden=8,8",
              "mcl.proj_dim=8", "dynamics.lambda_mcl=0.5"]
# the world model's MCL comparison (test_mcl_gather_...): no BatchNorm on the IDM's mean, whose input bias then has a
# gradient of float32 noise only (a shift BatchNorm removes), which Adam's first step turns into +-lr either way
GATHER = ["model.idm_norm=false"]


# ------------------------------------------------------------------------------------------------ the toy study
@dataclass
class ToyConfig:
    seed: int = 0
    device: str = "cpu"
    log_every: int = 1
    ckpt_every: int = 2
    steps_a: int = 3
    steps_b: int = 2
    batch: int = 8
    lr: float = 0.05
    clip: float = 0.5


class Toy:
    """float64: phase "a" fits layer 0 with a clipped gradient, phase "b" layer 1; a second optimiser steps layer 2
    in ``after_update`` (as FactorVAE's discriminator). ``shards=2`` in one process: draw the shards of both ranks
    and take one step on their concatenation -- the single-process step on the global batch."""

    PHASES = ("a", "b")

    def __init__(self, shards: int = 1):
        self.shards = shards

    def build_model(self, cfg):
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1), torch.nn.Linear(1, 1)).double()

    def phases(self, cfg):
        return [("a", cfg.steps_a), ("b", cfg.steps_b)]

    def batch_sizes(self, cfg):
        return {"batch": cfg.batch}

    def setup(self, model, cfg, device):
        return {"w": torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)}

    def trainable(self, model, cfg, phase):
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(model[0 if phase == "a" else 1].parameters())
        for p in [*params, *model[2].parameters()]:
            p.requires_grad_(True)
        return params

    def optimizers(self, model, cfg, phase, params):
        opt = torch.optim.Adam(params, lr=cfg.lr)
        disc = torch.optim.SGD(model[2].parameters(), lr=0.1, momentum=0.5)
        return [opt, disc], [torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))]

    def grad_clip(self, cfg, phase):
        return cfg.clip if phase == "a" else 0.0

    def train_step(self, model, cfg, phase, step, data, ctx):
        shards = [ctx] if self.shards == 1 else [replace(ctx, rank=r, world_size=self.shards)
                                                 for r in range(self.shards)]
        x = torch.cat([torch.from_numpy(c.rng.normal(size=(c.per_rank(cfg.batch), 3))) for c in shards])
        noise = torch.cat([torch.randn(c.per_rank(cfg.batch), 1, generator=c.generator, dtype=torch.float64)
                           for c in shards])
        data.setdefault("rows", []).append(x[:, 0].tolist())              # what this process drew
        h = model[1](model[0](x))                                           # (rows, 1)
        return {"loss": (h - (x @ data["w"] + 0.1 * noise)).pow(2).mean(), "h": h.detach()}

    def after_update(self, model, cfg, phase, step, data, ctx, out, opts):
        d = (model[2](out["h"]) - 1.0).pow(2).mean()
        opts[1].zero_grad(set_to_none=True)
        d.backward()
        opts[1].step()
        return {"d": d.detach()}


class Unsized:
    """The toy without ``batch_sizes``: a study that does not say which fields are batch sizes."""

    PHASES = Toy.PHASES

    def __getattr__(self, name):
        if name == "batch_sizes":
            raise AttributeError(name)
        return getattr(Toy(), name)


class ShardsInOne:
    """A study's step of a 2-rank run taken by one process: both ranks' shards, each drawn from its rank's streams,
    loss = the mean of the shard losses (the loss of the global batch for per-row mean losses)."""

    def __init__(self, study, shards: int = WORLD):
        self.study, self.shards, self.PHASES = study, shards, study.PHASES

    def __getattr__(self, name):
        return getattr(self.study, name)

    def train_step(self, model, cfg, phase, step, data, ctx):
        losses = [self.study.train_step(model, cfg, phase, step, data, replace(ctx, rank=r, world_size=self.shards))
                  ["loss"] for r in range(self.shards)]
        return {"loss": sum(losses) / self.shards}


class AtPhaseEnd:
    """A study whose ``end_phase`` records this rank's state dict per phase: the replicas as they trained, before the
    loop's broadcast at the phase's end makes them rank 0's."""

    def __init__(self, study):
        self.study, self.PHASES, self.states = study, study.PHASES, {}

    def __getattr__(self, name):
        return getattr(self.study, name)

    def end_phase(self, model, cfg, phase, data):
        self.states[phase] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if hasattr(self.study, "end_phase"):
            self.study.end_phase(model, cfg, phase, data)


class GlobalMCL(ShardsInOne):
    """The world model's step of a 2-rank run with ``mcl.gather=true``, taken by one process (gather=false): each
    shard's host loss as in :class:`ShardsInOne` (its own streams: rows, flow noise, the MCL term's noise level),
    while the model's MCL call only records the shard's (generator, z, u); then ONE MCL loss on the concatenated
    global batch, whose generator runs each shard's rows through that shard's generator (it carries the shard's
    noise level and context). Loss = mean of the host losses + lambda_MCL L_MCL(global batch): what the ranks'
    gradient average is when InfoNCE sees the global batch's negatives."""

    def train_step(self, model, cfg, phase, step, data, ctx):
        if phase != "dynamics":
            return super().train_step(model, cfg, phase, step, data, ctx)
        seen = []
        model.mcl.forward = lambda g, z, u: seen.append((g, z, u)) or z.new_zeros(())
        try:
            host = super().train_step(model, cfg, phase, step, data, ctx)["loss"]
        finally:
            del model.mcl.forward
        gens, zs, us = zip(*seen)
        rows = [z.shape[0] for z in zs]

        def generator(z, u):
            return torch.cat([g(zr, ur) for g, zr, ur in zip(gens, z.split(rows), u.split(rows))])

        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel([SDPBackend.MATH]):                    # as the model calls its MCL term
            mcl = model.mcl(generator, torch.cat(zs), torch.cat(us))
        return {"loss": host + cfg.dynamics.lambda_mcl * mcl}


def _disentangle_cfg(model, extra):
    from mclcore.studies.disentangle.config import build_config

    return apply_overrides(build_config(model, "mpi3d", "cpu-smoke", 0), extra)


def _worldmodel_cfg():
    from mclcore.studies.worldmodel.config import build_config

    return apply_overrides(build_config("lacg", True, "cpu-smoke", 0), WORLDMODEL)


def _study(name, tmp):
    from mclcore.studies.disentangle import run as disentangle
    from mclcore.studies.worldmodel.run import WorldModelStudy

    if name == "worldmodel":
        return WorldModelStudy(os.path.join(tmp, "cache")), _worldmodel_cfg()
    return disentangle, _disentangle_cfg(name, VAE if name in ("betavae", "factorvae") else MDDIFF)


def _cli(argv) -> tuple[int, str]:
    from mclcore.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


def _args(**kw):
    base = dict(seeds=[0, 1], eval_only=False, no_resume=False, no_eval=False, stop_after=None, quiet=True,
                debug=False)
    return argparse.Namespace(**{**base, **kw})


# -------------------------------------------------------------------------------------------- what each rank runs
def _scenarios(rank: int, tmp: str) -> dict:
    """Every distributed scenario on this rank, in one order on every rank; each returns what the tests compare."""
    def toy():
        model, _, data, _ = loop.train(Toy(), ToyConfig(), None, progress=False)
        return [p.detach().clone() for p in model.parameters()], data["rows"]

    def engine():            # what syncs the toy's gradients: DDP's wrapper per phase, average_gradients for opts[1]
        ddp, calls = torch.nn.parallel.DistributedDataParallel, {"wrap": [], "forward": 0, "average": 0}
        init, forward, average = ddp.__init__, ddp.forward, distributed.average_gradients

        def counted_init(self, module, *a, **kw):
            calls["wrap"].append(sorted(n for n, p in module.named_parameters() if p.requires_grad))
            init(self, module, *a, **kw)

        def counted_forward(self, *a, **kw):
            calls["forward"] += 1
            return forward(self, *a, **kw)

        def counted_average(params):
            calls["average"] += 1
            return average(params)

        ddp.__init__, ddp.forward, distributed.average_gradients = counted_init, counted_forward, counted_average
        try:
            loop.train(Toy(), ToyConfig(), None, progress=False)
        finally:
            ddp.__init__, ddp.forward, distributed.average_gradients = init, forward, average
        return calls

    def factorvae():         # a second optimiser stepped in after_update, its parameters inside DDP's wrapper
        study, cfg = _study("factorvae", tmp)
        torch.manual_seed(cfg.seed)
        init = {k: v.detach().clone() for k, v in study.build_model(cfg).state_dict().items()}
        study = AtPhaseEnd(study)
        loop.train(study, apply_overrides(cfg, ["vae.steps=2"]), None, progress=False, label="factorvae")
        return init, study.states["vae"]

    def studies():
        states = {}
        for name in ("betavae", "mddiff", "worldmodel"):
            study, cfg = _study(name, tmp)
            model, *_ = loop.train(study, cfg, None, progress=False, label=name)
            states[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return states

    def gather():            # the world model (LACG + MCL) with mcl.gather=true and =false (see GATHER)
        states = {}
        for on in (True, False):
            study, cfg = _study("worldmodel", tmp)
            cfg = apply_overrides(cfg, [*GATHER, f"mcl.gather={str(on).lower()}"])
            model, *_ = loop.train(study, cfg, None, progress=False, label=f"gather-{on}")
            states[on] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return states

    def resume():
        out = os.path.join(tmp, "toy-resume")
        full = loop.train(Toy(), ToyConfig(), os.path.join(tmp, "toy-full"), progress=False)[0]
        # rank 1 is given a folder of its own: it must not be created (rank 0 alone writes)
        mine = out if rank == 0 else os.path.join(tmp, "toy-resume-rank1")
        _, _, _, stopped = loop.train(Toy(), ToyConfig(), mine, stop_after=3, progress=False)
        counted = []
        again, _, _, done = loop.train(Toy(), ToyConfig(), out, progress=False, on_step=counted.append)
        return {"equal": all(torch.equal(a, b) for a, b in zip(full.parameters(), again.parameters())),
                "stopped": stopped, "done": done, "first": counted[0], "steps": sum(counted),
                "rank1_folder": os.path.exists(os.path.join(tmp, "toy-resume-rank1"))}

    def lifecycle():
        events = []

        def train_fn(cfg, out, **kw):
            if kw.get("stop_after") != 0:
                events.append(("train", cfg.seed))
            model, _, _, finished = loop.train(Toy(), cfg, out, **kw)
            return model, finished

        def evaluate(model, cfg, out):
            events.append(("eval", cfg.seed))
            return {"world": distributed.context().world_size, "rank": rank}

        kw = dict(out_root=os.path.join(tmp, "lifecycle"), config_for_seed=lambda s: ToyConfig(seed=s),
                  run_dir=lambda cfg: f"toy-seed{cfg.seed}", train_fn=train_fn, eval_config=lambda c: c,
                  evaluate=evaluate, summary=lambda out, res: f"{os.path.basename(out)} evaluated")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            rc = loop.run_seeds(_args(), **kw)
            n_events = len(events)
            rc_eval_only = loop.run_seeds(_args(eval_only=True), **kw)
        return {"rc": rc, "events": events[:n_events], "eval_only_events": events[n_events:],
                "rc_eval_only": rc_eval_only, "stdout": printed.getvalue()}

    def gradients():
        a, b, c = (torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)) for _ in range(3))
        a.grad = torch.tensor([1.0, 2.0], dtype=torch.float64) * (rank + 1)     # rank 0: (1, 2), rank 1: (2, 4)
        if rank == 0:
            b.grad = torch.tensor([4.0, 6.0], dtype=torch.float64)              # no gradient on rank 1
        distributed.average_gradients([a, b, c])
        return [a.grad, b.grad, c.grad]

    def peer_failure():
        def setup():
            if rank == 1:
                raise FileNotFoundError("--data-path: no such file 'x.h5'")
            return "loaded"
        try:
            return ("ok", distributed.together(setup, "loading the data", rank0_first=True))
        except Exception as e:  # noqa: BLE001 - the test looks at what each rank raised
            return (type(e).__name__, str(e), getattr(e, "user_error", None))

    def unsized():
        try:
            loop.train(Unsized(), ToyConfig(), None, progress=False, label="unsized")
        except ValueError as e:
            return str(e)
        return "trained"

    out = os.path.join(tmp, "cli")
    cli_base = ["train", "betavae", "--dataset", "mpi3d", "--out", out, "--quiet",
                *sum((["--set", s] for s in VAE), [])]
    scenarios = {
        "toy": toy, "engine": engine, "factorvae": factorvae, "studies": studies, "gather": gather, "resume": resume, "lifecycle": lifecycle,
        "gradients": gradients, "peer_failure": peer_failure, "unsized": unsized,
        "mismatch": lambda: _cli([*cli_base, "--set", f"vae.lr={1e-3 * (rank + 1)}"]),
        "indivisible": lambda: _cli([*cli_base, "--set", "vae.batch_size=5"]),
    }
    results = {}
    for name, fn in scenarios.items():
        try:
            results[name] = fn()
        except Exception:  # noqa: BLE001 - handed to the test that reads this scenario
            results[name] = ("raised", traceback.format_exc())
    return results


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    # a short timeout: a scenario that leaves one rank waiting fails within the test's time, not after 30 minutes
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        results = _scenarios(rank, tmp)
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(tmp, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 ranks returned from every scenario: [rank 0's dict, rank 1's dict]."""
    tmp = str(tmp_path_factory.mktemp("ranks"))
    torch.multiprocessing.start_processes(_worker, args=(tmp,), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)], tmp


def _result(ranks, name):
    per_rank = [r[name] for r in ranks[0]]
    for r, res in enumerate(per_rank):
        if isinstance(res, tuple) and res and res[0] == "raised":
            pytest.fail(f"rank {r}, scenario {name}:\n{res[1]}")
    return per_rank


# ------------------------------------------------------------------------------------------------------- tests
def test_each_rank_has_its_own_streams_and_one_process_keeps_its_own():
    cpu = torch.device("cpu")
    one = loop.StepContext(1, 0, 5, cpu)
    # one process: the streams of (seed, phase, step) every run before torchrun support drew
    assert one.rng.integers(0, 2 ** 62) == np.random.default_rng([1, 0, 5]).integers(0, 2 ** 62)
    legacy = torch.Generator().manual_seed(int(np.random.default_rng([1, 0, 5, 1]).integers(0, 2 ** 62)))
    assert torch.equal(torch.randn(4, generator=one.generator), torch.randn(4, generator=legacy))
    shards = [loop.StepContext(1, 0, 5, cpu, rank=r, world_size=WORLD) for r in range(WORLD)]
    firsts = [c.rng.integers(0, 2 ** 62) for c in [loop.StepContext(1, 0, 5, cpu), *shards]]
    assert len(set(firsts)) == 3
    noise = [torch.randn(4, generator=c.generator) for c in shards]
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], torch.randn(4, generator=legacy))
    assert one.per_rank(8) == 8 and shards[1].per_rank(8) == 4
    with pytest.raises(ValueError, match="global batch 8 is not divisible by the world size 3"):
        loop.StepContext(1, 0, 5, cpu, rank=0, world_size=3).per_rank(8)


def test_two_ranks_take_the_single_process_step_on_the_global_batch(ranks):
    (r0, rows0), (r1, rows1) = _result(ranks, "toy")
    one, _, data, _ = loop.train(Toy(shards=WORLD), ToyConfig(), None, progress=False)
    assert all(a + b == both for a, b, both in zip(rows0, rows1, data["rows"]))  # each rank drew its shard ...
    assert all(a != b for a, b in zip(rows0, rows1))                             # ... and the shards differ
    assert all(torch.equal(a, b) for a, b in zip(r0, r1))                       # the replicas stay equal
    for got, want in zip(r0, one.parameters()):
        assert (got - want).abs().max() <= 1e-12
    alone, *_ = loop.train(Toy(), ToyConfig(), None, progress=False)            # one shard only: not the same step
    assert max((got - want).abs().max() for got, want in zip(r0, alone.parameters())) > 1e-3


def test_the_step_runs_through_distributed_data_parallel_wrapped_per_phase(ranks):
    """DDP's reducer syncs the first optimiser's gradients during backward: one wrapper per phase over that phase's
    trainable parameters (layer 0 in "a", layer 1 in "b"; layer 2, the second optimiser's, in both), every step's
    forward through it; average_gradients is called only by the second optimiser's pre-hook (one per step)."""
    for calls in _result(ranks, "engine"):
        assert calls["wrap"] == [["model.0.bias", "model.0.weight", "model.2.bias", "model.2.weight"],
                                 ["model.1.bias", "model.1.weight", "model.2.bias", "model.2.weight"]], calls
        assert calls["forward"] == ToyConfig.steps_a + ToyConfig.steps_b
        assert calls["average"] == ToyConfig.steps_a + ToyConfig.steps_b


def test_factorvae_discriminator_steps_equal_on_every_rank(ranks):
    """FactorVAE: the discriminator (inside DDP's wrapper, used by the VAE's TC term) is stepped by a second optimiser
    in after_update, on a backward DDP does not sync: its pre-hook averages it, so the replicas are equal at the
    phase's end before the loop's broadcast (:class:`AtPhaseEnd`; without the pre-hook the discriminators differ);
    the discriminator and the VAE both moved."""
    (init, r0), (_, r1) = _result(ranks, "factorvae")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0), \
        [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert any(not torch.equal(r0[k], init[k]) for k in r0 if k.startswith("discriminator."))
    assert any(not torch.equal(r0[k], init[k]) for k in r0 if not k.startswith("discriminator."))


@pytest.mark.parametrize("name", ["betavae", "mddiff", "worldmodel"])
def test_each_study_step_equals_one_process_on_both_shards(ranks, name, monkeypatch):
    r0, r1 = (r[name] for r in _result(ranks, "studies"))
    study, cfg = _study(name, ranks[1])
    asked, per_rank = [], loop.StepContext.per_rank
    monkeypatch.setattr(loop.StepContext, "per_rank", lambda ctx, n: asked.append(n) or per_rank(ctx, n))
    model, *_ = loop.train(ShardsInOne(study), cfg, None, progress=False, label=name)
    assert set(asked) == set(study.batch_sizes(cfg).values())      # every phase draws a share of its global batch
    params = dict(model.named_parameters())
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # replicas equal (buffers too)
    for k, p in params.items():          # float32: a few ulps (see the module doc); a wrong shard or average: ~lr
        torch.testing.assert_close(r0[k], p.detach(), rtol=1e-6, atol=1e-9, msg=lambda m: f"{name} {k}: {m}")
    torch.manual_seed(cfg.seed)                               # the loop's initial weights: the step moved them
    init = dict(study.build_model(cfg).named_parameters())
    assert any(not torch.equal(p.detach(), init[k]) for k, p in params.items())


def test_mcl_gather_under_torchrun_takes_the_single_process_mcl_step_on_the_global_batch(ranks):
    """``mcl.gather=true`` through the loop: the world model (LACG + MCL, the cheapest study with MCL) stepped by 2
    ranks equals one process (gather=false) whose MCL term is ONE InfoNCE over the concatenation of both shards'
    (z, u) -- the global batch's negatives (:class:`GlobalMCL`) -- and the same 2-rank run with gather=false does not.

    Why not simply one process on the concatenated global batch: each rank draws its rows, flow noise and the MCL
    term's noise level from its own streams, and the model's MCL generator closes over its shard's noise level and
    context, so one process drawing 6 rows from one stream would take another step. The concatenation is therefore
    built from the shards' own draws (each shard drawn as its rank draws it, each shard's rows run through that
    shard's generator); the host loss is per shard on both sides, as in the test above. ``GATHER``: no BatchNorm
    on the IDM's mean (see there). Measured: at most 7.5e-9 (fdm.embed.weight; float32: the rectangular infonce
    against the square one, the gathered keys' gradients summed in the all-gather's backward), within the
    tolerance above; gather=false moves the IDM, the MCL heads and the critic by ~lr (1e-3) away from it. The
    ranks also measured the MCL diagnostics at step 0 (``diagnose_every`` 50, gradient norms through the gathered
    keys), the single process did not: they do not change the step."""
    (r0, local), (r1, _) = ((r[True], r[False]) for r in _result(ranks, "gather"))
    study, cfg = _study("worldmodel", ranks[1])
    cfg = apply_overrides(cfg, [*GATHER, "mcl.diagnose_every=0"])
    assert not cfg.mcl.gather and cfg.use_mcl and cfg.dynamics.lambda_mcl > 0
    model, *_ = loop.train(GlobalMCL(study), cfg, None, progress=False, label="global-mcl")
    params = dict(model.named_parameters())
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # replicas equal (buffers too)
    for k, p in params.items():
        torch.testing.assert_close(r0[k], p.detach(), rtol=1e-6, atol=1e-9, msg=lambda m: f"gather {k}: {m}")
    off = {k: (local[k] - p.detach()).abs().max().item() for k, p in params.items()}  # gather=false: local negatives
    assert max(v for k, v in off.items() if k.startswith("mcl.")) > 1e-4, off
    assert all(torch.equal(local[k], r0[k]) for k in params if k.startswith("ae.")), "stage 1 has no MCL term"


def test_resume_under_torchrun_equals_the_uninterrupted_run_and_rank0_alone_writes(ranks):
    for res in _result(ranks, "resume"):
        assert res["equal"] and not res["stopped"] and res["done"]
        assert res["first"] == 3 and res["steps"] == 5
        assert not res["rank1_folder"]
    state = load_checkpoint(os.path.join(ranks[1], "toy-resume", "checkpoint.pt"))
    assert state["world_size"] == WORLD and state["done"] == ["a", "b"]


def test_rank0_evaluates_alone_after_every_seed_trained(ranks):
    r0, r1 = _result(ranks, "lifecycle")
    assert r0["rc"] == r1["rc"] == r0["rc_eval_only"] == r1["rc_eval_only"] == 0
    assert r0["events"] == [("train", 0), ("train", 1), ("eval", 0), ("eval", 1)]
    assert r1["events"] == [("train", 0), ("train", 1)] and r1["eval_only_events"] == []
    assert r0["eval_only_events"] == [("eval", 0), ("eval", 1)]
    assert r0["stdout"].splitlines() == ["toy-seed0 evaluated", "toy-seed1 evaluated"] * 2 and r1["stdout"] == ""
    for seed in (0, 1):
        with open(os.path.join(ranks[1], "lifecycle", f"toy-seed{seed}", "metrics.json")) as f:
            assert json.load(f)["world"] == 1                  # evaluated as a world of 1: nothing waits for rank 1


def test_gradients_are_averaged_and_a_parameter_without_any_stays_none(ranks):
    for a, b, c in _result(ranks, "gradients"):
        assert a.tolist() == [1.5, 3.0] and b.tolist() == [2.0, 3.0] and c is None


def test_a_failure_on_one_rank_is_raised_on_every_rank(ranks):
    r0, r1 = _result(ranks, "peer_failure")
    assert r1[0] == "FileNotFoundError"
    assert r0[0] == "PeerError" and r0[2] is True
    assert "loading the data: rank 1 failed (FileNotFoundError: --data-path: no such file 'x.h5')" in r0[1]


def test_a_study_without_batch_sizes_is_refused_on_every_rank(ranks):
    for err in _result(ranks, "unsized"):
        assert err.startswith("unsized: this study does not say which config fields are batch sizes"), err


def test_a_config_that_differs_between_ranks_is_an_error_on_every_rank(ranks):
    for rc, err in _result(ranks, "mismatch"):
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "config: differs between ranks (rank 0 vs rank(s) 1)" in err


def test_a_world_size_that_does_not_divide_the_batch_is_an_error_on_every_rank(ranks):
    for rc, err in _result(ranks, "indivisible"):
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "vae.batch_size: the global batch 5 is not divisible by the world size 2" in err


# ------------------------------------------------------------------------------------------ torchrun, kill -9
def _pids_below(root: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        found += kids
        todo += kids
    return found


def _rank_pid(root: int, rank: int) -> int | None:
    for pid in _pids_below(root):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"RANK={rank}".encode() in f.read().split(b"\0"):
                    return pid
        except OSError:
            pass
    return None


def test_a_rank_killed_mid_run_resumes_from_the_checkpoint_in_one_process(tmp_path, capsys):
    from mclcore.studies.disentangle import run as disentangle
    from mclcore.studies.disentangle.config import RunConfig

    sets = [*VAE, "vae.steps=2000"]                          # far more steps than run before the kill
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "mclcore", "train", "betavae", "--dataset", "mpi3d", "--out", str(tmp_path / "runs"), "--quiet",
           "--no-eval", *sum((["--set", s] for s in sets), [])]
    run = tmp_path / "runs" / "betavae-mpi3d-cpu-smoke-seed0"
    log = open(tmp_path / "torchrun.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "torchrun.log").read_text()
            time.sleep(0.02)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=60) != 0                     # torchrun ends the run: rank 0 is not left waiting
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    killed = load_checkpoint(str(run / "checkpoint.pt"))
    assert killed["world_size"] == WORLD and killed["phase"] == "vae" and 2 <= killed["step"] < 2000
    cfg = from_dict(RunConfig, json.loads((run / "config.json").read_text()))
    copy = tmp_path / "one-process"
    shutil.copytree(run, copy)
    counted = []
    capsys.readouterr()
    _, finished = disentangle.train(cfg, str(copy), stop_after=2, progress=False, log=False,
                                    on_step=counted.append)
    assert not finished and counted == [killed["step"], 1, 1]
    err = capsys.readouterr().err
    assert "resuming a run written by 2 process(es) with 1" in err and "vae.batch_size 4 = 1 x 4 (was 2 x 2)" in err
    again = load_checkpoint(str(copy / "checkpoint.pt"))
    assert again["step"] == killed["step"] + 2 and "world_size" not in again
