"""``mcl eval``: evaluate a saved representation on a ground-truth dataset, write the scores as JSON.

Saved representation convention: a file written by ``torch.save(module)`` (a whole ``nn.Module``, not a
state_dict) or a TorchScript file (``torch.jit.save``), mapping float images (N, 3, 64, 64) in [0, 1] to codes
(N, K). If the module returns a tuple or list, its first element is the code (e.g. the posterior mean of
``(mu, logvar)``). The module is run in eval mode without gradients. ``torch.save`` files are unpickled
(``weights_only=False``): only evaluate files you trust.

    mcl eval --model encoder.pt --dataset shapes3d --data-path 3dshapes.h5 --metrics factorvae,dci,mig,sap \
        --out results.json

Without ``--data-path`` the procedural twin of the dataset is used. The JSON holds the namespaced scores, the
seconds per metric, the protocol settings and versions; it is written atomically (temporary file + os.replace).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zipfile

from mclcore._io import write_json_atomic  # noqa: E402  (re-exported: part of this module's API)

__all__ = ["add_arguments", "run", "load_module", "write_json_atomic"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mclcore.metrics.dci import DCI_DEFAULT_MODEL, DCI_MODELS
    from mclcore.metrics.evaluate import METRICS

    parser.add_argument("--model", required=True, help="torch.save(nn.Module) or TorchScript file: float "
                        "(N,3,64,64) in [0,1] -> (N,K) codes")
    parser.add_argument("--dataset", required=True, choices=["shapes3d", "mpi3d", "cars3d", "dsprites"])
    parser.add_argument("--data-path", default=None, help="dataset file (3dshapes.h5/.npz, mpi3d .npz, cars3d folder "
                        "of .mat, dsprites .npz); default: the procedural twin")
    parser.add_argument("--mpi3d-variant", default="toy", choices=["toy", "realistic", "real"])
    parser.add_argument("--cache-dir", default=None, help="where to keep memory-mappable copies of compressed .npz")
    parser.add_argument("--metrics", default="factorvae,dci,mig,sap",
                        help=f"comma-separated subset of {','.join(METRICS)} (default: factorvae,dci,mig,sap)")
    parser.add_argument("--out", default=None, help="write the results JSON here (atomically)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every metric's sampler (default 0)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--dci-model", default=DCI_DEFAULT_MODEL, choices=list(DCI_MODELS),
                        help=f"DCI predictor (default {DCI_DEFAULT_MODEL}): gbt (disentanglement_lib's "
                             "GradientBoostingClassifier, minutes at the full protocol), hist_gbt (fast, but a "
                             "redundant copy of a code gets no importance), lasso")
    parser.add_argument("--sample-scale", type=float, default=1.0,
                        help="multiply every protocol sample count (1.0 = disentanglement_lib protocol)")
    parser.add_argument("--no-cache", action="store_true", help="encode every sampled observation instead of each "
                        "grid point once (for non-deterministic representations)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the model (default: "
                        "torch's choice; 1 is faster on a loaded shared machine)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def load_module(path: str, device="cpu"):
    """Load a representation module saved with torch.save(module) or torch.jit.save; see the module doc."""
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--model: no such file {path!r}")
    scripted = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            scripted = any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    try:
        if scripted:
            return torch.jit.load(path, map_location=device)
        obj = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001 - pickle, zip and TorchScript errors of a damaged file take many forms
        raise ValueError(f"--model: {path} is not a readable torch.save / TorchScript file ({type(err).__name__}: "
                         f"{err})") from None
    if not isinstance(obj, torch.nn.Module):
        raise ValueError(f"--model: {path} holds a {type(obj).__name__}, expected a whole nn.Module (save it with "
                        f"torch.save(model, path), not model.state_dict()) or a TorchScript file")
    return obj


def _unwritable(path: str) -> str | None:
    """Why ``path`` cannot be written (checked before minutes of evaluation), or None."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return f"{path} is a folder; give a file name"
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{folder} is a file, so {path} cannot be created"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"no permission to write in {folder}"
    return None


def _jsonable(v):
    import numpy as np

    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def run(args) -> int:
    import numpy as np
    import sklearn
    import torch

    import mclcore
    from mclcore.data import get_dataset
    from mclcore.metrics.evaluate import METRICS, evaluate
    from mclcore.metrics.utils import EncodedDataset, torch_representation

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        print(f"mcl eval: --metrics: unknown {unknown}; choose from {','.join(METRICS)}", file=sys.stderr)
        return 2
    if args.batch_size < 1 or not args.sample_scale > 0:
        print("mcl eval: --batch-size must be >= 1 and --sample-scale > 0", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print("mcl eval: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if args.out:
        why = _unwritable(args.out)
        if why:
            print(f"mcl eval: --out: {why}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    name = f"mpi3d_{args.mpi3d_variant}" if args.dataset == "mpi3d" and args.data_path else args.dataset
    kwargs = {"cache_dir": args.cache_dir} if args.data_path and args.cache_dir and args.dataset != "cars3d" else {}
    dataset = get_dataset(name, args.data_path, **kwargs)
    module = load_module(args.model, args.device)
    rep = torch_representation(module, device=args.device, batch_size=args.batch_size)
    enc = EncodedDataset(dataset, rep, batch_size=args.batch_size, cache=not args.no_cache,
                         progress=not args.no_progress)
    print(f"mcl eval: {metrics} on {dataset!r}", file=sys.stderr)
    scores, seconds = evaluate(dataset, enc, metrics, seed=args.seed, sample_scale=args.sample_scale,
                               dci_model=args.dci_model)
    result = {
        "dataset": args.dataset, "data_path": args.data_path, "procedural": args.data_path is None,
        "model": os.path.abspath(args.model), "seed": args.seed, "metrics": metrics,
        "scores": {k: _jsonable(v) for k, v in scores.items()},
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "total_seconds": round(time.perf_counter() - t0, 3),
        "protocol": {"sample_scale": args.sample_scale, "dci_model": args.dci_model, "cache": not args.no_cache},
        "num_codes": enc.num_codes, "encoded_observations": enc.encoded,
        "versions": {"mclcore": mclcore.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "sklearn": sklearn.__version__, "python": platform.python_version()},
    }
    print(json.dumps(result["scores"], indent=2, sort_keys=True), flush=True)   # printed first: a failed write loses nothing
    if args.out:
        write_json_atomic(result, args.out)
        print(f"mcl eval: wrote {args.out}", file=sys.stderr)
    return 0
