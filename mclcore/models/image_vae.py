"""VAE baselines of Table 1 on 64x64 images: beta-VAE, FactorVAE and beta-TCVAE (paper section 5.2, App. D.2).

All three share one architecture, with the same encoder size as EncDiff/MDDiff: the :class:`Encoder4` CNN (four
stride-2 convolutions, hidden 128) producing ``2K`` numbers (posterior mean and log-variance, K = 20 latents as
in Table 1: "all methods use N = 20 scalar representations"), and its mirror image as decoder (transposed
convolutions) producing Bernoulli logits per pixel. They differ only in the regulariser (the losses follow
disentanglement_lib, Locatello et al. 2019):

* ``betavae`` (Higgins et al. 2017): ``recon + beta KL(q(z|x) || N(0, I))``;
* ``factorvae`` (Kim & Mnih 2018): ``recon + KL + gamma TC`` with the total correlation estimated by a discriminator
  ``D`` between samples of q(z) and of the product of its marginals (the batch with each dimension permuted
  independently): ``TC ~ E[logit D(z)]``; D is trained with its own optimiser (:meth:`ImageVAE.discriminator_loss`);
* ``btcvae`` (Chen et al. 2018): ``recon + KL + (beta - 1) TC`` with TC from the minibatch-weighted sampling (MWS)
  estimator, ``TC = E[log q(z) - sum_j log q(z_j)]``, ``log q(z) ~ logsumexp_i log q(z | x_i) - log(B N)``.

``recon`` is the per-image Bernoulli negative log-likelihood summed over pixels (the data are in [0, 1]).
The representation scored by the metrics is the posterior mean.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mclcore.models.encdiff import Encoder4

__all__ = ["ConvDecoder", "ImageVAE", "TCDiscriminator", "VAE_KINDS", "gaussian_log_density", "total_correlation_mws"]

VAE_KINDS = ("betavae", "factorvae", "btcvae")


class ConvDecoder(nn.Module):
    """(B, K) -> (B, 3, 64, 64) logits: ``Linear(K -> fc) -> ReLU -> Linear(-> 16 hidden) -> ReLU`` then four
    stride-2 4x4 transposed convolutions (ReLU between), mirroring :class:`Encoder4`."""

    def __init__(self, in_dim: int = 20, hidden: int = 128, fc: int = 256, out_channels: int = 3):
        super().__init__()
        self.hidden = hidden
        self.fc = nn.Sequential(nn.Linear(in_dim, fc), nn.ReLU(), nn.Linear(fc, hidden * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for i in range(4):
            last = i == 3
            layers.append(nn.ConvTranspose2d(hidden, out_channels if last else hidden, 4, 2, 1))
            if not last:
                layers.append(nn.ReLU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconvs(self.fc(z).view(-1, self.hidden, 4, 4))


class TCDiscriminator(nn.Module):
    """FactorVAE's discriminator: MLP K -> width x depth (LeakyReLU 0.2) -> 2 logits (q(z) vs prod q(z_j))."""

    def __init__(self, in_dim: int = 20, width: int = 1000, depth: int = 6):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.LeakyReLU(0.2)]
            d = width
        layers.append(nn.Linear(d, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, exp(logvar)) (broadcasting)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def total_correlation_mws(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Minibatch estimate of TC(q(z)) as in disentanglement_lib's beta-TCVAE (Chen et al. 2018, section 4.1).

    z, mu, logvar: (B, K). ``log q(z_i) ~ logsumexp_j log q(z_i | x_j)`` and per-dimension likewise; the
    ``log(B N)`` constants cancel in the difference up to ``(K - 1) log(B N)``, which does not depend on the
    parameters (disentanglement_lib drops it as well).
    """
    log_qz_prob = gaussian_log_density(z[:, None, :], mu[None], logvar[None])        # (B, B, K)
    log_qz_product = torch.logsumexp(log_qz_prob, dim=1).sum(dim=1)                  # sum_j log q(z_j)
    log_qz = torch.logsumexp(log_qz_prob.sum(dim=2), dim=1)                          # log q(z)
    return (log_qz - log_qz_product).mean()


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle each latent dimension independently across the batch: a sample of prod_j q(z_j)."""
    b, k = z.shape
    dev = generator.device if generator is not None else z.device
    idx = torch.argsort(torch.rand(b, k, generator=generator, device=dev), dim=0).to(z.device)
    return torch.gather(z, 0, idx)


class ImageVAE(nn.Module):
    """beta-VAE / FactorVAE / beta-TCVAE with the Encoder4 backbone (see the module docstring).

    Args:
        kind: "betavae", "factorvae" or "btcvae". latent_dim: K (20). hidden, fc: encoder/decoder widths.
        beta: KL weight for betavae, TC weight for btcvae. gamma: TC weight for factorvae.
        disc_width, disc_depth: FactorVAE discriminator size (paper of Kim & Mnih: 1000 x 6).
    """

    def __init__(self, kind: str = "betavae", latent_dim: int = 20, hidden: int = 128, fc: int = 256,
                 beta: float = 4.0, gamma: float = 10.0, disc_width: int = 1000, disc_depth: int = 6):
        super().__init__()
        if kind not in VAE_KINDS:
            raise ValueError(f"kind: expected one of {VAE_KINDS}, got {kind!r}")
        self.kind, self.latent_dim, self.beta, self.gamma = kind, latent_dim, beta, gamma
        self.encoder = Encoder4(2 * latent_dim, hidden, fc)
        self.decoder = ConvDecoder(latent_dim, hidden, fc)
        self.discriminator = TCDiscriminator(latent_dim, disc_width, disc_depth) if kind == "factorvae" else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] -> (mu, logvar), each (B, K)."""
        h = self.encoder(x)
        return h[:, : self.latent_dim], h[:, self.latent_dim:]

    def sample_latents(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """n latents of the model's prior for generation (FID): N(0, I), (n, K). A model with another prior
        (QLAE's codebook values, mclcore.models.image_principles) overrides this."""
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The representation: posterior mean (B, K)."""
        return self.encode(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, K) -> images in [0, 1] (B, 3, 64, 64)."""
        return torch.sigmoid(self.decoder(z))

    def vae_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]

    def losses(self, x: torch.Tensor, *, generator: torch.Generator | None = None, **_) -> dict:
        """The VAE objective (to minimise) on images x in [0, 1]; keeps ``z`` for the discriminator step."""
        mu, logvar = self.encode(x)                                                      # (B, K) each
        dev = generator.device if generator is not None else mu.device
        eps = torch.randn(mu.shape, generator=generator, device=dev).to(mu)
        z = mu + torch.exp(0.5 * logvar) * eps                                           # (B, K)
        logits = self.decoder(z).float()                                                 # (B, 3, 64, 64)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).mean()
        kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - logvar.float() - 1).sum(1).mean()
        out = {"recon": recon.detach(), "kl": kl.detach(), "z": z}
        if self.kind == "betavae":
            loss = recon + self.beta * kl
        elif self.kind == "btcvae":
            tc = total_correlation_mws(z.float(), mu.float(), logvar.float())
            loss = recon + kl + (self.beta - 1.0) * tc
            out["tc"] = tc.detach()
        else:
            d = self.discriminator(z)                                                    # (B, 2)
            tc = (d[:, 0] - d[:, 1]).mean()                                              # logit of "joint"
            loss = recon + kl + self.gamma * tc
            out["tc"] = tc.detach()
        out["loss"] = loss
        return out

    def discriminator_loss(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """FactorVAE discriminator cross-entropy: class 0 for q(z) samples, 1 for permuted (product) samples."""
        if self.discriminator is None:
            raise ValueError("discriminator_loss: only kind='factorvae' has a discriminator")
        z = z.detach()
        zp = permute_dims(z, generator)
        logits = torch.cat([self.discriminator(z), self.discriminator(zp)], 0).float()
        target = torch.cat([torch.zeros(len(z)), torch.ones(len(z))]).long().to(z.device)
        return F.cross_entropy(logits, target)
