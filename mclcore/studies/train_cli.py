"""``mcl train MODEL ...``: train (and evaluate) one model of a study.

    mcl train mddiff --dataset shapes3d --preset cpu-smoke --seeds 0 1 2 --out runs/disentanglement
    mcl train betavae --dataset mpi3d --data-path mpi3d_toy.npz --preset paper
    mcl train encdiff --dataset cars3d --set stages.stage1_steps=2000 --set eval.sample_scale=0.1
    mcl train worldmodel --variant lacg --mcl --preset cpu-smoke      # world model (section 5.3), runs/worldmodel

Each (model, dataset, preset, seed) trains into ``OUT/<model>-<dataset>-<preset>-seed<seed>/`` (checkpoint.pt,
config.json, tb/, metrics.json, figures/). Re-running the same command resumes a killed run from its last
checkpoint and skips finished ones (``--no-resume`` starts over; ``--eval-only`` re-evaluates a finished run).
The lifecycle is :func:`mclcore.train.loop.run_seeds`. ``--fork-from ROOT`` starts new runs from another arm's
runs stopped where the two configs part (``mcl train mddiff ... --stop-before stage2`` into ROOT, then ``--set
stages.lambda_mcl=0 --fork-from ROOT``): :func:`mclcore.train.loop.fork_run`.

Models are registered in ``TRAINERS`` (name -> "module:function"); a new study adds one entry per model. Each
function takes ``(model_name, args)`` and returns an exit code; ``TRAINER_OPTIONS`` says which datasets and presets
it accepts and its defaults.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> "module:function(model_name, args) -> int", imported only when chosen (keeps `mcl --help` light)
_DIS = "mclcore.studies.disentangle.cli:run"
TRAINERS = {"mddiff": _DIS, "encdiff": _DIS, "betavae": _DIS, "factorvae": _DIS, "btcvae": _DIS,
            "disdiff": _DIS, "infogan_cr": _DIS,
            "compvae": _DIS, "mmdvae": _DIS, "qlae": _DIS, "intervae": _DIS,      # image_principles.py
            "worldmodel": "mclcore.studies.worldmodel.cli:run"}
DATASETS = ("shapes3d", "mpi3d", "cars3d", "tabletop")
PRESETS = ("cpu-smoke", "cpu-long", "cpu", "paper", "gpu")
# what each trainer accepts and its defaults (checked in run(); the parser takes the union)
_DISENTANGLE = {"dataset": ("shapes3d", "mpi3d", "cars3d"), "preset": ("cpu-smoke", "cpu-long", "paper"),
                "defaults": {"dataset": "shapes3d", "out": "runs/disentanglement"}}
TRAINER_OPTIONS = {
    "worldmodel": {"dataset": ("tabletop",), "preset": ("cpu-smoke", "cpu", "gpu"),
                   "defaults": {"dataset": "tabletop", "out": "runs/worldmodel"}},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=list(TRAINERS), help="what to train")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="benchmark (default shapes3d; worldmodel: tabletop, the only one it takes)")
    p.add_argument("--data-path", default=None, metavar="FILE",
                   help="the real dataset file (3dshapes.h5, mpi3d .npz, Cars3D folder; worldmodel: a folder from "
                        "tabletop.make_lowdata_splits or one episode HDF5 file); default: procedural twin / generated "
                        "episodes")
    p.add_argument("--preset", choices=PRESETS, default="cpu-smoke",
                   help="cpu-smoke: tiny networks, minutes on a CPU; cpu-long (disentanglement models): cpu-smoke's "
                        "networks trained long enough to learn, <= 60 minutes per run on one core; paper "
                        "(disentanglement models): full sizes "
                        "(App. D.4), for a GPU; cpu (worldmodel): cpu-smoke with the action-following fixes, "
                        "<= 30 minutes per variant on 2 cores; gpu (worldmodel): larger networks and data, for a GPU")
    p.add_argument("--variant", choices=("acg", "lacg"), default="acg",
                   help="worldmodel: acg conditions on recorded actions, lacg on IDM latent actions")
    p.add_argument("--mcl", action="store_true", help="worldmodel: add MCL on the action channel")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED", help="one run per seed")
    p.add_argument("--out", default=None,
                   help="root folder of the run folders (default runs/disentanglement; worldmodel: runs/worldmodel)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. stages.lambda_mcl=1e-4 or mcl.tau=0.07 (repeatable; see "
                        "config.json)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--fid-weights", default=None, metavar="FILE",
                   help="FID weights: pytorch-fid's pt_inception-2015-12-05 state dict (the FID InceptionV3, "
                        "also $MCLCORE_FID_WEIGHTS), or a TorchScript feature network; default: a stand-in network "
                        "trained on the dataset (labelled fid_standin). Nothing is downloaded")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.add_argument("--eval-only", action="store_true",
                   help="(re-)evaluate the finished run(s) with their saved config and this call's --set eval.* "
                        "fields")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                   help="stop (with a checkpoint) after this many steps in this call; re-run to continue")
    p.add_argument("--stop-before", default=None, metavar="PHASE",
                   help="stop (with a checkpoint) on reaching this phase, before its first step (e.g. stage2): "
                        "where --fork-from starts another arm; a rerun stops at the same point")
    p.add_argument("--fork-from", default=None, metavar="ROOT",
                   help="start each new run from the run of the same name under ROOT (another arm's --out), "
                        "stopped (--stop-before) before the first phase in which their configs differ: the phases "
                        "before it are trained once, bit for bit as this config would (diffusion models: stage-2 "
                        "fields and MCL options, e.g. --set stages.lambda_mcl=0); runs with a checkpoint resume")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op CPU threads (0: torch's default); 1 avoids OpenMP oversubscription on a busy machine")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    opts = TRAINER_OPTIONS.get(args.model, _DISENTANGLE)
    for key, value in opts["defaults"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("dataset", "preset"):
        if getattr(args, key) not in opts[key]:
            print(f"--{key}: {args.model} accepts {', '.join(opts[key])}; got {getattr(args, key)!r}", file=sys.stderr)
            return 2
    if args.model not in TRAINER_OPTIONS and (args.variant != "acg" or args.mcl):
        print(f"--variant/--mcl: only for worldmodel, not {args.model}", file=sys.stderr)
        return 2
    for flag, value, lo in (("--stop-after", args.stop_after, 0), ("--threads", args.threads, 0)):
        if value is not None and value < lo:
            print(f"{flag}: expected an integer >= {lo}, got {value}", file=sys.stderr)
            return 2
    if any(s < 0 for s in args.seeds):
        print(f"--seeds: expected integers >= 0, got {args.seeds}", file=sys.stderr)
        return 2
    if args.eval_only and (args.no_resume or args.no_eval or args.stop_after is not None or args.stop_before):
        print("--eval-only: cannot be combined with --no-resume, --no-eval, --stop-after or --stop-before",
              file=sys.stderr)
        return 2
    if args.fork_from is not None and (args.eval_only or args.no_resume):
        print("--fork-from: cannot be combined with --eval-only or --no-resume (it starts new runs only)",
              file=sys.stderr)
        return 2
    if args.fork_from is not None and not os.path.isdir(args.fork_from):
        print(f"--fork-from: no such folder {args.fork_from!r} (expected the --out of the run to fork from)",
              file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    module, func = TRAINERS[args.model].split(":")
    return int(getattr(importlib.import_module(module), func)(args.model, args) or 0)
