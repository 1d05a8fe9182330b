"""Generic tests run against every flow family, every variant and stacks built by :func:`flow`.

Each case is built by a factory ``(dim, context_dim) -> module`` from :data:`FACTORIES`, owned
(``context_dim=0``) and amortized (``context_dim=CTX``, used through ``.condition(context)``).
Maths is checked at *random, non-initial* parameters (``flowcheck.perturb``): hypernetwork heads are
zero-initialised, so without it every amortized flow would be the same map for every context.
"""
import copy
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.conditional import ConditionalTransformedDistribution
from torch.testing import assert_close

from flowcheck import perturb

from pyro_nfvi.transforms import (
    FAMILIES,
    IAF,
    AffineCoupling,
    FlowStack,
    Householder,
    Permute,
    Planar,
    Radial,
    SinhArcsinh,
    Sylvester,
    flow,
)
from pyro_nfvi.transforms.jacobian import chain_closed_forms

CTX = 3  # context size of the amortized cases

#: ``(id, factory(dim, context_dim) -> module)`` for every family, variant and stack.
FACTORIES = [
    ("planar", lambda d, c: Planar(d, context_dim=c)),
    ("radial", lambda d, c: Radial(d, context_dim=c, hidden=(8,))),
    ("householder", lambda d, c: Householder(d, context_dim=c)),
    ("iaf", lambda d, c: IAF(d, context_dim=c)),
    ("iaf-stable", lambda d, c: IAF(d, context_dim=c, stable=True)),
    ("iaf-scaled", lambda d, c: IAF(d, context_dim=c, output_scale="fan_in")),
    ("sylvester-orthogonal", lambda d, c: Sylvester(d, context_dim=c, kind="orthogonal")),
    ("sylvester-householder", lambda d, c: Sylvester(d, context_dim=c, kind="householder")),
    ("sylvester-triangular", lambda d, c: Sylvester(d, context_dim=c, kind="triangular")),
    ("sylvester-thin", lambda d, c: Sylvester(d, context_dim=c, kind="orthogonal", num_ortho=max(1, d // 2))),
    ("sylvester-scaled", lambda d, c: Sylvester(d, context_dim=c, output_scale="fan_in" if c else "none")),
    ("coupling-affine", lambda d, c: AffineCoupling(d, context_dim=c, form="affine")),
    ("coupling-scaled", lambda d, c: AffineCoupling(d, context_dim=c, hidden=(16,), output_scale="fan_in")),
    ("coupling-additive", lambda d, c: AffineCoupling(d, context_dim=c, hidden=(16,), form="additive")),
    ("coupling-gated", lambda d, c: AffineCoupling(d, context_dim=c, hidden=(16,), stable=True)),
    ("coupling-bounded", lambda d, c: AffineCoupling(d, context_dim=c, hidden=(16,), stable=True, max_scale=5.0)),
    ("sinh-arcsinh", lambda d, c: SinhArcsinh(d, context_dim=c)),
    ("sinh-arcsinh-hidden", lambda d, c: SinhArcsinh(d, context_dim=c, hidden=(8,) if c else ())),
    ("stack-planar", lambda d, c: flow("planar", d, 2, context_dim=c)),
    ("stack-planar-scaled", lambda d, c: flow("planar", d, 2, context_dim=c, output_scale="fan_in" if c else "none")),
    ("stack-radial", lambda d, c: flow("radial", d, 2, context_dim=c)),
    ("stack-householder", lambda d, c: flow("householder", d, 3, context_dim=c)),
    ("stack-iaf", lambda d, c: flow("iaf", d, 2, context_dim=c, permutation="random")),
    ("stack-sylvester", lambda d, c: flow("sylvester", d, 2, context_dim=c)),
    ("stack-sylvester-householder", lambda d, c: flow("sylvester", d, 2, context_dim=c, kind="householder")),
    ("stack-coupling", lambda d, c: flow("coupling", d, 3, context_dim=c, hidden=(16,))),
    ("stack-none", lambda d, c: flow("none", d, 0, context_dim=c)),
]
NAMES = [name for name, _ in FACTORIES]
_MAKERS = dict(FACTORIES)
#: Smallest event size of a case where it is above 1 (none at present: dim=1 coupling is elementwise).
#: Cases without an amortized variant (the identity has no parameters).
OWNED_ONLY = {"stack-none"}
#: Families whose map is invertible for *any* raw parameters (checked at extreme values).
ALWAYS_INVERTIBLE = ["planar", "radial", "sinh-arcsinh", "stack-planar", "stack-radial", "sylvester-orthogonal", "sylvester-triangular"]
#: The subset checked against an autograd Jacobian at dim 40 (the rest stop at dim 10).
JACOBIAN_40 = ["planar", "radial", "householder", "iaf", "sylvester-orthogonal", "coupling-affine"]
BATCH_SHAPES = [(), (7,), (6, 5), (3, 4, 5)]


def cases(dims, names=NAMES, amortized=(False, True)):
    """``pytest.param(name, dim, context_dim)`` for every allowed combination."""
    out = []
    for name in names:
        for dim in dims:
            for am in amortized:
                if am and name in OWNED_ONLY:
                    continue
                kind = "amortized" if am else "owned"
                out.append(pytest.param(name, dim, CTX if am else 0, id=f"{name}-{kind}-d{dim}"))
    return out


def build(name, dim, context_dim=0, dtype=torch.float64):
    """The module of case ``name``, converted to ``dtype``."""
    return _MAKERS[name](dim, context_dim).to(dtype)


def bound(module, context):
    """The transform to use: the module itself, or the module conditioned on ``context``."""
    return module if context is None else module.condition(context)


def setup(name, dim, context_dim, dtype=torch.float64, batch=(4,), scale=1.0):
    """A randomized module, its transform, the context (or None) and an input of ``batch + (dim,)``."""
    module = perturb(build(name, dim, context_dim, dtype), scale, fan_in=True)
    ctx = torch.randn(batch + (context_dim,), dtype=dtype) if context_dim else None
    x = torch.randn(batch + (dim,), dtype=dtype)
    return module, bound(module, ctx), ctx, x


def base_dist(dim, dtype, batch=()):
    return dist.Normal(torch.zeros(batch + (dim,), dtype=dtype), 1.0).to_event(1)


def jacobian_blocks(t, x):
    """``dy_i/dx_i`` for every row ``x_i`` of ``x`` (N, D), via autograd: shape (N, D, D)."""

    def summed(z):  # rows are independent, so d(sum_i y_i)/dx_i = dy_i/dx_i
        return t.forward_and_log_det(z)[0].sum(0)

    try:
        jac = torch.autograd.functional.jacobian(summed, x, vectorize=True)
    except RuntimeError:  # an op without a batching rule: fall back to one backward per output
        jac = torch.autograd.functional.jacobian(summed, x)
    return jac.movedim(1, 0)


def log_det_gradient(t, x):
    """``d log|det J(x_i)| / dx_i`` for every row of ``x``, via autograd: shape (N, D)."""
    x = x.detach().requires_grad_()
    ladj = t.forward_and_log_det(x)[1]
    if not ladj.requires_grad:  # volume-preserving (Householder, the identity): a constant
        return torch.zeros_like(x)
    return torch.autograd.grad(ladj.sum(), x)[0]


def trainable(module):
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("name,dim,context_dim", cases((1, 2, 3, 10, 40)))
def test_shapes_and_batch_consistency(name, dim, context_dim):
    module = perturb(build(name, dim, context_dim), 1.0, fan_in=True)
    for batch in BATCH_SHAPES:
        ctx = torch.randn(batch + (context_dim,), dtype=torch.float64) if context_dim else None
        t = bound(module, ctx)
        x = torch.randn(batch + (dim,), dtype=torch.float64)
        y = t(x)
        ladj = t.log_abs_det_jacobian(x, y)
        assert y.shape == x.shape and ladj.shape == batch, batch
        assert t.inv(y.clone()).shape == x.shape
        # the batched call equals row-by-row evaluation of the flattened batch
        flat_ctx = None if ctx is None else ctx.reshape(-1, context_dim)
        y_flat, ladj_flat = bound(module, flat_ctx).forward_and_log_det(x.reshape(-1, dim))
        assert_close(y.reshape(-1, dim), y_flat)
        assert_close(ladj.reshape(-1), ladj_flat)
    if context_dim:  # particles vectorized over a leading dim: x (S, B, D), context (B, C)
        ctx = torch.randn(4, context_dim, dtype=torch.float64)
        x = torch.randn(6, 4, dim, dtype=torch.float64)
        t = module.condition(ctx)
        y = t(x)
        ladj = t.log_abs_det_jacobian(x, y)
        assert y.shape == (6, 4, dim) and ladj.shape == (6, 4)
        y0, ladj0 = module.condition(ctx).forward_and_log_det(x[2])
        assert_close(y[2], y0)
        assert_close(ladj[2], ladj0)
        assert_close(t.inv(y.clone()), x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,dim,context_dim", cases((3,)))
def test_wrong_event_shape_names_the_expected_shape(name, dim, context_dim):
    module, t, ctx, x = setup(name, dim, context_dim)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        t(torch.randn(4, dim + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        t.inv(torch.randn(4, dim - 1, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# log-det against autograd


@pytest.mark.parametrize(
    "name,dim,context_dim", cases((1, 2, 3, 10)) + cases((40,), names=JACOBIAN_40)
)
def test_log_det_matches_autograd_jacobian_float64(name, dim, context_dim):
    module, t, ctx, x = setup(name, dim, context_dim, batch=(3,))
    x = 1.5 * x
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    if dim <= 3:  # the full Jacobian: rows of the batch do not interact
        full = torch.autograd.functional.jacobian(lambda z: t.forward_and_log_det(z)[0], x)
        blocks = torch.stack([full[i, :, i, :] for i in range(3)])
        off = full.clone()
        for i in range(3):
            off[i, :, i, :] = 0
        assert off.abs().max() == 0, "rows of the batch interact"
    else:
        blocks = jacobian_blocks(t, x)
    assert_close(y, t.forward_and_log_det(x)[0])
    sign, logdet = torch.linalg.slogdet(blocks)
    assert (sign != 0).all()
    assert_close(ladj, logdet, atol=1e-6, rtol=1e-6)


#: Cases whose ``jacobian`` has a closed form (the others return ``None``: callers use autograd).
CLOSED_FORM_JACOBIAN = {"iaf", "iaf-stable", "iaf-scaled", "sinh-arcsinh", "sinh-arcsinh-hidden", "stack-iaf", "stack-none",
                        "planar", "householder", "stack-planar", "stack-planar-scaled", "stack-householder"}


@pytest.mark.parametrize("name,dim,context_dim", cases((1, 3, 10)) + cases((40,), names=["iaf", "stack-iaf", "planar", "householder"]))
def test_closed_form_jacobian_matches_autograd_float64(name, dim, context_dim):
    module, t, ctx, x = setup(name, dim, context_dim, batch=(5,))
    out = t.forward_and_jacobian(1.5 * x)
    if name not in CLOSED_FORM_JACOBIAN:
        assert out is None
        return
    y, jac, grad = out
    assert jac.shape == (5, dim, dim) and jac.dtype == torch.float64 and not jac.requires_grad and not y.requires_grad
    assert grad.shape == (5, dim) and not grad.requires_grad
    assert_close(y, t.forward_and_log_det(1.5 * x)[0], atol=1e-12, rtol=1e-12)
    assert_close(jac, jacobian_blocks(t, 1.5 * x), atol=1e-10, rtol=1e-10)
    assert_close(grad, log_det_gradient(t, 1.5 * x), atol=1e-10, rtol=1e-10)


def assert_structure(jac, structure):
    """``jac`` (..., D, D) is what ``structure`` says: lower triangular, diagonal, orthogonal, or anything."""
    if structure == "lower":
        assert torch.equal(jac.triu(1), torch.zeros_like(jac))
    elif structure == "diagonal":
        assert torch.equal(jac, torch.diag_embed(jac.diagonal(0, -2, -1)))
    elif structure == "orthogonal":
        assert_close(jac @ jac.transpose(-1, -2), torch.eye(jac.shape[-1], dtype=jac.dtype).expand(jac.shape), atol=1e-12, rtol=0)
    else:
        assert structure == "general"


@pytest.mark.parametrize("name,dim,context_dim", cases((1, 5)))
def test_jacobian_factors_have_their_structure_and_multiply_to_the_jacobian(name, dim, context_dim):
    """Every factor is what its ``jacobian_structure`` claims at random parameters; their product is ``forward_and_jacobian``'s."""
    module, t, ctx, x = setup(name, dim, context_dim, batch=(5,))
    out = t.jacobian_factors(x)
    if name not in CLOSED_FORM_JACOBIAN:
        assert out is None
        return
    y, factors = out
    assert_close(y, t.forward_and_log_det(x)[0], atol=1e-12, rtol=1e-12)
    for jac, _, structure in factors:
        assert_structure(jac, structure)
    if not factors:  # the empty stack
        assert name == "stack-none"
        return
    jac, grad = chain_closed_forms(factors)
    assert_close(jac, jacobian_blocks(t, x), atol=1e-10, rtol=1e-10)
    assert_close(grad, log_det_gradient(t, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name,dim,context_dim", cases((3,), names=sorted(CLOSED_FORM_JACOBIAN - {"stack-none"})))
def test_closed_form_jacobian_replayed_by_torch_jit_records_no_graph(name, dim, context_dim):
    """A ``torch.jit`` trace does not record ``no_grad``: the closed forms read detached parameters, so
    their replay with gradients on builds no autograd graph (and still gives the eager values)."""
    module, t, ctx, x = setup(name, dim, context_dim, batch=(5,))

    class Closed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module

        def forward(self, z, context):
            y, factors = bound(self.module, context).jacobian_factors(z)
            return (y,) + tuple(tensor for jac, grad, _ in factors for tensor in (jac, grad))

    closed = Closed()
    context = None if ctx is None else ctx.requires_grad_()
    inputs = [p for p in closed.parameters()] + ([] if ctx is None else [ctx])

    def replay(z, *inputs):  # the parameters and the context enter the trace as inputs (the same tensors), as under pyro.ops.jit
        return closed(z, context)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(replay, (x, *inputs), check_trace=False)
    with torch.jit.optimized_execution(False):
        replayed = traced(x, *inputs)
    eager = closed(x, ctx)
    assert not any(r.requires_grad for r in replayed)
    assert len(replayed) == len(eager)
    for r, e in zip(replayed, eager):
        assert_close(r, e, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["iaf", "iaf-stable", "stack-iaf", "planar", "householder"])
def test_closed_form_jacobian_of_a_float32_flow_at_float64_inputs(name):
    """A float64 input is promoted as by ``forward_and_log_det``: the same ``y``, a float64 Jacobian."""
    module = perturb(build(name, 4, 0, torch.float32), 0.3, fan_in=True)
    x = torch.randn(5, 4, dtype=torch.float64)
    y, jac, grad = module.forward_and_jacobian(x)
    assert y.dtype == jac.dtype == grad.dtype == torch.float64
    assert torch.equal(y, module.forward_and_log_det(x)[0])
    assert_close(jac, jacobian_blocks(module, x), atol=1e-5, rtol=1e-5)
    assert_close(grad, log_det_gradient(module, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", BATCH_SHAPES[1:])
@pytest.mark.parametrize("name", ["iaf", "stack-iaf", "sinh-arcsinh", "planar", "stack-householder"])
def test_closed_form_jacobian_batch_shapes(name, batch):
    module = perturb(build(name, 4, CTX), 0.5, fan_in=True)
    ctx = torch.randn(batch[-1:] + (CTX,), dtype=torch.float64)  # broadcast against the leading dims
    t = module.condition(ctx)
    x = torch.randn(batch + (4,), dtype=torch.float64)
    y, jac, grad = t.forward_and_jacobian(x)
    assert jac.shape == batch + (4, 4) and y.shape == x.shape and grad.shape == x.shape
    assert_close(grad, log_det_gradient(t, x), atol=1e-10, rtol=1e-10)
    flat = jac.reshape(-1, 4, 4)
    rows = x.reshape(-1, 4)
    contexts = ctx.expand(batch + (CTX,)).reshape(-1, CTX)
    for i in (0, rows.shape[0] - 1):
        single = module.condition(contexts[i : i + 1])
        assert_close(flat[i], jacobian_blocks(single, rows[i : i + 1])[0], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name,dim,context_dim", cases((2, 10)))
def test_log_det_float32(name, dim, context_dim):
    module, t, ctx, x = setup(name, dim, context_dim, dtype=torch.float32, batch=(3,))
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    assert y.dtype == ladj.dtype == torch.float32
    logdet = torch.linalg.slogdet(jacobian_blocks(t, x))[1]
    assert_close(ladj, logdet, atol=1e-3, rtol=1e-3)
    # and the float32 maths agrees with the same module in float64
    module64 = copy.deepcopy(module).double()
    t64 = bound(module64, None if ctx is None else ctx.double())
    y64, ladj64 = t64.forward_and_log_det(x.double())
    assert_close(y.double(), y64, atol=1e-4, rtol=1e-4)
    assert_close(ladj.double(), ladj64, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# inverse and caching


@pytest.mark.parametrize("name,dim,context_dim", cases((1, 3, 10)))
def test_inverse_round_trip_and_log_prob_of_fresh_values(name, dim, context_dim):
    module, t, ctx, x = setup(name, dim, context_dim, batch=(5,))
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    x_rec = t.inv(y.clone())  # a fresh tensor: the cache is not hit
    assert_close(x_rec, x, atol=1e-6, rtol=1e-6)
    x_rec2, ladj_inv = t.inverse_and_log_det(y.clone())
    assert_close(x_rec2, x, atol=1e-6, rtol=1e-6)
    assert_close(ladj_inv, ladj, atol=1e-6, rtol=1e-6)  # the forward log-det at the recovered x
    # TransformedDistribution.log_prob on values it did not sample goes through _inv_call
    q = dist.TransformedDistribution(base_dist(dim, torch.float64, (5,) if context_dim else ()), [t])
    lp = q.log_prob(y.detach().clone())
    assert_close(lp, q.base_dist.log_prob(x) - ladj, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,dim,context_dim", cases((3,)))
def test_cache_is_not_stale_after_an_inverse(name, dim, context_dim):
    module, t, ctx, x = setup(name, dim, context_dim)
    y = t(x)
    ref_y, ref_ladj = t.forward_and_log_det(x)
    y2 = y + torch.randn_like(y)
    x2 = t.inv(y2)  # replaces the cached triple
    assert_close(t.log_abs_det_jacobian(x, y), ref_ladj)
    assert_close(t(x), ref_y)
    assert_close(t.inv(y.clone()), x, atol=1e-6, rtol=1e-6)
    # the triple cached by the inverse is right too
    x2b = t.inv(y2)
    y2b = t(x2b)
    assert_close(y2b, y2)
    assert_close(t.log_abs_det_jacobian(x2b, y2b), t.forward_and_log_det(x2)[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,dim,context_dim", cases((3,), names=[n for n in NAMES if n != "stack-none"]))
def test_cache_follows_in_place_parameter_updates(name, dim, context_dim):
    module, t, ctx, x = setup(name, dim, context_dim)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    opt = torch.optim.SGD(module.parameters(), lr=0.2)
    (torch.randn_like(y) * y).sum().add(ladj.sum()).backward()  # |y|^2 would be flat for orthogonal maps
    opt.step()  # in-place update, as in training
    y_new = t(x)
    ladj_new = t.log_abs_det_jacobian(x, y_new)
    ref_y, ref_ladj = t.forward_and_log_det(x)
    assert_close(y_new, ref_y)
    assert_close(ladj_new, ref_ladj)
    if not context_dim:
        assert not torch.allclose(y_new, y), "the update did not change the map"
    else:  # a new conditioning sees the updated network
        assert not torch.allclose(module.condition(ctx)(x), y), "the update did not change the map"


# ---------------------------------------------------------------------------------------------
# invertibility at any parameters, extreme inputs, gradients


@pytest.mark.parametrize("scale", [1.0, 10.0, 1e3])
@pytest.mark.parametrize("name,dim,context_dim", cases((1, 3), names=ALWAYS_INVERTIBLE))
def test_invertible_for_any_raw_parameters(name, dim, context_dim, scale):
    module, t, ctx, x = setup(name, dim, context_dim, batch=(20,), scale=scale)
    x = x * torch.logspace(-2, 2, 20, dtype=x.dtype).unsqueeze(-1)
    y, ladj = t.forward_and_log_det(x)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    x_rec = t.inv(y.clone())
    # forward residual at machine precision relative to the size of the values involved
    assert_close(t.forward_and_log_det(x_rec)[0], y, atol=1e-9 * (1 + y.abs().max().item()), rtol=1e-9)
    if scale <= 10:
        assert_close(x_rec, x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,dim,context_dim", cases((3,)))
def test_extreme_inputs_give_finite_values_and_gradients(name, dim, context_dim):
    module, t, ctx, _ = setup(name, dim, context_dim, dtype=torch.float32, batch=(6,))
    x = torch.tensor([[1e3, -1e3, 1e3], [-1e3, -1e3, -1e3], [1e3, 0.0, -5.0],
                      [0.0, 0.0, 0.0], [500.0, -1e3, 1.0], [1e-3, 1e3, 1e2]])
    x.requires_grad_(True)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for n, p in trainable(module):
        assert p.grad is None or torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", ["iaf", "iaf-stable", "stack-iaf"])
@pytest.mark.parametrize("context_dim", [0, CTX])
def test_iaf_extreme_weights_stay_finite(name, context_dim):
    module, t, ctx, _ = setup(name, 4, context_dim, dtype=torch.float32, batch=(5,))
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(100.0)
    x = (1e3 * torch.randn(5, 4)).requires_grad_(True)
    t = bound(module, ctx)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for n, p in trainable(module):
        assert p.grad is None or torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("context_dim", [0, CTX])
def test_householder_zero_vector_is_finite(context_dim):
    module = build("householder", 3, context_dim, torch.float32)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    ctx = torch.randn(4, context_dim) if context_dim else None
    t = bound(module, ctx)
    x = torch.randn(4, 3, requires_grad=True)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    assert_close(y.norm(dim=-1), x.norm(dim=-1))  # still an orthogonal map
    (y.square().sum() + ladj.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for n, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 1e-30, 1e-8])
def test_radial_at_its_centre_is_finite(offset, dtype):
    module = perturb(build("radial", 3, 0, dtype), 1.0, fan_in=True)
    x = (module.z0.detach() + offset).expand(2, 3).clone().requires_grad_(True)
    y = module(x)
    ladj = module.log_abs_det_jacobian(x, y)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    (y.sum() + ladj.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for n, p in module.named_parameters():
        assert torch.isfinite(p.grad).all(), n
    assert_close(module.inv(y.detach().clone()), x.detach())


@pytest.mark.parametrize("name,dim,context_dim", cases((3,), names=[n for n in NAMES if n != "stack-none"]))
def test_every_parameter_gets_a_finite_gradient(name, dim, context_dim):
    module, t, ctx, x = setup(name, dim, context_dim, batch=(5,))
    if ctx is not None:
        ctx.requires_grad_(True)
        t = module.condition(ctx)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    (torch.randn_like(y) * y).sum().add(ladj.sum()).backward()
    params = trainable(module)
    assert params
    for n, p in params:
        assert p.grad is not None, f"{n} gets no gradient"
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"{n} gets an all-zero gradient at random parameters"
    if ctx is not None:
        assert torch.isfinite(ctx.grad).all() and ctx.grad.abs().sum() > 0


class _Maps(torch.nn.Module):
    """Forward at ``x`` and inverse at ``y`` of ``module`` (conditioned on ``ctx``), without caching."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x, y, ctx):
        t = bound(self.module, ctx)
        # one output: a constant log-det (volume-preserving maps) does not require grad on its own
        return torch.cat([out.reshape(-1) for out in t.forward_and_log_det(x) + t.inverse_and_log_det(y)])


@pytest.mark.parametrize("name,dim,context_dim", cases((3,), names=[n for n in NAMES if n != "stack-none"]))
def test_gradients_match_finite_differences(name, dim, context_dim):
    """Forward, log-det and inverse are differentiated correctly w.r.t. inputs, parameters and context
    (this covers hand-written backward passes, e.g. fused planar stacks, and implicit inverses)."""
    module, t, ctx, x = setup(name, dim, context_dim, batch=(2,))
    maps = _Maps(module)
    names = [n for n, p in maps.named_parameters() if p.requires_grad]
    params = [p.detach().clone().requires_grad_(True) for n, p in maps.named_parameters() if p.requires_grad]
    y = (t.forward_and_log_det(x)[0] + 0.3 * torch.randn_like(x)).detach().requires_grad_(True)
    x = x.requires_grad_(True)
    inputs = (x, y) + ((ctx.requires_grad_(True),) if ctx is not None else ())

    def fn(x, y, *rest):
        c = rest[0] if ctx is not None else None
        ps = rest[1:] if ctx is not None else rest
        return torch.func.functional_call(maps, dict(zip(names, ps)), (x, y, c))

    assert torch.autograd.gradcheck(fn, inputs + tuple(params), fast_mode=True, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,dim,context_dim", cases((3,), names=[n for n in NAMES if n != "stack-none"]))
def test_log_prob_of_fresh_values_is_differentiable(name, dim, context_dim):
    module, t, ctx, x = setup(name, dim, context_dim, batch=(5,))
    q = dist.TransformedDistribution(base_dist(dim, torch.float64, (5,) if context_dim else ()), [t])
    lp = q.log_prob(torch.randn(5, dim, dtype=torch.float64))
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    for n, p in trainable(module):
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert sum(p.grad.abs().sum() for _, p in trainable(module)) > 0


# ---------------------------------------------------------------------------------------------
# amortization


@pytest.mark.parametrize("name,dim,context_dim", cases((3,), amortized=(True,)))
def test_amortized_contexts(name, dim, context_dim):
    module = build(name, dim, context_dim)
    x = torch.randn(4, dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="context"):
        module(x)  # no context
    with pytest.raises(ValueError):
        module.condition(torch.randn(4, context_dim + 2, dtype=torch.float64))(x)
    # hypernetworks start at the init values for every context
    ctx1, ctx2 = torch.randn(2, 4, context_dim, dtype=torch.float64)
    layers = module.layers if isinstance(module, FlowStack) else [module]
    for layer in layers:
        if hasattr(layer, "hypernet") and not getattr(layer, "chained", False):
            raw1, raw2 = layer.raw_params(ctx1), layer.raw_params(ctx2)
            for key in raw1:
                assert_close(raw1[key], raw2[key])
    # after randomizing, the context changes the map
    perturb(module, 1.0, fan_in=True)
    assert not torch.allclose(module.condition(ctx1)(x), module.condition(ctx2)(x))


# ---------------------------------------------------------------------------------------------
# save / load, copies, dtypes


@pytest.mark.parametrize("name,dim,context_dim", cases((3,)))
def test_state_dict_round_trip(name, dim, context_dim):
    torch.manual_seed(1)
    module, t, ctx, x = setup(name, dim, context_dim)
    torch.manual_seed(2)
    fresh = build(name, dim, context_dim)
    fresh.load_state_dict(module.state_dict())
    for (n1, b1), (n2, b2) in zip(module.named_buffers(), fresh.named_buffers()):
        assert n1 == n2 and torch.equal(b1, b2), n1
    t2 = bound(fresh, ctx)
    y1, l1 = t.forward_and_log_det(x)
    y2, l2 = t2.forward_and_log_det(x)
    assert torch.equal(y1, y2) and torch.equal(l1, l2)
    assert torch.equal(t.inverse_and_log_det(y1)[0], t2.inverse_and_log_det(y1)[0])
    # a deep copy (after a cached call with a graph) reproduces the map too
    t(x.requires_grad_(True))
    clone = copy.deepcopy(module)
    assert torch.equal(bound(clone, ctx).forward_and_log_det(x)[0], y1)


@pytest.mark.parametrize("name,dim,context_dim", cases((3,)))
def test_float64_module_under_float32_default(name, dim, context_dim):
    assert torch.get_default_dtype() == torch.float32
    module, t, ctx, x = setup(name, dim, context_dim, dtype=torch.float64)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    x_rec = t.inv(y.clone())
    assert y.dtype == ladj.dtype == x_rec.dtype == torch.float64
    assert_close(x_rec, x, atol=1e-9, rtol=1e-9)  # float32 intermediates would lose this
    q = dist.TransformedDistribution(base_dist(dim, torch.float64, (4,) if context_dim else ()), [t])
    assert q.log_prob(y.clone()).dtype == torch.float64


@pytest.mark.parametrize("name,dim,context_dim", cases((3,)))
def test_float32_module_under_float64_default(name, dim, context_dim):
    torch.set_default_dtype(torch.float64)
    module, t, ctx, x = setup(name, dim, context_dim, dtype=torch.float32)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    x_rec = t.inv(y.clone())
    assert y.dtype == ladj.dtype == x_rec.dtype == torch.float32
    assert_close(x_rec, x, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Pyro integration


@pytest.mark.parametrize("name,dim,context_dim", cases((3,)))
def test_pyro_transformed_distributions(name, dim, context_dim):
    module = perturb(build(name, dim, context_dim), 1.0, fan_in=True)
    if context_dim:
        ctx = torch.randn(4, context_dim, dtype=torch.float64)
        cond = ConditionalTransformedDistribution(base_dist(dim, torch.float64, (4,)), [module])
        q = cond.condition(ctx)
        sample_shape, batch = (6,), (6, 4)
    else:
        q = dist.TransformedDistribution(base_dist(dim, torch.float64), [module])
        sample_shape, batch = (6,), (6,)
    z = q.rsample(sample_shape)
    assert z.shape == batch + (dim,)
    lp = q.log_prob(z)  # cached: no inverse
    assert lp.shape == batch and torch.isfinite(lp).all()
    assert_close(lp, q.log_prob(z.detach().clone()), atol=1e-6, rtol=1e-6)  # true inverse
    pyro.module("flow", module)  # registers as a Pyro module
    assert len(list(pyro.get_param_store().keys())) == len(list(module.parameters()))


# ---------------------------------------------------------------------------------------------
# the flow() factory


@pytest.mark.parametrize("kind", sorted(FAMILIES) + ["none"])
@pytest.mark.parametrize("context_dim", [0, CTX])
def test_flow_builds_every_kind(kind, context_dim):
    stack = flow(kind, 4, num_flows=3, context_dim=context_dim)
    assert isinstance(stack, FlowStack) and stack.dim == 4
    if kind == "none":
        assert len(stack) == 0
        return
    families = [layer for layer in stack if not isinstance(layer, Permute)]
    assert len(families) == 3 and all(isinstance(layer, FAMILIES[kind]) for layer in families)
    if kind == "iaf":
        assert [type(layer) for layer in stack] == [IAF, Permute, IAF, Permute, IAF]
    if kind == "householder" and context_dim:
        assert not getattr(stack[0], "chained", False)
        assert all(layer.chained and layer.context_dim == 4 for layer in stack[1:])
    t = bound(stack, torch.randn(5, context_dim) if context_dim else None)
    x = torch.randn(5, 4)
    assert t(x).shape == (5, 4)


def test_flow_passes_options_to_every_layer():
    stack = flow("sylvester", 4, num_flows=2, kind="triangular")
    assert [layer.kind for layer in stack] == ["triangular", "triangular"]
    stack = flow("coupling", 4, num_flows=3, form="additive", hidden=(8,))
    assert [layer.parity for layer in stack] == [0, 1, 0]
    assert all(layer.form == "additive" for layer in stack)
    stack = flow("iaf", 4, num_flows=2, stable=True)
    assert stack[0].stable and stack[2].stable
    assert torch.equal(stack[1].perm, torch.arange(3, -1, -1))  # reversal by default


def test_flow_none_is_the_identity():
    stack = flow("none", 3, num_flows=4)
    x = torch.randn(6, 3)
    y = stack(x)
    assert torch.equal(y, x)
    assert torch.equal(stack.log_abs_det_jacobian(x, y), torch.zeros(6))
    assert torch.equal(stack.inv(x.clone()), x)
    assert list(stack.parameters()) == []
    q = dist.TransformedDistribution(base_dist(3, torch.float32), [stack])
    assert_close(q.log_prob(x.clone()), q.base_dist.log_prob(x))


def test_flow_bad_arguments():
    with pytest.raises(ValueError, match="'spline'"):
        flow("spline", 3, 2)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="dim"):
            flow("planar", bad, 2)
    with pytest.raises(ValueError, match="num_flows"):
        flow("planar", 3, -1)
    with pytest.raises(ValueError, match="permutation"):
        flow("iaf", 3, 2, permutation="shuffled")


def test_stack_and_permute_validation():
    with pytest.raises(ValueError, match="dim"):
        FlowStack([])
    with pytest.raises(ValueError, match="layer 1"):
        FlowStack([Planar(3), Planar(4)])
    with pytest.raises(ValueError, match="permutation"):
        Permute([0, 0, 1])
    perm = Permute(torch.tensor([2, 0, 1]))
    assert set(perm.state_dict()) == {"perm", "inv_perm"}
    x = torch.randn(5, 3)
    assert torch.equal(perm.inv(perm(x).clone()), x)
