"""Mechanism diversity tools: the mechanism-derivative vector V(z,u) and the identifiability certificates.

* :func:`derivatives` — ``V(z,u) = (d_i log|J|, d_i^2 log|J|)_i`` of a generator (native op for MLP / FiLM
  generators, torch.func otherwise), paper §3.2.
* :func:`certify` — Assumption 2 (sufficient GMD): rank of the contrasts ``V(z,u^(n)) - V(z,u^(0))`` per latent.
* :func:`certify_lrd` — Assumption 1 (sufficient LRD) for a u-conditional prior log-density.

``mcl certify`` (:mod:`mclcore.mechanism.cli`) runs the GMD certificate on a saved model or the paper's synthetic
generator and writes a histogram of sigma_min/sigma_max.
"""
from mclcore.mechanism.certify import Certificate, certify, certify_lrd, contrast_certificate, lrd_vectors
from mclcore.mechanism.derivatives import (
    MechanismDerivatives,
    UnsupportedGeneratorError,
    derivatives,
    mlp_spec,
)
from mclcore.ops.mech_derivs import DegenerateGeneratorWarning

__all__ = [
    "Certificate",
    "DegenerateGeneratorWarning",
    "MechanismDerivatives",
    "UnsupportedGeneratorError",
    "certify",
    "certify_lrd",
    "contrast_certificate",
    "derivatives",
    "lrd_vectors",
    "mlp_spec",
]
