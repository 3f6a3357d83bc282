"""EncDiff / MDDiff (mclcore.models.encdiff; paper App. D.4): shapes, tokens, losses, the MCL gradient path."""
import pytest
import torch

from mclcore.losses.mcl import ImageCritic, MCLConfig
from mclcore.models.autoencoder import VQAutoencoder
from mclcore.models.encdiff import ConceptTokenizer, EncDiff, Encoder4, MDDiff


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)

UNET = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(1, 2), heads=2)
MCL = MCLConfig(critic="image", critic_hidden=(16,), proj_dim=8)


def make(kind="mddiff", K=20):
    torch.manual_seed(0)
    ae = VQAutoencoder(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, n_embed=64,
                       u_dim=K * 16 if kind == "mddiff" else 0, u_channels=4)
    kw = dict(num_concepts=K, encoder_hidden=8, encoder_fc=16, unet=UNET, diffusion=dict(num_timesteps=100))
    return MDDiff(ae, mcl=MCL, **kw) if kind == "mddiff" else EncDiff(ae, **kw)


def test_encoder4_and_tokenizer_shapes():
    enc = Encoder4(20, hidden=8, fc=16)
    assert enc(torch.rand(3, 3, 64, 64)).shape == (3, 20)
    assert Encoder4()(torch.rand(1, 3, 64, 64)).shape == (1, 20)          # paper size (hidden 128)
    with pytest.raises(ValueError, match="64x64"):
        enc(torch.rand(1, 3, 32, 32))
    tok = ConceptTokenizer(20, (64, 128), 16)
    assert tok(torch.randn(3, 20)).shape == (3, 20, 16)
    with pytest.raises(ValueError, match="s:"):
        tok(torch.randn(3, 19))


def test_tokenizer_is_one_independent_mlp_per_scalar():
    tok = ConceptTokenizer(5, (4, 6), 3)
    s = torch.randn(2, 5)
    s2 = s.clone()
    s2[:, 2] += 1.0
    a, b = tok(s), tok(s2)
    changed = (a - b).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False, False, True, False, False]
    # token k equals a plain MLP with concept k's weights
    w, bb = tok.weights, tok.biases
    h = torch.nn.functional.elu(s[:, 3:4] @ w[0][3] + bb[0][3])
    h = torch.nn.functional.elu(h @ w[1][3] + bb[1][3])
    torch.testing.assert_close(a[:, 3], h @ w[2][3] + bb[2][3])


@pytest.mark.parametrize("kind", ["encdiff", "mddiff"])
def test_losses_sampling_and_first_stage_frozen(kind):
    m = make(kind)
    x = torch.rand(4, 3, 64, 64)
    out = m.losses(x, generator=torch.Generator().manual_seed(0))
    assert out["z0"].shape == (4, 3, 16, 16) and out["s"].shape == (4, 20) and out["tokens"].shape == (4, 20, 16)
    out["loss"].backward()
    assert m.unet.conv_in.weight.grad is not None and m.concept_encoder.fc[-1].weight.grad is not None
    assert m.first_stage.encoder.net[0].weight.grad is None                # frozen first stage encoder
    imgs = m.generate(m.concepts(x[:2]), num_steps=3, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 3, 64, 64) and imgs.min() >= 0 and imgs.max() <= 1


def test_mcl_gradient_reaches_the_u_conditioned_decoder():
    m = make("mddiff")
    x = torch.rand(6, 3, 64, 64)
    out = m.losses(x, generator=torch.Generator().manual_seed(0), lambda_mcl=1.0)
    assert "mcl" in out and torch.isfinite(out["mcl"])
    m.zero_grad()
    # only the MCL term (diffusion loss removed) so every gradient below comes from MCL
    (out["loss"] - out["diffusion"] - (out["loss"] - out["diffusion"]).detach() + 0).backward()
    fuse = m.first_stage.decoder.fuses[0]
    assert fuse.fuse.weight.grad is not None and fuse.fuse.weight.grad.abs().sum() > 0
    assert m.first_stage.decoder.conv_in.weight.grad.abs().sum() > 0      # z-path of g(z, u)
    # critic (create_graph=True): its x-path; the z-input is not contrasted by default (contrast="generator")
    assert m.mcl.critic.img[0].weight.grad.abs().sum() > 0
    assert m.mcl.critic.z_fc.weight.grad is None or m.mcl.critic.z_fc.weight.grad.abs().sum() == 0
    assert m.mcl.Pi_u.net[0].weight.grad.abs().sum() > 0
    assert m.concept_encoder.fc[-1].weight.grad.abs().sum() > 0           # through u = s
    assert m.unet.conv_in.weight.grad is None or m.unet.conv_in.weight.grad.abs().sum() == 0


def test_mcl_on_pred_x0_also_reaches_the_unet():
    m = make("mddiff")
    for p in m.unet.out.parameters():       # the zero-initialised output would block the path at init
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(4, 3, 64, 64)
    out = m.losses(x, generator=torch.Generator().manual_seed(0), lambda_mcl=1.0, mcl_z="pred_x0")
    m.zero_grad()
    torch.autograd.backward(out["loss"] - out["diffusion"])
    assert m.unet.conv_in.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mcl_z"):
        m.losses(x, lambda_mcl=1.0, mcl_z="noisy")


def test_mcl_pairing_independent_contrasts_another_images_z():
    """mcl_pairing="independent": row i's mechanism is taken at image i-1's latent with image i's code (the batch
    rolled by one), "paired" at its own; a batch of one image is refused."""
    m = make("mddiff")
    x = torch.rand(5, 3, 64, 64)
    seen = {}

    def spy(G, z, u, **kw):
        seen["z"], seen["u"] = z.detach(), u.detach()
        return z.sum() * 0 + 1.0

    m.mcl.forward = spy
    for pairing, shift in (("paired", 0), ("independent", 1)):
        out = m.losses(x, generator=torch.Generator().manual_seed(0), lambda_mcl=1.0, mcl_pairing=pairing)
        assert torch.equal(seen["z"], out["z0"].detach().roll(shift, 0)) and torch.equal(seen["u"], out["s"].detach())
    with pytest.raises(ValueError, match="mcl_pairing"):
        m.losses(x, lambda_mcl=1.0, mcl_pairing="shuffled")
    with pytest.raises(ValueError, match="mcl_pairing: 'independent' needs a batch of at least 2"):
        m.losses(x[:1], lambda_mcl=1.0, mcl_pairing="independent")


def test_recon_term_and_generator_signature():
    m = make("mddiff")
    x = torch.rand(2, 3, 64, 64)
    out = m.losses(x, generator=torch.Generator().manual_seed(0), lambda_recon=0.1)
    assert "recon" in out and "mcl" not in out
    torch.testing.assert_close(out["loss"].detach(), out["diffusion"] + 0.1 * out["recon"])
    assert m.generator(out["z0"], out["s"]).shape == (2, 3, 64, 64)


def test_mddiff_needs_a_u_decoder():
    ae = VQAutoencoder(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, n_embed=16)
    with pytest.raises(ValueError, match="first_stage"):
        MDDiff(ae, encoder_hidden=8, unet=UNET)


def test_mddiff_takes_a_typed_mcl_config():
    m = make("mddiff")
    assert isinstance(m.mcl.critic, ImageCritic) and m.mcl.Pi_g.net[-1].out_features == 8
    assert m.mcl.tau == 0.1 and m.mcl.clip == 10.0 and m.mcl.create_graph is True
    ae = lambda: VQAutoencoder(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, n_embed=16, u_dim=20 * 16, u_channels=4)
    kw = dict(encoder_hidden=8, encoder_fc=16, unet=UNET, diffusion=dict(num_timesteps=10))
    tuned = MDDiff(ae(), mcl=MCLConfig(critic="image", critic_hidden=(16,), proj_dim=8, tau=0.07, clip=0,
                                      create_graph=False), **kw)
    assert tuned.mcl.tau == 0.07 and tuned.mcl.clip is None and tuned.mcl.create_graph is False
    default = MDDiff(ae(), **kw)                                          # None: the image critic, paper defaults
    assert isinstance(default.mcl.critic, ImageCritic) and default.mcl.tau == 0.1
    with pytest.raises(TypeError, match="MCLConfig"):
        MDDiff(ae(), mcl=dict(tau=0.1), **kw)
    with pytest.raises(ValueError, match="mcl.tau"):
        MDDiff(ae(), mcl=MCLConfig(critic="image", tau=-1.0), **kw)
