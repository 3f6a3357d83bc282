"""mech_derivs op vs the torch.func reference (python/mech_derivs.py), finite differences, and its contracts.

Relative errors are normwise per sample, ``max|V - V_ref| / max|V_ref|``, worst sample reported. Random MLPs come
from ``python.mech_derivs.sample_inputs``: semi-orthogonal layers so that J is well conditioned (cond < 1e3): the
reference differentiates logdet(J^T J) through autograd and itself loses digits on ill-conditioned J (seen: cond 4e5
-> reference m'' off by 1e4 while the op matched finite differences), so conditioning must not decide these tests.
"""
import copy
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mclcore.mechanism.derivatives import _fast_args
from mclcore.models.generators import GMDGenerator
from mclcore.ops.mech_derivs import DegenerateGeneratorWarning, SMOOTH_ACTIVATIONS, mech_derivs
from python import mech_derivs as ref
from python.mech_derivs import sample_inputs

F64 = torch.float64


def rel_err(a, b):
    return float(((a - b).abs().amax(dim=1) / b.abs().amax(dim=1).clamp_min(1e-300)).max())


def run_ref(z, ws, bs, **kw):
    return ref.mech_derivs(z, ws, bs, kw.get("in_bias"), kw.get("film_scale"), kw.get("film_shift"),
                           kw.get("activation", "tanh"), kw.get("act_param"), kw.get("final_activation", False),
                           batched=True)


SHAPES = {"square": (3, [7, 3]), "tall": (3, [6, 5, 8])}


@pytest.mark.parametrize("activation", SMOOTH_ACTIVATIONS)
@pytest.mark.parametrize("shape", ["square", "tall"])
def test_matches_reference_every_activation(activation, shape):
    dz, widths = SHAPES[shape]
    z, ws, bs, *_ = sample_inputs(4, dz, widths=widths, seed=1)
    for final in (False, True):
        V, L = mech_derivs(z, ws, bs, activation=activation, final_activation=final)
        Vr, Lr = run_ref(z, ws, bs, activation=activation, final_activation=final)
        assert V.shape == (4, 2 * dz) and L.shape == (4,) and V.dtype == F64
        assert rel_err(V, Vr) <= 1e-8, (final, rel_err(V, Vr))
        torch.testing.assert_close(L, Lr, rtol=1e-10, atol=1e-10)


def test_film_in_bias_and_mixed_activations_match_reference():
    inputs = sample_inputs(5, 4, widths=(9, 8, 10), conditioning="in_bias+film", activation=["gelu", "smooth_leaky"],
                           act_param=[None, 0.3], seed=3)
    V, L = mech_derivs(**inputs._asdict())
    Vr, Lr = ref.mech_derivs(*inputs, batched=True)
    assert rel_err(V, Vr) <= 1e-8
    torch.testing.assert_close(L, Lr, rtol=1e-10, atol=1e-10)


def _richardson(f, z, i, h):
    """Central difference in z_i, Richardson-extrapolated: error O(h^4) + O(eps / h)."""

    def d(step):
        e = torch.zeros_like(z)
        e[:, i] = step
        return (f(z + e) - f(z - e)) / (2 * step)

    return (4 * d(h / 2) - d(h)) / 3


@pytest.mark.parametrize("activation,shape", [("tanh", "tall"), ("softplus", "square"), ("silu", "tall"),
                                              ("gelu", "square"), ("sigmoid", "tall"), ("smooth_leaky", "tall")])
def test_matches_finite_differences(activation, shape):
    # m'_i against differences of the op's own L, m''_ii against differences of its m'_i: the three outputs must be
    # one consistent function (L itself is checked against slogdet below).
    dz, widths = SHAPES[shape]
    z, ws, bs, *_ = sample_inputs(3, dz, widths=widths, seed=5)
    V, L = mech_derivs(z, ws, bs, activation=activation)
    fd1 = torch.stack([_richardson(lambda t: mech_derivs(t, ws, bs, activation=activation)[1], z, i, 1e-3)
                       for i in range(dz)], dim=1)
    fd2 = torch.stack([_richardson(lambda t: mech_derivs(t, ws, bs, activation=activation)[0][:, i], z, i, 1e-3)
                       for i in range(dz)], dim=1)
    assert rel_err(V, torch.cat([fd1, fd2], dim=1)) <= 1e-8


def test_log_volume_is_half_logdet_of_jtj():
    z, ws, bs, *_ = sample_inputs(6, 4, widths=(12, 10), seed=7)
    _, L = mech_derivs(z, ws, bs, activation="tanh")
    for b in range(6):
        J = torch.func.jacrev(lambda t: ref.mlp(t, ws, bs, None, "tanh"))(z[b])
        assert abs(float(L[b]) - float(torch.linalg.svdvals(J).log().sum())) < 1e-12


@pytest.mark.parametrize("dz", [5, 10, 20])
def test_float32_vs_float64_on_synthetic_generator(dz):
    # The paper's App. D.3 sizes (width max(64, 4dz)) with the smooth activation; elementwise relative error.
    G = GMDGenerator(dz, n_alphabet=32, activation="smooth_leaky", seed=0)
    g = torch.Generator().manual_seed(dz)
    z = torch.randn(256, dz, generator=g)
    u = G.alphabet[torch.randint(32, (256,), generator=g)]
    with torch.no_grad():
        a32 = _fast_args(G, z, u, torch.float32)
        a64 = _fast_args(copy.deepcopy(G).double(), z.double(), u.double(), F64)
    V32, L32 = mech_derivs(z, **a32)
    V64, L64 = mech_derivs(z.double(), **a64)
    assert V32.dtype == torch.float32
    err = ((V32.double() - V64).abs() / V64.abs()).flatten()
    assert float(err.median()) <= 1e-5 and float(err.max()) <= 5e-3, (float(err.median()), float(err.max()))
    torch.testing.assert_close(L32.double(), L64, rtol=1e-5, atol=1e-4)


def _opcheck_args(dtype, with_optional, contiguous=True):
    """The raw op's arguments: z, weights, biases, in_bias, film_scale, film_shift, activations, act_params."""
    inputs = sample_inputs(4, 3, widths=(6, 5), conditioning="in_bias+film" if with_optional else "none",
                           dtype=dtype, seed=9, contiguous=contiguous)
    return (*inputs[:6], ["gelu"], [0.0])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("with_optional", [False, True])
def test_opcheck(dtype, with_optional):
    torch.library.opcheck(torch.ops.mclcore.mech_derivs.default, _opcheck_args(dtype, with_optional))


def test_opcheck_noncontiguous_inputs():
    args = _opcheck_args(F64, True, contiguous=False)  # the same values as _opcheck_args(F64, True)
    assert not args[0].is_contiguous() and not args[1][0].is_contiguous() and not args[2][0].is_contiguous()
    torch.library.opcheck(torch.ops.mclcore.mech_derivs.default, args)
    V, L = torch.ops.mclcore.mech_derivs(*args)
    V0, L0 = torch.ops.mclcore.mech_derivs(*_opcheck_args(F64, True))
    assert V.is_contiguous() and torch.equal(V, V0) and torch.equal(L, L0)


@pytest.mark.parametrize("B,dz,widths", [(1, 1, [1]), (2, 1, [5, 3]), (7, 7, [13, 7]), (33, 2, [3, 3, 3, 4]),
                                         (0, 3, [5, 4])])
def test_odd_sizes_match_reference(B, dz, widths):
    z, ws, bs, *_ = sample_inputs(B, dz, widths=widths, seed=11)
    final = len(widths) == 1  # a single layer needs its activation to be curved at all
    V, L = mech_derivs(z, ws, bs, activation="softplus", final_activation=final)
    assert V.shape == (B, 2 * dz) and L.shape == (B,)
    if B:
        Vr, Lr = run_ref(z, ws, bs, activation="softplus", final_activation=final)
        assert rel_err(V, Vr) <= 1e-8
        torch.testing.assert_close(L, Lr, rtol=1e-10, atol=1e-10)


def test_chunking_and_threads_do_not_change_results():
    # B large enough for several chunks per thread; every sample must equal its own single-sample evaluation.
    z, ws, bs, *_ = sample_inputs(300, 4, widths=(16, 12), seed=13)
    V, L = mech_derivs(z, ws, bs, activation="tanh")
    for b in (0, 77, 299):
        Vb, Lb = mech_derivs(z[b:b + 1], ws, bs, activation="tanh")
        torch.testing.assert_close(V[b:b + 1], Vb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(L[b:b + 1], Lb, rtol=1e-12, atol=1e-12)


@given(dz=st.integers(1, 4), extra=st.integers(0, 4), seed=st.integers(0, 10_000),
       activation=st.sampled_from(SMOOTH_ACTIVATIONS), film=st.booleans())
def test_property_latent_permutation(dz, extra, seed, activation, film):
    # Permuting the latent coordinates, consistently in z, the columns of W_0 and the FiLM scale and shift, permutes
    # both halves of V the same way and leaves the log-volume unchanged.
    z, ws, bs, _, sc, sh, *_ = sample_inputs(3, dz, widths=(dz + extra + 2, dz + extra),
                                             conditioning="film" if film else "none", seed=seed)
    perm = torch.randperm(dz, generator=torch.Generator().manual_seed(seed + 2))
    V, L = mech_derivs(z, ws, bs, film_scale=sc, film_shift=sh, activation=activation)
    wp = [ws[0][:, perm], *ws[1:]]
    Vp, Lp = mech_derivs(z[:, perm], wp, bs, film_scale=None if sc is None else sc[:, perm],
                         film_shift=None if sh is None else sh[:, perm], activation=activation)
    torch.testing.assert_close(Vp, torch.cat([V[:, :dz][:, perm], V[:, dz:][:, perm]], dim=1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(Lp, L, rtol=1e-10, atol=1e-10)


@given(dz=st.integers(1, 4), dx_extra=st.integers(0, 5), seed=st.integers(0, 10_000),
       activation=st.sampled_from(SMOOTH_ACTIVATIONS))
def test_property_output_rotation_invariance(dz, dx_extra, seed, activation):
    # x -> Q x + c with Q orthogonal leaves J^T J, hence L and V, unchanged.
    dx = dz + dx_extra
    z, ws, bs, *_ = sample_inputs(3, dz, widths=(dz + 3, dx), seed=seed)
    Q, _ = torch.linalg.qr(torch.randn(dx, dx, generator=torch.Generator().manual_seed(seed + 2), dtype=F64))
    V, L = mech_derivs(z, ws, bs, activation=activation)
    Vq, Lq = mech_derivs(z, [ws[0], Q @ ws[1]], [bs[0], Q @ bs[1] + 1.0], activation=activation)
    # rtol 1e-8, not 1e-9: an ill-conditioned draw (dz = 4, dx = 4, seed 3674, softplus; |V| up to 2e5) differs by
    # 3.7e-9 relative in float64, rounding amplified by the conditioning (CI, 2026-12-06); a wrong formula is O(1)
    torch.testing.assert_close(Vq, V, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(Lq, L, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "identity"])
def test_piecewise_linear_generator_is_reported_degenerate(activation):
    z, ws, bs, *_ = sample_inputs(5, 3, widths=(8, 6), seed=15, data_seed=15)
    bs[0] = bs[0].abs() + 2.0  # keep the ReLU units active, so J has full rank and L is finite
    with pytest.warns(DegenerateGeneratorWarning, match="piecewise linear"):
        V, L = mech_derivs(z, ws, bs, activation=activation)
    assert torch.equal(V, torch.zeros_like(V)) and torch.isfinite(L).all()
    _, Lr = run_ref(z, ws, bs, activation=activation)
    torch.testing.assert_close(L, Lr, rtol=1e-10, atol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mech_derivs(z, ws, bs, activation=activation, warn_degenerate=False)
        mech_derivs(z, ws, bs, activation=["relu", "tanh"], final_activation=True)  # partly smooth: no warning


def test_rank_deficient_jacobian_gives_nan_and_minus_inf():
    z, ws, bs, *_ = sample_inputs(2, 3, widths=(8, 6), seed=16, data_seed=16)
    ws[0] = ws[0].clone()
    ws[0][:, 2] = ws[0][:, 1]  # two latents enter identically: rank J = 2 < 3 everywhere
    V, L = mech_derivs(z, ws, bs, activation="tanh")
    assert torch.isnan(V).all() and torch.isneginf(L).all()


def test_gradient_request_raises():
    z, ws, bs, *_ = sample_inputs(2, 3, widths=(8, 6), seed=17, data_seed=17, requires_grad=True)
    V, L = mech_derivs(z, ws, bs, activation="tanh")
    assert V.requires_grad
    with pytest.raises(RuntimeError, match="not differentiable"):
        (V.sum() + L.sum()).backward()


from tests.ops._mlp_cases import bad as _bad, layers as _layers  # noqa: E402


@pytest.mark.parametrize("kw,err,match", [
    (_bad(z=torch.randn(4, 3, 1, dtype=F64)), ValueError, r"z: expected a 2-D"),
    (_bad(z=torch.randn(4, 3, dtype=torch.float16)), TypeError, r"z: expected float32 or float64"),
    (_bad(z=torch.randn(4, 2, dtype=F64)), ValueError, r"weights\[0\]: expected 2 input features"),
    (_bad(weights=_layers((8, 2))[0], biases=_layers((8, 2))[1]), ValueError, r"dx = 2 < dz"),
    (_bad(biases=_layers((8, 6))[1][:1]), ValueError, r"biases: expected 2 entries"),
    (_bad(biases=[torch.zeros(8, dtype=F64), torch.zeros(5, dtype=F64)]), ValueError, r"biases\[1\]: expected shape"),
    (_bad(weights=[w.float() for w in _layers((8, 6))[0]]), TypeError, r"weights\[0\]: expected dtype"),
    (_bad(activation="swish"), ValueError, r"activation: expected one of"),
    (_bad(activation=["tanh", "tanh"]), ValueError, r"activation: expected one entry per activation \(1\)"),
    (_bad(activation="softplus", act_param=-1.0), ValueError, r"softplus beta"),
    (_bad(in_bias=torch.zeros(4, 6, dtype=F64)), ValueError, r"in_bias: expected shape \(4, 8\)"),
    (_bad(film_scale=torch.ones(3, 3, dtype=F64)), ValueError, r"film_scale: expected shape \(4, 3\)"),
    (_bad(film_shift=torch.ones(4, 3)), TypeError, r"film_shift: expected dtype torch.float64"),
    (_bad(z=torch.full((4, 3), float("nan"), dtype=F64)), ValueError, r"z: contains NaN"),
])
def test_bad_inputs_raise_clear_errors(kw, err, match):
    with pytest.raises(err, match=match):
        mech_derivs(**kw)


def test_raw_op_checks_its_arguments():
    ws, bs = _layers((8, 6), seed=19)
    z = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(RuntimeError, match="activations: expected tanh"):
        torch.ops.mclcore.mech_derivs(z, ws, bs, None, None, None, ["nope"], [0.0])
    with pytest.raises(RuntimeError, match="act_params: expected 1"):
        torch.ops.mclcore.mech_derivs(z, ws, bs, None, None, None, ["tanh"], [])
    with pytest.raises(RuntimeError, match="dx = 2 < dz = 3"):
        torch.ops.mclcore.mech_derivs(z, [ws[0], ws[1][:2]], [bs[0], bs[1][:2]], None, None, None, ["tanh"], [0.0])
