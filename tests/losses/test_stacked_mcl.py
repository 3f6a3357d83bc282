"""StackedMCL (M MCL regularisers with stacked parameters, one call of each native op) against the per-member MCL
modules it was stacked from: the same losses and gradients (float64 to 1e-12, float32 close)."""
import pytest
import torch

from mclcore.losses.mcl import MCL, StackedMCL
from mclcore.models.vae import StackedVAE

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(dtype, M=3, B=7, dz=3, du=4, multi_positive=True, **kw):
    vae = StackedVAE("mdvae", 6, du, dz, list(range(M)), hidden=8).to(dtype)
    mcls = []
    for m in range(M):
        torch.manual_seed(100 + m)
        mcls.append(MCL(dz, 6, du, critic_hidden=(9, 5), proj_dim=6, multi_positive=multi_positive, **kw).to(dtype))
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(M, B, dz, generator=gen, dtype=dtype).requires_grad_()
    u = torch.randint(0, 3, (M, B, 1), generator=gen).to(dtype).expand(M, B, du).contiguous()
    return vae, mcls, StackedMCL.from_members(mcls), z, u


@pytest.mark.parametrize("kw", [{}, dict(contrast="total"), dict(critic_input="x", clip=None),
                                dict(proj_layernorm=True, activation="tanh"), dict(multi_positive=False),
                                dict(create_graph=False)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stacked_mcl_equals_the_per_member_modules(kw, dtype):
    vae, mcls, stacked, z, u = _setup(dtype, **kw)
    M = z.shape[0]
    loss = stacked(vae.decode, z, u)
    assert loss.shape == (M,)
    ref = torch.stack([mcls[m](vae.decoder_member(m), z[m], u[m]) for m in range(M)])
    tol = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, ref, **tol)
    w = torch.tensor([0.3, 1.0, -2.0], dtype=dtype)
    params = [z, *vae.decoder.parameters()]
    g_st = torch.autograd.grad((w * loss).sum(), params + list(stacked.parameters()), allow_unused=True,
                               materialize_grads=True)
    g_ref = torch.autograd.grad((w * ref).sum(), params + [p for m in mcls for p in m.parameters()],
                                allow_unused=True, materialize_grads=True)
    for a, b in zip(g_st[:len(params)], g_ref[:len(params)]):       # the encoder sample and the decoder stack
        torch.testing.assert_close(a, b, **tol)
    per = len(list(mcls[0].parameters()))                            # MCL's parameters, member by member
    for j, a in enumerate(g_st[len(params):]):
        for m in range(M):
            torch.testing.assert_close(a[m], g_ref[len(params) + m * per + j], **tol)


def test_stacked_mcl_copies_the_members_and_checks_shapes():
    vae, mcls, stacked, z, u = _setup(torch.float64)
    for j, p in enumerate(stacked.parameters()):
        for m in range(3):
            assert torch.equal(p[m], list(mcls[m].parameters())[j])
    with pytest.raises(ValueError, match=r"z: expected shape \(3, 7"):
        stacked(vae.decode, z[:2], u[:2])
    with pytest.raises(ValueError, match="groups"):
        stacked(vae.decode, z, u, groups=torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="MLP critic"):
        StackedMCL.from_members([MCL(3, (3, 8, 8), 4, critic="image")])
