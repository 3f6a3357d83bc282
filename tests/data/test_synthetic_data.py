"""The synthetic GMD / LRD processes (mclcore.data.synthetic): shapes, seed control, where u acts."""
import math

import pytest
import torch

from mclcore.data.synthetic import derive_seed, make_dataset, make_gmd, make_lrd
from mclcore.models.generators import SmoothLeakyReLU



pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors: one intra-op thread (tests/conftest.py)

@pytest.fixture(scope="module")
def gmd():
    return make_gmd(3, 4, n=20_000, seed=7)


@pytest.fixture(scope="module")
def lrd():
    return make_lrd(3, 4, n=20_000, seed=7)


@pytest.mark.parametrize("process", ["gmd", "lrd"])
def test_shapes_and_split(process):
    d = make_dataset(process, 3, 5, n=500, seed=0)
    assert d.z.shape == (500, 3) and d.u.shape == (500, 16) and d.x.shape == (500, 64)
    assert d.x_clean.shape == d.x.shape and d.u_index.shape == (500,) and d.u_index.dtype == torch.int64
    assert d.alphabet.shape == (5, 16) and int(d.u_index.min()) >= 0 and int(d.u_index.max()) < 5
    assert torch.equal(d.u, d.alphabet[d.u_index])
    assert d.n_train == 400                                   # the paper's 80/20 split
    tr, te = d.split("train"), d.split("test")
    assert tr["x"].shape == (400, 64) and te["z"].shape == (100, 3)
    assert torch.equal(torch.cat([tr["x"], te["x"]]), d.x)
    assert make_dataset(process, 20, 2, n=100, seed=0).x.shape == (100, 80)  # width max(64, 4 dz)


@pytest.mark.parametrize("process", ["gmd", "lrd"])
def test_seed_control(process):
    a = make_dataset(process, 2, 3, n=300, seed=5)
    b = make_dataset(process, 2, 3, n=300, seed=5)
    c = make_dataset(process, 2, 3, n=300, seed=6)
    for k in ("z", "u", "u_index", "x", "alphabet", "prior_mean", "prior_std"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert not torch.equal(a.x, c.x) and not torch.equal(a.alphabet, c.alphabet) and not torch.equal(a.z, c.z)
    state = torch.get_rng_state()
    make_dataset(process, 2, 3, n=50, seed=1)
    assert torch.equal(state, torch.get_rng_state())           # the global RNG is never touched
    assert derive_seed(5, 1) != derive_seed(5, 2) != derive_seed(6, 1)


def test_noise_variance(gmd):
    r = (gmd.x - gmd.x_clean).double()
    assert abs(float(r.var()) - 0.01) < 0.0005                 # eps ~ N(0, 0.01 I): 1.28M draws
    assert torch.allclose(gmd.x_clean, gmd.generator(gmd.z, gmd.u), atol=1e-5)


def test_gmd_z_independent_of_u(gmd):
    # z ~ N(0, I) whatever the condition: per-condition means within 5 standard errors of 0, variances near 1.
    for n in range(4):
        zn = gmd.z[gmd.u_index == n].double()
        assert zn.shape[0] > 4000
        se = 1 / math.sqrt(zn.shape[0])
        assert zn.mean(0).abs().max() < 5 * se, n
        assert (zn.var(0) - 1).abs().max() < 0.1, n


def test_gmd_u_reshapes_the_generator(gmd):
    # Same z under two conditions: different observations (u acts on the mechanism, not on p(z)).
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    x0 = gmd.generator(z, gmd.alphabet[0].expand(64, -1))
    x1 = gmd.generator(z, gmd.alphabet[1].expand(64, -1))
    assert (x0 - x1).abs().mean() > 0.05


def test_lrd_prior_shifts_with_u(lrd):
    assert (lrd.prior_std >= 0.5).all() and (lrd.prior_std <= 3.0).all()
    assert (lrd.prior_mean.abs() <= 2.0).all()
    for n in range(4):
        zn = lrd.z[lrd.u_index == n].double()
        se = lrd.prior_std[n].double() / math.sqrt(zn.shape[0])
        assert ((zn.mean(0) - lrd.prior_mean[n]).abs() < 5 * se).all(), n
        assert torch.allclose(zn.std(0), lrd.prior_std[n].double(), rtol=0.05), n
    # The conditions really differ (p(z|u) shifts): spread of the per-condition means far above sampling error.
    means = torch.stack([lrd.z[lrd.u_index == n].mean(0) for n in range(4)])
    assert means.std(0).min() > 0.2


def test_lrd_mixing_ignores_u(lrd):
    z = lrd.z[:32]
    x0 = lrd.generator(z, lrd.alphabet[0].expand(32, -1))
    x1 = lrd.generator(z, lrd.alphabet[3].expand(32, -1))
    assert torch.equal(x0, x1)
    assert torch.allclose(lrd.x_clean[:32], x0, atol=1e-6)


def test_log_prior_matches_normal(lrd):
    z, u, idx = lrd.z[:50].double(), lrd.u[:50].double(), lrd.u_index[:50]
    ref = torch.distributions.Normal(lrd.prior_mean[idx].double(), lrd.prior_std[idx].double()).log_prob(z).sum(1)
    assert torch.allclose(lrd.log_prior(z, u), ref, atol=1e-9)


def test_smooth_mixing_option():
    d = make_gmd(2, 3, n=100, mixing="smooth_leaky", seed=0)
    assert any(isinstance(m, SmoothLeakyReLU) for m in d.generator.h)
    assert not any(isinstance(m, SmoothLeakyReLU) for m in make_gmd(2, 3, n=100, seed=0).generator.h)


@pytest.mark.parametrize("kwargs, name", [
    (dict(dz=0), "dz"), (dict(n_alphabet=0), "n_alphabet"), (dict(n=1), "n"), (dict(noise_var=-1.0), "noise_var"),
    (dict(test_frac=1.0), "test_frac"), (dict(mixing="relu"), "mixing"), (dict(seed=-1), "seed"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    args = dict(dz=2, n_alphabet=3, n=100, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        make_gmd(args.pop("dz"), args.pop("n_alphabet"), **args)


def test_bad_process_and_lrd_bounds():
    with pytest.raises(ValueError, match="process"):
        make_dataset("ica", 2, 3, n=100)
    with pytest.raises(ValueError, match="std_bounds"):
        make_lrd(2, 3, n=100, std_bounds=(3.0, 0.5))
    with pytest.raises(ValueError, match="mean_bound"):
        make_lrd(2, 3, n=100, mean_bound=float("nan"))


# Recorded from the code before the modulation axes and the orthonormal family existed (make_dataset(process, 3, 4,
# n=200, seed=11)): sha256 of the RNG-only tensors (z, u_index, alphabet, prior_mean, prior_std; platform-free) and
# sums of x (matmuls: equal to float rounding across BLAS builds). On the recording machine the full bytes of every
# tensor, x and x_clean included, were identical before and after.
_DEFAULT_DATA = {"gmd": ("b2b092a9809c5456", 1379.3115335786715, 7664.916106885299, [-0.126902, 1.100114, 0.474223]),
                 "lrd": ("f878d93ee912b343", 398.14160414773505, 10464.249908573809, [-0.651538, 0.106963, -0.910003])}


@pytest.mark.parametrize("process", ["gmd", "lrd"])
def test_default_axes_reproduce_the_old_data(process):
    import hashlib

    d = make_dataset(process, 3, 4, n=200, seed=11)
    h = hashlib.sha256()
    for k in ("z", "u_index", "alphabet", "prior_mean", "prior_std"):
        h.update(getattr(d, k).contiguous().numpy().tobytes())
    digest, total, abs_total, row0 = _DEFAULT_DATA[process]
    assert h.hexdigest()[:16] == digest
    assert float(d.x.double().sum()) == pytest.approx(total, rel=1e-6)
    assert float(d.x.double().abs().sum()) == pytest.approx(abs_total, rel=1e-6)
    assert d.x[0, :3].tolist() == pytest.approx(row0, abs=1e-5)
    explicit = make_dataset(process, 3, 4, n=200, seed=11, mixing="leaky_relu", modulation_range=1.0,
                            shift_scale=1.0)
    for k in ("z", "u", "u_index", "x", "x_clean", "alphabet", "prior_mean", "prior_std"):
        assert torch.equal(getattr(d, k), getattr(explicit, k)), k      # the documented defaults are today's


@torch.no_grad()
def test_orthonormal_mixing_changes_only_h():
    a = make_gmd(3, 4, n=300, seed=2)
    b = make_gmd(3, 4, n=300, seed=2, mixing="orthonormal")
    lins = [m for m in b.generator.h if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in lins] == [(64, 3), (64, 64), (64, 64)]
    for m in lins:
        w = m.weight.double()
        assert torch.allclose(w.T @ w, torch.eye(w.shape[1], dtype=torch.float64), atol=1e-5)
    assert not any(isinstance(m, SmoothLeakyReLU) for m in b.generator.h)          # leaky ReLU between layers
    for k in ("z", "u", "u_index", "alphabet"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    u = a.alphabet
    for fa, fb in zip(a.generator.film(u), b.generator.film(u)):
        assert torch.equal(fa, fb)                                                 # same m(u), b(u)
    assert not torch.equal(a.x, b.x)
    assert torch.allclose(b.x_clean, b.generator(b.z, b.u), atol=1e-5)


@torch.no_grad()
def test_modulation_range_and_shift_scale():
    base = make_gmd(3, 4, n=300, seed=2)
    scale0, shift0 = base.generator.film(base.alphabet)
    for r in (0.5, 2.0):
        d = make_gmd(3, 4, n=300, seed=2, modulation_range=r)
        scale, shift = d.generator.film(d.alphabet)
        assert torch.allclose(scale.log(), r * scale0.log(), atol=1e-5) and torch.equal(shift, shift0)
        assert float(scale.log().abs().max()) <= r + 1e-6
    d = make_gmd(3, 4, n=300, seed=2, shift_scale=3.0)
    assert torch.allclose(d.generator.film(d.alphabet)[1], 3 * shift0, atol=1e-5)
    flat = make_gmd(3, 4, n=300, seed=2, modulation_range=0.0, shift_scale=0.0)   # u has no effect at all
    assert torch.equal(flat.u_blind(), flat.z.double())
    assert torch.equal(flat.generator(flat.z, flat.alphabet[flat.u_index * 0]), flat.x_clean)
    lrd = make_dataset("lrd", 3, 4, n=300, seed=2, modulation_range=3.0, shift_scale=0.0)   # ignored by LRD
    assert torch.equal(lrd.x, make_dataset("lrd", 3, 4, n=300, seed=2).x)
    for name in ("modulation_range", "shift_scale"):
        with pytest.raises(ValueError, match=name):
            make_gmd(2, 3, n=100, **{name: -1.0})


@torch.no_grad()
def test_snr_and_u_blind(gmd, lrd):
    assert gmd.snr(0.01) == pytest.approx(float(gmd.x_clean.double().var(0).mean()) / 0.01)
    assert gmd.snr(0.0) == math.inf
    rows = slice(100, 200)
    scale, shift = gmd.generator.film(gmd.u[rows])
    assert torch.allclose(gmd.u_blind(rows), (gmd.z[rows] * scale + shift).double(), atol=1e-6)
    assert torch.equal(lrd.u_blind(rows), lrd.z[rows].double())                  # LRD: y = z
