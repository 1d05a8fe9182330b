"""Family-specific tests of the affine / additive coupling layer (pyro_nfvi.transforms.coupling)."""
import math

import pytest
import torch
from flowcheck import F64, bound, check_float64_under_float32, perturb

from pyro_nfvi.transforms import AffineCoupling, flow





def make(dim, context_dim=0, parity=0, form="affine", scale=0.5, seed=0, hidden=(16, 16), **opts):
    torch.manual_seed(seed)
    layer = AffineCoupling(dim, context_dim=context_dim, parity=parity, form=form, hidden=hidden, **opts)
    return perturb(layer.double(), scale)


@pytest.mark.parametrize("form", ["affine", "additive"])
@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("dim", [1, 2, 3, 10])
def test_log_det_matches_jacobian_at_random_parameters(dim, context_dim, parity, form):
    layer = make(dim, context_dim, parity, form)
    cond, trans = layer.cond_idx, layer.trans_idx
    for k in range(2):
        x = torch.randn(dim, dtype=F64) * 1.5
        t = bound(layer, torch.randn(context_dim, dtype=F64) if context_dim else None)
        y, ladj = t.forward_and_log_det(x)
        jac = torch.autograd.functional.jacobian(lambda z: t.forward_and_log_det(z)[0], x)
        sign, ref = torch.linalg.slogdet(jac)
        assert sign > 0 and abs(float(ladj.detach() - ref)) < 1e-10
        if form == "additive":
            assert torch.equal(ladj, torch.zeros((), dtype=F64))
        # coupling structure: y_I = x_I, y_T depends on x_T only through its own coordinate
        assert torch.equal(jac[cond], torch.eye(dim, dtype=F64)[cond])
        block = jac[trans][:, trans]
        assert torch.equal(block, torch.diag_embed(torch.diagonal(block)))
        assert (y[trans] != x[trans]).all()


@pytest.mark.parametrize("form", ["affine", "additive"])
@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("context_dim", [0, 2])
def test_inverse_round_trip(context_dim, parity, form):
    layer = make(5, context_dim, parity, form, scale=1.0)
    x = torch.randn(6, 4, 5, dtype=F64) * 3
    t = bound(layer, torch.randn(4, context_dim, dtype=F64) if context_dim else None)
    y, ladj = t.forward_and_log_det(x)
    x_back, ladj_back = t.inverse_and_log_det(y)
    assert (x_back - x).abs().max() < 1e-10 and (ladj_back - ladj).abs().max() < 1e-12


@pytest.mark.parametrize("dim", [1, 2, 3, 6])
def test_masks_alternate_in_a_stack(dim):
    stack = flow("coupling", dim, num_flows=4, hidden=(8,)).double()
    assert [layer.parity for layer in stack] == [0, 1, 0, 1]
    torch.manual_seed(0)
    perturb(stack, 0.5)
    x = torch.randn(dim, dtype=F64)
    transformed = set()
    for layer in stack:
        y = layer(x)
        changed = set(torch.nonzero(y != x).flatten().tolist())
        assert changed == set(layer.trans_idx.tolist())  # exactly the layer's transformed half
        assert set(layer.trans_idx.tolist()) | set(layer.cond_idx.tolist()) == set(range(dim))
        transformed |= changed
        x = y
    assert transformed == set(range(dim))  # every coordinate is transformed by some layer
    if dim > 1:  # ... and every coordinate conditions some layer
        assert set(stack[0].cond_idx.tolist()) | set(stack[1].cond_idx.tolist()) == set(range(dim))


def test_identity_at_init_and_gradients_flow():
    torch.manual_seed(0)
    for form in ["affine", "additive"]:
        for context_dim in [0, 2]:
            layer = AffineCoupling(4, context_dim=context_dim, form=form)
            x = torch.randn(8, 4)
            t = bound(layer, torch.randn(8, context_dim) if context_dim else None)
            y, ladj = t.forward_and_log_det(x)
            assert torch.equal(y, x) and torch.equal(ladj, torch.zeros(8))
            (y.pow(3).sum() + ladj.sum()).backward()
            assert layer.net.layers[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("max_scale", [1.5, 2.0, 5.0])
@pytest.mark.parametrize("context_dim", [0, 2])
def test_bounded_gate_starts_at_the_identity_with_unit_slope(context_dim, max_scale):
    """``stable=True, max_scale=m``: exp(s) = m * sigmoid(m/(m-1) s_raw - log(m-1)) is 1 with slope 1 at s_raw = 0, within (0, m)."""
    torch.manual_seed(0)
    layer = AffineCoupling(4, context_dim=context_dim, stable=True, max_scale=max_scale).double()
    x = torch.randn(8, 4, dtype=F64)
    t = bound(layer, torch.randn(8, context_dim, dtype=F64) if context_dim else None)
    y, ladj = t.forward_and_log_det(x)
    assert torch.equal(y, x) and ladj.abs().max() < 1e-15
    glow = AffineCoupling(4, context_dim=context_dim, stable=True).double()  # Glow's gate starts at sigmoid(2)
    y_glow, _ = bound(glow, torch.randn(8, context_dim, dtype=F64) if context_dim else None).forward_and_log_det(x)
    trans = glow.trans_idx
    assert torch.allclose(y_glow[:, trans], torch.sigmoid(torch.tensor(2.0, dtype=F64)) * x[:, trans])
    # the log-scale as a function of the last layer's bias: slope 1 at 0 (as exp(s_raw)), bounded by log m
    bias = layer.net.layers[-1].bias
    num_t = len(layer.trans_idx)

    def log_scale(r):
        with torch.no_grad():
            bias[num_t:] = r
        return bound(layer, torch.zeros(1, context_dim, dtype=F64) if context_dim else None).forward_and_log_det(
            torch.zeros(1, 4, dtype=F64))[1].detach()

    h = 1e-6
    slope = (log_scale(h) - log_scale(-h)) / (2 * h) / num_t
    assert abs(float(slope) - 1.0) < 1e-6
    assert float(log_scale(50.0)) / num_t == pytest.approx(math.log(max_scale), abs=1e-9)
    assert float(log_scale(-50.0)) / num_t < -20


@pytest.mark.parametrize("context_dim", [0, 2])
def test_soft_clamp_and_large_inputs_are_finite(context_dim):
    layer = make(4, context_dim, 1, "affine", log_scale_clip=2.0)
    with torch.no_grad():
        layer.net.layers[-1].weight.mul_(1e3)
    x = (torch.randn(50, 4, dtype=F64) * 1e3).requires_grad_()
    ctx = torch.randn(50, context_dim, dtype=F64) if context_dim else None
    t = bound(layer, ctx)
    y, ladj = t.forward_and_log_det(x)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    num_t = len(layer.trans_idx)
    assert ladj.abs().max() <= 2.0 * num_t and ladj.abs().max() > 0.99 * 2.0 * num_t  # saturates at the clip
    x_back, _ = t.inverse_and_log_det(y)
    # shifts are ~1e6 here: the round trip is exact up to rounding of y (amplified by at most e^clip)
    assert (x_back - x).abs().max() < 1e-14 * (1 + y.abs().max()) * math.exp(2.0)
    (y.sum() + ladj.sum() + x_back.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("form", ["affine", "additive"])
@pytest.mark.parametrize("context_dim", [0, 3])
def test_float64_module_under_float32_default(context_dim, form):
    layer = make(3, context_dim, 0, form)
    check_float64_under_float32(layer, context_dim, inverse_tol=1e-12)


@pytest.mark.parametrize("batch", [(), (7,), (6, 5), (3, 4, 5)])
@pytest.mark.parametrize("dim", [1, 4])
def test_batch_shapes(batch, dim):
    layer = make(dim)
    x = torch.randn(batch + (dim,), dtype=F64)
    y, ladj = layer.forward_and_log_det(x)
    assert y.shape == x.shape and ladj.shape == batch
    assert (layer.inverse_and_log_det(y)[0] - x).abs().max() < 1e-12


@pytest.mark.parametrize("dim", [1, 3])
def test_context_broadcast_over_particles(dim):
    layer = make(dim, 2, 1)
    ctx = torch.randn(4, 2, dtype=F64)
    x = torch.randn(6, 4, dim, dtype=F64)
    t = layer.condition(ctx)
    y, ladj = t.forward_and_log_det(x)
    assert y.shape == (6, 4, dim) and ladj.shape == (6, 4)
    for b in range(4):
        yb, lb = layer.condition(ctx[b]).forward_and_log_det(x[:, b])
        assert torch.allclose(yb, y[:, b], atol=1e-12) and torch.allclose(lb, ladj[:, b], atol=1e-12)
    assert (t.inverse_and_log_det(y)[0] - x).abs().max() < 1e-12
    assert t(torch.randn(dim, dtype=F64)).shape == (4, dim)


@pytest.mark.parametrize("form", ["affine", "additive"])
@pytest.mark.parametrize("dim,context_dim", [(1, 0), (1, 2), (4, 0), (4, 2)])
def test_every_parameter_gets_a_finite_gradient(dim, context_dim, form):
    layer = make(dim, context_dim, 0, form)
    ctx = torch.randn(5, context_dim, dtype=F64) if context_dim else None
    t = bound(layer, ctx)
    y, ladj = t.forward_and_log_det(torch.randn(5, dim, dtype=F64))
    x, _ = t.inverse_and_log_det(torch.randn(5, dim, dtype=F64))
    (y.pow(2).sum() + ladj.sum() + x.pow(2).sum()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if dim == 1 and context_dim == 0:  # elementwise affine map with owned shift / log-scale
        assert {n for n, _ in layer.named_parameters()} == ({"shift", "raw_scale"} if form == "affine" else {"shift"})


@pytest.mark.parametrize("context_dim", [0, 2])
def test_state_dict_round_trip(context_dim):
    source = make(5, context_dim, 1, seed=1)
    torch.manual_seed(2)
    fresh = AffineCoupling(5, context_dim=context_dim, parity=1, hidden=(16, 16)).double()
    fresh.load_state_dict(source.state_dict())
    x = torch.randn(5, 5, dtype=F64)
    ctx = torch.randn(5, context_dim, dtype=F64) if context_dim else None
    y1, l1 = bound(source, ctx).forward_and_log_det(x)
    y2, l2 = bound(fresh, ctx).forward_and_log_det(x)
    assert torch.equal(y1, y2) and torch.equal(l1, l2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="parity"):
        AffineCoupling(3, parity=2)
    with pytest.raises(ValueError, match="form"):
        AffineCoupling(3, form="spline")
    with pytest.raises(ValueError, match="log_scale_clip"):
        AffineCoupling(3, log_scale_clip=-1.0)
    with pytest.raises(ValueError, match="hidden"):
        AffineCoupling(3, hidden=())
    with pytest.raises(ValueError, match="max_scale must exceed 1"):
        AffineCoupling(3, stable=True, max_scale=1.0)
    with pytest.raises(ValueError, match="max_scale"):
        AffineCoupling(3, stable=True, max_scale=-2.0)
    with pytest.raises(ValueError, match="with stable=True"):
        AffineCoupling(3, max_scale=2.0)
    with pytest.raises(ValueError, match="context"):
        AffineCoupling(3, context_dim=2).condition(torch.randn(4, 3))
    with pytest.raises(ValueError, match="takes no context"):
        AffineCoupling(3).condition(torch.randn(2))


@pytest.mark.parametrize("context_dim", [0, 2])
def test_cache_follows_in_place_weight_updates(context_dim):
    layer = make(3, context_dim)
    t = bound(layer, torch.randn(4, context_dim, dtype=F64) if context_dim else None)
    x = torch.randn(4, 3, dtype=F64)
    y = t(x)
    with torch.no_grad():  # an optimiser step changes the network in place
        layer.net.layers[-1].bias.add_(1.0)
    y_new = t(x)
    assert not torch.allclose(y_new, y)
    assert torch.equal(y_new, t.forward_and_log_det(x)[0])
    assert torch.equal(t.log_abs_det_jacobian(x, y_new), t.forward_and_log_det(x)[1])
