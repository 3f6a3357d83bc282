"""The offline FID and LPIPS stand-ins (mclcore.studies.disentangle.fid) rank image sets in the order any image
metric must: real held-out images < a lightly blurred copy < a heavily blurred copy < uniform noise.

The feature network is trained briefly on the Shapes3D twin (100 steps: ~20 s on the 2-core AMD EPYC dev VM,
2026-12); measured there: FID 12.8 / 15.3 / 57.0 / 1229.5 and fLPIPS 0 / 0.026 / 0.19 / 5.0.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mclcore.data import get_dataset, to_float_nchw
from mclcore.studies.disentangle import fid

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 3, H, W) images (reflect padding)."""
    k = int(2 * round(3 * sigma) + 1)
    ax = torch.arange(k, dtype=x.dtype) - k // 2
    g = torch.exp(-ax ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect"), g.view(1, 1, 1, k).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, k // 2, k // 2), mode="reflect"), g.view(1, 1, k, 1).repeat(3, 1, 1, 1),
                    groups=3)


def test_fid_and_lpips_stand_ins_rank_degradations_in_order():
    ds = get_dataset("shapes3d")
    net = fid.train_feature_net(ds, fid.FeatureNetConfig(steps=100), progress=False)
    ex = fid.FeatureExtractor(net, net, "FID", "fLPIPS")
    rng = np.random.default_rng(5)
    real = to_float_nchw(ds.observations_at(ds.sample_index(600, rng)))
    held = to_float_nchw(ds.observations_at(ds.sample_index(600, rng)))
    sets = [held, _blur(held, 1.0), _blur(held, 3.0), torch.rand(held.shape, generator=torch.Generator().manual_seed(0))]
    f_real = ex.features(real)
    fids = [fid.frechet_distance(f_real, ex.features(s)) for s in sets]
    lpips = [float(fid.feature_distance(net, held[:200], s[:200]).mean()) for s in sets]
    assert fids == sorted(fids) and len(set(fids)) == 4, fids
    assert lpips == sorted(lpips) and lpips[0] == 0 and len(set(lpips)) == 4, lpips
