"""mclcore.losses.CompContrast: the native-op path equals the torch.func path, and which generators take which."""
import pytest
import torch
import torch.nn as nn

from mclcore.losses import CompContrast, MLPDescription, comp_contrast_func, describe_mlp
from python import comp_contrast as ref

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py

F64 = torch.float64


def _grads(loss, params):
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


ACT_MODULES = [nn.Tanh(), nn.Sigmoid(), nn.GELU(), nn.SiLU(), nn.ReLU(), nn.LeakyReLU(0.1), nn.Softplus(beta=2.0)]


@pytest.mark.parametrize("act", ACT_MODULES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("normalize", ["none", "jacobian"])
def test_native_path_equals_torch_func_path(act, normalize):
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(4, 9), act, nn.Sequential(nn.Linear(9, 7), act), nn.Linear(7, 6)).double()
    z = torch.randn(5, 4, dtype=F64, requires_grad=True)
    native, func = CompContrast(normalize=normalize), CompContrast(normalize=normalize, native=False)
    assert native.uses_native(g) and not func.uses_native(g)
    params = [z, *g.parameters()]
    a, b = native(g, z), func(g, z)
    assert a.dim() == 0
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    for ga, gb in zip(_grads(a, params), _grads(b, params)):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-13)


def test_reductions_and_final_activation():
    torch.manual_seed(1)
    g = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 5), nn.Sigmoid()).double()
    z = torch.randn(6, 3, dtype=F64)
    desc = describe_mlp(g)
    assert desc.final_activation and list(desc.activations) == ["tanh", "sigmoid"]
    per = CompContrast(reduction="none")(g, z)
    assert per.shape == (6,)
    torch.testing.assert_close(per, comp_contrast_func(g, z), rtol=1e-10, atol=0)
    torch.testing.assert_close(CompContrast(reduction="sum")(g, z), per.sum())
    torch.testing.assert_close(CompContrast()(g, z), per.mean())
    want = ref.comp_contrast(z, [m.weight for m in g if isinstance(m, nn.Linear)],
                             [m.bias for m in g if isinstance(m, nn.Linear)], None, ["tanh", "sigmoid"],
                             final_activation=True)
    torch.testing.assert_close(per, want, rtol=1e-10, atol=0)


def test_mlp_description_with_in_bias_equals_concatenated_condition():
    # u concatenated to z enters the first layer as in_bias = u W_u^T: the contrast in z is the same.
    torch.manual_seed(2)
    dz, du = 3, 2
    first = nn.Linear(dz + du, 8).double()
    rest = nn.Sequential(nn.GELU(), nn.Linear(8, 6)).double()
    z, u = torch.randn(5, dz, dtype=F64, requires_grad=True), torch.randn(5, du, dtype=F64)
    desc = MLPDescription([first.weight[:, :dz], rest[1].weight], [first.bias, rest[1].bias], ["gelu"], [None])
    in_bias = u @ first.weight[:, dz:].T
    a = CompContrast(reduction="none")(desc, z, in_bias=in_bias)
    b = comp_contrast_func(lambda zz: rest(first(torch.cat([zz, u[:zz.shape[0]]], 1))), z[:1])  # one row: u[0]
    torch.testing.assert_close(a[:1], b, rtol=1e-10, atol=0)
    full = torch.func.vmap(lambda zb, ub: comp_contrast_func(lambda zz: rest(first(torch.cat([zz, ub[None]], 1))),
                                                             zb[None]))(z, u)
    torch.testing.assert_close(a, full[:, 0], rtol=1e-10, atol=0)
    params = [z, first.weight, first.bias, *rest.parameters()]
    for ga, gb in zip(_grads(a.sum(), params), _grads(full.sum(), params)):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-13)


class _NotAnMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, z):
        return torch.sin(self.lin(z)) * z.sum(1, keepdim=True)


@pytest.mark.parametrize("g", [
    nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Tanh()),                  # two activations in a row
    nn.Sequential(nn.Linear(3, 4), nn.GELU(approximate="tanh")),            # not the exact GELU
    nn.Sequential(nn.Linear(3, 4), nn.ELU()),                               # no such activation in the op
    nn.Sequential(nn.Tanh(), nn.Linear(3, 4)),                              # does not start with a linear layer
    _NotAnMLP(),
], ids=["two_acts", "gelu_tanh", "elu", "act_first", "custom"])
def test_other_generators_take_the_torch_func_path(g):
    g = g.double()
    loss = CompContrast()
    assert describe_mlp(g) is None and not loss.uses_native(g)
    z = torch.randn(4, 3, dtype=F64, requires_grad=True)
    value = loss(g, z)
    # the torch.func path against the literal pairwise definition
    J = torch.func.vmap(torch.func.jacrev(lambda zb: g(zb[None])[0]))(z)
    torch.testing.assert_close(value, ref.contrast_of_jacobian(J).mean(), rtol=1e-12, atol=0)
    value.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_linear_layers_in_a_row_and_identity_modules():
    g = nn.Sequential(nn.Linear(3, 5), nn.Identity(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 4)).double()
    desc = describe_mlp(g)
    assert list(desc.activations) == ["identity", "relu"] and not desc.final_activation
    z = torch.randn(6, 3, dtype=F64)
    torch.testing.assert_close(CompContrast()(g, z), CompContrast(native=False)(g, z), rtol=1e-10, atol=0)
    assert describe_mlp(nn.Linear(3, 2)).activations == []


def test_torch_func_path_is_differentiable_twice():
    g = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    z = torch.randn(2, 3, dtype=F64, requires_grad=True)
    (gz,) = torch.autograd.grad(comp_contrast_func(g, z).sum(), z, create_graph=True)
    (ggz,) = torch.autograd.grad(gz.sum(), z)
    assert torch.isfinite(ggz).all()


def test_bad_arguments():
    g = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="reduction"):
        CompContrast(reduction="max")
    with pytest.raises(ValueError, match="normalize"):
        CompContrast(normalize="l2")
    with pytest.raises(ValueError, match="in_bias: only supported for an MLP"):
        CompContrast()(_NotAnMLP(), torch.randn(2, 3), in_bias=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="z: expected a"):
        comp_contrast_func(g, torch.randn(3))
    with pytest.raises(ValueError, match="g: expected a callable"):
        comp_contrast_func(3, torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"in_bias: expected shape \(2, 4\)"):
        CompContrast()(g, torch.randn(2, 3), in_bias=torch.zeros(2, 5))
    with pytest.raises(TypeError, match="weights\\[0\\]: expected dtype torch.float64"):
        CompContrast()(g, torch.randn(2, 3, dtype=F64))
