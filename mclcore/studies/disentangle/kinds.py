"""Which kind of FID / LPIPS value a metrics dict holds, and under which key (no torch: the report imports it).

A stand-in never sits under the real metric's key: real FID is ``fid`` (``fid_kind = "inception"``), a user
TorchScript network's ``fid_user`` (``"user_network"``), the dataset-trained stand-in's ``fid_standin``
(``"standin"``); real LPIPS is ``lpips`` (``lpips_kind = "lpips_v0.1_<net>"``), the stand-in ``lpips_proxy``
(``"standin"``). See :mod:`mclcore.studies.disentangle.fid`.
"""
from __future__ import annotations

__all__ = ["FID_KEYS", "LPIPS_KEYS", "STANDIN_FID_LABEL", "STANDIN_LPIPS_LABEL", "fid_of", "lpips_of"]

# Where each kind of value is stored in metrics.json: a stand-in never sits under the real metric's key.
FID_KEYS = {"inception": "fid", "user_network": "fid_user", "standin": "fid_standin"}
LPIPS_KEYS = {"lpips": "lpips", "standin": "lpips_proxy"}
STANDIN_FID_LABEL = "FID stand-in (dataset-trained net)"
STANDIN_LPIPS_LABEL = "fLPIPS stand-in (dataset-trained net, unweighted)"
_OLD_STANDIN_FID_LABEL = "FID (dataset-trained net)"          # metrics.json written before fid_kind existed


def fid_of(res: dict) -> tuple[float | None, str]:
    """(value, kind) of a metrics dict's FID, whatever its kind; results written before ``fid_kind`` existed stored
    every kind under ``fid``, told apart by ``fid_label``."""
    kind = res.get("fid_kind")
    if kind is None and "fid" in res:
        label = res.get("fid_label", "")
        kind = "standin" if label == _OLD_STANDIN_FID_LABEL else \
            "user_network" if label.startswith("FID (user network") else "unknown"
        return res["fid"], kind
    return res.get(FID_KEYS.get(kind, "fid")), kind or "none"


def lpips_of(res: dict) -> tuple[float | None, str]:
    """(value, kind) of a metrics dict's LPIPS column: ``lpips`` (real) or ``lpips_proxy`` (stand-in)."""
    if "lpips" in res:
        return res["lpips"], res.get("lpips_kind", "lpips")
    return res.get("lpips_proxy"), "standin" if "lpips_proxy" in res else "none"
