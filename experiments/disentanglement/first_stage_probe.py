"""What the first stage of a trained EncDiff / MDDiff run keeps: the ceiling beside its concept code (issue #22).

The diffusion model of EncDiff and MDDiff denoises the first stage's pre-quantisation latent (3 x 16 x 16 = 768
numbers per 64 x 64 image), and its concept code is learnt only through that denoising loss: a factor the latent
does not carry cannot be asked of the code. This measures, on fixed draws of the run's twin (the same images for
every run of a dataset):

* ``recon_mse``: the first stage's reconstruction MSE on [0, 1] (512 images; a VAE run's ``recon_mse`` in its
  metrics.json is the same quantity for its posterior mean);
* ``probe``: per varying factor, the test accuracy of a linear probe (multinomial logistic regression on
  standardised features) of the flattened latent (1000 train / 500 test images). A linear probe is the weaker
  reader: the latent holds at least this much. The code's own per-factor numbers (``dci_informativeness_per_factor``
  in metrics.json) come from DCI's gradient-boosted trees on the 20-dimensional code, so the two are a ceiling and
  a reading, not a matched pair.

    python experiments/disentanglement/first_stage_probe.py RUN [RUN ...]

writes ``RUN/first_stage_probe.json`` (atomically) for each run folder and prints it; cpu_long_report.py puts it
beside the code's per-factor informativeness.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))          # _runs, also when imported

FILE = "first_stage_probe.json"
N_RECON, N_TRAIN, N_TEST = 512, 1000, 500
SEED = 123          # the draws: the same images for every run of a dataset


def probe(run: str, sample_scale: float = 1.0) -> dict:
    """The measurements of the module doc for the run folder ``run`` (its checkpoint.pt); ``sample_scale`` scales
    the three image counts (tests)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from _runs import load_diffusion_run
    from mclcore.data import to_float_nchw

    cfg, model, ds, _ = load_diffusion_run(run, "first_stage_probe.py")
    fs = model.first_stage
    n_recon, n_train, n_test = (max(16, round(n * sample_scale)) for n in (N_RECON, N_TRAIN, N_TEST))
    idx = ds.sample_index(n_recon + n_train + n_test, np.random.default_rng(SEED))
    x = to_float_nchw(ds.observations_at(idx))                                      # (N, 3, 64, 64) in [0, 1]
    factors = ds.index_to_factors(idx)                                              # (N, F)
    with torch.no_grad():
        # MDDiff's decoder reads u tokens; the plain reconstruction is its u = None path, as in its first stage
        rec = torch.cat([fs.to_image(fs(x[i:min(i + 128, n_recon)])[0].float()) for i in range(0, n_recon, 128)])
        lat = torch.cat([fs.encode(x[i:i + 256]).flatten(1) for i in range(0, len(x), 256)]).numpy()  # (N, 768)
    tr, te = slice(n_recon, n_recon + n_train), slice(n_recon + n_train, None)
    sc = StandardScaler().fit(lat[tr])
    acc = {}
    for j in ds.varying_factors:
        clf = LogisticRegression(max_iter=2000).fit(sc.transform(lat[tr]), factors[tr, j])
        acc[ds.factor_names[j]] = float(clf.score(sc.transform(lat[te]), factors[te, j]))
    return {"model": cfg.model, "dataset": cfg.data.dataset, "seed": cfg.seed,
            "recon_mse": float((rec - x[:n_recon]).pow(2).mean()), "latent_dims": int(lat.shape[1]), "probe": acc,
            "samples": {"recon": n_recon, "train": n_train, "test": n_test, "seed": SEED}}


def main(argv=None) -> int:
    from _runs import per_run_main

    return per_run_main(argv, __doc__.split("\n")[0], "first_stage_probe.py", probe, FILE, json.dumps,
                        "scale the image counts (default 1: 512 / 1000 / 500; tests use less)")


if __name__ == "__main__":
    sys.exit(main())
