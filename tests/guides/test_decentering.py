"""The learned non-centering of hierarchical sites: ``DecenteringTransform`` and ``AutoFlowGuide(decenter=True)``."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_nfvi import AutoFlowGuide, fit
from pyro_nfvi.guides import DecenteringTransform, decenterable_sites
from pyro_nfvi.guides.sites import SitePacker, SiteSpec, latent_sites
from pyro_nfvi.targets.bayes import MODELS, eight_schools, funnel


def hierarchy():
    """Normal and LogNormal sites whose priors depend on earlier sites, in a plate and with an event dim."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = pyro.sample("tau", dist.HalfNormal(1.0))
    with pyro.plate("groups", 3):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("s", dist.LogNormal(theta, 0.5))
    pyro.sample("w", dist.Normal(mu[..., None] * torch.ones(2), tau[..., None]).to_event(1))
    pyro.sample("c", dist.Normal(0.0, 2.0))  # a constant prior: left alone


def _packer(model, *args):
    trace = pyro.poutine.trace(model).get_trace(*args)
    return SitePacker([SiteSpec(s) for s in latent_sites(trace, "test")])


def test_the_sites_found_are_the_hierarchical_normal_ones():
    assert decenterable_sites(hierarchy, _packer(hierarchy)) == ["theta", "s", "w"]
    found = {name: AutoFlowGuide(m, model_args=a).decentered for name, (m, a) in
             ((name, make()) for name, make in MODELS.items())}
    assert found == {"eight_schools_noncentered": [], "eight_schools_centered": ["theta"], "funnel": ["x"],
                     "hierarchical_logistic": [], "collinear_regression": [], "ar5": [], "simplex_corr": []}


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _transform(seed=0):
    packer = _packer(hierarchy)
    sites = decenterable_sites(hierarchy, packer)
    size = sum(s.size for s in packer.specs if s.name in sites)
    lam = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    return packer, DecenteringTransform(hierarchy, (), {}, packer, sites, lam, max_plate_nesting=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_det_matches_autograd_and_slogdet_in_float64(float64, seed):
    packer, t = _transform(seed)
    x = torch.randn(packer.dim, generator=torch.Generator().manual_seed(10 + seed))
    jac = torch.autograd.functional.jacobian(t, x)
    assert torch.allclose(jac.triu(1), torch.zeros_like(jac))  # triangular in the model's order
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign > 0
    assert torch.allclose(t.log_abs_det_jacobian(x, t(x)), logabsdet, atol=1e-10)


@pytest.mark.parametrize("batch", [(), (5,), (4, 1), (2, 3)])
def test_inverse_and_batch_shapes(float64, batch):
    packer, t = _transform()
    x = torch.randn(batch + (packer.dim,), generator=torch.Generator().manual_seed(3))
    y = t(x)
    assert y.shape == x.shape and t.log_abs_det_jacobian(x, y).shape == batch
    assert torch.allclose(t.inv(y), x, atol=1e-10)
    rows = x.reshape(-1, packer.dim)
    expected = torch.stack([t(r) for r in rows]).reshape(x.shape)  # each draw on its own
    assert torch.allclose(y, expected, atol=1e-12)


def test_centeredness_one_is_the_identity_and_zero_the_non_centered_map():
    packer = _packer(hierarchy)
    sites = decenterable_sites(hierarchy, packer)
    x = torch.randn(packer.dim)
    t = DecenteringTransform(hierarchy, (), {}, packer, sites, torch.ones(8), 1)
    assert torch.allclose(t(x), x) and float(t.log_abs_det_jacobian(x, t(x))) == 0.0
    y = DecenteringTransform(hierarchy, (), {}, packer, sites, torch.zeros(8), 1)(x)
    mu, log_tau, theta = x[0], x[1], x[2:5]
    assert torch.allclose(y[2:5], mu + log_tau.exp() * theta)  # theta = mu + tau * theta~
    assert torch.allclose(y[5:8], y[2:5] + 0.5 * x[5:8])  # log s = theta + 0.5 * (log s)~


def test_gradients_reach_the_centeredness_and_the_latent():
    packer = _packer(hierarchy)
    lam = torch.full((8,), 0.3, requires_grad=True)
    x = torch.randn(packer.dim, requires_grad=True)
    t = DecenteringTransform(hierarchy, (), {}, packer, decenterable_sites(hierarchy, packer), lam, 1)
    y = t(x)
    (y.sum() + t.log_abs_det_jacobian(x, y)).backward()
    assert bool(torch.isfinite(lam.grad).all()) and bool((lam.grad != 0).all())
    assert bool(torch.isfinite(x.grad).all())


def test_the_guide_decenters_by_default_and_says_so_in_its_fingerprint():
    model, args = eight_schools(centered=True)
    guide = AutoFlowGuide(model, model_args=args)
    assert guide.decentered == ["theta"] and guide._config_fingerprint()["decenter"] == ["theta"]
    assert torch.allclose(torch.sigmoid(guide.centeredness_raw), torch.full((8,), 0.5))
    plain = AutoFlowGuide(model, decenter=False, model_args=args)
    assert plain.decentered == [] and not hasattr(plain, "centeredness_raw")
    with pytest.raises(ValueError, match="another configuration"):
        plain.load_state_dict(guide.state_dict())
    with pytest.raises(TypeError, match="decenter must be True or False"):
        AutoFlowGuide(model, decenter="yes")


def test_the_initial_posterior_is_centred_at_the_initial_values():
    model, args = eight_schools(centered=True)
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, model_args=args)
    init = guide._init_loc()
    assert torch.allclose(guide._latent_quantiles([0.5], args, {})[0], init, atol=0.05)


def test_state_round_trips_and_the_draws_agree():
    model, args = eight_schools(centered=True)
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2, model_args=args, name="saved")
    with torch.no_grad():
        guide.centeredness_raw.normal_()
    other = AutoFlowGuide(model, flow="iaf", num_flows=2, model_args=args, name="loaded")
    other.load_state_dict(guide.state_dict())
    pyro.set_rng_seed(1)
    a = guide(*args)
    pyro.set_rng_seed(1)
    b = other(*args)
    assert all(torch.equal(a[k], b[k]) for k in a)


def nested(y):
    """Decentered sites in nested plates, a chain of two levels."""
    tau = pyro.sample("tau", dist.HalfNormal(1.0))
    with pyro.plate("groups", 3, dim=-2):
        mu = pyro.sample("mu", dist.Normal(0.0, tau))
        with pyro.plate("features", 4, dim=-1):
            theta = pyro.sample("theta", dist.Normal(mu, 0.5 * tau))
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


@pytest.mark.parametrize("case", ["eight_schools", "nested"])
def test_vectorized_and_sequential_particles_agree(case):
    model, args = eight_schools(centered=True) if case == "eight_schools" else (nested, (torch.randn(3, 4),))
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2, model_args=args)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert guide.decentered == (["theta"] if case == "eight_schools" else ["mu", "theta"])
    vectorized = Trace_ELBO(num_particles=4000, vectorize_particles=True).loss(model, guide, *args)
    sequential = Trace_ELBO(num_particles=400).loss(model, guide, *args)
    assert vectorized == pytest.approx(sequential, abs=1.5)


def test_the_funnel_is_fitted_exactly_by_a_gaussian_after_decentering():
    """Neal's funnel is a prior: non-centered it is a standard Gaussian, so KL(q || p) can reach 0."""
    model, args = funnel(dim=5)
    bounds = {}
    for decenter in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoFlowGuide(model, flow="none", decenter=decenter, model_args=args)
        guide.fit_base(num_steps=400, lr=0.05)
        with torch.no_grad():
            bounds[decenter] = -Trace_ELBO(num_particles=4000, vectorize_particles=True).loss(model, guide)
        if decenter:
            assert float(torch.sigmoid(guide.centeredness_raw.detach()).max()) < 0.1  # learned: non-centered
    assert bounds[True] > -0.05  # log Z = 0
    assert bounds[False] < -0.5


def test_fit_laplace_works_in_the_decentered_coordinates():
    """A conjugate hierarchy with known group scale: the posterior is Gaussian, and so is its Laplace fit."""
    y = torch.tensor([1.0, -0.5, 2.0])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("groups", 3):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(theta, 0.5), obs=y)

    # exact posterior of (mu, theta): precision of the joint Gaussian
    prec = torch.zeros(4, 4)
    prec[0, 0] = 1.0 + 3.0
    prec[0, 1:] = prec[1:, 0] = -1.0
    prec[1:, 1:] = torch.eye(3) * (1.0 + 4.0)
    cov = torch.linalg.inv(prec)
    mean = cov @ torch.cat([torch.zeros(1), 4.0 * y])
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2, precondition=True, model_args=(y,))
    assert guide.decentered == ["theta"]
    guide.fit_laplace(y)
    with torch.no_grad():
        draws = guide.get_posterior(y).sample((40000,))
    assert torch.allclose(draws.mean(0), mean, atol=0.02)
    assert torch.allclose(torch.cov(draws.T), cov, atol=0.02)


def test_the_recipe_on_the_centered_eight_schools_finds_the_group_scale():
    """With a small budget the recipe gets close to NUTS and to the non-centered ELBO; without decentering it stays far."""
    from pyro_nfvi.evaluation.accuracy import posterior_error
    from pyro_nfvi.targets.reference import load_reference

    model, args = eight_schools(centered=True)
    reference = load_reference("eight_schools_centered").draws
    errors, bounds = {}, {}
    for decenter in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoFlowGuide(model, num_flows=2, decenter=decenter, model_args=args)
        result = fit(model, guide, *args, num_steps=300, lrs=(1e-2,), warm_start_steps=300, progress=False)
        assert result.estimator == ("elbo" if decenter else "dreg")  # "auto": near-Gaussian coordinates
        errors[decenter] = posterior_error(model, guide, *args, reference=reference)
        with torch.no_grad():
            bounds[decenter] = -Trace_ELBO(num_particles=4000, vectorize_particles=True).loss(model, guide, *args)
    assert errors[True].mean < 0.2 and errors[True].sd < 0.45  # 0.12 / 0.35 (log tau's left tail)
    assert bounds[True] > -32.0  # -31.55; the non-centered model's recipe reaches -31.5
    assert errors[False].sites["tau"][0] > 0.3 and bounds[False] < bounds[True] - 2.0  # 0.55, -34.4


def test_a_site_whose_prior_depends_on_another_guides_site_is_not_decentered():
    """In an AutoGuideList the parent drawn by another guide is invisible to this one: no decentering there."""
    from pyro.infer.autoguide import AutoGuideList, AutoNormal

    model, args = eight_schools(centered=True)
    guide = AutoGuideList(model)
    guide.append(AutoNormal(pyro.poutine.block(model, expose=["mu"])))
    flow = AutoFlowGuide(pyro.poutine.block(model, hide=["mu"]), model_args=args)
    guide.append(flow)
    assert flow.decentered == []
    loss = Trace_ELBO(num_particles=8, vectorize_particles=True).loss(model, guide, *args)
    assert torch.isfinite(torch.tensor(loss))
    tau_only = AutoFlowGuide(pyro.poutine.block(model, hide=["mu"]), model_args=args, name="tau_only")
    assert tau_only.decentered == []


@pytest.mark.parametrize("parallel", [True, False])
def test_predictive_and_the_fast_path_work_with_decentering(parallel):
    from pyro.infer import Predictive

    from pyro_nfvi.guides import FastSVI

    model, args = eight_schools(centered=True)
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2, model_args=args)
    draws = Predictive(model, guide=guide, num_samples=50, parallel=parallel)(*args)
    assert draws["theta"].shape[0] == 50 and draws["obs"].shape[-1] == 8
    svi = FastSVI(model, guide, Trace_ELBO(num_particles=4, vectorize_particles=True), lr=1e-2)
    losses = [svi.step(*args) for _ in range(20)]
    assert all(map(math.isfinite, losses))
    assert not torch.allclose(torch.sigmoid(guide.centeredness_raw.detach()), torch.full((8,), 0.5))


def test_a_site_after_an_enumerated_site_is_not_decentered():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("w", dist.Normal(mu, 1.0))  # before the discrete site: decentered
        z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(mu + z, 1.0))  # may depend on z, which this guide does not draw

    assert AutoFlowGuide(model, model_args=()).decentered == ["w"]
