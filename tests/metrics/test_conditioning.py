"""mclcore.metrics.conditioning: the conditioning gap of a denoiser (own code vs another image's, paired)."""
import numpy as np
import pytest
import torch

from mclcore.metrics.conditioning import conditioning_gap, derangement
from mclcore.models.diffusion import GaussianDiffusion


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_derangement_is_a_permutation_without_fixed_points(n):
    for seed in range(20):
        p = derangement(n, _gen(seed))
        assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()


def _oracle(diff):
    """Reads x0 from its context: with its own context it predicts the noise exactly."""
    def eps(x_t, t, c):
        a = diff.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
        s = diff.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - a * c) / s
    return eps


def test_code_blind_denoiser_has_zero_gap_and_oracle_a_positive_one_shrinking_with_t():
    diff = GaussianDiffusion(100)
    x0 = torch.randn(40, 2, 4, 4, generator=_gen(1))
    blind = conditioning_gap(lambda x_t, t, c: 0.5 * x_t, diff, x0, x0, buckets=5, generator=_gen(2))
    for row in blind["buckets"] + [blind["all"]]:
        assert row["gap"] == 0 and row["lo"] == 0 and row["hi"] == 0 and row["rel_gap"] == 0
    r = conditioning_gap(_oracle(diff), diff, x0, x0, buckets=5, generator=_gen(2))
    assert [b["t_lo"] for b in r["buckets"]] == [0, 20, 40, 60, 80] and r["buckets"][-1]["t_hi"] == 100
    own = np.array([b["own"] for b in r["buckets"]])
    gaps = np.array([b["gap"] for b in r["buckets"]])
    assert own.max() < 1e-8 and (gaps > 0).all() and r["all"]["lo"] > 0
    assert (np.diff(gaps) < 0).all()        # abar_t / (1 - abar_t) |x0_i - x0_j|^2 falls with t
    assert r["all"]["gap"] == pytest.approx(gaps.mean()) and r["all"]["rel_gap"] == pytest.approx(1.0, abs=1e-6)
    assert r["n"] == 40 and r["loss"] == "mse"


def test_reproducible_from_the_generator_and_batch_size_free():
    diff = GaussianDiffusion(50, loss="l1")
    x0 = torch.randn(13, 3, 2, 2, generator=_gen(3))
    a = conditioning_gap(_oracle(diff), diff, x0, x0, buckets=3, generator=_gen(4), batch_size=4)
    b = conditioning_gap(_oracle(diff), diff, x0, x0, buckets=3, generator=_gen(4), batch_size=128)
    assert a == b and a["loss"] == "l1"


def test_l1_loss_is_the_mean_absolute_error():
    diff = GaussianDiffusion(10, loss="l1")
    x0 = torch.zeros(4, 1, 2, 2)
    # predicts noise + 2 with its own context (zeros) and noise + 2 + c otherwise: own error |2| exactly
    r = conditioning_gap(lambda x_t, t, c: x_t / diff.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1) + 2 + c,
                         diff, x0, torch.zeros(4, 1, 2, 2), buckets=2, generator=_gen(0))
    assert r["all"]["own"] == pytest.approx(2.0) and r["all"]["gap"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kw, match", [
    (dict(context=torch.zeros(3, 2)), "context: expected 4 rows"),
    (dict(x0=torch.zeros(1, 2), context=torch.zeros(1, 2)), "at least 2"),
    (dict(buckets=0), "buckets"),
    (dict(buckets=11), "buckets"),
    (dict(batch_size=0), "batch_size"),
    (dict(eps_model=lambda x, t, c: x * float("nan")), "NaN"),
])
def test_bad_arguments_name_the_argument(kw, match):
    args = dict(eps_model=lambda x, t, c: x, diffusion=GaussianDiffusion(10), x0=torch.zeros(4, 2),
                context=torch.zeros(4, 2))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        conditioning_gap(args.pop("eps_model"), args.pop("diffusion"), args.pop("x0"), args.pop("context"), **args)


def test_given_counterfactual_contexts_replace_the_derangement():
    diff = GaussianDiffusion(20)
    x0 = torch.randn(6, 1, 2, 2, generator=_gen(5))
    same = conditioning_gap(_oracle(diff), diff, x0, x0, other_context=x0.clone(), buckets=2, generator=_gen(0))
    assert same["all"]["gap"] == pytest.approx(0.0, abs=1e-10)
    near = conditioning_gap(_oracle(diff), diff, x0, x0, other_context=x0 + 0.01, buckets=2, generator=_gen(0))
    far = conditioning_gap(_oracle(diff), diff, x0, x0, other_context=x0 + 0.1, buckets=2, generator=_gen(0))
    assert 0 < near["all"]["gap"] < far["all"]["gap"]
    with pytest.raises(ValueError, match="other_context: expected the shape"):
        conditioning_gap(_oracle(diff), diff, x0, x0, other_context=x0[:3])


def test_loss_override_reads_any_denoiser_on_one_scale():
    diff = GaussianDiffusion(10, loss="l1")
    x0 = torch.zeros(4, 1, 2, 2)
    eps = lambda x_t, t, c: x_t / diff.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1) + 2 + c  # noqa: E731
    own = {loss: conditioning_gap(eps, diff, x0, torch.zeros(4, 1, 2, 2), loss=loss, buckets=2,
                                  generator=_gen(0))["all"]["own"] for loss in ("l1", "mse", None)}
    assert own["l1"] == pytest.approx(2.0) and own["mse"] == pytest.approx(4.0) and own[None] == own["l1"]
    with pytest.raises(ValueError, match="loss: expected 'mse' or 'l1'"):
        conditioning_gap(eps, diff, x0, x0, loss="huber")
