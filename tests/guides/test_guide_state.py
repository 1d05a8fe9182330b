"""Setup and state of the flow guides: Pyro's contracts kept (regressions of the guide-core issue)."""
import math
import warnings
from unittest import mock

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value

from pyro_nfvi import AmortizedFlowGuide, AutoFlowGuide
from pyro_nfvi.guides import FastSVI
from pyro_nfvi.objectives import AnnealedELBO
from pyro_nfvi.transforms import IAF

Y = 3.0 + torch.randn(20, generator=torch.Generator().manual_seed(0))


def model(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", 20):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


def two_sites():
    pyro.sample("a", dist.Normal(5.0, 1.0))
    pyro.sample("b", dist.Normal(-5.0, 1.0))


@pytest.fixture
def module_local():
    with pyro.settings.context(module_local_params=True):
        yield


def _train(guide, m, *args, steps=50, lr=0.05):
    svi = SVI(m, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    return [svi.step(*args) for _ in range(steps)]


# -- setup ----------------------------------------------------------------------------------------
def test_data_none_idiom_sets_up_at_the_first_call():
    guide = AutoFlowGuide(model, flow="planar", num_flows=2)
    assert not guide.is_set_up and guide.latent_dim is None  # not traced with y=None
    _train(guide, model, Y, steps=300)
    assert guide.latent_dim == 1
    normal = AutoNormal(model)
    _train(normal, model, Y, steps=300)
    # the same objective as AutoNormal: no observed site turned into a latent
    elbo = Trace_ELBO(num_particles=500, vectorize_particles=True)
    assert abs(elbo.loss(model, guide, Y) - elbo.loss(model, normal, Y)) < 0.5
    assert abs(float(guide.median(Y)["mu"]) - float(Y.mean())) < 0.3


def test_data_none_idiom_amortized():
    def local(y=None):
        with pyro.plate("data", 20):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("obs", dist.Normal(z, 0.5), obs=y)

    guide = AmortizedFlowGuide(local, plate="data", flow="planar", num_flows=2, encoder_hidden=(8,))
    assert not guide.is_set_up
    assert all(math.isfinite(v) for v in _train(guide, local, Y, steps=5))
    assert guide.local_sites == ["z"]


def test_all_default_arguments_are_not_guessed():
    # Pyro's LDA example: model(data=None, args=None, batch_size=None) reads args.num_topics
    def lda_like(data=None, args=None, batch_size=None):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(args.num_topics), 1.0).to_event(1))
        with pyro.plate("docs", data.shape[0]):
            pyro.sample("obs", dist.Normal(mu.sum(-1), 1.0), obs=data)

    class Args:
        num_topics = 3

    guide = AutoFlowGuide(lda_like, flow="iaf", num_flows=2)  # AutoNormal(lda_like) works too
    assert not guide.is_set_up
    guide(Y, Args())
    assert guide.latent_dim == 3


@pytest.mark.parametrize("stable", [False, True])
def test_construction_costs_a_few_network_passes_not_one_per_dimension(stable):
    def big():
        pyro.sample("z", dist.Normal(torch.arange(300.0), 1.0).to_event(1))

    init = init_to_value(values={"z": torch.arange(300.0)})
    with mock.patch.object(IAF, "_affine", autospec=True, side_effect=IAF._affine) as passes:
        guide = AutoFlowGuide(big, flow="iaf", num_flows=3, model_args=(), init_loc_fn=init, stable=stable)
    assert passes.call_count <= 2 * 3  # was 300 per layer
    # the posterior still starts centred at init_loc_fn's values, through permutations and gates
    draws = guide.get_posterior().sample((4000,))
    assert (draws.mean(0) - torch.arange(300.0)).abs().max() < 0.03


# -- saving and loading ---------------------------------------------------------------------------
CONFIGS = [
    (dict(flow="planar", num_flows=4), dict(flow="planar", num_flows=2)),
    (dict(flow="planar", num_flows=2), dict(flow="planar", num_flows=6)),
    (dict(flow="planar", num_flows=2), dict(flow="radial", num_flows=2)),
    (dict(flow="iaf", num_flows=2), dict(flow="iaf", num_flows=3)),
    (dict(flow="iaf", num_flows=2), dict(flow="iaf", num_flows=2, hidden=[20])),
]


@pytest.mark.parametrize("saved, loaded", CONFIGS)
def test_param_store_load_into_another_configuration_raises(saved, loaded, tmp_path):
    guide = AutoFlowGuide(two_sites, model_args=(), **saved)
    _train(guide, two_sites, steps=3)
    pyro.get_param_store().save(tmp_path / "p.pt")
    pyro.clear_param_store()
    other = AutoFlowGuide(two_sites, model_args=(), **loaded)
    pyro.get_param_store().load(tmp_path / "p.pt")
    with pytest.raises(ValueError, match="another configuration") as info:
        other()
    key = next(k for k in loaded if saved.get(k) != loaded.get(k)) if loaded != saved else "flow_opts"
    key = "flow_opts" if key == "hidden" else key
    assert key in str(info.value)


@pytest.mark.parametrize("saved, loaded", CONFIGS)
def test_state_dict_into_another_configuration_raises_before_copying(saved, loaded):
    guide = AutoFlowGuide(two_sites, model_args=(), **saved)
    other = AutoFlowGuide(two_sites, model_args=(), **loaded)
    before = {k: v.clone() for k, v in other.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises((ValueError, RuntimeError), match="another configuration|size mismatch|Missing|Unexpected"):
        other.load_state_dict(guide.state_dict())
    after = other.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_state_dict_into_a_guide_not_set_up_says_what_to_do():
    guide = AutoFlowGuide(two_sites, model_args=())
    with pytest.raises(RuntimeError, match="model_args"):
        AutoFlowGuide(two_sites).load_state_dict(guide.state_dict())


def _round_trip_guides():
    return (
        AutoFlowGuide(two_sites, flow="iaf", num_flows=2, model_args=(), name="g1"),
        AutoFlowGuide(two_sites, flow="planar", num_flows=3, model_args=(), name="g2"),
    )


def _medians(*guides):
    return [{k: float(v) for k, v in g.median().items()} for g in guides]


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("how", ["param_store", "state_dict", "torch_save"])
def test_round_trip_two_guides_alive(how, local, tmp_path):
    if how == "param_store" and local:
        pytest.skip("module_local_params=True does not use Pyro's param store (see the next test)")
    with pyro.settings.context(module_local_params=local):
        g1, g2 = _round_trip_guides()
        for g in (g1, g2):
            svi = FastSVI(two_sites, g, lr=0.05) if local else None
            for _ in range(30):
                svi.step() if local else _train(g, two_sites, steps=1)
        expected = _medians(g1, g2)
        assert abs(expected[0]["a"] - 5.0) < 1.5  # trained
        pyro.set_rng_seed(5)
        sample = g1()["a"]
        if how == "param_store":
            pyro.get_param_store().save(tmp_path / "p.pt")
            pyro.clear_param_store()
            f1, f2 = _round_trip_guides()
            pyro.get_param_store().load(tmp_path / "p.pt")
            # the loaded values reach state_dict() at once, before any call
            assert torch.equal(f1.state_dict()["loc"], g1.state_dict()["loc"])
        elif how == "state_dict":
            torch.save([g1.state_dict(), g2.state_dict()], tmp_path / "sd.pt")
            f1, f2 = _round_trip_guides()
            s1, s2 = torch.load(tmp_path / "sd.pt", weights_only=True)
            f1.load_state_dict(s1)
            f2.load_state_dict(s2)
        else:
            torch.save([g1, g2], tmp_path / "g.pt")
            f1, f2 = torch.load(tmp_path / "g.pt", weights_only=False)
        assert _medians(f1, f2) == expected
        pyro.set_rng_seed(5)
        assert torch.equal(f1()["a"], sample)


def test_param_store_load_into_a_trained_guide_reaches_state_dict(tmp_path):
    guide = AutoFlowGuide(two_sites, flow="iaf", num_flows=2, model_args=())
    _train(guide, two_sites, steps=20)
    pyro.get_param_store().save(tmp_path / "p.pt")
    saved = {k: v.clone() for k, v in guide.state_dict().items() if torch.is_tensor(v)}
    _train(guide, two_sites, steps=20)
    pyro.get_param_store().load(tmp_path / "p.pt")
    now = guide.state_dict()  # no call in between
    assert all(torch.equal(now[k], v) for k, v in saved.items())


def test_module_local_params_refuses_a_loaded_store(tmp_path, module_local):
    guide = AutoFlowGuide(two_sites, model_args=())
    with pyro.settings.context(module_local_params=False):
        other = AutoFlowGuide(two_sites, model_args=())
        other()
        pyro.get_param_store().save(tmp_path / "p.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "p.pt")
    with pytest.raises(RuntimeError, match="load_state_dict"):
        guide()


def test_a_newer_guide_of_the_same_name_does_not_leak_into_an_older_one():
    first = AutoFlowGuide(two_sites, flow="planar", num_flows=2)
    _train(first, two_sites, steps=30)
    before = first.loc.detach().clone()
    pyro.clear_param_store()
    second = AutoFlowGuide(two_sites, flow="planar", num_flows=2)
    _train(second, two_sites, steps=5, lr=0.5)
    with pytest.raises(RuntimeError, match="another live guide"):
        first()
    assert torch.equal(first.loc.detach(), before)  # nothing of the other guide was taken


def test_a_new_guide_takes_over_a_live_guides_entries_with_a_warning():
    first = AutoFlowGuide(two_sites, flow="planar", num_flows=2)
    _train(first, two_sites, steps=30)
    second = AutoFlowGuide(two_sites, flow="planar", num_flows=2, model_args=())
    init = second.loc.detach().clone()
    with pytest.warns(RuntimeWarning, match="takes over"):
        second()
    assert torch.equal(second.loc.detach(), init)  # a new guide starts from its own initial values


def test_nothing_to_warn_for_one_guide():
    guide = AutoFlowGuide(two_sites, flow="planar", num_flows=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(guide, two_sites, steps=3)


# -- annealing on every path ----------------------------------------------------------------------
def test_fast_svi_advances_annealing(module_local):
    guide = AutoFlowGuide(two_sites, flow="planar", num_flows=2, model_args=())
    loss = AnnealedELBO(mode="kl_warmup", warmup_steps=10)
    svi = FastSVI(two_sites, guide, loss=loss, lr=0.01)
    for _ in range(4):
        svi.step()
    assert loss.t == 4 and math.isclose(loss.beta, 0.4, abs_tol=0.11)


def test_svi_advances_annealing():
    guide = AutoFlowGuide(two_sites, flow="planar", num_flows=2)
    loss = AnnealedELBO(mode="kl_warmup", warmup_steps=10)
    svi = SVI(two_sites, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    for _ in range(4):
        svi.step()
    assert loss.t == 4


# -- Monte Carlo summaries are cached -------------------------------------------------------------
def test_median_draws_are_cached_until_a_parameter_changes():
    guide = AutoFlowGuide(two_sites, flow="iaf", num_flows=2, model_args=())
    calls = []
    original = guide.get_posterior

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    guide.get_posterior = counting
    m1 = guide.median()
    m2 = guide.quantiles([0.5])
    assert len(calls) == 1 and m1["a"] == m2["a"][0]
    _train(guide, two_sites, steps=1)
    n = len(calls)
    guide.median()
    assert len(calls) == n + 1


def test_fit_advances_annealing(module_local):
    from pyro_nfvi.guides import fit_fast

    guide = AutoFlowGuide(two_sites, flow="planar", num_flows=2)
    loss = AnnealedELBO(mode="kl_warmup", warmup_steps=10)
    fit_fast(two_sites, guide, num_steps=6, loss=loss, lr=0.01)
    assert loss.t == 6 and math.isclose(loss.beta, 0.6, abs_tol=0.11)
