"""Pure torch.func reference of ``mclcore.ops.mech_derivs``: V(z,u) and L by reverse-over-reverse autodiff.

For one sample with generator ``f: R^dz -> R^dx``:

    J(z) = jacrev(f)(z)                      (dx, dz)
    L(z) = 1/2 logdet(J^T J)                 log-volume (log|det J| when square)
    V(z) = (jacrev(L)(z), diag(jacrev(jacrev(L))(z)))

Everything is reverse mode on purpose: with torch 2.13 (CPU), ``vmap`` over forward-mode derivatives
(``jacfwd``/``hessian``) of ``logdet``/``slogdet`` returns wrong values for every batch element after the first
(docs/DESIGN.md §2.3), so ``vmap(hessian(...logdet...))`` must never be used as a reference. ``jacrev(jacrev(.))`` per sample
(the default, a Python loop) and under ``vmap`` (``batched=True``) are both correct. Float64-capable; used by the
tests and by ``benchmarks/bench_mech_derivs.py`` as the baseline. Needs third derivatives of the activations, so
they are written here from elementary ops (``gelu`` through ``erf``, ``softplus`` through ``logaddexp``).
:func:`sample_inputs` draws a random well-conditioned generator and batch for the tests.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
from torch.func import jacrev, vmap

DEFAULT_PARAMS = {"softplus": 1.0, "smooth_leaky": 0.2, "leaky_relu": 0.2}


def _softplus(x, beta=1.0):
    return torch.logaddexp(beta * x, torch.zeros_like(x)) / beta


def activation_fn(name: str, param: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise nonlinearity ``name`` (parameter: softplus beta or leaky slope) as a torch function."""
    p = DEFAULT_PARAMS.get(name, 0.0) if param is None else float(param)
    if name == "tanh":
        return torch.tanh
    if name == "sigmoid":
        return torch.sigmoid
    if name == "softplus":
        return lambda x: _softplus(x, p)
    if name == "gelu":
        return lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name == "silu":
        return lambda x: x * torch.sigmoid(x)
    if name == "smooth_leaky":
        return lambda x: p * x + (1.0 - p) * _softplus(x)
    if name == "relu":
        return torch.relu
    if name == "leaky_relu":
        return lambda x: torch.nn.functional.leaky_relu(x, p)
    if name == "identity":
        return lambda x: x
    raise ValueError(f"activation: unknown name {name!r}")


def mlp(y, weights, biases, in_bias=None, activations=("tanh",), params=None, final_activation=False):
    """The MLP of ``mech_derivs``: ``a_0 = W_0 y + b_0 + in_bias``, ``a_l = W_l s(a_{l-1}) + b_l``.

    y: (..., dz); in_bias: (..., h_0) or None. Returns x: (..., dx).
    """
    n = len(weights)
    n_act = n if final_activation else n - 1
    acts = [activations] * n_act if isinstance(activations, str) else list(activations)
    params = [params] * n_act if params is None or isinstance(params, (int, float)) else list(params)
    h = y
    for l, w in enumerate(weights):
        h = h @ w.T
        if biases[l] is not None:
            h = h + biases[l]
        if l == 0 and in_bias is not None:
            h = h + in_bias
        if l < n_act:
            h = activation_fn(acts[l], params[l])(h)
    return h


def log_volume(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """z (dz,) -> 1/2 logdet(J^T J) with J = jacrev(f)(z) (dx, dz)."""

    def L(z):
        J = jacrev(f)(z)
        return 0.5 * torch.logdet(J.T @ J)

    return L


def v_and_l(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V (2dz,) and L () of one sample, reverse over reverse (one jacrev of the gradient gives both orders)."""
    L = log_volume(f)

    def value_and_aux(zz):
        val = L(zz)
        return val, val

    def grad_and_aux(zz):
        g, val = jacrev(value_and_aux, has_aux=True)(zz)
        return g, (g, val)

    H, (g, val) = jacrev(grad_and_aux, has_aux=True)(z)
    return torch.cat([g, torch.diagonal(H)]), val


def derivatives(fn: Callable, z: torch.Tensor, u: torch.Tensor | None = None, *, batched: bool = False,
                chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """V (B, 2dz) and L (B,) of ``x_b = fn(z_b, u_b)`` (one sample: z_b (dz,), u_b (du,) or None -> x_b (dx,)).

    ``batched=False`` loops over samples in Python; ``batched=True`` vmaps the per-sample function over the batch
    (``chunk_size`` samples at a time; None = all at once).
    """
    if batched:
        if u is None:
            return vmap(lambda zb: v_and_l(lambda t: fn(t, None), zb), chunk_size=chunk_size)(z)
        return vmap(lambda zb, ub: v_and_l(lambda t: fn(t, ub), zb), chunk_size=chunk_size)(z, u)
    out = [v_and_l(lambda t: fn(t, None if u is None else u[b]), z[b]) for b in range(z.shape[0])]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


def mech_derivs(z, weights, biases, in_bias=None, film_scale=None, film_shift=None, activation="tanh",
                act_param=None, final_activation=False, *, batched=False, chunk_size=None):
    """Reference of ``mclcore.ops.mech_derivs`` (same arguments). Differentiates through the FiLM map too, so it also
    checks the op's ``m'_i(z) = m_i m'_i(y)`` rescaling. Returns (V (B, 2dz), L (B,))."""
    B = z.shape[0]
    zero = z.new_zeros((B, 0))
    extras = torch.cat([t if t is not None else zero for t in (in_bias, film_scale, film_shift)], dim=1)
    h0, dz = weights[0].shape[0], z.shape[1]

    def per_sample(zb, eb):
        o = 0
        ib = None
        if in_bias is not None:
            ib, o = eb[o:o + h0], o + h0
        y = zb
        if film_scale is not None:
            y, o = y * eb[o:o + dz], o + dz
        if film_shift is not None:
            y, o = y + eb[o:o + dz], o + dz
        return mlp(y, weights, biases, ib, activation, act_param, final_activation)

    return derivatives(per_sample, z, extras, batched=batched, chunk_size=chunk_size)


class MechDerivsInputs(NamedTuple):
    """The arguments of ``mech_derivs``, in this reference's order: ``mech_derivs(*inputs)`` here,
    ``mclcore.ops.mech_derivs.mech_derivs(**inputs._asdict())`` for the op (its optional arguments are keywords)."""

    z: torch.Tensor                        # (B, dz) latents
    weights: list[torch.Tensor]            # per layer (h_l, h_{l-1}), h_{-1} = dz; dx = h_{L-1}
    biases: list[torch.Tensor | None]      # per layer (h_l,), or all None (bias_std=None)
    in_bias: torch.Tensor | None           # (B, h_0) with conditioning "in_bias" / "in_bias+film"
    film_scale: torch.Tensor | None        # (B, dz) with conditioning "film" / "in_bias+film"
    film_shift: torch.Tensor | None        # (B, dz) likewise
    activation: str | Sequence[str]
    act_param: float | Sequence[float | None] | None
    final_activation: bool


CONDITIONING = ("none", "in_bias", "film", "in_bias+film")


def sample_inputs(batch: int = 4, dz: int = 3, *, widths: Sequence[int] = (7, 3), conditioning: str = "none",
                  activation: str | Sequence[str] = "tanh", act_param: float | Sequence[float | None] | None = None,
                  final_activation: bool = False, bias_std: float | None = 0.5, dtype: torch.dtype = torch.float64,
                  device: torch.device | str = "cpu", seed: int = 0, data_seed: int | None = None,
                  generator: torch.Generator | None = None, requires_grad: bool = False,
                  contiguous: bool = True) -> MechDerivsInputs:
    """A random MLP generator ``dz -> widths[0] -> ... -> widths[-1] = dx`` and a batch of latents for it.

    The layers are semi-orthogonal (QR of a Gaussian matrix), scaled so each pre-activation has about unit variance:
    curved but well conditioned (cond J < 1e3), so the float64 reference keeps its digits (it differentiates
    logdet(J^T J) through autograd and loses them on an ill-conditioned J). Biases ~ N(0, bias_std^2); None gives
    layers without bias. The batch: z ~ N(0, 1) (batch, dz), then by ``conditioning`` (one of :data:`CONDITIONING`)
    ``in_bias`` ~ 0.2 N(0, 1) (batch, widths[0]) (a condition u concatenated to z, entering as ``W_u u``) and/or the
    FiLM ``film_scale`` = exp(0.3 N(0, 1)), ``film_shift`` ~ N(0, 1), both (batch, dz).

    The layers come from ``torch.Generator().manual_seed(seed)`` (each weight, then its bias), the batch from a
    second one seeded ``data_seed`` (default ``seed + 1``), so a generator can meet several batches; with
    ``generator`` given, both come from it, layers first. Everything is drawn on the CPU in float64, then cast to
    ``dtype`` and moved to ``device``. ``activation``, ``act_param`` and ``final_activation`` are only passed
    through. ``requires_grad`` makes every tensor a leaf that requires grad (the op is not differentiable: it raises
    on backward). ``contiguous=False`` returns the same values in non-contiguous views: 2-D tensors column-major,
    1-D ones every other entry of a buffer twice their length.
    """
    if conditioning not in CONDITIONING:
        raise ValueError(f"conditioning: expected one of {CONDITIONING}, got {conditioning!r}")
    f64 = torch.float64
    gen = torch.Generator().manual_seed(seed) if generator is None else generator
    ws, bs, fan_in = [], [], dz
    for w in widths:
        q, _ = torch.linalg.qr(torch.randn(max(w, fan_in), min(w, fan_in), generator=gen, dtype=f64))
        W = q if w >= fan_in else q.T
        ws.append(W * math.sqrt(max(w, fan_in) / fan_in))
        bs.append(None if bias_std is None else bias_std * torch.randn(w, generator=gen, dtype=f64))
        fan_in = w
    if generator is None:
        gen = torch.Generator().manual_seed(seed + 1 if data_seed is None else data_seed)
    z = torch.randn(batch, dz, generator=gen, dtype=f64)
    in_bias = film_scale = film_shift = None
    if conditioning in ("in_bias", "in_bias+film"):
        in_bias = 0.2 * torch.randn(batch, widths[0], generator=gen, dtype=f64)
    if conditioning in ("film", "in_bias+film"):
        film_scale = torch.exp(0.3 * torch.randn(batch, dz, generator=gen, dtype=f64))
        film_shift = torch.randn(batch, dz, generator=gen, dtype=f64)

    def cast(t):
        if t is None:
            return None
        t = t.to(device, dtype)
        if not contiguous:
            t = t.t().contiguous().t() if t.dim() == 2 else torch.stack([t, t], dim=1)[:, 0]
        return t.requires_grad_() if requires_grad else t

    return MechDerivsInputs(cast(z), [cast(w) for w in ws], [cast(b) for b in bs], cast(in_bias), cast(film_scale),
                            cast(film_shift), activation, act_param, final_activation)
