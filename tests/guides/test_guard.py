"""The non-finite guard: FastSVI and GuardedOptim skip NaN/inf steps and stop a run of them."""
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_nfvi.guides import AutoFlowGuide, FastSVI
from pyro_nfvi.guides.guard import GuardedOptim, NonFiniteGuard, describe_parameter


@pytest.fixture(autouse=True)
def no_validation():
    # with validation on, Pyro refuses the NaN factor itself; the guard is for runs without it
    with pyro.validation_enabled(False):
        yield


def make_model(broken):
    """A model whose log density is NaN while ``broken[0]`` is true."""

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        if broken[0]:
            pyro.factor("broken", z.sum() * math.nan)

    return model


def snapshot(named):
    return {n: p.detach().clone() for n, p in named}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


def test_fast_svi_skips_a_nan_step_and_leaves_parameters_and_optimizer_unchanged():
    pyro.set_rng_seed(0)
    broken = [False]
    model = make_model(broken)
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    svi = FastSVI(model, guide, lr=0.01)
    svi.step(), svi.step()
    broken[0] = True
    params = snapshot(guide.named_parameters())
    state = {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
             for k, s in svi.optimizer.state.items()}
    with pytest.warns(RuntimeWarning, match=r"step 3 skipped: the gradient of 'guide.loc'"):
        loss = svi.step()
    assert math.isnan(loss)
    assert_same(snapshot(guide.named_parameters()), params)
    for k, s in svi.optimizer.state.items():
        for n, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(state[k][n])), n
    assert (svi.guard.skipped, svi.guard.consecutive) == (1, 1)
    broken[0] = False
    assert math.isfinite(svi.step())  # the next good step is applied and resets the run
    assert svi.guard.consecutive == 0
    assert any(not torch.equal(p, params[n]) for n, p in snapshot(guide.named_parameters()).items())


def test_fast_svi_raises_after_max_skips_naming_the_step_parameter_and_layer():
    pyro.set_rng_seed(0)
    model = make_model([False])
    guide = AutoFlowGuide(model, flow="iaf", num_flows=4)
    svi = FastSVI(model, guide, lr=0.01, max_skips=3)
    svi.step()
    # layer 2 of the stack blows up: its first weight's gradient becomes NaN from now on
    weight = guide.flow_stack.layers[2].arn.layers[0].weight
    weight.register_hook(lambda g: g * math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        svi.step(), svi.step()
        with pytest.raises(FloatingPointError) as info:
            svi.step()
    msg = str(info.value)
    assert msg.startswith("step 4: 3 consecutive steps")
    assert "'guide.flow_stack.layers.2.arn.layers.0.weight' (flow layer 2 (IAF))" in msg
    assert "learning rate" in msg


def test_max_skips_none_never_raises_and_guard_false_applies_every_step():
    pyro.set_rng_seed(0)
    model = make_model([True])
    guide = AutoFlowGuide(model, flow="planar", num_flows=2)
    svi = FastSVI(model, guide, lr=0.01, max_skips=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(15):
            svi.step()
    assert svi.guard.skipped == 15
    unguarded = FastSVI(model, guide, lr=0.01, guard=False)
    unguarded.step()
    assert all(torch.isnan(p).all() for p in guide.parameters())  # what the guard prevents
    with pytest.raises(ValueError, match="max_skips"):
        FastSVI(model, guide, max_skips=0)


def test_guarded_optim_under_plain_svi():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    broken = [False]
    model = make_model(broken)
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    adam = pyro.optim.ClippedAdam({"lr": 0.01})
    optim = GuardedOptim(adam, max_skips=3, module=guide)
    svi = SVI(model, guide, optim, Trace_ELBO())
    svi.step(), svi.step()
    broken[0] = True
    params = snapshot(pyro.get_param_store().named_parameters())
    state = adam.get_state()
    with pytest.warns(RuntimeWarning, match=r"step 3 skipped: the gradient of 'AutoFlowGuide.loc'"):
        assert math.isnan(svi.step())
    assert_same(snapshot(pyro.get_param_store().named_parameters()), params)
    after = adam.get_state()
    for name in state:
        assert torch.equal(after[name]["state"][0]["exp_avg"], state[name]["state"][0]["exp_avg"]), name
    broken[0] = False
    assert math.isfinite(svi.step())
    broken[0] = True
    with pytest.raises(FloatingPointError, match=r"step 7: 3 consecutive.*'AutoFlowGuide.loc'"):
        for _ in range(3):
            svi.step()
    # a NaN confined to one flow layer is named with the layer
    pyro.clear_param_store()
    model = make_model([False])
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    svi = SVI(model, guide, GuardedOptim(pyro.optim.Adam({"lr": 0.01}), max_skips=1, module=guide), Trace_ELBO())
    svi.step()
    guide.flow_stack.layers[0].arn.layers[1].bias.register_hook(lambda g: g * math.inf)
    with pytest.raises(FloatingPointError, match=r"flow_stack\$\$\$layers.0.arn.layers.1.bias' \(flow layer 0 \(IAF\)\)"):
        svi.step()
    with pytest.raises(TypeError, match="wraps a Pyro optimizer"):
        GuardedOptim(torch.optim.Adam)


def test_nan_loss_with_finite_gradients_is_skipped_too():
    guard = NonFiniteGuard(max_skips=1)
    w = torch.nn.Parameter(torch.ones(2))
    w.grad = torch.zeros(2)
    assert guard.check(torch.tensor(0.5), [("w", w)])
    with pytest.raises(FloatingPointError, match="the loss is not finite"):
        guard.check(torch.tensor(math.inf), [("w", w)])
    assert describe_parameter("net.layers.1.weight") == "'net.layers.1.weight' (layer 1)"
    assert describe_parameter("net.layers.1.weight", torch.nn.Module()) == "'net.layers.1.weight'"


@pytest.mark.parametrize("kwargs", [{"clip_norm": -1.0}, {"clip_norm": 0.0}, {"clip_norm": math.nan}, {"lr": -1.0},
                                    {"lr": 0.0}, {"lr": math.inf}])
def test_fast_svi_refuses_bad_training_settings_up_front(kwargs):
    # FastSVI(clip_norm=-1.0) used to be accepted and performed gradient ascent
    model = make_model([False])
    with pytest.raises(ValueError, match=rf"{next(iter(kwargs))} must be a positive finite number"):
        FastSVI(model, AutoFlowGuide(model, flow="planar", num_flows=2), **kwargs)


def test_divergence_with_validation_on_names_the_parameter_not_a_delta_site():
    # it used to end in "Expected parameter log_density ... Delta(v: nan, log_density: nan)"
    from pyro_nfvi.targets.bayes import eight_schools

    pyro.set_rng_seed(0)
    model, args = eight_schools()
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
    svi = FastSVI(model, guide, lr=1e6, max_skips=5)
    with pyro.validation_enabled(True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match=r"5 consecutive steps .* the gradient of 'guide\.\w+'"):
            for _ in range(200):
                svi.step(*args)
    assert all(bool(torch.isfinite(p).all()) for p in guide.parameters())
