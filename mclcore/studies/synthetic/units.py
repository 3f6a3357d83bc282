"""The grid of the synthetic study as units: one model on one cell, all its seeds stacked (run order, cost,
identifiers; :mod:`mclcore.studies.synthetic.run` runs them). A cell is ``(process, dz, |U|, axes)``, ``axes`` the
values of the study's optional axes (``mixings``, ``decoder_vars``, ``shift_scales``) as ``((field, value), ...)``.
"""
from __future__ import annotations

import dataclasses
import math
import statistics

from mclcore.studies.synthetic.config import StudyConfig

__all__ = ["Unit", "cells", "build_units", "chains", "rank_shares", "select_lambda"]

# the 2-core AMD EPYC dev VM (2026-11) (benchmarks/bench_synthetic.py, 10 members, 1 thread: 62 vs 876 model-steps/s at dz = 5,
# 57 vs 535 at dz = 20).
_MCL_STEP_COST = 12.0




# --------------------------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Unit:
    """One model on one cell: ``seeds`` x ``lambdas`` members trained together."""

    uid: str
    cell: tuple          # (process, dz, n_alphabet, axes): axes = ((train field, value), ...) of the study's axes
    model: str
    tune: bool           # lambda-selection unit (validation split) or a final unit
    seeds: list
    lambdas: list | None  # per member; None: the final MCL unit's lambda is chosen after its tuning unit

    def cost(self, study: StudyConfig) -> float:
        cfg = study.train_config(dz=self.cell[1], **dict(self.cell[3]))
        epochs = (study.tune_epochs or cfg.epochs) if self.tune else cfg.epochs
        n_train = cfg.n - round(cfg.n * cfg.test_frac) - (round(cfg.n * study.tune_val_frac) if self.tune else 0)
        members = len(self.seeds) if self.lambdas is None else len(self.lambdas)
        return epochs * math.ceil(n_train / cfg.batch_size) * members * (
            _MCL_STEP_COST if self.model == "mdvae_mcl" else 1.0)


def _cell_id(study: StudyConfig, cell) -> str:
    """``<process>-<mixing>-dz<dz>-U<|U|>``, then ``-dv<decoder_var>`` / ``-ss<shift_scale>`` where the study has
    those axes (ids of studies without axes are unchanged, so their results resume)."""
    process, dz, n_alphabet, axes = cell
    cfg = study.train_config(dz=dz, **dict(axes))
    tail = "".join(f"-{tag}{getattr(cfg, name):g}" for tag, name, axis in (("dv", "decoder_var", "decoder_vars"),
                                                                           ("ss", "shift_scale", "shift_scales"))
                   if getattr(study, axis))
    return f"{process}-{cfg.mixing}-dz{dz}-U{n_alphabet}{tail}"


def cells(study: StudyConfig) -> list[tuple]:
    """Every cell ``(process, dz, n_alphabet, axes)`` of the study in grid order."""
    return [(process, dz, n_alphabet, axes) for process in study.processes for dz in study.dzs
            for n_alphabet in study.alphabets for axes in study.axis_cells()]


def build_units(study: StudyConfig) -> list[Unit]:
    """The units of ``study`` in run order (cells in grid order; a tuning unit right before its MCL unit)."""
    seeds = list(range(study.first_seed, study.first_seed + study.seeds))
    tune_seeds = list(range(study.first_seed, study.first_seed + study.tune_seeds))
    units = []
    for cell in cells(study):
        cid = _cell_id(study, cell)
        for model in study.models:
            if model == "mdvae_mcl" and len(study.lambda_grid) > 1:
                grid = [float(v) for v in study.lambda_grid]
                units.append(Unit(f"{cid}-{model}-tune", cell, model, True,
                                  [s for s in tune_seeds for _ in grid], [v for _ in tune_seeds for v in grid]))
                units.append(Unit(f"{cid}-{model}", cell, model, False, seeds, None))
            elif model == "mdvae_mcl":
                units.append(Unit(f"{cid}-{model}", cell, model, False, seeds,
                                  [float(study.lambda_grid[0])] * len(seeds)))
            else:
                units.append(Unit(f"{cid}-{model}", cell, model, False, seeds, None))
    return units


# --------------------------------------------------------------------------------------------------------------
# Units over torchrun's ranks
# --------------------------------------------------------------------------------------------------------------
def chains(units: list[Unit], todo: list[int]) -> list[list[int]]:
    """The indices ``todo`` of ``units`` grouped into chains that one rank must run together, in run order: a
    tuning unit and its final MD-VAE+MCL unit (the final one reads the tuning unit's record, so splitting them
    would make one rank wait for another mid-share); every other unit alone."""
    by: dict = {}
    for i in sorted(todo):
        key = units[i].uid.removesuffix("-tune") if units[i].tune else units[i].uid
        by.setdefault(key, []).append(i)
    return list(by.values())


def rank_shares(study: StudyConfig, units: list[Unit], todo: list[int], world_size: int) -> list[list[int]]:
    """The indices of ``todo`` each of ``world_size`` ranks trains (disjoint, together all of ``todo``, each in
    run order): the chains (:func:`chains`), costliest first, each to the rank with the least estimated cost so
    far (:meth:`Unit.cost`; ties: the lower rank). Only the config and the finished units decide it, so every
    rank computes the same split, and a resumed study splits what is left over however many ranks it has.

    Greedy by cost rather than by unit index mod world size: an MD-VAE+MCL chain costs ~12x a VAE unit, and in
    grid order the MCL chains of every cell fall on the same ranks. On the cost estimate, for the five presets at
    2, 3, 4 and 8 ranks, the longest share over its lower bound max(total / ranks, costliest chain): greedy
    1.00-1.07 (demo at 4 ranks 1.33, six equal units, either way); index mod world size the same on the presets
    without MCL but 1.78 for quick and paper at 2 ranks and 3.56 for paper at 8."""
    loads = [0.0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    groups = chains(units, todo)
    cost = [sum(units[i].cost(study) for i in c) for c in groups]
    order = sorted(range(len(cost)), key=lambda k: (-cost[k], k))
    for k in order:
        r = min(range(world_size), key=lambda r: (loads[r], r))
        loads[r] += cost[k]
        shares[r].extend(groups[k])
    return [sorted(s) for s in shares]


def select_lambda(tune_rows: list[dict]) -> tuple[float, dict]:
    """lambda with the best median validation MCC (ties: the smaller lambda); also the medians per lambda."""
    by = {}
    for r in tune_rows:
        by.setdefault(r["lambda_mcl"], []).append(r["mcc"])
    medians = {lam: statistics.median(v) for lam, v in sorted(by.items())}
    best = max(medians, key=lambda lam: (medians[lam], -lam))
    return best, medians


