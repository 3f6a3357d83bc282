"""The FID Inception-v3 in plain torch (no torchvision), loading the standard FID weights file.

FID values are comparable with published numbers only when the features come from *this* network: the
TensorFlow Inception graph of 2015-12-05 that the original FID code (Heusel et al. 2017, TTUR) uses, as ported by
pytorch-fid (mseitzer/pytorch-fid, ``src/pytorch_fid/inception.py``) to the weights file
``pt_inception-2015-12-05-6726825d.pth``. What that port does, and what this module reproduces (read from
pytorch-fid's ``inception.py`` and torchvision's ``torchvision/models/inception.py``; written here, not copied):

* the architecture is torchvision's ``Inception3`` built with ``num_classes=1008, aux_logits=False`` (the TF graph
  has 1008 classes and no auxiliary head in the file), so the state-dict keys are torchvision's:
  ``Conv2d_1a_3x3.conv.weight``, ``Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var}``, ...,
  ``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight`` (1008, 2048), ``fc.bias``. Every conv is
  ``BasicConv2d``: Conv2d without bias -> BatchNorm2d(eps=0.001) -> ReLU;
* blocks Mixed_5b/5c/5d (``FIDInceptionA``), Mixed_6b..6e (``FIDInceptionC``) and Mixed_7b (``FIDInceptionE_1``)
  average-pool their pool branch with ``count_include_pad=False`` (TensorFlow's average pool ignores the zero
  padding), unlike torchvision's blocks; Mixed_7c (``FIDInceptionE_2``) *max*-pools its pool branch (a quirk of
  the TF graph that the port keeps);
* the input, images in [0, 1], is resized to 299 x 299 with bilinear interpolation (``align_corners=False``)
  and mapped to [-1, 1] (``2 x - 1``); the features are the 2048-d output of the final adaptive average pool
  (pytorch-fid's block index 3, "pool3"); ``fc`` is in the file but unused for FID.

Parameter count (94 convs without bias, their BN weights and biases, fc): **23,850,960**, of which fc
(1008 x 2048 + 1008) is 2,065,392. Check: torchvision's Inception3 with 1000 classes and the auxiliary head has
27,161,264 = 23,850,960 - 2,065,392 + 2,049,000 (fc to 1000) + 3,326,696 (AuxLogits), the count torchvision's
model has. The state dict has 284 parameters and 188 running-statistics buffers, plus one ``num_batches_tracked`` per BatchNorm (94) when the file was saved with them:
:func:`load_fid_inception` accepts the file either way (the counters are unused in eval mode). The key/shape
table the tests check this module against is ``tests/metrics/data/fid_inception_keys.json``.

The weights are never downloaded: pass the file's path (``eval.fid_weights`` / ``--fid-weights`` of ``mcl train``,
or the ``MCLCORE_FID_WEIGHTS`` environment variable).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FIDInceptionV3", "load_fid_inception", "FID_WEIGHTS_ENV", "FID_WEIGHTS_FILE", "load_state_dict_file"]

FID_WEIGHTS_ENV = "MCLCORE_FID_WEIGHTS"
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"   # pytorch-fid's release asset (the standard file)


class BasicConv2d(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d(eps=1e-3) -> ReLU; submodule names ``conv``, ``bn`` as torchvision's."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3/1 average pool: the zero padding does not count in the mean (FID blocks A, C, E_1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a; the same in the FID graph and torchvision)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a; the same in the FID graph and torchvision)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """``pool="avg_tf"``: FIDInceptionE_1 (Mixed_7b); ``pool="max"``: FIDInceptionE_2 (Mixed_7c)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        h = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(h), self.branch3x3_2b(h)], 1)
        h = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(h), self.branch3x3dbl_3b(h)], 1)
        p = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.pool == "max" else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(p)], 1)


class FIDInceptionV3(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> pool3 features (N, 2048); see the module docstring.

    ``resize_input`` / ``normalize_input``: pytorch-fid's defaults (True): bilinear resize to 299 x 299, then
    ``2 x - 1``. Always in eval mode (BatchNorm uses the file's running statistics); no parameter requires grad.
    """

    def __init__(self, resize_input: bool = True, normalize_input: bool = True):
        super().__init__()
        self.resize_input, self.normalize_input = resize_input, normalize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, 32)
        self.Mixed_5c = FIDInceptionA(256, 64)
        self.Mixed_5d = FIDInceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, 128)
        self.Mixed_6c = FIDInceptionC(768, 160)
        self.Mixed_6d = FIDInceptionC(768, 160)
        self.Mixed_6e = FIDInceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, "avg_tf")
        self.Mixed_7c = FIDInceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)        # in the file; FID uses the pool3 features before it
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)            # FID features need the running statistics, never batch statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected (N, 3, H, W) images in [0, 1], got {tuple(x.shape)}")
        if self.resize_input:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        if self.normalize_input:
            x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                       # 147 -> 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)                       # 71 -> 35
        for m in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                  self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = m(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)                      # (N, 2048)


def load_state_dict_file(path: str, what: str) -> dict:
    """``torch.load`` of a state-dict file (tensors only, ``weights_only=True``) with one-line errors naming
    ``what`` (the option the path came from) and the file. Accepts ``{"state_dict": {...}}`` wrappers."""
    if not path or not os.path.isfile(path):
        raise ValueError(f"{what}: no such file {path!r}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised as one line naming the option and the file
        raise ValueError(f"{what}: {path!r} is not a PyTorch state-dict file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{what}: {path!r} does not hold a state dict (a mapping of names to tensors)")
    return sd


def _check_keys(module: nn.Module, sd: dict, what: str, path: str, expected: str) -> dict:
    """Strict key and shape agreement (``num_batches_tracked`` filled in when absent), as one-line errors."""
    own = module.state_dict()
    sd = dict(sd)
    for k, v in own.items():                   # BatchNorm counters: unused in eval mode, absent in older files
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v.clone()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"{what}: {path!r} is not {expected}: {len(missing)} key(s) missing (e.g. "
                         f"{missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{what}: {path!r} is not {expected}: {len(bad)} tensor(s) of the wrong shape, e.g. {k} "
                         f"{tuple(sd[k].shape)} (expected {tuple(own[k].shape)})")
    return sd


def load_fid_inception(path: str | None = None, device="cpu", what: str = "--fid-weights") -> FIDInceptionV3:
    """The FID Inception with the weights of ``path`` (default: ``$MCLCORE_FID_WEIGHTS``), loaded strictly.

    The file is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a state dict; any file with exactly its
    keys and shapes loads). ValueError, one line naming ``what`` and the file, when it is missing, not a state
    dict, or has other keys or shapes."""
    path = path or os.environ.get(FID_WEIGHTS_ENV)
    if not path:
        raise ValueError(f"{what}: no FID weights given (pass the path of {FID_WEIGHTS_FILE} or set "
                         f"${FID_WEIGHTS_ENV})")
    net = FIDInceptionV3()
    sd = _check_keys(net, load_state_dict_file(path, what), what, path,
                     f"the FID Inception weights ({FID_WEIGHTS_FILE})")
    net.load_state_dict(sd, strict=True)
    return net.to(device).eval()
