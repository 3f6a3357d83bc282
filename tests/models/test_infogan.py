"""InfoGAN-CR (mclcore.models.infogan): shapes, the CR pairs, losses finite and reaching the right networks, the
representation, bad arguments."""
import pytest
import torch

from mclcore.models.infogan import InfoGANCR

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)


def make(**kw):
    torch.manual_seed(0)
    return InfoGANCR(code_dim=6, noise_dim=3, hidden=8, fc=16, q_hidden=8, **kw)


def test_shapes_and_representation():
    m = make()
    x = torch.rand(4, 3, 64, 64)
    assert m(x).shape == (4, 6)
    noise, codes = m.sample_latents(4, torch.Generator().manual_seed(0))
    assert noise.shape == (4, 3) and codes.shape == (4, 6) and codes.abs().max() <= 1
    img = m.render(noise, codes)
    assert img.shape == (4, 3, 64, 64) and 0 <= img.min() and img.max() <= 1
    m.eval()
    assert m.decode(codes).shape == (4, 3, 64, 64)


def test_cr_pairs_share_noise_and_exactly_the_labelled_code():
    m = make()
    (n1, c1), (n2, c2), label = m.sample_cr_pairs(64, torch.Generator().manual_seed(0))
    assert torch.equal(n1, n2)
    same = c1 == c2
    assert torch.equal(same, torch.nn.functional.one_hot(label, 6).bool())    # continuous draws never collide
    assert len(label.unique()) > 1


def test_losses_finite_and_each_reaches_its_network():
    m = make()
    g = torch.Generator().manual_seed(0)
    off = m.generator_losses(4, cr_on=False, generator=g)
    assert torch.isfinite(off["loss"]) and "cr" not in off
    on = m.generator_losses(4, cr_on=True, generator=torch.Generator().manual_seed(0))
    assert "cr" in on and torch.isfinite(on["cr"])
    # same seed: same samples; the CR term is the only difference
    torch.testing.assert_close(on["loss"].detach(), off["loss"].detach() + 2.0 * on["cr"])
    m.zero_grad()
    on["loss"].backward()
    assert m.generator.fc[0].weight.grad.abs().sum() > 0
    m.zero_grad()
    d = m.discriminator_loss(torch.rand(4, 3, 64, 64), off["fake"], off["codes"])
    d.backward()
    assert torch.isfinite(d) and m.discriminator.q_head[0].weight.grad.abs().sum() > 0
    assert m.generator.fc[0].weight.grad is None                      # the fakes come detached
    cr, acc = m.cr_loss(off["pair_a"], off["pair_b"], off["pair_label"])
    cr.backward()
    assert torch.isfinite(cr) and 0 <= acc <= 1 and m.cr_discriminator.net[-1].weight.grad.abs().sum() > 0


def test_info_term_is_the_gaussian_nll():
    m = make()
    q, c = torch.zeros(2, 6), torch.ones(2, 6)
    expected = 6 * (0.5 + 0.5 * torch.log(torch.tensor(2 * torch.pi)))
    torch.testing.assert_close(m.info_nll(q, c), expected)


def test_bad_arguments_are_value_errors():
    for kw, name in ((dict(code_dim=1), "code_dim"), (dict(noise_dim=-1), "noise_dim"), (dict(hidden=0), "hidden"),
                     (dict(info_weight=-0.1), "info_weight"), (dict(cr_weight=float("nan")), "cr_weight")):
        with pytest.raises(ValueError, match=name):
            InfoGANCR(**kw)
