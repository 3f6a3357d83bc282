"""Copy the reported runs of ``table1.sh`` into the repository: each run's ``metrics.json`` and its figures,
downscaled, so the README's Table 1 / Table 6 are regenerated from committed files.

    python experiments/disentanglement/collect_table1.py /tmp/t1/runs [--to experiments/disentanglement/results/table1]

Figures: each ``figures/*.png`` of a run is averaged over 2x2 pixel blocks and written as JPEG (quality 85), about
50 KB instead of 0.8 MB per figure; the full-size PNGs stay in the run folder. Only finished runs (``metrics.json``
present) of the ``cpu-smoke`` preset are copied; a finished run that is not in ``--to`` yet is added, one already
there is overwritten (the run folder is the source of truth). Then it prints the tables of the copied folder, which
is what ``make_tables.py --preset cpu-smoke`` prints and the README holds (tests/studies/test_disentangle_tables.py).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys

import numpy as np


def downscale(src: str, dst: str) -> None:
    """``src`` PNG -> ``dst`` JPEG at half size (2x2 block means), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    a = mpimg.imread(src)[..., :3]                                      # (H, W, 3) float in [0, 1]
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    tmp = dst + ".tmp.jpg"
    plt.imsave(tmp, np.clip(a, 0.0, 1.0), pil_kwargs={"quality": 85})
    os.replace(tmp, dst)


def copy_figures(run: str, dst: str) -> int:
    """Every ``run/figures/*.png`` as a half-size JPEG in ``dst`` (created); the number written."""
    pngs = sorted(glob.glob(os.path.join(run, "figures", "*.png")))
    if pngs:
        os.makedirs(dst, exist_ok=True)
    for fig in pngs:
        downscale(fig, os.path.join(dst, os.path.basename(fig)[:-4] + ".jpg"))
    return len(pngs)


def collect(root: str, to: str, preset: str = "cpu-smoke") -> list[str]:
    """Copy every finished ``preset`` run under ``root`` into ``to``; the run names copied."""
    names = []
    for path in sorted(glob.glob(os.path.join(root, "*", "metrics.json"))):
        run = os.path.dirname(path)
        with open(path) as f:
            if json.load(f).get("preset") != preset:
                continue
        name = os.path.basename(run)
        dst = os.path.join(to, name)
        os.makedirs(dst, exist_ok=True)
        shutil.copyfile(path, os.path.join(dst, "metrics.json.tmp"))
        os.replace(os.path.join(dst, "metrics.json.tmp"), os.path.join(dst, "metrics.json"))
        copy_figures(run, os.path.join(dst, "figures"))
        names.append(name)
    return names


def main(argv=None) -> int:
    from mclcore.studies.disentangle.report import load, tables

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="table1.sh's OUT folder")
    p.add_argument("--to", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "table1"))
    a = p.parse_args(argv)
    if not os.path.isdir(a.root):
        print(f"root: no such folder {a.root!r}", file=sys.stderr)
        return 2
    names = collect(a.root, a.to)
    print(f"copied {len(names)} runs to {a.to}", file=sys.stderr)
    print(tables(load(a.to, "cpu-smoke")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
