"""JitIW_ELBO and JitSTL_ELBO: the compiled estimators give the eager ones' loss and gradient on the same draws."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

from pyro_nfvi.guides import AutoFlowGuide
from pyro_nfvi.objectives import IW_ELBO, STL_ELBO, JitIW_ELBO, JitSTL_ELBO
from pyro_nfvi.targets.bayes import eight_schools, hierarchical_logistic

GUIDES = {
    "iaf": dict(flow="iaf"),
    "iaf-sinh-arcsinh": dict(flow="iaf", marginals="sinh_arcsinh"),
    "iaf-stable-full": dict(flow="iaf", stable=True, base="full"),
    "iaf-preconditioned": dict(flow="iaf", precondition=True),
    "planar": dict(flow="planar"),
    "householder": dict(flow="householder"),
    "none": dict(flow="none"),
}
PAIRS = {"dreg": (IW_ELBO, JitIW_ELBO), "stl": (STL_ELBO, JitSTL_ELBO)}


@pytest.fixture(autouse=True)
def _clean():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _perturbed(model, args, options, scale=0.05):
    guide = AutoFlowGuide(model, num_flows=2, model_args=args, **options)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return guide


@pytest.mark.parametrize("estimator", sorted(PAIRS))
@pytest.mark.parametrize("name", sorted(GUIDES))
def test_compiled_estimator_equals_the_eager_one_on_eight_schools(name, estimator):
    """Pyro's eight schools (a plate, a HalfCauchy scale): same loss, same gradient, at perturbed parameters."""
    model, args = eight_schools()
    guide = _perturbed(model, args, GUIDES[name])
    eager_cls, jit_cls = PAIRS[estimator]
    eager = eager_cls(num_particles=4, max_plate_nesting=1)
    compiled = jit_cls(num_particles=4, max_plate_nesting=1, ignore_jit_warnings=True)
    params = list(guide.parameters())
    compiled.differentiable_loss(model, guide, *args)  # compiles (its parameter capture draws once)
    out = []
    for objective in (eager, compiled):
        pyro.set_rng_seed(1)
        loss = objective.differentiable_loss(model, guide, *args)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append((loss.detach(), torch.cat([torch.zeros(p.numel()) if g is None else g.reshape(-1) for p, g in zip(params, grads)])))
    (loss_e, grad_e), (loss_j, grad_j) = out
    assert grad_e.abs().max() > 1e-3
    assert torch.allclose(loss_e, loss_j, rtol=1e-5)
    assert torch.allclose(grad_e, grad_j, rtol=1e-4, atol=1e-5 * float(grad_e.abs().max()))


@pytest.mark.parametrize("name", ["iaf-sinh-arcsinh", "none", "planar"])
def test_compiled_dreg_follows_the_parameters_after_its_trace(name):
    """The compiled graph is not frozen at its trace: after 60 SVI steps it gives the eager loss and gradient."""
    model, args = hierarchical_logistic(num_groups=5)
    guide = _perturbed(model, args, GUIDES[name])
    elbo = JitIW_ELBO(num_particles=4, ignore_jit_warnings=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    losses = [svi.step(*args) for _ in range(60)]
    assert len(set(losses)) == len(losses)
    assert sum(losses[-10:]) < sum(losses[:10])
    eager = IW_ELBO(num_particles=4, max_plate_nesting=1)
    eager.differentiable_loss(model, guide, *args)
    params = list(guide.parameters())
    out = []
    for objective in (eager, elbo):
        pyro.set_rng_seed(5)
        loss = objective.differentiable_loss(model, guide, *args)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append((float(loss), torch.cat([torch.zeros(p.numel()) if g is None else g.reshape(-1) for p, g in zip(params, grads)])))
    (loss_e, grad_e), (loss_j, grad_j) = out
    assert abs(loss_j - loss_e) < 1e-4 * abs(loss_e)
    assert torch.allclose(grad_e, grad_j, rtol=1e-3, atol=1e-4 * float(grad_e.abs().max()))


@pytest.mark.parametrize("flow", ["radial", "coupling"])
def test_a_guide_without_closed_forms_is_refused_when_compiled(flow):
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    guide = AutoFlowGuide(model, flow=flow, num_flows=2, model_args=())
    with pytest.raises(NotImplementedError, match="no closed form"):
        JitIW_ELBO(num_particles=2, ignore_jit_warnings=True).differentiable_loss(model, guide)
    assert torch.isfinite(IW_ELBO(num_particles=2).differentiable_loss(model, guide))  # the eager form works


def test_jit_stl_differentiable_loss_is_not_pyros_doubled_gradient():
    """Pyro 1.9's ``JitTrace_ELBO.differentiable_loss`` doubles reparameterised gradients; ``JitSTL_ELBO``'s does not."""
    from pyro.infer import JitTrace_ELBO, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    guide = AutoNormal(model)
    guide()
    loc = pyro.param("AutoNormal.locs.z").unconstrained()
    grads = {}
    for cls in (Trace_ELBO, JitTrace_ELBO):
        elbo = cls(ignore_jit_warnings=True)
        elbo.differentiable_loss(model, guide)
        pyro.set_rng_seed(0)
        grads[cls] = torch.autograd.grad(elbo.differentiable_loss(model, guide), loc)[0]
    assert torch.allclose(grads[JitTrace_ELBO], 2 * grads[Trace_ELBO])  # the upstream defect this class avoids
    flow_guide = AutoFlowGuide(model, flow="none", model_args=(), name="stl2")
    params = list(flow_guide.parameters())
    eager, compiled = STL_ELBO(num_particles=3, max_plate_nesting=0), JitSTL_ELBO(num_particles=3, max_plate_nesting=0)
    compiled.differentiable_loss(model, flow_guide)
    out = []
    for objective in (eager, compiled):
        pyro.set_rng_seed(2)
        out.append(torch.autograd.grad(objective.differentiable_loss(model, flow_guide), params))
    for a, b in zip(*out):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_draw_without_maps_compiles_in_closed_form():
    """A Normal posterior without transforms: its path derivative needs no backward pass, so it traces."""
    from pyro_nfvi.guides.path import PathDerivative

    def draw(loc):
        q = PathDerivative(dist.Normal(loc, 2.0).to_event(1))
        u = q.rsample()
        return u, q.log_prob(u)

    compiled = torch.jit.trace(draw, (torch.zeros(3, requires_grad=True),), check_trace=False)
    loc = torch.tensor([1.0, -1.0, 0.5], requires_grad=True)
    u, lq = compiled(loc)
    assert torch.allclose(lq, dist.Normal(loc, 2.0).log_prob(u).sum(-1))
    # the path term only: d log q(u) / du * du / dloc = -(u - loc) / 4
    assert torch.allclose(torch.autograd.grad(lq, loc)[0], -(u - loc).detach() / 4.0)
