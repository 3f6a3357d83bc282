"""Four disentanglement principles as stacked models of the synthetic study (issue #23), beside beta-VAE / iVAE /
MD-VAE (:mod:`mclcore.models.vae`).

Every model here keeps :class:`~mclcore.models.vae.StackedVAE`'s backbone and its stacking contract: 3-layer
leaky-ReLU MLPs ``in -> w -> w -> out`` (``w = max(64, 4 dz)``), a leading member axis M on every weight
(``torch.baddbmm``), member m initialised only from ``init_seeds[m]`` (``nn.Linear``'s law), members that never
interact, and a training loss that is the *sum* of per-member losses (``forward`` returns per-member (M,) losses),
so one (Adam or AdamW: elementwise) optimiser over the stacked tensors performs M independent updates and a stack
equals M stacks of one (tests/models/test_principles.py, tests/studies/test_synthetic_principles.py). The Gaussian
decoder ``log p(x | .) = -|x - x_hat|^2 / (2 decoder_var) - dx/2 log(2 pi decoder_var)`` is the VAEs' (same
``decoder_var``, optionally learnt), so the reconstruction terms of all seven models are on one scale.

===========  =============================  ===============  ==================================================
model        encoder                        decoder          objective (per sample, mean over the batch)
===========  =============================  ===============  ==================================================
``mmdvae``   Gaussian q(z | x)              p(x | z)         -E_q log p(x|z) + mmd_weight * MMD_u^2(z batch, prior)
``qlae``     deterministic z_c = e(x),      p(x | z_q)       -log p(x|z_q) + w_q |sg z_c - z_q|^2
             quantised per dimension                          + w_c |z_c - sg z_q|^2  (AdamW, weight decay)
``compvae``  Gaussian q(z | x)              p(x | z)         -ELBO (KL weight comp_beta) + comp_lambda * C(z)
``intervae`` Gaussian q(eps | x, u)         p(x | head(eps,  -ELBO, with scheduled interventions in the head
                                            u))
===========  =============================  ===============  ==================================================

**mmdvae: programmable prior** (Fruytier et al. 2025). The KL is replaced by the unbiased squared MMD
(:func:`mclcore.losses.mmd.mmd`) between the batch of reparameterised codes z (samples of the aggregate posterior)
and as many samples of a factorised prior (``prior``: Gaussian, Laplace or uniform, unit variance; the train step
draws them from the member's own stream), on the first ``rows`` codes of each (random) batch (default 128; 0: all):
still unbiased, and at 128 of 256 rows the MMD's three kernel matrices are 4x smaller. Measured in the quick
setting (dz = 5, one member, 1 thread, 2-core AMD EPYC VM shared with other jobs, 2026-12-06) the whole batch with
the IMQ's 7 scales made a training run 2.6x MD-VAE's (13.4 s vs 5.1 s; 16 ms per MMD forward + backward).
Assumptions: the Gaussian encoder is kept (so the backbone and the
evaluation's KL diagnostics are the VAEs'); nothing but reconstruction acts on its variance (no KL); u-blind like
the paper's unconditional VAE. ``mmd_weight`` default 1000: with decoder_var = 0.01 the reconstruction is 50 x the
squared error summed over dx, so the WAE's weight of 10 on a unit-scale squared error becomes ~500-1000 here; not
tuned (issue #23 pre-registers the defaults).

**qlae: latent quantization** (Hsu et al. 2023, QLAE). Deterministic encoder to z_c (dz); per latent dimension a
learnable scalar codebook of ``n_values`` values (default 10, initialised evenly on [-0.5, 0.5] as the paper's
code); ``z_q`` = the nearest value per dimension; the decoder sees ``z_c + sg(z_q - z_c)`` (straight-through);
codebook (quantisation) and commitment losses (the paper weights them 0.01 each; we use 10, see "Latent-loss
weights" below), and weight decay 0.1 (AdamW, decoupled) on the encoder and decoder, not the codebooks: the
paper's. Assumptions: the paper's binary cross-entropy becomes our Gaussian decoder, and the latent losses are
scaled by its 1 / (2 decoder_var) (see ``latent_scale``); it uses twice as many latents as sources,
we use dz (as every model of the study;
MCC matches min(K_true, K_hat) pairs either way); the squared losses are summed over dimensions and averaged over
the batch; the representation scored (MCC, LPS, InfoMEC) is z_c, the encoder's output that the commitment loss
holds at the codebook (z_q can have constant columns when a dimension uses one value, and a correlation is then
undefined); u-blind like the paper's autoencoder.

**Latent-loss weights: 10 each, not the paper's 0.01** (the study's default; ``quant_weight`` / ``commit_weight``
expose any other). With the paper's 0.01 the straight-through gradient of our Gaussian reconstruction ran the
encoder away from the codebook: once z_c is past the last code value, z_q stops changing while the decoder keeps
pushing, so only the commitment loss holds it. Measured on the quick setting (dz = 5, 10 epochs of 20,000, seeds
0 / 1, 2-core VM, 2026-12-06): without the 1 / (2 decoder_var) factor the commitment loss (summed over dz, batch
mean) reached 5e7; with it, by weights (and codebook range r):

====================  ===================  ==================  ============
weights (r)           commitment loss      reconstruction      MCC
====================  ===================  ==================  ============
0.01 (0.5)            2.8e4 / 4.9e4        -511 / -675         0.30 / 0.32
0.01 (1, 2, 3)        1.6e4 ... 3.8e3      -484 ... -334       0.29 ... 0.43
1 (0.5)               1.3 / 4.0            -77 / -153          0.43 / 0.43
**10 (0.5)**          0.035 / 0.059        -13 / -54           0.49 / 0.49
10 (1) / 10 (2)       0.04-0.05 / 0.07-0.08  -3..-30 / 4..-86  0.42-0.51
100 (1)               0.009 / 0.0006       -162 / -1424        0.43 / 0.20
====================  ===================  ==================  ============

10 is the smallest weight of that grid at which the encoder's output stays within about one code spacing of its
code (spacing 0.11 at r = 0.5) while the reconstruction is the best of the grid; 100 starves the reconstruction
(seed 1). The choice was made on the commitment loss and the reconstruction, the model working as a quantised
autoencoder, not on MCC (shown for completeness). The paper's weights sit beside a Bernoulli image likelihood whose
per-latent gradient is far smaller than our Gaussian one at decoder_var = 0.01.

**compvae: compositional contrast** (mechanistic independence, Type S; the surrogate loss of that paper). The
principle constrains the generator g(z): its Jacobian columns (how each latent acts on x) should have disjoint or
sparse supports. ``C(z) = mean over the batch of sum_n sum_{i<j} |J_ni| |J_nj|``, ``J = d x_hat / d z`` (dx x dz),
computed as ``1/2 sum_n [(sum_i |J_ni|)^2 - sum_i J_ni^2]``. Host: the **beta-VAE routing** (q(z|x), p(x|z)): the
principle is about a generator of z alone (no u), so p(x | z) is its natural host; a u-conditional decoder g(z, u)
would let u carry the mechanism and blur what C(z) constrains. Its KL weight ``comp_beta`` defaults to 1 (a plain
VAE: the contrast, not beta, is the principle under test). J comes from :func:`stacked_jacobian`, forward mode in
plain torch (a tangent (M, B, dz, h) through every baddbmm and leaky-ReLU mask), differentiable by autograd, on
the first ``comp_rows`` rows of each (random) batch: an unbiased estimate of the batch mean at a fraction of the
cost (dz tangents per row). ``comp_lambda`` default 0.1 (untuned): after the quick setting's 10 epochs (dz = 5, dx =
64, seed 0,
2026-12-06) C was 10.7, so 0.1 C is ~1 nat beside a reconstruction term of ~2.8e3 nats (tests' tiny config); raise
it to make the
principle bite.

**intervae: interventional decoder head** (after "Intervening to learn and compose disentangled representations",
2025; we had its summary only, so this is our minimal reading, assumptions numbered):

1. The encoder q(eps | x, u) (MD-VAE routing, N(0, I) prior) gives the "linear representation" eps (dz), the
   exogenous coordinates of dz concepts.
2. The decoder-only head implicitly inverts it: the concepts c solve the linear structural equations
   ``c = A c + eps`` with A strictly lower-triangular (a DAG in a fixed order, learnt, initialised at 0), so
   ``c = (I - A)^{-1} eps`` (a triangular solve; the inverse is never formed).
3. Each concept has a per-context block: ``c_i <- c_i * exp(s_i(u)) + t_i(u)``, (s, t) from a 2-layer MLP of u
   (du -> w -> 2 dz). The context is u (the study's |U| contexts); u reaches the decoder only through these
   blocks, so every concept is modelled per context (the block applied is the sample's context's).
4. The body is the backbone's decoder p(x | c) (dz -> w -> w -> dx), arbitrary in principle.
5. Intervention schedule: at each training step each member, with probability ``inter_prob`` (default 0.5, its
   own stream), intervenes on one concept k drawn uniformly: do(c_k) cuts the k-th structural equation's parents
   (row k of A is zeroed for that step: ``c_k = eps_k`` before its context block). Evaluation never intervenes.
   The summary says blocks are "cut/swapped": the cut is item 5, the swap is the per-context block selection of
   item 3. What the paper's schedule anneals, and how it picks targets, is not in the summary: uniform targets
   at a fixed rate are our assumption.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mclcore.losses.mmd import IMQ_SCALES, KERNELS, PRIORS, RBF_BANDWIDTHS, mmd, sample_prior
from mclcore.models.vae import StackedMLP, StackedVAE, hidden_width

__all__ = ["PRINCIPLE_MODELS", "stacked_jacobian", "comp_contrast_of_jacobian", "StackedMMDVAE", "StackedQLAE",
           "StackedCompVAE", "StackedInterVAE"]

PRINCIPLE_MODELS = ("compvae", "mmdvae", "qlae", "intervae")


def stacked_jacobian(mlp: StackedMLP, x: torch.Tensor, n_in: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and Jacobian of a :class:`StackedMLP` by forward mode: x (M, B, in) -> (y (M, B, out),
    J (M, B, n_in, out)), ``J[m, b, i, o] = d y[m, b, o] / d x[m, b, i]`` for the first ``n_in`` inputs (default
    all; e.g. z of a decoder fed ``cat[z, u]``).

    The tangent T (M, B, n_in, h) starts as the first layer's weight rows (``W[:, :n_in]``), goes through each
    later layer as one batched matmul ``(M, B n_in, h) @ (M, h, h')`` and through each leaky ReLU as the mask
    ``1 if a > 0 else slope`` (torch's own derivative, also at a = 0). Plain differentiable ops, so autograd
    trains through J (the compositional contrast's gradient)."""
    M, B = x.shape[0], x.shape[1]
    n_in = x.shape[-1] if n_in is None else int(n_in)
    last = len(mlp.layers) - 1
    h, t = x, None
    for i, layer in enumerate(mlp.layers):
        a = layer(h)                                                            # (M, B, o)
        o = a.shape[-1]
        if t is None:
            t = layer.weight[:, None, :n_in, :].expand(M, B, n_in, o)           # d a / d x_i = W[i, :]
        else:
            t = torch.bmm(t.reshape(M, B * n_in, -1), layer.weight).reshape(M, B, n_in, o)
        if i < last:
            mask = torch.where(a > 0, a.new_ones(()), a.new_full((), mlp.slope))   # (M, B, o), a's dtype
            t = t * mask[:, :, None, :]
            h = F.leaky_relu(a, mlp.slope)
        else:
            h = a
    return h, t


def comp_contrast_of_jacobian(jac: torch.Tensor) -> torch.Tensor:
    """Compositional contrast of Jacobians (M, B, dz, dx) -> (M,): per member, the mean over B of
    ``sum_n sum_{i<j} |J_ni| |J_nj| = 1/2 sum_n [(sum_i |J_ni|)^2 - sum_i J_ni^2]``."""
    a = jac.abs()
    return (0.5 * (a.sum(2).pow(2) - a.pow(2).sum(2))).sum(-1).mean(1)


def _gaussian_rec(vae: StackedVAE, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """(M, B) log p(x | .) of the Gaussian decoder (fixed or learnt variance), as StackedVAE.forward."""
    if vae.log_decoder_var is None:
        return (-0.5 / vae.decoder_var) * (x - x_hat).pow(2).sum(-1) \
            - 0.5 * vae.dx * math.log(2 * math.pi * vae.decoder_var)
    lv = vae.log_decoder_var[:, None]
    return -0.5 * (x - x_hat).pow(2).sum(-1) * torch.exp(-lv) - 0.5 * vae.dx * (math.log(2 * math.pi) + lv)


def _check_number(name: str, v, lo: float = 0.0, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (v <= lo if strict else v < lo):
        raise ValueError(f"{name}: expected a finite number {'>' if strict else '>='} {lo:g}, got {v!r}")
    return float(v)


class _StackedPrinciple(StackedVAE):
    """The StackedVAE backbone with explicit routes (u into encoder / decoder) and encoder output size; reuses
    StackedVAE's decode, decoder_member, decoder_variance, posterior_mean, members. Member m's weights are drawn
    from its seed in the order encoder, decoder, then the model's own modules."""

    gaussian_posterior = True     # encode returns (mean, log-variance); False: (code, None)

    def __init__(self, name: str, dx: int, du: int, dz: int, init_seeds: Sequence[int], *, u_enc: bool, u_dec: bool,
                 enc_out: int, hidden: int | None = None, slope: float = 0.2, beta: float = 1.0,
                 decoder_var: float = 0.01, learn_decoder_var: bool = False):
        nn.Module.__init__(self)
        for n, v in (("dx", dx), ("du", du), ("dz", dz)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{n}: expected a positive integer, got {v!r}")
        if len(init_seeds) < 1:
            raise ValueError("init_seeds: expected at least one seed (one per member)")
        _check_number("beta", beta)
        _check_number("decoder_var", decoder_var, strict=True)
        w = hidden_width(dz) if hidden is None else int(hidden)
        if w < 1:
            raise ValueError(f"hidden: expected a positive width, got {hidden!r}")
        self.model, self.dx, self.du, self.dz, self.hidden = name, dx, du, dz, w
        self.beta, self.decoder_var = float(beta), float(decoder_var)
        self.u_enc, self.u_dec, self.u_prior = bool(u_enc), bool(u_dec), False
        self._gens = [torch.Generator().manual_seed(int(s)) for s in init_seeds]
        self.encoder = StackedMLP([dx + du * self.u_enc, w, w, enc_out], self._gens, slope)
        self.decoder = StackedMLP([dz + du * self.u_dec, w, w, dx], self._gens, slope)
        self.prior = None
        self.learn_decoder_var = bool(learn_decoder_var)
        self.log_decoder_var = nn.Parameter(torch.full((len(init_seeds),), math.log(decoder_var))) \
            if self.learn_decoder_var else None

    def draw(self, b: int, generators: Sequence[torch.Generator]):
        """Per-step randomness beyond eps, drawn from each member's own stream after its eps (None: none)."""
        return None

    def _gaussian_terms(self, x, u, eps):
        mu, logvar = self.encode(x, u)                                       # (M, B, dz)
        z = mu + torch.exp(0.5 * logvar) * eps
        kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)        # (M, B) against N(0, I)
        return mu, logvar, z, kl


class StackedMMDVAE(_StackedPrinciple):
    """M u-blind VAEs whose KL is replaced by ``mmd_weight * MMD_u^2`` between the batch of codes and prior
    samples (module doc). ``forward(x, u, eps, prior_samples)``; ``prior_samples`` (M, B', dz), drawn by
    :meth:`draw`. Returns ``loss``, ``rec``, ``kl`` (the closed-form KL to N(0, I), a diagnostic: not in the
    loss), ``aux`` (the MMD^2, unweighted), ``z``."""

    def __init__(self, dx, du, dz, init_seeds, *, mmd_weight: float = 1000.0, kernel: str = "imq",
                 bandwidths: Sequence[float] = RBF_BANDWIDTHS, scales: Sequence[float] = IMQ_SCALES,
                 prior: str = "gaussian", rows: int = 128, **kw):
        super().__init__("mmdvae", dx, du, dz, init_seeds, u_enc=False, u_dec=False, enc_out=2 * dz, **kw)
        self.mmd_weight = _check_number("mmd_weight", mmd_weight)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows == 1 or rows < 0:
            raise ValueError(f"rows: expected 0 (the whole batch) or an integer >= 2, got {rows!r}")
        self.rows = rows
        if kernel not in KERNELS:
            raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
        if prior not in PRIORS:
            raise ValueError(f"prior: expected one of {PRIORS}, got {prior!r}")
        self.kernel, self.prior_name = kernel, prior
        self.bandwidths, self.scales = tuple(float(v) for v in bandwidths), tuple(float(v) for v in scales)
        mmd(torch.zeros(2, 1), torch.zeros(2, 1), kernel, bandwidths=self.bandwidths, scales=self.scales)  # checks

    def draw(self, b, generators):
        r = min(self.rows, b) if self.rows else b
        return torch.stack([sample_prior(self.prior_name, (r, self.dz), g) for g in generators])

    def forward(self, x, u, eps, prior_samples):
        mu, logvar, z, kl = self._gaussian_terms(x, u, eps)
        rec = _gaussian_rec(self, x, self.decode(z, u)).mean(1)                # (M,)
        zm = z[:, :self.rows] if self.rows else z                              # the batch is a random permutation
        d2 = mmd(zm, prior_samples.to(z), self.kernel, bandwidths=self.bandwidths, scales=self.scales)  # (M,)
        return {"loss": -rec + self.mmd_weight * d2, "rec": rec, "kl": kl.mean(1).detach(), "aux": d2, "z": z}


class StackedQLAE(_StackedPrinciple):
    """M quantised-latent autoencoders (module doc). ``codebook`` (M, dz, n_values). ``forward(x, u, eps)``
    ignores eps (deterministic). Returns ``loss``, ``rec``, ``kl`` (zeros: no KL), ``aux`` (codebook +
    commitment loss, unweighted: ``|z_c - z_q|^2`` summed over dimensions, batch mean), ``z`` (straight-through
    code). :meth:`encode` returns ``(z_c, None)``; :meth:`quantize` the nearest codes."""

    gaussian_posterior = False

    def __init__(self, dx, du, dz, init_seeds, *, n_values: int = 10, quant_weight: float = 10.0,
                 commit_weight: float = 10.0, value_range: float = 0.5, **kw):
        super().__init__("qlae", dx, du, dz, init_seeds, u_enc=False, u_dec=False, enc_out=dz, **kw)
        if isinstance(n_values, bool) or not isinstance(n_values, int) or n_values < 2:
            raise ValueError(f"n_values: expected an integer >= 2, got {n_values!r}")
        self.quant_weight = _check_number("quant_weight", quant_weight)
        self.commit_weight = _check_number("commit_weight", commit_weight)
        # The paper's 0.01 weights are relative to a unit-scale reconstruction (binary cross-entropy, gradient
        # (p - x) per pixel); ours is |x - x_hat|^2 / (2 decoder_var), 50x that at 0.01. Unscaled, the
        # straight-through gradient ran the encoder away from the codebook (commitment loss 5e7 after 10 quick
        # epochs, MCC 0.23; 2026-12-06), so the latent losses carry the same 1 / (2 decoder_var) factor.
        self.latent_scale = 0.5 / self.decoder_var
        M = len(self._gens)
        r = _check_number("value_range", value_range, strict=True)
        self.codebook = nn.Parameter(torch.linspace(-r, r, n_values).repeat(M, dz, 1))       # (M, dz, V)

    def encode(self, x, u):
        return self.encoder(x), None

    def quantize(self, zc: torch.Tensor) -> torch.Tensor:
        """Nearest codebook value per dimension: z_c (M, B, dz) -> z_q (M, B, dz) (differentiable in the codebook)."""
        M, B, dz = zc.shape
        idx = (zc.detach()[..., None] - self.codebook.detach()[:, None]).abs().argmin(-1)     # (M, B, dz)
        book = self.codebook[:, None].expand(M, B, dz, -1)
        return book.gather(-1, idx[..., None]).squeeze(-1)

    def forward(self, x, u, eps=None):
        zc, _ = self.encode(x, u)
        zq = self.quantize(zc)
        z = zc + (zq - zc).detach()                                             # straight-through
        rec = _gaussian_rec(self, x, self.decode(z, u)).mean(1)
        quant = (zc.detach() - zq).pow(2).sum(-1).mean(1)                       # moves the codebook
        commit = (zc - zq.detach()).pow(2).sum(-1).mean(1)                      # moves the encoder
        loss = -rec + self.latent_scale * (self.quant_weight * quant + self.commit_weight * commit)
        return {"loss": loss, "rec": rec, "kl": torch.zeros_like(rec), "aux": commit.detach(), "z": z}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: encoder and decoder with ``weight_decay`` (the paper's regulariser), the codebook and a
        learnt decoder variance without."""
        decayed = [*self.encoder.parameters(), *self.decoder.parameters()]
        ids = {id(p) for p in decayed}
        return [{"params": decayed, "weight_decay": float(weight_decay)},
                {"params": [p for p in self.parameters() if id(p) not in ids], "weight_decay": 0.0}]


class StackedCompVAE(_StackedPrinciple):
    """M u-blind VAEs (KL weight ``beta``) plus ``comp_lambda * C(z)``, the compositional contrast of the
    decoder's Jacobian at the reparameterised codes of the first ``comp_rows`` rows of the batch (0: all rows)
    (module doc). Returns ``loss``, ``rec``, ``kl``, ``aux`` (C, unweighted), ``z``."""

    def __init__(self, dx, du, dz, init_seeds, *, comp_lambda: float = 0.1, comp_rows: int = 64, **kw):
        super().__init__("compvae", dx, du, dz, init_seeds, u_enc=False, u_dec=False, enc_out=2 * dz, **kw)
        self.comp_lambda = _check_number("comp_lambda", comp_lambda)
        if isinstance(comp_rows, bool) or not isinstance(comp_rows, int) or comp_rows < 0:
            raise ValueError(f"comp_rows: expected an integer >= 0 (0: the whole batch), got {comp_rows!r}")
        self.comp_rows = comp_rows

    def contrast(self, z: torch.Tensor) -> torch.Tensor:
        """(M,) C of the decoder at z (M, B, dz)."""
        _, jac = stacked_jacobian(self.decoder, z, self.dz)
        return comp_contrast_of_jacobian(jac)

    def forward(self, x, u, eps):
        mu, logvar, z, kl = self._gaussian_terms(x, u, eps)
        rec = _gaussian_rec(self, x, self.decode(z, u)).mean(1)
        kl = kl.mean(1)
        c = self.contrast(z[:, :self.comp_rows] if self.comp_rows else z)
        return {"loss": -(rec - self.beta * kl) + self.comp_lambda * c, "rec": rec, "kl": kl, "aux": c, "z": z}


class StackedInterVAE(_StackedPrinciple):
    """M VAEs with the interventional decoder head (module doc, items 1-5). ``A`` (M, dz, dz), used strictly
    lower-triangular; ``context`` the per-concept context blocks (du -> w -> 2 dz). ``forward(x, u, eps,
    target)``: ``target`` (M,) long, the concept each member intervenes on this step, -1 for none (:meth:`draw`).
    Returns ``loss`` (-ELBO), ``rec``, ``kl``, ``aux`` (1 where the member intervened, else 0), ``z`` (eps)."""

    def __init__(self, dx, du, dz, init_seeds, *, inter_prob: float = 0.5, **kw):
        super().__init__("intervae", dx, du, dz, init_seeds, u_enc=True, u_dec=False, enc_out=2 * dz, **kw)
        p = _check_number("inter_prob", inter_prob)
        if p > 1:
            raise ValueError(f"inter_prob: expected a probability in [0, 1], got {inter_prob!r}")
        self.inter_prob = p
        self.context = StackedMLP([du, self.hidden, 2 * dz], self._gens, self.decoder.slope)
        self.A = nn.Parameter(torch.zeros(len(self._gens), dz, dz))
        self.register_buffer("_strict_lower", torch.tril(torch.ones(dz, dz), -1), persistent=False)

    def draw(self, b, generators):
        """Per member: intervene with probability inter_prob (one uniform draw), on a uniform concept (a second
        draw, always made, so the stream advances by the same two numbers every step)."""
        out = []
        for g in generators:
            go = torch.rand((), generator=g).item() < self.inter_prob
            k = int(torch.randint(self.dz, (), generator=g))
            out.append(k if go else -1)
        return torch.tensor(out, dtype=torch.long)

    def head(self, eps: torch.Tensor, u: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Concepts c (M, B, dz) of eps (M, B, dz) in contexts u (M, B, du); ``target`` (M,) cuts row k's parents."""
        A = self.A * self._strict_lower                                          # (M, dz, dz)
        if target is not None:
            keep = torch.ones(A.shape[0], self.dz, 1, dtype=A.dtype, device=A.device)
            hit = target >= 0
            if bool(hit.any()):
                keep[hit.nonzero()[:, 0].to(A.device), target[hit].to(A.device), 0] = 0.0
            A = A * keep                                                          # do(c_k): row k cut
        eye = torch.eye(self.dz, dtype=A.dtype, device=A.device)
        c = torch.linalg.solve_triangular(eye - A, eps.transpose(1, 2), upper=False).transpose(1, 2)
        s, t = self.context(u).chunk(2, dim=-1)                                  # (M, B, dz) each
        return c * torch.exp(s) + t

    def forward(self, x, u, eps, target=None):
        mu, logvar, z, kl = self._gaussian_terms(x, u, eps)
        rec = _gaussian_rec(self, x, self.decoder(self.head(z, u, target))).mean(1)
        kl = kl.mean(1)
        hit = torch.zeros_like(rec) if target is None else (target >= 0).to(rec)
        return {"loss": -(rec - self.beta * kl), "rec": rec, "kl": kl, "aux": hit, "z": z}

    def decode(self, z, u):
        return self.decoder(self.head(z, u))

    def decoder_member(self, m: int):
        """Member m's observational generator ``G(eps, u) -> x_hat`` (B, dz), (B, du) -> (B, dx): head, then body."""
        def G(z, u):
            A = self.A[m] * self._strict_lower
            eye = torch.eye(self.dz, dtype=A.dtype, device=A.device)
            c = torch.linalg.solve_triangular(eye - A, z.T, upper=False).T
            s, t = self.context.member(m, u).chunk(2, dim=-1)
            return self.decoder.member(m, c * torch.exp(s) + t)
        return G
