"""Frame metrics of Table 2 (mclcore.metrics.video): known answers, a direct reference implementation and the
previous (grouped conv2d) formulation of the SSIM filter."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mclcore.metrics.video import gaussian_window, mse, psnr, ssim, video_metrics

C1, C2 = 0.01 ** 2, 0.03 ** 2


def reference_ssim(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5) -> float:
    """Straightforward SSIM: for every valid window position and channel, Gaussian-weighted means, variances and
    covariance written out with explicit loops; mean over positions, then over channels. x, y: (C, H, W)."""
    r = np.arange(win) - (win - 1) / 2
    g1 = np.exp(-r ** 2 / (2 * sigma ** 2))
    w = np.outer(g1, g1)
    w /= w.sum()
    per_channel = []
    for c in range(x.shape[0]):
        vals = []
        for i in range(x.shape[1] - win + 1):
            for j in range(x.shape[2] - win + 1):
                a, b = x[c, i:i + win, j:j + win], y[c, i:i + win, j:j + win]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                vals.append((2 * ma * mb + C1) * (2 * cov + C2) / ((ma ** 2 + mb ** 2 + C1) * (va + vb + C2)))
        per_channel.append(np.mean(vals))
    return float(np.mean(per_channel))


def conv_ssim(pred: torch.Tensor, target: torch.Tensor, win: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The previous formulation of :func:`ssim` (slow: grouped float64 conv2d, one Gaussian pass per axis)."""
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    x, y = pred.reshape(-1, c, h, w).double(), target.reshape(-1, c, h, w).double()
    g = gaussian_window(win, sigma)
    kh, kw = g.view(1, 1, win, 1).expand(c, 1, win, 1), g.view(1, 1, 1, win).expand(c, 1, 1, win)

    def filt(t):
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mu_x ** 2, filt(y * y) - mu_y ** 2, filt(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + C1) * (2 * sxy + C2)) / ((mu_x ** 2 + mu_y ** 2 + C1) * (sxx + syy + C2))
    return s.mean(dim=(-2, -1)).mean(dim=-1).reshape(lead)


def test_identical_images_have_ssim_one_and_zero_mse():
    x = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(2, 3), atol=1e-6)
    assert torch.equal(mse(x, x), torch.zeros(2, 3))
    m = video_metrics(x, x)
    assert m["ssim"] == pytest.approx(1.0) and m["ssim_l"] == pytest.approx(1.0) and m["mse"] == 0.0


def test_constant_images_hand_computed():
    # constant a vs constant b: variances and covariance vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.2, 0.7
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert float(ssim(x, y)) == pytest.approx(expected, rel=1e-6)
    assert float(mse(x, y)) == pytest.approx((a - b) ** 2, rel=1e-6)
    assert float(psnr(x, y)) == pytest.approx(10 * math.log10(1 / (a - b) ** 2), rel=1e-5)


def test_matches_reference_implementation():
    rng = np.random.default_rng(3)
    x = rng.random((3, 16, 18))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    ours = float(ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None]))
    assert ours == pytest.approx(reference_ssim(x, y), abs=1e-10)
    assert 0.0 < ours < 0.99


@pytest.mark.parametrize("shape", [(50, 3, 64, 64), (2, 4, 1, 23, 11), (3, 17, 40)])
def test_banded_matmul_filter_matches_the_conv2d_formulation(shape):
    # 50 RGB 64x64 frames cross a CPU chunk boundary; also non-square, one channel, several leading dims, no batch
    g = torch.Generator().manual_seed(5)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours, prev = ssim(x, y), conv_ssim(x, y)
    assert ours.shape == prev.shape == shape[:-3] and ours.dtype == torch.float64
    torch.testing.assert_close(ours, prev, rtol=0, atol=1e-9)
    # float32 input: computed in float64 all the same, returned in float32
    torch.testing.assert_close(ssim(x.float(), y.float()), prev.float(), rtol=0, atol=1e-6)


def test_window_and_noise_monotonicity():
    g = gaussian_window()
    assert g.shape == (11,) and float(g.sum()) == pytest.approx(1.0) and int(g.argmax()) == 5
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    s = [float(ssim(x, (x + s * noise).clamp(0, 1))) for s in (0.01, 0.1, 0.3)]
    assert s[0] > s[1] > s[2]


def test_ssim_l_is_the_last_frame():
    gt = torch.rand(3, 4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    pred = gt.clone()
    pred[:, -1] = 0.5                        # only the last frame is wrong
    m = video_metrics(pred, gt)
    last = ssim(pred[:, -1], gt[:, -1]).mean()
    assert m["ssim_l"] == pytest.approx(float(last), rel=1e-6)
    assert m["ssim"] == pytest.approx((3 + float(last)) / 4, rel=1e-6)
    assert m["psnr"] == pytest.approx(float(psnr(pred, gt).mean()), rel=1e-6)


def test_bad_inputs_name_the_argument():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="target"):
        ssim(x, torch.rand(2, 3, 16, 15))
    with pytest.raises(ValueError, match="pred"):
        ssim(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))          # smaller than the 11x11 window
    with pytest.raises(ValueError, match="pred"):
        video_metrics(x, x)                                          # not (N, H, C, Hpx, Wpx)
