"""Disentanglement metrics as plain functions returning namespaced dicts.

    from mclcore.data import get_dataset
    from mclcore.metrics import factor_vae_score, dci, mig, sap, torch_representation
    ds = get_dataset("shapes3d")
    rep = torch_representation(encoder)          # float (N,3,64,64) in [0,1] -> (N, K)
    factor_vae_score(ds, rep, rng=0)             # {"factorvae.eval_accuracy": ..., ...}

Dataset metrics take ``(dataset, representation, rng)`` and follow the disentanglement_lib protocol by default
(see each module's docstring); ``*_from_codes`` variants take precomputed codes and integer factors. ``mcc``,
``lps_from_codes`` and ``infomec`` (InfoM / InfoE / InfoC of codes against sources) work on arrays;
``conditioning_gap`` measures how much a conditional denoiser uses its condition (own vs another's, per range of
t). Pass one :class:`EncodedDataset` to several metrics to encode each grid point once (or use :func:`evaluate`).
"""
from mclcore.metrics.conditioning import conditioning_gap
from mclcore.metrics.dci import DCI_MODELS, completeness, dci, dci_from_codes, disentanglement, importance_matrix
from mclcore.metrics.evaluate import METRICS, evaluate
from mclcore.metrics.factorvae import factor_vae_score, factor_vae_score_sampled
from mclcore.metrics.infomec import infomec
from mclcore.metrics.lps import lps, lps_from_codes
from mclcore.metrics.mcc import correlation_matrix, mcc
from mclcore.metrics.mig import mig, mig_from_codes
from mclcore.metrics.sap import sap, sap_from_codes
from mclcore.metrics.utils import EncodedDataset, histogram_discretize, torch_representation

__all__ = [
    "factor_vae_score", "factor_vae_score_sampled", "dci", "dci_from_codes", "importance_matrix", "disentanglement",
    "completeness", "DCI_MODELS", "mig", "mig_from_codes", "sap", "sap_from_codes", "mcc", "correlation_matrix", "lps",
    "lps_from_codes", "infomec", "evaluate", "METRICS", "EncodedDataset", "torch_representation",
    "histogram_discretize", "conditioning_gap",
]
