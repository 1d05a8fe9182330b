"""Tests of the fused planar stack (pyro_nfvi/transforms/fused.py) and its dispatch from FlowStack."""
import importlib
import inspect
import math
import pkgutil

import pytest
import torch

import pyro_nfvi.transforms
from pyro_nfvi.transforms import Planar, Radial, flow
from pyro_nfvi.transforms.fused import fused_planar, fused_planar_enabled, planar_run_params, use_fused_planar
from pyro_nfvi.transforms.planar import planar_log_det, planar_uhat
from pyro_nfvi.transforms.runs import PlanarRun, forward_layers, plan_layers, split_runs
from pyro_nfvi.transforms.stack import FlowStack
from flowcheck import randomize as _randomize

TOL = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}


def _value_and_grads(fn, inputs, fused):
    """Run ``fn`` with the fused path on or off; return outputs and grads of a random projection."""
    with use_fused_planar(fused):
        y, ld = fn()
    gen = torch.Generator().manual_seed(123)
    wy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
    wl = torch.randn(ld.shape, generator=gen, dtype=torch.float64).to(ld.dtype)
    grads = torch.autograd.grad((y * wy).sum() + (ld * wl).sum(), inputs, allow_unused=True)
    return y.detach(), ld.detach(), grads


def _assert_same(fn, inputs, dtype):
    y1, ld1, g1 = _value_and_grads(fn, inputs, True)
    y0, ld0, g0 = _value_and_grads(fn, inputs, False)
    torch.testing.assert_close(y1, y0, **TOL[dtype])
    torch.testing.assert_close(ld1, ld0, **TOL[dtype])
    assert len(g1) == len(inputs)
    for a, b in zip(g1, g0):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL[dtype])


# -- gradcheck of the fused node ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "x_shape, p_batch",
    [
        ((5, 3), ()),  # shared parameters (owned stack)
        ((3,), ()),  # a single point
        ((2, 4, 3), (4,)),  # per-point parameters, vectorized particles
        ((4, 3), (4,)),  # per-point parameters, one particle
        ((2, 1, 3), (4,)),  # x broadcast against the parameters
        ((4, 2, 3), (4, 1)),  # parameters broadcast inside the trailing dims
        ((2, 4, 3), (1, 4)),  # leading size-1 parameter dims
    ],
)
def test_gradcheck(x_shape, p_batch):
    torch.manual_seed(0)
    K, D = 3, x_shape[-1]
    opts = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(x_shape, **opts)
    u = torch.randn((K,) + p_batch + (D,), **opts)
    w = torch.randn((K,) + p_batch + (D,), **opts)
    b = torch.randn((K,) + p_batch, **opts)
    wu = torch.randn((K,) + p_batch, **opts)
    assert torch.autograd.gradcheck(fused_planar, (x, u, w, b, wu))


def test_fused_planar_matches_planar_maths():
    torch.manual_seed(1)
    K, D = 4, 3
    x = torch.randn(6, D, dtype=torch.float64)
    raw_u, w, b = torch.randn(K, D, dtype=torch.float64), torch.randn(K, D, dtype=torch.float64), torch.randn(K)
    b = b.double()
    uhat, wu = planar_uhat(raw_u, w)
    y, ld = fused_planar(x, uhat, w, b, wu)
    z, total = x, torch.zeros(6, dtype=torch.float64)
    for k in range(K):
        a = (z * w[k]).sum(-1) + b[k]
        total = total + planar_log_det(a, wu[k])
        z = z + uhat[k] * torch.tanh(a).unsqueeze(-1)
    torch.testing.assert_close(y, z, **TOL[torch.float64])
    torch.testing.assert_close(ld, total, **TOL[torch.float64])


# -- equality with the per-layer path ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [(7,), (3, 5)])
def test_owned_stack_matches_layer_loop(dtype, batch):
    torch.manual_seed(2)
    D = 3
    stack = flow("planar", D, 5).to(dtype)
    _randomize(stack)
    x = torch.randn(batch + (D,), dtype=dtype, requires_grad=True)
    inputs = [x] + list(stack.parameters())
    _assert_same(lambda: stack.forward_and_log_det(x), inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("particles", [None, 3])
def test_amortized_stack_matches_layer_loop(dtype, particles):
    torch.manual_seed(3)
    B, C, D = 4, 5, 3
    stack = flow("planar", D, 4, context_dim=C).to(dtype)
    _randomize(stack, 0.5)
    ctx = torch.randn(B, C, dtype=dtype, requires_grad=True)
    shape = (B, D) if particles is None else (particles, B, D)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    inputs = [x, ctx] + list(stack.parameters())
    _assert_same(lambda: stack.condition(ctx).forward_and_log_det(x), inputs, dtype)


def test_bound_raw_params_match_layer_loop():
    # the guides' path: raws from stack.raw_params(h), then stack.bind(raws)
    torch.manual_seed(4)
    B, C, D = 3, 4, 2
    stack = flow("planar", D, 3, context_dim=C).double()
    h = torch.randn(B, C, dtype=torch.float64)
    raws = stack.raw_params(h)
    leaves = [t.detach().requires_grad_() for raw in raws for t in raw.values()]
    it = iter(leaves)
    raws = [{name: next(it) for name in raw} for raw in raws]
    x = torch.randn(2, B, D, dtype=torch.float64, requires_grad=True)
    _assert_same(lambda: stack.bind(raws).forward_and_log_det(x), [x] + leaves, torch.float64)


def test_mixed_layers_split_into_runs():
    # owned and amortized planar layers in one run, and a radial layer between runs
    torch.manual_seed(5)
    D, C, B = 3, 4, 5
    layers = [Planar(D), Planar(D, context_dim=C), Planar(D), Radial(D), Planar(D), Planar(D), Planar(D, context_dim=C)]
    stack = FlowStack(layers).double()
    _randomize(stack, 0.5)
    ctx = torch.randn(B, C, dtype=torch.float64)
    x = torch.randn(2, B, D, dtype=torch.float64, requires_grad=True)
    inputs = [x] + list(stack.parameters())
    _assert_same(lambda: stack.condition(ctx).forward_and_log_det(x), inputs, torch.float64)


def _graph_has(tensor, name):
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if name in type(fn).__name__:
            return True
        todo.extend(f for f, _ in fn.next_functions)
    return False


def test_dispatch_uses_fused_node_for_runs_only():
    x = torch.randn(4, 2, requires_grad=True)
    y, _ = flow("planar", 2, 3).forward_and_log_det(x)
    assert _graph_has(y, "FusedPlanar")
    y, _ = flow("planar", 2, 1).forward_and_log_det(x)
    assert not _graph_has(y, "FusedPlanar")
    with use_fused_planar(False):
        assert not fused_planar_enabled()
        y, _ = flow("planar", 2, 3).forward_and_log_det(x)
    assert not _graph_has(y, "FusedPlanar")
    assert fused_planar_enabled()


def test_no_grad_and_inverse_round_trip():
    torch.manual_seed(6)
    stack = flow("planar", 3, 4).double()
    _randomize(stack, 0.5)
    x = torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        y, ld = stack.forward_and_log_det(x)
        with use_fused_planar(False):
            y0, ld0 = stack.forward_and_log_det(x)
    assert y.grad_fn is None
    torch.testing.assert_close(y, y0, **TOL[torch.float64])
    torch.testing.assert_close(ld, ld0, **TOL[torch.float64])
    x_back, ld_inv = stack.inverse_and_log_det(y)
    torch.testing.assert_close(x_back, x, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(ld_inv, ld, rtol=1e-7, atol=1e-8)


def test_jit_trace_falls_back_to_layer_maths():
    # a traced graph must not record the fused node's in-place ops (JitTrace_ELBO replays the trace
    # with inputs that require grad, where out= ops fail)
    torch.manual_seed(7)
    stack = flow("planar", 2, 3).requires_grad_(False)
    _randomize(stack, 0.5)

    def f(x):
        y, ld = stack.forward_and_log_det(x)
        return (y * y).sum() + ld.sum()

    traced = torch.jit.trace(f, (torch.randn(5, 2),), check_trace=False)
    x = torch.randn(5, 2, requires_grad=True)
    out, ref = traced(x), f(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0], rtol=1e-4, atol=1e-5)


# -- extreme parameters --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("regime", ["w_zero", "wu_very_negative"])
def test_extreme_regimes_finite_and_equal(dtype, regime):
    torch.manual_seed(8)
    D, K = 2, 3
    stack = flow("planar", D, K).to(dtype)
    with torch.no_grad():
        for layer in stack:
            layer.b.zero_()
            if regime == "w_zero":
                layer.w.zero_()
                layer.u.copy_(torch.randn(D))
            else:
                w = torch.randn(D, dtype=dtype)
                layer.w.copy_(w)
                layer.u.copy_(-2000.0 * w / (w * w).sum())  # w . u = -2000: w . u-hat -> -1
    # a zero row gives a = 0 exactly in the first layer, where the log-det is ~ w.u-hat + 1
    x = torch.cat([torch.zeros(1, D, dtype=dtype), torch.randn(5, D, dtype=dtype)]).requires_grad_()
    inputs = [x] + list(stack.parameters())
    y1, ld1, g1 = _value_and_grads(lambda: stack.forward_and_log_det(x), inputs, True)
    assert torch.isfinite(y1).all() and torch.isfinite(ld1).all()
    assert all(torch.isfinite(g).all() for g in g1)
    if regime == "wu_very_negative":
        assert ld1[0] < -1000  # the map is (nearly) singular at a = 0, in log space
    y0, ld0, g0 = _value_and_grads(lambda: stack.forward_and_log_det(x), inputs, False)
    torch.testing.assert_close(y1, y0, **TOL[dtype])
    torch.testing.assert_close(ld1, ld0, **TOL[dtype])
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, **TOL[dtype])


# -- helpers and errors ---------------------------------------------------------------------------------
def test_planar_run_params_owned_and_bound():
    D, C = 3, 2
    owned = [Planar(D), Planar(D)]
    u, w, b, wu = planar_run_params(owned)
    assert u.shape == (2, D) and b.shape == (2,) and wu.shape == (2,)
    torch.testing.assert_close(u[1], owned[1].params()["u"])
    amortized = Planar(D, context_dim=C)
    raw = amortized.raw_params(torch.randn(5, C))
    u, w, b, wu = planar_run_params([owned[0], amortized], [None, raw])
    assert u.shape == (2, 5, D) and wu.shape == (2, 5)
    torch.testing.assert_close(u[1], amortized.constrain(raw)["u"])
    with pytest.raises(TypeError, match="planar_run_params"):
        planar_run_params([Radial(D)])
    with pytest.raises(ValueError, match="layer 1 is amortized"):
        planar_run_params([owned[0], amortized])


def test_forward_layers_empty_and_errors():
    x = torch.randn(4, 2)
    y, ld = forward_layers([], x)
    assert y is x and ld.shape == (4,) and not ld.any()
    K, D = 2, 2
    u, w = torch.randn(K, D), torch.randn(K, D)
    with pytest.raises(ValueError, match="fused_planar"):
        fused_planar(torch.randn(4, 3), u, w, torch.zeros(K), torch.zeros(K))
    with pytest.raises(ValueError, match="b and wu"):
        fused_planar(torch.randn(4, 2), u, w, torch.zeros(K + 1), torch.zeros(K))
    with pytest.raises(TypeError, match="x must be a tensor"):
        fused_planar([1.0, 2.0], u, w, torch.zeros(K), torch.zeros(K))
    with pytest.raises(TypeError, match="enabled must be a bool"):
        with use_fused_planar(1):
            pass


def test_log_det_is_log_of_jacobian_determinant():
    # an independent check of the fused log-det: autograd Jacobian of the fused map
    torch.manual_seed(9)
    stack = flow("planar", 3, 4).double()
    _randomize(stack, 0.7)
    x = torch.randn(3, dtype=torch.float64)
    with torch.no_grad():
        _, ld = stack.forward_and_log_det(x)
    jac = torch.autograd.functional.jacobian(lambda v: stack.forward_and_log_det(v)[0], x)
    sign, logdet = torch.linalg.slogdet(jac)
    assert sign > 0
    assert math.isclose(ld.item(), logdet.item(), rel_tol=1e-9, abs_tol=1e-10)


# -- higher derivatives, torch.func and torch.compile ---------------------------------------------------
def _per_layer_forward(stack, x):
    """The reference: every planar layer's own maths, one after the other (no run, no fused node)."""
    total = 0.0
    for layer in stack:
        x, ld = layer.forward_and_log_det(x)
        total = total + ld
    return x, total


def _log_density(forward, z):
    """``log N(z) - log|det J|``: the log-density of ``q`` at ``f(z)``, as a Laplace warm start uses it."""
    y, ld = forward(z)
    return -0.5 * (z * z).sum(-1) - ld + 0.1 * (y * y).sum(-1)


def _random_planar_stack(K=4, D=3, seed=10):
    torch.manual_seed(seed)
    stack = flow("planar", D, K).double()
    _randomize(stack, 0.7)
    return stack


def test_hessian_through_the_fused_node_matches_per_layer():
    # the node was once_differentiable: create_graph=True raised or gave wrong second derivatives
    stack = _random_planar_stack()
    z = torch.randn(3, dtype=torch.float64)
    y, _ = stack.forward_and_log_det(z.requires_grad_())
    assert _graph_has(y, "FusedPlanar")  # the fused node is on the path being differentiated twice
    hess = torch.autograd.functional.hessian(lambda v: _log_density(stack.forward_and_log_det, v), z)
    ref = torch.autograd.functional.hessian(lambda v: _log_density(lambda u: _per_layer_forward(stack, u), v), z)
    torch.testing.assert_close(hess, ref, rtol=1e-9, atol=1e-10)


def test_double_backward_reaches_the_parameters():
    stack = _random_planar_stack()
    params = list(stack.parameters())

    def second(forward):
        z = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
        (g,) = torch.autograd.grad(_log_density(forward, z).sum(), z, create_graph=True)
        return torch.autograd.grad(g.square().sum(), params)

    for a, b in zip(second(stack.forward_and_log_det), second(lambda u: _per_layer_forward(stack, u))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("x_shape, p_batch", [((4, 3), ()), ((2, 4, 3), (4,))])
def test_gradgradcheck(x_shape, p_batch):
    torch.manual_seed(11)
    K, D = 2, x_shape[-1]
    opts = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(x_shape, **opts)
    u, w = torch.randn((K,) + p_batch + (D,), **opts), torch.randn((K,) + p_batch + (D,), **opts)
    b, wu = torch.randn((K,) + p_batch, **opts), torch.randn((K,) + p_batch, **opts)
    assert torch.autograd.gradgradcheck(fused_planar, (x, u, w, b, wu))


def test_torch_func_transforms_match_per_layer():
    # the fused node has no functorch rules: torch.func.grad / vmap / jacrev used to raise
    stack = _random_planar_stack()
    x = torch.randn(6, 3, dtype=torch.float64)
    fused = lambda v: stack.forward_and_log_det(v)  # noqa: E731
    ref = lambda v: _per_layer_forward(stack, v)  # noqa: E731
    jac = torch.func.jacrev(lambda v: fused(v)[0])(x[0])
    torch.testing.assert_close(jac, torch.func.jacrev(lambda v: ref(v)[0])(x[0]), rtol=1e-10, atol=1e-12)
    vm = torch.func.vmap(lambda v: fused(v)[1])(x)
    torch.testing.assert_close(vm, ref(x)[1], rtol=1e-10, atol=1e-12)
    g = torch.func.grad(lambda v: fused(v)[1].sum())(x)
    torch.testing.assert_close(g, torch.func.grad(lambda v: ref(v)[1].sum())(x), rtol=1e-10, atol=1e-12)
    per_point = torch.func.vmap(torch.func.jacrev(lambda v: fused(v)[0]))(x)
    assert per_point.shape == (6, 3, 3)
    # gradients w.r.t. the parameters through functional_call (parameters swapped for wrapped tensors)
    params = {k: v.detach() for k, v in stack.named_parameters()}
    grads = torch.func.grad(lambda p: torch.func.functional_call(stack, p, (x,)).square().sum())(params)
    stack.zero_grad()
    stack.forward_and_log_det(x)[0].square().sum().backward()
    for name, p in stack.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12)


def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    stack = _random_planar_stack()
    amortized = flow("planar", 3, 4, context_dim=2).double()
    _randomize(amortized, 0.5)
    ctx = torch.randn(5, 2, dtype=torch.float64)

    def f(v):
        y, ld = stack.forward_and_log_det(v)
        y2, ld2 = amortized.condition(ctx).forward_and_log_det(y)
        return y2, ld + ld2

    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y, ld = torch.compile(f, backend="eager")(x)  # eager backend: dynamo tracing only, no codegen
    y0, ld0 = f(x)
    torch.testing.assert_close(y, y0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ld, ld0, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(ld.sum() + y.square().sum(), x)
    (g0,) = torch.autograd.grad(ld0.sum() + y0.square().sum(), x)
    torch.testing.assert_close(g, g0, rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()


# -- one dispatch point -----------------------------------------------------------------------------------
def test_plan_layers_is_the_one_dispatch_point():
    D, C = 3, 4
    assert split_runs([True, True, False, True]) == [(0, 2, True), (2, 3, False), (3, 4, False)]
    # owned and amortized planar layers bound in one stack form ONE run (constrained once, one node);
    # the old FlowStack.bind only grouped amortized layers and left the rest to a second scan
    stack = FlowStack([Planar(D), Planar(D, context_dim=C), Planar(D), Radial(D, context_dim=C), Planar(D)]).double()
    _randomize(stack, 0.5)
    ctx = torch.randn(6, C, dtype=torch.float64)
    bound = stack.condition(ctx)
    assert [type(t).__name__ for t in bound.layers] == ["PlanarRun", "ConditionedFlow", "Planar"]
    assert len(bound.layers[0].layers) == 3
    x = torch.randn(2, 6, D, dtype=torch.float64, requires_grad=True)
    y, ld = bound.forward_and_log_det(x)
    assert _graph_has(y, "FusedPlanar")
    y0, ld0 = x, 0.0
    for layer, raw in zip(stack, stack.raw_params(ctx)):
        y0, l = (layer if raw is None else layer.bind(raw)).forward_and_log_det(y0)
        ld0 = ld0 + l
    torch.testing.assert_close(y, y0, **TOL[torch.float64])
    torch.testing.assert_close(ld, ld0, **TOL[torch.float64])
    # already-bound planar layers in a plain list join a run too
    steps = plan_layers([Planar(D), Planar(D, context_dim=C).condition(ctx.float())])
    assert len(steps) == 1 and isinstance(steps[0], PlanarRun)


def test_docstring_maths_renders():
    # "\tanh" and "\frac" in fused.py's non-raw module docstring were a tab and a form feed
    doc = importlib.import_module("pyro_nfvi.transforms.fused").__doc__
    assert r"\tanh" in doc and r"\frac" in doc
    for info in pkgutil.iter_modules(pyro_nfvi.transforms.__path__):
        module = importlib.import_module(f"pyro_nfvi.transforms.{info.name}")
        members = [obj for _, obj in inspect.getmembers(module)]
        objects = [module] + [obj for obj in members if getattr(obj, "__module__", None) == module.__name__]
        for obj in objects:
            doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else ""
            bad = sorted({c for c in doc if ord(c) < 32 and c != "\n"})
            assert not bad, f"{module.__name__}.{getattr(obj, '__name__', '')}: control characters {bad} in docstring"
