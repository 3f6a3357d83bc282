"""``mcl train worldmodel --variant {acg,lacg} [--mcl] --preset {cpu-smoke,gpu}``: the world-model entry of
``mcl train`` (argument parsing, ``--threads`` and the dataset/preset checks are :mod:`mclcore.studies.train_cli`'s).

One run folder per seed under ``--out`` (default ``runs/worldmodel``), trained, resumed or skipped and then evaluated
by :func:`mclcore.train.loop.run_seeds`; simulator episodes are generated once into ``<out>/cache/tabletop`` and
shared by the runs. Config per seed: preset <- ``--data-path`` <- ``--set`` <- ``--device``. Evaluation uses the
checkpoint's config with the ``eval.*`` overrides of this call re-applied (evaluation settings may change between
calls; nothing else may).
"""
from __future__ import annotations

import argparse
import os
import sys

from mclcore._io import CheckpointError
from mclcore.studies.worldmodel.config import RunConfig, build_config, run_dir_name
from mclcore.studies.worldmodel.data import DataError
from mclcore.train import config as _config
from mclcore.train import loop

__all__ = ["run", "config_for", "summary_line"]


def config_for(args: argparse.Namespace, seed: int) -> RunConfig:
    """The config of one seed of this command line (ValueError naming the flag or key on a mistake)."""
    cfg = build_config(args.variant, args.mcl, args.preset, seed)
    if args.data_path:
        cfg.data.path = args.data_path
    _config.apply_overrides(cfg, args.set, example="dynamics.lambda_mcl=0.1")
    if args.device:
        cfg.device = args.device
    cfg.validate()
    loop.resolve_device(cfg.device)          # --device cuda on a machine without CUDA: said before any work
    return cfg


def summary_line(out: str, res: dict) -> str:
    """The line printed per evaluated run: both splits' Table 2 metrics and the call's wall time."""
    t, x = res["target"], res["transfer"]
    return (f"{out}: target SSIM {t['ssim']:.3f} PSNR {t['psnr']:.2f} MSE {t['mse']:.4f} SSIM-L {t['ssim_l']:.3f} | "
            f"transfer SSIM {x['ssim']:.3f} PSNR {x['psnr']:.2f} MSE {x['mse']:.4f} SSIM-L {x['ssim_l']:.3f} "
            f"({res['seconds']['total_call']:.0f} s)")


def run(model_name: str, args: argparse.Namespace) -> int:
    """Train and evaluate every seed of ``args``; returns the exit code (2 after a user mistake, said in one line
    on stderr: a bad flag or ``--set``, a missing or invalid episode file, data that do not fit the config, an
    unreadable checkpoint)."""
    from mclcore.data.tabletop.episodes import EpisodeFileError
    from mclcore.studies.worldmodel.evaluate import evaluate
    from mclcore.studies.worldmodel.run import train

    if getattr(args, "dataset", None) not in (None, "tabletop"):
        print(f"--dataset: the worldmodel trainer uses the tabletop episodes, got {args.dataset!r}", file=sys.stderr)
        return 2
    try:
        configs = {seed: config_for(args, seed) for seed in args.seeds}
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    out_root = args.out or "runs/worldmodel"
    cache = os.path.join(out_root, "cache", "tabletop")
    try:
        return loop.run_seeds(
            args, out_root=out_root, config_for_seed=configs.__getitem__, run_dir=run_dir_name,
            train_fn=lambda cfg, out, **kw: train(cfg, out, cache_dir=cache, **kw),
            evaluate=lambda model, cfg, out: evaluate(model, cfg, out, cache_dir=cache), summary=summary_line)
    except (EpisodeFileError, DataError, CheckpointError, FileNotFoundError) as e:
        print(e, file=sys.stderr)
        return 2

