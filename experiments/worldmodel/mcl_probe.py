"""Can a fresh critic read the action from a trained world model's forward model, and through what? (issue #19 item 4)

Training's MCL readout of ACG+MCL (``readout/``: the generator term reads the action of 0.92 of the transitions,
0.90 with z from another transition) has no λ = 0 baseline: a forward model trained *without* MCL follows its actions
too (Table 2's action-following gap), so its mechanism gradient may carry the action as well, and the readout would
then measure the forward model, not what MCL did to it. This probe gives the baseline. It trains a *fresh* MCL module
(critic and both heads, the same initialisation for every run) on the run's frozen one-step generator
``g(z, u) = v_t + x0_hat(z, tau, v_t, A(u)) / s`` (``WorldModel.one_step_generator``, training's MCL generator) for
``STEPS`` steps, then reads u on ``EVAL_BATCHES`` held-out batches (:func:`mclcore.losses.diagnostics.readout`).
Runs with and without ``--mcl`` get the same probe, batches and noise, so their readouts pair.

The transitions are training's: (v_t, v_{t+1}, a_t) of the run's frozen autoencoder, u = the forward model's
condition (ACG: the standardised action; LACG: a sample of the IDM posterior on the frame pair, as in training),
z = x_tau, the flow's noised datum of the transition at tau ~ U(0.05, 1), the context v_t clean (training adds
context noise to the host loss only where ``dynamics.context_noise`` > 0; the MCL generator reads the same context).
Four probes per run, named critic input / generator / pairing:

* ``xzu/own/paired``: training's setting (critic ``c(x, z, u)``, z of the same transition as u);
* ``x/own/paired``: a critic that sees only ``x = g(z, u)``: the u-input route closed;
* ``x/own/independent``: the same with z of another transition (the batch's data rolled by one row before noising,
  so row i's z is transition i-1's datum at row i's tau): z = x_tau shows the frame change the action caused, so
  with paired z even a forward model blind to u passes the action on; here u reaches the contrasted gradient only
  through the forward model's use of it;
* ``x/blind/paired``: the u-blind generator ``g(z, u_bar)`` (u_bar: the mean condition of ``N_BAR`` training
  transitions), z of the same transition: what z and the context alone give away (the floor of ``x/own/paired``).

What MCL should raise, if it makes the forward model use the action more, is ``x/own/independent``, paired against the
run without MCL. The probe's critic is training's (same widths) by default; the MCL-trained generators were shaped
together with a critic of that size, so ``--critic-hidden`` (e.g. ``256,256`` against training's ``64,64`` at the
cpu preset) asks whether another critic finds the same difference. Defaults and why: the optimiser is training's
stage-2 AdamW (``dynamics.lr``, its warm-up and weight decay) on the probe's parameters only; ``STEPS`` = 1000 steps
of the run's ``dynamics.batch_size`` (32 at the cpu preset), a cost choice made before any probe ran (0.25 s per step
on one core of the 2-core VM beside two trainings, ~17 min per run). Training's own readout of ACG+MCL was 0.31 at
step 1000 and 0.75 at 2000, but there the generator moved too; the loss curve is kept (``losses``) to show whether a
probe had converged. Held-out batches come from the
run's ``target`` evaluation episodes, 8 x 32 transitions, chance 1/32 (continuous actions: every row its own
condition). Batches, noise, initialisation and u_bar are the same for every run (``SEED``). Only the probe trains;
the model is frozen.

    python experiments/worldmodel/mcl_probe.py RUN [RUN ...] [--threads N] [--sample-scale S]
    python experiments/worldmodel/mcl_probe.py --table OUT.md [--file F.json] NAME=RUN [NAME=RUN ...]

The first form writes ``RUN/mcl_probe.json`` (atomically) for each run folder (a finished ``mcl train worldmodel``
checkpoint) and prints a one-line summary; started again after a kill, it resumes after the last finished probe. The
second tabulates runs' ``mcl_probe.json`` (:func:`table`: 95% intervals over the held-out batches, differences with
and without MCL paired by seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FILE = "mcl_probe.json"
STEPS, EVAL_BATCHES, N_BAR = 1000, 8, 256
PROBES = (("xzu", "own", "paired"), ("x", "own", "paired"), ("x", "own", "independent"), ("x", "blind", "paired"))
SEED = 321          # batches, noise, the fresh module's initialisation, u_bar: the same for every run


class Transitions:
    """Seeded batches of (v_t, v_{t+1}, a_t) from latents (N, T+1, C, H, W) and actions (N, T, 4)."""

    def __init__(self, latents, actions, seed):
        import torch

        self.lat, self.act = latents, actions
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(int(np.random.default_rng(seed).integers(2 ** 31)))

    def draw(self, b: int):
        n, t = self.act.shape[:2]
        ei, ti = self.rng.integers(0, n, b), self.rng.integers(0, t, b)
        return self.lat[ei, ti], self.lat[ei, ti + 1], self.act[ei, ti]          # (B, C, H, W) x 2, (B, 4)


def probe_batch(model, data: Transitions, b: int, generator: str, pairing: str, u_bar=None):
    """One batch: (g, z, u) with g the run's one-step generator at the batch's noise levels and contexts
    (``"blind"``: u replaced by ``u_bar`` inside g), z = x_tau of the same (``"paired"``) or of another transition
    (``"independent"``)."""
    import torch

    from mclcore.models.worldmodel.model import flow_matching_pair

    v_t, v_next, a = data.draw(b)
    with torch.no_grad():
        u = model.condition(v_t, v_next, a, generator=data.gen)[0]                     # (B, d_u)
    tau = torch.rand(b, generator=data.gen).clamp(0.05, 1.0)                            # (B,)
    eps = torch.randn(v_next.shape, generator=data.gen)
    x0 = model.to_flow(v_next, v_t)                                                     # (B, C, H, W)
    if pairing == "independent":
        x0 = x0.roll(1, 0)                                                              # transition i-1's datum
    z, _ = flow_matching_pair(x0, tau, eps)                                             # (B, C, H, W)
    g = model.one_step_generator(tau, v_t)
    if generator == "blind":
        g_own = g

        def g(z, u):                                    # u-blind: the same condition for every row, u unused
            return g_own(z, u_bar.expand(len(z), -1))
    return g, z, u


def train_probe(model, cfg, train: Transitions, held_out: Transitions, critic_input: str, generator: str,
                pairing: str, steps: int, eval_batches: int, u_bar=None) -> dict:
    """Train one fresh MCL module on the frozen ``model`` and return its readout on ``eval_batches`` held-out batches
    (mean and per batch) and its training losses (see the module doc for the arguments' values)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mclcore import MCL
    from mclcore.losses.diagnostics import probe

    if generator not in ("own", "blind"):
        raise ValueError(f"generator: expected 'own' or 'blind', got {generator!r}")
    if pairing not in ("paired", "independent"):
        raise ValueError(f"pairing: expected 'paired' or 'independent', got {pairing!r}")
    dy, b = cfg.dynamics, cfg.dynamics.batch_size
    n = int(np.prod(model.ae.latent_shape))                                            # C*H*W, as training's
    torch.manual_seed(SEED)
    mcl = MCL.from_config(dataclasses.replace(cfg.mcl, critic_input=critic_input), z_dim=n, x_dim=n,
                          u_dim=model.u_dim)
    opt = torch.optim.AdamW(mcl.parameters(), lr=dy.lr, weight_decay=dy.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, dy.warmup)))
    # the math attention kernel: the fused CPU/flash kernels have no double backward (as in training)
    with sdpa_kernel([SDPBackend.MATH]):
        return probe(mcl, opt, sched, lambda: probe_batch(model, train, b, generator, pairing, u_bar),
                     lambda: probe_batch(model, held_out, b, generator, pairing, u_bar), steps, eval_batches,
                     name=f"{critic_input}/{generator}/{pairing}")


def mcl_probe(run: str, sample_scale: float = 1.0, probes=PROBES, file: str | None = None,
              critic_hidden=None) -> dict:
    """The ``probes`` of the module doc (default all) for the world-model run folder ``run``; ``sample_scale``
    scales the step and held-out batch counts (tests; longer checks); ``critic_hidden`` (hidden widths) replaces the
    probe critic's, training's by default (recorded as ``samples.critic_hidden`` when given). Each probe draws its
    own seeded batches, so a subset gives the cells of the full run. With ``file`` (the result file's name, as
    :func:`main` passes it) a killed measurement resumes after its last finished probe (``RUN/<file>`` with
    ``.partial`` before ``.json``; :func:`mclcore._io.resumable_cells`, keyed by the checkpoint's digest and the
    sample counts); without it nothing is written. ValueError naming the folder when it holds no finished run."""
    import torch

    from diagnose_actions import _cache_dir, load_run
    from mclcore._io import file_digest, load_checkpoint, resumable_cells
    from mclcore.studies.worldmodel.config import PHASES
    from mclcore.studies.worldmodel.data import encode_episodes, load_splits

    ck_path = os.path.join(run, "checkpoint.pt")
    if not os.path.isfile(ck_path):
        raise ValueError(f"run: no checkpoint.pt in {run!r} (expected an `mcl train worldmodel` run folder)")
    if load_checkpoint(ck_path).get("done") != list(PHASES):
        raise ValueError(f"run: {run!r} has not finished training (phases {list(PHASES)} expected done)")
    model, cfg = load_run(run)
    if critic_hidden is not None:                  # a probe critic of another size than training's (module doc)
        mcl = dataclasses.replace(cfg.mcl, critic_hidden=tuple(critic_hidden)).validate()
        cfg = dataclasses.replace(cfg, mcl=mcl)
    for p in model.parameters():
        p.requires_grad_(False)
    steps = max(2, round(STEPS * sample_scale))
    n_eval = max(2, round(EVAL_BATCHES * sample_scale))
    splits = load_splits(cfg, _cache_dir(run))

    data = {split: (encode_episodes(model, splits[split], "cpu"),                 # (N, T+1, C, H, W) frozen AE
                    torch.from_numpy(splits[split].actions).float()) for split in ("train", "target")}

    def transitions(split, seed):
        return Transitions(*data[split], seed)

    with torch.no_grad():
        bar = transitions("train", [SEED, 2])
        v_t, v_next, a = bar.draw(N_BAR)
        u_bar = model.condition(v_t, v_next, a, generator=bar.gen)[0].mean(0, keepdim=True)      # (1, d_u)
    out = {"variant": cfg.variant, "mcl": cfg.use_mcl, "seed": cfg.seed, "preset": cfg.preset,
           "lambda_mcl": cfg.dynamics.lambda_mcl if cfg.use_mcl else 0.0,
           "samples": {"steps": steps, "batch_size": cfg.dynamics.batch_size, "eval_batches": n_eval,
                       "eval_split": "target", "u_bar_transitions": N_BAR, "seed": SEED},
           "probes": {}}
    if critic_hidden is not None:
        out["samples"]["critic_hidden"] = list(critic_hidden)
    known = {"/".join(q): q for q in PROBES}

    def one(name):
        train, held_out = transitions("train", [SEED, 1]), transitions("target", [SEED, 3])
        return train_probe(model, cfg, train, held_out, *known[name], steps, n_eval, u_bar)

    key = {"checkpoint_sha256": file_digest(ck_path), "samples": out["samples"]}
    out["probes"] = resumable_cells(file and os.path.join(run, file), key, ["/".join(q) for q in probes], one)
    return out


def summary(r: dict) -> str:
    return "; ".join(f"{k} acc {p['acc']:.3f} (generator term {p['acc_generator']:.3f}, chance {p['chance']:.3f})"
                     for k, p in r["probes"].items())


def table(named: dict) -> str:
    """Markdown from runs' ``mcl_probe.json`` (``{label: dict}``): per run and probe the generator term's held-out
    accuracy, mean with a 95% percentile-bootstrap interval over the held-out batches; then, per variant, the paired
    difference of the run with MCL from the run without it of the same seed (the same held-out batches: interval over
    the batches' differences) and, where several seeds have both runs, the mean of those differences over the seeds
    (interval over the seeds, n = seeds)."""
    from mclcore.metrics.stats import bootstrap_ci

    def cell(v, signed=False):
        v = np.asarray(v, float)
        lo, hi = bootstrap_ci(v)
        return f"{v.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]" if signed else f"{v.mean():.3f} [{lo:.3f}, {hi:.3f}]"

    first = next(iter(named.values()))
    names = [k for k in ("/".join(p) for p in PROBES) if k in first["probes"]]    # a --probes subset: its own
    if any(set(r["probes"]) != set(names) for r in named.values()):
        raise ValueError("runs: expected the same probes in every file (one --file at a time)")
    widths = first["samples"].get("critic_hidden")
    if any(r["samples"].get("critic_hidden") != widths for r in named.values()):
        raise ValueError("runs: expected the same probe critic in every file (one --file at a time)")
    acc = {}                                                        # (variant, mcl, seed) -> {probe: per batch}
    lines = [f"Fresh-critic probe of the frozen one-step generator (experiments/worldmodel/mcl_probe.py): top-1 "
             f"accuracy of the action read from the generator term on {first['samples']['eval_batches']} held-out "
             f"batches of {first['samples']['batch_size']} target-episode transitions (chance "
             f"{first['probes'][names[0]]['chance']:.3f}), after {first['samples']['steps']} probe steps; mean with a "
             "95% bootstrap interval over the batches. Probes: critic input / generator / pairing (xzu = c(x, z, u) "
             "as in training, x = c(x); own = the run's g(z, u), blind = g(z, u_bar); paired = z of the same "
             "transition, independent = z of another: only the forward model's use of the action can carry it)."
             + (f" Probe critic: hidden widths {widths}, not training's." if widths else ""), "",
             "| run | variant | MCL | seed | " + " | ".join(names) + " |", "|---|---|---|---|" + "---|" * len(names)]
    for label, r in named.items():
        a = {k: r["probes"][k]["per_batch"]["acc_generator"] for k in names}
        acc[(r["variant"], bool(r["mcl"]), r["seed"])] = a
        lines.append(f"| {label} | {r['variant']} | {'yes' if r['mcl'] else 'no'} | {r['seed']} | "
                     + " | ".join(cell(a[k]) for k in names) + " |")
    lines += ["", "With MCL minus without, paired by seed (per seed: interval over the held-out batches; mean over "
              "seeds: interval over the seeds' differences):", "",
              "| variant | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for variant in dict.fromkeys(v for v, _, _ in acc):
        seeds = sorted(s for v, m, s in acc if v == variant and m and (v, False, s) in acc)
        diffs = {s: {k: np.subtract(acc[(variant, True, s)][k], acc[(variant, False, s)][k]) for k in names}
                 for s in seeds}
        for s in seeds:
            lines.append(f"| {variant} | {s} | " + " | ".join(cell(diffs[s][k], True) for k in names) + " |")
        if len(seeds) >= 2:
            lines.append(f"| {variant} | mean over {','.join(map(str, seeds))} | " + " | ".join(
                cell([diffs[s][k].mean() for s in seeds], True) for k in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="world-model run folders (with checkpoint.pt), or NAME=RUN with --table")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--sample-scale", type=float, default=1.0,
                   help=f"scale the step and held-out batch counts (default 1: {STEPS} / {EVAL_BATCHES}; tests use "
                        "less)")
    p.add_argument("--probes", default=",".join("/".join(q) for q in PROBES),
                   help="comma-separated probes to run (default all: %(default)s)")
    p.add_argument("--file", default=FILE, help=f"the result file in each run folder (default {FILE}; another name "
                   "keeps a longer check, e.g. --sample-scale 3, beside the standard probe)")
    p.add_argument("--critic-hidden", metavar="W[,W...]", help="the probe critic's hidden widths (default: "
                   "training's); a critic of another size than the one MCL trained with")
    p.add_argument("--table", metavar="OUT.md", help="tabulate the runs' --file into OUT.md instead")
    a = p.parse_args(argv)
    import torch

    from mclcore._io import remove_partial, write_json_atomic, write_text_atomic
    from mclcore.losses.mcl import MCLConfig
    from mclcore.train.config import coerce

    if os.path.basename(a.file) != a.file or not a.file.endswith(".json"):
        print(f"mcl_probe: --file: expected a file name ending in .json, got {a.file!r}", file=sys.stderr)
        return 2
    if a.table:
        named = {}
        for arg in a.runs:
            name, sep, run = arg.partition("=")
            path = os.path.join(run, a.file)
            if not sep or not os.path.isfile(path):
                print(f"mcl_probe: runs: expected NAME=RUN with RUN/{a.file}, got {arg!r}", file=sys.stderr)
                return 2
            with open(path) as f:
                named[name] = json.load(f)
        try:
            text = table(named)
        except ValueError as err:
            print(f"mcl_probe: {err}", file=sys.stderr)
            return 2
        write_text_atomic(a.table, text)
        return 0
    known = {"/".join(q): q for q in PROBES}
    wanted = a.probes.split(",")
    if not wanted or any(w not in known for w in wanted):
        print(f"mcl_probe: --probes: expected a comma-separated subset of {','.join(known)}, got {a.probes!r}",
              file=sys.stderr)
        return 2
    widths = None
    if a.critic_hidden is not None:         # parsed and checked as --set mcl.critic_hidden=W,W is
        widths = coerce(a.critic_hidden, MCLConfig.critic_hidden)
        try:
            MCLConfig(critic_hidden=widths).validate()
        except ValueError:
            print(f"mcl_probe: --critic-hidden: expected comma-separated positive integers, got {a.critic_hidden!r}",
                  file=sys.stderr)
            return 2
    torch.set_num_threads(max(1, a.threads))
    for run in a.runs:
        try:
            res = mcl_probe(run, a.sample_scale, tuple(known[w] for w in wanted), a.file, widths)
        except ValueError as err:
            print(f"mcl_probe: {err}", file=sys.stderr)
            return 2
        write_json_atomic(res, os.path.join(run, a.file), indent=1, sort_keys=False)
        remove_partial(os.path.join(run, a.file))
        print(run, summary(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
