"""The ceiling of the LACG latent-action probe: an IDM of the same architecture trained *with* the true action.

    python experiments/worldmodel/idm_ceiling.py RUN_ROOT [--out experiments/worldmodel/cpu]

For each LACG run ``RUN_ROOT/worldmodel-lacg-cpu-seed{0,1,2}`` (its frozen autoencoder and IDM hyper-parameters)
:func:`mclcore.studies.worldmodel.latent_probe.supervised_ceiling` trains a fresh IDM plus a linear head on the
recorded actions of the training episodes and probes its posterior mean exactly as the LACG latent is probed. The
grid is fixed here before it ran (pre-registered; every cell reported): IDM inputs ``delta`` (the preset's: only
the frame change) and ``frames`` (both frames and their change), 1,000 and 3,000 training steps (batch 64, Adam
1e-3, training seed 0). Writes ``idm_ceiling.json`` (every cell) and ``idm_ceiling.md`` (the table, beside the
LACG runs' own probe from their metrics.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from diagnose_actions import _cache_dir, load_run  # noqa: E402
from mclcore._io import write_json_atomic, write_text_atomic  # noqa: E402
from mclcore.studies.worldmodel.data import load_splits  # noqa: E402
from mclcore.studies.worldmodel.latent_probe import supervised_ceiling  # noqa: E402

SEEDS = (0, 1, 2)
INPUTS = ("delta", "frames")
STEPS = (1000, 3000)
SPLITS = ("target", "transfer")


def _cell(r: dict) -> dict:
    se = r["same_embodiment"]
    return {"r2": r["r2"], "r2_per_dim": r["r2_per_dim"], "r2_displacement": r["r2_displacement"],
            "same_r2": se["r2"], "same_r2_per_dim": se["r2_per_dim"], "same_r2_displacement": se["r2_displacement"],
            "train_mse": r["train_mse"]}


def table(rows: list[dict], lacg: dict) -> str:
    def agg(vals):
        v = np.asarray(vals, float)
        return f"{v.mean():.3f} [{v.min():.3f}, {v.max():.3f}]"

    out = ["| IDM | inputs | steps | split | seeds | R² (4-d) | R² dx, dy, dz | R² gripper | R² same embodiment (4-d) "
           "| same emb. dx, dy, dz |", "|---|---|---|---|---|---|---|---|---|---|"]
    for split in SPLITS:
        for inputs in INPUTS:
            for steps in STEPS:
                c = [r for r in rows if (r["inputs"], r["steps"], r["split"]) == (inputs, steps, split)]
                out.append(f"| supervised (ceiling) | {inputs} | {steps} | {split} | {len(c)} | "
                           f"{agg([r['r2'] for r in c])} | {agg([r['r2_displacement'] for r in c])} | "
                           f"{agg([r['r2_per_dim'][3] for r in c])} | {agg([r['same_r2'] for r in c])} | "
                           f"{agg([r['same_r2_displacement'] for r in c])} |")
        c = [lacg[s][split] for s in sorted(lacg)]
        out.append(f"| LACG latent (the `cpu` runs) | delta | 5000 | {split} | {len(c)} | {agg([p['r2'] for p in c])} "
                   f"| {agg([p['r2_displacement'] for p in c])} | {agg([p['r2_per_dim'][3] for p in c])} | "
                   f"{agg([p['same_embodiment']['r2'] for p in c])} | "
                   f"{agg([p['same_embodiment']['r2_displacement'] for p in c])} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_root")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, lacg = [], {}
    for seed in SEEDS:
        run = os.path.join(args.run_root, f"worldmodel-lacg-cpu-seed{seed}")
        if not os.path.isfile(os.path.join(run, "checkpoint.pt")):
            print(f"run_root: no checkpoint.pt in {run}", file=sys.stderr)
            return 2
        model, cfg = load_run(run)
        with open(os.path.join(run, "metrics.json")) as f:
            lacg[seed] = json.load(f)["latent_action_probe"]
        splits = load_splits(cfg, _cache_dir(run))
        for inputs in INPUTS:
            for steps in STEPS:
                t0 = time.perf_counter()            # one IDM per cell, probed on both splits (same numbers as two)
                rs = supervised_ceiling(model, splits["train"], {s: splits[s] for s in SPLITS}, steps=steps,
                                        inputs=inputs)
                seconds = round(time.perf_counter() - t0, 1)
                for split in SPLITS:
                    rows.append({"seed": seed, "inputs": inputs, "steps": steps, "split": split, **_cell(rs[split]),
                                 "seconds": seconds})
                    print(json.dumps({k: rows[-1][k] for k in ("seed", "inputs", "steps", "split", "r2",
                                                               "same_r2", "seconds")}), flush=True)
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic({"rows": rows, "lacg": lacg}, os.path.join(args.out, "idm_ceiling.json"), indent=1)
    write_text_atomic(os.path.join(args.out, "idm_ceiling.md"), table(rows, lacg))
    print(table(rows, lacg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
