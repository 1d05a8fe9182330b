"""The benchmark models of ``pyro_nfvi.targets.bayes.MODELS`` and their reference fixtures."""
import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.util import site_is_subsample

from pyro_nfvi.targets.bayes import MODELS, ar_series, collinear_regression, hierarchical_logistic, simplex_corr
from pyro_nfvi.targets.reference import load_reference, reference_path

NAMES = sorted(MODELS)


def latent_sites(model, args):
    trace = pyro.poutine.trace(model).get_trace(*args)
    return {name: site["value"].shape for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)}


@pytest.mark.parametrize("name", NAMES)
def test_model_traces_and_fits(name):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, args = MODELS[name]()
    trace = pyro.poutine.trace(model).get_trace(*args)
    trace.compute_log_prob()
    assert torch.isfinite(torch.stack([s["log_prob_sum"] for s in trace.nodes.values() if s["type"] == "sample"
                                       and "log_prob_sum" in s])).all()
    guide = AutoNormal(model)
    for elbo in (Trace_ELBO(), Trace_ELBO(num_particles=2, vectorize_particles=True)):
        loss = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo).step(*args)
        assert torch.isfinite(torch.tensor(loss))
    samples = Predictive(model, guide=guide, num_samples=3)(*args)
    for site, shape in latent_sites(model, args).items():
        value = samples[site]  # (3, *plate dims of size 1, *shape): Predictive keeps the batch dims
        assert value.shape[0] == 3 and value.shape[value.dim() - len(shape):] == shape
        assert value[0].numel() == shape.numel()


@pytest.mark.parametrize("make", [hierarchical_logistic, collinear_regression, ar_series, simplex_corr])
def test_data_deterministic_given_seed(make):
    state = torch.get_rng_state()
    _, first = make(seed=1)
    _, again = make(seed=1)
    _, other = make(seed=2)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_collinear_condition_number():
    _, (x, _) = collinear_regression()
    assert torch.linalg.cond(x) > 1e3


def test_ar_series_lags():
    _, (lags, y) = ar_series(order=3, length=50)
    assert lags.shape == (47, 3) and y.shape == (47,)
    assert torch.equal(lags[1:, 0], y[:-1]) and torch.equal(lags[2:, 1], y[:-2])


@pytest.mark.parametrize("bad", [dict(num_groups=0), dict(seed=-1)])
def test_bad_arguments_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        hierarchical_logistic(**bad)


@pytest.mark.parametrize("name", NAMES)
def test_reference_fixture(name):
    if not reference_path(name).exists():
        pytest.fail(f"missing fixture {reference_path(name)}; run benchmarks/nuts_reference.py")
    ref = load_reference(name)
    model, args = MODELS[name]()
    sites = latent_sites(model, args)
    assert set(ref.draws) == set(sites)
    for site, shape in sites.items():
        draws = ref.draws[site]
        assert draws.dtype == torch.float32 and draws.shape[1:] == shape
        assert 100 <= draws.shape[0] == ref.info["num_draws"] <= 12000
        assert torch.isfinite(draws).all()
    assert reference_path(name).stat().st_size < 3 * 2**20  # shipped in the package: small
    assert ref.info["ess_bulk_min"] > 1000  # enough for the benchmark's 0.1 sd accuracy targets
    assert ref.info["model"] == name
    assert ref.info["rhat_max"] < 1.01
    assert ref.info["nuts"]["seconds"] > 0 and ref.info["nuts"]["divergences"] >= 0


def test_load_reference_unknown_name():
    with pytest.raises(ValueError, match="name_or_path"):
        load_reference("no_such_model")
