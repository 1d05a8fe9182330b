"""importance_resample: draws of the PSIS-corrected posterior, in ArviZ's layout."""
import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nfvi import AmortizedFlowGuide
from pyro_nfvi.diagnostics import importance_resample, loo, psislw, to_inference_data

Y = torch.tensor([0.8, 1.4, -0.3, 2.1, 0.5])
POST_LOC, POST_SD = float(Y.sum() / (len(Y) + 1)), (len(Y) + 1.0) ** -0.5


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def wide_shifted_guide(y):
    pyro.sample("mu", dist.Normal(POST_LOC + 0.6 * POST_SD, 1.6 * POST_SD))


@pytest.fixture
def idata():
    pyro.set_rng_seed(0)
    return to_inference_data(model, wide_shifted_guide, Y, num_samples=8000)


def test_resampled_draws_have_the_posterior_moments(idata):
    raw = idata.posterior["mu"].values.ravel()
    new = importance_resample(idata, seed=1).posterior["mu"].values.ravel()
    assert abs(raw.mean() - POST_LOC) > 0.5 * POST_SD and abs(raw.std() / POST_SD - 1) > 0.4
    assert abs(new.mean() - POST_LOC) < 0.05 * POST_SD and abs(new.std() / POST_SD - 1) < 0.05


def test_layout_attributes_and_draws_stay_together(idata):
    new = importance_resample(idata, num_samples=3000, seed=2)
    assert set(new.groups()) == set(idata.groups())
    assert new.posterior["mu"].shape == (1, 3000)
    assert new.log_likelihood["y"].shape == (1, 3000, len(Y))
    assert new.posterior_predictive["y"].shape == (1, 3000, len(Y))
    np.testing.assert_array_equal(new.observed_data["y"].values, idata.observed_data["y"].values)
    # each kept draw carries its own log likelihood: log N(y | mu, 1)
    mu = new.posterior["mu"].values[0]
    expected = dist.Normal(torch.as_tensor(mu)[:, None], 1.0).log_prob(Y).numpy()
    np.testing.assert_allclose(new.log_likelihood["y"].values[0], expected, rtol=1e-5, atol=1e-5)
    assert (new.sample_stats["log_weight"].values == 0).all()
    attrs = new.sample_stats.attrs
    assert attrs["khat"] < 0.5 and 1000 < attrs["ess"] < 8000 and attrs["num_proposals"] == 8000
    assert len(np.unique(mu)) < 3000  # resampling repeats heavy draws


def test_systematic_resampling_keeps_each_draw_floor_or_ceil_times():
    n = 5000
    lw = np.random.default_rng(0).normal(0.0, 1.0, size=n)
    idata = az.from_dict(posterior={"i": np.arange(n)[None]}, sample_stats={"log_weight": lw[None]})
    picked = importance_resample(idata, seed=3).posterior["i"].values.ravel()
    expected = np.exp(psislw(lw)[0]) * n
    kept = np.bincount(picked, minlength=n)
    assert kept.sum() == n
    assert (np.abs(kept - expected) < 1.0 + 1e-9).all()
    assert not (np.diff(picked) >= 0).all()  # shuffled, not in proposal order


def test_seeded_and_loo_agrees_with_the_weighted_loo(idata):
    a = importance_resample(idata, seed=4).posterior["mu"].values
    b = importance_resample(idata, seed=4).posterior["mu"].values
    np.testing.assert_array_equal(a, b)
    weighted = loo(idata)
    resampled = loo(importance_resample(idata, seed=4))
    assert resampled.elpd_loo == pytest.approx(weighted.elpd_loo, abs=2 * weighted.se / np.sqrt(len(Y)) + 0.1)


def test_per_point_weights_of_an_amortized_guide_are_summed():
    def local_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    x = torch.tensor([0.3, -1.2, 2.0, 0.7])
    guide = AmortizedFlowGuide(local_model, plate="data", flow="planar", num_flows=1, model_args=(x,))
    pyro.set_rng_seed(0)
    idata = to_inference_data(local_model, guide, x, num_samples=500)
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "data")
    new = importance_resample(idata, seed=0)
    assert new.posterior["z"].shape == (1, 500, 4) and np.isfinite(new.sample_stats.attrs["khat"])


def test_clear_errors(idata):
    with pytest.raises(TypeError, match="InferenceData"):
        importance_resample({"posterior": None})
    with pytest.raises(TypeError, match="log_weight"):
        importance_resample(az.from_dict(posterior={"mu": np.zeros((1, 10))}))
    with pytest.raises(ValueError, match="num_samples"):
        importance_resample(idata, num_samples=0)
    broken = idata.copy()
    broken.sample_stats["log_weight"][0, 3] = np.nan
    with pytest.raises(ValueError, match="1 of 8000 log weights are NaN or"):
        importance_resample(broken)
    zero = az.from_dict(posterior={"i": np.arange(4)[None]}, sample_stats={"log_weight": np.full((1, 4), -np.inf)})
    with pytest.raises(ValueError, match="zero weight"):
        importance_resample(zero)


def test_draws_of_zero_density_are_never_kept():
    lw = np.random.default_rng(1).normal(size=500)
    lw[::7] = -np.inf  # e.g. a draw outside the model's support
    idata = az.from_dict(posterior={"i": np.arange(500)[None]}, sample_stats={"log_weight": lw[None]})
    picked = importance_resample(idata, seed=0).posterior["i"].values.ravel()
    assert picked.size == 500 and not np.isin(picked, np.arange(0, 500, 7)).any()
