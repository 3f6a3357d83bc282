"""The principle models' part of the synthetic study (issue #23): building them from a TrainConfig, validating
their TrainConfig fields, their result-row fields, and the extra evaluation metrics (LPS, InfoMEC) of any model.
The models themselves and every design assumption: :mod:`mclcore.models.principles`.

TrainConfig fields (none of these defaults was tuned on this study):

    mmd_weight: weight of MMD^2 in ``mmdvae`` (1000: the reconstruction is 50 x the squared error at
        decoder_var 0.01, so the WAE's 10 on a unit-scale error is ~500-1000 here). mmd_kernel: ``"imq"``
        (default, the WAE's) or ``"rbf"``. mmd_bandwidths: the RBF mixture's bandwidths (0.5, 1, 2, 4).
        mmd_scales: the IMQ's scales of C = 2 dz (0.1 ... 10, the WAE's). mmd_prior: the factorised prior
        sampled, ``"gaussian"`` (default), ``"laplace"`` or ``"uniform"`` (unit variance each). mmd_rows: codes
        of each batch (and prior samples) the MMD is estimated on (128; 0: the batch): unbiased either way, and
        the whole batch cost 2.6x MD-VAE's training time in the quick setting (module doc of principles).
    qlae_values: codebook values per latent dimension (10, the paper's). qlae_range: the codebook starts evenly
        on [-r, r] (0.5). qlae_quant_weight, qlae_commit_weight: codebook and commitment losses (10 each, times
        the model's 1 / (2 decoder_var); the paper's 0.01 let the encoder run away from the codebook here: see
        "qlae" in mclcore/models/principles.py). qlae_weight_decay: AdamW weight decay on the encoder and decoder
        (0.1, the paper's "unusually high" one; lr stays ``lr``).
    comp_lambda: weight of the compositional contrast C(z) in ``compvae`` (0.1). comp_beta: its KL weight
        (1: a plain VAE, the contrast is the principle under test). comp_rows: rows of each batch C is
        estimated on (64; 0: all; the batch is a random permutation, so the estimate is unbiased).
    inter_prob: probability that an ``intervae`` member intervenes on one concept at a step (0.5).
Evaluation: eval_metrics: extra columns of every row, any of ``"lps"`` (Latent Predictability Score of the
    scored codes, MLP regressors: columns ``lps``, ``lps_max``), ``"lps_linear"`` (the same with least
    squares; same columns, so not both), ``"infomec"`` (InfoM / InfoE / InfoC of the codes against the true
    z: ``infomec_m``, ``infomec_e``, ``infomec_c``) and ``"dci_mig_sap"`` (``dci_d``, ``dci_c`` with lasso
    regressors, ``mig``, ``sap`` against the true z cut into 20 equal-width bins per dimension, as
    disentanglement_lib treats continuous factors; DCI and SAP fitted on the first half of the evaluation rows and
    scored on the second; SAP in its continuous-factor form, the R^2 of each code for each binned factor: with 20
    classes the discrete form's single-threshold classifiers score even the true z near 0.01), on the evaluation
    split; ``"factorvae"`` (``factorvae``, the eval accuracy, and ``factorvae_train``: the FactorVAE score on
    fresh draws of the true process, :func:`factorvae_synthetic`). Default none: the study's other presets keep
    their cost;
    ``--preset principles`` turns them on. They draw no random numbers of training and change no other number.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mclcore.data.synthetic import derive_seed
from mclcore.losses.mmd import KERNELS as MMD_KERNELS, PRIORS as MMD_PRIORS
from mclcore.models.principles import (PRINCIPLE_MODELS, StackedCompVAE, StackedInterVAE, StackedMMDVAE,
                                       StackedQLAE)

__all__ = ["PRINCIPLE_MODELS", "EVAL_METRICS", "FACTORVAE_PROTOCOL", "principle_model", "principle_row",
           "eval_metrics", "member_encoder", "factorvae_synthetic", "validate_principle_fields"]

# Extra evaluation metrics a row can carry (TrainConfig.eval_metrics): the Latent Predictability Score of the
# codes (MLP regressors, or least squares), InfoMEC, DCI / MIG / SAP of the codes against the true z
# (mclcore.metrics) and the FactorVAE score on fresh draws of the true process.
EVAL_METRICS = ("lps", "lps_linear", "infomec", "dci_mig_sap", "factorvae")
# The FactorVAE protocol of the "factorvae" column (mclcore.metrics.factorvae): disentanglement_lib's, unreduced
# (batch 64, 10,000 train / 5,000 eval votes, 10,000-sample global variance, prune std < 0.05). Cost: 2.0 CPU s per
# member at dz = 5 (1 thread, 2-core AMD EPYC VM, 2026-12), ~70 CPU s over the principles preset's 35 members.
FACTORVAE_PROTOCOL = dict(batch_size=64, num_train=10000, num_eval=5000, num_variance_estimate=10000,
                          prune_threshold=0.05)
_FACTORVAE = 21          # derive_seed stream tag of the FactorVAE draws (data: 1-4, training: 11-13)


def validate_principle_fields(cfg, bad) -> None:
    """``bad(name, expected)`` (raises) for the first invalid principle field of the TrainConfig ``cfg``."""
    for name, allowed in (("mmd_kernel", MMD_KERNELS), ("mmd_prior", MMD_PRIORS)):
        if getattr(cfg, name) not in allowed:
            bad(name, f"one of {allowed}")
    for name, lo in (("qlae_values", 2), ("comp_rows", 0), ("mmd_rows", 0)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            bad(name, f"an integer >= {lo}")
    if cfg.mmd_rows == 1:
        bad("mmd_rows", "0 (the whole batch) or an integer >= 2")
    for name in ("mmd_weight", "qlae_quant_weight", "qlae_commit_weight", "qlae_weight_decay", "comp_lambda",
                 "comp_beta", "inter_prob"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            bad(name, "a finite number >= 0")
    if cfg.inter_prob > 1:
        bad("inter_prob", "a probability in [0, 1]")
    for name in ("mmd_bandwidths", "mmd_scales"):
        v = getattr(cfg, name)
        if not isinstance(v, tuple) or not v or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                    or not math.isfinite(x) or x <= 0 for x in v):
            bad(name, "a non-empty list of positive finite numbers")
    em = cfg.eval_metrics
    if not isinstance(em, tuple) or any(m not in EVAL_METRICS for m in em) or len(set(em)) != len(em) \
            or {"lps", "lps_linear"} <= set(em):
        bad("eval_metrics", f"distinct values from {EVAL_METRICS} ('lps' or 'lps_linear', not both)")


def principle_model(cfg, dx: int, init_seeds: list[int]):
    """The stacked principle model of ``cfg.model`` with the TrainConfig's hyper-parameters (module doc of
    :mod:`mclcore.models.principles`)."""
    kw = dict(hidden=cfg.hidden or None, slope=cfg.slope, decoder_var=cfg.decoder_var,
              learn_decoder_var=cfg.decoder_var_learned)
    if cfg.model == "mmdvae":
        return StackedMMDVAE(dx, cfg.du, cfg.dz, init_seeds, mmd_weight=cfg.mmd_weight, kernel=cfg.mmd_kernel,
                             bandwidths=cfg.mmd_bandwidths, scales=cfg.mmd_scales, prior=cfg.mmd_prior,
                             rows=cfg.mmd_rows, **kw)
    if cfg.model == "qlae":
        return StackedQLAE(dx, cfg.du, cfg.dz, init_seeds, n_values=cfg.qlae_values,
                           quant_weight=cfg.qlae_quant_weight, commit_weight=cfg.qlae_commit_weight,
                           value_range=cfg.qlae_range, **kw)
    if cfg.model == "compvae":
        return StackedCompVAE(dx, cfg.du, cfg.dz, init_seeds, comp_lambda=cfg.comp_lambda,
                              comp_rows=min(cfg.comp_rows, cfg.batch_size), beta=cfg.comp_beta, **kw)
    return StackedInterVAE(dx, cfg.du, cfg.dz, init_seeds, inter_prob=cfg.inter_prob, **kw)


def principle_row(cfg, last: dict, m: int) -> dict:
    """Row fields of member m of a principle model from its last epoch's means ``last``: the objective is not an
    ELBO, so ``neg_elbo`` is its ELBO part -(rec - beta kl) (qlae: kl = 0, the reconstruction term), beside
    ``objective`` and ``principle_loss`` (the principle's own term, unweighted)."""
    beta = cfg.comp_beta if cfg.model == "compvae" else 1.0
    return {"neg_elbo": -(last["rec"][m] - beta * last["kl"][m]), "objective": last["loss"][m],
            "principle_loss": last["aux"][m]}


def member_encoder(vae, m: int):
    """Member m's scoring representation ``(x (B, dx), u (B, du)) -> (B, dz)``: the posterior mean the MCC scores
    (QLAE: the encoder's continuous output), i.e. row m of ``vae.posterior_mean`` (u enters where the model's
    encoder takes it: iVAE, MD-VAE, InterVAE)."""
    dev = vae.encoder.layers[0].weight.device

    def encode(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = torch.cat([x, u], dim=-1) if vae.u_enc else x
            return vae.encoder.member(m, h.to(dev))[:, :vae.dz].cpu()
    return encode


def factorvae_synthetic(data, encode, noise_var: float, seed: int, **protocol) -> dict:
    """FactorVAE score (:func:`mclcore.metrics.factor_vae_score_sampled`) of ``encode`` (:func:`member_encoder`) on
    fresh draws of the true process of ``data`` (a :class:`~mclcore.data.synthetic.SyntheticData`), drawn as its
    evaluation split is: u uniform over the alphabet per point, z ~ p(z | u) (GMD: N(0, I); LRD: N(mu_u, s_u^2)),
    x = G(z, u) + eps with eps ~ N(0, noise_var I) through the true generator. A vote's batch holds z_k at the
    value of its first point (the other coordinates, u and eps stay fresh). All draws come from the numpy stream
    ``derive_seed(seed, 21)``: deterministic given the member's seed, and no other stream is touched.
    ``protocol``: overrides of :data:`FACTORVAE_PROTOCOL`."""
    from mclcore.metrics import factor_vae_score_sampled

    kw = {**FACTORVAE_PROTOCOL, **protocol}
    mean, std = data.prior_mean.double().numpy(), data.prior_std.double().numpy()
    alphabet, dz, sd = data.alphabet, data.dz, math.sqrt(noise_var)

    def sample_codes(n: int, b: int, held, rng: np.random.Generator) -> np.ndarray:
        ui = rng.integers(0, alphabet.shape[0], size=n * b)
        z = (mean[ui] + std[ui] * rng.standard_normal((n * b, dz))).reshape(n, b, dz)
        if held is not None:                 # batch i: z[:, held[i]] constant at its first point's value
            z[np.arange(n), :, held] = z[np.arange(n), 0, held][:, None]
        u = alphabet[torch.from_numpy(ui)]
        with torch.no_grad():
            x = data.generator(torch.from_numpy(z.reshape(n * b, dz)).to(alphabet.dtype), u)
        x = x + sd * torch.from_numpy(rng.standard_normal(tuple(x.shape))).to(x.dtype)
        return encode(x, u).double().numpy().reshape(n, b, -1)
    return factor_vae_score_sampled(sample_codes, dz, np.random.default_rng(derive_seed(seed, _FACTORVAE)), **kw)


def eval_metrics(cfg, z_true: torch.Tensor, z_hat: torch.Tensor, seed: int, member: tuple | None = None) -> dict:
    """``cfg.eval_metrics`` of one member's scored codes z_hat (Ne, dz) against the true z (Ne, dz): ``lps``,
    ``lps_max`` (Latent Predictability Score, seeded by the member's seed), ``infomec_m``, ``infomec_e``,
    ``infomec_c`` (:func:`mclcore.metrics.infomec`), ``dci_d``, ``dci_c``, ``mig``, ``sap``, and ``factorvae``,
    ``factorvae_train`` (:func:`factorvae_synthetic`, which needs ``member = (data, vae, m)``: the member's
    dataset, the stacked model and the member's index). A metric undefined on these codes (a constant code
    dimension) is None, not an error: the row's other numbers stand."""
    from mclcore.metrics import infomec, lps_from_codes

    out: dict = {}
    zh = z_hat.double().numpy()
    if "lps" in cfg.eval_metrics or "lps_linear" in cfg.eval_metrics:
        try:
            r = lps_from_codes(zh, regressor="linear" if "lps_linear" in cfg.eval_metrics else "mlp", seed=seed)
            out.update(lps=r["lps.score"], lps_max=r["lps.max"])
        except ValueError:
            out.update(lps=None, lps_max=None)
    if "infomec" in cfg.eval_metrics:
        try:
            r = infomec(z_true.double().numpy(), zh)
            out.update(infomec_m=r["infomec.m"], infomec_e=r["infomec.e"], infomec_c=r["infomec.c"])
        except ValueError:
            out.update(infomec_m=None, infomec_e=None, infomec_c=None)
    if "dci_mig_sap" in cfg.eval_metrics:
        from mclcore.metrics import dci_from_codes, histogram_discretize, mig_from_codes, sap_from_codes

        f = histogram_discretize(z_true.double().numpy(), 20)                  # (Ne, dz) bins 1..20
        h = zh.shape[0] // 2
        try:
            d = dci_from_codes(zh[:h], f[:h], zh[h:], f[h:], model="lasso", seed=seed)
            out.update(dci_d=d["dci.disentanglement"], dci_c=d["dci.completeness"])
        except ValueError:
            out.update(dci_d=None, dci_c=None)
        try:
            out["mig"] = mig_from_codes(zh, f)["mig.score"]
        except ValueError:
            out["mig"] = None
        try:
            out["sap"] = sap_from_codes(zh, f, continuous_factors=True)["sap.score"]
        except ValueError:
            out["sap"] = None
    if "factorvae" in cfg.eval_metrics:
        if member is None:
            raise ValueError("eval_metrics: 'factorvae' needs member=(dataset, stacked model, member index)")
        data, vae, m = member
        try:
            r = factorvae_synthetic(data, member_encoder(vae, m), cfg.noise_var, seed)
            out.update(factorvae=r["factorvae.eval_accuracy"], factorvae_train=r["factorvae.train_accuracy"])
        except ValueError:
            out.update(factorvae=None, factorvae_train=None)
    return out


# (column, label) of the principles table: every score of a row that exists for every model
PRINCIPLE_COLUMNS = (("mcc", "MCC"), ("lps", "LPS"), ("infomec_m", "InfoM"), ("infomec_e", "InfoE"),
                     ("infomec_c", "InfoC"), ("dci_d", "DCI D"), ("dci_c", "DCI C"), ("mig", "MIG"), ("sap", "SAP"),
                     ("factorvae", "FactorVAE"))


def principles_table(runs: list[dict], baseline: str = "mdvae") -> str | None:
    """Markdown: per cell, each model's mean [95% bootstrap interval] over seeds of every score in
    ``PRINCIPLE_COLUMNS`` present in the rows, then each model minus ``baseline`` paired by seed. None when no
    principle model ran. A missing value (a metric undefined on a seed's codes) leaves that seed out of the cell,
    and the cell's n says so."""
    from mclcore.studies.synthetic.compare import MODEL_NAMES, fmt_ci, paired
    from mclcore.metrics.stats import summarize

    if not any(r["model"] in PRINCIPLE_MODELS for r in runs):
        return None
    cols = [(k, lab) for k, lab in PRINCIPLE_COLUMNS if any(r.get(k) is not None for r in runs)]
    cells = sorted({(r["process"], r["dz"], r["n_alphabet"]) for r in runs})
    lines = ["## Principles side by side (issue #23)", "",
             "Mean [95% bootstrap interval] over seeds (n = seeds with a defined value); differences paired by seed "
             f"(the same dataset on both sides) against {MODEL_NAMES.get(baseline, baseline)}. Scores of the "
             "posterior means (QLAE: the encoder's continuous output) against the true z on the evaluation split.",
             ""]
    for cell in cells:
        rows = [r for r in runs if (r["process"], r["dz"], r["n_alphabet"]) == cell]
        models = list(dict.fromkeys(r["model"] for r in rows))
        lines += [f"### {cell[0]}, dz = {cell[1]}, |U| = {cell[2]}", "",
                  "| model | " + " | ".join(lab for _, lab in cols) + " |", "|---|" + "---|" * len(cols)]

        def by_seed(model, k):
            return {r["seed"]: float(r[k]) for r in rows if r["model"] == model and r.get(k) is not None}
        for m in models:
            lines.append(f"| {MODEL_NAMES.get(m, m)} | " + " | ".join(
                fmt_ci(summarize(list(by_seed(m, k).values())), n=False) for k, _ in cols) + " |")
        if baseline in models:
            for m in models:
                if m != baseline:
                    lines.append(f"| {MODEL_NAMES.get(m, m)} − {MODEL_NAMES.get(baseline, baseline)} | " + " | ".join(
                        fmt_ci(paired(by_seed(m, k), by_seed(baseline, k)), signed=True, n=False) for k, _ in cols)
                        + " |")
        lines.append("")
    return "\n".join(lines)
