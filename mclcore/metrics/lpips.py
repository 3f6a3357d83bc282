"""LPIPS v0.1 (Zhang et al. 2018) in plain torch (no torchvision), from user-supplied weight files.

What this reproduces (read from the reference implementation, richzhang/PerceptualSimilarity ``lpips/lpips.py`` and
``lpips/pretrained_networks.py``, and torchvision's ``alexnet`` / ``vgg16`` ``features`` stacks; written here, not
copied):

* **backbone**: torchvision's ImageNet ``features`` stack, so a torchvision checkpoint's keys load as they are
  (``features.N.weight``, ``features.N.bias``; the ``classifier.*`` keys of a whole-model file are ignored):

  - ``"alex"``: conv indices 0 (3->64, 11x11/4, pad 2), 3 (64->192, 5x5, pad 2), 6 (192->384, 3x3), 8 (384->256),
    10 (256->256); max-pools 3x3/2 at indices 2 and 5. LPIPS taps the ReLUs after each conv (relu1..relu5,
    channels 64, 192, 384, 256, 256);
  - ``"vgg"`` (VGG16): 13 3x3 convs at indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, max-pools 2x2/2 at
    4, 9, 16, 23; taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (channels 64, 128, 256, 512, 512);

* **scaling layer** (v0.1): inputs in [-1, 1] are mapped by ``(x - shift) / scale`` with
  ``shift = (-0.030, -0.088, -0.188)``, ``scale = (0.458, 0.448, 0.450)`` per RGB channel;
* each tapped activation is unit-normalised over channels (``x / (||x||_2 + 1e-10)``), the squared difference of
  the two images' normalised activations is weighted by a learned non-negative 1x1 conv to one channel
  (``lin{k}.model.1.weight``, shape (1, C_k, 1, 1), no bias: index 1 because index 0 is a Dropout in the
  reference), averaged over space and summed over the five layers. The linear-layer file is the reference's
  ``weights/v0.1/{alex,vgg}.pth`` (keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``).

Inputs here are images in [0, 1] (the reference's ``normalize=True``). Nothing is downloaded: the backbone file
(torchvision's ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` or any file with the same ``features.*`` keys)
and the linear-layer file are paths (``eval.lpips_backbone`` / ``eval.lpips_weights`` of the disentanglement study,
or ``MCLCORE_LPIPS_BACKBONE`` / ``MCLCORE_LPIPS_WEIGHTS``).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from mclcore.metrics.inception import _check_keys, load_state_dict_file

__all__ = ["LPIPS", "AlexNetFeatures", "VGG16Features", "load_lpips", "LPIPS_NETS", "LPIPS_BACKBONE_ENV",
           "LPIPS_WEIGHTS_ENV", "SHIFT", "SCALE"]

LPIPS_NETS = ("alex", "vgg")
LPIPS_BACKBONE_ENV = "MCLCORE_LPIPS_BACKBONE"
LPIPS_WEIGHTS_ENV = "MCLCORE_LPIPS_WEIGHTS"
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class _Features(nn.Module):
    """A torchvision-style ``features`` nn.Sequential (indices as torchvision's, so its keys load) plus the
    indices after which LPIPS taps an activation (the ReLU following each tapped conv)."""

    channels: tuple
    taps: tuple

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.taps:
                out.append(x)
            if i == self.taps[-1]:
                break
        return out


class AlexNetFeatures(_Features):
    channels, taps = (64, 192, 384, 256, 256), (1, 4, 7, 9, 11)

    def __init__(self):
        super().__init__()
        # ReLU not in place: the tapped activation must not be overwritten by the next layer
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))


class VGG16Features(_Features):
    channels, taps = (64, 128, 256, 512, 512), (3, 8, 15, 22, 29)

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)


class _Lin(nn.Module):
    """``lin{k}.model.1.weight``: index 0 of the reference's Sequential is a parameter-free Dropout (inactive in
    eval), kept as Identity so the learned 1x1 conv sits at index 1 and the file's keys load unchanged."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """``LPIPS(net)(x, y)``: (B,) distances between image batches in [0, 1] (B, 3, H, W); see the module doc.

    Built with random weights; :func:`load_lpips` loads the two files. Parameters never require grad, but the
    distance is differentiable in its inputs (used as a perceptual loss)."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"net: expected one of {LPIPS_NETS}, got {net!r}")
        self.net_name = net
        self.net = AlexNetFeatures() if net == "alex" else VGG16Features()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        for k, c in enumerate(self.net.channels):
            self.add_module(f"lin{k}", _Lin(c))
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)

    @property
    def lins(self) -> list[nn.Conv2d]:
        return [getattr(self, f"lin{k}").model[1] for k in range(len(self.net.channels))]

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Tapped backbone activations of images in [0, 1] (after the v0.1 scaling layer)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected (B, 3, H, W) images in [0, 1], got {tuple(x.shape)}")
        return self.net(((2 * x - 1) - self.shift) / self.scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"x, y: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
        d = x.new_zeros(x.shape[0])
        for a, b, lin in zip(self.layers(x), self.layers(y), self.lins):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = d + lin((a - b).pow(2)).mean((1, 2, 3))          # 1x1 weighting, spatial average
        return d

    def backbone_keys(self) -> list[str]:
        return [k for k in self.state_dict() if k.startswith("net.")]


def load_lpips(net: str = "alex", backbone: str | None = None, weights: str | None = None, device="cpu",
               what: str = "eval.lpips") -> LPIPS:
    """LPIPS v0.1 with torchvision's ``features`` weights from ``backbone`` and the linear layers from
    ``weights`` (defaults: ``$MCLCORE_LPIPS_BACKBONE``, ``$MCLCORE_LPIPS_WEIGHTS``), both loaded strictly
    (``classifier.*`` keys of a whole torchvision checkpoint are ignored). One-line ValueError naming the option
    (``what``_backbone / ``what``_weights) and the file when one is missing or does not match."""
    backbone = backbone or os.environ.get(LPIPS_BACKBONE_ENV)
    weights = weights or os.environ.get(LPIPS_WEIGHTS_ENV)
    if not backbone or not weights:
        raise ValueError(f"{what}_backbone, {what}_weights: LPIPS needs both files (the torchvision {net} "
                         f"ImageNet weights and LPIPS v0.1 {net}.pth; or ${LPIPS_BACKBONE_ENV}, ${LPIPS_WEIGHTS_ENV})")
    m = LPIPS(net)
    sd = load_state_dict_file(backbone, f"{what}_backbone")
    feats = {"net." + k: v for k, v in sd.items() if k.startswith("features.")}
    bb = {k: v for k, v in m.state_dict().items() if k.startswith("net.")}
    holder = nn.Module()                      # check the backbone keys alone against a module holding only them
    holder.net = m.net
    feats = _check_keys(holder, feats, f"{what}_backbone", backbone,
                        f"torchvision {'AlexNet' if net == 'alex' else 'VGG16'} weights (features.N.weight/bias)")
    lin = load_state_dict_file(weights, f"{what}_weights")
    lin_own = {k: v for k, v in m.state_dict().items() if k.startswith("lin")}
    holder = nn.Module()
    for k in range(len(m.net.channels)):
        holder.add_module(f"lin{k}", getattr(m, f"lin{k}"))
    lin = _check_keys(holder, lin, f"{what}_weights", weights, f"LPIPS v0.1 {net} linear layers (lin0..lin4)")
    assert set(bb) | set(lin_own) == set(m.state_dict())
    m.load_state_dict({**feats, **lin}, strict=True)
    return m.to(device).eval()
