"""Generation-quality measures for Table 6 (paper App. F.2) without downloading anything.

* **FID** (Heusel et al. 2017): Frechet distance between Gaussians fitted to feature vectors of real and generated
  images. The feature network comes from a *local file*:

  - ``--fid-weights FILE`` with a TorchScript module (``torch.jit.save``) mapping float images (N, 3, 64, 64) in
    [0, 1] to (N, D) features, e.g. an Inception-v3 pool3 network the user exported; its FID is labelled
    ``"FID (user network: FILE)"`` and is comparable with published numbers only if it *is* the standard Inception
    network with the standard resizing;
  - otherwise :class:`FeatureNet`, a small CNN trained here on the dataset itself to classify every ground-truth
    factor (seeded, cached on disk, shared by all runs on that dataset), labelled ``"FID (dataset-trained net)"``.
    These values are **not** comparable with Inception FIDs (different feature space and scale); they rank
    models on the same dataset.

  Sanity (tests/studies/test_fid_sanity.py, Shapes3D twin, 100 training steps): it ranks real held-out images
  < a lightly blurred copy < a heavily blurred copy < uniform noise (FID 12.8 / 15.3 / 57.0 / 1229.5; 2-core AMD
  EPYC dev VM, 2026-12-06). Between two failure modes it is not to be trusted: the dataset's mean image repeated
  scored 1754, *worse* than uniform noise (1229), which is how near-noise diffusion samples once scored better
  than a beta-VAE's blurry ones. Its values rank models that produce recognisable images, nothing more.

* **LPIPS column**: LPIPS needs learned AlexNet/VGG weights we do not have offline. We report
  ``feature_distance``, the LPIPS formula without its learned channel weights (unit-normalise each layer's
  activations over channels, squared difference, mean over space, sum over layers) on the same dataset-trained
  network, between an image and its reconstruction. Labelled ``"fLPIPS (dataset-trained net, unweighted)"``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mclcore._io import save_checkpoint

__all__ = ["FeatureNet", "FeatureNetConfig", "frechet_distance", "feature_stats", "feature_distance",
           "train_feature_net", "get_feature_net", "FeatureExtractor"]


@dataclass
class FeatureNetConfig:
    """Dataset-trained feature network (used only when no ``--fid-weights`` file is given)."""
    widths: tuple = (32, 64, 128, 128)   # four stride-2 conv stages, 64 -> 4
    feature_dim: int = 256               # FID feature size (penultimate layer)
    steps: int = 1500                    # Adam steps of factor classification
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0                        # fixed: every run on a dataset shares the same network


class FeatureNet(nn.Module):
    """CNN (B, 3, 64, 64) in [0, 1] -> features (B, feature_dim), with one classification head per factor."""

    def __init__(self, factor_sizes, widths=(32, 64, 128, 128), feature_dim: int = 256):
        super().__init__()
        self.stages = nn.ModuleList()
        c = 3
        for w in widths:
            self.stages.append(nn.Sequential(nn.Conv2d(c, w, 4, 2, 1), nn.GroupNorm(8, w), nn.ReLU()))
            c = w
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, feature_dim), nn.ReLU())
        self.classifiers = nn.ModuleList(nn.Linear(feature_dim, int(s)) for s in factor_sizes)

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations of the four conv stages (for :func:`feature_distance`)."""
        h, out = x * 2 - 1, []
        for st in self.stages:
            h = st(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x)[-1])

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self(x)
        return [c(f) for c in self.classifiers]


def train_feature_net(dataset, cfg: FeatureNetConfig, device="cpu", progress: bool = True) -> FeatureNet:
    """Train :class:`FeatureNet` to predict every factor class (cross-entropy summed over factors)."""
    from tqdm import tqdm

    from mclcore.data import to_float_nchw

    torch.manual_seed(cfg.seed)
    net = FeatureNet(dataset.factor_sizes, cfg.widths, cfg.feature_dim).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    bar = tqdm(range(cfg.steps), desc="feature net", disable=not progress, leave=False)
    for step in bar:
        factors, obs = dataset.sample(cfg.batch_size, np.random.default_rng([cfg.seed, 7, step]))
        x = to_float_nchw(obs).to(device)
        y = torch.as_tensor(factors, device=device)
        loss = sum(F.cross_entropy(lg, y[:, k]) for k, lg in enumerate(net.logits(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return net.eval()


class FeatureExtractor:
    """``features(x)`` for FID and ``layers(x)`` for the LPIPS proxy, plus human-readable labels."""

    def __init__(self, fid_net, layer_net: FeatureNet, fid_label: str, lpips_label: str):
        self.fid_net, self.layer_net = fid_net, layer_net
        self.fid_label, self.lpips_label = fid_label, lpips_label

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        outs = []
        for i in range(0, len(x), batch_size):
            f = self.fid_net(x[i:i + batch_size])
            if f.ndim != 2:
                f = f.flatten(1)
            outs.append(f.double().cpu().numpy())
        return np.concatenate(outs)


def get_feature_net(dataset, dataset_key: str, cache_dir: str, cfg: FeatureNetConfig | None = None,
                    fid_weights: str | None = None, device="cpu", progress: bool = True) -> FeatureExtractor:
    """The dataset-trained network (loaded from ``cache_dir`` or trained once and cached, atomically written) and,
    if ``fid_weights`` is given, the user's TorchScript network for FID. Nothing is downloaded."""
    cfg = cfg or FeatureNetConfig()
    key = hashlib.sha1(json.dumps([dataset_key, asdict(cfg)], sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = os.path.join(cache_dir, f"featnet-{dataset_key}-{key}.pt")
    net = FeatureNet(dataset.factor_sizes, cfg.widths, cfg.feature_dim)
    if os.path.exists(path):
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net = net.to(device).eval()
    else:
        net = train_feature_net(dataset, cfg, device, progress)
        save_checkpoint(path, net.state_dict())                     # atomic: parallel runs share the cache
    lpips_label = "fLPIPS (dataset-trained net, unweighted)"
    if fid_weights:
        if not os.path.isfile(fid_weights):
            raise FileNotFoundError(f"--fid-weights: no such file {fid_weights!r}")
        try:
            user = torch.jit.load(fid_weights, map_location=device).eval()
        except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
            raise ValueError(f"--fid-weights: {fid_weights!r} is not a TorchScript module mapping (N, 3, 64, 64) "
                             f"images in [0, 1] to (N, D) features ({e})") from e
        return FeatureExtractor(user, net, f"FID (user network: {os.path.basename(fid_weights)})", lpips_label)
    return FeatureExtractor(net, net, "FID (dataset-trained net)", lpips_label)


def feature_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(f_real: np.ndarray, f_fake: np.ndarray) -> float:
    """|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)) for (N, D) feature arrays."""
    from scipy import linalg

    mu1, s1 = feature_stats(np.asarray(f_real, np.float64))
    mu2, s2 = feature_stats(np.asarray(f_fake, np.float64))
    # A small ridge on both covariances (as pytorch-fid's fallback) keeps sqrtm finite for rank-deficient S;
    # applied everywhere, so identical feature sets still give 0.
    off = np.eye(s1.shape[0]) * 1e-6
    s1, s2 = s1 + off, s2 + off
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@torch.no_grad()
def feature_distance(net: FeatureNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) LPIPS-style distance without learned weights between image batches in [0, 1] (see module doc)."""
    d = torch.zeros(x.shape[0], device=x.device)
    for a, b in zip(net.layers(x), net.layers(y)):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        d = d + (a - b).pow(2).sum(1).mean((1, 2))
    return d
