"""Mechanism derivatives ``V(z,u)`` of a conditional generator (paper §3.2, docs/DESIGN.md §2.3).

For ``x = G(z, u)`` with Jacobian ``J = dx/dz`` (dx >= dz) and log-volume ``L = 1/2 logdet(J^T J)``
(``log|det J|`` when square):

    V(z,u) = (dL/dz_1, ..., dL/dz_dz,  d^2L/dz_1^2, ..., d^2L/dz_dz^2)   in R^{2 dz}

:func:`derivatives` takes one of two paths, and says which in the result:

* ``"op"``: the native ``mclcore.ops.mech_derivs`` (Taylor-mode propagation, float64 algebra) when G is
    - an :class:`~mclcore.models.generators.MLPGenerator` (u concatenated to z),
    - a :class:`~mclcore.models.generators.FiLMGenerator` / ``GMDGenerator``, or any module with an ``h``
      ``nn.Sequential`` and a ``film(u) -> (scale, shift)`` method (``G(z,u) = h(z * scale + shift)``),
    - an ``nn.Sequential`` of ``nn.Linear`` layers and supported activations, fed ``[z, u]`` (or z when u is None);
  supported activation modules: ``Tanh, Sigmoid, Softplus`` (threshold >= 20), ``GELU`` (exact), ``SiLU``,
  :class:`~mclcore.models.generators.SmoothLeakyReLU`, and the piecewise-linear ``ReLU, LeakyReLU, Identity``.
* ``"torch.func"``: any other module or callable ``G(z, u) -> x`` (outputs flattened per sample): per-sample
  ``jacrev(jacrev(L))`` under ``vmap`` (correct; reverse mode only, see docs/DESIGN.md §2.3), typically 10-100x slower.

A generator whose activations are all piecewise linear has V = 0 almost everywhere (L is piecewise constant); the
result then has ``degenerate=True`` and a ``reason``, and a :class:`DegenerateGeneratorWarning` is emitted: zeros
are never returned silently.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Callable

import torch
import torch.nn as nn
from torch.func import jacrev, vmap

from mclcore.models.generators import SmoothLeakyReLU
from mclcore.ops import _checks
from mclcore.ops.mech_derivs import (
    DEGENERATE_REASON,
    DegenerateGeneratorWarning,
    is_piecewise_linear,
    mech_derivs,
)

__all__ = ["MechanismDerivatives", "derivatives", "mlp_spec", "UnsupportedGeneratorError"]


class UnsupportedGeneratorError(ValueError):
    """``path="op"`` was requested for a module the native op cannot run."""


@dataclasses.dataclass
class MechanismDerivatives:
    """Result of :func:`derivatives`.

    Attributes:
        V: (B, 2dz): ``V[:, :dz] = m'_i = dL/dz_i``, ``V[:, dz:] = m''_ii = d^2L/dz_i^2``. NaN where J is
            numerically rank-deficient.
        log_volume: (B,) ``L = 1/2 logdet(J^T J)`` (-inf where J is rank-deficient).
        path: ``"op"`` (native Taylor-mode kernel) or ``"torch.func"`` (general autodiff path).
        degenerate: True when V vanishes identically because G is piecewise linear in z.
        reason: plain-language explanation when ``degenerate``.
    """

    V: torch.Tensor
    log_volume: torch.Tensor
    path: str
    degenerate: bool = False
    reason: str | None = None

    @property
    def dz(self) -> int:
        return self.V.shape[1] // 2

    @property
    def m1(self) -> torch.Tensor:  # (B, dz) first derivatives of the log-volume
        return self.V[:, : self.dz]

    @property
    def m2(self) -> torch.Tensor:  # (B, dz) diagonal second derivatives
        return self.V[:, self.dz :]


@dataclasses.dataclass
class _Spec:
    weights: list
    biases: list
    activations: list
    params: list
    final_activation: bool


def _activation_name(mod: nn.Module) -> tuple[str, float] | None:
    if isinstance(mod, nn.Tanh):
        return "tanh", 0.0
    if isinstance(mod, nn.Sigmoid):
        return "sigmoid", 0.0
    if isinstance(mod, nn.Softplus):
        # nn.Softplus is linear where beta*x > threshold; with threshold >= 20 that differs from log(1+e^x) by
        # < 2e-9, below what V can resolve; a smaller threshold is a real kink, so it is left to torch.func.
        return ("softplus", float(mod.beta)) if mod.threshold >= 20 else None
    if isinstance(mod, nn.GELU):
        return ("gelu", 0.0) if mod.approximate == "none" else None
    if isinstance(mod, nn.SiLU):
        return "silu", 0.0
    if isinstance(mod, SmoothLeakyReLU):
        return "smooth_leaky", mod.slope
    if isinstance(mod, nn.ReLU):
        return "relu", 0.0
    if isinstance(mod, nn.LeakyReLU):
        return "leaky_relu", float(mod.negative_slope)
    return None


def mlp_spec(seq: nn.Module, where: str = "G") -> _Spec:
    """Read an ``nn.Sequential`` of ``nn.Linear`` layers and supported activations into the op's arguments.

    Consecutive Linear layers get an ``identity`` activation between them; ``nn.Identity`` is skipped; a trailing
    activation becomes ``final_activation``. Raises :class:`UnsupportedGeneratorError` naming the first module the
    op cannot run.
    """
    if not isinstance(seq, nn.Sequential):
        raise UnsupportedGeneratorError(f"{where}: expected an nn.Sequential, got {type(seq).__name__}")
    weights, biases, acts, params = [], [], [], []
    pending = False  # a Linear waiting for its activation
    for name, mod in seq.named_children():
        if isinstance(mod, nn.Identity):
            continue
        if isinstance(mod, nn.Linear):
            if pending:
                acts.append("identity"), params.append(0.0)
            weights.append(mod.weight)
            biases.append(mod.bias)
            pending = True
            continue
        act = _activation_name(mod)
        if act is None:
            raise UnsupportedGeneratorError(
                f"{where}[{name}]: {type(mod).__name__} is not supported by the mech_derivs op (supported: Linear, "
                f"Tanh, Sigmoid, Softplus (threshold >= 20), GELU (approximate='none'), SiLU, SmoothLeakyReLU, ReLU, "
                f"LeakyReLU, Identity); use path='auto' or 'torch.func'")
        if not pending:
            raise UnsupportedGeneratorError(
                f"{where}[{name}]: an activation must follow an nn.Linear layer (got {type(mod).__name__} "
                f"{'first' if not weights else 'after another activation'})")
        acts.append(act[0]), params.append(act[1])
        pending = False
    if not weights:
        raise UnsupportedGeneratorError(f"{where}: contains no nn.Linear layer")
    return _Spec(weights, biases, acts, params, final_activation=len(acts) == len(weights))


def _is_film(G) -> bool:
    return isinstance(getattr(G, "h", None), nn.Sequential) and callable(getattr(G, "film", None))


def _fast_args(G, z: torch.Tensor, u: torch.Tensor | None, dtype: torch.dtype):
    """The op's arguments for G, or raise UnsupportedGeneratorError."""
    from mclcore.models.generators import MLPGenerator

    dz = z.shape[1]
    film_scale = film_shift = in_bias = None
    if _is_film(G):
        if u is None:
            raise ValueError("u: this generator is FiLM-conditioned (G.film(u)); pass u of shape (B, du)")
        spec = mlp_spec(G.h, "G.h")
        film_scale, film_shift = G.film(u.to(dtype))
        for t, name in ((film_scale, "G.film(u)[0] (scale)"), (film_shift, "G.film(u)[1] (shift)")):
            if t.shape != z.shape:
                raise ValueError(f"{name}: expected shape {tuple(z.shape)} (that of z), got {tuple(t.shape)}")
        film_scale, film_shift = film_scale.to(dtype), film_shift.to(dtype)
        n_in = dz
    elif isinstance(G, MLPGenerator) or isinstance(G, nn.Sequential):
        spec = mlp_spec(G.net if isinstance(G, MLPGenerator) else G, "G.net" if isinstance(G, MLPGenerator) else "G")
        n_in = dz + (0 if u is None else u.shape[1])
    else:
        raise UnsupportedGeneratorError(
            f"G: {type(G).__name__} is not an MLPGenerator, FiLM generator or nn.Sequential of Linear layers and "
            f"activations, so the mech_derivs op cannot run it; use path='auto' or 'torch.func'")
    W0 = spec.weights[0]
    if W0.shape[1] != n_in:
        what = f"dz + du = {dz} + {u.shape[1]}" if (u is not None and film_scale is None) else f"dz = {dz}"
        raise ValueError(f"G: the first Linear layer takes {W0.shape[1]} inputs, but it is fed {what}")
    weights = [w.to(dtype) for w in spec.weights]
    biases = [None if b is None else b.to(dtype) for b in spec.biases]
    if film_scale is None and u is not None and u.shape[1] > 0:
        in_bias = u.to(dtype) @ weights[0][:, dz:].T  # u enters as a per-sample first-layer bias W_u u
        weights[0] = weights[0][:, :dz]
    return dict(weights=weights, biases=biases, in_bias=in_bias, film_scale=film_scale, film_shift=film_shift,
                activation=spec.activations, act_param=spec.params, final_activation=spec.final_activation)


def _v_and_l_single(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor):
    """V (2dz,) and L () of one sample by reverse over reverse (never forward mode of logdet: docs/DESIGN.md §2.3)."""

    def L(t):
        J = jacrev(f)(t)
        if J.shape[0] < J.shape[1]:
            raise ValueError(f"G: output has dx = {J.shape[0]} < dz = {J.shape[1]}; V needs dx >= dz")
        return 0.5 * torch.logdet(J.T @ J)

    def value_and_aux(t):
        v = L(t)
        return v, v

    def grad_and_aux(t):
        g, v = jacrev(value_and_aux, has_aux=True)(t)
        return g, (g, v)

    H, (g, v) = jacrev(grad_and_aux, has_aux=True)(z)
    return torch.cat([g, torch.diagonal(H)]), v


def _general(G, z: torch.Tensor, u: torch.Tensor | None, dtype: torch.dtype, chunk_size: int):
    seq = isinstance(G, nn.Sequential)  # an nn.Sequential generator is fed [z, u]

    def call(zb, ub):
        if ub is None:
            return G(zb[None]).reshape(-1)
        return (G(torch.cat([zb, ub])[None]) if seq else G(zb[None], ub[None])).reshape(-1)

    one = lambda zb, ub: _v_and_l_single(lambda t: call(t, ub), zb)  # noqa: E731
    batched = vmap(lambda zb: one(zb, None), chunk_size=chunk_size) if u is None else \
        vmap(one, chunk_size=chunk_size)
    args = (z,) if u is None else (z, u.to(dtype))
    try:
        return batched(*args)
    except torch.linalg.LinAlgError:
        # A singular J^T J somewhere in the batch (logdet's backward inverts it): redo sample by sample and give the
        # singular ones V = NaN, L = -inf, as the native op does, instead of failing the whole batch.
        Vs, Ls = [], []
        for i in range(z.shape[0]):
            try:
                v, l_ = one(z[i], None if u is None else args[1][i])
            except torch.linalg.LinAlgError:
                v = z.new_full((2 * z.shape[1],), float("nan"))
                l_ = z.new_tensor(float("-inf"))
            Vs.append(v)
            Ls.append(l_)
        return torch.stack(Vs), torch.stack(Ls)


def _in_dtype(G, dtype: torch.dtype):
    """G itself when its floating parameters and buffers already have ``dtype``, else a converted deep copy (so both
    paths evaluate the same float64 generator, FiLM networks included; the caller's module is left untouched)."""
    if not isinstance(G, nn.Module):
        return G
    tensors = [t for t in (*G.parameters(), *G.buffers()) if t.is_floating_point()]
    if all(t.dtype == dtype for t in tensors):
        return G
    return copy.deepcopy(G).to(dtype)


def derivatives(G, z: torch.Tensor, u: torch.Tensor | None = None, *, path: str = "auto",
                dtype: torch.dtype | None = None, chunk_size: int = 32, warn: bool = True) -> MechanismDerivatives:
    """Mechanism-derivative vector V(z,u) and log-volume of ``x = G(z, u)``, per sample.

    Args:
        G: the generator: an MLPGenerator, a FiLM generator, an nn.Sequential (fast path), or any module /
            callable ``G(z, u) -> x`` with z (B, dz), u (B, du) (``G(z)`` when u is None), x (B, ...).
        z: (B, dz) latents.
        u: (B, du) conditions, (du,) for one condition shared by all samples, or None (unconditional G).
        path: ``"auto"`` (the op when G is supported, else torch.func), ``"op"`` (raise
            :class:`UnsupportedGeneratorError` if G is not supported) or ``"torch.func"``.
        dtype: compute dtype, float32 or float64 (default: z's). The op always does the dz x dz algebra in float64.
        chunk_size: samples per vmap chunk on the torch.func path (memory ~ chunk_size x dz^2 x dx).
        warn: emit :class:`DegenerateGeneratorWarning` when V vanishes because G is piecewise linear.

    Returns:
        :class:`MechanismDerivatives` (V (B, 2dz), log_volume (B,), path, degenerate, reason). The results are
        not differentiable (computed without autograd).
    """
    if path not in ("auto", "op", "torch.func"):
        raise ValueError(f"path: expected 'auto', 'op' or 'torch.func', got {path!r}")
    if not (isinstance(G, nn.Module) or callable(G)):
        raise TypeError(f"G: expected an nn.Module or a callable G(z, u) -> x, got {type(G).__name__}")
    _checks.tensor(z, "z", ndim=2)
    _checks.finite(z, "z")          # both paths refuse NaN/inf latents alike (the op would, torch.func would not)
    dtype = z.dtype if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
    B = z.shape[0]
    if u is not None:
        _checks.tensor(u, "u", min_ndim=1)
        if u.dim() == 1:
            u = u.expand(B, u.shape[0])
        if u.dim() != 2 or u.shape[0] != B:
            raise ValueError(f"u: expected shape ({B}, du) (one condition per row of z) or (du,), got "
                             f"{tuple(u.shape)}")
        _checks.finite(u, "u")
    z = z.to(dtype)
    G = _in_dtype(G, dtype)
    with torch.no_grad():
        args = None
        if path in ("auto", "op"):
            try:
                args = _fast_args(G, z, u, dtype)
            except UnsupportedGeneratorError:
                if path == "op":
                    raise
        if args is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DegenerateGeneratorWarning)  # reported once, below
                V, L = mech_derivs(z, **args)
            degenerate = is_piecewise_linear(args["activation"])
            used = "op"
        else:
            with torch.enable_grad():  # torch.func needs autograd internally; the outputs are detached below
                V, L = _general(G, z, u, dtype, chunk_size)
            V, L = V.detach(), L.detach()
            finite = torch.isfinite(V)
            degenerate = bool(finite.any()) and bool((V[finite] == 0).all())
            used = "torch.func"
    reason = None
    if degenerate:
        reason = DEGENERATE_REASON if used == "op" else (
            "V(z,u) vanished identically at every sample: the generator is piecewise linear in z (e.g. ReLU or "
            "leaky-ReLU activations), so log|J| is piecewise constant and Assumption 2 cannot hold")
        if warn:
            warnings.warn(reason, DegenerateGeneratorWarning, stacklevel=2)
    return MechanismDerivatives(V=V, log_volume=L, path=used, degenerate=degenerate, reason=reason)
