"""mclcore.losses.mmd: known answers of the unbiased squared MMD, stacking, kernels, priors, bad inputs."""
import math

import pytest
import torch

from mclcore.losses.mmd import kernel_matrix, mmd, sample_prior

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_same_law_is_near_zero_and_a_shift_is_positive(kernel):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 3, generator=g, dtype=torch.float64), torch.randn(500, 3, generator=g, dtype=torch.float64)
    same = mmd(x, y, kernel).item()
    shifted = mmd(x, y + 1.0, kernel).item()
    # n = 500: the estimator's standard deviation under P = Q is O(1/n) of the kernel scale; measured |same| < 2e-3
    assert abs(same) < 0.01 and shifted > 0.1 and shifted > 20 * abs(same)
    assert mmd(x, y + 2.0, kernel).item() > shifted                        # further apart, larger


def test_unbiased_in_expectation():
    # The exact MMD^2 of N(0, 1) and N(mu, 1) in 1-D under a Gaussian kernel of bandwidth s:
    #   E k(x, x') = s / sqrt(s^2 + 2) for both, E k(x, y) = s / sqrt(s^2 + 2) exp(-mu^2 / (2 (s^2 + 2)))
    s, mu = 1.0, 0.5
    base = s / math.sqrt(s * s + 2)
    exact = 2 * base * (1 - math.exp(-mu * mu / (2 * (s * s + 2))))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 5, 1, generator=g, dtype=torch.float64)          # 4000 independent pairs of 5-row samples
    y = torch.randn(4000, 5, 1, generator=g, dtype=torch.float64) + mu
    est = mmd(x, y, "rbf", bandwidths=(s,))
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - exact) < 4 * se                          # unbiased even at n = 5
    # the biased V-statistic (diagonal kept) is off by far more than the noise at n = 5
    kxx = kernel_matrix(x, x, bandwidths=(s,)).mean((-1, -2))
    kyy = kernel_matrix(y, y, bandwidths=(s,)).mean((-1, -2))
    kxy = kernel_matrix(x, y, bandwidths=(s,)).mean((-1, -2))
    assert (kxx + kyy - 2 * kxy).mean().item() - exact > 10 * se


def test_stacked_members_are_independent_and_symmetric():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, 4, generator=g, dtype=torch.float64)           # float64: the terms cancel to ~1e-2
    y = torch.randn(3, 30, 4, generator=g, dtype=torch.float64)
    for kernel in ("rbf", "imq"):
        st = mmd(x, y, kernel)
        assert st.shape == (3,)
        for m in range(3):
            assert st[m].item() == pytest.approx(mmd(x[m], y[m], kernel).item(), rel=1e-9, abs=1e-12)
            assert st[m].item() == pytest.approx(mmd(y[m], x[m], kernel).item(), rel=1e-9, abs=1e-12)
        k = kernel_matrix(x, y, kernel)
        torch.testing.assert_close(k, kernel_matrix(y, x, kernel).transpose(1, 2))
        assert k.shape == (3, 40, 30) and (k > 0).all()


def test_imq_constant_follows_the_dimension_and_prior_variance():
    a, b = torch.zeros(1, 2), torch.ones(1, 2)                              # d^2 = 2, dz = 2
    k = kernel_matrix(a, b, "imq", scales=(1.0,), sigma2=1.0).item()
    assert k == pytest.approx(4.0 / (4.0 + 2.0))                            # C = 2 dz sigma^2 = 4
    assert kernel_matrix(a, b, "imq", scales=(1.0,), sigma2=2.0).item() == pytest.approx(8.0 / 10.0)
    assert kernel_matrix(a, b, "rbf", bandwidths=(1.0, 2.0)).item() == pytest.approx(math.exp(-1) + math.exp(-0.25))


def test_gradient_pulls_samples_towards_the_prior():
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(200, 2, generator=g) + 3.0).requires_grad_(True)
    prior = sample_prior("gaussian", (200, 2), g)
    mmd(z, prior, "imq").backward()
    assert (z.grad.mean(0) > 0).all()                                      # descent moves z towards 0


@pytest.mark.parametrize("prior", ["gaussian", "laplace", "uniform"])
def test_priors_have_unit_variance_and_are_seeded(prior):
    a = sample_prior(prior, (20000, 2), torch.Generator().manual_seed(4))
    b = sample_prior(prior, (20000, 2), torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert a.mean().abs().item() < 0.03 and a.var().item() == pytest.approx(1.0, abs=0.05)
    kurt = ((a - a.mean()) ** 4).mean().item() / a.var().item() ** 2
    assert kurt == pytest.approx({"gaussian": 3.0, "laplace": 6.0, "uniform": 1.8}[prior], rel=0.15)


@pytest.mark.parametrize("call, match", [
    (lambda x: mmd(x, x, "cauchy"), "kernel"),
    (lambda x: mmd(x, x, "rbf", bandwidths=(1.0, -1.0)), "bandwidths"),
    (lambda x: mmd(x, x, "imq", scales=()), "scales"),
    (lambda x: mmd(x, x, "imq", sigma2=0.0), "sigma2"),
    (lambda x: mmd(x[:1], x), "rows"),
    (lambda x: mmd(x, x[:, :2]), "y"),
    (lambda x: mmd(x[None], x), "y"),
    (lambda x: mmd(x[0], x), "x"),
    (lambda x: mmd(x.long(), x), "x"),
    (lambda x: sample_prior("student", (2, 2)), "prior"),
])
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(5, 3))
