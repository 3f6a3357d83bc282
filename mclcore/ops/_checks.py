"""Argument validation shared by the op wrappers: errors name the argument and say what was expected."""
from __future__ import annotations

import math

import torch


def tensor(x, name: str, *, ndim: int | None = None, min_ndim: int | None = None, floating: bool = True):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions (batch first), got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x


def finite(x: torch.Tensor, name: str):
    # One reduction and one host sync; cheap next to the ops it guards, and a NaN never passes silently.
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def positive_float(v, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a positive finite number, got {v!r}") from None
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {v!r}")
    return f
