"""``mcl tabletop``: generate tabletop episode files, preview them, write the low-data splits and the sample image.

    mcl tabletop generate --out left_a.h5 --task place_a2b_left --embodiment arm_a -n 100 --T 32 --seed 0
    mcl tabletop preview --data left_a.h5 --out preview.png [--episodes 4 --frames 8 --trajectory]
    mcl tabletop lowdata --out data/tabletop [--n-source 1000 --target-fraction 0.1 --n-eval 100]
    mcl tabletop sample --out docs/samples_tabletop.png
"""
from __future__ import annotations

import argparse
import sys
import json
import os
import time

import numpy as np

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mclcore.data.tabletop.spec import EMBODIMENTS, TASKS

    sub = parser.add_subparsers(dest="tabletop_command", required=True)
    g = sub.add_parser("generate", help="write expert episodes of one task and embodiment to an HDF5 file")
    g.add_argument("--out", required=True, help="HDF5 file to write (atomically)")
    g.add_argument("--task", default="place_a2b_left", choices=TASKS)
    g.add_argument("--embodiment", default="arm_a", choices=EMBODIMENTS)
    g.add_argument("-n", type=int, default=100, help="number of episodes (default 100)")
    g.add_argument("--T", type=int, default=32, help="actions per episode; frames are T+1 (default 32)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--noise", type=float, default=0.003, help="expert action noise std in metres (default 0.003)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")

    p = sub.add_parser("preview", help="a PNG grid of frames from an episode file")
    p.add_argument("--data", required=True, help="episode file")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--episodes", type=int, default=4, help="rows: the first this many episodes (default 4)")
    p.add_argument("--frames", type=int, default=8, help="columns: evenly spaced frames (default 8)")
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling (default 4)")
    p.add_argument("--trajectory", action="store_true", help="draw the end-effector track on the last column")

    lo = sub.add_parser("lowdata", help="write the low-data target-embodiment setting (4 files + manifest.json)")
    lo.add_argument("--out", required=True, help="folder")
    lo.add_argument("--n-source", type=int, default=1000)
    lo.add_argument("--target-fraction", type=float, default=0.1)
    lo.add_argument("--n-eval", type=int, default=100)
    lo.add_argument("--source", default="arm_a", choices=EMBODIMENTS)
    lo.add_argument("--target", default="arm_b", choices=EMBODIMENTS)
    lo.add_argument("--T", type=int, default=32)
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="the sample figure: one episode per embodiment (same scene and actions)")
    s.add_argument("--out", default="docs/samples_tabletop.png")
    s.add_argument("--task", default="place_a2b_left", choices=TASKS)
    s.add_argument("--seed", type=int, default=3)


def _grid(frames: np.ndarray, scale: int) -> np.ndarray:
    """(R, C, H, W, 3) uint8 -> one image with 2-pixel white gutters, each frame upscaled by ``scale``."""
    r, c, h, w, _ = frames.shape
    big = frames.repeat(scale, 2).repeat(scale, 3)
    g = 2
    out = np.full((r * (h * scale + g) - g, c * (w * scale + g) - g, 3), 255, dtype=np.uint8)
    for i in range(r):
        for j in range(c):
            y, x = i * (h * scale + g), j * (w * scale + g)
            out[y:y + h * scale, x:x + w * scale] = big[i, j]
    return out


def _preview(args) -> int:
    import matplotlib.image

    from mclcore.data.tabletop.episodes import _open_checked
    from mclcore.data.tabletop.render import draw_trajectory

    if args.episodes < 1 or args.frames < 1 or args.scale < 1:
        print("mcl tabletop preview: --episodes, --frames and --scale must be >= 1", file=sys.stderr)
        return 2
    f, attrs = _open_checked(args.data)
    with f:
        n = min(args.episodes, f["frames"].shape[0])
        T = int(attrs["T"])
        cols = np.unique(np.linspace(0, T, min(args.frames, T + 1)).round().astype(int))
        frames = f["frames"][:n][:, cols]
        states = f["states"][:n]
    if args.trajectory:
        frames = frames.copy()
        for i in range(n):
            frames[i, -1] = draw_trajectory(frames[i, -1], states[i])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    matplotlib.image.imsave(args.out, _grid(frames, args.scale))
    print(f"wrote {args.out}: {n} episodes x frames {cols.tolist()}")
    return 0


def _sample(args) -> int:
    """Both embodiments on the same scene and expert noise (the paired episodes of one seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mclcore.data.tabletop.episodes import simulate_episode
    from mclcore.data.tabletop.render import draw_trajectory, render_states
    from mclcore.data.tabletop.spec import EMBODIMENTS

    cols = [0, 4, 8, 12, 16, 20, 24, 32]
    fig, axes = plt.subplots(len(EMBODIMENTS), len(cols) + 1, figsize=(1.25 * (len(cols) + 1), 1.4 * len(EMBODIMENTS)))
    for r, emb in enumerate(EMBODIMENTS):
        states, _, env = simulate_episode(args.task, emb, args.seed)
        n = len(states)
        frames = render_states(states, np.repeat(env.assets[None], n, 0), np.repeat(env.sizes[None], n, 0),
                               np.repeat(env.yaw[None], n, 0), emb)
        for c, t in enumerate(cols):
            axes[r, c].imshow(frames[t])
            axes[r, c].set_title(f"t={t}", fontsize=7)
        big = frames[-1].repeat(4, 0).repeat(4, 1)
        axes[r, -1].imshow(draw_trajectory(big, states, width=1.5))
        axes[r, -1].set_title("EE track", fontsize=7)
        axes[r, 0].set_ylabel(emb, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{args.task}, seed {args.seed}: same scene and actions, two embodiments", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=150)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


def run(args) -> int:
    from mclcore.data.tabletop.episodes import generate_episodes, load_episodes, make_lowdata_splits

    cmd = args.tabletop_command
    if cmd == "generate":
        t0 = time.perf_counter()
        path = generate_episodes(args.out, args.n, args.task, args.embodiment, T=args.T, seed=args.seed,
                                 noise=args.noise, progress=not args.no_progress)
        dt = time.perf_counter() - t0
        import h5py

        with h5py.File(path, "r") as f:
            rate = float(np.mean(f["success"][()]))
        print(json.dumps({"out": path, "episodes": args.n, "T": args.T, "success_rate": rate,
                          "seconds": round(dt, 2)}))
        return 0
    if cmd == "preview":
        return _preview(args)
    if cmd == "lowdata":
        paths = make_lowdata_splits(args.out, n_source=args.n_source, target_fraction=args.target_fraction,
                                    n_eval=args.n_eval, source=args.source, target=args.target, T=args.T,
                                    seed=args.seed, progress=not args.no_progress)
        rates = {k: float(load_episodes(p)["success"].mean()) for k, p in paths.items()}
        print(json.dumps({"files": paths, "success_rate": rates}))
        return 0
    if cmd == "sample":
        return _sample(args)
    raise SystemExit(f"mcl tabletop: unknown command {cmd!r}")
