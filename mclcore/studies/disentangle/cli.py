"""``mcl train {mddiff,encdiff,betavae,factorvae,btcvae} ...``: the disentanglement study's entry of ``mcl train``.

:mod:`mclcore.studies.train_cli` parses the arguments, checks ``--dataset``/``--preset`` and sets ``--threads``,
then calls :func:`run`. Per seed the config is ``build_config`` <- ``--set`` <- ``--device`` / ``--fid-weights``;
the lifecycle (train, resume or skip, evaluate, print, write ``metrics.json``) is
:func:`mclcore.train.loop.run_seeds`.
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["run", "config_for"]


def config_for(model_name: str, args: argparse.Namespace, seed: int):
    """The validated config of one seed's run: preset and rules, ``--set``, ``--device``, ``--fid-weights``.

    Raises ValueError or FileNotFoundError naming the argument at fault (before anything trains)."""
    from mclcore.studies.disentangle.config import build_config, validate
    from mclcore.train.config import apply_overrides
    from mclcore.train.loop import resolve_device

    if args.data_path is not None and not os.path.exists(args.data_path):
        raise FileNotFoundError(f"--data-path: no such file or folder {args.data_path!r}")
    if args.fid_weights and not os.path.isfile(args.fid_weights):
        raise FileNotFoundError(f"--fid-weights: no such file {args.fid_weights!r}")
    cfg = build_config(model_name, args.dataset, args.preset, seed, args.data_path)
    apply_overrides(cfg, args.set, example="stages.lambda_mcl=1e-4")
    if args.device:
        cfg.device = args.device
    if args.fid_weights:
        cfg.eval.fid_weights = args.fid_weights
    resolve_device(cfg.device)                      # an unusable --device fails here, not after the data loads
    return validate(cfg)


def _summary(out: str, res: dict) -> str:
    from mclcore.studies.disentangle.kinds import fid_of, lpips_of

    fid, lp = fid_of(res)[0], lpips_of(res)[0]          # each printed beside its label (real or stand-in)
    return (f"{out}: FactorVAE {res['factorvae']:.3f}  DCI {res['dci']:.3f}  {res['fid_label']} {fid:.2f}  "
            f"{res['lpips_label']} {lp:.4f}  ({res['seconds']['total_call']:.0f} s)")


def run(model_name: str, args: argparse.Namespace) -> int:
    """Train and evaluate ``model_name`` for every seed of ``args.seeds``; returns the exit code (2: a user
    mistake, said in one line on stderr)."""
    from mclcore.studies.disentangle.config import run_dir_name
    from mclcore.studies.disentangle.evaluate import evaluate
    from mclcore.studies.disentangle.run import fork_fields, phases, train
    from mclcore.train.loop import run_seeds

    try:
        configs = {seed: config_for(model_name, args, seed) for seed in args.seeds}
        if not args.no_eval and configs:                # a wrong metric weight file fails now, not after training
            from mclcore.studies.disentangle.evaluate import weight_paths
            from mclcore.studies.disentangle.fid import check_weight_files

            first = next(iter(configs.values()))
            check_weight_files(weight_paths(first), first.eval.lpips_net)
    except (ValueError, FileNotFoundError) as err:
        print(f"mcl train {model_name}: {err}", file=sys.stderr)
        return 2

    def eval_config(saved):
        if args.fid_weights:                        # evaluation-only: may differ from the run's training call
            saved.eval.fid_weights = args.fid_weights
        return saved

    cache = os.path.join(args.out, "cache")
    return run_seeds(args, out_root=args.out, config_for_seed=configs.__getitem__, run_dir=run_dir_name,
                     train_fn=train, eval_config=eval_config,
                     evaluate=lambda model, cfg, out: evaluate(model, cfg, out, cache_dir=cache,
                                                               progress=not args.quiet),
                     summary=_summary, phases=phases, fork_fields=fork_fields)
