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


def all_finite(*named):
    """Raise like ``finite`` for the first ``(tensor, name)`` pair holding NaN or inf; one host sync when all are.

    ``torch.isfinite(x).all()`` runs several elementwise kernels (112 us for a 256 x 128 float32 tensor on the
    2-core AMD EPYC dev VM (2026-11), a third of the InfoNCE op's whole forward); a sum takes ~7 us and is finite only if every
    element is.
    A non-finite sum (a NaN/inf, or finite values whose sum overflows) falls back to the exact check per tensor.
    """
    total = None
    for x, _ in named:
        x = x.detach()  # no autograd node for a check
        s = x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()
        total = s if total is None else total + s.to(total.dtype)
    if total is not None and math.isfinite(float(total)):
        return
    for x, name in named:
        finite(x, name)


def per_sample(x, name: str, B: int, cols: int, dtype: torch.dtype):
    """None, or ``x`` checked to be (B, cols) in ``dtype``: a per-sample input such as an MLP op's ``in_bias``."""
    if x is None:
        return None
    tensor(x, name, ndim=2)
    if tuple(x.shape) != (B, cols):
        raise ValueError(f"{name}: expected shape ({B}, {cols}) (one row per sample of z), got {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (that of z), got {x.dtype}")
    return x


def _per_activation(value, n: int, name: str) -> list:
    if isinstance(value, (str, float, int)) or value is None:
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name}: expected one entry per activation ({n}), got {len(value)}")
    return value


def mlp(z, weights, biases, activation, act_param, final_activation: bool, *, activations, default_params):
    """The MLP generator arguments shared by the MLP ops (mech_derivs, comp_contrast): z (B, dz) float32/float64,
    ``weights`` / ``biases`` per layer in ``nn.Linear`` layout (a None bias becomes zeros), one activation name
    (from ``activations``) and parameter per activation, or one for all (None takes ``default_params``).
    Returns ``(weights, biases, acts, params, dx)``; raises naming the argument."""
    tensor(z, "z", ndim=2)
    if z.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"z: expected float32 or float64, got {z.dtype}")
    if z.shape[1] < 1:
        raise ValueError(f"z: expected at least one latent dimension, got shape {tuple(z.shape)}")
    if isinstance(weights, torch.Tensor) or isinstance(biases, torch.Tensor):
        raise TypeError("weights, biases: expected a list of tensors, one per layer (nn.Linear layout)")
    weights, biases = list(weights), list(biases)
    if len(weights) < 1:
        raise ValueError("weights: expected at least one layer")
    if len(biases) != len(weights):
        raise ValueError(f"biases: expected {len(weights)} entries (one per layer, None for no bias), "
                         f"got {len(biases)}")
    fan_in = z.shape[1]
    for i, w in enumerate(weights):
        tensor(w, f"weights[{i}]", ndim=2)
        if w.dtype != z.dtype:
            raise TypeError(f"weights[{i}]: expected dtype {z.dtype} (that of z), got {w.dtype}")
        if w.shape[1] != fan_in:
            raise ValueError(f"weights[{i}]: expected {fan_in} input features, got shape {tuple(w.shape)}")
        if w.shape[0] < 1:
            raise ValueError(f"weights[{i}]: expected at least one output feature, got shape {tuple(w.shape)}")
        if biases[i] is None:
            biases[i] = w.new_zeros(w.shape[0])
        tensor(biases[i], f"biases[{i}]", ndim=1)
        if tuple(biases[i].shape) != (w.shape[0],):
            raise ValueError(f"biases[{i}]: expected shape ({w.shape[0]},), got {tuple(biases[i].shape)}")
        if biases[i].dtype != z.dtype:
            raise TypeError(f"biases[{i}]: expected dtype {z.dtype} (that of z), got {biases[i].dtype}")
        fan_in = w.shape[0]
    n_act = len(weights) if final_activation else len(weights) - 1
    acts = _per_activation(activation, n_act, "activation")
    for a in acts:
        if a not in activations:
            raise ValueError(f"activation: expected one of {tuple(activations)}, got {a!r}")
    params = _per_activation(act_param, n_act, "act_param")
    params = [float(default_params.get(a, 0.0) if p is None else p) for a, p in zip(acts, params)]
    for a, p in zip(acts, params):
        if a == "softplus":
            positive_float(p, "act_param (softplus beta)")
    return weights, biases, acts, params, fan_in
