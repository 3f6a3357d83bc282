"""DisDiff (mclcore.models.disdiff): the frozen U-Net split in halves, the gradient-field decoder, the losses and
what they train, the PCA representation, sampling, bad arguments."""
import pytest
import torch

from mclcore.models.autoencoder import VQAutoencoder
from mclcore.models.disdiff import DisDiff, GradientFieldDecoder, unet_down, unet_up

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)

UNET = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,), heads=2)


def make(N=5, d=4, **kw):
    torch.manual_seed(0)
    ae = VQAutoencoder(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, n_embed=64)
    return DisDiff(ae, num_concepts=N, concept_dim=d, encoder_hidden=8, encoder_fc=16, unet=UNET,
                   diffusion=dict(num_timesteps=100), **kw)


def perturb(module, std=0.1):
    # zero-initialised output convolutions (theirs too) would hide every path at initialisation
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def test_unet_halves_equal_the_unet():
    m = make()
    perturb(m.dpm)
    z, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 50, 99])
    h, hs, temb = unet_down(m.dpm, z, t, m.context(3))
    torch.testing.assert_close(unet_up(m.dpm, h, hs, temb, m.context(3)), m.dpm(z, t, m.context(3)))


def test_fields_shapes_and_one_field_per_concept():
    m = make()
    perturb(m.decoder)
    z, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 70])
    codes = torch.randn(2, 5, 4)
    eps0, g = m.fields(z, t, codes)
    assert eps0.shape == (2, 3, 16, 16) and g.shape == (2, 5, 3, 16, 16)
    codes2 = codes.clone()
    codes2[:, 1] += 1.0                                   # field k depends on concept k's code only
    _, g2 = m.fields(z, t, codes2)
    changed = (g - g2).abs().flatten(2).amax(-1).amax(0) > 0
    assert changed.tolist() == [False, True, False, False, False]
    assert not torch.equal(g[:, 0], g[:, 2])              # the concept-index embedding tells fields apart
    with pytest.raises(ValueError, match="codes"):
        m.decoder(*unet_down(m.dpm, z, t, m.context(2)), torch.randn(2, 4, 4))


def test_fields_start_at_zero_so_disdiff_starts_as_the_dpm():
    m = make()
    z, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 70])
    _, g = m.fields(z, t, torch.randn(2, 5, 4))
    assert g.abs().max() == 0


def test_losses_finite_and_train_only_decoder_and_encoder():
    m = make()
    perturb(m.decoder)
    perturb(m.concept_encoder)
    x = torch.rand(4, 3, 64, 64)
    out = m.losses(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["dis"] > 0 and 0 <= out["dis_acc"] <= 1
    out["loss"].backward()
    assert m.decoder.res[0].conv1.weight.grad.abs().sum() > 0
    assert m.decoder.part_latents.grad.abs().sum() > 0
    assert m.concept_encoder.fc[-1].weight.grad.abs().sum() > 0
    assert m.dpm.conv_in.weight.grad is None                      # frozen DPM: computed without a graph
    assert all(p.grad is None for p in m.first_stage.parameters())  # frozen first stage
    # the disentangling loss reaches the decoder but never the encoder (their frozen encoder copy)
    m.zero_grad()
    z0, codes = m.latents(x), m.codes(x)
    t, c = torch.tensor([10, 20, 30, 40]), torch.tensor([0, 1, 2, 3])
    z_t = m.diffusion.q_sample(z0, t, torch.randn_like(z0))
    eps0, g = m.fields(z_t, t, codes.detach())
    l_dis, _ = m.dis_loss(z_t, t, eps0, g[torch.arange(4), c], codes, c)
    l_dis.backward()
    assert m.decoder.res[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.concept_encoder.parameters())


def test_dis_weight_zero_is_the_diffusion_loss_alone():
    m = make(dis_weight=0.0)
    out = m.losses(torch.rand(2, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    assert "dis" not in out and torch.equal(out["loss"].detach(), out["diffusion"])


def test_pretrain_trains_the_dpm_and_same_seed_same_loss():
    m = make()
    x = torch.rand(2, 3, 64, 64)
    a = m.pretrain_losses(x, generator=torch.Generator().manual_seed(3))
    b = m.pretrain_losses(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["loss"], b["loss"])
    a["loss"].backward()
    assert m.dpm.out[-1].weight.grad.abs().sum() > 0 and m.null_context.grad is not None


def test_pca_representation_generation_and_reconstruction():
    m = make()
    perturb(m.concept_encoder, 0.3)
    x = torch.rand(16, 3, 64, 64)
    with pytest.raises(ValueError, match="PCA"):
        m.concepts(x)
    m.fit_pca(x, batch_size=5)
    s = m(x)
    assert s.shape == (16, 5)
    codes = m.codes(x)
    for k in range(5):                  # the projection on the top principal direction has the most variance
        centred = codes[:, k] - codes[:, k].mean(0)
        other = torch.randn(4)
        other = other / other.norm()
        assert s[:, k].var() >= (centred @ other).var() - 1e-6
    torch.testing.assert_close(s.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    imgs = m.generate(s[:2], num_steps=2, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 3, 64, 64) and 0 <= imgs.min() and imgs.max() <= 1
    rec = m.reconstruct(x[:2], num_steps=2, generator=torch.Generator().manual_seed(0))
    assert rec.shape == (2, 3, 64, 64)


def test_bad_arguments_are_value_errors():
    ae = VQAutoencoder(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, n_embed=16)
    for kw, name in ((dict(num_concepts=0), "num_concepts"), (dict(concept_dim=0), "concept_dim"),
                     (dict(dis_loss_type="KL"), "dis_loss_type"), (dict(dis_weight=-1.0), "dis_weight")):
        with pytest.raises(ValueError, match=name):
            DisDiff(ae, encoder_hidden=8, unet=UNET, **kw)
    dec = GradientFieldDecoder(30, 4, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,), heads=2)
    assert dec.concept_embeddings().shape == (30, 32)     # more concepts than half the time width still works
