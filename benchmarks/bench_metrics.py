"""Time FactorVAE + DCI + MIG + SAP of a 20-dim representation on Shapes3D with the default protocol.

    python benchmarks/bench_metrics.py                      # procedural Shapes3D, DCI with gbt (the default)
    python benchmarks/bench_metrics.py --dci-model hist_gbt # the fast histogram GBT (tie-breaking bias, see dci.py)
    python benchmarks/bench_metrics.py --data-path 3dshapes.h5 --render
    python benchmarks/bench_metrics.py --dci-timing 1.0,0.02 --no-save   # DCI alone: gbt vs hist_gbt, same codes

The representation is a fixed random 20-dim encoder (4x4 average pooling -> linear -> tanh) run through
``torch_representation`` exactly as ``mcl eval`` runs a saved model; it is cheap on purpose, so the numbers are
the protocol's own cost (sampling, rendering or reading ~430,000 distinct grid points, voting, classifier fits),
not a network's. One timed run per metric, in the order FactorVAE, DCI, MIG, SAP, sharing one code cache (so
FactorVAE pays for most of the encoding). ``--render`` also times rendering the whole 480,000-image grid.
``--dci-timing`` times only DCI's fits, once per model on the *same* codes (encoded once per sample scale, the
sample counts ``mclcore.metrics.evaluate`` uses at that scale): the price of the disentanglement_lib default
``gbt`` against ``hist_gbt``.
Rows go to benchmarks/results/metrics.csv.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import append_rows, print_table  # noqa: E402
from mclcore.data import get_dataset  # noqa: E402
from mclcore.metrics import EncodedDataset, evaluate, torch_representation  # noqa: E402
from mclcore.metrics.dci import DCI_DEFAULT_MODEL, DCI_MODELS, dci_from_codes  # noqa: E402
from mclcore.metrics.utils import train_test_codes  # noqa: E402

SCORE_KEYS = {"factorvae": "factorvae.eval_accuracy", "dci": "dci.disentanglement", "mig": "mig.score",
              "sap": "sap.score"}


def encoder(dim: int = 20) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(16 * 16 * 3, dim),
                               torch.nn.Tanh())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-path", default=None, help="3dshapes.h5 (default: the procedural twin)")
    p.add_argument("--dci-model", default=DCI_DEFAULT_MODEL, choices=list(DCI_MODELS))
    p.add_argument("--dci-timing", default=None, metavar="SCALES",
                   help="only time DCI, gbt and hist_gbt on the same codes, at these comma-separated sample scales "
                        "(e.g. 1.0,0.02)")
    p.add_argument("--metrics", default="factorvae,dci,mig,sap")
    p.add_argument("--dim", type=int, default=20)
    p.add_argument("--render", action="store_true", help="also time rendering/reading the whole grid")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice). "
                   "On a loaded shared machine 1 thread was 2.6x faster than 2 for the encoder")
    p.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/metrics.csv")
    args = p.parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m]
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    ds = get_dataset("shapes3d", args.data_path)
    ds.observations_at(np.arange(1))                   # build the renderer's tables (procedural) or open the file
    setup = time.perf_counter() - t0
    enc = EncodedDataset(ds, torch_representation(encoder(args.dim)), batch_size=512)
    if args.dci_timing:
        return dci_timing(ds, enc, [float(x) for x in args.dci_timing.split(",")], args)
    t0 = time.perf_counter()
    scores, seconds = evaluate(ds, enc, metrics, seed=0, dci_model=args.dci_model)
    total = time.perf_counter() - t0

    source = "file" if args.data_path else "procedural"
    common = {"dataset": f"shapes3d ({source})", "codes": args.dim, "dci_model": args.dci_model,
              "threads": torch.get_num_threads(), "load_avg_1min": round(os.getloadavg()[0], 2)}
    rows = [{**common, "what": m, "seconds": round(seconds[m], 2), "score": round(scores[SCORE_KEYS[m]], 4)}
            for m in metrics]
    rows.append({**common, "what": "total (metrics)", "seconds": round(total, 2), "score": "",
                 "encoded": enc.encoded})
    rows.append({**common, "what": "setup (renderer tables / open file)", "seconds": round(setup, 2), "score": ""})
    if args.render:
        t0 = time.perf_counter()
        for i in range(0, len(ds), 8192):
            ds.observations_at(np.arange(i, min(len(ds), i + 8192)))
        rows.append({**common, "what": f"render whole grid ({len(ds)} images)",
                     "seconds": round(time.perf_counter() - t0, 2), "score": ""})
    print_table(rows, ["what", "seconds", "score", "dci_model", "encoded", "load_avg_1min"])
    if not args.no_save:
        print("appended to", append_rows("metrics", rows))
    return 0


def dci_timing(ds, enc, scales, args) -> int:
    """Time DCI's fits alone with each tree model on one set of codes per sample scale (see the module doc)."""
    rows = []
    for scale in scales:
        # the counts mclcore.metrics.evaluate draws at this sample_scale (10,000 / 5,000 at 1.0, floors 64 / 32)
        n_train, n_test = max(64, int(round(10000 * scale))), max(32, int(round(5000 * scale)))
        t0 = time.perf_counter()
        ctr, ftr, cte, fte = train_test_codes(ds, enc, np.random.default_rng(0), n_train, n_test, name="dci")
        encode = time.perf_counter() - t0
        for model in ("hist_gbt", "gbt"):
            t0 = time.perf_counter()
            s = dci_from_codes(ctr, ftr, cte, fte, model=model, seed=0)
            seconds = time.perf_counter() - t0
            source = "file" if args.data_path else "procedural"
            rows.append({"dataset": f"shapes3d ({source})", "codes": args.dim, "dci_model": model, "threads": 1,
                         "load_avg_1min": round(os.getloadavg()[0], 2),
                         "what": f"dci fits only, sample_scale {scale} ({n_train}/{n_test} points)",
                         "seconds": round(seconds, 2), "score": round(s["dci.disentanglement"], 4),
                         "completeness": round(s["dci.completeness"], 4),
                         "informativeness": round(s["dci.informativeness_test"], 4),
                         "encode_seconds": round(encode, 2)})
            print_table(rows[-1:], ["what", "dci_model", "seconds", "score", "completeness", "informativeness",
                                    "load_avg_1min"])
    print_table(rows, ["what", "dci_model", "seconds", "score", "completeness", "informativeness", "load_avg_1min"])
    if not args.no_save:
        print("appended to", append_rows("metrics", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
