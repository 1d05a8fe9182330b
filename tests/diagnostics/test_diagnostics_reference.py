"""Tests of reference_inference_data (NUTS draws as InferenceData) and plot_marginals."""
import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nfvi.diagnostics import plot_marginals, reference_inference_data, to_inference_data
from pyro_nfvi.targets.bayes import MODELS
from pyro_nfvi.targets.reference import load_reference


def test_eight_schools_reference_log_likelihood_and_layout():
    model, (sigma, y) = MODELS["eight_schools_centered"]()
    draws = load_reference("eight_schools_centered").draws
    idata = reference_inference_data(model, draws, sigma, y)
    assert {"posterior", "log_likelihood", "observed_data"} == set(idata.groups())  # no log_weight: plain az.loo
    theta = draws["theta"].double()
    want = dist.Normal(theta, sigma.double()).log_prob(y.double()).numpy()
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(idata.posterior["tau"].values[0], draws["tau"].numpy())
    np.testing.assert_array_equal(idata.observed_data["obs"].values, y.numpy())
    # the same variables and dims as a guide's InferenceData, so that summaries line up
    guide_idata = to_inference_data(model, pyro.infer.autoguide.AutoNormal(model), sigma, y, num_samples=30)
    for name in ("mu", "tau", "theta"):
        assert idata.posterior[name].dims == guide_idata.posterior[name].dims
    assert list(az.summary(idata, kind="stats").index) == list(az.summary(guide_idata, kind="stats").index)
    assert -32.0 < az.loo(idata).elpd_loo < -29.0


def test_reference_draws_must_match_the_model():
    model, args = MODELS["eight_schools_centered"]()
    draws = dict(load_reference("eight_schools_centered").draws)
    with pytest.raises(ValueError, match=r"missing \['tau'\]"):
        reference_inference_data(model, {k: v for k, v in draws.items() if k != "tau"}, *args)
    with pytest.raises(ValueError, match=r"not latent sites: \['obs'\]"):
        reference_inference_data(model, {**draws, "obs": draws["theta"]}, *args)
    with pytest.raises(ValueError, match=r"site 'theta': draws of shape \(2000, 7\)"):
        reference_inference_data(model, {**draws, "theta": draws["theta"][:, :7]}, *args)
    with pytest.raises(ValueError, match="same number of draws"):
        reference_inference_data(model, {**draws, "mu": draws["mu"][:10]}, *args)


def test_reference_of_a_model_with_event_dims_and_no_plate():
    def model(y):
        beta = pyro.sample("beta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(beta, 1.0).to_event(1), obs=y)

    y = torch.tensor([0.5, -1.0])
    post = dist.Normal(y / 2, 0.5 ** 0.5).sample((300,))
    idata = reference_inference_data(model, {"beta": post}, y)
    assert idata.posterior["beta"].shape == (1, 300, 2)
    want = dist.Normal(post, 1.0).log_prob(y).sum(-1).numpy()
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], want, rtol=1e-5)


def test_plot_marginals_checks_its_inputs(tmp_path):
    model, args = MODELS["eight_schools_centered"]()
    idata = reference_inference_data(model, load_reference("eight_schools_centered").draws, *args)
    path = plot_marginals({"NUTS": idata, "draws": np.exp(np.random.default_rng(0).normal(size=400))}, "tau",
                          tmp_path / "tau.png")
    assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match="not a scalar"):
        plot_marginals({"NUTS": idata}, "theta", tmp_path / "theta.png")
    with pytest.raises(ValueError, match="no variable 'sigma'"):
        plot_marginals({"NUTS": idata}, "sigma", tmp_path / "sigma.png")
    with pytest.raises(ValueError, match="at least one"):
        plot_marginals({}, "tau", tmp_path / "none.png")
