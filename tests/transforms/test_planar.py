"""Planar-specific tests: the u-hat constraint, the log-space log-det at extremes and the true inverse."""
import math

import mpmath
import pyro.distributions as dist
import pytest
import torch
from torch.testing import assert_close

from pyro_nfvi.transforms import Planar, planar_uhat
from pyro_nfvi.transforms.planar import PLANAR_SHIFT, log_softplus, planar_log_det


def exact_log_det(a, wu):
    """``log|1 + (1 - tanh(a)^2) m(wu)|`` with ``m(wu) = softplus(wu + log(e-1)) - 1``, in 1200-digit arithmetic.

    (``m`` is ``-1 + exp(wu)`` for ``wu << 0`` and ``1 - tanh(a)^2`` is ``1 - a^2`` for tiny ``a``: both
    need more digits than ``|wu| / ln 10`` and ``2 |log10 a|``.)
    """
    with mpmath.workdps(1200):
        a, wu = mpmath.mpf(float(a)), mpmath.mpf(float(wu))
        m = mpmath.log1p(mpmath.exp(wu + mpmath.log(mpmath.e - 1))) - 1
        return float(mpmath.log(abs(1 + (1 - mpmath.tanh(a) ** 2) * m)))


def owned(dim, u, w, b, dtype=torch.float64):
    """A float64 Planar(dim) with raw parameters set to ``u, w, b``."""
    flow = Planar(dim).to(dtype)
    with torch.no_grad():
        flow.u.copy_(torch.as_tensor(u, dtype=dtype))
        flow.w.copy_(torch.as_tensor(w, dtype=dtype))
        flow.b.fill_(float(b))
    return flow


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_uhat_satisfies_the_invertibility_constraint(dim, scale):
    u, w = scale * torch.randn(2, 1000, dim, dtype=torch.float64)
    uhat, wu = planar_uhat(u, w)
    assert_close(wu, (w * u).sum(-1))
    wuhat = (w * uhat).sum(-1)
    # > -1 exactly where m(w.u) + 1 = softplus(w.u + log(e-1)) is representable next to 1
    assert (wuhat[wu > -30] > -1).all()
    assert (wuhat >= -1 - 1e-12 * (1 + (w.norm(dim=-1) * u.norm(dim=-1)))).all()
    assert_close(wuhat, torch.nn.functional.softplus(wu + PLANAR_SHIFT) - 1)
    # the correction is along w
    delta = uhat - u
    assert_close(delta, (delta * w).sum(-1, keepdim=True) / (w * w).sum(-1, keepdim=True) * w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uhat_at_extreme_raw_values(dtype):
    w = torch.tensor([[1e3, -1e3], [1e-3, 0.0], [1.0, 1.0], [1e3, 1e3], [-7.0, 3.0]], dtype=dtype)
    u = torch.tensor([[1e3, 1e3], [-1e3, 5.0], [-1e3, -1e3], [-1e3, 1e3], [1e3, -1e3]], dtype=dtype)
    uhat, wu = planar_uhat(u, w)
    wuhat = (w * uhat).sum(-1)
    assert torch.isfinite(uhat).all()
    # mathematically > -1; numerically it reaches -1 when m(w.u) underflows, which the log-det handles
    rounding = 4 * torch.finfo(dtype).eps * (1 + w.norm(dim=-1) * u.norm(dim=-1))  # of the dot product
    assert (wuhat >= -1 - rounding).all()
    ok = wu > -30
    assert (wuhat[ok] > -1).all()


def exact_uhat_and_grads(u, w):
    """``u-hat = u + (m(w.u) - w.u) w / |w|^2`` and ``d sum(u-hat) / d(u, w)`` in 60-digit arithmetic."""
    def uhat_sum(*uw):
        uu, ww = uw[: len(u)], uw[len(u):]
        a = mpmath.fsum(x * y for x, y in zip(uu, ww))
        m = mpmath.log1p(mpmath.exp(a + mpmath.log(mpmath.e - 1))) - 1
        n2 = mpmath.fsum(y * y for y in ww)
        return mpmath.fsum(x + (m - a) * y / n2 for x, y in zip(uu, ww))

    with mpmath.workdps(60):
        point = [mpmath.mpf(float(x)) for x in list(u) + list(w)]
        value = uhat_sum(*point)
        grads = [mpmath.diff(uhat_sum, point, tuple(int(i == j) for j in range(len(point)))) for i in range(len(point))]
    return float(value), [float(g) for g in grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize("w_scale", [-1e-30, -1e-7, 1e-12, 1e-5, 1e-3, -0.05, 0.9, 20.0])
def test_uhat_values_and_gradients_stay_accurate_as_w_shrinks(dtype, dim, w_scale):
    # a scalar w that changes sign (Sylvester's diagonal pairs) passes |w| -> 0: there
    # softplus(w.u + log(e-1)) - 1 cancels to nothing in float32, and (m - w.u) / |w| must not be
    # formed by a division (it gave u-hat = 0 and d u-hat / d w ~ 1e6 at w = 1e-7 in float32)
    gen = torch.Generator().manual_seed(dim)
    u = torch.randn(dim, generator=gen, dtype=torch.float64)
    direction = torch.randn(dim, generator=gen, dtype=torch.float64)
    w = w_scale * direction / direction.abs().max()
    value, grads = exact_uhat_and_grads(u.tolist(), w.tolist())
    u_t, w_t = u.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
    uhat, _ = planar_uhat(u_t, w_t)
    uhat.sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    scale = 1.0 + abs(value)
    assert abs(float(uhat.detach().sum()) - value) <= tol * scale
    got = torch.cat([u_t.grad, w_t.grad]).tolist()
    # d/dw is O(|u|^2) near w = 0 but O(1 / |w|) for large w.u; the float32 rounding of w.u enters too
    for g, exact in zip(got, grads):
        assert abs(g - exact) <= 30 * tol * (1.0 + abs(exact)), (got, grads)


def test_uhat_zero_u_and_zero_w():
    w = torch.randn(4, 3)
    uhat, wu = planar_uhat(torch.zeros(4, 3), w)
    assert torch.equal(uhat, torch.zeros(4, 3)) and torch.equal(wu, torch.zeros(4))
    u = torch.randn(4, 3)
    uhat, wu = planar_uhat(u, torch.zeros(4, 3))
    assert torch.equal(uhat, u) and torch.equal(wu, torch.zeros(4))


def test_zero_w_is_a_finite_translation():
    flow = owned(3, [0.5, -1.0, 2.0], [0.0, 0.0, 0.0], 0.7)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = flow(x)
    ladj = flow.log_abs_det_jacobian(x, y)
    assert_close(y, x + math.tanh(0.7) * torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    assert torch.equal(ladj, torch.zeros(5, dtype=torch.float64))
    assert_close(flow.inv(y.detach().clone()), x.detach())
    (y.sum() + ladj.sum()).backward()
    for name, p in flow.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert flow.w.grad.abs().sum() > 0  # w can move away from 0


@pytest.mark.parametrize("wu", [-2000.0, -745.0, -50.0, -5.0, -0.5, 0.0, 3.0, 40.0])
def test_log_det_equals_the_exact_value(wu):
    w = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)  # |w| = 1
    u = wu * w + torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)  # w.u = wu
    flow = owned(3, u, w, 0.3)
    alphas = torch.tensor([0.0, 1e-200, 1e-8, 1e-3, 0.5, -2.0, 10.0, -30.0, 400.0], dtype=torch.float64)
    x = (alphas - 0.3).unsqueeze(-1) * w  # w.x + b = alpha (up to rounding)
    y = flow(x)
    ladj = flow.log_abs_det_jacobian(x, y)
    assert torch.isfinite(ladj).all()
    a = ((x * flow.w).sum(-1) + flow.b).detach()  # the pre-activation exactly as the flow computes it
    for i in range(len(x)):
        expected = exact_log_det(a[i], wu)
        assert ladj[i].item() == pytest.approx(expected, rel=1e-9, abs=1e-9), (float(a[i]), expected)


def test_log_det_at_uw_minus_2000_and_zero_preactivation():
    w = torch.tensor([1.0, 2.0], dtype=torch.float64)
    flow = owned(2, -2000.0 * w / 5.0, w, 0.0)
    x = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    y = flow(x)
    ladj = flow.log_abs_det_jacobian(x, y)
    assert ladj.item() == pytest.approx(-2000.0 + PLANAR_SHIFT, rel=1e-12)
    assert ladj.item() == pytest.approx(exact_log_det(0.0, -2000.0), rel=1e-12)
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for name, p in flow.named_parameters():
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_planar_log_det_helpers_are_finite(dtype):
    a = torch.tensor([0.0, 1e-30, 1e-5, 1.0, -20.0, 1e3, -1e4], dtype=dtype, requires_grad=True)
    wu = torch.tensor([-2000.0, -100.0, -1.0, 0.0, 1.0, 1e3, -1e4], dtype=dtype, requires_grad=True)
    out = planar_log_det(a, wu)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(wu.grad).all()
    x = torch.tensor([-1e4, -30.0, -15.0, 0.0, 30.0], dtype=dtype)
    assert_close(log_softplus(x)[2:], torch.log(torch.nn.functional.softplus(x[2:])))
    assert_close(log_softplus(x)[:2], x[:2])


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_log_prob_on_arbitrary_values(dim):
    """Pyro's own Planar only scores cached samples (KeyError otherwise); this one inverts."""
    flow = owned(dim, 2.0 * torch.randn(dim), torch.randn(dim), 0.4)
    base = dist.Normal(torch.zeros(dim, dtype=torch.float64), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, [flow])
    values = 3.0 * torch.randn(50, dim, dtype=torch.float64)
    lp = q.log_prob(values)
    x = flow.inv(values.clone())
    assert_close(flow(x), values)
    assert_close(lp, base.log_prob(x) - flow.forward_and_log_det(x)[1])
    # numerical integral over a 1-d flow's density is 1
    if dim == 1:
        grid = torch.linspace(-40, 40, 200001, dtype=torch.float64).unsqueeze(-1)
        mass = torch.trapezoid(q.log_prob(grid).exp(), grid.squeeze(-1))
        assert mass.item() == pytest.approx(1.0, abs=1e-6)


def test_inverse_gradient_is_the_implicit_function_gradient():
    flow = Planar(3).double()
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    raw = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    b = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def inverse(y, u, w, b):
        x, ladj = flow._inverse(y, flow.constrain({"u": u, "w": w, "b": b}))
        return x, ladj

    assert torch.autograd.gradcheck(inverse, (y, 2 * raw[0].detach().requires_grad_(), raw[1], b))


def test_inverse_with_saturated_and_steep_parameters():
    # w.u-hat close to -1: the map is nearly flat along w, the inverse is ill-conditioned but exact
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    flow = owned(2, [-60.0, 1.0], w, 0.0)
    x = torch.tensor([[0.0, 0.0], [0.05, 1.0], [-3.0, 2.0], [40.0, -1.0]], dtype=torch.float64)
    y = flow(x)
    assert_close(flow(flow.inv(y.clone())), y, atol=1e-12, rtol=1e-12)
    # very steep: |w| = 1e3
    flow = owned(2, [5.0, 1.0], [1e3, -1e3], 2.0)
    x = torch.randn(100, 2, dtype=torch.float64)
    y = flow(x)
    assert_close(flow.inv(y.clone()), x, atol=1e-8, rtol=1e-8)


def test_amortized_planar_with_extreme_hypernet_outputs():
    flow = Planar(3, context_dim=2).double()
    with torch.no_grad():
        flow.hypernet.head.weight.normal_(0.0, 1e3)
    ctx = torch.randn(10, 2, dtype=torch.float64)
    t = flow.condition(ctx)
    p = t.bound
    rounding = 1e-12 * (1 + p["u"].norm(dim=-1) * p["w"].norm(dim=-1))
    assert ((p["u"] * p["w"]).sum(-1) >= -1 - rounding).all()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert_close(t(t.inv(y.clone())), y, atol=1e-9 * (1 + y.abs().max().item()), rtol=1e-9)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_float32_with_huge_w_times_u_matches_float64(sign):
    # |w| |u| = 1e39 overflows float32: w.u was inf, u-hat NaN, the output NaN and the log-det inf
    u, w, b = [sign * 1e20, 3.0, -1.0], [1e19, 2.0, 0.5], 0.3
    x = torch.randn(6, 3, dtype=torch.float64)
    y64, ld64 = owned(3, u, w, b).forward_and_log_det(x)
    y32, ld32 = owned(3, u, w, b, dtype=torch.float32).forward_and_log_det(x.float())
    assert torch.isfinite(y32).all() and torch.isfinite(ld32).all()
    assert_close(y32.double(), y64, rtol=1e-6, atol=1e-5)
    assert_close(ld32.double(), ld64, rtol=1e-5, atol=1e-5)
    uhat32, _ = planar_uhat(torch.tensor(u), torch.tensor(w))
    uhat64, _ = planar_uhat(torch.tensor(u, dtype=torch.float64), torch.tensor(w, dtype=torch.float64))
    assert_close(uhat32.double(), uhat64, rtol=1e-6, atol=1e-6)
