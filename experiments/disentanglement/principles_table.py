"""The "Principles side by side (image CPU preset)" table: beta-VAE and the four principle models of issue #23 on one
dataset, several seeds, from the run folders ``mcl train <model> ... --out ROOT`` wrote.

For each finished run (``metrics.json`` present) it loads ``checkpoint.pt``, encodes with the study's representation
(posterior mean; qlae: z_c) and adds what the study's evaluation does not compute: MIG and SAP (disentanglement_lib
protocol at the run's ``eval.sample_scale``, seed = the run's seed), InfoMEC (:func:`mclcore.metrics.infomec` of the
codes of ``--infomec-samples`` random grid points, one fixed draw per dataset, against their factor classes) and the
compositional contrast C of the decoder's logits at 8 of those codes (compvae's regulariser, measured on every
model), and on the same codes MCC and LPS: MCC (:func:`mclcore.metrics.mcc`, Pearson, the method of the synthetic
study's ``mcc`` column) between the varying factors' classes as numbers (as InfoMEC gets them) and the K = 20 codes;
with 7 factors and 20 codes mcc's own rectangular matching applies (Hungarian on |corr|, each factor matched to a
distinct code dimension, mean over the 7 pairs). LPS (:func:`mclcore.metrics.lps_from_codes`, MLP regressors,
seed = the run's seed; its ``lps.score``, as ``eval_metrics`` of the synthetic principles study). Either is None
where it is undefined (a constant code dimension); a cell then averages the seeds that have it and says ``(n=..)``.
These go to ``<run>/extra_metrics.json`` (a cached file that lacks ``mcc``/``lps`` gets them added, the other values
kept as they are); FactorVAE and DCI are read from ``metrics.json``. Then per model the mean and 95%
percentile-bootstrap interval over seeds (:func:`mclcore.metrics.stats.summarize`), and the paired differences
against ``--baseline`` on the seeds both have. Copies each run's ``metrics.json`` (and
``extra_metrics.json``) into ``--copy-to/<run>/``, its figures as half-size JPEGs into ``<run>/figures/``.

    python experiments/disentanglement/principles_table.py /tmp/img_principles --dataset mpi3d \
        --also vae_beta1=/tmp/img_vae1:compvae --copy-to experiments/disentanglement/results/principles \
        --out experiments/disentanglement/results/principles/table.md

``--from-results`` rebuilds the tables from such a committed folder alone (tests/studies/test_disentangle_principles
checks that the committed tables are exactly that).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

MODELS = ("betavae", "compvae", "mmdvae", "qlae", "intervae")
COLUMNS = (("factorvae", "FactorVAE"), ("dci", "DCI dis."), ("mig", "MIG"), ("sap", "SAP"), ("infomec_m", "InfoM"),
           ("infomec_e", "InfoE"), ("infomec_c", "InfoC"), ("comp_contrast", "C (decoder)"),
           ("comp_contrast_norm", "C/‖J‖² (decoder)"), ("mcc", "MCC"), ("lps", "LPS"))


def _load(run_dir: str):
    from mclcore._io import load_checkpoint
    from mclcore.studies.disentangle import run as study
    from mclcore.studies.disentangle.config import RunConfig
    from mclcore.train.config import from_dict

    ck = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    cfg = from_dict(RunConfig, ck["config"])
    model = study.build_model(cfg)
    model.load_state_dict(ck["model"])
    return model.eval(), cfg


def decoder_contrast(model, cfg, codes: np.ndarray) -> dict:
    """Compositional contrast of the decoder's logits w.r.t. the latent it is fed (qlae: z_q; intervae: eps through
    the head) at ``codes`` (R, K), mean over rows: raw C and C / ||J||_F^2 (scale-free, in [0, (K - 1) / 2]; raw C
    grows with the square of the decoder's gain, which differs between latent scales, e.g. qlae's codes in
    [-0.5, 0.5] vs N(0, I) latents). None for the diffusion models (mddiff, encdiff): their image is a DDIM
    sample from noise given the code, not a deterministic function of it, so C is undefined."""
    import torch

    from mclcore.losses.comp_contrast import comp_contrast_func
    from mclcore.studies.disentangle.config import DIFFUSION_MODELS

    if cfg.model in DIFFUSION_MODELS:
        return {"comp_contrast": None, "comp_contrast_norm": None}

    z = torch.as_tensor(codes, dtype=torch.float32)
    if cfg.model == "qlae":
        z = model.quantize(z).detach()
    g = (lambda e: model.decoder(model.head(e))) if cfg.model == "intervae" else model.decoder
    return {"comp_contrast": float(comp_contrast_func(g, z).mean().detach()),
            "comp_contrast_norm": float(comp_contrast_func(g, z, normalize="jacobian").mean().detach())}


def code_metrics(factors: np.ndarray, codes: np.ndarray, seed: int) -> dict:
    """MCC (Pearson; factors (N, F) vs codes (N, K), K >= F: mcc's Hungarian matching of each factor to a distinct
    code dimension) and LPS (MLP, ``seed``) of codes; None where undefined (a constant column)."""
    from mclcore.metrics import lps_from_codes, mcc

    out = {}
    try:
        out["mcc"] = mcc(factors, codes, "pearson")["mcc.mean"]
    except ValueError:
        out["mcc"] = None
    try:
        out["lps"] = lps_from_codes(codes, regressor="mlp", seed=seed)["lps.score"]
    except ValueError:
        out["lps"] = None
    return out


def extra_metrics(run_dir: str, infomec_samples: int) -> dict:
    """MIG, SAP, InfoMEC, decoder contrast, MCC, LPS of a finished run (cached in ``extra_metrics.json``; only what
    the cached file lacks is computed)."""
    path = os.path.join(run_dir, "extra_metrics.json")
    out = json.load(open(path)) if os.path.exists(path) else None
    if out is not None and all(k in out for k in ("comp_contrast_norm", "mcc", "lps")):
        return out
    from mclcore._io import write_json_atomic
    from mclcore.metrics import evaluate as eval_metrics, infomec
    from mclcore.studies.disentangle import run as study
    from mclcore.studies.disentangle.evaluate import representation

    model, cfg = _load(run_dir)
    dataset = study.load_dataset(cfg)
    rep = representation(model, cfg, "cpu")
    rng = np.random.default_rng([12345, infomec_samples])          # the same points for every run of a dataset
    idx = dataset.sample_index(infomec_samples, rng)
    factors = dataset.index_to_factors(idx)[:, list(dataset.varying_factors)]
    codes = None
    if out is None:
        scores, _ = eval_metrics(dataset, rep, ("mig", "sap"), seed=cfg.seed, sample_scale=cfg.eval.sample_scale)
        codes = np.asarray(rep(dataset.observations_at(idx)), dtype=np.float64)          # uint8 images -> (N, K)
        im = infomec(factors, codes, discrete_sources=True)
        out = {"mig": float(scores["mig.score"]), "sap": float(scores["sap.score"]),
               "infomec_m": im["infomec.m"], "infomec_e": im["infomec.e"], "infomec_c": im["infomec.c"],
               "infomec_active": im["infomec.active"], "infomec_samples": infomec_samples,
               "mig_sap_sample_scale": cfg.eval.sample_scale}
    if "mcc" not in out or "lps" not in out:
        if out.get("infomec_samples", infomec_samples) != infomec_samples:
            raise ValueError(f"{path}: cached InfoMEC used {out['infomec_samples']} points, not {infomec_samples}")
        if codes is None:
            codes = np.asarray(rep(dataset.observations_at(idx)), dtype=np.float64)
        out.update(code_metrics(np.asarray(factors, dtype=np.float64), codes, cfg.seed))
    if "comp_contrast_norm" not in out:
        codes8 = np.asarray(rep(dataset.observations_at(idx[:8])), dtype=np.float64)
        out.update(decoder_contrast(model, cfg, codes8))
    write_json_atomic(out, path, indent=1, sort_keys=False)
    return out


def _copy_figures(run: str, dst: str) -> int:
    """The run's figures as half-size JPEGs (collect_table1.copy_figures, next to this file)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    from collect_table1 import copy_figures

    return copy_figures(run, dst)


def fmt(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


def main(argv=None) -> int:
    from mclcore.metrics.stats import bootstrap_ci, summarize

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root")
    p.add_argument("--dataset", default="mpi3d")
    p.add_argument("--preset", default="cpu-smoke")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--baseline", default="betavae")
    p.add_argument("--infomec-samples", type=int, default=2000)
    p.add_argument("--copy-to", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--also", action="append", default=[], metavar="LABEL=ROOT:MODEL",
                   help="extra rows labelled LABEL from MODEL's runs under ROOT (e.g. a --set variant in its own --out)")
    p.add_argument("--from-results", action="store_true",
                   help="ROOT is a --copy-to folder (committed metrics.json + extra_metrics.json, no checkpoints): "
                        "rebuild the tables from those files; --also labels are then read from LABEL-<run> there")
    a = p.parse_args(argv)
    rows: dict[str, dict[int, dict]] = {}
    sources = [(m, a.root, m) for m in a.models]
    for spec in a.also:
        label, rest = spec.split("=", 1)
        root, model = rest.rsplit(":", 1)
        sources.append((label, root, model))
    labels = [label for label, _, _ in sources]
    for label, root, model in sources:
        if a.from_results:
            root = a.root
        for name in sorted(os.listdir(root)):
            prefix = f"{model}-{a.dataset}-{a.preset}-seed"
            if a.from_results and label != model:
                prefix = f"{label}-{prefix}"
            run = os.path.join(root, name)
            if not name.startswith(prefix) or not os.path.exists(os.path.join(run, "metrics.json")):
                continue
            seed = int(name[len(prefix):])
            res = dict(json.load(open(os.path.join(run, "metrics.json"))))
            if a.from_results:
                with open(os.path.join(run, "extra_metrics.json")) as f:
                    res.update(json.load(f))
            else:
                res.update(extra_metrics(run, a.infomec_samples))
            rows.setdefault(label, {})[seed] = res
            if a.copy_to and not a.from_results:
                dst = os.path.join(a.copy_to, name if label == model else f"{label}-{name}")
                os.makedirs(dst, exist_ok=True)
                for f in ("metrics.json", "extra_metrics.json"):
                    shutil.copyfile(os.path.join(run, f), os.path.join(dst, f))
                _copy_figures(run, os.path.join(dst, "figures"))
    lines = ["| model | n | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for model in labels:
        runs = rows.get(model, {})
        if not runs:
            continue
        cells = []
        for key, _ in COLUMNS:
            vals = [runs[k].get(key) for k in sorted(runs)]
            s = summarize([v for v in vals if v is not None])
            if s["n"] == 0:
                cells.append("n/a")
                continue
            cell = f"{fmt(s['mean'])} [{fmt(s['lo'])}, {fmt(s['hi'])}]" if s["n"] > 1 else fmt(s["mean"])
            cells.append(cell + (f" (n={s['n']})" if s["n"] < len(vals) else ""))
        lines.append(f"| {model} | {len(runs)} | " + " | ".join(cells) + " |")
    base = rows.get(a.baseline, {})
    lines += ["", f"Paired differences, model - {a.baseline} (same seeds), mean [95% bootstrap interval]:", "",
              "| model | seeds | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for model in labels:
        if model == a.baseline or model not in rows:
            continue
        seeds = sorted(set(rows[model]) & set(base))
        if len(seeds) < 2:
            continue
        cells = []
        for key, _ in COLUMNS:
            pairs = [(rows[model][s].get(key), base[s].get(key)) for s in seeds]
            d = np.array([m - b for m, b in pairs if m is not None and b is not None], dtype=np.float64)
            if d.size == 0:
                cells.append("n/a")
                continue
            w = "+.3f" if abs(d).max() < 100 else "+.0f"
            if d.size < 2:
                cells.append(f"{d.mean():{w}} (n=1)")
                continue
            lo, hi = bootstrap_ci(d)
            cells.append(f"{d.mean():{w}} [{lo:{w}}, {hi:{w}}]" + (f" (n={d.size})" if d.size < len(seeds) else ""))
        lines.append(f"| {model} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
