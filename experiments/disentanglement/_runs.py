"""What the image-study report scripts share: finished runs by seed, the MCL diagnostics table of MDDiff runs,
copying a run's small files (used by mcl_ablation_report.py and cpu_long_report.py), and loading a diffusion run's
trained model (first_stage_probe.py, code_use.py, mcl_probe.py), and the tables of code_use.py's and mcl_probe.py's
files."""
from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import sys

# The last MCL measurement of training that an MDDiff run's metrics.json carries (mcl_diagnostics.json has them all).
DIAG = ("mcl_weight", "mcl_acc_generator", "mcl_acc_direct", "mcl_chance", "mcl_shortcut_share", "mcl_grad_ratio")
# Logged since 2026-12-07 (the generator term's readout with z from another row): a column where a run has it.
DIAG_NEW = ("mcl_acc_generator_independent",)


CODE_USE_FILE = "code_use.json"     # code_use.py's, in the run folders where it was run
MCL_PROBE_FILE = "mcl_probe.json"   # mcl_probe.py's, likewise
RUN_INFO = "run_info.json"      # {"training_calls": n}, written beside a copied run's metrics.json


def training_calls(run: str) -> int | None:
    """How many calls trained the run folder ``run``: its ``run_info.json`` where a report copied it, else the number
    of TensorBoard event files in ``tb/`` (one per training call; an --eval-only call writes none); None if
    neither is there."""
    info = os.path.join(run, RUN_INFO)
    if os.path.exists(info):
        with open(info) as f:
            return json.load(f)["training_calls"]
    events = glob.glob(os.path.join(run, "tb", "events.out.tfevents.*"))
    return len(events) or None


def runs_by_seed(pattern: str) -> dict:
    """{seed: (run folder, metrics)} of the finished runs (a ``metrics.json``) among the folders ``pattern`` globs;
    ``metrics["training_calls"]`` is set from :func:`training_calls` (not written back)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(pattern, "metrics.json"))):
        with open(path) as f:
            m = json.load(f)
        m["training_calls"] = training_calls(os.path.dirname(path))
        out[m["seed"]] = (os.path.dirname(path), m)
    return out


def diagnostics_table(runs: dict, seeds) -> list[str]:
    """Markdown lines: one row per seed of ``runs`` ({seed: (folder, metrics)}) with its DIAG values (and DIAG_NEW's
    where one of the runs has them)."""
    keys = DIAG + tuple(k for k in DIAG_NEW if any(k in runs[s][1] for s in seeds))
    lines = ["| seed | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for s in seeds:
        m = runs[s][1]
        lines.append(f"| {s} | " + " | ".join(f"{m[k]:.3g}" if isinstance(m.get(k), (int, float)) else "–"
                                             for k in keys) + " |")
    return lines


def copy_files(run: str, dst: str, names, rename=lambda name: name) -> None:
    """Copy each of ``names`` that exists in ``run`` into ``dst`` (created), as ``rename(name)``."""
    os.makedirs(dst, exist_ok=True)
    for name in names:
        if os.path.exists(os.path.join(run, name)):
            shutil.copyfile(os.path.join(run, name), os.path.join(dst, rename(name)))


def copy_run(run: str, dst: str, names) -> None:
    """:func:`copy_files` of ``names`` plus ``run_info.json`` (the training calls, which the copy has no tb/ for)."""
    from mclcore._io import write_json_atomic

    copy_files(run, dst, names)
    write_json_atomic({"training_calls": training_calls(run)}, os.path.join(dst, RUN_INFO), indent=1)


def train_minutes(m: dict) -> float | None:
    """Training minutes of a run's metrics.json: summed over every call (resumes included) where the checkpoint
    recorded them (``seconds.train_all_calls``); else the training call's (an --eval-only call keeps that under
    ``seconds.training_run``) when one call trained the run (``training_calls``, see :func:`runs_by_seed`); None
    otherwise (a run resumed before checkpoints recorded their seconds: its last call alone would understate it)."""
    sec = m.get("seconds", {})
    if "train_all_calls" in sec:
        return sec["train_all_calls"] / 60
    if m.get("training_calls") != 1:
        return None
    sec = sec.get("training_run", sec)
    return sec["train_call"] / 60 if "train_call" in sec else None


def report_args(description: str, root_help: str, argv=None):
    """The arguments of a grid report: ROOT, --results, --from-results; exits with code 2 and one line when ROOT is
    not a folder."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=description)
    p.add_argument("root", help=root_help)
    p.add_argument("--results", default=None, help="copy the finished runs here and write table.md")
    p.add_argument("--from-results", action="store_true", help="ROOT is a --results folder: rebuild its table")
    a = p.parse_args(argv)
    if not os.path.isdir(a.root):
        print(f"root: no such folder {a.root!r}", file=sys.stderr)
        raise SystemExit(2)
    return a


def read_json(run: str, name: str) -> dict | None:
    """The JSON file ``name`` of the run folder ``run`` (e.g. a measurement script's), None if it is not there.

    A measurement file records the phases its checkpoint had finished (``phases``); where the run still has its
    checkpoint.pt and that has finished other phases since, the file measured a model the run no longer has (the grid
    scripts skip runs whose file exists, so a measurement taken mid-training would be silently reused): ValueError
    naming the file, to delete and measure again."""
    path = os.path.join(run, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        out = json.load(f)
    ck = os.path.join(run, "checkpoint.pt")
    if isinstance(out, dict) and "phases" in out and os.path.exists(ck):
        done = _phases_done(ck, os.path.getmtime(ck))
        if tuple(out["phases"]) != done:
            raise ValueError(f"{path}: measured after phases {out['phases']}, but the run has since finished "
                             f"{list(done)}; delete it and run the measurement again")
    return out


@functools.lru_cache(maxsize=64)
def _phases_done(checkpoint: str, mtime: float) -> tuple:     # mtime: a rewritten checkpoint is read again
    from mclcore._io import load_checkpoint

    return tuple(load_checkpoint(checkpoint)["done"])


def load_diffusion_run(run: str, script: str, need: str = "first_stage"):
    """(cfg, model in eval mode, dataset, phases done) of the EncDiff / MDDiff run folder ``run`` (its
    checkpoint.pt); ValueError naming ``run`` if it has no checkpoint, is another model, or phase ``need`` has not
    finished."""
    from mclcore._io import load_checkpoint
    from mclcore.studies.disentangle import run as study
    from mclcore.studies.disentangle.config import RunConfig
    from mclcore.train.config import from_dict

    path = os.path.join(run, "checkpoint.pt")
    if not os.path.exists(path):
        raise ValueError(f"run: no checkpoint.pt in {run!r}")
    ck = load_checkpoint(path)
    cfg = from_dict(RunConfig, ck["config"])
    if cfg.model not in ("encdiff", "mddiff"):
        raise ValueError(f"run: {run!r} is a {cfg.model} run; {script} reads encdiff and mddiff runs")
    if need not in ck["done"]:
        raise ValueError(f"run: phase {need} of {run!r} has not finished (phases done: {ck['done']})")
    model = study.build_model(cfg)
    model.load_state_dict(ck["model"])
    return cfg, model.eval(), study.load_dataset(cfg), ck["done"]


def per_run_main(argv, description: str, script: str, measure, file: str, summary, sample_help: str) -> int:
    """The command line of a per-run measurement (first_stage_probe.py, code_use.py): ``RUN [RUN ...] [--threads N]
    [--sample-scale S]``; writes ``measure(run, S)`` to ``RUN/file`` (atomically) and prints ``summary(result)``;
    a bad run folder is one line on stderr naming it, exit 2."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("runs", nargs="+", help="EncDiff / MDDiff run folders (with checkpoint.pt)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--sample-scale", type=float, default=1.0, help=sample_help)
    a = p.parse_args(argv)
    import torch

    from mclcore._io import remove_partial, write_json_atomic

    torch.set_num_threads(max(1, a.threads))
    for run in a.runs:
        try:
            res = measure(run, a.sample_scale)
        except ValueError as err:
            print(f"{script.removesuffix('.py')}: {err}", file=sys.stderr)
            return 2
        write_json_atomic(res, os.path.join(run, file), indent=1, sort_keys=False)
        remove_partial(os.path.join(run, file))          # a resumable measurement's finished cells, now in file
        print(run, summary(res), flush=True)
    return 0


def code_use_table(uses: dict, factors, group: str = "arm") -> list[str]:
    """Markdown lines: per group (an arm or a screening cell: ``{label: [code_use.json dicts]}``, empty lists skipped)
    the mean over its runs of code_use.py's overall relative gap, per-factor resolution and footprint (relative to
    random pairs), for ``factors`` in that order, and MDDiff's u-decoder gap where measured; ``group`` names the
    first column."""
    lines = ["How much the denoiser uses the code (code_use.py; 512 images, 256 one-factor pairs per factor, the same "
             "draws for every run). Resolution: the conditioning gap of a one-factor pair per unit of latent change, "
             "relative to random pairs (about 1: the code separates images differing in the factor as much as their "
             "latents differ; near 0: it does not). Footprint: the pair's latent distance relative to a random "
             "pair's (how much of the denoising loss the factor can put at stake). Mean over the seeds with a "
             "code_use.json (n).", "",
             f"| {group} | n | rel. gap (all t) | " + " | ".join(factors) + " |",
             "|---|---|---|" + "---|" * len(factors)]
    for label, us in uses.items():
        if not us:
            continue
        rel = sum(u["denoiser"]["all"]["rel_gap"] for u in us) / len(us)
        for key in ("resolution", "footprint"):
            cells = []
            for f in factors:
                vals = [u["factors"][f][key] / (u["random"][key] if key == "footprint" else 1)
                        for u in us if f in u["factors"] and u["factors"][f][key] is not None]
                cells.append(f"{sum(vals) / len(vals):.3f}" if vals else "–")
            lines.append(f"| {label}: {key} | {len(us)} | " + (f"{rel:.3f}" if key == "resolution" else "")
                         + " | " + " | ".join(cells) + " |")
    dec = {label: [u["decoder"]["rel_gap"] for u in us if "decoder" in u] for label, us in uses.items()}
    if any(dec.values()):
        lines += ["", "MDDiff's u-decoder g(z_0, u) given another image's u instead of its own: relative gap of its "
                  "pixel MSE, mean over the seeds (n): " + "; ".join(
                      f"{label} {sum(v) / len(v):.3f} (n={len(v)})" for label, v in dec.items() if v) + "."]
    return lines


def interval_cell(vals, diff: bool = False) -> str:
    """A table cell of the values ``vals`` (over seeds): their mean [95% percentile-bootstrap interval], or the value
    alone when there is one (a difference: ``+v (n=1)``), "–" when there are none; ``diff`` signs the numbers.
    Values of 100 or more are written without decimals (FID), others with three. (At n = 2 the interval is the two
    values' range.)"""
    import numpy as np

    from mclcore.metrics.stats import bootstrap_ci

    if not vals:
        return "–"
    f = (lambda v: f"{v:+.3f}") if diff else (lambda v: f"{v:.0f}" if abs(v) >= 100 else f"{v:.3f}")  # noqa: E731
    if len(vals) == 1:
        return f"{f(vals[0])} (n=1)" if diff else f(vals[0])
    lo, hi = bootstrap_ci(np.asarray(vals, dtype=np.float64))
    return f"{f(float(np.mean(vals)))} [{f(lo)}, {f(hi)}]"


def mcl_probe_table(probes: dict, pairs) -> list[str]:
    """Markdown lines: per arm (``{arm: {seed: mcl_probe.json dict}}``, empty arms skipped) the mean [95% bootstrap
    interval] over seeds of each mcl_probe.py probe's held-out top-1 accuracy, and for each ``(a, b)`` of ``pairs``
    the per-seed paired difference a - b on the seeds both have."""
    names = list(dict.fromkeys(k for runs in probes.values() for r in runs.values() for k in r["probes"]))
    if not names:
        return []
    first = next(r for runs in probes.values() for r in runs.values())
    sm = first["samples"]

    lines = ["Can a fresh critic read u from the trained u-decoder's mechanism, and through what? (mcl_probe.py: a "
             f"fresh MCL module trained {sm['steps']} steps of batch {sm['batch_size']} on the frozen model, top-1 "
             f"accuracy of u on {sm['eval_batches']} held-out batches; probes named critic input / generator / "
             "pairing: xzu = c(x, z, u) as in training, x = c(x); own = the run's g(z, u), blind = g(z, u_bar); "
             "paired = z and u of the same image as in training, independent = z of other images. x/own/independent "
             "is what only the generator's use of u can carry.) Mean [95% bootstrap interval] over seeds (n); "
             "chance " + ", ".join(sorted({f"{r['probes'][k]['chance']:.3f}" for runs in probes.values()
                                            for r in runs.values() for k in r["probes"]})) + ".", "",
             "| arm | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for arm, runs in probes.items():
        if runs:
            lines.append(f"| {arm} | {len(runs)} | " + " | ".join(interval_cell(
                [runs[s]["probes"][k]["acc"] for s in sorted(runs) if k in runs[s]["probes"]]) for k in names) + " |")
    rows = []
    for a, b in pairs:
        seeds = sorted(set(probes.get(a, {})) & set(probes.get(b, {})))
        if seeds:
            rows.append(f"| {a} − {b} | {','.join(map(str, seeds))} | " + " | ".join(interval_cell(
                [probes[a][s]["probes"][k]["acc"] - probes[b][s]["probes"][k]["acc"] for s in seeds
                 if k in probes[a][s]["probes"] and k in probes[b][s]["probes"]], diff=True) for k in names) + " |")
    if rows:
        lines += ["", "| difference | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names), *rows]
    return lines
