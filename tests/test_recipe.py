"""pyro_nfvi.fit: the recipe's phases, its guard, its choices and its errors."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_nfvi import AutoFlowGuide, fit

Y = torch.tensor([4.8, 5.3, 5.1, 4.6, 5.6])


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, scale), obs=y)


class Bomb:
    """``model`` plus a factor that is NaN at the calls listed in ``at`` (counted over model calls)."""

    def __init__(self, at):
        self.at, self.calls = set(at), 0

    def __call__(self, y):
        model(y)
        self.calls += 1
        pyro.factor("bomb", torch.tensor(math.nan if self.calls in self.at else 0.0))


@pytest.fixture(autouse=True)
def _seed():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


@pytest.mark.parametrize("make_guide", [lambda m: AutoFlowGuide(m, flow="iaf", num_flows=2), AutoNormal], ids=["flow", "AutoNormal"])
def test_fit_reaches_the_posterior_with_any_guide(make_guide):
    guide = make_guide(model)
    # Pyro's guides get no warm start: a candidate large enough to reach mu = 5 in 400 steps
    result = fit(model, guide, Y, num_steps=400, lrs=(5e-2, 1e-2, 1e-3), warm_start_steps=800, progress=False)
    assert len(result.losses) == 400 and all(math.isfinite(v) for v in result.losses)
    assert set(result.probe_scores) == {5e-2, 1e-2, 1e-3} and result.lr in result.probe_scores
    best = min(result.probe_scores.values())
    assert result.probe_scores[result.lr] >= best  # within noise of the best, the largest step wins
    assert all(lr <= result.lr for lr, score in result.probe_scores.items() if score == best)
    assert abs(float(guide.median(Y)["mu"]) - float(Y.mean())) < 0.3
    assert (len(result.warm_start_losses) > 0) == isinstance(guide, AutoFlowGuide)


def test_a_non_finite_loss_rolls_back_and_halves_the_learning_rate():
    bomb = Bomb(at=[150])  # one model call per step (vectorized particles): step ~150 of the main run
    guide = AutoFlowGuide(bomb, flow="planar", num_flows=2)
    result = fit(bomb, guide, Y, num_steps=300, lrs=(1e-2,), warm_start=False, window=50, progress=False)
    assert result.rollbacks == 1 and result.lr == 5e-3
    assert len(result.losses) == 299 and all(math.isfinite(v) for v in result.losses)
    assert all(bool(torch.isfinite(p).all()) for p in guide.parameters())


def test_the_guard_gives_up_with_a_clear_error_and_keeps_the_last_good_state():
    bomb = Bomb(at=range(100, 10**6))
    guide = AutoFlowGuide(bomb, flow="planar", num_flows=2)
    with pytest.raises(FloatingPointError, match="roll-backs"):
        fit(bomb, guide, Y, num_steps=300, lrs=(1e-2,), warm_start=False, window=50, max_rollbacks=2, progress=False)
    assert all(bool(torch.isfinite(p).all()) for p in guide.parameters())


def test_a_diverging_candidate_is_not_chosen():
    bomb = Bomb(at=[30])  # the first probe (lr 1e-2) meets it; the second does not
    guide = AutoFlowGuide(bomb, flow="none")
    result = fit(bomb, guide, Y, num_steps=100, lrs=(1e-2, 1e-3), probe_steps=50, warm_start=False, progress=False)
    assert result.probe_scores[1e-2] == math.inf and result.lr == 1e-3


def test_the_stopping_rule_ends_a_converged_run():
    guide = AutoFlowGuide(model, flow="none")
    result = fit(model, guide, Y, num_steps=5000, lrs=(1e-2,), tol=1.0, window=100, progress=False)
    assert result.stopped_early and len(result.losses) < 5000


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_steps": 0}, "num_steps"), ({"lrs": ()}, "lrs"), ({"lrs": (0.1, -1.0)}, "lrs"),
     ({"estimator": "bbvi"}, "estimator"), ({"final_lr_fraction": 2.0}, "final_lr_fraction"),
     ({"clip_norm": -1.0}, "clip_norm"), ({"tol": 0.0}, "tol")],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(model, AutoFlowGuide(model), Y, progress=False, **kwargs)


def test_module_local_params_is_refused_with_what_to_do():
    with pyro.settings.context(module_local_params=True):
        with pytest.raises(ValueError, match="FastSVI"):
            fit(model, AutoFlowGuide(model), Y, progress=False)


@pytest.mark.parametrize("estimator", ["elbo", "stl", "dreg"])
def test_every_estimator_trains_a_flow_guide(estimator):
    guide = AutoFlowGuide(model, flow="planar", num_flows=2)
    result = fit(model, guide, Y, num_steps=300, lrs=(1e-2,), estimator=estimator, warm_start_steps=800, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    assert abs(float(guide.median(Y)["mu"]) - float(Y.mean())) < 0.3


def test_pyro_guides_fall_back_to_the_elbo():
    from pyro.infer import Trace_ELBO

    from pyro_nfvi.objectives import IW_ELBO
    from pyro_nfvi.recipe import make_loss

    assert isinstance(make_loss("dreg", AutoNormal(model), 4, True), Trace_ELBO)
    assert isinstance(make_loss("dreg", AutoFlowGuide(model), 4, True), IW_ELBO)


@pytest.mark.parametrize("estimator", ["auto", "stl", "dreg"])
def test_a_pyro_guide_reports_the_elbo_it_trained_on(estimator):
    result = fit(model, AutoNormal(model), Y, num_steps=20, lrs=(1e-2,), estimator=estimator, progress=False)
    assert result.estimator == "elbo"
    assert math.isnan(result.elbo)  # the draws' check is for importance-weighted fits only


def test_a_flow_guide_reports_the_estimator_it_trained_on():
    guide = AutoFlowGuide(model, flow="planar", num_flows=2)
    result = fit(model, guide, Y, num_steps=20, lrs=(1e-2,), estimator="stl", warm_start=False, progress=False)
    assert result.estimator == "stl"


def _nan_gradient_at(param, calls):
    """Make ``param``'s gradient NaN at the backward passes listed in ``calls`` (counted from 1)."""
    seen = []

    def hook(grad):
        seen.append(None)
        return grad * math.nan if len(seen) in calls else grad

    param.register_hook(hook)
    return seen


def test_a_nan_gradient_step_is_skipped_and_leaves_the_parameters_unchanged():
    import warnings

    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    guide(Y)
    weight = guide.flow_stack.layers[2].arn.layers[0].weight
    values = []  # every parameter's value at each backward pass, i.e. before that step's update
    _nan_gradient_at(weight, {20})
    weight.register_hook(lambda g: values.append([p.detach().clone() for p in guide.parameters()]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        result = fit(model, guide, Y, num_steps=40, lrs=(1e-2,), warm_start=False, window=10, progress=False)
    assert result.skipped == 1 and result.rollbacks == 0 and len(result.losses) == 40
    assert all(math.isfinite(v) for v in result.losses)
    assert all(torch.equal(a, b) for a, b in zip(values[19], values[20]))  # step 20 was skipped
    assert not all(torch.equal(a, b) for a, b in zip(values[20], values[21]))  # step 21 was applied
    assert any("step 20 skipped" in str(w.message) and "flow layer 2 (IAF)" in str(w.message) for w in caught)


def test_consecutive_nan_gradients_raise_naming_the_parameter_and_layer():
    import warnings

    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    guide(Y)
    weight = guide.flow_stack.layers[2].arn.layers[0].weight
    _nan_gradient_at(weight, set(range(10, 10**6)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(FloatingPointError) as info:
            fit(model, guide, Y, num_steps=100, lrs=(1e-2,), warm_start=False, window=10, max_skips=4, progress=False)
    message = str(info.value)
    assert "step 13" in message and "4 consecutive" in message
    assert "flow_stack$$$layers.2.arn.layers.0.weight" in message and "flow layer 2 (IAF)" in message
    assert all(bool(torch.isfinite(p).all()) for p in guide.parameters())


def test_max_skips_is_checked():
    with pytest.raises(ValueError, match="max_skips"):
        fit(model, AutoFlowGuide(model), Y, max_skips=0, progress=False)


def test_a_model_that_cannot_vectorize_particles_fits_with_vectorize_particles_false():
    """Pyro's examples/eight_schools model: no plate around eta, and (1,)-shaped mu and tau."""
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

    def schools():
        eta = pyro.sample("eta", dist.Normal(torch.zeros(8), torch.ones(8)))
        mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10 * torch.ones(1)))
        tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(1)))
        pyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)

    with pyro.validation_enabled(False):
        guide = AutoFlowGuide(schools, num_flows=1)
        result = fit(schools, guide, num_steps=20, lrs=(1e-2,), num_particles=2, warm_start_steps=10,
                     vectorize_particles=False, progress=False)
    assert guide.precondition is True and set(result.warm_start_bounds) == {"laplace", "base"}
    assert len(result.losses) == 20 and all(math.isfinite(v) for v in result.losses)


def test_a_dreg_fit_measures_its_draws_and_warns_when_q_is_far_from_the_posterior():
    from pyro_nfvi.recipe import DRAWS_KL_WARNING

    guide = AutoFlowGuide(model, flow="none")  # 30 steps from the prior's scale: q is still far off
    with pytest.warns(UserWarning, match=r"KL\(q \|\| p\).*importance_resample.*estimator='stl'"):
        result = fit(model, guide, Y, num_steps=30, lrs=(1e-3,), warm_start=False, estimator="dreg", progress=False)
    assert result.log_evidence - result.elbo > DRAWS_KL_WARNING


def test_a_dreg_fit_that_reaches_the_posterior_does_not_warn(recwarn):
    from pyro_nfvi.recipe import DRAWS_KL_WARNING

    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    result = fit(model, guide, Y, num_steps=400, estimator="dreg", progress=False)
    assert 0.0 <= result.log_evidence - result.elbo < DRAWS_KL_WARNING
    # the evidence of the five points, by quadrature over (mu, log scale)
    mu, log_s = torch.meshgrid(torch.linspace(0.0, 10.0, 801, dtype=torch.float64),
                               torch.linspace(-5.0, 3.0, 801, dtype=torch.float64), indexing="ij")
    log_joint = (dist.Normal(0.0, 10.0).log_prob(mu) + dist.Normal(0.0, 1.0).log_prob(log_s)  # LogNormal in log s
                 + dist.Normal(mu.unsqueeze(-1), log_s.exp().unsqueeze(-1)).log_prob(Y.double()).sum(-1))
    exact = torch.logsumexp(log_joint.flatten(), 0) + math.log((10.0 / 800) * (8.0 / 800))
    assert result.log_evidence == pytest.approx(float(exact), abs=0.05)
    assert not [w for w in recwarn if "KL(q || p)" in str(w.message)]
    # the ELBO-trained guide is not checked (its q is the approximation itself)
    pyro.clear_param_store()
    stl = fit(model, AutoFlowGuide(model, flow="iaf", num_flows=2), Y, num_steps=50, estimator="stl", progress=False)
    assert math.isnan(stl.elbo) and math.isnan(stl.log_evidence)


def test_a_check_that_cannot_run_says_why_and_keeps_the_fit(monkeypatch):
    import pyro_nfvi.evaluation as evaluation

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch in the model")

    monkeypatch.setattr(evaluation, "log_importance_weights", broken)
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    with pytest.warns(UserWarning, match="could not be checked.*shape mismatch in the model"):
        result = fit(model, guide, Y, num_steps=50, estimator="dreg", progress=False)
    assert len(result.losses) == 50 and math.isnan(result.elbo)


def test_jit_refuses_what_it_cannot_compile_before_any_work():
    guide = AutoFlowGuide(model, flow="planar", num_flows=2)
    with pytest.raises(ValueError, match="positional argument 0 is a list"):
        fit(model, guide, Y.tolist(), jit=True, progress=False)
    from pyro.infer import Trace_ELBO

    with pytest.raises(ValueError, match="ELBO instance"):
        fit(model, guide, Y, estimator=Trace_ELBO(), jit=True, progress=False)
    assert len(pyro.get_param_store()) == 0  # refused before the guide was set up


@pytest.mark.parametrize("estimator,loss_class", [("elbo", "JitTrace_ELBO"), ("stl", "JitSTL_ELBO"), ("dreg", "JitIW_ELBO")])
def test_jit_compiles_each_estimator(estimator, loss_class):
    from pyro_nfvi.recipe import make_loss

    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    assert type(make_loss(estimator, guide, 4, True, jit=True)).__name__ == loss_class
    result = fit(model, guide, Y, num_steps=150, lrs=(1e-2,), estimator=estimator, warm_start_steps=300, jit=True, progress=False)
    assert result.estimator == estimator and all(math.isfinite(v) for v in result.losses)
    assert abs(float(guide.median(Y)["mu"]) - float(Y.mean())) < 0.3


def test_fit_base_compiled_reaches_the_posterior():
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    losses = guide.fit_base(Y, num_steps=1000, lr=0.2, jit=True)
    assert sum(losses[-50:]) < sum(losses[:50])
    assert abs(float(guide.median(Y)["mu"]) - float(Y.mean())) < 0.3


def test_the_warm_start_does_not_reinitialise_the_sites_at_every_step():
    """``fit_base`` and ``log_joint`` run the model as given, not Pyro's InitMessenger around it (init_loc_fn per call)."""
    from pyro.infer.autoguide.initialization import init_to_median

    calls = []

    def counting_init(site):
        calls.append(site["name"])
        return init_to_median(site)

    guide = AutoFlowGuide(model, flow="iaf", num_flows=2, init_loc_fn=counting_init)
    guide(Y)
    setup = len(calls)
    assert setup > 0
    guide.fit_base(Y, num_steps=20)
    guide.log_joint(torch.zeros(guide.latent_dim), Y)
    assert len(calls) == setup


def test_jit_fits_a_pyro_guide_with_the_compiled_elbo():
    result = fit(model, AutoNormal(model), Y, num_steps=400, lrs=(0.2,), jit=True, progress=False)  # no warm start: a large step
    assert result.estimator == "elbo" and all(math.isfinite(v) for v in result.losses)
    assert abs(float(pyro.param("AutoNormal.locs.mu")) - float(Y.mean())) < 0.3
