"""How much a trained EncDiff / MDDiff run uses its concept code (issue #22): the conditioning gap, per range of t.

The concept encoder learns only through the denoising loss, and only where the denoiser's prediction depends on the
code (:mod:`mclcore.metrics.conditioning`). On fixed draws of the run's twin (the same images, t and noise for
every run of a dataset) this measures, paired per image:

Every gap is a squared error (``loss="mse"``, the DDPM simple loss) whatever loss the run trained with, so runs
trained with the L1 loss are read on the same scale as the others.

* ``denoiser``: the denoising error with the image's own concept tokens vs another image's (a random derangement),
  in 10 equal ranges of t and over uniform t (the training loss); ``rel_gap`` is the share of a code-blind loss
  that the code removes. A gap near 0 over most of t means the encoder receives little signal there.
* ``factors``: per varying factor f, pairs of images that differ in f alone (f moved to another class, the rest
  uniform), the image denoised with its partner's code instead of its own:

  - ``footprint``: the pair's latent distance, mean (z_0 - z_0')^2, i.e. how much of the denoising loss factor f
    can put at stake at all;
  - ``code_shift``: the pair's code distance, mean (s - s')^2, over the same for random pairs;
  - ``gap``, ``lo``, ``hi``, ``rel_gap``: the conditioning gap with the partner's code (over uniform t), and
    ``gap_by_t`` its mean in each of the 10 ranges of t;
  - ``resolution`` = (gap_f / gap_random) / (footprint_f / footprint_random): the gap the code produces per unit
    of latent change, relative to random pairs. About 1: the denoiser's code separates images differing in f as
    much as their latents differ (as it does for random pairs); near 0: the code does not resolve f. A descriptive
    ratio (the gap is not linear in the latent distance), for comparing factors and runs on the same draws; None
    (and code_shift None) where random pairs give a zero denominator, as an untrained constant code does.

  ``random`` holds the same quantities for random pairs (the denominators).
* ``decoder`` (MDDiff only): the same for its u-conditioned decoder, the pixel MSE on [0, 1] of D(z_0, T(s_i)) vs
  D(z_0, T(s_j)) against x_i: what the generator g(z, u) that MCL regularises takes from u.

    python experiments/disentanglement/code_use.py RUN [RUN ...]

writes ``RUN/code_use.json`` (atomically) for each run folder and prints a one-line summary; cpu_long_report.py
tabulates it.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))          # _runs, also when imported

from _runs import CODE_USE_FILE as FILE  # noqa: E402  (the file name the reports read)
N_IMAGES, N_PAIRS, BUCKETS = 512, 256, 10
SEED = 321          # images, t, noise and derangement: the same for every run of a dataset


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def code_use(run: str, sample_scale: float = 1.0) -> dict:
    """The measurements of the module doc for the run folder ``run`` (its checkpoint.pt, stage 1 finished);
    ``sample_scale`` scales the image and pair counts (tests)."""
    import torch

    from _runs import load_diffusion_run
    from mclcore.data import to_float_nchw
    from mclcore.metrics.conditioning import conditioning_gap, derangement
    from mclcore.metrics.stats import summarize

    cfg, model, ds, done = load_diffusion_run(run, "code_use.py", need="stage1")
    n, n_pairs = (max(16, round(c * sample_scale)) for c in (N_IMAGES, N_PAIRS))
    rng = np.random.default_rng(SEED)
    x = to_float_nchw(ds.observations_at(ds.sample_index(n, rng)))                          # (n, 3, 64, 64)
    g = torch.Generator().manual_seed(SEED)

    def encode(images):                                                                      # -> z0, s
        return (torch.cat([model.latents(images[i:i + 256]) for i in range(0, len(images), 256)]),
                torch.cat([model.concepts(images[i:i + 256]) for i in range(0, len(images), 256)]))

    def pair_stats(xa, xb) -> dict:             # image a denoised with b's code; distances of the pair
        (za, sa), (zb, sb) = encode(xa), encode(xb)
        r = conditioning_gap(model.eps, model.diffusion, za, model.tokens(sa), other_context=model.tokens(sb),
                             buckets=BUCKETS, loss="mse", generator=g)
        return {"footprint": float((za - zb).pow(2).mean()), "code_dist": float((sa - sb).pow(2).mean()),
                **r["all"], "gap_by_t": [b["gap"] for b in r["buckets"]]}

    with torch.no_grad():
        z0, s = encode(x)                                                                    # (n, 3, 16, 16), (n, K)
        out = {"model": cfg.model, "dataset": cfg.data.dataset, "seed": cfg.seed, "phases": list(done),
               "samples": {"images": n, "pairs_per_factor": n_pairs, "buckets": BUCKETS, "seed": SEED},
               "denoiser": conditioning_gap(model.eps, model.diffusion, z0, model.tokens(s), buckets=BUCKETS,
                                            loss="mse", generator=g)}
        fa = ds.sample_factors(n_pairs, rng)
        rand = pair_stats(to_float_nchw(ds.observations(fa)), to_float_nchw(ds.observations(ds.sample_factors(
            n_pairs, rng))))
        out["random"] = rand
        out["factors"] = {}
        for f in ds.varying_factors:
            fa = ds.sample_factors(n_pairs, rng)
            fb = fa.copy()
            fb[:, f] = (fa[:, f] + rng.integers(1, ds.factor_sizes[f], n_pairs)) % ds.factor_sizes[f]
            r = pair_stats(to_float_nchw(ds.observations(fa)), to_float_nchw(ds.observations(fb)))
            r["code_shift"] = _ratio(r.pop("code_dist"), rand["code_dist"])
            # None where a random pair gives no gap, no footprint or no code change (an untrained run's constant
            # code): a ratio to nothing is not a measurement
            r["resolution"] = _ratio(_ratio(r["gap"], rand["gap"]), _ratio(r["footprint"], rand["footprint"]))
            out["factors"][ds.factor_names[f]] = r
        if cfg.model == "mddiff":
            other = s[derangement(n, g)]
            errs = []
            for code in (s, other):                                                           # (n,) each
                rec = torch.cat([model.first_stage.to_image(model.decode(z0[i:i + 128], code[i:i + 128]).float())
                                 for i in range(0, n, 128)])
                errs.append((rec - x).pow(2).mean((1, 2, 3)).double().numpy())
            sm = summarize(errs[1] - errs[0])
            out["decoder"] = {"own": float(errs[0].mean()), "other": float(errs[1].mean()), "gap": sm["mean"],
                              "lo": sm["lo"], "hi": sm["hi"],
                              "rel_gap": float((errs[1].mean() - errs[0].mean()) / errs[1].mean())}
    return out


def summary(r: dict) -> str:
    d = r["denoiser"]
    line = (f"denoiser gap {d['all']['gap']:.4g} [{d['all']['lo']:.4g}, {d['all']['hi']:.4g}] "
            f"(rel {d['all']['rel_gap']:.3f}); rel by t-range: "
            + " ".join(f"{b['rel_gap']:.3f}" for b in d["buckets"]))
    line += "; resolution " + " ".join(f"{k} " + ("n/a" if v["resolution"] is None else f"{v['resolution']:.2f}")
                                       for k, v in r["factors"].items())
    if "decoder" in r:
        line += f"; decoder gap {r['decoder']['gap']:.4g} (rel {r['decoder']['rel_gap']:.3f})"
    return line


def main(argv=None) -> int:
    from _runs import per_run_main

    return per_run_main(argv, __doc__.split("\n")[0], "code_use.py", code_use, FILE, summary,
                        f"scale the image and pair counts (default 1: {N_IMAGES} / {N_PAIRS}; tests use less)")


if __name__ == "__main__":
    sys.exit(main())
