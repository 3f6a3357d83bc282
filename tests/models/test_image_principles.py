"""The four principle models on 64x64 images (mclcore.models.image_principles): shapes, finite differentiable losses,
and each model's distinctive term, at tiny widths (hidden 8, fc 16, K = 4, batch 4)."""
import pytest
import torch
import torch.nn.functional as F

from mclcore.losses.comp_contrast import contrast_of_jacobian
from mclcore.losses.mmd import mmd
from mclcore.models.image_principles import (IMAGE_PRINCIPLES, ImageCompVAE, ImageInterVAE, ImageMMDVAE, ImageQLAE,
                                             build_image_principle)
from mclcore.studies.disentangle.principle_config import PrincipleConfig

pytestmark = pytest.mark.usefixtures("one_thread")

K = 4


def make(kind, seed=0, **kw):
    torch.manual_seed(seed)
    cls = {"compvae": ImageCompVAE, "mmdvae": ImageMMDVAE, "qlae": ImageQLAE, "intervae": ImageInterVAE}[kind]
    return cls(K, 8, 16, **kw)


def images(b=4, seed=0):
    return torch.rand(b, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", IMAGE_PRINCIPLES)
def test_shapes_finite_losses_and_gradients(kind):
    m = make(kind)
    x = images()
    assert m(x).shape == (4, K)
    assert m.decode(m(x)).shape == (4, 3, 64, 64)
    assert m.sample_latents(5, gen(), "cpu").shape == (5, K)
    out = m.losses(x, generator=gen())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for part in (m.encoder, m.decoder):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    assert m.discriminator is None
    # the study builds the same class from its config section
    assert type(build_image_principle(kind, K, 8, 16, PrincipleConfig())) is type(m)


def test_compvae_adds_lambda_times_the_contrast_of_the_logits_jacobian():
    x = images()
    m0, m1 = make("compvae", comp_lambda=0.0), make("compvae", comp_lambda=0.5, comp_rows=2)
    m1.load_state_dict(m0.state_dict())
    a, b = m0.losses(x, generator=gen()), m1.losses(x, generator=gen())
    assert torch.equal(a["recon"], b["recon"]) and torch.equal(a["kl"], b["kl"])     # same draws
    assert b["comp"] > 0
    torch.testing.assert_close(b["loss"] - a["loss"], 0.5 * b["comp"], rtol=1e-5, atol=1e-3)
    # C is the compositional contrast of d logits / d z on the first comp_rows rows (brute-force Jacobian)
    z = b["z"][:2].detach()
    f = lambda r: m1.decoder(r[None]).reshape(-1)
    jac = torch.stack([torch.stack([torch.autograd.functional.jvp(f, z[i], torch.eye(K)[k])[1] for k in range(K)], 1)
                       for i in range(2)])                    # (2, 12288, K), column by column (double-vjp JVPs)
    torch.testing.assert_close(b["comp"], contrast_of_jacobian(jac).mean(), rtol=1e-4, atol=1e-6)
    # ... and its gradient reaches the decoder
    m1.zero_grad()
    m1.contrast(z).backward()
    assert m1.decoder.deconvs[0].weight.grad.abs().sum() > 0
    # pooling changes what C is taken of
    m2 = make("compvae", comp_lambda=0.5, comp_rows=2, comp_pool=4)
    m2.load_state_dict(m0.state_dict())
    assert not torch.allclose(m2.contrast(z), m1.contrast(z))


def test_mmdvae_has_no_kl_in_its_loss():
    x = images()
    m = make("mmdvae", mmd_weight=7.0)
    out = m.losses(x, generator=gen())
    assert out["kl"] > 0                                                    # reported, not in the loss
    torch.testing.assert_close(out["loss"], out["recon"] + 7.0 * out["mmd"])
    m0 = make("mmdvae", mmd_weight=0.0)
    m0.load_state_dict(m.state_dict())
    torch.testing.assert_close(m0.losses(x, generator=gen())["loss"], out["recon"])
    # the MMD is to N(0, I) samples drawn after eps from the same stream
    g = gen()
    mu, logvar = m.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
    torch.testing.assert_close(out["mmd"], mmd(z, torch.randn(z.shape, generator=g), "imq", scales=m.scales))


def test_qlae_codes_are_codebook_values_and_each_loss_moves_its_side():
    x = images()
    m = make("qlae", quant_weight=2.0, commit_weight=3.0)
    zc = m(x)
    zq = m.quantize(zc)
    for j in range(K):
        assert set(zq[:, j].tolist()) <= set(m.codebook[j].tolist())
        assert torch.equal((zc[:, j, None] - m.codebook[j]).abs().argmin(1),
                           (zq[:, j, None] == m.codebook[j]).float().argmax(1))
    out = m.losses(x)
    torch.testing.assert_close(out["z"], zq)                               # straight-through value = z_q
    torch.testing.assert_close(out["quant"], (zc - zq).pow(2).sum(1).mean())
    torch.testing.assert_close(out["loss"], out["recon"] + 2.0 * out["quant"] + 3.0 * out["commit"])
    # the codebook loss alone moves only the codebook; the commitment loss only the encoder
    m.zero_grad()
    zc = m.encoder(x)
    (m.quantize(zc) - zc.detach()).pow(2).sum().backward()
    assert m.codebook.grad.abs().sum() > 0 and all(p.grad is None for p in m.encoder.parameters())
    groups = m.param_groups()
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and groups[1]["params"] == [m.codebook]
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    s = m.sample_latents(50, gen(), "cpu")
    assert all(set(s[:, j].tolist()) <= set(m.codebook[j].tolist()) for j in range(K))
    torch.testing.assert_close(m.decode(zc), torch.sigmoid(m.decoder(m.quantize(zc))))


def test_intervae_head_at_a_zero_is_the_plain_decoder_path_and_interventions_cut_parents():
    x = images()
    m = make("intervae", inter_prob=1.0)
    z = torch.randn(4, K, generator=gen(3))
    torch.testing.assert_close(m.head(z), z)                                # A = 0, scale = shift = 0
    torch.testing.assert_close(m.decode(z), torch.sigmoid(m.decoder(z)))
    out = m.losses(x, generator=gen(), target=-1)
    mu, logvar = m.encode(x)
    g = gen()
    eps = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
    recon = F.binary_cross_entropy_with_logits(m.decoder(eps), x, reduction="none").flatten(1).sum(1).mean()
    torch.testing.assert_close(out["recon"], recon)
    torch.testing.assert_close(out["loss"], out["recon"] + out["kl"])
    with torch.no_grad():
        m.A.copy_(torch.randn(K, K, generator=gen(4)))
    c = m.head(z)
    Al = torch.tril(m.A, -1).detach()
    torch.testing.assert_close(c, z @ torch.linalg.inv(torch.eye(K) - Al).T)  # c = (I - A)^-1 eps, lower part only
    cut = m.head(z, target=2)
    torch.testing.assert_close(cut[:, 2], z[:, 2])                          # do(c_2): no parents
    torch.testing.assert_close(cut[:, :2], c[:, :2])                        # earlier concepts unchanged
    # training mode draws an intervention (inter_prob = 1); evaluation never intervenes
    m.train()
    assert m.losses(x, generator=gen())["intervened"] >= 0
    m.eval()
    assert m.losses(x, generator=gen())["intervened"] == -1
