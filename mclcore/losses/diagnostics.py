"""What MCL does inside a model: diagnostics and scale-free weighting (the MCL-as-an-instrument issue).

MCL can be solved without the generator (the critic reads u and puts it into its own z-gradient) or drowned by the
host loss (its gradient on the generator 1e-5 of the ELBO's). Neither shows in the loss value. These tools say
which is happening, at any step:

* :func:`readout` — InfoNCE top-1 accuracy of the condition read from the contrasted mechanism gradient, and the
  same from each of its two terms alone: the generator term ``J_G^T grad_x c`` and the critic's direct term
  ``grad_z c`` (:func:`mclcore.losses.mcl.mechanism_terms`). A row counts as correct when its most similar key has
  the row's own condition (equal key rows), so chance is the mean share of a row's condition in the batch
  (1/|U| for balanced conditions). ``shortcut_share`` = the direct term's accuracy above chance over the sum of
  both terms' accuracies above chance: 1 when the critic alone carries the contrast, 0 when the generator does.
  ``acc_generator_independent``: the generator term's accuracy with each row's z taken from another row (the
  batch rolled by one: row i reads u_i from ``J_G(z_{i-1}, u_i)^T grad_x c``). Where z and u come from the same
  sample (an encoder's z of the sample whose condition is u, as in MDDiff), z alone can give u away, and the
  generator term can read u through z even from a u-blind generator; with z from another row only the
  generator's (and, for ``critic_input`` with u, the critic's) use of u can carry it. ``acc_generator`` well above
  ``acc_generator_independent`` says the contrast is solved through z. NaN for a batch of one.
* :func:`gradient_norms` — the norms of the MCL and host gradients on the generator's parameters and their ratio
  (with lambda applied): how much MCL actually moves the generator.
* :class:`MCLWeight` — ``weighting="relative"``: lambda is relative to the host loss. Every ``every`` steps the
  weight becomes ``w = lambda * |grad_G L_host| / |grad_G L_MCL|``, so ``w L_MCL`` moves the generator's
  parameters ``lambda`` times as much as the host loss (by gradient norm) whatever the host loss's scale: the
  same lambda means the same on a summed ELBO of 10^3 nats and on a per-element diffusion loss. Between
  measurements ``w`` is held. ``weighting="absolute"`` (the paper's) uses ``w = lambda``. The mapping: relative
  lambda r is the absolute weight ``r |grad_G L_host| / |grad_G L_MCL|`` of the moment; on the synthetic MD-VAE
  (dz = 5, |U| = 8) relative 1 meant absolute weights from 8e4 at the first step down to ~1e3 after 50 steps, and
  the paper's absolute 0.1 meant relative ~1e-6 (experiments/synthetic/README.md, "Does MCL help?").

Cost: a readout is two generator forwards, two critic input-gradients and two VJPs without a graph (paired and
independent), plus the heads;
gradient norms are two extra backward passes through the MCL and host terms. Both run every ``every`` steps
(benchmarks/bench_mcl_diagnostics.py measures the overhead).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mclcore.losses.mcl import clip_rows, condition_groups, mechanism_terms

__all__ = ["readout", "probe", "gradient_norms", "MCLWeight", "WEIGHTINGS", "READ_KEYS"]

WEIGHTINGS = ("absolute", "relative")
READ_KEYS = ("acc", "acc_generator", "acc_direct", "acc_generator_independent", "chance", "shortcut_share")


def _head_input(head, x: torch.Tensor) -> torch.Tensor:
    p = next(head.parameters(), None)
    return x.to(p.dtype if p is not None else torch.promote_types(x.dtype, torch.float32))


@torch.no_grad()
def _accuracy(mcl, g: torch.Tensor, k: torch.Tensor, groups: torch.Tensor) -> float:
    q = F.normalize(mcl.Pi_g(_head_input(mcl.Pi_g, clip_rows(g, mcl.clip))), dim=1, eps=mcl.eps)
    pred = (q @ k.T).argmax(1)                                                 # (B,) most similar key
    return float((groups[pred] == groups).double().mean())


def readout(mcl, decoder_G: Callable, z: torch.Tensor, u: torch.Tensor, *, u_key: torch.Tensor | None = None,
            groups: torch.Tensor | None = None) -> dict:
    """Top-1 accuracies of the condition read from the mechanism gradient of ``mcl`` (an :class:`mclcore.MCL`) at
    (z, u): ``acc`` (the contrasted gradient), ``acc_generator``, ``acc_direct`` (NaN when the critic does not see
    z), ``acc_generator_independent`` (z rolled by one row), ``chance`` and ``shortcut_share`` (see the module doc):
    the keys of ``READ_KEYS``. No training graph is built."""
    key = u if u_key is None else u_key
    groups = condition_groups(key) if groups is None else groups.to(key.device)
    with torch.enable_grad():
        direct, gen = mechanism_terms(decoder_G, z.detach(), u.detach(), mcl.critic, create_graph=False,
                                      validate=False, critic_input=mcl.critic_input)
        gen_ind = None if len(z) < 2 else mechanism_terms(      # (B, dz): row i at (z_{i-1}, u_i)
            decoder_G, z.detach().roll(1, 0), u.detach(), mcl.critic, create_graph=False, validate=False,
            critic_input=mcl.critic_input)[1]
    with torch.no_grad():
        k = F.normalize(mcl.Pi_u(_head_input(mcl.Pi_u, key.flatten(1))), dim=1, eps=mcl.eps)
        counts = torch.bincount(groups, minlength=int(groups.max()) + 1).double()
        chance = float((counts[groups] / len(groups)).mean())
        acc_gen = _accuracy(mcl, gen, k, groups)
        acc_dir = _accuracy(mcl, direct, k, groups) if direct is not None else math.nan
        acc_ind = _accuracy(mcl, gen_ind, k, groups) if gen_ind is not None else math.nan
        contrasted = gen if mcl.contrast == "generator" or direct is None else direct + gen
        acc = _accuracy(mcl, contrasted, k, groups)
    above_dir = 0.0 if math.isnan(acc_dir) else max(0.0, acc_dir - chance)
    above_gen = max(0.0, acc_gen - chance)
    share = above_dir / (above_dir + above_gen) if above_dir + above_gen > 0 else math.nan
    return {"acc": acc, "acc_generator": acc_gen, "acc_direct": acc_dir, "acc_generator_independent": acc_ind,
            "chance": chance, "shortcut_share": share}


PROBE_KEYS = ("acc", "acc_generator", "acc_direct", "chance", "shortcut_share")


def probe(mcl, opt, sched, train_batch: Callable, eval_batch: Callable, steps: int, eval_batches: int, *,
          name: str = "probe") -> dict:
    """Train a *fresh* MCL module ``mcl`` (its optimiser ``opt`` and scheduler ``sched`` hold only its parameters)
    for ``steps`` steps on ``train_batch() -> (G, z, u)``, then :func:`readout` on ``eval_batches`` calls of
    ``eval_batch()``: the fresh-critic probes of the studies (experiments/*/mcl_probe.py), which read how much of u a
    frozen generator's mechanism carries. Returns the mean of ``PROBE_KEYS`` over the held-out batches (None where
    every batch is NaN), ``per_batch`` acc / acc_generator, and the loss curve (first, mean of the last tenth, every
    tenth step). ValueError naming ``name`` when the InfoNCE loss became non-finite."""
    losses = []
    for _ in range(steps):
        loss = mcl(*train_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    if not np.isfinite(losses).all():
        raise ValueError(f"probe {name}: the InfoNCE loss became non-finite")
    reads = [readout(mcl, *eval_batch()) for _ in range(eval_batches)]
    mean = {k: None if all(np.isnan(r[k]) for r in reads) else float(np.nanmean([r[k] for r in reads]))
            for k in PROBE_KEYS}
    every = max(1, steps // 10)
    return {**mean, "per_batch": {k: [r[k] for r in reads] for k in ("acc", "acc_generator")},
            "loss_first": losses[0], "loss_last": float(np.mean(losses[-every:])), "loss_every": every,
            "losses": losses[::every]}


def _rank_mean(grads, params) -> list:
    """``grads`` averaged over the ranks of a data-parallel run (torchrun: what DistributedDataParallel applies to the
    parameters), so every rank measures the same norms and weighs L_MCL alike; unchanged in one process (and inside
    ``distributed.alone()``, where a rank trains on its own). One all-reduce of a flat float64 copy; a parameter
    without a gradient counts as zeros. Every rank must call it at the same step (the monitors' ``due`` rule is the
    same on every rank)."""
    from mclcore import distributed

    ctx = distributed.context()
    if not ctx.distributed:
        return list(grads)
    full = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in full])
    torch.distributed.all_reduce(flat)
    flat /= ctx.world_size
    return [piece.view(t.shape) for piece, t in zip(flat.split([t.numel() for t in full]), full)]


def gradient_norms(mcl_term: torch.Tensor, host_loss: torch.Tensor, params: Sequence[torch.Tensor], *,
                   members: int | None = None) -> dict:
    """Norms of ``grad mcl_term`` and ``grad host_loss`` on ``params`` (the generator's) and ``ratio`` = mcl / host.

    ``mcl_term`` is the MCL loss as it enters the objective (lambda applied). Both graphs are kept
    (``retain_graph``) for the step's own backward. ``members``: the params are stacks of M independent models
    (leading dim M) and the losses sums over them: the norms are per member, (M,) tensors.
    Under torchrun (a data-parallel run) the gradients are first averaged over the ranks (:func:`_rank_mean`), so
    the norms, and the relative weight built on them, are those of the gradients the optimiser applies, the same on
    every rank. Raises ValueError when the host loss has no gradient on ``params`` (relative weighting would divide
    by 0)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("params: none of the generator's parameters requires grad")
    g_mcl = _rank_mean(torch.autograd.grad(mcl_term, params, retain_graph=True, allow_unused=True), params)
    g_host = _rank_mean(torch.autograd.grad(host_loss, params, retain_graph=True, allow_unused=True), params)

    def norm(grads):
        sq = [g.detach().double().pow(2) for g in grads if g is not None]
        if members is None:
            return torch.stack([s.sum() for s in sq]).sum().sqrt() if sq else torch.zeros((), dtype=torch.float64)
        return torch.stack([s.flatten(1).sum(1) for s in sq]).sum(0).sqrt() if sq else \
            torch.zeros(members, dtype=torch.float64)

    n_mcl, n_host = norm(g_mcl), norm(g_host)
    if bool((n_host == 0).any()):
        raise ValueError("host_loss: has no gradient on the generator's parameters, so MCL cannot be weighted "
                         "relative to it (weighting='relative' needs a host loss that trains the generator)")
    return {"grad_mcl": n_mcl, "grad_host": n_host, "ratio": n_mcl / n_host}


class MCLWeight:
    """The weight of L_MCL in the objective, ``absolute`` (``lambda``) or ``relative`` (see the module doc).

    ``lam``: lambda, a finite number >= 0 (one, or one per member). ``every``: steps between measurements in the
    relative mode (0: one measurement, at the first step). ``weight()`` gives the current weight (a float or a (M,) tensor); ``update(mcl_term, host, params)``
    measures (call it on the steps where :meth:`due` is True, with the unweighted L_MCL as ``mcl_term``).
    """

    def __init__(self, lam, weighting: str = "absolute", every: int = 50):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
        vals = torch.as_tensor(lam, dtype=torch.float64).flatten()
        if vals.numel() == 0 or not bool(torch.isfinite(vals).all()) or bool((vals < 0).any()):
            raise ValueError(f"lambda: expected finite numbers >= 0, got {lam!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"every: expected an integer >= 0 (0: measure once, at the first step), got {every!r}")
        self.lam, self.weighting, self.every = torch.as_tensor(lam, dtype=torch.float64), weighting, every
        self.scale: torch.Tensor | None = None     # |grad host| / |grad MCL| at the last measurement

    def due(self, step: int) -> bool:
        return self.weighting == "relative" and (self.scale is None or (self.every > 0 and step % self.every == 0))

    def update(self, mcl_term: torch.Tensor, host_loss: torch.Tensor, params, *, members: int | None = None) -> dict:
        n = gradient_norms(mcl_term, host_loss, params, members=members)
        self.scale = n["grad_host"] / n["grad_mcl"].clamp_min(1e-30)
        return n

    def weight(self):
        if self.weighting == "absolute":
            return self.lam
        if self.scale is None:
            raise RuntimeError("MCLWeight: the relative weight is measured first (call update on a due step)")
        return self.lam * self.scale

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.scale = state["scale"]
