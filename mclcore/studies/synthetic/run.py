"""The synthetic study as a grid of units (paper §5.1, App. F.1): λ selection, resume, certificates.

The study is a grid of *cells* (process x dz x |U|) times models. A *unit* is one model on one cell: all its
seeds trained at once (stacked, :func:`mclcore.studies.synthetic.train.train`). For ``mdvae_mcl`` with more than
one value in ``lambda_grid`` a tuning unit runs first: ``tune_seeds`` seeds x every lambda on a validation split
held out of the training split (``tune_val_frac`` of N; never the test split); the lambda with the best median
validation MCC is then used for all seeds (paper §5: "lambda_MCL in [0.01, 0.1] tuned ... on a held-out
validation split").

Everything goes under ``out``, each file written atomically (tmp file + ``os.replace``):

* ``config.json`` (the study config; a rerun with a different config refuses to mix results),
* ``units/<unit>.json`` (the rows of a finished unit), ``checkpoints/<unit>.pt`` (resumable mid-unit, with the
  TrainConfig), ``certificates.json``,
* the reports of :mod:`mclcore.studies.synthetic.report` and ``tensorboard/`` (per-epoch losses).

Killed runs restart from the last completed unit (and from the last checkpoint inside an unfinished unit).

Under torchrun the ranks split the unfinished units between them, each unit trained by one rank alone, and rank 0
writes the reports once every rank is done (:func:`run_study`); a study resumes with any number of ranks.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time

from mclcore import distributed
from mclcore._io import write_text_atomic
from mclcore.losses.diagnostics import READ_KEYS
from mclcore.train.config import config_diff
from mclcore.studies.synthetic.config import StudyConfig
from mclcore.studies.synthetic import ranks
from mclcore.studies.synthetic.parallel import run_parallel
from mclcore.studies.synthetic.units import (_MCL_STEP_COST, Unit, _cell_id, build_units, cells, rank_shares,
                                             select_lambda)
from mclcore.studies.synthetic.report import write_report

__all__ = ["Unit", "build_units", "run_study", "choose_devices", "OutDirMismatch", "select_lambda"]

# StudyConfig fields a resumed study may change: they say how the units are spread over processes and threads.
_EXECUTION_ONLY = ("workers", "threads")


def _unit_path(out: str, unit: Unit) -> str:
    return os.path.join(out, "units", f"{unit.uid}.json")


def _read_json(path: str, what: str):
    """A JSON file this study wrote, or ValueError naming it (a truncated or hand-edited file is not a result)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable {what} ({err}); delete it to recompute it") from None


def _load_unit(out: str, unit: Unit) -> dict | None:
    path = _unit_path(out, unit)
    if not os.path.exists(path):
        return None
    rec = _read_json(path, "unit record")
    if not isinstance(rec, dict) or not isinstance(rec.get("rows"), list):
        raise ValueError(f"{path}: not a unit record (no 'rows'); delete it to recompute the unit")
    return rec


def _run_unit(study: StudyConfig, unit: Unit, out: str, device: str, on_step, writer_factory) -> dict:
    """Train one unit (resuming its checkpoint if any) and write ``units/<uid>.json``."""
    from mclcore.studies.synthetic.train import train

    process, dz, n_alphabet, axes = unit.cell
    lambdas, selection = unit.lambdas, None
    if unit.model == "mdvae_mcl" and lambdas is None:  # final MCL unit: lambda from its tuning unit
        tuned = _load_unit(out, dataclasses.replace(unit, uid=unit.uid + "-tune"))
        if tuned is None:
            raise RuntimeError(f"{unit.uid}: its tuning unit has not run")
        lam, medians = select_lambda(tuned["rows"])
        selection = {"lambda": lam, "val_mcc_median": {str(k): v for k, v in medians.items()}}
        lambdas = [lam] * len(unit.seeds)
    per_unit = dict(process=process, dz=dz, n_alphabet=n_alphabet, model=unit.model, **dict(axes))
    if unit.tune:
        per_unit.update(val_frac=study.tune_val_frac, eval_split="val")
        if study.tune_epochs:
            per_unit["epochs"] = study.tune_epochs
    if lambdas is not None:
        per_unit["lambda_mcl"] = lambdas[0]
    cfg = study.train_config(**per_unit).validate()
    writer = writer_factory(unit.uid)

    def on_epoch(epoch, means):
        if writer is not None:
            for k, v in means.items():
                if unit.model == "mdvae_mcl" or k != "mcl":
                    writer.add_scalar(f"median/{k}", float(v.median()), epoch)

    t0 = time.time()
    diagnostics: list = []
    # Under torchrun a unit is this rank's alone (the ranks split the units, not a unit's batches): the training
    # loop must act as one process, not average gradients with ranks that train other units. So must a spawned
    # worker's, which inherits torchrun's variables but is no rank.
    with distributed.alone():
        rows = train(cfg, unit.seeds, lambdas if unit.model == "mdvae_mcl" else None,
                     checkpoint=os.path.join(out, "checkpoints", f"{unit.uid}.pt"), on_step=on_step,
                     on_epoch=on_epoch, device=device, diagnostics=diagnostics)
    seconds = time.time() - t0
    if writer is not None:
        writer.add_scalar("median/mcc", statistics.median(r["mcc"] for r in rows), cfg.epochs)
        for rec in diagnostics:                                                 # MCL diagnostics, median of members
            for k in (*(k for k in READ_KEYS if k != "chance"), "grad_ratio", "weight"):
                vals = [v for v in rec.get(k, []) if v == v]                    # NaN-free (acc_direct without z)
                if vals:
                    writer.add_scalar(f"mcl/{k}", statistics.median(vals), rec["step"])
        writer.close()
    record = {"uid": unit.uid, "tune": unit.tune, "config": cfg.to_dict(), "selection": selection,
              "seconds": seconds, "rows": rows, "mcl_diagnostics": diagnostics}
    write_text_atomic(_unit_path(out, unit), json.dumps(record, indent=1))
    return record


# --------------------------------------------------------------------------------------------------------------
# Certificates of the true generators
# --------------------------------------------------------------------------------------------------------------
def _certificates(study: StudyConfig, out: str) -> dict:
    """Per cell: Assumption 2 (GMD) of the true generator and Assumption 1 (LRD) of the true prior, at
    ``certify_latents`` latents z ~ N(0, I), for the dataset of the first seed. Cached in certificates.json."""
    path = os.path.join(out, "certificates.json")
    cache = {}
    if os.path.exists(path):
        cache = _read_json(path, "certificate cache")
    if not study.certify_latents:
        return cache
    import warnings

    import torch

    from mclcore.data.synthetic import make_dataset
    from mclcore.mechanism import certify, certify_lrd

    changed = False
    for cell in cells(study):
        process, dz, n_alphabet, axes = cell
        cid = _cell_id(study, cell)
        if cid in cache:
            continue
        cfg = study.train_config(process=process, dz=dz, n_alphabet=n_alphabet, **dict(axes))
        # The generator and the prior do not depend on n; a tiny sample keeps this cheap.
        data = make_dataset(process, dz, n_alphabet, n=64, du=cfg.du, noise_var=cfg.noise_var,
                            mixing=cfg.mixing, seed=study.first_seed, mean_bound=cfg.lrd_mean_bound,
                            std_bounds=(cfg.lrd_std_low, cfg.lrd_std_high),
                            modulation_range=cfg.modulation_range, shift_scale=cfg.shift_scale)
        z = torch.randn(study.certify_latents, dz, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(study.first_seed))
        alphabet = data.alphabet.double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degeneracy is reported in the certificate itself
            gmd = certify(data.generator, z, alphabet)
            lrd = certify_lrd(data.log_prior, z, alphabet)
        cache[cid] = {"process": process, "dz": dz, "n_alphabet": n_alphabet, "seed": study.first_seed,
                      "mixing": cfg.mixing, "shift_scale": cfg.shift_scale,
                      "modulation_range": cfg.modulation_range,
                      "gmd_pass": gmd.pass_fraction, "gmd_degenerate": gmd.degenerate,
                      "gmd_rank_median": float(gmd.rank.double().median()),
                      "gmd_summary": gmd.summary(), "lrd_pass": lrd.pass_fraction,
                      "lrd_rank_median": float(lrd.rank.double().median()), "lrd_summary": lrd.summary()}
        changed = True
    if changed:
        write_text_atomic(path, json.dumps(cache, indent=1))
    return cache


# --------------------------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------------------------
def _weight(u: Unit) -> float:
    """Progress-bar weight of one step of unit ``u`` (members x the MCL step's relative cost)."""
    members = len(u.seeds) if u.lambdas is None else len(u.lambdas)
    return (_MCL_STEP_COST if u.model == "mdvae_mcl" else 1.0) * members


def _writer_factory(study: StudyConfig, out: str):
    """uid -> a TensorBoard SummaryWriter under ``out/tensorboard/<uid>`` (None when off or unavailable)."""
    if not study.tensorboard:
        return lambda uid: None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # tensorboard is a declared dependency; say so rather than fail the study
        print(f"mcl synthetic: TensorBoard logging off ({err})", file=sys.stderr)
        return lambda uid: None
    return lambda uid: SummaryWriter(os.path.join(out, "tensorboard", uid))


def _unit_job(study: StudyConfig, unit: Unit, out: str, device: str) -> dict:
    """One unit in a worker process (``workers > 1``): the same :func:`_run_unit`, with its own threads."""
    import torch

    if study.threads:
        torch.set_num_threads(study.threads)
    return _run_unit(study, unit, out, device, lambda n: None, _writer_factory(study, out))


class OutDirMismatch(ValueError):
    """``--out`` already holds results of a study with a different config."""


def choose_devices(study: StudyConfig) -> tuple[str, str]:
    """(device of the VAE units, device of the MD-VAE+MCL units). With ``device="auto"`` on a GPU machine whose
    MCL ops cannot run on CUDA (no usable backend), the MCL units fall back to the CPU and this says so on stderr;
    an explicit device that cannot run them is a ValueError before any work (``mclcore.ops.available``)."""
    from mclcore.ops import available
    from mclcore.studies.synthetic.train import MCL_OPS

    from mclcore.train.loop import resolve_device

    device = str(resolve_device(study.device))     # --device cuda without CUDA: ValueError before anything is written
    if "mdvae_mcl" not in study.models:
        return device, device
    ok, why = available(MCL_OPS, device)
    if ok:
        return device, device
    if study.device == "auto":
        print(f"mcl synthetic: {why}; the MD-VAE+MCL units run on the CPU", file=sys.stderr)
        return device, "cpu"
    raise ValueError(f"device: {why}; the MD-VAE+MCL units need it (use --device cpu or auto)")


def _check_out(study: StudyConfig, out: str) -> None:
    """Create ``out`` or check that it holds this study (config.json; execution-only fields may differ)."""
    os.makedirs(os.path.join(out, "units"), exist_ok=True)
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    cfg_path = os.path.join(out, "config.json")
    cfg_text = json.dumps(study.to_dict(), indent=1, sort_keys=True)
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError as err:
                raise OutDirMismatch(f"--out: {cfg_path} is not a readable study config ({err}); use a fresh --out "
                                     f"directory, or delete it and the results beside it") from None
        if isinstance(old, dict):       # how the work is spread over processes does not change a result
            old = {**old, **{k: v for k, v in json.loads(cfg_text).items() if k in _EXECUTION_ONLY}}
            try:                        # fields added since it was written take their defaults (= what it ran)
                old = StudyConfig.from_dict(old).to_dict()
            except (ValueError, TypeError):
                pass                    # not a config of this version: the comparison below names the difference
        if old != json.loads(cfg_text):
            diff = config_diff(old, study.to_dict()) if isinstance(old, dict) else ["(not a JSON object)"]
            raise OutDirMismatch(f"--out: {out} holds a study with a different config ({'; '.join(diff)}); "
                                 f"use a fresh --out directory, or delete {cfg_path} and the results beside it")
    else:
        write_text_atomic(cfg_path, cfg_text)


def run_study(study: StudyConfig, out: str, *, progress: bool = True, after_unit=None) -> dict:
    """Run (or resume) ``study`` into ``out``; returns the report paths. ``after_unit(record)`` is called after
    each unit finishes (tests use it to interrupt a run).

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this with the same study and ``out`` (checked: an error
    on every rank otherwise). The units not finished in ``out`` are split over the ranks
    (:func:`~mclcore.studies.synthetic.units.rank_shares`); each rank trains its share on its own device
    (``cuda:LOCAL_RANK``, or the CPU with ``study.threads`` threads), with ``study.workers`` worker processes of its
    own, and writes only its units' files (``units/``, ``checkpoints/``, ``tensorboard/``). Rank 0 alone writes
    config.json, certificates.json and the reports; it waits for every rank's share, then writes the reports from
    all unit records as one process would. ``out`` must be one directory every rank sees (on several nodes: a
    shared file system). Every rank returns rank 0's report paths; an error on any rank is raised on every rank
    (:class:`~mclcore.studies.synthetic.ranks.RankFailed` on the others)."""
    import torch

    study.validate()
    if study.threads:
        torch.set_num_threads(study.threads)
    with ranks.world(*choose_devices(study)) as (ctx, group, device, mcl_device):
        return _run_study(study, out, ctx, group, device, mcl_device, progress, after_unit)


def _run_study(study: StudyConfig, out: str, ctx, group, device: str, mcl_device: str, progress: bool,
               after_unit) -> dict:
    import torch
    from tqdm.auto import tqdm

    if ctx.distributed:       # before anything is read or written: every rank runs the same study into one --out
        distributed.check_same(study.to_dict(), "study config")
        distributed.check_same(out, "--out")
    t0 = time.time()
    units = build_units(study)
    certs, err = {}, None
    try:
        if ctx.is_main:       # config.json, certificates.json and the reports are rank 0's alone
            _check_out(study, out)
            certs = _certificates(study, out)
    except Exception as e:    # every rank must learn of it first (ranks.exchange raises it after)
        err = e
    ranks.exchange(ctx, group, err)

    records, err = [], None
    try:
        records = [_load_unit(out, u) for u in units]
    except Exception as e:
        err = e
    ranks.same_view(ranks.exchange(ctx, group, err, sorted(u.uid for u, r in zip(units, records) if r)), out)
    todo = [i for i, r in enumerate(records) if r is None]
    mine = rank_shares(study, units, todo, ctx.world_size)[ctx.rank]       # one process: all of todo, in order
    threads = study.threads or torch.get_num_threads()
    if ctx.distributed:
        total, done = sum(units[i].cost(study) for i in mine), 0.0            # the bar: rank 0's own share
        print(f"mcl synthetic: {len(units)} units ({len(units) - len(todo)} already done); rank {ctx.rank} of "
              f"{ctx.world_size} trains {len(mine)} on {device}, {study.workers} worker(s) x {threads} thread(s); "
              f"results in {out}", file=sys.stderr)
    else:
        total = sum(u.cost(study) for u in units)
        done = total - sum(units[i].cost(study) for i in todo)
        print(f"mcl synthetic: {len(units)} units ({len(units) - len(todo)} already done) on {device}, "
              f"{study.workers} worker(s) x {threads} thread(s); results in {out}", file=sys.stderr)

    def finished(i: int) -> None:
        if ctx.is_main:
            if ctx.distributed:       # the other ranks' units finished so far, so the tables grow as in one process
                records[:] = [r or _load_unit(out, u) for u, r in zip(units, records)]
            write_report(study, out, [r for r in records if r is not None], certs, None)
        if after_unit is not None:
            after_unit(records[i])

    err = None
    try:
        bar = tqdm(total=round(total), initial=round(done), unit="w", disable=not progress or not ctx.is_main,
                   dynamic_ncols=True, bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}")
        try:
            if study.workers == 1:
                for i in mine:
                    u = units[i]
                    bar.set_postfix_str(u.uid)
                    w = _weight(u)
                    dev = mcl_device if u.model == "mdvae_mcl" else device
                    records[i] = _run_unit(study, u, out, dev, lambda n: bar.update(n * w),
                                           _writer_factory(study, out))
                    finished(i)
            else:
                run_parallel(study, units, records, _unit_job, out, device, mcl_device, bar, finished, todo=mine)
        finally:
            bar.close()
    except Exception as e:
        err = e
    trained = ranks.exchange(ctx, group, err, mine)              # every rank's share, once all are done

    paths, err = None, None
    try:
        if ctx.is_main:
            if ctx.distributed:
                records = [r or _load_unit(out, u) for u, r in zip(units, records)]
                ranks.all_seen(trained, records, [_unit_path(out, u) for u in units])
            paths = write_report(study, out, records, certs, time.time() - t0)
    except Exception as e:
        err = e
    return ranks.exchange(ctx, group, err, paths)[0]
