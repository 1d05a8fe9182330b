"""Tests of :class:`pyro_nfvi.guides.AutoFlowGuide` over every flow family."""
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoGuideList, init_to_value
from torch.distributions import constraints

from pyro_nfvi import AutoFlowGuide
from pyro_nfvi.guides import FastSVI

FAMILIES = ["planar", "radial", "householder", "iaf", "sylvester", "coupling", "none"]


# -- an exactly solvable model ---------------------------------------------------------------------
def _linear_gaussian():
    """z ~ N(m0, I_3), y ~ N(A z, I_4) with A^T A diagonal, so the posterior is a diagonal Gaussian."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    c = torch.tensor([1.0, 2.0, 0.5])
    A = q[:, :3] * c
    m0 = torch.tensor([0.5, -0.5, 1.0])
    y = torch.tensor([1.0, -0.5, 2.0, 0.3])

    def model():
        z = pyro.sample("z", dist.Normal(m0, 1.0).to_event(1))
        pyro.sample("y", dist.Normal(z @ A.T, 1.0).to_event(1), obs=y)

    post_var = 1.0 / (1.0 + c**2)
    post_mean = post_var * (m0 + A.T @ y)
    log_evidence = dist.MultivariateNormal(A @ m0, A @ A.T + torch.eye(4)).log_prob(y)
    return model, post_mean, post_var.sqrt(), float(log_evidence)


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_posterior_linear_gaussian(family):
    model, mean, sd, log_evidence = _linear_gaussian()
    steps, lr = 400, 0.05
    with pyro.settings.context(module_local_params=True):
        guide = AutoFlowGuide(model, flow=family, num_flows=2)
        svi = FastSVI(model, guide, Trace_ELBO(num_particles=256, vectorize_particles=True), lr=lr)
        for i in range(steps):
            for group in svi.optimizer.param_groups if svi.optimizer else []:
                group["lr"] = lr * (1.0 - i / steps)
            svi.step()
        with torch.no_grad():
            draws = guide.get_posterior().sample((20000,))
            elbo = -Trace_ELBO(num_particles=5000, vectorize_particles=True).loss(model, guide)
    assert (draws.mean(0) - mean).abs().max() < 0.05
    assert ((draws.std(0) / sd) - 1.0).abs().max() < 0.05
    assert abs(elbo - log_evidence) < 0.05


# -- constrained supports -------------------------------------------------------------------------
def constrained_model():
    """Positive, simplex, correlation-Cholesky, unit-interval and plated sites (safe under particles)."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    tail = pyro.sample("tail", dist.HalfCauchy(1.0))
    probs = pyro.sample("probs", dist.Dirichlet(torch.ones(3)))
    chol = pyro.sample("chol", dist.LKJCholesky(3, 1.5))
    frac = pyro.sample("frac", dist.Beta(2.0, 2.0))
    with pyro.plate("groups", 4):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        mean = loc.unsqueeze(-1) + probs * frac.unsqueeze(-1)
        x = pyro.sample("x", dist.Normal(mean, scale.unsqueeze(-1)).to_event(1))
        pyro.sample("obs", dist.MultivariateNormal(x, scale_tril=chol * tail[..., None, None]), obs=DATA)


DATA = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.8, 1.2], [-0.5, -0.1, 0.0], [0.2, 0.2, 0.9]])


SUPPORTS = {
    "scale": constraints.positive,
    "tail": constraints.positive,
    "probs": constraints.simplex,
    "chol": constraints.corr_cholesky,
    "frac": constraints.unit_interval,
}


@pytest.mark.parametrize("particles", [1, 10])
@pytest.mark.parametrize("elbo", [Trace_ELBO, JitTrace_ELBO])
@pytest.mark.parametrize("family", FAMILIES)
def test_constrained_sites_finite_loss(family, elbo, particles):
    guide = AutoFlowGuide(constrained_model, model_args=(), flow=family, num_flows=2)
    assert guide.latent_dim == 1 + 1 + 2 + 3 + 1 + 4 + 12
    svi = SVI(constrained_model, guide, pyro.optim.Adam({"lr": 0.01}),
              elbo(num_particles=particles, vectorize_particles=True, max_plate_nesting=1))
    losses = [svi.step() for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    values = guide()
    for name, support in SUPPORTS.items():
        assert bool(support.check(values[name]).all()), name
    assert values["x"].shape == (4, 3) and values["chol"].shape == (3, 3)


# -- the AutoGuide API ------------------------------------------------------------------------------
def test_median_quantiles_gaussian_baseline_is_exact():
    guide = AutoFlowGuide(constrained_model, model_args=(), flow="none", init_scale=0.3, decenter=False)  # "x" would be decentered
    loc, scale = guide._loc_scale()
    q = guide.quantiles([0.1, 0.5, 0.9])
    median = guide.median()
    assert torch.allclose(q["scale"][1], median["scale"]) and torch.allclose(q["loc"][1], median["loc"])
    # the positive site's quantiles are the Gaussian's, mapped through exp
    i = 0  # "scale" is packed first
    expected = torch.distributions.Normal(loc[i], scale[i]).icdf(torch.tensor([0.1, 0.5, 0.9])).exp()
    assert torch.allclose(q["scale"], expected, rtol=1e-5)


@pytest.mark.parametrize("family", ["planar", "iaf"])
def test_median_quantiles_monte_carlo(family):
    def model():
        pyro.sample("a", dist.Normal(torch.tensor([1.0, -2.0]), 1.0).to_event(1))
        pyro.sample("b", dist.LogNormal(0.5, 0.3))

    init = init_to_value(values={"a": torch.tensor([1.0, -2.0]), "b": torch.tensor(math.exp(0.5))})
    guide = AutoFlowGuide(model, flow=family, num_flows=2, init_loc_fn=init, init_scale=0.5, num_mc_samples=4000)
    q = guide.quantiles([0.1, 0.5, 0.9])
    median = guide.median()
    assert q["a"].shape == (3, 2) and q["b"].shape == (3,)
    assert torch.equal(median["a"], q["a"][1])  # one seed: the same draws
    assert bool((q["a"][0] < q["a"][1]).all() and (q["a"][1] < q["a"][2]).all())
    assert bool((q["b"][0] < q["b"][1]) & (q["b"][1] < q["b"][2]))
    # the flow starts at the identity, so the posterior is symmetric about the initial values
    assert torch.allclose(median["a"], torch.tensor([1.0, -2.0]), atol=0.05)
    assert torch.allclose(q["a"][0] + q["a"][2], 2 * median["a"], atol=0.08)
    assert abs(float(median["b"]) - math.exp(0.5)) < 0.1
    assert torch.equal(guide.median()["a"], median["a"])  # deterministic


def test_predictive_shapes():
    guide = AutoFlowGuide(constrained_model, model_args=(), flow="planar", num_flows=2)
    for parallel in (False, True):
        samples = Predictive(constrained_model, guide=guide, num_samples=5, parallel=parallel)()
        assert samples["x"].shape[0] == 5 and samples["x"].shape[-2:] == (4, 3)
        assert samples["probs"].shape[0] == 5 and samples["probs"].shape[-1] == 3
        assert samples["obs"].shape[-2:] == (4, 3)
    latent = guide.sample_latent()
    assert latent.shape == (guide.latent_dim,)
    posterior = guide.get_posterior()
    assert posterior.event_shape == (guide.latent_dim,)
    assert posterior.log_prob(posterior.sample((7,))).shape == (7,)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip_into_fresh_guide(family):
    opts = {"permutation": "random"} if family == "iaf" else {}
    guide = AutoFlowGuide(constrained_model, model_args=(), flow=family, num_flows=2, **opts)
    svi = SVI(constrained_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(5):
        svi.step()
    state = guide.state_dict()
    pyro.set_rng_seed(123)  # a fresh guide with different random initial values
    fresh = AutoFlowGuide(constrained_model, model_args=(), flow=family, num_flows=2, **opts)
    fresh.load_state_dict(state)  # no warm-up call
    pyro.set_rng_seed(7)
    a = guide()
    pyro.set_rng_seed(7)
    b = fresh()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("family", ["planar", "iaf", "coupling", "householder"])
def test_param_store_round_trip(family, tmp_path):
    opts = {"permutation": "random"} if family == "iaf" else {}
    guide = AutoFlowGuide(constrained_model, model_args=(), flow=family, num_flows=2, **opts)
    svi = SVI(constrained_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(5):
        svi.step()
    path = str(tmp_path / "params.pt")
    pyro.get_param_store().save(path)
    pyro.set_rng_seed(7)
    a = guide()
    del guide, svi

    pyro.clear_param_store()
    pyro.set_rng_seed(123)
    fresh = AutoFlowGuide(constrained_model, model_args=(), flow=family, num_flows=2, **opts)
    before = {k: v.clone() for k, v in fresh.state_dict().items() if torch.is_tensor(v)}
    pyro.get_param_store().load(path)
    pyro.set_rng_seed(7)
    b = fresh()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the fresh guide really started elsewhere, and its state_dict shows the loaded values
    changed = [k for k, v in fresh.state_dict().items() if torch.is_tensor(v) and not torch.equal(v, before[k])]
    assert "loc" in changed


def test_jit_trace_elbo_matches_trace_elbo():
    guide = AutoFlowGuide(constrained_model, model_args=(), flow="radial", num_flows=2)
    svi = SVI(constrained_model, guide, pyro.optim.Adam({"lr": 0.01}), JitTrace_ELBO())
    svi.step()
    pyro.set_rng_seed(3)
    jit_loss = JitTrace_ELBO().loss(constrained_model, guide)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(constrained_model, guide)
    assert math.isclose(jit_loss, loss, rel_tol=1e-4)


def test_auto_guide_list_and_enumeration():
    @config_enumerate
    def model():
        w = pyro.sample("w", dist.Dirichlet(torch.ones(2)))
        locs = pyro.sample("locs", dist.Normal(torch.tensor([-2.0, 2.0]), 1.0).to_event(1))
        with pyro.plate("data", 6):
            k = pyro.sample("k", dist.Categorical(w))
            pyro.sample("x", dist.Normal(locs[..., k], 0.5), obs=torch.tensor([-2.1, -1.9, -2.0, 2.0, 2.2, 1.8]))

    guide = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=())  # the enumerated site is skipped
    assert guide.latent_dim == 1 + 2
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    assert all(math.isfinite(svi.step()) for _ in range(3))

    pyro.clear_param_store()
    parts = AutoGuideList(model)
    parts.append(AutoFlowGuide(poutine.block(model, expose=["locs"]), flow="planar", num_flows=2, model_args=()))
    parts.append(AutoDelta(poutine.block(model, expose=["w"])))
    svi = SVI(model, parts, pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    assert all(math.isfinite(svi.step()) for _ in range(3))
    assert set(parts()) == {"w", "locs"}
    assert set(parts.median()) == {"w", "locs"}
    assert any(name.startswith("AutoGuideList.0.") for name in pyro.get_param_store().keys())


def test_lazy_setup_without_model_args_and_eager_with_them():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    lazy = AutoFlowGuide(model, flow="planar", num_flows=2)
    assert lazy.prototype_trace is None and not list(lazy.parameters())
    lazy(torch.tensor(0.5))
    assert lazy.latent_dim == 1 and len(list(lazy.parameters())) > 0
    eager = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=(torch.tensor(0.5),))
    assert eager.latent_dim == 1
    assert set(eager.state_dict()) == set(lazy.state_dict())


def test_init_loc_and_scale():
    def model():
        pyro.sample("a", dist.Normal(torch.tensor([3.0, -1.0, 0.5]), 1.0).to_event(1))
        pyro.sample("b", dist.LogNormal(1.0, 1.0))

    init = init_to_value(values={"a": torch.tensor([3.0, -1.0, 0.5]), "b": torch.tensor(math.e)})
    for family in ("householder", "iaf"):
        guide = AutoFlowGuide(model, flow=family, num_flows=3, init_loc_fn=init, init_scale=0.01, model_args=())
        median = guide.median()
        # even with reflections/permutations the initial posterior sits at init_loc_fn's values
        assert torch.allclose(median["a"], torch.tensor([3.0, -1.0, 0.5]), atol=0.01), family
        assert abs(float(median["b"]) - math.e) < 0.05


def test_float64_model():
    def model():
        pyro.sample("a", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))

    guide = AutoFlowGuide(model, flow="sylvester", num_flows=2)
    assert all(p.dtype == torch.float64 for p in guide.parameters())
    assert guide()["a"].dtype == torch.float64
    assert math.isfinite(Trace_ELBO().loss(model, guide))


# -- errors ------------------------------------------------------------------------------------------
def test_subsampled_local_latent_points_to_amortized_guide():
    def model():
        with pyro.plate("data", 100, subsample_size=10):
            pyro.sample("z_local", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="z_local") as info:
        AutoFlowGuide(model, model_args=())
    assert "AmortizedFlowGuide" in str(info.value)


def test_non_enumerated_discrete_site_is_named():
    def model():
        pyro.sample("coin", dist.Bernoulli(0.5))
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'coin'"):
        AutoFlowGuide(model, model_args=())


@pytest.mark.parametrize("kwargs, match", [
    ({"flow": "magic"}, "unknown flow"),
    ({"num_flows": -1}, "num_flows"),
    ({"init_scale": 0.0}, "init_scale"),
    ({"model_args": 3}, "model_args"),
])
def test_bad_arguments(kwargs, match):
    def model():
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises((ValueError, TypeError), match=match):
        AutoFlowGuide(model, **kwargs)
