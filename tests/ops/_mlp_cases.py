"""Bad-input cases shared by the MLP-generator ops' tests (tests/ops/test_mech_derivs.py, test_comp_contrast.py):
both ops take the same (z, weights, biases, activation) and report the same argument errors."""
from __future__ import annotations

import torch

from python.mech_derivs import sample_inputs

F64 = torch.float64


def layers(widths, seed=0):
    """weights, biases of a random float64 generator 3 -> widths."""
    _, ws, bs, *_ = sample_inputs(0, 3, widths=widths, seed=seed)
    return ws, bs


def bad(**changes):
    """Keyword arguments of a valid call (B = 4, dz = 3, widths (8, 6), tanh) with ``changes`` applied."""
    ws, bs = layers((8, 6), seed=18)
    kw = dict(z=torch.zeros(4, 3, dtype=F64), weights=ws, biases=bs, activation="tanh")
    kw.update(changes)
    return kw
