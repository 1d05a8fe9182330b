"""Family-specific tests of the Sylvester flow (pyro_nfvi.transforms.sylvester)."""
import warnings

import pytest
import torch
from flowcheck import F64, bound, check_float64_under_float32, perturb

from pyro_nfvi.transforms import Sylvester, flow
from pyro_nfvi.transforms.sylvester import householder_product, orthonormalize, qr_orthonormal

KINDS = ["orthogonal", "householder", "triangular"]




def make(dim, context_dim=0, kind="orthogonal", scale=1.0, seed=0, **opts):
    torch.manual_seed(seed)
    return perturb(Sylvester(dim, context_dim=context_dim, kind=kind, **opts).double(), scale)


def jacobian_log_det(t, x):
    jac = torch.autograd.functional.jacobian(lambda z: t.forward_and_log_det(z)[0], x)
    sign, logabsdet = torch.linalg.slogdet(jac)
    return jac, sign, logabsdet


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("dim", [1, 2, 3, 10])
def test_log_det_matches_jacobian_at_random_parameters(dim, context_dim, kind):
    module = make(dim, context_dim, kind)
    for k in range(3):
        x = torch.randn(dim, dtype=F64) * 2.0
        ctx = torch.randn(context_dim, dtype=F64) if context_dim else None
        t = bound(module, ctx)
        p = module.params(ctx)
        eye = torch.eye(dim, dtype=F64)
        assert (p["Q"].mT @ p["Q"] - eye).abs().max() < 1e-12  # the formula's assumption holds
        assert (torch.diagonal(p["T"], dim1=-2, dim2=-1) > -1).all()
        y, ladj = t.forward_and_log_det(x)
        _, sign, ref = jacobian_log_det(t, x)
        assert sign > 0
        assert abs(float(ladj.detach() - ref)) < 1e-9


@pytest.mark.parametrize("context_dim", [0, 2])
def test_log_det_with_fewer_orthogonal_columns(context_dim):
    module = make(10, context_dim, "orthogonal", num_ortho=4)
    ctx = torch.randn(context_dim, dtype=F64) if context_dim else None
    assert module.params(ctx)["Q"].shape[-2:] == (10, 4)
    x = torch.randn(10, dtype=F64)
    _, _, ref = jacobian_log_det(bound(module, ctx), x)
    assert abs(float(bound(module, ctx).forward_and_log_det(x)[1].detach() - ref)) < 1e-9


@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_square_q_is_a_rotation_of_d_minus_1_raw_columns(dim, context_dim):
    module = make(dim, context_dim, "orthogonal")
    shapes = module.param_shapes()
    assert shapes.get("Q") == ((dim, dim - 1) if dim > 1 else None)
    ctx = torch.randn(4, context_dim, dtype=F64) if context_dim else None
    q = module.params(ctx)["Q"]
    assert torch.allclose(torch.linalg.det(q), torch.ones((), dtype=F64))
    assert (q.mT @ q - torch.eye(dim, dtype=F64)).abs().max() < 1e-12


def test_square_q_turns_continuously_through_every_angle():
    """U2, K = 32, step 19,736: with two raw columns, the first turned across the second, the raw
    matrix went singular, Q's orientation flipped (a jump of the map) and QR's gradient, ~1 / r_22, was
    not finite.  With one raw column Q turns with it, continuously, at every angle."""
    module = make(2, 0, "orthogonal")
    x = torch.randn(16, 2, dtype=F64)
    previous = None
    for angle in torch.linspace(0.0, 2 * torch.pi, 721, dtype=F64):
        with torch.no_grad():
            module.Q.copy_(torch.stack([torch.cos(angle), torch.sin(angle)]).unsqueeze(-1))
        y, ladj = module.forward_and_log_det(x)
        (y.sum() + ladj.sum()).backward()
        assert torch.isfinite(module.Q.grad).all() and module.Q.grad.abs().max() < 1e3
        module.Q.grad = None
        if previous is not None:  # a 0.5 degree turn moves every output by little
            assert (y.detach() - previous).abs().max() < 0.1
        previous = y.detach()


def test_log_det_far_from_init_extreme_diagonals():
    """Products r_ii r~_ii close to -1 and large positive: the formula and its log-space form hold."""
    torch.manual_seed(5)
    module = Sylvester(4).double()
    with torch.no_grad():
        module.Q.copy_(torch.randn(4, 3))
        module.Rt_diag.copy_(torch.tensor([1.0, -2.0, 0.7, 1.3]))
        module.R_diag.copy_(torch.tensor([-25.0, 8.0, 4.0, -1.0]))  # products ~ -1, ~ -1, large, < 0
        module.R_upper.normal_()
        module.Rt_upper.normal_()
    prod = torch.diagonal(module.params()["T"])
    assert (prod > -1).all() and prod.min() < -0.999999 and prod.max() > 2
    for scale in [0.1, 1.0, 5.0]:
        x = torch.randn(4, dtype=F64) * scale
        ladj = module.forward_and_log_det(x)[1]
        _, sign, ref = jacobian_log_det(module, x)
        assert sign > 0 and abs(float(ladj.detach() - ref)) < 1e-8


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_inverse_round_trip(kind, context_dim):
    dim = 5
    module = make(dim, context_dim, kind, scale=1.5)
    x = torch.randn(6, 4, dim, dtype=F64) * 3.0
    t = bound(module, torch.randn(4, context_dim, dtype=F64) if context_dim else None)
    y, ladj = t.forward_and_log_det(x)
    x_back, ladj_back = t.inverse_and_log_det(y)
    assert (x_back - x).abs().max() < 1e-9
    assert (ladj_back - ladj).abs().max() < 1e-9


def test_inverse_gradients_are_the_implicit_function_gradients():
    torch.manual_seed(2)
    module = make(3, 0, "orthogonal")
    raw = {k: v.detach().clone().requires_grad_() for k, v in module.raw_params().items()}
    y = torch.randn(2, 3, dtype=F64, requires_grad=True)
    names = list(raw)

    def inverse(y, *values):
        x, ladj = module.bind(dict(zip(names, values))).inverse_and_log_det(y)
        return x, ladj

    assert torch.autograd.gradcheck(inverse, (y, *[raw[n] for n in names]), atol=1e-6)
    # d x / d y is the inverse of the forward Jacobian
    x0 = module.inverse_and_log_det(y[0].detach())[0]
    jac_inv = torch.autograd.functional.jacobian(lambda v: module.inverse_and_log_det(v)[0], y[0].detach())
    jac_fwd = torch.autograd.functional.jacobian(lambda v: module.forward_and_log_det(v)[0], x0)
    assert torch.allclose(jac_inv @ jac_fwd, torch.eye(3, dtype=F64), atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_dim", [0, 3])
def test_identity_at_init_with_gradients(kind, context_dim):
    torch.manual_seed(0)
    module = Sylvester(4, context_dim=context_dim, kind=kind)
    x = torch.randn(8, 4)
    ctx = torch.randn(8, context_dim) if context_dim else None
    y, ladj = bound(module, ctx).forward_and_log_det(x)
    assert torch.equal(y, x) and ladj.abs().max() < 1e-6
    (y.pow(3).sum() + ladj.sum()).backward()
    name = "hypernet.head.bias" if context_dim else "R_diag"
    assert dict(module.named_parameters())[name].grad.abs().sum() > 0


def test_orthonormalize_converges_for_ill_conditioned_and_falls_back_for_singular():
    torch.manual_seed(0)
    w = torch.randn(3, 6, 4, dtype=F64) * torch.tensor([1.0, 1e-3, 1e-7, 10.0], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = orthonormalize(w)
    assert (q.mT @ q - torch.eye(4, dtype=F64)).abs().max() < 1e-13
    # the limit is the orthogonal polar factor of w: q^T w is symmetric positive definite
    s = q.mT @ w
    assert torch.allclose(s, s.mT, atol=1e-10) and (torch.linalg.eigvalsh(s) > 0).all()
    singular = torch.randn(6, 4, dtype=F64)
    singular[:, 2] = 0.0  # a zero column never converges under Bjorck
    with pytest.warns(RuntimeWarning, match="did not converge"):
        q = orthonormalize(singular, max_iter=30)
    assert (q.mT @ q - torch.eye(4, dtype=F64)).abs().max() < 1e-13
    # the flow then still reports the log-det of the map it computes; QR needs no fallback
    x = torch.randn(6, dtype=F64)
    for orthogonalization in ("bjorck", "qr"):
        module = Sylvester(6, num_ortho=4, orthogonalization=orthogonalization).double()
        perturb(module, 1.0)
        with torch.no_grad():
            module.Q.copy_(singular)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ladj = module.forward_and_log_det(x)[1]
            _, _, ref = jacobian_log_det(module, x)
        assert any(issubclass(w.category, RuntimeWarning) for w in caught) == (orthogonalization == "bjorck")
        assert abs(float(ladj.detach() - ref)) < 1e-9


def test_householder_and_triangular_q():
    v = torch.randn(2, 3, 5, dtype=F64)
    q = householder_product(v)
    assert (q.mT @ q - torch.eye(5, dtype=F64)).abs().max() < 1e-13
    h = torch.eye(5, dtype=F64) - 2 * torch.outer(v[0, 0], v[0, 0]) / v[0, 0].dot(v[0, 0])
    assert torch.allclose(householder_product(v[0, :1]), h)
    forward = Sylvester(4, kind="triangular").params()["Q"]
    backward = Sylvester(4, kind="triangular", reverse=True).params()["Q"]
    assert torch.equal(forward, torch.eye(4)) and torch.equal(backward, torch.eye(4).flip(-1))
    with pytest.warns(FutureWarning, match="sylvester_kind"):
        assert Sylvester(3, sylvester_kind="householder").kind == "householder"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_float64_module_under_float32_default(kind, context_dim):
    module = make(3, context_dim, kind)
    check_float64_under_float32(module, context_dim, inverse_tol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_large_inputs_finite_values_and_gradients(kind, context_dim):
    module = make(4, context_dim, kind)
    x = (torch.randn(20, 4, dtype=F64) * 1e3).requires_grad_()
    ctx = torch.randn(20, context_dim, dtype=F64) if context_dim else None
    t = bound(module, ctx)
    y, ladj = t.forward_and_log_det(x)
    x_back, ladj_back = t.inverse_and_log_det(y)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert ((x_back - x).abs() / (1.0 + x.abs())).max() < 1e-9
    (y.sum() + ladj.sum() + x_back.sum() + ladj_back.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_every_parameter_gets_a_finite_gradient(kind, context_dim):
    module = make(3, context_dim, kind, scale=0.5)
    ctx = torch.randn(5, context_dim, dtype=F64) if context_dim else None
    t = bound(module, ctx)
    y, ladj = t.forward_and_log_det(torch.randn(5, 3, dtype=F64))
    x, ladj_inv = t.inverse_and_log_det(torch.randn(5, 3, dtype=F64))
    (y.sum() + ladj.sum() + x.sum() + ladj_inv.sum()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("batch", [(), (7,), (6, 5), (3, 4, 5)])
@pytest.mark.parametrize("kind", KINDS)
def test_batch_shapes(batch, kind):
    module = make(3, 0, kind)
    x = torch.randn(batch + (3,), dtype=F64)
    y, ladj = module.forward_and_log_det(x)
    assert y.shape == x.shape and ladj.shape == batch
    assert (module.inverse_and_log_det(y)[0] - x).abs().max() < 1e-9


def test_context_broadcast_over_particles():
    module = make(3, 2, "orthogonal")
    ctx = torch.randn(4, 2, dtype=F64)
    x = torch.randn(6, 4, 3, dtype=F64)
    t = module.condition(ctx)
    y, ladj = t.forward_and_log_det(x)
    assert y.shape == (6, 4, 3) and ladj.shape == (6, 4)
    for b in range(4):
        yb, lb = module.condition(ctx[b]).forward_and_log_det(x[:, b])
        assert torch.allclose(yb, y[:, b], atol=1e-12) and torch.allclose(lb, ladj[:, b], atol=1e-12)
    assert (t.inverse_and_log_det(y)[0] - x).abs().max() < 1e-9


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_state_dict_round_trip(kind, context_dim):
    source = make(4, context_dim, kind, seed=1)
    torch.manual_seed(2)
    fresh = Sylvester(4, context_dim=context_dim, kind=kind).double()
    fresh.load_state_dict(source.state_dict())
    x = torch.randn(5, 4, dtype=F64)
    ctx = torch.randn(5, context_dim, dtype=F64) if context_dim else None
    y1, l1 = bound(source, ctx).forward_and_log_det(x)
    y2, l2 = bound(fresh, ctx).forward_and_log_det(x)
    assert torch.equal(y1, y2) and torch.equal(l1, l2)


def test_stack_log_det_and_inverse():
    torch.manual_seed(0)
    stack = flow("sylvester", 3, num_flows=3, kind="householder").double()
    perturb(stack, 1.0)
    x = torch.randn(3, dtype=F64)
    y, ladj = stack.forward_and_log_det(x)
    jac = torch.autograd.functional.jacobian(lambda z: stack.forward_and_log_det(z)[0], x)
    assert abs(float(ladj.detach() - torch.linalg.slogdet(jac)[1])) < 1e-9
    assert (stack.inverse_and_log_det(y)[0] - x).abs().max() < 1e-9


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        Sylvester(3, kind="diagonal")
    with pytest.raises(ValueError, match="num_ortho"):
        Sylvester(3, num_ortho=4)
    with pytest.raises(ValueError, match="num_ortho"):
        Sylvester(3, kind="householder", num_ortho=2)
    with pytest.raises(ValueError, match="num_householder"):
        Sylvester(3, kind="triangular", num_householder=2)
    with pytest.raises(ValueError, match="disagree"), pytest.warns(FutureWarning):
        Sylvester(3, kind="householder", sylvester_kind="triangular")
    with pytest.raises(ValueError, match="context"):
        Sylvester(3, context_dim=2).condition(torch.randn(4, 3))
    with pytest.raises(ValueError, match="event shape"):
        Sylvester(3)(torch.randn(2, 4))


@pytest.mark.parametrize("context_dim", [0, 3])
def test_bjorck_orthogonalization_is_exact_too(context_dim):
    module = make(5, context_dim, "orthogonal", orthogonalization="bjorck")
    ctx = torch.randn(context_dim, dtype=F64) if context_dim else None
    x = torch.randn(5, dtype=F64)
    _, _, ref = jacobian_log_det(bound(module, ctx), x)
    assert abs(float(bound(module, ctx).forward_and_log_det(x)[1].detach() - ref)) < 1e-9


def test_qr_and_bjorck_span_the_same_columns_and_qr_is_smooth():
    torch.manual_seed(0)
    w = torch.randn(3, 6, 4, dtype=F64, requires_grad=True)
    q, polar = qr_orthonormal(w), orthonormalize(w)
    eye = torch.eye(4, dtype=F64)
    assert (q.mT @ q - eye).abs().max() < 1e-12
    assert torch.allclose(q @ q.mT, polar @ polar.mT, atol=1e-10)  # the same projector onto span(w)
    assert (torch.diagonal(q.mT @ w, dim1=-2, dim2=-1) > 0).all()  # R's positive diagonal
    assert torch.autograd.gradcheck(qr_orthonormal, (w,))


def test_orthogonalization_is_checked():
    assert Sylvester(3).orthogonalization == "qr"
    with pytest.raises(ValueError, match="orthogonalization"):
        Sylvester(3, orthogonalization="gram")
    with pytest.raises(ValueError, match="only used by kind='orthogonal'"):
        Sylvester(3, kind="householder", orthogonalization="bjorck")
    with pytest.raises(ValueError, match="M <= D"):
        qr_orthonormal(torch.randn(2, 3))
