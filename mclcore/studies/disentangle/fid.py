"""Generation-quality measures for Table 6 (paper App. F.2) without downloading anything.

Every value is stored under a key that says what it is, with a ``*_kind`` field, so a stand-in is never read as
the real metric (:data:`FID_KEYS`, :data:`LPIPS_KEYS`):

* **FID** (Heusel et al. 2017): Frechet distance between Gaussians fitted to feature vectors of real and generated
  images. The feature network comes from a *local file* (``eval.fid_weights``, ``--fid-weights FILE`` or
  ``$MCLCORE_FID_WEIGHTS``):

  - the standard FID weights, pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a state dict): the FID
    Inception-v3 of :mod:`mclcore.metrics.inception` (pool3, 2048-d, bilinear resize to 299): **real FID**, key
    ``fid``, ``fid_kind = "inception"``, comparable with published numbers;
  - a TorchScript module (``torch.jit.save``) mapping float images (N, 3, 64, 64) in [0, 1] to (N, D) features:
    key ``fid_user``, ``fid_kind = "user_network"``, labelled ``"FID (user network: FILE)"``; comparable with
    published numbers only if it *is* the standard network with the standard resizing;
  - otherwise the **stand-in** :class:`FeatureNet`, a small CNN trained here on the dataset itself to classify every
    ground-truth factor (seeded, cached on disk, shared by all runs on that dataset): key ``fid_standin``,
    ``fid_kind = "standin"``, labelled ``"FID stand-in (dataset-trained net)"``. These values are **not**
    comparable with Inception FIDs (different feature space and scale); they rank models on the same dataset.

  Sanity (tests/studies/test_fid_sanity.py, Shapes3D twin, 100 training steps): it ranks real held-out images
  < a lightly blurred copy < a heavily blurred copy < uniform noise (FID 12.8 / 15.3 / 57.0 / 1229.5; 2-core AMD
  EPYC dev VM, 2026-12-06). Between two failure modes it is not to be trusted: the dataset's mean image repeated
  scored 1754, *worse* than uniform noise (1229), which is how near-noise diffusion samples once scored better
  than a beta-VAE's blurry ones. Its values rank models that produce recognisable images, nothing more.

* **LPIPS column**, between an image and its reconstruction: with the user's AlexNet/VGG16 backbone file and the
  LPIPS v0.1 linear-layer file (``eval.lpips_backbone`` / ``eval.lpips_weights``, or ``$MCLCORE_LPIPS_BACKBONE`` /
  ``$MCLCORE_LPIPS_WEIGHTS``; net ``eval.lpips_net``) the **real LPIPS** of :mod:`mclcore.metrics.lpips`: key
  ``lpips``, ``lpips_kind = "lpips_v0.1_<net>"``. Otherwise the **stand-in** ``feature_distance``: the LPIPS formula
  without its learned channel weights (unit-normalise each layer's activations over channels, squared difference,
  mean over space, sum over layers) on the dataset-trained network: key ``lpips_proxy``, ``lpips_kind =
  "standin"``, labelled ``"fLPIPS stand-in (dataset-trained net, unweighted)"``.
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

__all__ = ["FeatureNet", "FeatureNetConfig", "frechet_distance", "frechet_distance_from_stats", "feature_stats",
           "feature_distance", "train_feature_net", "get_feature_net", "FeatureExtractor", "FID_KEYS", "LPIPS_KEYS",
           "STANDIN_FID_LABEL", "STANDIN_LPIPS_LABEL", "fid_of", "lpips_of"]

from mclcore.studies.disentangle.kinds import (FID_KEYS, LPIPS_KEYS, STANDIN_FID_LABEL,  # noqa: E402
                                               STANDIN_LPIPS_LABEL, fid_of, lpips_of)


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
    """``features(x)`` for FID and ``distance(x, y)`` for the LPIPS column, with labels and kinds.

    ``fid_kind``: ``"inception"`` (real FID), ``"user_network"`` or ``"standin"``; ``lpips``: a loaded
    :class:`mclcore.metrics.lpips.LPIPS` (real LPIPS) or None (the stand-in :func:`feature_distance` on
    ``layer_net``)."""

    def __init__(self, fid_net, layer_net: FeatureNet | None, fid_label: str, lpips_label: str, *,
                 fid_kind: str = "standin", lpips=None, feature_batch: int = 256):
        self.fid_net, self.layer_net = fid_net, layer_net
        self.fid_label, self.lpips_label = fid_label, lpips_label
        self.fid_kind, self.lpips = fid_kind, lpips
        self.lpips_kind = f"lpips_v0.1_{lpips.net_name}" if lpips is not None else "standin"
        self.feature_batch = feature_batch

    @property
    def fid_key(self) -> str:
        return FID_KEYS[self.fid_kind]

    @property
    def lpips_key(self) -> str:
        return LPIPS_KEYS["standin" if self.lpips is None else "lpips"]

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        outs = []
        bs = batch_size or self.feature_batch
        for i in range(0, len(x), bs):
            f = self.fid_net(x[i:i + bs])
            if f.ndim != 2:
                f = f.flatten(1)
            outs.append(f.double().cpu().numpy())
        return np.concatenate(outs)

    @torch.no_grad()
    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) LPIPS (real, when loaded) or the unweighted stand-in between image batches in [0, 1]."""
        if self.lpips is not None:
            return self.lpips(x, y)
        return feature_distance(self.layer_net, x, y)


def _is_torchscript(path: str) -> bool:
    """A ``torch.jit.save`` archive holds compiled code (``<name>/code/...``); a ``torch.save`` state dict not."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def _standin_net(dataset, dataset_key: str, cache_dir: str, cfg: FeatureNetConfig, device, progress) -> FeatureNet:
    key = hashlib.sha1(json.dumps([dataset_key, asdict(cfg)], sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = os.path.join(cache_dir, f"featnet-{dataset_key}-{key}.pt")
    net = FeatureNet(dataset.factor_sizes, cfg.widths, cfg.feature_dim)
    if os.path.exists(path):
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.to(device).eval()
    net = train_feature_net(dataset, cfg, device, progress)
    save_checkpoint(path, net.state_dict())                     # atomic: parallel runs share the cache
    return net


def check_weight_files(paths: dict, lpips_net: str = "alex") -> None:
    """Load every configured metric weight file once (``paths``: :func:`..evaluate.weight_paths`), so a wrong file
    is a one-line ValueError before training rather than after it."""
    if paths.get("fid_weights") and not _is_torchscript(paths["fid_weights"]):
        from mclcore.metrics.inception import load_fid_inception

        load_fid_inception(paths["fid_weights"], what="--fid-weights")
    if paths.get("lpips_backbone") or paths.get("lpips_weights"):
        from mclcore.metrics.lpips import load_lpips

        load_lpips(lpips_net, paths.get("lpips_backbone"), paths.get("lpips_weights"), what="eval.lpips")


def get_feature_net(dataset, dataset_key: str, cache_dir: str, cfg: FeatureNetConfig | None = None,
                    fid_weights: str | None = None, device="cpu", progress: bool = True, *,
                    lpips_net: str = "alex", lpips_backbone: str | None = None,
                    lpips_weights: str | None = None) -> FeatureExtractor:
    """The networks of the generation-quality columns; nothing is downloaded.

    FID: ``fid_weights`` is the standard FID Inception weights file (real FID) or a TorchScript feature network;
    without it the dataset-trained stand-in (loaded from ``cache_dir`` or trained once and cached, atomically
    written). LPIPS: real LPIPS v0.1 when both ``lpips_backbone`` and ``lpips_weights`` are given, else the
    stand-in on the dataset-trained network. The stand-in network is only built when a column needs it. One-line
    ValueError naming the option and the file when a file is missing or wrong."""
    cfg = cfg or FeatureNetConfig()
    standin = None

    def get_standin():
        nonlocal standin
        if standin is None:
            standin = _standin_net(dataset, dataset_key, cache_dir, cfg, device, progress)
        return standin

    lp = None
    if lpips_backbone or lpips_weights:
        from mclcore.metrics.lpips import load_lpips

        lp = load_lpips(lpips_net, lpips_backbone, lpips_weights, device, what="eval.lpips")
    lpips_label = f"LPIPS v0.1 ({lpips_net})" if lp is not None else STANDIN_LPIPS_LABEL
    layer_net = None if lp is not None else get_standin()
    if fid_weights:
        if not os.path.isfile(fid_weights):
            raise ValueError(f"--fid-weights: no such file {fid_weights!r}")
        if _is_torchscript(fid_weights):
            try:
                user = torch.jit.load(fid_weights, map_location=device).eval()
            except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
                raise ValueError(f"--fid-weights: {fid_weights!r} is not a loadable TorchScript module "
                                 f"({type(e).__name__})") from None
            return FeatureExtractor(user, layer_net, f"FID (user network: {os.path.basename(fid_weights)})",
                                    lpips_label, fid_kind="user_network", lpips=lp)
        from mclcore.metrics.inception import load_fid_inception

        net = load_fid_inception(fid_weights, device, what="--fid-weights")
        # 50 images a batch (pytorch-fid's default): the 299x299 activations of 256 would need ~10 GB
        return FeatureExtractor(net, layer_net, "FID (Inception-v3, pytorch-fid weights)", lpips_label,
                                fid_kind="inception", lpips=lp, feature_batch=50)
    return FeatureExtractor(get_standin(), layer_net, STANDIN_FID_LABEL, lpips_label, fid_kind="standin", lpips=lp)


def feature_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance_from_stats(mu1, s1, mu2, s2, eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau 1982), in float64.

    A ridge ``eps`` on both covariances (as pytorch-fid's fallback) keeps the root finite for rank-deficient S;
    applied everywhere, so identical statistics still give 0 (up to rounding). The trace of the root is taken as
    ``sum sqrt(eig(A S2 A))`` with ``A = S1^(1/2)`` (``A S2 A`` is similar to ``S1 S2`` and symmetric PSD): the same
    value as pytorch-fid's ``trace(scipy.linalg.sqrtm(S1 @ S2))`` (tested against it), from two symmetric
    eigendecompositions -- about 10x faster at D = 2048 than the general matrix root, and never complex."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mu1, s1, mu2, s2: expected (D,), (D, D) twice, got {mu1.shape}, {s1.shape}, "
                         f"{mu2.shape}, {s2.shape}")
    off = np.eye(s1.shape[0]) * eps
    s1, s2 = s1 + off, s2 + off
    w, v = linalg.eigh((s1 + s1.T) / 2)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T                           # S1^(1/2)
    lam = linalg.eigvalsh(a @ s2 @ a)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()                       # rounding can give -1e-17
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance(f_real: np.ndarray, f_fake: np.ndarray) -> float:
    """FID of two (N, D) feature arrays: :func:`frechet_distance_from_stats` of their means and covariances."""
    mu1, s1 = feature_stats(np.asarray(f_real, np.float64))
    mu2, s2 = feature_stats(np.asarray(f_fake, np.float64))
    return frechet_distance_from_stats(mu1, s1, mu2, s2)


@torch.no_grad()
def feature_distance(net: FeatureNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) LPIPS-style distance without learned weights between image batches in [0, 1] (see module doc)."""
    d = torch.zeros(x.shape[0], device=x.device)
    for a, b in zip(net.layers(x), net.layers(y)):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        d = d + (a - b).pow(2).sum(1).mean((1, 2))
    return d
