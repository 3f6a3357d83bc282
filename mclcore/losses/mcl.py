"""The MCL loss: InfoNCE between the projected mechanism gradient and the projected condition.

Paper, Algorithm 1 / Eq. (18)::

    g_i = grad_{z_i} c(G(z_i, u_i), z_i, u_i)                 # mechanism gradient, (B, dz)
    q_i = Pi_g(g_i) / |Pi_g(g_i)|,  k_j = Pi_u(u_j) / |Pi_u(u_j)|
    L   = -1/B sum_i log softmax_j(q_i . k_j / tau)[i]

Two paths compute ``g``:

* the MLP critic (:class:`MLPCritic`, the paper's default ``[z, x, u] -> 256 -> 256 -> 1`` with GELU) goes through
  the native op ``critic_grad``: ``g = grad_z c + J_G^T grad_x c``, the second term a vector-Jacobian product
  through the user's generator;
* any other critic (the image critic of Algorithm 2, or a user callable ``(x_hat, z, u) -> (B,)``) goes through
  plain autograd, exactly as Algorithm 1.

Both then use the native ``infonce`` op (tiled, O(B d) memory).

Where the paper disagrees with itself we pick a default and expose the other choice:

* ``tau``: 0.1 (Appendix D.4 and Algorithms 1-2); section 5 says 0.07 (SimCLR's value).
* ``create_graph``: True (Algorithm 1: the MCL gradient reaches the generator and the critic). Algorithm 2 defaults
  to False, and section 5 says the critic gradient is "detached on the InfoNCE path"; with False, ``g`` is a
  constant and MCL trains only the projection heads.
* ``clip``: per-sample L2 norm of ``g`` clipped at 10 (section 5; Algorithms 1-2 have no clip). ``None`` disables.
* positives: the diagonal (Eq. 18). With a small alphabet many rows share ``u`` (|U| = 8, B = 256: ~32 rows each),
  which puts a floor of about log 32 under the loss and pushes identical keys apart; ``multi_positive=True`` counts
  every row with the same condition as a positive (groups from equal rows of the key input, or given explicitly).

More than one process (``gather=True``, :class:`MCLConfig`): each rank contrasts its local queries against the keys
of every rank (the infonce op's rectangular mode), so the negatives are those of the global batch, as in one process.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mclcore import distributed
from mclcore.ops import _checks
from mclcore.ops.critic_grad import ACTIVATIONS, critic_grad
from mclcore.ops.infonce import infonce

_ACT_MODULES = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "softplus": nn.Softplus}


class MLPProj(nn.Module):
    """Projection head of Algorithm 2: [LayerNorm] -> Linear -> ReLU -> Linear into ``out_dim`` (128) dims.

    The L2 normalisation onto the unit sphere happens inside the InfoNCE op.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, layernorm: bool = False):
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)] if layernorm else []
        layers += [nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_dim) -> (B, out_dim)
        return self.net(x)


class MLPCritic(nn.Module):
    """Scalar MLP mechanism critic ``c([z, x, u])``: ``in_dim -> hidden... -> 1`` (paper: 256, 256, GELU).

    ``forward(x_hat, z, u)`` returns the (B,) scores with plain autograd; ``input_grad(v)`` returns ``grad_v c`` via
    the native ``critic_grad`` op, which :func:`mcl_loss` uses.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if len(hidden) < 1:
            raise ValueError("hidden: expected at least one hidden layer width")
        dims = [int(in_dim), *map(int, hidden), 1]
        self.in_dim = int(in_dim)
        self.activation = activation
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = _ACT_MODULES[activation]()

    @staticmethod
    def join(x_hat: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """v = [z, x, u], each flattened per sample: (B, dz + dx + du)."""
        return torch.cat([z.flatten(1), x_hat.flatten(1), u.flatten(1)], dim=1)

    def score(self, v: torch.Tensor) -> torch.Tensor:  # (B, dv) -> (B,)
        h = v
        for layer in self.layers[:-1]:
            h = self.act(layer(h))
        return self.layers[-1](h).squeeze(1)

    def forward(self, x_hat: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.score(self.join(x_hat, z, u))

    def input_grad(self, v: torch.Tensor) -> torch.Tensor:  # (B, dv) -> (B, dv)
        if v.shape[1] != self.in_dim:
            raise ValueError(f"critic: expected [z, x, u] with {self.in_dim} features per sample, got {v.shape[1]}")
        return critic_grad(v, [l.weight for l in self.layers], [l.bias for l in self.layers], self.activation)


class ImageCritic(nn.Module):
    """The default image mechanism critic of Algorithm 2 (``MechanismCritic``), scores ``(x_hat, z, u) -> (B,)``.

    x_hat: (B, 3, H, W) images; z: (B, *z_shape); u: (B, u_dim). Two stride-2 convolutions and a global pool give a
    128-d image feature, padded or cut to ``hidden`` and added to linear embeddings of z and u. (In-place ReLUs of the
    paper's listing are plain ReLUs here: the loss differentiates through them twice.)
    """

    def __init__(self, z_shape: Sequence[int] = (3, 16, 16), u_dim: int = 20, hidden: int = 256, in_channels: int = 3):
        super().__init__()
        self.img = nn.Sequential(
            nn.Conv2d(in_channels, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        with warnings.catch_warnings():     # critic_input without z or u: a zero-width embedding adds its bias, 0
            warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
            self.z_fc = nn.Linear(math.prod(z_shape), hidden)
            self.u_fc = nn.Linear(u_dim, hidden)
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x_hat: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        img_feat = self.img(x_hat).flatten(1)
        z_feat = self.z_fc(z.flatten(1))
        u_feat = self.u_fc(u.flatten(1))
        if img_feat.size(1) < z_feat.size(1):
            img_feat = F.pad(img_feat, (0, z_feat.size(1) - img_feat.size(1)))
        else:
            img_feat = img_feat[:, : z_feat.size(1)]
        return self.out(z_feat + u_feat + img_feat).squeeze(1)


def _eager() -> bool:
    """Host-synchronising checks run only in eager mode: inside ``torch.compile`` they would break the graph (and
    stall a GPU); the native ops' own TORCH_CHECKs still catch non-finite inputs there."""
    return not torch.compiler.is_compiling()


def _check_clip(clip) -> None:
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip)
                             or clip < 0):
        raise ValueError(f"clip: expected a finite number >= 0 (0 or None: no clip), got {clip!r}")


def _check_tau(tau) -> float:
    if isinstance(tau, bool):
        raise TypeError(f"tau: expected a positive finite number, got {tau!r}")
    return _checks.positive_float(tau, "tau")


def _validate(z, u, u_key, tau, clip, groups, check_finite: bool):
    _checks.tensor(z, "z", min_ndim=2)
    batch = z.shape[0]
    if batch < 2:
        raise ValueError(f"z: InfoNCE needs a batch of at least 2 samples, got batch size {batch}")
    for name, t in (("u", u), ("u_key", u_key)):
        _checks.tensor(t, name, floating=False)
        if t.dim() < 2:
            raise ValueError(f"{name}: expected shape (B, d) (one row per sample), got {tuple(t.shape)}; use "
                             f"{name}[:, None] for a scalar condition")
        if t.shape[0] != batch:
            raise ValueError(f"{name}: expected batch size {batch} (as z), got shape {tuple(t.shape)}")
    _check_tau(tau)
    _check_clip(clip)
    if groups is not None:
        if not isinstance(groups, torch.Tensor) or groups.is_floating_point() or groups.shape != (batch,):
            got = tuple(groups.shape) if isinstance(groups, torch.Tensor) else type(groups).__name__
            raise ValueError(f"groups: expected an integer tensor of shape ({batch},), got {got}")
    if check_finite and _eager():
        _checks.finite(z, "z")
        if u.is_floating_point():
            _checks.finite(u, "u")


def _set_loss_options(mod, tau, clip, create_graph, multi_positive, eps, check_finite, critic_input, contrast) -> None:
    """The loss options :class:`MCL` and :class:`StackedMCL` share, checked and set on ``mod``."""
    mod.tau = _check_tau(tau)
    _check_clip(clip)
    mod.create_graph, mod.clip, mod.multi_positive, mod.eps = create_graph, clip, multi_positive, eps
    mod.check_finite = bool(check_finite)
    mod.critic_input, mod.contrast = critic_input, contrast
    mod._validated = False


def _no_grad_path(x_hat: torch.Tensor, what: str) -> ValueError:
    """The error for a generator output with no autograd path to z, saying why when grad mode is off."""
    if not torch.is_grad_enabled():
        return ValueError("MCL: autograd is disabled here (torch.no_grad() or torch.inference_mode()); the MCL loss "
                          "differentiates the generator, so call it with gradients enabled")
    return ValueError(f"decoder_G: the generator output does not depend on z ({what}); MCL needs x_hat = G(z, u) "
                      f"to be differentiable in z")


CRITIC_INPUTS = ("xzu", "xz", "x")
CONTRASTS = ("total", "generator")


def _critic_inputs(zg: torch.Tensor, u: torch.Tensor, critic_input: str):
    """(z, u) as the critic sees them: zero-width where ``critic_input`` leaves them out."""
    z_in = zg if "z" in critic_input else zg.new_zeros(zg.shape[0], 0)
    u_in = u if "u" in critic_input else u.new_zeros(u.shape[0], 0)
    return z_in, u_in


def mechanism_terms(
    decoder_G: Callable, z: torch.Tensor, u: torch.Tensor, critic: Callable, *, create_graph: bool = True,
    validate: bool = True, critic_input: str = "xzu",
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The two parts of the mechanism gradient ``grad_z c(G(z, u), z, u)``, each (B, prod(z.shape[1:])):

    * ``direct = d c / d z`` through the critic's own z-input (None when the critic does not see z);
    * ``generator = J_G(z, u)^T d c / d x``, the part that flows through the generator.

    ``critic_input`` says what the critic sees: ``"xzu"`` (Algorithm 1), ``"xz"`` (u only in the key head) or
    ``"x"`` (the generated sample alone); the generator always gets the real u. The MLP critic runs through the
    native ``critic_grad`` op, any other critic through autograd. With ``validate`` (eager mode only), a generator
    whose Jacobian in ``z`` is exactly zero on the whole batch raises (the output ignores z, or its activations are
    saturated there): MCL could not shape it.
    """
    if critic_input not in CRITIC_INPUTS:
        raise ValueError(f"critic_input: expected one of {CRITIC_INPUTS}, got {critic_input!r}")
    if not _eager() and not z.requires_grad and isinstance(critic, MLPCritic):
        return _mechanism_terms_traced(decoder_G, z, u, critic, create_graph, critic_input)
    zg = z if z.requires_grad else z.detach().requires_grad_(True)
    x_hat = decoder_G(zg, u)
    if not isinstance(x_hat, torch.Tensor) or x_hat.shape[:1] != z.shape[:1]:
        got = tuple(x_hat.shape) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
        raise ValueError(f"decoder_G: expected a tensor with batch size {z.shape[0]}, got {got}")
    if not x_hat.requires_grad:
        raise _no_grad_path(x_hat, "its output does not require grad")
    zero = ValueError("decoder_G: dG/dz is exactly zero on every sample of this batch (the output ignores z, or "
                      "its activations are saturated at these inputs); MCL cannot reach the generator")
    check = validate and _eager()
    z_in, u_in = _critic_inputs(zg, u, critic_input)
    if isinstance(critic, MLPCritic):
        dz, dx, du = z_in[0].numel(), x_hat[0].numel(), u_in[0].numel()
        if dz + dx + du != critic.in_dim:
            raise ValueError(f"u: expected {critic.in_dim - dz - dx} features per sample (the critic takes "
                             f"[z ({dz}), x ({dx}), u], {critic.in_dim} in all), got {du}")
        v = MLPCritic.join(x_hat, z_in, u_in).to(critic.layers[0].weight.dtype)
        gv = critic.input_grad(v)  # (B, dz + dx + du)
        gz, gx = gv[:, :dz], gv[:, dz : dz + dx]
        (jtg,) = torch.autograd.grad(x_hat, zg, grad_outputs=gx.reshape(x_hat.shape).to(x_hat.dtype),
                                     create_graph=create_graph, allow_unused=True)
        if jtg is None:
            raise _no_grad_path(x_hat, "no autograd path from z to x_hat")
        if check and not bool(jtg.any()):
            raise zero
        direct = gz.to(jtg.dtype) if dz else None
        terms = direct, jtg.flatten(1)
    else:
        # the critic's z-input is its own graph node (an alias of zg): the gradient with respect to it is the
        # direct term alone, while the paths from zg through the generator stay separate (and both stay
        # differentiable in zg for create_graph)
        z_in = z_in.view_as(z_in)
        s = critic(x_hat, z_in, u_in)
        if not isinstance(s, torch.Tensor) or s.shape != (z.shape[0],):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"critic: expected one score per sample, shape ({z.shape[0]},), got {got}")
        if check:
            probe = torch.autograd.grad(x_hat, zg, grad_outputs=torch.ones_like(x_hat), retain_graph=True,
                                        allow_unused=True)[0]
            if probe is None:
                raise _no_grad_path(x_hat, "no autograd path from z to x_hat")
            if not bool(probe.any()):
                raise zero
        inputs = (x_hat, z_in) if z_in.shape[1] else (x_hat,)
        grads = torch.autograd.grad(s.sum(), inputs, create_graph=True, allow_unused=True)
        gx = grads[0] if grads[0] is not None else torch.zeros_like(x_hat)
        (jtg,) = torch.autograd.grad(x_hat, zg, grad_outputs=gx, create_graph=create_graph, allow_unused=True)
        if jtg is None:
            raise _no_grad_path(x_hat, "no autograd path from z to the critic's score")
        direct = None
        if len(grads) > 1:
            direct = (grads[1] if grads[1] is not None else torch.zeros_like(zg)).flatten(1)
        terms = direct, jtg.flatten(1)
    if create_graph:
        return terms
    return (None if terms[0] is None else terms[0].detach()), terms[1].detach()


def mechanism_gradient(
    decoder_G: Callable, z: torch.Tensor, u: torch.Tensor, critic: Callable, *, create_graph: bool = True,
    validate: bool = True, critic_input: str = "xzu", contrast: str = "generator",
) -> torch.Tensor:
    """The contrasted mechanism gradient, (B, prod(z.shape[1:])): ``contrast="generator"`` (default) is the
    generator term alone, ``J_G^T grad_x c``; ``"total"`` is ``grad_z c(G(z, u), z, u) = direct + generator``
    (Algorithm 1; see :func:`mechanism_terms` and :class:`MCLConfig` for why the default differs)."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast: expected one of {CONTRASTS}, got {contrast!r}")
    direct, gen = mechanism_terms(decoder_G, z, u, critic, create_graph=create_graph, validate=validate,
                                  critic_input=critic_input)
    return gen if contrast == "generator" or direct is None else direct + gen


def _mechanism_terms_traced(decoder_G, z, u, critic: "MLPCritic", create_graph: bool, critic_input: str):
    """The MLP-critic path of :func:`mechanism_terms` for a ``z`` that does not require grad, as traced by
    ``torch.compile``: ``torch.func.vjp`` gives ``J_G^T grad_x c`` without making ``z`` a leaf that requires grad
    (AOTAutograd cannot return such a leaf created inside the graph). Same values as the eager path."""
    x_hat, vjp = torch.func.vjp(lambda zz: decoder_G(zz, u), z)
    z_in, u_in = _critic_inputs(z, u, critic_input)
    dz, dx = z_in[0].numel(), x_hat[0].numel()
    v = MLPCritic.join(x_hat, z_in, u_in).to(critic.layers[0].weight.dtype)
    gv = critic.input_grad(v)                                                   # (B, dz + dx + du)
    (jtg,) = vjp(gv[:, dz:dz + dx].reshape(x_hat.shape).to(x_hat.dtype))
    direct = gv[:, :dz].to(jtg.dtype) if dz else None
    if not create_graph:
        return (None if direct is None else direct.detach()), jtg.flatten(1).detach()
    return direct, jtg.flatten(1)


def clip_rows(g: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """Scale each row of ``g`` to L2 norm at most ``max_norm`` (differentiable); ``None`` or 0 disables."""
    if not max_norm:
        return g
    norm = g.norm(dim=1, keepdim=True)
    return g * (max_norm / norm.clamp_min(max_norm))


def condition_groups(u_key: torch.Tensor) -> torch.Tensor:
    """(B,) int64 ids, equal for rows of ``u_key`` that are exactly equal (multi-positive InfoNCE)."""
    return torch.unique(u_key.flatten(1), dim=0, return_inverse=True)[1]


def mcl_loss(
    decoder_G: Callable,
    z: torch.Tensor,
    u: torch.Tensor,
    *,
    critic: Callable,
    Pi_g: Callable,
    Pi_u: Callable,
    tau: float = 0.1,
    create_graph: bool = True,
    clip: float | None = 10.0,
    u_key: torch.Tensor | None = None,
    multi_positive: bool = False,
    groups: torch.Tensor | None = None,
    eps: float = 1e-12,
    validate: bool = True,
    check_finite: bool = True,
    critic_input: str = "xzu",
    contrast: str = "generator",
    gather: bool = False,
) -> torch.Tensor:
    """MCL loss (paper Eq. 18; Algorithm 1 with ``contrast="total"``). Scalar.

    Args:
        decoder_G: generator ``(z, u) -> x_hat``; z and x_hat of any shape ``(B, ...)`` (flattened inside).
        z: (B, ...) latents; gradients flow back into z if it requires grad (e.g. an encoder's sample).
        u: (B, ...) condition fed to the generator and the critic.
        critic: an :class:`MLPCritic` (native op path), or any ``(x_hat, z, u) -> (B,)`` callable (autograd path).
        Pi_g: head on the mechanism gradient, (B, dz) -> (B, d). Pi_u: head on the key, (B, du_key) -> (B, d).
        tau: InfoNCE temperature (default 0.1, App. D/E; section 5 says 0.07).
        create_graph: train through the mechanism gradient (Algorithm 1, default) or treat it as a constant
            (Algorithm 2's default, section 5's "detached").
        clip: per-sample L2 norm clip of the mechanism gradient (section 5: 10); None disables.
        u_key: the contrastive key input for ``Pi_u`` (Algorithm 2's ``u_key``); defaults to ``u``.
        multi_positive: every row whose key input equals row i's is a positive of i (groups from equal rows).
        groups: explicit (B,) integer condition ids for the multi-positive mode (implies it).
        eps: floor of the norms in the L2 normalisation.
        validate: check that x_hat depends on z (one extra reduction, plus one vector-Jacobian product on the
            autograd critic path).
        check_finite: check z and u for NaN/inf first (a reduction and a host sync each).
        critic_input: what the critic sees, ``"xzu"`` (Algorithm 1), ``"xz"`` or ``"x"`` (see :class:`MCLConfig`).
        contrast: the contrasted term, ``"generator"`` (default: ``J_G^T grad_x c`` only) or ``"total"``
            (Algorithm 1: ``grad_z c``); see :class:`MCLConfig`.
        gather: contrast against the keys of every rank of the torch.distributed process group (see
            :class:`MCLConfig`); the returned loss is this rank's share (its mean over ranks is the global loss).

    Checks that synchronise with the host (finiteness, the generator check) run in eager mode only: inside
    ``torch.compile`` they are skipped (no graph break, no GPU stall) and the native ops' own checks remain.
    Under autocast the heads and the InfoNCE run in float32 (at least); heads kept in half precision run in it.
    """
    u_key = u if u_key is None else u_key
    _validate(z, u, u_key, tau, clip, groups, check_finite)
    g = mechanism_gradient(decoder_G, z, u, critic, create_graph=create_graph, validate=validate,
                           critic_input=critic_input, contrast=contrast)                       # (B, dz)
    g = clip_rows(g, clip)
    key = u_key.flatten(1)
    if groups is None and multi_positive and not gather:
        groups = condition_groups(u_key)
    offset = None
    with torch.autocast(device_type=g.device.type, enabled=False):
        q = Pi_g(g.to(_head_dtype(Pi_g, g)))                                    # (B, d)
        k = Pi_u(key.to(_head_dtype(Pi_u, key)))                                # (B, d)
        if gather:  # every rank's keys (N, d) and their ids; row i's positive is key rank * B + i
            k, groups, offset = _gather_keys(k, groups, key if groups is None and multi_positive else None)
        if not _eager():
            return infonce(q, k, tau, groups=groups, eps=eps, offset=offset)
        try:
            return infonce(q, k, tau, groups=groups, eps=eps, offset=offset)
        except ValueError as err:  # name what the user can change, not the op's internal inputs p and k
            msg = str(err)
            if msg.startswith("p: contains NaN"):
                raise ValueError("MCL: the mechanism gradient is not finite (NaN or inf from the generator output "
                                 "G(z, u), the critic, or the head Pi_g)") from None
            if msg.startswith("k: contains NaN"):
                raise ValueError("MCL: the key projection Pi_u(u_key) is not finite (NaN or inf in u_key or the "
                                 "head Pi_u)") from None
            raise


GATHER_NEEDS_GROUP = ("mcl.gather: needs an initialised torch.distributed process group (run under torchrun, "
                      "which the studies start with mclcore.distributed.init); set mcl.gather=false for one process")


def _check_sizes(sizes: list, B: int, capturing: bool) -> None:
    """Every rank's local batch size (``sizes``: one (1,) int64 tensor per rank) must be B. Eager: read on the host
    and a ValueError naming each rank's size. While a CUDA graph is being captured no host read is allowed, so the
    check is a device-side assertion (``torch._assert_async``: the replay fails, without the sizes in the message)."""
    if capturing:
        torch._assert_async(torch.cat(sizes).eq(B).all())
        return
    got = [int(t) for t in sizes]
    if any(b != B for b in got):
        raise ValueError("mcl.gather: every rank needs the same local batch size (the keys of rank r are rows "
                         "r B .. r B + B - 1 of the gathered batch), got " +
                         ", ".join(f"rank {r}: {b}" for r, b in enumerate(got)))


@torch.compiler.disable  # collectives and (outside CUDA-graph capture) a host read of the batch sizes: eager
def _gather_keys(k: torch.Tensor, groups: torch.Tensor | None, key_rows: torch.Tensor | None):
    """``gather=True``: (the keys of every rank, (N, d) = (world B, d), in rank order, differentiable: the backward
    of ``torch.distributed.nn.functional.all_gather`` sums each rank's key gradients back to the rank that made
    them; the condition ids of those N keys or None; this rank's offset, rank * B).

    ``groups`` (this rank's explicit ids) are gathered as they are, so they must mean the same on every rank;
    ``key_rows`` (the flattened key inputs, multi-positive without explicit ids) are gathered and numbered
    together, so equal key rows on different ranks share an id. Every rank must hold the same local batch size B:
    one all-gather of B checks it and raises on every rank, naming each rank's size (:func:`_check_sizes`; during
    CUDA-graph capture a device-side assertion instead of the host read). In a world of 1 (as
    :func:`mclcore.distributed.context` reports it) no collective runs and this is the local batch, offset 0."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_nn

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(GATHER_NEEDS_GROUP)
    ctx = distributed.context()
    if ctx.world_size == 1:
        return k, (condition_groups(key_rows) if key_rows is not None else groups), 0
    B = k.shape[0]
    sizes = [torch.zeros(1, dtype=torch.int64, device=k.device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.full((1,), B, dtype=torch.int64, device=k.device))     # a fill, no H2D copy
    _check_sizes(sizes, B, capturing=k.is_cuda and torch.cuda.is_current_stream_capturing())

    def cat_plain(t: torch.Tensor) -> torch.Tensor:  # no gradient needed (ids, key inputs)
        t = t.to(torch.uint8) if t.dtype == torch.bool else t  # (gloo gathers no bool tensors)
        parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    with warnings.catch_warnings():
        # torch 2.13 marks it deprecated (FutureWarning, once per process) in favour of the private
        # torch.distributed._functional_collectives; it is the public all-gather with a backward (reduce-scatter).
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        keys = torch.cat(dist_nn.all_gather(k), 0)
    if key_rows is not None:
        groups = condition_groups(cat_plain(key_rows))
    elif groups is not None:
        groups = cat_plain(groups)
    return keys, groups, ctx.rank * B


def _head_dtype(head, x: torch.Tensor) -> torch.dtype:
    """The dtype a projection head runs in: its parameters' when they are half precision (a ``.half()`` module),
    else at least float32 (under autocast the input may be bf16/fp16)."""
    p = next(head.parameters(), None) if isinstance(head, nn.Module) else None
    if p is not None and p.dtype in (torch.float16, torch.bfloat16):
        return p.dtype
    return torch.promote_types(x.dtype, torch.float32)


CRITICS = ("mlp", "image")


@dataclasses.dataclass
class MCLConfig:
    """Every option of the MCL regulariser, documented once (the studies nest it as their ``mcl`` section).

    Paper defaults unless said otherwise; where the paper disagrees with itself the default is named and the
    alternative is one field away (see the module docstring):

    * ``tau``: InfoNCE temperature, 0.1 (App. D/E and Algorithms 1-2; section 5 says 0.07).
    * ``clip``: per-sample L2 clip of the mechanism gradient, 10 (section 5); 0 or None disables.
    * ``create_graph``: train through the mechanism gradient (Algorithm 1, True); False is Algorithm 2's default,
      where MCL trains only the heads.
    * ``multi_positive``: every row with the same condition is a positive (groups from equal key rows or given);
      False is Eq. 18's diagonal.
    * ``critic``: ``"mlp"`` (the paper's ``[z, x, u] -> 256 -> 256 -> 1``, native ``critic_grad`` op) or
      ``"image"`` (Algorithm 2's convolutional critic, plain autograd; only ``critic_hidden[0]`` is used).
    * ``critic_hidden``, ``activation``: the critic's hidden widths and activation (256, 256; GELU).
    * ``critic_input``: what the critic sees: ``"xzu"`` = ``c(x, z, u)`` (Algorithm 1), ``"xz"`` = ``c(x, z)``
      (u only in the key head), ``"x"`` = ``c(x)``. With u in the critic, ``grad_z c`` can vary with u through
      the critic alone, which solves the InfoNCE without the generator (measured in
      experiments/synthetic/README.md).
    * ``contrast``: which mechanism gradient is contrasted: ``"generator"`` (the default) = ``J_G(z, u)^T grad_x c``,
      the part that flows through the generator (the critic's direct z-term is left out), or ``"total"`` =
      ``grad_z c(G(z, u), z, u)``, **Algorithm 1** (``contrast="total"`` with ``critic_input="xzu"``). With
      ``critic_input="x"`` the two are the same. Why the default differs from the paper (measured, 10 seeds,
      experiments/synthetic/README.md "Does MCL help?"): with Algorithm 1 the critic's direct term alone reads the
      condition at 99-100% top-1 accuracy (chance 7-25%) and carries the contrast (shortcut share 0.5-0.94), so
      MCL can be solved without the generator; contrasting the generator term gives that term 90-100% accuracy and
      a shortcut share of 0-0.01, i.e. the contrast is carried by the generator, which is what MCL is meant to
      shape. (Whether that helps identifiability is a separate question: in our synthetic cells it did not.)
    * ``proj_dim``, ``proj_layernorm``: the projection heads (128; LayerNorm first as in Algorithm 2: off).
    * ``eps``: floor of the norms in the L2 normalisation.
    * ``weighting``: how a study weights L_MCL against its host loss: ``"absolute"`` (``lambda * L_MCL``, the
      paper's) or ``"relative"`` (lambda relative to the host loss by gradient norm on the generator;
      :class:`mclcore.losses.diagnostics.MCLWeight`).
    * ``diagnose_every``: steps between the diagnostics a study logs (readout accuracies, shortcut share, gradient
      ratio: :mod:`mclcore.losses.diagnostics`) and between the relative weight's measurements; 0: no diagnostics
      (the relative mode then measures once, at the first step).
    * ``check_finite``: check z and u for NaN/inf on every call (a reduction and a host sync each, eager mode
      only: skipped inside ``torch.compile``); off saves them on a GPU where the inputs are known finite.
    * ``gather``: more than one process (torchrun, an initialised torch.distributed process group): each rank
      all-gathers the projected keys of every rank (after the heads, with their gradients:
      ``torch.distributed.nn.functional.all_gather``) and contrasts its B local queries against all N = world * B
      keys (the infonce op's rectangular mode, offset rank * B), in multi-positive mode with condition ids numbered
      over the gathered batch. Each rank's loss is then its share of the global batch's InfoNCE: the mean over ranks
      is the loss of one process on the concatenated batch, and gradients averaged over ranks (DDP, or an
      all-reduce mean of the gradients) are that loss's gradients. False (default): each rank
      contrasts its own batch only (B - 1 negatives, not N - 1). Only the keys travel (the queries stay local:
      the loss is over the local rows); every rank must have the same local batch size (checked by one all-gather
      per call, raising on every rank with the sizes), and without a process group it raises. A world of 1 equals
      False. :class:`StackedMCL` (the synthetic study's stacked members) refuses it.
    """

    tau: float = 0.1
    clip: float | None = 10.0
    create_graph: bool = True
    multi_positive: bool = False
    critic: str = "mlp"
    critic_hidden: tuple = (256, 256)
    activation: str = "gelu"
    critic_input: str = "xzu"
    contrast: str = "generator"
    proj_dim: int = 128
    proj_layernorm: bool = False
    eps: float = 1e-12
    check_finite: bool = True
    weighting: str = "absolute"
    diagnose_every: int = 50
    gather: bool = False

    def validate(self) -> "MCLConfig":
        """Raise ValueError naming the first bad field (``mcl.<field>``); returns self."""
        def bad(name, expected):
            raise ValueError(f"mcl.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("tau", "eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                bad(name, "a positive finite number")
        if self.clip is not None and (isinstance(self.clip, bool) or not isinstance(self.clip, (int, float))
                                      or not math.isfinite(self.clip) or self.clip < 0):
            bad("clip", "a finite number >= 0 (0 or None: no clip)")
        for name in ("create_graph", "multi_positive", "proj_layernorm", "check_finite", "gather"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "true or false")
        if self.critic not in CRITICS:
            bad("critic", f"one of {CRITICS}")
        if self.critic_input not in CRITIC_INPUTS:
            bad("critic_input", f"one of {CRITIC_INPUTS}")
        if self.contrast not in CONTRASTS:
            bad("contrast", f"one of {CONTRASTS}")
        if self.activation not in ACTIVATIONS:
            bad("activation", f"one of {ACTIVATIONS}")
        hidden = self.critic_hidden
        if (not isinstance(hidden, (tuple, list)) or not hidden
                or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden)):
            bad("critic_hidden", "a non-empty list of positive integers")
        if isinstance(self.proj_dim, bool) or not isinstance(self.proj_dim, int) or self.proj_dim < 1:
            bad("proj_dim", "a positive integer")
        if self.weighting not in ("absolute", "relative"):
            bad("weighting", "'absolute' or 'relative'")
        if isinstance(self.diagnose_every, bool) or not isinstance(self.diagnose_every, int) or self.diagnose_every < 0:
            bad("diagnose_every", "an integer >= 0")
        return self


class MCL(nn.Module):
    """MCL as a drop-in regulariser: the critic, both projection heads and the loss options in one module.

    Example::

        mcl = MCL(z_dim=10, x_dim=64, u_dim=16)
        loss = recon + lam * mcl(decoder, z, u)      # decoder: (z, u) -> x_hat

    Args:
        z_dim, x_dim: per-sample sizes (ints) or shapes (tuples) of z and x_hat.
        u_dim: per-sample size of the condition fed to the generator and critic.
        u_key_dim: size of the key input of ``Pi_u`` when it differs from u (Algorithm 2); default ``u_dim``.
        critic: ``"mlp"`` (paper default, native op), ``"image"`` (Algorithm 2's convolutional critic; x_hat must be
            (B, 3, H, W)), or any module ``(x_hat, z, u) -> (B,)``.
        critic_hidden, activation: widths and activation of the MLP critic (paper: (256, 256), GELU).
        proj_dim: projection dimension (paper: 128). proj_layernorm: LayerNorm first in each head (Algorithm 2).
        tau, create_graph, clip, multi_positive, eps: see :func:`mcl_loss`.
        critic_input, contrast: the mechanism-gradient choices (see :class:`MCLConfig`; the default contrasts the
            generator term; Algorithm 1 is ``critic_input="xzu", contrast="total"``).
        gather: contrast against the keys of every rank (torch.distributed; see :class:`MCLConfig`).

    ``MCL.from_config(cfg, z_dim=, x_dim=, u_dim=)`` builds it from an :class:`MCLConfig`.
    """

    def __init__(
        self,
        z_dim: int | Sequence[int],
        x_dim: int | Sequence[int],
        u_dim: int,
        *,
        u_key_dim: int | None = None,
        critic: str | nn.Module = "mlp",
        critic_hidden: Sequence[int] = (256, 256),
        activation: str = "gelu",
        proj_dim: int = 128,
        proj_layernorm: bool = False,
        tau: float = 0.1,
        create_graph: bool = True,
        clip: float | None = 10.0,
        multi_positive: bool = False,
        critic_input: str = "xzu",
        contrast: str = "generator",
        eps: float = 1e-12,
        check_finite: bool = True,
        gather: bool = False,
    ):
        super().__init__()
        z_shape = (z_dim,) if isinstance(z_dim, int) else tuple(z_dim)
        x_shape = (x_dim,) if isinstance(x_dim, int) else tuple(x_dim)
        dz, dx = math.prod(z_shape), math.prod(x_shape)
        if critic_input not in CRITIC_INPUTS:
            raise ValueError(f"critic_input: expected one of {CRITIC_INPUTS}, got {critic_input!r}")
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast: expected one of {CONTRASTS}, got {contrast!r}")
        du_critic = u_dim if "u" in critic_input else 0
        dz_critic = dz if "z" in critic_input else 0
        if critic == "mlp":
            critic = MLPCritic(dz_critic + dx + du_critic, critic_hidden, activation)
        elif critic == "image":
            critic = ImageCritic(z_shape if dz_critic else (0,), du_critic, hidden=critic_hidden[0])
        elif not callable(critic):
            raise ValueError(f"critic: expected 'mlp', 'image' or a module (x_hat, z, u) -> (B,), got {critic!r}")
        self.critic = critic
        self.Pi_g = MLPProj(dz, proj_dim, proj_layernorm)
        self.Pi_u = MLPProj(u_key_dim or u_dim, proj_dim, proj_layernorm)
        _set_loss_options(self, tau, clip, create_graph, multi_positive, eps, check_finite, critic_input, contrast)
        if not isinstance(gather, bool):
            raise TypeError(f"gather: expected True or False, got {gather!r}")
        self.gather = gather

    @classmethod
    def from_config(cls, cfg: MCLConfig, *, z_dim: int | Sequence[int], x_dim: int | Sequence[int], u_dim: int,
                    u_key_dim: int | None = None) -> "MCL":
        """The module of a validated :class:`MCLConfig` for generators with these per-sample sizes."""
        if not isinstance(cfg, MCLConfig):
            raise TypeError(f"cfg: expected an MCLConfig, got {type(cfg).__name__}")
        cfg.validate()
        return cls(z_dim, x_dim, u_dim, u_key_dim=u_key_dim, critic=cfg.critic, critic_hidden=tuple(cfg.critic_hidden),
                   activation=cfg.activation, proj_dim=cfg.proj_dim, proj_layernorm=cfg.proj_layernorm, tau=cfg.tau,
                   create_graph=cfg.create_graph, clip=cfg.clip or None, multi_positive=cfg.multi_positive,
                   critic_input=cfg.critic_input, contrast=cfg.contrast, eps=cfg.eps,
                   check_finite=cfg.check_finite, gather=cfg.gather)

    def forward(self, decoder_G: Callable, z: torch.Tensor, u: torch.Tensor, *, u_key: torch.Tensor | None = None,
                groups: torch.Tensor | None = None) -> torch.Tensor:
        """L_MCL of ``decoder_G`` at (z, u). Under ``torch.compile`` the loss is traced into the graph when
        ``torch._dynamo.config.trace_autograd_ops`` is True (PyTorch's switch that lets dynamo trace
        ``torch.autograd.grad``, which the mechanism gradient calls; needed for ``fullgraph=True``); otherwise the
        MCL term runs eagerly between two compiled graphs (a graph break), with the same values."""
        if torch.compiler.is_compiling() and not torch._dynamo.config.trace_autograd_ops:
            return self._forward_eager(decoder_G, z, u, u_key=u_key, groups=groups)
        return self._forward(decoder_G, z, u, u_key=u_key, groups=groups)

    @torch.compiler.disable
    def _forward_eager(self, decoder_G, z, u, *, u_key=None, groups=None) -> torch.Tensor:
        return self._forward(decoder_G, z, u, u_key=u_key, groups=groups)

    def _forward(self, decoder_G: Callable, z: torch.Tensor, u: torch.Tensor, *, u_key: torch.Tensor | None = None,
                 groups: torch.Tensor | None = None) -> torch.Tensor:
        self._check_widths(z, u, u_key)
        # The generator check costs a reduction (and a VJP on the autograd path): do it on the first call only.
        loss = mcl_loss(decoder_G, z, u, critic=self.critic, Pi_g=self.Pi_g, Pi_u=self.Pi_u, tau=self.tau,
                        create_graph=self.create_graph, clip=self.clip, u_key=u_key,
                        multi_positive=self.multi_positive, groups=groups, eps=self.eps,
                        validate=not self._validated, check_finite=self.check_finite,
                        critic_input=self.critic_input, contrast=self.contrast, gather=self.gather)
        self._validated = True
        return loss

    def _check_widths(self, z, u, u_key) -> None:
        """Per-sample widths of z and the key against the heads (as they are now: users may swap them), one line
        naming the argument; u's width is checked against the critic in :func:`mechanism_gradient`."""
        key = u if u_key is None else u_key
        for name, t, head in (("z", z, self.Pi_g), ("u_key" if u_key is not None else "u", key, self.Pi_u)):
            lin = next((m for m in head.modules() if isinstance(m, nn.Linear)), None) \
                if isinstance(head, nn.Module) else None
            if lin is None or not isinstance(t, torch.Tensor) or t.dim() < 2:
                continue                                      # shape errors proper are raised by mcl_loss
            if t[0].numel() != lin.in_features:
                raise ValueError(f"{name}: expected {lin.in_features} features per sample (the width the MCL "
                                 f"heads were built for), got {t[0].numel()} (shape {tuple(t.shape)})")

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, create_graph={self.create_graph}, clip={self.clip}, "
                f"multi_positive={self.multi_positive}, critic_input={self.critic_input!r}, "
                f"contrast={self.contrast!r}" + (", gather=True" if self.gather else ""))


class StackedMCL(nn.Module):
    """M independent MCL regularisers in one module, one per member of a stack of models (e.g. the seeds of
    :class:`mclcore.models.vae.StackedVAE`): stacked parameters, one call of each native op for all members.

    Built from M :class:`MCL` modules with the MLP critic (:meth:`from_members`), whose parameters it copies into
    stacked tensors: member m starts exactly as ``members[m]`` and computes what ``members[m]`` would (float64:
    equal to ~1e-15; float32: to rounding, the batched products sum in another order). Parameters, in the per-member
    order of :class:`MCL` with a leading member axis: ``critic[l].weight`` (M, out_l, in_l), ``critic[l].bias``
    (M, out_l), then per head (``Pi_g``, ``Pi_u``) ``<head>[i].weight`` / ``.bias`` for its LayerNorm (when built
    with one; (M, in)) and its two linear layers ((M, out, in), (M, out)). Member m's slice of every parameter is
    the same-numbered parameter of ``members[m]``.

    ``forward(decoder_G, z, u, groups=None, u_key=None)``: ``decoder_G`` maps stacked (M, B, dz), (M, B, du) to
    (M, B, ...) (e.g. ``StackedVAE.decode``); returns the (M,) losses, member m that of ``members[m]`` on
    ``decoder_G``'s member m. Members never interact: the gradient of the sum is each member's own.
    """

    def __init__(self, members: int, *, dz: int, dx: int, du: int, du_key: int, critic_hidden: Sequence[int],
                 activation: str, proj_dim: int, proj_layernorm: bool, tau: float, create_graph: bool,
                 clip: float | None, multi_positive: bool, critic_input: str, contrast: str, eps: float,
                 check_finite: bool, dtype: torch.dtype = torch.float32):
        super().__init__()
        if members < 1:
            raise ValueError(f"members: expected at least 1, got {members}")
        if critic_input not in CRITIC_INPUTS:
            raise ValueError(f"critic_input: expected one of {CRITIC_INPUTS}, got {critic_input!r}")
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast: expected one of {CONTRASTS}, got {contrast!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        M = int(members)
        self.members, self.dz, self.dx, self.du = M, int(dz), int(dx), int(du)
        dv = dz * ("z" in critic_input) + dx + du * ("u" in critic_input)
        dims = [dv, *map(int, critic_hidden), 1]
        self.critic = nn.ModuleList(_StackedAffine((M, b, a), dtype) for a, b in zip(dims[:-1], dims[1:]))
        for name, din in (("Pi_g", dz), ("Pi_u", du_key)):
            layers = [_StackedAffine((M, din), dtype)] if proj_layernorm else []
            layers += [_StackedAffine((M, proj_dim, din), dtype), _StackedAffine((M, proj_dim, proj_dim), dtype)]
            setattr(self, name, nn.ModuleList(layers))
        self.activation, self.proj_layernorm = activation, bool(proj_layernorm)
        _set_loss_options(self, tau, clip, create_graph, multi_positive, eps, check_finite, critic_input, contrast)

    @classmethod
    def from_members(cls, members: Sequence["MCL"]) -> "StackedMCL":
        """The stack of ``members`` (MCL modules with the MLP critic, built alike: same options and sizes), their
        parameters copied (the first module is kept, unregistered, as the template of :meth:`member`)."""
        members = list(members)
        if not members:
            raise ValueError("members: expected at least one MCL module")
        first = members[0]
        if not all(isinstance(m, MCL) and isinstance(m.critic, MLPCritic) for m in members):
            raise ValueError("members: StackedMCL stacks MCL modules with the MLP critic (critic='mlp') only")
        if any(getattr(m, "gather", False) for m in members):
            # Not built: its member-stacked forward would need the (M, B, d) keys gathered and per-member ids
            # numbered over the gathered batch; the op itself takes member-stacked rectangular inputs.
            raise ValueError("mcl.gather: StackedMCL (stacked members) does not gather keys across ranks; set "
                             "mcl.gather=false, or train the members as separate MCL modules")
        lin_g = [l for l in first.Pi_g.net if isinstance(l, nn.Linear)]
        lin_u = [l for l in first.Pi_u.net if isinstance(l, nn.Linear)]
        ln = isinstance(first.Pi_g.net[0], nn.LayerNorm)
        dv = first.critic.in_dim
        du_key = lin_u[0].in_features
        dz = lin_g[0].in_features
        dzc = dz if "z" in first.critic_input else 0
        # The critic's width dv = dz_c + dx + du_c fixes the parameters; the split of dx and du_c (read here with
        # du_c = the key width) only names them (forward checks the actual widths against the critic's).
        du = du_key if "u" in first.critic_input else 0
        dx = dv - dzc - du
        out = cls(len(members), dz=dz, dx=dx, du=du, du_key=du_key,
                  critic_hidden=[l.out_features for l in first.critic.layers[:-1]], activation=first.critic.activation,
                  proj_dim=lin_g[-1].out_features, proj_layernorm=ln, tau=first.tau, create_graph=first.create_graph,
                  clip=first.clip, multi_positive=first.multi_positive, critic_input=first.critic_input,
                  contrast=first.contrast, eps=first.eps, check_finite=first.check_finite,
                  dtype=first.critic.layers[0].weight.dtype)
        opts = lambda m: (m.tau, m.create_graph, m.clip, m.multi_positive, m.critic_input, m.contrast, m.eps,  # noqa
                          m.critic.activation, [tuple(p.shape) for p in m.parameters()])
        if any(opts(m) != opts(first) for m in members):
            raise ValueError("members: the MCL modules differ in options or sizes; StackedMCL stacks alike members")
        with torch.no_grad():
            for i, m in enumerate(members):
                for mine, theirs in zip(out.parameters(), m.parameters()):
                    mine[i].copy_(theirs)
        out.__dict__["_template"] = members[0]  # a plain attribute, not a submodule: its parameters are not ours
        return out

    def member(self, m: int) -> "MCL":
        """Member m as a plain :class:`MCL` module holding copies of its current parameters (detached: for
        measurements such as :func:`mclcore.losses.diagnostics.readout`, not for training)."""
        import copy

        mcl = copy.deepcopy(self.__dict__["_template"])
        with torch.no_grad():
            for mine, theirs in zip(self.parameters(), mcl.parameters()):
                theirs.copy_(mine[m])
        return mcl

    def _head(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Projection head ``name`` on (M, B, in) -> (M, B, proj_dim): [LayerNorm] -> Linear -> ReLU -> Linear."""
        layers = list(getattr(self, name))
        if self.proj_layernorm:
            ln = layers.pop(0)
            x = F.layer_norm(x, x.shape[-1:]) * ln.weight[:, None, :] + ln.bias[:, None, :]
        x = torch.baddbmm(layers[0].bias[:, None, :], x, layers[0].weight.transpose(1, 2)).relu()
        return torch.baddbmm(layers[1].bias[:, None, :], x, layers[1].weight.transpose(1, 2))

    def forward(self, decoder_G: Callable, z: torch.Tensor, u: torch.Tensor, *, u_key: torch.Tensor | None = None,
                groups: torch.Tensor | None = None) -> torch.Tensor:
        """(M,) MCL losses. z (M, B, dz), u (M, B, du), u_key (M, B, du_key) (default u), groups (M, B) ids."""
        u_key = u if u_key is None else u_key
        M = self.members
        for name, t, width in (("z", z, self.dz), ("u", u, None), ("u_key", u_key, self.Pi_u[-2].weight.shape[-1])):
            _checks.tensor(t, name, ndim=3, floating=name == "z")
            if t.shape[0] != M or t.shape[1] != z.shape[1]:
                raise ValueError(f"{name}: expected shape ({M}, {z.shape[1]}, ...) (members, batch, features), got "
                                 f"{tuple(t.shape)}")
            if width is not None and t.shape[2] != width:
                raise ValueError(f"{name}: expected {width} features per sample, got {t.shape[2]}")
        if z.shape[1] < 2:
            raise ValueError(f"z: InfoNCE needs a batch of at least 2 samples, got batch size {z.shape[1]}")
        if groups is not None and (not isinstance(groups, torch.Tensor) or groups.is_floating_point()
                                   or tuple(groups.shape) != tuple(z.shape[:2])):
            got = tuple(groups.shape) if isinstance(groups, torch.Tensor) else type(groups).__name__
            raise ValueError(f"groups: expected an integer tensor of shape {tuple(z.shape[:2])}, got {got}")
        if self.check_finite and _eager():
            _checks.finite(z, "z")
            if u.is_floating_point():
                _checks.finite(u, "u")
        zg = z if z.requires_grad else z.detach().requires_grad_(True)
        x_hat = decoder_G(zg, u)                                                   # (M, B, dx)
        if not isinstance(x_hat, torch.Tensor) or tuple(x_hat.shape[:2]) != tuple(z.shape[:2]):
            got = tuple(x_hat.shape) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
            raise ValueError(f"decoder_G: expected a tensor of shape ({M}, {z.shape[1]}, ...), got {got}")
        if not x_hat.requires_grad:
            raise _no_grad_path(x_hat, "its output does not require grad")
        z_in = zg if "z" in self.critic_input else zg.new_zeros(*zg.shape[:2], 0)
        u_in = u if "u" in self.critic_input else u.new_zeros(*u.shape[:2], 0)
        dzc, dx = z_in.shape[2], x_hat[0, 0].numel()
        v = torch.cat([z_in, x_hat.flatten(2), u_in.flatten(2).to(x_hat.dtype)], dim=2)  # (M, B, dv)
        weights, biases = [l.weight for l in self.critic], [l.bias for l in self.critic]
        if v.shape[2] != weights[0].shape[2]:
            raise ValueError(f"u: expected {weights[0].shape[2] - dzc - dx} features per sample (the "
                             f"critic takes [z ({dzc}), x ({dx}), u]), got {u_in.flatten(2).shape[2]}")
        gv = critic_grad(v.to(weights[0].dtype), weights, biases, self.activation)  # (M, B, dv)
        gx = gv[:, :, dzc:dzc + dx]
        (jtg,) = torch.autograd.grad(x_hat, zg, grad_outputs=gx.reshape(x_hat.shape).to(x_hat.dtype),
                                     create_graph=self.create_graph, allow_unused=True)
        if jtg is None:
            raise _no_grad_path(x_hat, "no autograd path from z to x_hat")
        if not self._validated and _eager() and not bool(jtg.flatten(1).any(1).all()):
            raise ValueError("decoder_G: dG/dz is exactly zero on every sample of a member's batch (its output "
                             "ignores z, or its activations are saturated at these inputs); MCL cannot reach the "
                             "generator")
        self._validated = True
        g = jtg.flatten(2)                                                         # (M, B, dz)
        if self.contrast == "total" and dzc:
            g = g + gv[:, :, :dzc].to(g.dtype)
        if not self.create_graph:
            g = g.detach()
        if self.clip:
            g = g * (self.clip / g.norm(dim=2, keepdim=True).clamp_min(self.clip))
        if groups is None and self.multi_positive:
            groups = torch.stack([condition_groups(u_key[m]) for m in range(M)])
        dtype = torch.promote_types(g.dtype, self.Pi_g[-1].weight.dtype)
        with torch.autocast(device_type=g.device.type, enabled=False):
            q = self._head("Pi_g", g.to(dtype))                                     # (M, B, d)
            k = self._head("Pi_u", u_key.flatten(2).to(dtype))                      # (M, B, d)
            return infonce(q, k, self.tau, groups=groups, eps=self.eps)

    def extra_repr(self) -> str:
        return (f"members={self.members}, tau={self.tau}, create_graph={self.create_graph}, clip={self.clip}, "
                f"multi_positive={self.multi_positive}, critic_input={self.critic_input!r}, "
                f"contrast={self.contrast!r}")


class _StackedAffine(nn.Module):
    """M layers' ``weight`` (``shape``: (M, out, in) as nn.Linear's, or (M, n) for a LayerNorm) and ``bias`` (M, out),
    zero-initialised (StackedMCL.from_members copies the members' values in)."""

    def __init__(self, shape: tuple, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(shape[:2], dtype=dtype))


def stack_member_state(state: dict, old: str, new: str) -> None:
    """In place: the state dicts of M :class:`MCL` modules under ``<old><m>.`` (e.g. the ``mcls.<m>.`` of a
    ModuleList) become the state of their :class:`StackedMCL` under ``<new>`` (each tensor stacked over the members,
    ``critic.layers.<l>.*`` -> ``critic.<l>.*``, ``<head>.net.<i>.*`` -> ``<head>.<j>.*`` with j counting the head's
    parametrised layers). Nothing happens when no key starts with ``old``."""
    keys = [k for k in state if k.startswith(old)]
    if not keys:
        return
    M = 1 + max(int(k[len(old):].split(".", 1)[0]) for k in keys)
    names = [k[len(f"{old}0."):] for k in keys if k.startswith(f"{old}0.")]
    layers: dict = {}
    for name in names:
        group, _, layer, leaf = name.split(".")          # critic.layers.<l>.weight, Pi_g.net.<i>.bias, ...
        seen = layers.setdefault(group, [])
        if int(layer) not in seen:
            seen.append(int(layer))
        state[f"{new}{group}.{seen.index(int(layer))}.{leaf}"] = torch.stack([state.pop(f"{old}{m}.{name}")
                                                                              for m in range(M)])


def stack_member_optimizer_state(state_dict: dict, params: Sequence[torch.Tensor], n_mcl: int, members: int) -> dict:
    """An optimiser state dict (one parameter group, e.g. Adam's) written for ``params[:-n_mcl]`` followed by M
    per-member MCL modules' parameters, rewritten for ``params`` whose last ``n_mcl`` are a :class:`StackedMCL`'s
    (in :class:`MCL`'s parameter order): each per-parameter tensor state (moments) stacked over the members, scalar
    state (``step``) taken from member 0. Any other state dict comes back unchanged."""
    groups = state_dict["param_groups"]
    ids = groups[0]["params"] if len(groups) == 1 else []
    nv, P, old = len(params) - n_mcl, n_mcl, state_dict["state"]
    first = old.get(ids[nv]) if P and len(ids) > nv else None          # the first MCL parameter's state
    per_member = (isinstance(first, dict) and torch.is_tensor(first.get("exp_avg"))
                  and first["exp_avg"].shape != params[nv].shape)       # per-member moments lack the member axis
    if not per_member or len(ids) != len(params) + (members - 1) * P:
        return state_dict
    state = {i: old[ids[i]] for i in range(nv) if ids[i] in old}
    for j in range(P):
        per = [old.get(ids[nv + m * P + j]) for m in range(members)]
        if all(s is not None for s in per):
            state[nv + j] = {k: torch.stack([s[k] for s in per]) if torch.is_tensor(v) and v.dim() else v
                             for k, v in per[0].items()}
    return {"state": state, "param_groups": [dict(groups[0], params=list(range(len(params))))]}
