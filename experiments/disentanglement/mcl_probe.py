"""Can a fresh critic read u from a trained MDDiff's mechanism, and through what? The readout's baselines (issue #22).

MDDiff's training logs the readout of its *own* critic (``mcl_diagnostics.json``: top-1 accuracy of u read from the
contrasted mechanism gradient, 0.88-0.91 at cpu-long against chance 0.03). That number has no baseline, and two
routes besides the generator's use of u can produce it:

* the critic sees u (``critic_input = "xzu"``, the default), so the generator term
  ``J_G(z, u)^T grad_x c(G(z, u), z, u)`` can carry u through ``grad_x c`` even when G ignores u (the
  ``shortcut_share`` of :mod:`mclcore.losses.diagnostics` counts only the direct term ``grad_z c``);
* z and u are not independent: MDDiff contrasts at z = the first-stage latent of the image and u = its concept code,
  so any function of z, a u-blind generator's mechanism gradient included, can tell u apart (the paper's
  population MCL objective draws (z, u) ~ p(z) p(u), App. B.2 Eq. (2); ``stages.mcl_pairing = "independent"``
  trains that way).

This probe measures each route on the run's frozen u-decoder ``g(z, u) = D(z, T(u))``: it trains a *fresh* MCL module
(critic and both heads, the same initialisation for every run) for ``STEPS`` steps, then reads u on
``EVAL_BATCHES`` held-out batches (:func:`mclcore.losses.diagnostics.readout`). Four probes per run, named
critic input / generator / pairing:

* ``xzu/own/paired``: training's setting (critic ``c(x, z, u)``, the run's G, z and u of the same image):
  training's readout re-measured from scratch;
* ``x/own/paired``: a critic that sees only ``x = g(z, u)``: the u-input route closed;
* ``x/own/independent``: the same with z taken from other images than u (both routes closed): u reaches the
  contrasted gradient only through G's dependence on u, the quantity MCL is meant to shape;
* ``x/blind/paired``: the u-blind generator ``g(z, u_bar)`` (u_bar: the mean code of 256 fixed images), z and u of the
  same image: what z alone gives away (the floor of ``x/own/paired``).

What MCL should raise, if it makes g(z, u) depend on u more, is ``x/own/independent`` (paired against the
λ_MCL = 0 arm). Defaults and why: z is the clean first-stage latent (``stages.mcl_z = "clean"``, training's default);
the optimiser is training's stage-2 AdamW (``stages.base_lr2`` x batch, its warm-up and weight decay) on the probe's
parameters only; 300 steps of batch 32 (the run's ``stages.batch_size``), where training's own readout had passed
0.8 at cpu-long (mcl_diagnostics.json, steps 200-300); the held-out batches are 8 x 32 rows, so chance is 1/32 (every
row its own condition). Batches, initialisation and u_bar are the same for every run of a dataset (``SEED``). Only
the probe trains; the model is frozen.

    python experiments/disentanglement/mcl_probe.py RUN [RUN ...]

writes ``RUN/mcl_probe.json`` (atomically) for each MDDiff run folder (stage 1 finished) and prints a one-line
summary; started again after a kill, it resumes after the last finished probe. mcl_dose_report.py tabulates it.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))          # _runs, also when imported

from _runs import MCL_PROBE_FILE as FILE  # noqa: E402  (the file name the reports read)
STEPS, EVAL_BATCHES, N_BAR = 300, 8, 256
PROBES = (("xzu", "own", "paired"), ("x", "own", "paired"), ("x", "own", "independent"), ("x", "blind", "paired"))
SEED = 321          # batches, the fresh module's initialisation, u_bar: the same for every run of a dataset


def train_probe(model, cfg, ds, critic_input: str, generator: str, pairing: str, steps: int, eval_batches: int,
                u_bar=None) -> dict:
    """Train one fresh MCL module on the frozen ``model``'s generator (``"own"``, or ``"blind"``: u replaced by
    ``u_bar`` inside G) with ``critic_input``, z and u of the same images (``"paired"``) or of different ones
    (``"independent"``); return its readout on ``eval_batches`` held-out batches (mean and per batch) and its
    training losses."""
    import torch

    from mclcore import MCL
    from mclcore.data import to_float_nchw
    from mclcore.losses.diagnostics import probe

    if generator not in ("own", "blind"):
        raise ValueError(f"generator: expected 'own' or 'blind', got {generator!r}")
    if pairing not in ("paired", "independent"):
        raise ValueError(f"pairing: expected 'paired' or 'independent', got {pairing!r}")
    st = cfg.stages
    if generator == "blind":
        def G(z, u):                                    # u-blind: the same code for every row, u unused
            return model.generator(z, u_bar.expand(len(z), -1))
    else:
        G = model.generator
    torch.manual_seed(SEED)
    mcl = MCL.from_config(dataclasses.replace(cfg.mcl, critic_input=critic_input), z_dim=model.latent_shape,
                          x_dim=(3, model.image_size, model.image_size), u_dim=model.num_concepts)
    opt = torch.optim.AdamW(mcl.parameters(), lr=st.base_lr2 * st.batch_size, weight_decay=st.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, st.warmup2)))
    rng = np.random.default_rng([SEED, 1])              # the training batches, then the held-out ones

    def images():
        return to_float_nchw(ds.observations_at(ds.sample_index(st.batch_size, rng)))    # (B, 3, 64, 64)

    def batch():                                        # z (B, 3, 16, 16), u (B, K)
        x = images()
        x_z = x if pairing == "paired" else images()    # independent: z of other images than u's
        with torch.no_grad():
            return model.latents(x_z), model.concepts(x)

    return probe(mcl, opt, sched, lambda: (G, *batch()), lambda: (G, *batch()), steps, eval_batches,
                 name=f"{critic_input}/{generator}/{pairing}")


def mcl_probe(run: str, sample_scale: float = 1.0) -> dict:
    """The probes of the module doc for the MDDiff run folder ``run``; ``sample_scale`` scales the step and
    held-out batch counts (tests). Each probe seeds its own draws, so a killed measurement resumes after its last
    finished probe (``RUN/mcl_probe.partial.json``; :func:`mclcore._io.resumable_cells`, keyed by the checkpoint's
    digest and the sample counts)."""
    import torch

    from _runs import load_diffusion_run
    from mclcore._io import file_digest, resumable_cells
    from mclcore.data import to_float_nchw

    cfg, model, ds, done = load_diffusion_run(run, "mcl_probe.py", need="stage1")
    if cfg.model != "mddiff":
        raise ValueError(f"run: {run!r} is an {cfg.model} run; mcl_probe.py reads MDDiff runs (a u-decoder)")
    for p in model.parameters():
        p.requires_grad_(False)
    steps = max(2, round(STEPS * sample_scale))
    n_eval = max(2, round(EVAL_BATCHES * sample_scale))
    rng = np.random.default_rng(SEED)
    with torch.no_grad():
        x = to_float_nchw(ds.observations_at(ds.sample_index(N_BAR, rng)))
        u_bar = model.concepts(x).mean(0, keepdim=True)                                     # (1, K)
    out = {"model": cfg.model, "dataset": cfg.data.dataset, "seed": cfg.seed, "phases": list(done),
           "lambda_mcl": cfg.stages.lambda_mcl, "critic": cfg.mcl.critic,
           "samples": {"steps": steps, "batch_size": cfg.stages.batch_size, "eval_batches": n_eval,
                       "u_bar_images": N_BAR, "seed": SEED},
           "probes": {}}
    known = {"/".join(q): q for q in PROBES}
    key = {"checkpoint_sha256": file_digest(os.path.join(run, "checkpoint.pt")), "samples": out["samples"]}
    out["probes"] = resumable_cells(os.path.join(run, FILE), key, list(known),
                                    lambda name: train_probe(model, cfg, ds, *known[name], steps, n_eval, u_bar))
    return out


def summary(r: dict) -> str:
    return "; ".join(f"{k} acc {p['acc']:.3f} (generator term {p['acc_generator']:.3f}, chance {p['chance']:.3f})"
                     for k, p in r["probes"].items())


def main(argv=None) -> int:
    from _runs import per_run_main

    return per_run_main(argv, __doc__.split("\n")[0], "mcl_probe.py", mcl_probe, FILE, summary,
                        f"scale the step and held-out batch counts (default 1: {STEPS} / {EVAL_BATCHES}; "
                        "tests use less)")


if __name__ == "__main__":
    sys.exit(main())
