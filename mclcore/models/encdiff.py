"""EncDiff and MDDiff: concept encoder -> per-scalar concept tokens -> cross-attention U-Net over a VQ latent.

Paper App. D.4 (and D.2 for EncDiff, Yang et al. 2024):

* ``Encoder4``: four stride-2 convolutions (hidden width 128) from a 64x64 RGB image to K = 20 scalars ``s``;
* ``ConceptTokenizer``: each scalar ``s_k`` has its own MLP ``1 -> 64 -> 128 -> 16`` (ELU), giving K tokens;
* a U-Net denoiser ``eps_theta(z_t, t, tokens)`` with cross-attention to the tokens (:mod:`mclcore.models.unet`),
  trained with the DDPM loss (:mod:`mclcore.models.diffusion`) on the latent ``z_0 = E(x)`` of a frozen VQ
  autoencoder (:mod:`mclcore.models.autoencoder`). The representation scored by the metrics is ``s``.

MDDiff adds two things (App. D.4):

1. a **u-conditioned decoder**: the autoencoder's decoder takes the concept tokens at every upsampling stage, so the
   map from the diffusion latent to pixels is a generator ``g(z, u)`` in the sense of Assumption 2;
2. **MCL** with the image mechanism critic of Algorithm 2 (``MCL.from_config(MCLConfig(critic="image"))``,
   projection heads to 128 dims, InfoNCE with tau = 0.1) on ``(x_hat, z, u)``; the options are one typed
   :class:`mclcore.losses.mcl.MCLConfig`.

What z and u are for MCL here (our reading of App. D.4, which says "z the diffusion latent and u the concept token
sequence"):

* ``u`` is the concept code ``s`` in R^K (K = 20, the critic's ``u_dim = 20`` in Algorithm 2). The token sequence is
  ``T(s)`` with the fixed-architecture per-scalar MLPs, so ``g(z, u) = D(z, T(u))``: conditioning on u and on its
  tokens is the same thing, and the contrastive key ``Pi_u(u)`` sees the 20 scalars. Gradients of the MCL loss reach
  the concept encoder through u (decoder input, critic input and key), the tokenizer and the decoder.
* ``z`` is the diffusion latent, 3x16x16. ``mcl_z = "clean"`` (default) uses the clean latent ``z_0 = E(x)`` (the
  point the sampler ends at); ``"pred_x0"`` uses the denoiser's estimate ``z0_hat(z_t, t, T(s))`` of the same
  step, which also sends the MCL gradient into the U-Net (at large t the estimate is far outside the decoder's
  training range, so it is an option, not the default).
* ``x_hat = g(z, u)`` is the u-decoder's image on the [-1, 1] scale, what the critic's convolutions see.
* ``mcl_pairing``: which z meets which u. ``"paired"`` (default, our reading of Eq. (19) and the public code's): z
  and u of the same image. Then z, the first-stage latent of the image, determines u, and the contrast can be solved
  by reading u off z through any generator, a u-blind one included (the paper's population MCL objective draws
  (z, u) ~ p(z) p(u), App. B.2 Eq. (2)). ``"independent"``: row i contrasts ``g(z_{i-1}, u_i)``, the previous
  image's latent with this image's code (the batch rolled by one; batches are random draws), so u reaches the
  mechanism gradient only through G's dependence on u. ``experiments/disentanglement/mcl_probe.py`` measures both
  routes on trained runs.

The loss is Eq. (19): ``L = L_diffusion + lambda_recon L_recon + lambda_MCL L_MCL``, with ``L_recon`` the pixel loss of
the u-decoder's reconstruction ``D(z_0, T(s))`` of x (L1 + MSE here, weight 0.1 in the paper).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mclcore.losses.mcl import MCL, MCLConfig
from mclcore.models.autoencoder import VQAutoencoder
from mclcore.models.diffusion import GaussianDiffusion
from mclcore.models.unet import UNet

__all__ = ["Encoder4", "ConceptTokenizer", "EncDiff", "MDDiff", "MCL_Z", "MCL_PAIRINGS"]

MCL_Z = ("clean", "pred_x0")
MCL_PAIRINGS = ("paired", "independent")


class Encoder4(nn.Module):
    """(B, 3, 64, 64) in [0, 1] -> (B, K): four stride-2 4x4 convolutions (ReLU) to (hidden, 4, 4), then
    ``Linear(16 hidden -> fc) -> ReLU -> Linear(fc -> K)``. Also the encoder of the VAE baselines (same size)."""

    def __init__(self, out_dim: int = 20, hidden: int = 128, fc: int = 256, in_channels: int = 3):
        super().__init__()
        convs: list[nn.Module] = []
        c = in_channels
        for _ in range(4):
            convs += [nn.Conv2d(c, hidden, 4, 2, 1), nn.ReLU()]
            c = hidden
        self.convs = nn.Sequential(*convs)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(hidden * 16, fc), nn.ReLU(), nn.Linear(fc, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (64, 64):
            raise ValueError(f"x: Encoder4 expects 64x64 images, got {tuple(x.shape)}")
        return self.fc(self.convs(x * 2 - 1))        # (B, K)


class ConceptTokenizer(nn.Module):
    """K independent MLPs ``1 -> hidden... -> token_dim`` (ELU), applied to the K scalars: (B, K) -> (B, K, d).

    Implemented as batched matrix products over stacked per-concept weights (one MLP per scalar, no sharing).
    """

    def __init__(self, num_concepts: int = 20, hidden: Sequence[int] = (64, 128), token_dim: int = 16):
        super().__init__()
        dims = [1, *hidden, token_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            w = torch.empty(num_concepts, a, b)
            for k in range(num_concepts):   # nn.Linear's default init, per concept
                nn.init.kaiming_uniform_(w[k].T, a=5 ** 0.5)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.empty(num_concepts, b).uniform_(-a ** -0.5, a ** -0.5)))
        self.num_concepts, self.token_dim = num_concepts, token_dim

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if s.ndim != 2 or s.shape[1] != self.num_concepts:
            raise ValueError(f"s: expected (B, {self.num_concepts}) concept scalars, got {tuple(s.shape)}")
        h = s[:, :, None]                                                   # (B, K, 1)
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.einsum("bki,kio->bko", h, w.to(h.dtype)) + b.to(h.dtype)
            if i < n - 1:
                h = F.elu(h)
        return h                                                            # (B, K, token_dim)


class EncDiff(nn.Module):
    """EncDiff (App. D.2): concept encoder + tokenizer + cross-attention U-Net, over a frozen VQ autoencoder.

    Args:
        first_stage: a trained :class:`VQAutoencoder` (its scale_factor set). Its encoder is frozen here.
        num_concepts: K (20). encoder_hidden: Encoder4 width (128). token_hidden, token_dim: tokenizer sizes.
        unet: keyword arguments of :class:`UNet` (``in_channels`` and ``context_dim`` are filled in).
        diffusion: keyword arguments of :class:`GaussianDiffusion` (T, beta_start, beta_end, schedule).
    """

    def __init__(self, first_stage: VQAutoencoder, *, num_concepts: int = 20, encoder_hidden: int = 128,
                 encoder_fc: int = 256, token_hidden: Sequence[int] = (64, 128), token_dim: int = 16,
                 unet: dict | None = None, diffusion: dict | None = None, image_size: int = 64):
        super().__init__()
        self.first_stage = first_stage
        for p in self.first_stage.parameters():
            p.requires_grad_(False)
        self.latent_shape = first_stage.latent_shape(image_size)
        self.concept_encoder = Encoder4(num_concepts, encoder_hidden, encoder_fc)
        self.tokenizer = ConceptTokenizer(num_concepts, token_hidden, token_dim)
        self.unet = UNet(in_channels=self.latent_shape[0], context_dim=token_dim, **(unet or {}))
        self.diffusion = GaussianDiffusion(**(diffusion or {}))
        self.num_concepts, self.image_size = num_concepts, image_size

    # -------------------------------------------------------------------------------------------- building blocks
    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """The representation: images (B, 3, 64, 64) in [0, 1] -> concept scalars s (B, K)."""
        return self.concept_encoder(x)

    def tokens(self, s: torch.Tensor) -> torch.Tensor:
        return self.tokenizer(s)                                            # (B, K, d_tok)

    def eps(self, z_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.unet(z_t, t, tokens)

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen first-stage latent z_0 (B, 3, 16, 16) of images in [0, 1]."""
        return self.first_stage.encode(x)

    def decode(self, z: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> decoder output on the [-1, 1] scale (EncDiff's decoder ignores s)."""
        return self.first_stage.decode(z)

    # ----------------------------------------------------------------------------------------------------- losses
    def losses(self, x: torch.Tensor, *, generator: torch.Generator | None = None, **_) -> dict:
        """Diffusion loss on a batch of images in [0, 1]. Returns ``{"loss", "diffusion", ...}``."""
        z0 = self.latents(x)                                                # (B, 3, 16, 16)
        s = self.concepts(x)                                                # (B, K)
        tok = self.tokens(s)                                                # (B, K, 16)
        out = self.diffusion.training_losses(self.eps, z0, tok, generator=generator)
        return {"loss": out["loss"], "diffusion": out["loss"].detach(), "z0": z0, "s": s, "tokens": tok,
                "x0_pred": out["x0_pred"]}

    # -------------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_latents(self, s: torch.Tensor, *, num_steps: int = 50, x_T: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
        """DDIM latents conditioned on concept codes s (B, K)."""
        shape = (s.shape[0], *self.latent_shape)
        return self.diffusion.ddim_sample(self.eps, shape, self.tokens(s), num_steps=num_steps, x_T=x_T,
                                          generator=generator, callback=callback)

    @torch.no_grad()
    def generate(self, s: torch.Tensor, **kw) -> torch.Tensor:
        """Images in [0, 1] (B, 3, 64, 64) from concept codes s by DDIM + decoding."""
        return VQAutoencoder.to_image(self.decode(self.sample_latents(s, **kw), s).float())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """EncDiff's reconstruction: encode s = E_c(x), then generate from noise conditioned on s."""
        return self.generate(self.concepts(x), **kw)


class MDDiff(EncDiff):
    """MDDiff = EncDiff + u-conditioned decoder + MCL (App. D.4); see the module docstring for z and u.

    ``first_stage`` must have a u-conditioned decoder (``u_dim = K * token_dim``). Its encoder and codebook stay
    frozen; the decoder (and its u-fusion layers) trains in stage 2 through ``L_recon`` and ``L_MCL``.

    Args (beyond :class:`EncDiff`): mcl: the MCL options (:class:`MCLConfig`); None gives
    ``MCLConfig(critic="image")``, Algorithm 2's convolutional critic with the paper's defaults. The critic sees
    ``x_hat`` (3, 64, 64), z (the latent shape) and u = s (K).
    """

    def __init__(self, first_stage: VQAutoencoder, *, mcl: MCLConfig | None = None, **kw):
        super().__init__(first_stage, **kw)
        need = self.num_concepts * self.tokenizer.token_dim
        if first_stage.decoder.u_dim != need:
            raise ValueError(f"first_stage: MDDiff needs a u-conditioned decoder with u_dim = K * token_dim = {need}, "
                             f"got u_dim = {first_stage.decoder.u_dim}")
        if mcl is None:
            mcl = MCLConfig(critic="image")
        elif not isinstance(mcl, MCLConfig):
            raise TypeError(f"mcl: expected an MCLConfig (or None), got {type(mcl).__name__}")
        for p in list(first_stage.decoder.parameters()) + list(first_stage.post_quant_conv.parameters()):
            p.requires_grad_(True)
        self.mcl = MCL.from_config(mcl, z_dim=self.latent_shape, x_dim=(3, self.image_size, self.image_size),
                                   u_dim=self.num_concepts)

    def decode(self, z: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        if s is None:
            raise ValueError("s: MDDiff's decoder is u-conditioned; pass the concept codes")
        return self.first_stage.decode(z, self.tokens(s))

    def generator(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """g(z, u) = D(z, T(u)): diffusion latent (B, 3, 16, 16), concepts (B, K) -> x_hat (B, 3, 64, 64)."""
        return self.decode(z, u)

    def generator_parameters(self) -> list[nn.Parameter]:
        """The parameters of the u-decoder the MCL term regularises: the first stage's decoder (with its u-fusion
        layers) and post_quant_conv. The MCL gradient also reaches the tokenizer T (g(z, u) = D(z, T(u))) and the
        concept encoder (through u = s), but both are shared with the diffusion path (the U-Net's conditioning),
        so the host loss's gradient on them is not the generator's: gradient norms and the relative weight are
        measured on the decoder alone."""
        return list(self.first_stage.decoder.parameters()) + list(self.first_stage.post_quant_conv.parameters())

    def losses(self, x: torch.Tensor, *, generator: torch.Generator | None = None, lambda_recon: float = 0.0,
               lambda_mcl: float = 0.0, mcl_z: str = "clean", mcl_pairing: str = "paired", mcl_weight=None,
               **_) -> dict:
        """Eq. (19): L_diffusion + lambda_recon L_recon + lambda_MCL L_MCL (terms with weight 0 are skipped).

        ``mcl_weight``: None (the weight is ``lambda_mcl``) or a callable that gets the step's MCL terms
        ``{"mcl": L_MCL, "host": L_diffusion + lambda_recon L_recon, "generator", "z", "u", "params"}`` (both losses
        with their graphs; :meth:`generator_parameters`) and returns the weight of L_MCL (diagnostics and relative
        weighting: :mod:`mclcore.losses.monitor`). Only computed when ``lambda_mcl`` is nonzero. ``mcl_z``,
        ``mcl_pairing``: see the module doc."""
        if mcl_z not in MCL_Z:
            raise ValueError(f"mcl_z: expected one of {MCL_Z}, got {mcl_z!r}")
        if mcl_pairing not in MCL_PAIRINGS:
            raise ValueError(f"mcl_pairing: expected one of {MCL_PAIRINGS}, got {mcl_pairing!r}")
        out = super().losses(x, generator=generator)
        loss = out["loss"]
        if lambda_recon:
            rec = self.decode(out["z0"], out["s"]).float()                          # (B, 3, 64, 64)
            target = x * 2 - 1
            l_rec = (rec - target).abs().mean() + (rec - target).pow(2).mean()
            loss = loss + lambda_recon * l_rec
            out["recon"] = l_rec.detach()
        if lambda_mcl:
            z = out["z0"] if mcl_z == "clean" else out["x0_pred"]                   # (B, 3, 16, 16)
            if mcl_pairing == "independent":
                if len(z) < 2:
                    raise ValueError("mcl_pairing: 'independent' needs a batch of at least 2 images")
                z = z.roll(1, 0)                                                     # row i: image i-1's z
            l_mcl = self.mcl(self.generator, z, out["s"])                         # InfoNCE, scalar
            w = lambda_mcl if mcl_weight is None else mcl_weight(
                {"mcl": l_mcl, "host": loss, "generator": self.generator, "z": z, "u": out["s"],
                 "params": self.generator_parameters()})
            loss = loss + w * l_mcl
            out["mcl"] = l_mcl.detach()
        out["loss"] = loss
        return out

