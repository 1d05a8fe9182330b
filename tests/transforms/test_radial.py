"""Family-specific tests of the radial flow: constraint, log-det, closed-form inverse, edge cases."""
import itertools
import math

import pyro.distributions as dist
import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_nfvi.transforms.planar import log_softplus
from pyro_nfvi.transforms.radial import Radial, radial_alpha, radial_beta, radial_log_det
from flowcheck import randomize as _randomize

EXTREME = [-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4]
EXTREME_PAIRS = list(itertools.product([-1e4, -20.0, 0.0, 20.0, 1e4], repeat=2))


def _set(module, z0=None, alpha_raw=None, beta_raw=None):
    with torch.no_grad():
        if z0 is not None:
            module.z0.copy_(z0)
        if alpha_raw is not None:
            module.alpha_raw.fill_(alpha_raw)
        if beta_raw is not None:
            module.beta_raw.fill_(beta_raw)
    return module


def _points(z0, n, dim, dtype):
    """Random points at several scales, plus z = z0, z = z0 + 1e-9 and |z| = 1e3.

    ``z0`` is ``(dim,)`` or, for per-row parameters, ``(n, dim)``.
    """
    x = torch.randn(n, dim, dtype=dtype) * torch.logspace(-2, 1, n, dtype=dtype).unsqueeze(-1)
    z0 = z0.expand(n, dim)
    x[0] = z0[0]
    x[1] = z0[1] + 1e-9
    x[2] = 1e3 * x[2] / x[2].norm()
    return x


def _jacobian_log_det(transform, x):
    """``log|det J|`` per row of ``x`` from autograd (parameters may have a batch matching ``x``)."""
    J = jacobian(lambda z: transform.forward_and_log_det(z)[0], x)
    n = x.shape[0]
    blocks = torch.stack([J[i, :, i, :] for i in range(n)])
    return torch.linalg.slogdet(blocks)[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radial_beta_bound_random_and_extreme(dtype):
    torch.manual_seed(0)
    a_raw = torch.cat([torch.tensor(EXTREME, dtype=dtype), 10 * torch.randn(50, dtype=dtype)])
    b_raw = torch.cat([torch.tensor(EXTREME, dtype=dtype), 10 * torch.randn(50, dtype=dtype)])
    a_raw, b_raw = torch.meshgrid(a_raw, b_raw, indexing="ij")
    alpha = radial_alpha(a_raw)
    beta = radial_beta(alpha, b_raw)
    assert alpha.dtype == beta.dtype == dtype
    assert bool((alpha > 0).all()) and bool(torch.isfinite(alpha).all())
    assert bool(torch.isfinite(beta).all())
    assert bool((beta >= -alpha).all())
    # identity point: beta_raw = log(expm1(alpha)) gives beta = 0
    alpha = radial_alpha(torch.linspace(-5, 5, 11, dtype=dtype))
    torch.testing.assert_close(radial_beta(alpha, torch.log(torch.expm1(alpha))), torch.zeros_like(alpha))


def test_init_is_identity_with_live_beta_gradient():
    torch.manual_seed(1)
    flow = Radial(3)
    x = torch.randn(20, 3)
    y, ld = flow.forward_and_log_det(x)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ld, torch.zeros(20), atol=1e-6, rtol=0)
    (y ** 2).sum().backward()
    assert flow.beta_raw.grad.abs() > 1e-3
    assert flow.z0.abs().max() > 0  # random centre: the beta gradient does not vanish by symmetry


@pytest.mark.parametrize("amortized", [False, True])
@pytest.mark.parametrize("dim", [1, 2, 3, 10])
def test_log_det_matches_jacobian_at_random_params(dim, amortized):
    torch.manual_seed(dim + 10 * amortized)
    n = 8
    if amortized:
        module = _randomize(Radial(dim, context_dim=4, hidden=(5,)).double(), 0.7)
        flow = module.condition(torch.randn(n, 4, dtype=torch.float64))
        z0 = flow.bound["z0"]
    else:
        module = _randomize(Radial(dim).double(), 1.5)
        flow, z0 = module, module.z0.detach()
    p = flow.bound if amortized else module.params()
    assert not torch.allclose(p["beta"], torch.zeros_like(p["beta"]))  # not the identity
    x = _points(z0.detach(), n, dim, torch.float64)
    y, ld = flow.forward_and_log_det(x)
    assert y.shape == x.shape and ld.shape == (n,)
    torch.testing.assert_close(ld, _jacobian_log_det(flow, x), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("alpha_raw,beta_raw", EXTREME_PAIRS)
def test_log_det_matches_jacobian_at_extreme_params(alpha_raw, beta_raw):
    torch.manual_seed(2)
    flow = _set(Radial(3).double(), alpha_raw=alpha_raw, beta_raw=beta_raw)
    x = _points(flow.z0.detach(), 6, 3, torch.float64)
    ld = flow.forward_and_log_det(x)[1]
    assert bool(torch.isfinite(ld).all())
    # the Jacobian at z = z0 is (s / alpha) I: compare with the exact value in log form (s may underflow)
    log_alpha = torch.log(radial_alpha(torch.tensor(alpha_raw, dtype=torch.float64)))
    log_s = log_softplus(torch.tensor(beta_raw, dtype=torch.float64))
    torch.testing.assert_close(ld[0], 3 * (log_s - log_alpha), atol=1e-9, rtol=1e-9)
    ref = _jacobian_log_det(flow, x)
    ok = torch.isfinite(ref)  # slogdet sees 0 where s underflows to 0 at z ~ z0
    assert ok[2:].all()
    # autograd differentiates the forward 1 + beta / (alpha + r), whose relative rounding error is
    # eps |beta| / (s + r): the reference is only that accurate (radial_log_det itself is not affected)
    p = flow.params()
    r = (x - flow.z0).norm(dim=-1)
    tol = 1e-9 + 10 * 3 * torch.finfo(torch.float64).eps * (p["beta"].abs() / (p["s"] + r))
    assert bool(((ld - ref).abs() <= tol * (1 + ref.abs()))[ok].all())


@pytest.mark.parametrize("alpha_raw,beta_raw", [(None, None)] + EXTREME_PAIRS)
def test_inverse_round_trip(alpha_raw, beta_raw):
    torch.manual_seed(3)
    flow = _randomize(Radial(3).double(), 1.5)
    _set(flow, alpha_raw=alpha_raw, beta_raw=beta_raw)
    x = _points(flow.z0.detach(), 10, 3, torch.float64)
    y, ld = flow.forward_and_log_det(x)
    x_back, ld_back = flow.inverse_and_log_det(y)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=1e-6)
    # the log-det returned by the inverse is the forward's at the returned point
    torch.testing.assert_close(ld_back, flow.forward_and_log_det(x_back)[1], atol=1e-6, rtol=1e-6)
    if alpha_raw is None:
        torch.testing.assert_close(ld_back, ld)


def test_inverse_is_differentiable_in_closed_form():
    torch.manual_seed(4)
    module = Radial(3).double()
    raw = {
        "z0": torch.randn(3, dtype=torch.float64, requires_grad=True),
        "alpha_raw": torch.tensor(0.3, dtype=torch.float64, requires_grad=True),
        "beta_raw": torch.tensor(-0.7, dtype=torch.float64, requires_grad=True),
    }
    y = (2 * torch.randn(5, 3, dtype=torch.float64)).requires_grad_(True)

    def inverse(y, z0, alpha_raw, beta_raw):
        return module.bind({"z0": z0, "alpha_raw": alpha_raw, "beta_raw": beta_raw}).inverse_and_log_det(y)

    assert torch.autograd.gradcheck(inverse, (y, raw["z0"], raw["alpha_raw"], raw["beta_raw"]))
    # and the inverse's gradient is that of the forward map's inverse: dx/dy = J(x)^{-1}
    x = inverse(y, *raw.values())[0].detach()
    J = jacobian(lambda z: module.bind(raw).forward_and_log_det(z)[0], x[0])
    J_inv = jacobian(lambda w: inverse(w, *raw.values())[0], y[0].detach())
    torch.testing.assert_close(J_inv @ J, torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha_raw,beta_raw", EXTREME_PAIRS)
def test_finite_values_and_gradients_at_centre_and_far(dtype, alpha_raw, beta_raw):
    torch.manual_seed(5)
    flow = _set(Radial(3).to(dtype), alpha_raw=alpha_raw, beta_raw=beta_raw)
    z0 = flow.z0.detach()
    x = torch.stack([z0, z0 + 1e-3, 1e3 * torch.ones(3, dtype=dtype) / math.sqrt(3), -1e3 * torch.ones(3, dtype=dtype)])
    x.requires_grad_(True)
    y, ld = flow.forward_and_log_det(x)
    x_back, ld_back = flow.inverse_and_log_det(y)
    (y.sum() + ld.sum() + x_back.sum() + ld_back.sum()).backward()
    for t in [y, ld, x_back, ld_back, x.grad] + [p.grad for p in flow.parameters()]:
        assert t.dtype == dtype
        assert bool(torch.isfinite(t).all())
    # z0 is the fixed point of the map
    torch.testing.assert_close(y[0], z0)


def test_gradient_at_centre_is_finite_and_correct():
    # at z = z0, f(z) = z0 + (s / alpha)(z - z0) + o(|z - z0|): dy/dz = (s / alpha) I
    flow = _set(Radial(2).double(), alpha_raw=0.2, beta_raw=1.1)
    x = flow.z0.detach().clone().requires_grad_(True)
    J = jacobian(lambda z: flow.forward_and_log_det(z)[0], x)
    p = flow.params()
    torch.testing.assert_close(J, (p["s"] / p["alpha"]).detach() * torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize("beta_raw", [1.5, -3.0])
def test_log_prob_on_fresh_values_is_a_normalised_density(beta_raw):
    flow = _set(Radial(1).double(), z0=torch.tensor([0.3]), alpha_raw=-0.5, beta_raw=beta_raw)
    base = dist.Normal(torch.zeros(1, dtype=torch.float64), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, [flow])
    grid = torch.linspace(-25.0, 25.0, 100001, dtype=torch.float64).unsqueeze(-1)
    log_q = q.log_prob(grid)  # values that were not sampled: goes through the true inverse
    assert bool(torch.isfinite(log_q).all())
    mass = torch.trapezoid(log_q.exp(), grid.squeeze(-1))
    assert abs(mass.item() - 1.0) < 1e-4
    # change of variables by hand
    x, ld = flow.inverse_and_log_det(grid)
    torch.testing.assert_close(log_q, base.log_prob(x) - ld)


def test_log_prob_cached_and_uncached_agree():
    torch.manual_seed(6)
    flow = _randomize(Radial(4), 1.0)
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(4), 1.0).to_event(1), [flow])
    y = q.rsample((50,))
    torch.testing.assert_close(q.log_prob(y), q.log_prob(y.clone()), atol=1e-4, rtol=1e-5)


def test_float64_module_under_float32_default_and_batch_shapes():
    assert torch.get_default_dtype() == torch.float32
    torch.manual_seed(7)
    flow = _randomize(Radial(5).double(), 1.0)
    for shape in [(), (7,), (6, 5), (3, 4, 5)]:
        x = torch.randn(shape + (5,), dtype=torch.float64)
        y, ld = flow.forward_and_log_det(x)
        assert y.dtype == ld.dtype == torch.float64
        assert y.shape == x.shape and ld.shape == shape
        x_back, ld_back = flow.inverse_and_log_det(y)
        torch.testing.assert_close(x_back, x)
        torch.testing.assert_close(ld_back, ld)


def test_amortized_params_broadcast_over_particles():
    torch.manual_seed(8)
    module = _randomize(Radial(3, context_dim=2).double(), 0.8)
    context = torch.randn(4, 2, dtype=torch.float64)
    conditioned = module.condition(context)
    assert conditioned.bound["z0"].shape == (4, 3) and conditioned.bound["alpha"].shape == (4,)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    y, ld = conditioned.forward_and_log_det(x)
    assert y.shape == (6, 4, 3) and ld.shape == (6, 4)
    for b in range(4):
        single = module.condition(context[b])
        y_b, ld_b = single.forward_and_log_det(x[:, b])
        torch.testing.assert_close(y[:, b], y_b)
        torch.testing.assert_close(ld[:, b], ld_b)
    torch.testing.assert_close(conditioned.inverse_and_log_det(y)[0], x)


def test_radial_log_det_stays_finite_when_s_underflows():
    r = torch.tensor([0.0, 1e-30, 1.0])
    log_s = torch.tensor(-1e4)  # s = softplus(-1e4) rounds to 0
    ld = radial_log_det(r, torch.tensor(2.0), torch.zeros(()), torch.log(torch.tensor(2.0)), log_s, 4)
    assert bool(torch.isfinite(ld).all())
    torch.testing.assert_close(ld[0], 4 * (log_s - math.log(2.0)))


def test_bad_input_names_the_shape():
    with pytest.raises(ValueError, match="event shape"):
        Radial(3)(torch.randn(4, 2))


@pytest.mark.parametrize("dim", [2, 10])
def test_float32_log_det_is_accurate_far_from_and_near_the_centre(dim):
    # log g and log q are taken of ratios of positive sums, so float32 keeps ulp-level accuracy even
    # where log(s + r) - log(alpha + r) would cancel (large r) or where g, q are tiny (s << alpha)
    torch.manual_seed(9)
    for beta_raw in [-8.0, 0.5, 3.0]:
        flow32 = _set(Radial(dim), z0=0.3 * torch.randn(dim), alpha_raw=0.4, beta_raw=beta_raw)
        flow64 = Radial(dim).double()
        flow64.load_state_dict({k: v.double() for k, v in flow32.state_dict().items()})
        direction = torch.randn(12, dim)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        x = flow32.z0.detach() + direction * torch.logspace(-4, 3, 12).unsqueeze(-1)
        ld32 = flow32.forward_and_log_det(x)[1].double()
        ld64 = flow64.forward_and_log_det(x.double())[1]
        assert bool(((ld32 - ld64).abs() <= 1e-6 + 1e-6 * ld64.abs()).all()), (ld32 - ld64).abs().max()


@pytest.mark.parametrize("where", ["nan input", "inf input", "nan centre"])
def test_non_finite_input_or_centre_gives_a_nan_log_det(where):
    # used to return log-det 0 (a plausible value) for [nan, 0, 0], [inf, 0, 0] or a NaN z0
    flow = Radial(3)
    x = torch.zeros(2, 3)
    if where == "nan centre":
        with torch.no_grad():
            flow.z0[0] = math.nan
    else:
        x[0, 0] = math.nan if where == "nan input" else math.inf
    y, ld = flow.forward_and_log_det(x)
    assert torch.isnan(ld[0])
    if where != "nan centre":
        assert torch.isfinite(ld[1]) and torch.isfinite(y[1]).all()  # the finite row is unaffected
    x_back, ld_inv = flow.inverse_and_log_det(x)
    assert torch.isnan(ld_inv[0])
