"""STL_ELBO and IW_ELBO (DReG / IWAE) with both flow guides and every flow family, in float64."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

from pyro_nfvi.guides import AmortizedFlowGuide, AutoFlowGuide, FastSVI
from pyro_nfvi.guides.path import PathDerivative, path_derivative, uses_path_derivative
from pyro_nfvi.objectives import IW_ELBO, STL_ELBO

FAMILIES = ["none", "planar", "radial", "householder", "iaf", "sylvester", "coupling"]
KINDS = FAMILIES + ["amortized"]
SIGMA = 0.7
X = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
XS = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.4, 1.2], [1.0, 0.0]], dtype=torch.float64)
#: the exact posterior of ``conjugate``: N(POST_MEAN, POST_SD^2 I)
POST_MEAN = X / (1 + SIGMA**2)
POST_SD = SIGMA / math.sqrt(1 + SIGMA**2)


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)


def conjugate(x=X):
    z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)


def shifted(x=X):
    """``conjugate`` with a model parameter ``b``: x ~ N(z + b, sigma^2)."""
    b = pyro.param("b", torch.tensor(0.2))
    z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.sample("x", dist.Normal(z + b, SIGMA).to_event(1), obs=x)


def vae(xs):
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=xs)


def hierarchical(xs):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(mu.unsqueeze(-1).expand(mu.shape + (2,)), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=xs)


def make_case(kind, perturb=0.0, seed=1):
    """``(model, guide, args)``: AutoFlowGuide on ``shifted`` for a family, AmortizedFlowGuide on ``hierarchical``."""
    if kind == "amortized":
        model, args = hierarchical, (XS,)
        guide = AmortizedFlowGuide(model, plate="data", flow="planar", num_flows=2, encoder_hidden=(8,), model_args=args)
    else:
        model, args = shifted, (X,)
        guide = AutoFlowGuide(model, flow=kind, num_flows=2, init_scale=0.5, model_args=args)
    if perturb:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in guide.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=gen))
    return model, guide, args


def params_of(model, guide, args):
    pyro.get_param_store().clear()
    model(*args)  # creates "b" where the model has it
    model_params = [pyro.param(n).unconstrained() for n in pyro.get_param_store().keys()]
    return model_params, list(guide.parameters())


def flat_grads(loss, params):
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([torch.zeros(p.numel()) if g is None else g.reshape(-1) for p, g in zip(params, grads)])


def mean_and_se(elbo, model, guide, args, params, reps, seed=0):
    pyro.set_rng_seed(seed)
    draws = torch.stack([flat_grads(elbo.differentiable_loss(model, guide, *args), params) for _ in range(reps)])
    return draws.mean(0), draws.std(0) / math.sqrt(reps), draws.var(0)


def assert_same_mean(a, b, z=5.0, floor=1e-7):
    (ma, sa, _), (mb, sb, _) = a, b
    bound = z * (sa**2 + sb**2).sqrt() + floor
    assert bool(((ma - mb).abs() <= bound).all()), ((ma - mb).abs() / bound).max()


# -- the path-derivative mechanism --------------------------------------------------------------
def test_path_derivative_is_scoped_to_the_guide():
    guide = AutoFlowGuide(conjugate, flow="planar", num_flows=2, model_args=())
    other = AutoFlowGuide(conjugate, flow="planar", num_flows=2, model_args=(), name="other")
    fn = pyro.poutine.trace(guide).get_trace().nodes["_AutoFlowGuide_latent"]["fn"]
    assert not isinstance(fn, PathDerivative)
    with path_derivative(guide):
        assert uses_path_derivative(guide) and not uses_path_derivative(other)
        fn = pyro.poutine.trace(guide).get_trace().nodes["_AutoFlowGuide_latent"]["fn"]
        assert isinstance(fn, PathDerivative)
    assert not uses_path_derivative(guide)


def test_amortized_nested_global_guide_is_switched_too():
    guide = make_case("amortized")[1]
    with path_derivative(guide):
        tr = pyro.poutine.trace(guide).get_trace(XS)
    aux = [s["fn"] for s in tr.nodes.values() if s["type"] == "sample" and s["infer"].get("is_auxiliary")]
    assert len(aux) == 2 and all(isinstance(fn, PathDerivative) for fn in aux)


# -- STL -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["none", "planar", "radial", "householder", "sylvester", "iaf"])
def test_stl_gradient_is_exactly_zero_at_the_posterior(family):
    """Flows that are orthogonal maps at initialisation, placed at the exact (isotropic) posterior."""
    guide = AutoFlowGuide(conjugate, flow=family, num_flows=2, init_scale=POST_SD,
                          init_loc_fn=init_to_value(values={"z": POST_MEAN}), model_args=())
    params = list(guide.parameters())
    trace_max = 0.0
    for seed in range(8):
        pyro.set_rng_seed(seed)
        g = flat_grads(STL_ELBO(max_plate_nesting=0).differentiable_loss(conjugate, guide), params)
        assert float(g.abs().max()) < 1e-6
        pyro.set_rng_seed(seed)
        trace_max = max(trace_max, float(flat_grads(Trace_ELBO().differentiable_loss(conjugate, guide), params).abs().max()))
    assert trace_max > 1e-2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("vectorize", [True, False])
def test_stl_loss_value_is_trace_elbo_on_the_same_draws(kind, vectorize):
    model, guide, args = make_case(kind, perturb=0.1)
    nesting = 1 if kind == "amortized" else 0
    pyro.set_rng_seed(3)
    stl = STL_ELBO(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=nesting)
    value = stl.differentiable_loss(model, guide, *args)
    pyro.set_rng_seed(3)
    ref = Trace_ELBO(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=nesting).loss(model, guide, *args)
    assert abs(value.item() - ref) < 1e-9
    pyro.set_rng_seed(3)
    assert abs(stl.loss(model, guide, *args) - ref) < 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_stl_is_unbiased(kind):
    model, guide, args = make_case(kind, perturb=0.2)
    model_params, guide_params = params_of(model, guide, args)
    params = model_params + guide_params
    stl = mean_and_se(STL_ELBO(num_particles=20), model, guide, args, params, reps=40)
    ref = mean_and_se(Trace_ELBO(num_particles=20, vectorize_particles=True), model, guide, args, params, reps=40, seed=1)
    assert_same_mean(stl, ref)


# -- IW / DReG -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gradient", ["dreg", "iwae"])
def test_iw_loss_is_renyi_alpha_zero(kind, gradient):
    model, guide, args = make_case(kind, perturb=0.1)
    for vectorize in (True, False):
        pyro.set_rng_seed(2)
        elbo = IW_ELBO(num_particles=5, gradient=gradient, vectorize_particles=vectorize, max_plate_nesting=1)
        value = elbo.differentiable_loss(model, guide, *args)
        pyro.set_rng_seed(2)
        ref = RenyiELBO(alpha=0, num_particles=5, vectorize_particles=vectorize, max_plate_nesting=1).loss(model, guide, *args)
        assert abs(value.item() - ref) < 1e-9
        pyro.set_rng_seed(2)
        assert abs(elbo.loss(model, guide, *args) - ref) < 1e-9


def test_iw_per_data_point_is_renyi_on_a_vae():
    """All sites inside the plate: Pyro's RenyiELBO then weights per data point too."""
    guide = AmortizedFlowGuide(vae, plate="data", flow="iaf", num_flows=2, encoder_hidden=(8,), model_args=(XS,))
    pyro.set_rng_seed(2)
    value = IW_ELBO(num_particles=6, plate="data", max_plate_nesting=1).differentiable_loss(vae, guide, XS)
    pyro.set_rng_seed(2)
    ref = RenyiELBO(alpha=0, num_particles=6, vectorize_particles=True, max_plate_nesting=1).loss(vae, guide, XS)
    assert abs(value.item() - ref) < 1e-9
    assert value.requires_grad


@pytest.mark.parametrize("kind", ["none", "planar", "iaf", "amortized"])
def test_dreg_is_unbiased(kind):
    model, guide, args = make_case(kind, perturb=0.1)
    model_params, guide_params = params_of(model, guide, args)
    params = model_params + guide_params
    dreg = mean_and_se(IW_ELBO(num_particles=10, gradient="dreg"), model, guide, args, params, reps=60)
    iwae = mean_and_se(IW_ELBO(num_particles=10, gradient="iwae"), model, guide, args, params, reps=60, seed=1)
    assert_same_mean(dreg, iwae)
    if model_params:  # the model's parameter gets the same (IWAE) estimate from both
        assert dreg[2][0] == pytest.approx(iwae[2][0], rel=0.5)


def test_dreg_per_data_point_is_unbiased():
    guide = AmortizedFlowGuide(vae, plate="data", flow="planar", num_flows=2, encoder_hidden=(8,), model_args=(XS,))
    params = list(guide.parameters())
    dreg = mean_and_se(IW_ELBO(num_particles=8, plate="data"), vae, guide, (XS,), params, reps=60)
    iwae = mean_and_se(IW_ELBO(num_particles=8, plate="data", gradient="iwae"), vae, guide, (XS,), params, reps=60, seed=1)
    assert_same_mean(dreg, iwae)


@pytest.mark.parametrize("num_particles", [10, 100])
def test_dreg_has_lower_guide_variance_than_iwae(num_particles):
    """Near the posterior (Tucker et al.'s regime): the guide gradient's variance drops by orders of magnitude."""
    guide = AutoFlowGuide(conjugate, flow="planar", num_flows=2, init_scale=1.2 * POST_SD,
                          init_loc_fn=init_to_value(values={"z": POST_MEAN + 0.1}), model_args=())
    params = list(guide.parameters())
    var = {g: mean_and_se(IW_ELBO(num_particles=num_particles, gradient=g), conjugate, guide, (), params, reps=30)[2].sum()
           for g in ("dreg", "iwae")}
    assert var["dreg"] < 0.1 * var["iwae"]


# -- training --------------------------------------------------------------------------------------
@pytest.fixture
def module_local():
    pyro.settings.set(module_local_params=True)
    yield
    pyro.settings.set(module_local_params=False)


@pytest.mark.parametrize("elbo", [STL_ELBO(num_particles=4), IW_ELBO(num_particles=8)], ids=["stl", "dreg"])
def test_fast_svi_reaches_the_posterior_mean(module_local, elbo):
    guide = AutoFlowGuide(conjugate, flow="planar", num_flows=2, model_args=())
    svi = FastSVI(conjugate, guide, loss=elbo, lr=0.05)
    for _ in range(300):
        svi.step()
    draws = guide.get_posterior().sample((4000,))
    assert torch.allclose(draws.mean(0), POST_MEAN, atol=0.08)


@pytest.mark.parametrize("elbo", [STL_ELBO(num_particles=4), IW_ELBO(num_particles=8)], ids=["stl", "dreg"])
def test_svi_reaches_the_posterior_mean(elbo):
    guide = AutoFlowGuide(conjugate, flow="none", model_args=())
    svi = SVI(conjugate, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    for _ in range(500):
        svi.step()
    assert torch.allclose(guide.loc, POST_MEAN, atol=0.05)  # the Gaussian's mean
    assert torch.allclose(torch.nn.functional.softplus(guide.scale_raw), torch.full((3,), POST_SD), atol=0.05)


def test_fast_svi_trains_an_amortized_guide_per_data_point(module_local):
    guide = AmortizedFlowGuide(vae, plate="data", flow="sylvester", num_flows=2, encoder_hidden=(8,), model_args=(XS,))
    svi = FastSVI(vae, guide, loss=IW_ELBO(num_particles=4, plate="data"), lr=0.01)
    losses = [svi.step(XS) for _ in range(20)]
    assert all(math.isfinite(v) for v in losses)


# -- errors ----------------------------------------------------------------------------------------
def test_clear_errors():
    guide = AutoNormal(conjugate)
    with pytest.raises(TypeError, match="AutoFlowGuide, AmortizedFlowGuide"):
        STL_ELBO().differentiable_loss(conjugate, guide)
    with pytest.raises(TypeError, match="AutoFlowGuide, AmortizedFlowGuide"):
        IW_ELBO().loss(conjugate, guide)
    with pytest.raises(TypeError, match="AutoFlowGuide, AmortizedFlowGuide"):
        with path_derivative(guide):
            pass
    IW_ELBO(gradient="iwae").loss(conjugate, guide)  # the plain IWAE gradient takes any guide
    for cls in (STL_ELBO, IW_ELBO):
        with pytest.raises(ValueError, match="num_particles"):
            cls(num_particles=0)
    with pytest.raises(ValueError, match="gradient"):
        IW_ELBO(gradient="vimco")
    flow_guide = AmortizedFlowGuide(vae, plate="data", flow="planar", num_flows=1, encoder_hidden=(8,), model_args=(XS,))
    with pytest.raises(ValueError, match="no plate named 'batch'"):
        IW_ELBO(plate="batch").differentiable_loss(vae, flow_guide, XS)
    auto = AutoFlowGuide(vae, flow="planar", num_flows=1, model_args=(XS,))
    with pytest.raises(ValueError, match="guide site '_AutoFlowGuide_latent' lies outside plate 'data'"):
        IW_ELBO(plate="data").differentiable_loss(vae, auto, XS)


def centered(xs):
    """A centered hierarchical model (``z_i ~ N(mu, 1)``): ``AutoFlowGuide`` decenters ``z``."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, SIGMA), obs=xs[:, 0])


def with_unused_param(model):
    """``model`` plus a model parameter that nothing reads: it only makes the model 'have parameters'."""
    def wrapped(*args):
        pyro.param("unused", torch.tensor(1.0))
        return model(*args)
    return wrapped


@pytest.mark.parametrize("kind", FAMILIES + ["amortized", "decentered"])
@pytest.mark.parametrize("vectorize", [True, False])
def test_dreg_one_backward_form_equals_the_two_pass_form(kind, vectorize):
    """Without model parameters DReG's guide gradient is ``grad sum_i sg(w_i^2) log w_i`` (one backward);
    with them it takes an extra backward to the draws; on the same draws both give the same gradient."""
    if kind == "decentered":
        model, args = centered, (XS,)
        guide = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=args)
        assert guide.decentered
    else:
        model, guide, args = make_case(kind, perturb=0.1)
        model = conjugate if model is shifted else model
    params = list(guide.parameters())
    elbo = IW_ELBO(num_particles=6, vectorize_particles=vectorize, max_plate_nesting=1)  # no guessing run
    grads = []
    for m in (model, with_unused_param(model)):
        pyro.get_param_store().clear()
        pyro.set_rng_seed(3)
        grads.append(flat_grads(elbo.differentiable_loss(m, guide, *args), params))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-8, atol=1e-10)


# -- closed-form Jacobians ------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    dict(flow="iaf"),
    dict(flow="iaf", marginals="sinh_arcsinh"),
    dict(flow="iaf", base="full", precondition=True),
    dict(flow="iaf", stable=True),
    dict(flow="householder", marginals="sinh_arcsinh"),
    dict(flow="planar"),
    dict(flow="none"),
])
def test_path_gradient_from_closed_form_jacobians_equals_autograd(options, monkeypatch):
    """Every map of these guides has a closed-form Jacobian; the score pushed factor by factor gives autograd's gradients."""
    import pyro_nfvi.guides.path as path_module
    from pyro_nfvi.transforms.jacobian import jacobian_factors

    model, args = shifted, (X,)
    guide = AutoFlowGuide(model, num_flows=2, init_scale=0.5, model_args=args, **options)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    params = params_of(model, guide, args)[1]
    used = []

    def spy(transforms, inputs):
        out = jacobian_factors(transforms, inputs)
        used.append([structure for _, _, structure in out])
        return out

    monkeypatch.setattr(path_module, "jacobian_factors", spy)
    pyro.set_rng_seed(0)
    closed = flat_grads(STL_ELBO(num_particles=4).differentiable_loss(model, guide, *args), params)
    assert used and all(used)
    expected = {"iaf": "lower", "householder": "orthogonal", "planar": "general", "none": "diagonal"}[options["flow"]]
    assert expected in used[0]
    monkeypatch.setattr(path_module, "jacobian_factors", lambda transforms, inputs: None)
    pyro.set_rng_seed(0)
    auto = flat_grads(STL_ELBO(num_particles=4).differentiable_loss(model, guide, *args), params)
    assert float(closed.abs().max()) > 1e-3
    assert torch.allclose(closed, auto, atol=1e-10, rtol=1e-8)
