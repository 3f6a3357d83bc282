"""``python -m mclcore.data.render --grid docs/``: write docs/samples_<name>.png for each procedural dataset.

Also ``--time shapes3d`` renders a whole factor grid (discarding the images) and prints the throughput.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from mclcore.data.render import RENDERERS


def sample_grid(dataset, rows: int = 8, cols: int = 8, seed: int = 0, pad: int = 2) -> np.ndarray:
    """(rows * (64 + pad) + pad, cols * (64 + pad) + pad, 3) uint8 grid of random observations, white padding."""
    obs = dataset.sample_observations(rows * cols, seed)
    h = w = 64
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = obs[k]
    return out


def write_grids(folder: str, names=None, seed: int = 0) -> list[str]:
    import matplotlib.image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in names or list(RENDERERS):
        path = os.path.join(folder, f"samples_{name}.png")
        matplotlib.image.imsave(path, sample_grid(RENDERERS[name](), seed=seed))
        paths.append(path)
    return paths


def time_full_grid(name: str, batch: int = 4096) -> float:
    from tqdm import tqdm

    ds = RENDERERS[name]()
    n = len(ds)
    t0 = time.perf_counter()
    ds.observations_at(np.arange(1))                   # one-off tables (Shapes3D: ~8-14 s on the 2-core AMD EPYC dev VM, 2026-11), timed apart
    print(f"{name}: setup {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    for i in tqdm(range(0, n, batch), desc=f"render {name}", unit="batch", file=sys.stderr):
        ds.observations_at(np.arange(i, min(n, i + batch)))
    dt = time.perf_counter() - t0
    print(f"{name}: {n} images in {dt:.1f} s ({n / dt:.0f} images/s)")
    return dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mclcore.data.render", description=__doc__.splitlines()[0])
    p.add_argument("--grid", metavar="DIR", help="write DIR/samples_<name>.png")
    p.add_argument("--datasets", default=",".join(RENDERERS), help="comma-separated subset of " + ",".join(RENDERERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time", metavar="NAME", choices=list(RENDERERS), help="render the whole grid of NAME, print speed")
    args = p.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in RENDERERS]
    if unknown:
        p.error(f"--datasets: unknown {unknown}; choose from {list(RENDERERS)}")
    if not args.grid and not args.time:
        p.error("nothing to do: give --grid DIR and/or --time NAME")
    if args.grid:
        for path in write_grids(args.grid, names, args.seed):
            print(path)
    if args.time:
        time_full_grid(args.time)
    return 0


if __name__ == "__main__":
    sys.exit(main())
