"""The four disentanglement principles of issue #23 on 64x64 images, on :class:`ImageVAE`'s architecture.

Ports of the synthetic study's models (:mod:`mclcore.models.principles`; read its module doc for the principles and
the assumptions made there) to the image study (:mod:`mclcore.studies.disentangle`): the same :class:`Encoder4`
encoder, :class:`ConvDecoder`, K = 20 latents, Bernoulli reconstruction (per-image binary cross-entropy summed
over pixels, batch mean) and the ``vae`` section's steps, batch and learning rate as beta-VAE. Only the regulariser
(and, for qlae and intervae, the latent path) differs. The representation scored is the posterior mean
(``forward``), for qlae the encoder's output z_c.

===========  ==========================================================================================
model        objective (per image, batch mean)
===========  ==========================================================================================
``compvae``  recon + comp_beta KL + comp_lambda C(z), C the compositional contrast of d logits / d z
``mmdvae``   recon + mmd_weight MMD_u^2(codes of the batch, N(0, I) samples)  (no KL)
``qlae``     recon(z_c + sg(z_q - z_c)) + quant_weight |sg z_c - z_q|^2 + commit_weight |z_c - sg z_q|^2
``intervae`` recon(decoder(head(eps))) + KL(q(eps | x) || N(0, I)), scheduled interventions in the head
===========  ==========================================================================================

Differences from the synthetic versions, and why:

* **compvae**: the decoder is a transposed-conv network, not an MLP, so J = d logits / d z comes from
  :func:`mclcore.losses.comp_contrast.comp_contrast_func` (``vmap(jacfwd)``, differentiable), on the first
  ``comp_rows`` rows of each (random) batch (default 8). J is taken of the decoder's *logits* (the Bernoulli
  decoder's natural parameters; the sigmoid would only damp saturated pixels) and, with ``comp_pool > 1``, of the
  logits average-pooled by that factor. The cost is in jacfwd's K = 20 tangents per row, not in the output size:
  pooling or a pixel subset shrinks only the contrast sum and the pooled tangents. Measured at the cpu-smoke sizes
  (hidden 32, fc 128, batch 32, 8 rows, one thread, mean of 5 steps, 2-core AMD EPYC VM while another training run
  and other engineers' jobs shared it, 2026-12-06): a beta-VAE step forward+backward 129 ms; with C of the full
  64x64x3 logits 483 ms, with 4x4-pooled logits 386 ms. Pooling saves only ~20% of the step while discarding
  15/16 of what C constrains, so the full Jacobian is the default (``comp_pool = 1``); a cpu-smoke run of 800 steps
  then trains in ~4-6 min on one loaded core. C is summed over the 12,288 outputs, so
  its scale grows with the image and with training: 0.06 at initialisation, 1,845 at a beta-VAE decoder after the
  800 cpu-smoke steps (MPI3D twin, seed 0, 8 rows; its reconstruction term 7,733 nats). ``comp_lambda`` default 0.1
  (the synthetic model's default, untuned) puts 0.1 C at ~185 nats there, ~2.4% of the reconstruction and more
  than beta-VAE's extra KL pressure ((4 - 1) x 3.4 nats).
  The KL weight ``comp_beta`` is 1 (a plain VAE host, as the synthetic model).
* **mmdvae**: MMD with the IMQ kernel over the synthetic model's 7 scales, prior N(0, I) (the image study's
  prior), on the first ``mmd_rows`` rows (default 128 = the whole cpu-smoke batch of 32). ``mmd_weight`` 100:
  the Bernoulli reconstruction has a per-pixel gradient of unit scale (p - x), as the WAE's squared error whose
  MMD weight on 64x64x3 CelebA was 100 (Tolstikhin et al. 2018); the synthetic model's 1000 came from its Gaussian
  decoder's 50x factor, which the Bernoulli one does not have. Untuned.
* **qlae**: deterministic Encoder4 to K = 20 numbers, per-dimension scalar codebooks of ``qlae_values`` values
  (10, evenly on [-qlae_range, qlae_range] = [-0.5, 0.5], the paper's code), nearest value, straight-through;
  the paper's Bernoulli likelihood is ours too, so no 1 / (2 decoder_var) factor (the synthetic model needed it
  for its Gaussian decoder). Latent-loss weights ``quant_weight`` = ``commit_weight`` = 10, not the paper's 0.01,
  chosen on the synthetic model's criterion (the encoder's output stays within a code spacing of its code, spacing
  2 x 0.5 / 9 = 0.111) measured at the cpu-smoke preset (MPI3D twin, seed 0, 800 steps, last logged batch,
  2026-12-06): per-dimension RMS |z_c - z_q| 10.7 at 0.01 (the encoder ran away from the codebook, as in the
  synthetic study, even under the Bernoulli likelihood), 0.153 at 1, 0.041 at 10 (inside half a spacing);
  reconstruction 7,726 / 7,731 / 7,738 nats (no cost visible). AdamW with weight decay ``qlae_weight_decay``
  (0.1, the paper's) on the encoder and decoder, none on the codebooks (:meth:`ImageQLAE.param_groups`).
* **intervae**: the image study has **no condition u** (the VAEs see images only; MDDiff's u is its own concept
  code s = Encoder4(x), a function of x, not a context of the data-generating process), so the per-context
  blocks of the synthetic head collapse to one learnt per-concept affine map ``c_i exp(s_i) + t_i`` (s, t
  parameters initialised at 0): the head is ``c = (I - A)^{-1} eps``, then that map, then the ConvDecoder.
  A is learnt, used strictly lower-triangular, initialised at 0; the schedule is the synthetic one (per step,
  with probability ``inter_prob`` = 0.5 a uniform concept k is intervened on: row k of A is zeroed for that step;
  evaluation never intervenes). With A = 0 and s = t = 0 the head is the identity (tested).

Randomness (reparameterisation, prior samples, intervention draws) comes only from the ``generator`` the study
passes (the loop's per-step stream), so runs are deterministic and resume exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mclcore.losses.comp_contrast import comp_contrast_func
from mclcore.losses.mmd import IMQ_SCALES, mmd
from mclcore.models.encdiff import Encoder4
from mclcore.models.image_vae import ConvDecoder, ImageVAE

__all__ = ["IMAGE_PRINCIPLES", "ImageCompVAE", "ImageMMDVAE", "ImageQLAE", "ImageInterVAE", "build_image_principle"]

IMAGE_PRINCIPLES = ("compvae", "mmdvae", "qlae", "intervae")


def _bernoulli_recon(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image Bernoulli NLL summed over pixels, batch mean (ImageVAE's ``recon``)."""
    return F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none").flatten(1).sum(1).mean()


def _noise(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev).to(like)


class _ImagePrinciple(ImageVAE):
    """ImageVAE's encoder / decoder / encode / forward / decode without its kind check and discriminator."""

    kind = ""

    def __init__(self, latent_dim: int = 20, hidden: int = 128, fc: int = 256, enc_out: int | None = None):
        nn.Module.__init__(self)
        self.latent_dim, self.beta, self.gamma = latent_dim, 1.0, 0.0
        self.encoder = Encoder4(2 * latent_dim if enc_out is None else enc_out, hidden, fc)
        self.decoder = ConvDecoder(latent_dim, hidden, fc)
        self.discriminator = None

    def _gaussian(self, x, generator):
        mu, logvar = self.encode(x)                                                   # (B, K) each
        z = mu + torch.exp(0.5 * logvar) * _noise(mu.shape, mu, generator)
        kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - logvar.float() - 1).sum(1).mean()
        return mu, logvar, z, kl


class ImageCompVAE(_ImagePrinciple):
    """VAE (KL weight ``comp_beta``) + ``comp_lambda`` x compositional contrast of the decoder's logits Jacobian on
    the first ``comp_rows`` rows (module doc). ``losses`` returns ``comp`` (C, unweighted)."""

    kind = "compvae"

    def __init__(self, latent_dim=20, hidden=128, fc=256, *, comp_lambda: float = 0.1, comp_beta: float = 1.0,
                 comp_rows: int = 8, comp_pool: int = 1):
        super().__init__(latent_dim, hidden, fc)
        self.comp_lambda, self.beta, self.comp_rows, self.comp_pool = comp_lambda, comp_beta, comp_rows, comp_pool

    def jacobian_target(self, z: torch.Tensor) -> torch.Tensor:
        """The outputs whose Jacobian C is taken of: the logits, average-pooled by ``comp_pool`` (1: all 12,288)."""
        logits = self.decoder(z)
        return F.avg_pool2d(logits, self.comp_pool) if self.comp_pool > 1 else logits

    def contrast(self, z: torch.Tensor) -> torch.Tensor:
        """Mean C over the rows of z (R, K)."""
        return comp_contrast_func(self.jacobian_target, z).mean()

    def losses(self, x, *, generator=None, **_):
        mu, logvar, z, kl = self._gaussian(x, generator)
        recon = _bernoulli_recon(self.decoder(z), x)
        c = self.contrast(z[: self.comp_rows]) if self.comp_lambda > 0 else recon.new_zeros(())
        loss = recon + self.beta * kl + self.comp_lambda * c
        return {"loss": loss, "recon": recon.detach(), "kl": kl.detach(), "comp": c.detach(), "z": z}


class ImageMMDVAE(_ImagePrinciple):
    """Gaussian encoder, no KL: ``mmd_weight`` x unbiased MMD^2 (IMQ, ``scales``) between the codes of the first
    ``mmd_rows`` rows and as many N(0, I) samples (module doc). ``losses`` returns ``mmd`` and ``kl`` (the
    closed-form KL, a diagnostic only)."""

    kind = "mmdvae"

    def __init__(self, latent_dim=20, hidden=128, fc=256, *, mmd_weight: float = 100.0, mmd_rows: int = 128,
                 kernel: str = "imq", scales=IMQ_SCALES):
        super().__init__(latent_dim, hidden, fc)
        self.mmd_weight, self.mmd_rows, self.kernel, self.scales = mmd_weight, mmd_rows, kernel, tuple(scales)

    def losses(self, x, *, generator=None, **_):
        mu, logvar, z, kl = self._gaussian(x, generator)
        recon = _bernoulli_recon(self.decoder(z), x)
        zm = z[: self.mmd_rows].float() if self.mmd_rows else z.float()
        prior = _noise(zm.shape, zm, generator)                         # after eps, from the same stream
        d2 = mmd(zm, prior, self.kernel, scales=self.scales)
        loss = recon + self.mmd_weight * d2
        return {"loss": loss, "recon": recon.detach(), "mmd": d2.detach(), "kl": kl.detach(), "z": z}


class ImageQLAE(_ImagePrinciple):
    """Quantised-latent autoencoder (module doc): deterministic z_c = Encoder4(x) (K), per-dimension codebooks
    ``codebook`` (K, n_values), straight-through. ``losses`` returns ``quant``, ``commit`` (|z_c - z_q|^2 summed
    over K, batch mean, unweighted) and ``commit_rms`` (per-dimension root mean square distance to the code:
    compare with the code spacing ``2 value_range / (n_values - 1)``)."""

    kind = "qlae"

    def __init__(self, latent_dim=20, hidden=128, fc=256, *, n_values: int = 10, value_range: float = 0.5,
                 quant_weight: float = 10.0, commit_weight: float = 10.0, weight_decay: float = 0.1):
        super().__init__(latent_dim, hidden, fc, enc_out=latent_dim)
        self.quant_weight, self.commit_weight, self.weight_decay = quant_weight, commit_weight, weight_decay
        self.value_range, self.n_values = value_range, n_values
        self.codebook = nn.Parameter(torch.linspace(-value_range, value_range, n_values).repeat(latent_dim, 1))

    def encode(self, x):
        return self.encoder(x), None

    def forward(self, x):
        """The representation: z_c (B, K)."""
        return self.encoder(x)

    def quantize(self, zc: torch.Tensor) -> torch.Tensor:
        """Nearest codebook value per dimension, (B, K) -> (B, K), differentiable in the codebook."""
        idx = (zc.detach()[..., None] - self.codebook.detach()[None]).abs().argmin(-1)           # (B, K)
        return self.codebook[None].expand(len(zc), -1, -1).gather(-1, idx[..., None]).squeeze(-1)

    def decode(self, z):
        """Codes (B, K) -> images: the decoder of the quantised codes (what training reconstructs from)."""
        return torch.sigmoid(self.decoder(self.quantize(z)))

    def losses(self, x, *, generator=None, **_):
        zc = self.encoder(x)
        zq = self.quantize(zc)
        z = zc + (zq - zc).detach()                                                  # straight-through
        recon = _bernoulli_recon(self.decoder(z), x)
        quant = (zc.detach() - zq).float().pow(2).sum(1).mean()                      # moves the codebook
        commit = (zc - zq.detach()).float().pow(2).sum(1).mean()                     # moves the encoder
        loss = recon + self.quant_weight * quant + self.commit_weight * commit
        return {"loss": loss, "recon": recon.detach(), "quant": quant.detach(), "commit": commit.detach(),
                "commit_rms": (commit.detach() / self.latent_dim).sqrt(), "z": z}

    def param_groups(self) -> list[dict]:
        """AdamW groups: encoder and decoder with ``weight_decay`` (the paper's), the codebooks without."""
        decayed = [*self.encoder.parameters(), *self.decoder.parameters()]
        return [{"params": decayed, "weight_decay": float(self.weight_decay)},
                {"params": [self.codebook], "weight_decay": 0.0}]

    def sample_latents(self, n, generator, device):
        """Uniform codebook values per dimension (the quantised prior)."""
        idx = torch.randint(self.n_values, (n, self.latent_dim), generator=generator, device=device)
        return self.codebook.detach().to(device).gather(1, idx.T).T


class ImageInterVAE(_ImagePrinciple):
    """VAE whose decoder is ``ConvDecoder(head(eps))`` with the interventional head (module doc): ``A`` (K, K) used
    strictly lower-triangular, one per-concept affine block ``(scale, shift)`` (no context u in the image study),
    interventions with probability ``inter_prob`` per step. ``losses`` returns ``intervened`` (-1 or the concept)."""

    kind = "intervae"

    def __init__(self, latent_dim=20, hidden=128, fc=256, *, inter_prob: float = 0.5):
        super().__init__(latent_dim, hidden, fc)
        self.inter_prob = inter_prob
        self.A = nn.Parameter(torch.zeros(latent_dim, latent_dim))
        self.scale = nn.Parameter(torch.zeros(latent_dim))
        self.shift = nn.Parameter(torch.zeros(latent_dim))
        self.register_buffer("_strict_lower", torch.tril(torch.ones(latent_dim, latent_dim), -1), persistent=False)

    def head(self, eps: torch.Tensor, target: int = -1) -> torch.Tensor:
        """Concepts (B, K) of eps (B, K): ``c = (I - A)^{-1} eps`` (row ``target`` of A cut when >= 0), then
        ``c exp(scale) + shift``."""
        A = self.A * self._strict_lower
        if target >= 0:
            keep = torch.ones(self.latent_dim, 1, dtype=A.dtype, device=A.device)
            keep[target] = 0.0
            A = A * keep                                                             # do(c_k): row k's parents cut
        eye = torch.eye(self.latent_dim, dtype=A.dtype, device=A.device)
        c = torch.linalg.solve_triangular(eye - A, eps.T, upper=False).T
        return c * torch.exp(self.scale) + self.shift

    def decode(self, z):
        return torch.sigmoid(self.decoder(self.head(z)))

    def draw_target(self, generator, device) -> int:
        """Two draws every step (so the stream advances the same): intervene?, then which concept."""
        go = torch.rand((), generator=generator, device=device).item() < self.inter_prob
        k = int(torch.randint(self.latent_dim, (), generator=generator, device=device))
        return k if go else -1

    def losses(self, x, *, generator=None, target: int | None = None, **_):
        mu, logvar, z, kl = self._gaussian(x, generator)
        if target is None:
            target = self.draw_target(generator, mu.device) if self.training else -1
        recon = _bernoulli_recon(self.decoder(self.head(z, target)), x)
        return {"loss": recon + kl, "recon": recon.detach(), "kl": kl.detach(),
                "intervened": torch.tensor(float(target)), "z": z}


def build_image_principle(model: str, latent_dim: int, hidden: int, fc: int, p) -> _ImagePrinciple:
    """The ``model`` of :data:`IMAGE_PRINCIPLES` at the VAE sizes with the options ``p`` (a ``PrincipleConfig``)."""
    if model == "compvae":
        return ImageCompVAE(latent_dim, hidden, fc, comp_lambda=p.comp_lambda, comp_beta=p.comp_beta,
                            comp_rows=p.comp_rows, comp_pool=p.comp_pool)
    if model == "mmdvae":
        return ImageMMDVAE(latent_dim, hidden, fc, mmd_weight=p.mmd_weight, mmd_rows=p.mmd_rows)
    if model == "qlae":
        return ImageQLAE(latent_dim, hidden, fc, n_values=p.qlae_values, value_range=p.qlae_range,
                         quant_weight=p.quant_weight, commit_weight=p.commit_weight, weight_decay=p.qlae_weight_decay)
    if model == "intervae":
        return ImageInterVAE(latent_dim, hidden, fc, inter_prob=p.inter_prob)
    raise ValueError(f"model: expected one of {IMAGE_PRINCIPLES}, got {model!r}")
