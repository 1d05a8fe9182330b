"""Family-specific tests of the inverse autoregressive flow (pyro_nfvi.transforms.iaf)."""
import math
import warnings

import pytest
import torch
from flowcheck import F64, bound, check_float64_under_float32, perturb

from pyro_nfvi.transforms import IAF, flow





def make(dim, context_dim, stable, scale=0.3, seed=0):
    torch.manual_seed(seed)
    return perturb(IAF(dim, context_dim=context_dim, stable=stable).double(), scale)


@pytest.mark.parametrize("stable", [False, True], ids=["affine", "gated"])
@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("dim", [1, 2, 3, 10])
def test_log_det_matches_jacobian_at_random_parameters(dim, context_dim, stable):
    module = make(dim, context_dim, stable)
    perm = module.permutation
    for k in range(3):
        x = torch.randn(dim, dtype=F64) * 1.5
        ctx = torch.randn(context_dim, dtype=F64) if context_dim else None
        t = bound(module, ctx)
        y, ladj = t.forward_and_log_det(x)
        jac = torch.autograd.functional.jacobian(lambda z: t.forward_and_log_det(z)[0], x)
        sign, ref = torch.linalg.slogdet(jac)
        assert sign > 0
        assert abs(float(ladj.detach() - ref)) < 1e-10
        # autoregressive structure: lower triangular once rows and columns follow the ARN's order
        ordered = jac[perm][:, perm]
        assert torch.equal(torch.triu(ordered, diagonal=1), torch.zeros_like(ordered))
        assert torch.allclose(torch.diagonal(ordered).log().sum(), ladj, atol=1e-12, rtol=0)


@pytest.mark.parametrize("stable", [False, True], ids=["affine", "gated"])
@pytest.mark.parametrize("context_dim", [0, 2])
@pytest.mark.parametrize("dim", [1, 4, 10])
def test_inverse_round_trip(dim, context_dim, stable):
    module = make(dim, context_dim, stable, scale=0.5)
    x = torch.randn(6, 5, dim, dtype=F64)
    t = bound(module, torch.randn(5, context_dim, dtype=F64) if context_dim else None)
    y, ladj = t.forward_and_log_det(x)
    x_back, ladj_back = t.inverse_and_log_det(y)
    assert (x_back - x).abs().max() < 1e-10
    assert (ladj_back - ladj).abs().max() < 1e-10


def test_identity_at_init_and_gated_scale():
    torch.manual_seed(1)
    x = torch.randn(4, 5)
    affine = IAF(5)
    y, ladj = affine.forward_and_log_det(x)
    assert torch.equal(y, x) and torch.equal(ladj, torch.zeros(4))
    gated = IAF(5, stable=True, sigmoid_bias=2.0)
    y, ladj = gated.forward_and_log_det(x)
    sigma = 1.0 / (1.0 + math.exp(-2.0))
    assert torch.allclose(y, sigma * x, atol=1e-6)
    assert torch.allclose(ladj, torch.full((4,), 5 * math.log(sigma)), atol=1e-5)
    # the identity start still lets gradients reach the network (the zeroed last layer)
    affine(torch.randn(8, 5)).pow(2).sum().backward()
    assert affine.arn.layers[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stable", [False, True], ids=["affine", "gated"])
@pytest.mark.parametrize("context_dim", [0, 2])
def test_extreme_scales_and_inputs_are_finite(context_dim, stable):
    dim = 4
    module = make(dim, context_dim, stable)
    with torch.no_grad():  # huge weights: the log-scale saturates at the clips
        module.arn.layers[-1].weight.mul_(1e3)
        module.arn.layers[-1].bias.mul_(1e3)
    x = (torch.randn(50, dim, dtype=F64) * 1e3).requires_grad_()
    ctx = torch.randn(50, context_dim, dtype=F64) * 1e3 if context_dim else None
    y, ladj = bound(module, ctx).forward_and_log_det(x)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    if not stable:
        _, s = module.arn(x, context=ctx) if context_dim else module.arn(x)
        assert (s > 3.0).any() and (s < -5.0).any()  # both clips are hit
        assert (ladj <= 3.0 * dim + 1e-9).all() and (ladj >= -5.0 * dim - 1e-9).all()
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("stable", [False, True], ids=["affine", "gated"])
@pytest.mark.parametrize("context_dim", [0, 3])
def test_float64_module_under_float32_default(context_dim, stable):
    module = make(3, context_dim, stable)
    check_float64_under_float32(module, context_dim, inverse_tol=1e-10)


@pytest.mark.parametrize("context_dim", [0, 2])
def test_state_dict_round_trip_into_fresh_module(context_dim):
    dim = 6
    source = make(dim, context_dim, stable=False, seed=3)
    torch.manual_seed(4)  # other initial weights; the buffers (order, masks) depend on no RNG
    fresh = IAF(dim, context_dim=context_dim).double()
    assert torch.equal(fresh.permutation, torch.arange(dim))
    assert not all(torch.equal(p, q) for p, q in zip(fresh.parameters(), source.parameters()))
    state = source.state_dict()
    assert "arn.permutation" in state and "arn.layers.0.mask" in state
    fresh.load_state_dict(state)
    for name, buf in source.named_buffers():
        assert torch.equal(buf, dict(fresh.named_buffers())[name]), name
    x = torch.randn(5, dim, dtype=F64)
    ctx = torch.randn(5, context_dim, dtype=F64) if context_dim else None
    y1, l1 = bound(source, ctx).forward_and_log_det(x)
    y2, l2 = bound(fresh, ctx).forward_and_log_det(x)
    assert torch.equal(y1, y2) and torch.equal(l1, l2)
    assert torch.equal(bound(source, ctx).inverse_and_log_det(y1)[0], bound(fresh, ctx).inverse_and_log_det(y1)[0])


@pytest.mark.parametrize("batch", [(), (7,), (6, 5), (3, 4, 5)])
@pytest.mark.parametrize("stable", [False, True], ids=["affine", "gated"])
def test_batch_shapes(batch, stable):
    module = make(3, 0, stable)
    x = torch.randn(batch + (3,), dtype=F64)
    y, ladj = module.forward_and_log_det(x)
    assert y.shape == x.shape and ladj.shape == batch
    assert (module.inverse_and_log_det(y)[0] - x).abs().max() < 1e-10


def test_context_broadcast_over_particles():
    module = make(3, 2, stable=False)
    ctx = torch.randn(4, 2, dtype=F64)
    x = torch.randn(6, 4, 3, dtype=F64)  # (S, B, D) with a context of batch (B,)
    y, ladj = module.condition(ctx).forward_and_log_det(x)
    assert y.shape == (6, 4, 3) and ladj.shape == (6, 4)
    for b in range(4):  # the same as conditioning each data point separately
        yb, lb = module.condition(ctx[b]).forward_and_log_det(x[:, b])
        assert torch.allclose(yb, y[:, b], atol=1e-12) and torch.allclose(lb, ladj[:, b], atol=1e-12)
    x_back, _ = module.condition(ctx).inverse_and_log_det(y)
    assert (x_back - x).abs().max() < 1e-10
    # a single point broadcast against a batch of contexts
    assert module.condition(ctx)(torch.randn(3, dtype=F64)).shape == (4, 3)


def test_dim1_is_an_elementwise_affine_map_without_warnings():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = perturb(IAF(1).double(), 0.5)
        amortized = perturb(IAF(1, context_dim=2).double(), 0.5)
    x = torch.linspace(-3, 3, 7, dtype=F64).unsqueeze(-1)
    y, ladj = module.forward_and_log_det(x)
    slope = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
    assert torch.allclose(slope, slope[0].expand_as(slope)) and torch.allclose(ladj, slope[0].log().expand(7))
    ctx = torch.randn(2, dtype=F64)
    y, ladj = amortized.condition(ctx).forward_and_log_det(x)
    slope = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
    assert torch.allclose(slope, slope[0].expand_as(slope)) and torch.allclose(ladj, slope[0].log().expand(7))


@pytest.mark.parametrize("context_dim", [0, 2])
def test_every_parameter_gets_a_finite_gradient(context_dim):
    module = make(4, context_dim, stable=False)
    ctx = torch.randn(8, context_dim, dtype=F64) if context_dim else None
    t = bound(module, ctx)
    y, ladj = t.forward_and_log_det(torch.randn(8, 4, dtype=F64))
    x, ladj_inv = t.inverse_and_log_det(torch.randn(8, 4, dtype=F64))
    (y.sum() + ladj.sum() + x.sum() + ladj_inv.sum()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_stack_inverse_and_log_det():
    torch.manual_seed(0)
    stack = flow("iaf", 4, num_flows=3, stable=True).double()
    perturb(stack, 0.3)
    x = torch.randn(4, dtype=F64)
    y, ladj = stack.forward_and_log_det(x)
    jac = torch.autograd.functional.jacobian(lambda z: stack.forward_and_log_det(z)[0], x)
    assert abs(float(ladj.detach() - torch.linalg.slogdet(jac)[1])) < 1e-10
    assert (stack.inverse_and_log_det(y)[0] - x).abs().max() < 1e-10


def test_bad_arguments():
    with pytest.raises(ValueError, match="hidden"):
        IAF(5, hidden=[3])
    with pytest.raises(ValueError, match="hidden"):
        IAF(5, hidden=[])
    with pytest.raises(ValueError, match="log_scale_min_clip"):
        IAF(2, log_scale_min_clip=1.0, log_scale_max_clip=0.0)
    with pytest.raises(ValueError, match="context"):
        IAF(3, context_dim=2).condition(torch.randn(4, 3))
    with pytest.raises(ValueError, match="context_dim=2"):
        IAF(3, context_dim=2).forward_and_log_det(torch.randn(3))
    with pytest.raises(ValueError, match="takes no context"):
        IAF(3).condition(torch.randn(2))
    with pytest.raises(ValueError, match="event shape"):
        IAF(3)(torch.randn(2, 4))


@pytest.mark.parametrize("context_dim", [0, 2])
def test_cache_follows_in_place_weight_updates(context_dim):
    module = make(3, context_dim, stable=False)
    t = bound(module, torch.randn(4, context_dim, dtype=F64) if context_dim else None)
    x = torch.randn(4, 3, dtype=F64)
    y = t(x)
    with torch.no_grad():  # an optimiser step changes the network in place
        module.arn.layers[-1].weight.add_(1.0)
    y_new = t(x)
    assert not torch.allclose(y_new, y)
    assert torch.equal(y_new, t.forward_and_log_det(x)[0])
    assert torch.equal(t.log_abs_det_jacobian(x, y_new), t.forward_and_log_det(x)[1])
