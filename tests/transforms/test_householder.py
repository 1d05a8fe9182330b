"""Family-specific tests of the Householder flow: exact orthogonality, v = 0, chained amortization."""
import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_nfvi.transforms import flow
from pyro_nfvi.transforms.householder import Householder, householder_unit

V_KINDS = ["random", "zero", "tiny", "huge"]


def _v(kind, dim, dtype):
    if kind == "zero":
        return torch.zeros(dim, dtype=dtype)
    scale = {"random": 1.0, "tiny": 1e-20, "huge": 1e20}[kind]
    return scale * torch.randn(dim, dtype=dtype)


def _with_v(v):
    module = Householder(v.shape[-1]).to(v.dtype)
    with torch.no_grad():
        module.v.copy_(v)
    return module


def _jac(module, x):
    return jacobian(lambda z: module.forward_and_log_det(z)[0], x)


def test_volume_preserving_flag():
    assert Householder.volume_preserving is True
    assert Householder(3).volume_preserving


@pytest.mark.parametrize("kind", V_KINDS)
@pytest.mark.parametrize("dim", [1, 2, 3, 10])
def test_log_det_is_exact(dim, kind):
    torch.manual_seed(dim)
    module = _with_v(_v(kind, dim, torch.float64))
    x = torch.randn(4, dim, dtype=torch.float64)
    y, ld = module.forward_and_log_det(x)
    assert ld.shape == (4,) and bool((ld == 0).all())
    J = _jac(module, x[0])
    sign, logabsdet = torch.linalg.slogdet(J)
    assert abs(logabsdet.item()) < 1e-12
    # a reflection for v != 0 (det = -1, D >= 1), the identity at v = 0
    assert sign.item() == (1.0 if kind == "zero" else -1.0)
    torch.testing.assert_close(J @ J.T, torch.eye(dim, dtype=torch.float64), atol=1e-14, rtol=0)
    torch.testing.assert_close(y, x @ J.T)


@pytest.mark.parametrize("kind", ["random", "tiny", "huge"])
def test_exactly_orthogonal_in_float32_for_any_scale_of_v(kind):
    # |v|^2 would be subnormal (tiny) or inf (huge) in float32: the rescaled direction is not
    torch.manual_seed(0)
    module = _with_v(_v(kind, 6, torch.float32))
    x = torch.randn(200, 6)
    y = module(x)
    assert bool(torch.isfinite(y).all())
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=0, rtol=2e-6)
    J = _jac(module, x[0])
    torch.testing.assert_close(J @ J.T, torch.eye(6), atol=2e-6, rtol=0)
    assert torch.linalg.slogdet(J.double())[0].item() == -1.0


def test_reflection_geometry():
    torch.manual_seed(1)
    v = torch.randn(5, dtype=torch.float64)
    module = _with_v(v)
    y = module(v.clone())
    torch.testing.assert_close(y, -v)  # the normal is flipped
    w = torch.randn(5, dtype=torch.float64)
    w = w - (w @ v) / (v @ v) * v
    torch.testing.assert_close(module(w), w)  # the hyperplane is fixed
    # H depends only on the direction of v
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(_with_v(-3e5 * v)(x), module(x))


def test_zero_v_is_identity():
    x = torch.randn(3, 4)
    torch.testing.assert_close(_with_v(torch.zeros(4))(x), x, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", V_KINDS)
def test_inverse_round_trip(dtype, kind):
    torch.manual_seed(2)
    module = _with_v(_v(kind, 4, dtype))
    x = torch.randn(9, 4, dtype=dtype)
    y, ld = module.forward_and_log_det(x)
    x_back, ld_back = module.inverse_and_log_det(y)
    torch.testing.assert_close(x_back, x)
    assert bool((ld_back == 0).all())
    assert torch.equal(module.inv(module(x)), x)  # cached path


@pytest.mark.parametrize("kind", ["zero", "tiny"])
def test_gradients_at_zero_and_tiny_v_are_finite(kind):
    torch.manual_seed(3)
    module = _with_v(_v(kind, 4, torch.float32))
    x = torch.randn(5, 4, requires_grad=True)
    y, ld = module.forward_and_log_det(x)
    x_back = module.inverse_and_log_det(y)[0]
    (y ** 2 * torch.arange(4.0)).sum().add(x_back.sum()).backward()
    assert bool(torch.isfinite(module.v.grad).all()) and bool(torch.isfinite(x.grad).all())
    if kind == "zero":
        assert bool((module.v.grad == 0).all())  # identity, guarded: 0, not NaN


def test_gradients_match_finite_differences():
    torch.manual_seed(4)
    module = Householder(4).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v: module.bind({"v": v}).forward_and_log_det(x)[0], (x, v))
    # scale invariance: the gradient at c v is the gradient at v divided by c (also for tiny c)
    g = torch.autograd.grad(module.bind({"v": v}).forward_and_log_det(x)[0].pow(3).sum(), v)[0]
    v_small = (1e-12 * v).detach().requires_grad_(True)
    g_small = torch.autograd.grad(module.bind({"v": v_small}).forward_and_log_det(x)[0].pow(3).sum(), v_small)[0]
    torch.testing.assert_close(g_small * 1e-12, g)


def test_chained_amortized_stack():
    torch.manual_seed(5)
    stack = flow("householder", 4, 3, context_dim=5)
    assert [layer.chained for layer in stack] == [False, True, True]
    assert [layer.context_dim for layer in stack] == [5, 4, 4]
    assert stack.context_dim == 5
    with torch.no_grad():  # a data-dependent first reflection
        stack[0].hypernet.head.weight.normal_()
    context = torch.randn(8, 5)
    conditioned = stack.condition(context)
    x = torch.randn(8, 4)
    y, ld = conditioned.forward_and_log_det(x)
    assert y.shape == (8, 4) and ld.shape == (8,)
    assert bool(torch.isfinite(y).all()) and bool((ld == 0).all())
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(conditioned.inverse_and_log_det(y)[0], x, atol=1e-5, rtol=1e-5)
    # v_t = W_t v_{t-1}: every layer reflects about a different direction (no cancelling pairs)
    vs = [raw["v"] for raw in stack.raw_params(context)]
    for a in range(3):
        for b in range(a + 1, 3):
            cos = torch.nn.functional.cosine_similarity(vs[a], vs[b], dim=-1)
            assert bool((cos.abs() < 0.999).all())
    assert not torch.allclose(y, x, atol=1e-3)
    # gradients reach the data hypernet and every chained Linear
    (y * torch.randn(8, 4)).sum().backward()
    for layer in stack:
        assert layer.hypernet.head.weight.grad.abs().sum() > 0


def test_chained_layer_initialisation():
    torch.manual_seed(6)
    layer = Householder(5, context_dim=5, chained=True)
    W = layer.hypernet.head.weight.detach()
    torch.testing.assert_close(W @ W.T, torch.eye(5), atol=1e-5, rtol=0)  # |v_t| = |v_{t-1}|
    assert not torch.allclose(W, torch.eye(5), atol=0.1)  # not the cancelling identity start
    assert bool((layer.hypernet.head.bias == 0).all())
    assert len(layer.hypernet.trunk) == 0
    first = Householder(5, context_dim=3, hidden=(7,))
    assert bool((first.hypernet.head.weight == 0).all())  # hypernet starts at the init v


def test_chained_validation():
    with pytest.raises(ValueError, match="context_dim"):
        Householder(3, context_dim=4, chained=True)
    with pytest.raises(ValueError, match="context_dim"):
        Householder(3, chained=True)
    with pytest.raises(ValueError, match="hidden"):
        Householder(3, context_dim=3, chained=True, hidden=(8,))
    with pytest.raises(TypeError, match="chained"):
        Householder(3, context_dim=3, chained=1)
    with pytest.raises(ValueError, match="context"):
        Householder(3, context_dim=3).raw_params()


def test_float64_module_under_float32_default_and_batch_shapes():
    assert torch.get_default_dtype() == torch.float32
    torch.manual_seed(7)
    module = Householder(5).double()
    for shape in [(), (7,), (6, 5), (3, 4, 5)]:
        x = torch.randn(shape + (5,), dtype=torch.float64)
        y, ld = module.forward_and_log_det(x)
        assert y.dtype == ld.dtype == torch.float64
        assert y.shape == x.shape and ld.shape == shape
        torch.testing.assert_close(module.inverse_and_log_det(y)[0], x)


def test_per_sample_v_broadcasts_over_particles():
    torch.manual_seed(8)
    module = Householder(3).double()
    v = torch.randn(4, 3, dtype=torch.float64)
    v[1] = 0.0
    bound = module.bind({"v": v})
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    y, ld = bound.forward_and_log_det(x)
    assert y.shape == (6, 4, 3) and ld.shape == (6, 4)
    for b in range(4):
        torch.testing.assert_close(y[:, b], module.bind({"v": v[b]}).forward_and_log_det(x[:, b])[0])
    torch.testing.assert_close(y[:, 1], x[:, 1])
    # log-det shape follows the broadcast batch when v has more batch dimensions than x
    assert bound.forward_and_log_det(x[0, 0])[1].shape == (4,)


def test_householder_unit_scales():
    v = torch.tensor([[0.0, 0.0, 0.0], [1e-30, -2e-30, 0.0], [1e30, 0.0, 1e30]])
    u, c = householder_unit(v)
    assert bool(torch.isfinite(u).all()) and bool(torch.isfinite(c).all())
    torch.testing.assert_close(c.squeeze(-1) * (u * u).sum(-1), torch.tensor([0.0, 2.0, 2.0]))
