"""The Laplace warm start: ``laplace_approximation``, ``AutoFlowGuide.fit_laplace`` and ``precondition=True``."""
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nfvi import AutoFlowGuide, fit
from pyro_nfvi.guides.laplace import PRECONDITION_MAX_DIM, Preconditioner, laplace_approximation
from pyro_nfvi.targets.bayes import MODELS, funnel

# an ill-conditioned, correlated Gaussian posterior over a vector and a positive site
COV = torch.tensor([[1.0, 0.999, 0.0], [0.999, 1.0, 0.0], [0.0, 0.0, 1e-4]])
MEAN = torch.tensor([3.0, -2.0, 0.5])


def model():
    pyro.sample("z", dist.MultivariateNormal(MEAN, COV))
    pyro.sample("s", dist.LogNormal(1.0, 0.2))


def _moments(guide, n=40000):
    with torch.no_grad():
        draws = guide.get_posterior().sample((n,)).double()
    return draws.mean(0), torch.cov(draws.T)


def test_laplace_approximation_of_a_gaussian_is_exact_in_float64():
    prec = torch.linalg.inv(COV.double())
    mode, cov = laplace_approximation(lambda u: -0.5 * (u - MEAN) @ prec @ (u - MEAN), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(mode, MEAN.double(), atol=1e-6)
    assert torch.allclose(cov, COV.double(), rtol=1e-6, atol=1e-10)


def test_laplace_approximation_refuses_a_density_without_a_mode():
    with pytest.raises(ValueError, match="not finite|not positive definite|failed"):
        laplace_approximation(lambda u: u.sum(), torch.zeros(2))  # grows without bound


@pytest.mark.parametrize("curvature", [0.3, 1.0, 3.0])
def test_laplace_approximation_backs_off_a_trial_point_outside_the_support(curvature):
    # log p(u) = sum_i c (u_i - m) - exp(c (u_i - m)), mode m = 1.9 with variance 1 / c^2, is not defined
    # above 2 (NaN, as a log_prob off its support is): L-BFGS's line search tries such a point on its
    # way; it must shorten the step, and Pyro's NaN warning on the way is not the user's business
    def log_density(u):
        if bool((u > 2.0).any()):
            return pyro.util.warn_if_nan((u * float("nan")).sum(), "off the support")
        a = curvature * (u - 1.9)
        return (a - a.exp()).sum()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mode, cov = laplace_approximation(log_density, torch.zeros(2))
    assert torch.allclose(mode, torch.full((2,), 1.9, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(cov, torch.eye(2, dtype=torch.float64) / curvature**2, rtol=1e-3, atol=1e-8)


def test_laplace_approximation_refuses_a_start_outside_the_support():
    with pytest.raises(ValueError, match="not finite at the start"):
        laplace_approximation(lambda u: u.log().sum(), -torch.ones(2))


def test_log_joint_is_the_unconstrained_density_with_the_jacobian():
    guide = AutoFlowGuide(model, flow="none", model_args=())
    u = torch.tensor([2.5, -1.0, 0.4, 0.7])  # z, then log s
    expected = dist.MultivariateNormal(MEAN, COV).log_prob(u[:3]) + dist.Normal(1.0, 0.2).log_prob(u[3])
    assert torch.allclose(guide.log_joint(u), expected, atol=1e-4)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        guide.log_joint(torch.zeros(2, 4))


@pytest.mark.parametrize("flow", ["none", "iaf", "coupling", "planar", "householder", "sylvester", "radial"])
@pytest.mark.parametrize("base, precondition", [("diagonal", True), ("full", False), ("full", True)])
def test_after_fit_laplace_q_is_the_laplace_gaussian(flow, base, precondition):
    """Gated layers contract and IAF layers permute at initialisation: the base compensates."""
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, flow=flow, num_flows=2, base=base, precondition=precondition, model_args=())
    mode, cov = guide.fit_laplace()
    # the Laplace approximation in the unconstrained coordinates (z, log s)
    assert torch.allclose(mode[:3], MEAN.double(), atol=1e-3)
    assert mode[3].item() == pytest.approx(1.0, abs=1e-4)  # LogNormal(1, 0.2) with the Jacobian: Normal(1, 0.2) in log s
    mean, q_cov = _moments(guide)
    sd = cov.diagonal().sqrt()
    assert ((mean - mode).abs() / sd).max() < 0.05
    assert ((q_cov.diagonal().sqrt() / sd) - 1).abs().max() < 0.05
    corr = q_cov[0, 1] / q_cov[0, 0].sqrt() / q_cov[1, 1].sqrt()
    assert corr.item() == pytest.approx(0.999, abs=2e-3)


def test_fit_laplace_on_a_funnel_raises_and_leaves_the_guide_unchanged():
    funnel_model, args = MODELS["eight_schools_centered"]()
    guide = AutoFlowGuide(funnel_model, precondition=True, model_args=args)
    before = {k: v.clone() for k, v in guide.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match="fit_laplace.*fit_base"):
        guide.fit_laplace(*args)
    after = guide.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_preconditioner_is_saved_and_a_preconditioned_state_is_refused_elsewhere(tmp_path):
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2, precondition=True, model_args=())
    guide.fit_laplace()
    state = guide.state_dict()
    assert torch.equal(state["preconditioner.shift"], guide.preconditioner.shift)
    fresh = AutoFlowGuide(model, flow="iaf", num_flows=2, precondition=True, model_args=(), name="fresh")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.preconditioner.scale_tril, guide.preconditioner.scale_tril)
    with torch.no_grad():
        x = torch.randn(5, 4)
        assert torch.allclose(fresh.get_transform()(x), guide.get_transform()(x))
    plain = AutoFlowGuide(model, flow="iaf", num_flows=2, precondition=False, model_args=(), name="plain")
    with pytest.raises(ValueError, match="precondition"):
        plain.load_state_dict(state)
    # through Pyro's param store: the buffers travel with the parameters
    pyro.get_param_store().save(tmp_path / "p.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "p.pt")
    again = AutoFlowGuide(model, flow="iaf", num_flows=2, precondition=True, model_args=())
    again(), None
    assert torch.equal(again.state_dict()["preconditioner.shift"], guide.preconditioner.shift)


def test_precondition_auto_preconditions_small_models_only():
    small = AutoFlowGuide(model, flow="planar", num_flows=1, model_args=(), name="small")
    assert small.precondition is True and small.preconditioner is not None
    assert small._fingerprint_fields["precondition"] is True

    def big():
        pyro.sample("z", dist.Normal(torch.zeros(PRECONDITION_MAX_DIM + 1), 1.0).to_event(1))

    large = AutoFlowGuide(big, flow="planar", num_flows=1, model_args=(), name="large")
    assert large.precondition is False and large.preconditioner is None
    assert "precondition" not in large._fingerprint_fields
    lazy = AutoFlowGuide(model, flow="planar", num_flows=1, name="lazy")
    assert lazy.precondition is None  # decided at set-up, when the dimension is known
    lazy()
    assert lazy.precondition is True


@pytest.mark.parametrize("value", [1, "yes", None])
def test_precondition_rejects_other_values(value):
    with pytest.raises(ValueError, match="precondition must be True, False or 'auto'"):
        AutoFlowGuide(model, precondition=value)


def test_preconditioner_is_the_identity_until_set():
    p = Preconditioner(3)
    x = torch.randn(4, 3)
    t = p.transform()
    assert torch.equal(t(x), x) and torch.equal(t.log_abs_det_jacobian(x, x), torch.zeros(4))


def test_recipe_keeps_the_laplace_whitening_where_its_elbo_is_higher_and_falls_back_on_a_funnel():
    model_c, args_c = MODELS["collinear_regression"]()
    guide = AutoFlowGuide(model_c, precondition=True)  # set up lazily, as Pyro's autoguides are
    result = fit(model_c, guide, *args_c, num_steps=3, lrs=(1e-3,), num_particles=2, warm_start_steps=20, progress=False)
    assert result.warm_start == "laplace" and result.warm_start_error is None and len(result.warm_start_losses) == 20
    assert result.estimator == "elbo"  # "auto" after a Laplace warm start
    assert result.warm_start_bounds["laplace"] > result.warm_start_bounds["base"] + 100  # the base barely moved
    assert not torch.equal(guide.preconditioner.scale_tril, torch.eye(guide.latent_dim))
    funnel_model, args_f = funnel()
    guide = AutoFlowGuide(funnel_model, precondition=True, decenter=False, model_args=args_f, name="f")  # no mode
    result = fit(funnel_model, guide, *args_f, num_steps=3, lrs=(1e-3,), num_particles=2, warm_start_steps=5, progress=False)
    assert result.warm_start == "base" and "fit_base" in result.warm_start_error and len(result.warm_start_losses) == 5
    assert result.estimator == "dreg"
    plain = AutoFlowGuide(funnel_model, precondition=False, decenter=False, model_args=args_f, name="p")
    result = fit(funnel_model, plain, *args_f, num_steps=3, lrs=(1e-3,), num_particles=2, warm_start_steps=5, progress=False)
    assert result.warm_start == "base" and result.warm_start_error is None and not result.warm_start_bounds


def cauchy():
    pyro.sample("u", dist.Cauchy(0.0, 1.0))


def test_recipe_keeps_the_fitted_base_where_the_laplace_gaussian_is_worse():
    """A Cauchy's Laplace approximation, N(0, 1/2), is narrower than its best Gaussian under the ELBO."""
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(cauchy, flow="none", precondition=True, model_args=())
    result = fit(cauchy, guide, num_steps=3, lrs=(1e-3,), num_particles=8, warm_start_steps=300, progress=False)
    assert result.warm_start == "base"
    assert result.warm_start_bounds["base"] > result.warm_start_bounds["laplace"] + 0.05
    assert torch.equal(guide.preconditioner.scale_tril, torch.eye(1))  # the whitening was undone


def test_a_preconditioned_guide_trains_with_fast_svi_and_serves_predictive():
    from pyro.infer import Predictive, Trace_ELBO

    from pyro_nfvi.guides import FastSVI

    pyro.set_rng_seed(0)
    with pyro.settings.context(module_local_params=True):
        guide = AutoFlowGuide(model, flow="iaf", num_flows=2, precondition=True, model_args=())
        guide.fit_laplace()
        shift = guide.preconditioner.shift.clone()
        svi = FastSVI(model, guide, Trace_ELBO(num_particles=4, vectorize_particles=True), lr=1e-3)
        losses = [svi.step() for _ in range(20)]
        draws = Predictive(model, guide=guide, num_samples=4000, parallel=True)()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert torch.equal(guide.preconditioner.shift, shift)  # a buffer: no optimizer moves it
    assert (draws["z"].mean(0) - MEAN).abs().max() < 0.1
