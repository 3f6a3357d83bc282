"""InfoGAN-CR (Lin, Thekumparampil, Fanti, Oh, "InfoGAN-CR and ModelCentrality", ICML 2020): InfoGAN with a
contrastive regulariser. Table 1's "GAN / InfoGAN-CR" row; the representation scored by the metrics is the Q head's
code estimate on real images (:meth:`InfoGANCR.forward`).

* generator ``G(z, c)``: noise z ~ U(-1, 1)^noise_dim and continuous codes c ~ U(-1, 1)^code_dim (their
  ``UniformLatent``s) -> ``Linear(fc) -> BN-ReLU -> Linear(16 hidden) -> BN-ReLU`` then four stride-2 4x4 transposed
  convolutions (BN + ReLU between) to a 64x64 RGB image, sigmoid (their dSprites ``Decoder``, DCGAN-style);
* discriminator with a Q head: four stride-2 4x4 convolutions (LeakyReLU 0.2) -> ``Linear(fc)`` -> a real/fake
  logit and ``Q(x)`` = ``Linear(q_hidden) -> LeakyReLU -> Linear(code_dim)``, the mean of a unit-variance Gaussian
  posterior over c (their ``q_std = 1``): the mutual-information term is ``-log N(c; Q(G(z, c)), I)`` (summed over
  code dimensions, averaged over the batch), weighted by ``info_weight`` in both the generator's and the
  discriminator's loss (their ``info_coe_de = info_coe_infod = 0.05``);
* the **CR discriminator**: a pair of generated images (concatenated on channels, 6 x 64 x 64) whose latents share
  the noise and *one* code dimension ``i`` (drawn uniformly), every other code dimension drawn independently
  (their ``sample_cr`` with gap 0); it predicts ``i`` (cross-entropy over code_dim classes). It trains every step
  (Adam at ``cr_lr``); the generator adds ``cr_weight x`` that cross-entropy once the **schedule** switches it on
  (their dSprites config: ``cr_coe`` 0 until batch 288,000 of 28 epochs of 11,520 batches, i.e. 89 % of training,
  then 2.0, and the CR discriminator and its optimiser are re-initialised at the switch);
* losses: the standard non-saturating GAN (sigmoid cross-entropy). Adam betas (0.5, 0.999): generator lr 1e-3,
  discriminator + Q 2e-3, CR discriminator 2e-3 (their ``de_lr``, ``infod_lr``, ``crd_lr``).

Defaults taken from the public code (``fjxmlzn/InfoGAN-CR``, ``InfoGAN-CR_dSprites/config.py``,
``gan/infogan_cr.py``, ``gan/latent.py``, ``gan/network.py``, read 2026-12-06): the numbers above, noise_dim 5
(``uniform_not_reg_dim``), q_hidden 128 (``q_l_dim``). Ours: code_dim = 20 (Table 1's N = 20 for every method;
theirs 5 on dSprites), network widths from the study's VAE section (the same Encoder4 sizes as the VAE
baselines), no batch norm in the discriminators (theirs has it; without it the Q head reads a real image the same
way in training and evaluation), and the updates run generator first, then discriminator + Q and CR discriminator
on the same samples (theirs: CR discriminator, discriminator, generator), because the shared training loop steps
the first optimiser before its ``after_update`` hook. Their "gap" schedule (other codes forced apart) stays at its
configured 0 and is not implemented.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["InfoGANCR", "GANGenerator", "GANDiscriminator", "CRDiscriminator"]


def _conv_trunk(in_channels: int, hidden: int, fc: int) -> nn.Sequential:
    """(B, in_channels, 64, 64) -> (B, fc): four stride-2 4x4 convolutions then a Linear (LeakyReLU 0.2)."""
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(4):
        layers += [nn.Conv2d(c, hidden, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = hidden
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(hidden * 16, fc), nn.LeakyReLU(0.2))


class GANGenerator(nn.Module):
    """(B, noise_dim + code_dim) -> images (B, 3, 64, 64) in [0, 1]."""

    def __init__(self, in_dim: int, hidden: int = 64, fc: int = 256):
        super().__init__()
        self.hidden = hidden
        self.fc = nn.Sequential(nn.Linear(in_dim, fc), nn.BatchNorm1d(fc), nn.ReLU(),
                                nn.Linear(fc, hidden * 16), nn.BatchNorm1d(hidden * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for i in range(4):
            last = i == 3
            layers.append(nn.ConvTranspose2d(hidden, 3 if last else hidden, 4, 2, 1))
            if not last:
                layers += [nn.BatchNorm2d(hidden), nn.ReLU()]
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.deconvs(self.fc(z).view(-1, self.hidden, 4, 4)))


class GANDiscriminator(nn.Module):
    """Images in [0, 1] -> (real/fake logit (B,), Q's code estimate (B, code_dim))."""

    def __init__(self, code_dim: int, hidden: int = 64, fc: int = 256, q_hidden: int = 128):
        super().__init__()
        self.trunk = _conv_trunk(3, hidden, fc)
        self.d_head = nn.Linear(fc, 1)
        self.q_head = nn.Sequential(nn.Linear(fc, q_hidden), nn.LeakyReLU(0.2), nn.Linear(q_hidden, code_dim))

    def forward(self, x: torch.Tensor):
        h = self.trunk(x * 2 - 1)
        return self.d_head(h).squeeze(1), self.q_head(h)


class CRDiscriminator(nn.Module):
    """A pair of images (B, 3, 64, 64) x 2 -> logits (B, code_dim) over which code dimension they share."""

    def __init__(self, code_dim: int, hidden: int = 64, fc: int = 256):
        super().__init__()
        self.net = nn.Sequential(_conv_trunk(6, hidden, fc), nn.Linear(fc, code_dim))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, b], dim=1) * 2 - 1)


class InfoGANCR(nn.Module):
    """InfoGAN-CR (see the module docstring). ``forward(x)`` is the representation: Q's code estimate (B, code_dim).

    Args:
        code_dim: continuous codes (the representation's size). noise_dim: incompressible noise dimensions.
        hidden, fc: convolution and fully connected widths of all three networks. q_hidden: the Q head's width.
        info_weight: weight of the mutual-information term (generator and discriminator). cr_weight: the
        contrastive regulariser's weight once switched on.
    """

    def __init__(self, code_dim: int = 20, noise_dim: int = 5, hidden: int = 64, fc: int = 256, q_hidden: int = 128,
                 info_weight: float = 0.05, cr_weight: float = 2.0):
        super().__init__()
        for name, v in (("code_dim", code_dim), ("hidden", hidden), ("fc", fc), ("q_hidden", q_hidden)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if not isinstance(noise_dim, int) or noise_dim < 0:
            raise ValueError(f"noise_dim: expected an int >= 0, got {noise_dim!r}")
        if code_dim < 2:
            raise ValueError(f"code_dim: the CR discriminator needs at least 2 code dimensions, got {code_dim}")
        for name, v in (("info_weight", info_weight), ("cr_weight", cr_weight)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        self.code_dim, self.noise_dim = code_dim, noise_dim
        self.info_weight, self.cr_weight = float(info_weight), float(cr_weight)
        self.generator = GANGenerator(noise_dim + code_dim, hidden, fc)
        self.discriminator = GANDiscriminator(code_dim, hidden, fc, q_hidden)
        self.cr_discriminator = CRDiscriminator(code_dim, hidden, fc)

    # ------------------------------------------------------------------------------------------------- latents
    def _uniform(self, shape, generator, device) -> torch.Tensor:
        dev = generator.device if generator is not None else device
        return (torch.rand(shape, generator=generator, device=dev) * 2 - 1).to(device)

    def sample_latents(self, batch: int, generator: torch.Generator | None = None, device=None):
        """(noise (B, noise_dim), codes (B, code_dim)), both U(-1, 1)."""
        device = device or self.d_device
        return self._uniform((batch, self.noise_dim), generator, device), \
            self._uniform((batch, self.code_dim), generator, device)

    def sample_cr_pairs(self, batch: int, generator: torch.Generator | None = None, device=None):
        """Two latent batches sharing the noise and one code dimension per row, and that dimension (B,)."""
        device = device or self.d_device
        noise, c1 = self.sample_latents(batch, generator, device)
        c2 = self._uniform((batch, self.code_dim), generator, device)
        dev = generator.device if generator is not None else device
        label = torch.randint(0, self.code_dim, (batch,), generator=generator, device=dev).to(device)
        shared = F.one_hot(label, self.code_dim).bool()
        c2 = torch.where(shared, c1, c2)
        return (noise, c1), (noise, c2), label

    @property
    def d_device(self) -> torch.device:
        return self.discriminator.d_head.weight.device

    def render(self, noise: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """G(z, c): images in [0, 1]. (Not named ``generate``: the study's figures read that name as a diffusion
        sampler taking DDIM options.)"""
        return self.generator(torch.cat([noise, codes], dim=1))

    # -------------------------------------------------------------------------------------------------- losses
    def info_nll(self, q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """-log N(codes; q, I): summed over code dimensions, averaged over the batch."""
        return (0.5 * (q.float() - codes.float()).pow(2) + 0.5 * math.log(2 * math.pi)).sum(1).mean()

    def generator_losses(self, batch: int, *, cr_on: bool, generator: torch.Generator | None = None) -> dict:
        """The generator's loss on ``batch`` fresh samples: non-saturating GAN + info_weight x MI term (+ cr_weight
        x the CR cross-entropy when ``cr_on``). Also returns the detached samples the discriminators train on."""
        noise, codes = self.sample_latents(batch, generator)
        fake = self.render(noise, codes)
        d_fake, q_fake = self.discriminator(fake)
        l_gan = F.binary_cross_entropy_with_logits(d_fake.float(), torch.ones_like(d_fake, dtype=torch.float))
        l_info = self.info_nll(q_fake, codes)
        loss = l_gan + self.info_weight * l_info
        (n1, c1), (n2, c2), label = self.sample_cr_pairs(batch, generator)
        a, b = self.render(n1, c1), self.render(n2, c2)
        out = {"gan": l_gan.detach(), "info": l_info.detach(), "fake": fake.detach(), "codes": codes,
               "pair_a": a.detach(), "pair_b": b.detach(), "pair_label": label}
        if cr_on and self.cr_weight:
            l_cr = F.cross_entropy(self.cr_discriminator(a, b).float(), label)
            loss = loss + self.cr_weight * l_cr
            out["cr"] = l_cr.detach()
        out["loss"] = loss
        return out

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Discriminator + Q: real vs (detached) fake sigmoid cross-entropy + info_weight x MI term."""
        d_real, _ = self.discriminator(real)
        d_fake, q_fake = self.discriminator(fake.detach())
        l = F.binary_cross_entropy_with_logits(d_real.float(), torch.ones_like(d_real, dtype=torch.float)) + \
            F.binary_cross_entropy_with_logits(d_fake.float(), torch.zeros_like(d_fake, dtype=torch.float))
        return l + self.info_weight * self.info_nll(q_fake, codes)

    def cr_loss(self, a: torch.Tensor, b: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CR discriminator's cross-entropy on a (detached) pair, and its accuracy."""
        logits = self.cr_discriminator(a.detach(), b.detach()).float()
        return F.cross_entropy(logits, label), (logits.argmax(1) == label).float().mean().detach()

    # ---------------------------------------------------------------------------------------- representation
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The representation: Q's code estimate (B, code_dim) of images in [0, 1]."""
        return self.discriminator(x)[1]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images from codes with the noise at its prior mean 0 (figures, reconstructions)."""
        noise = codes.new_zeros(len(codes), self.noise_dim)
        return self.render(noise, codes)
