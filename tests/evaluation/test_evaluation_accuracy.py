"""posterior_error: moment errors against reference draws, raw and importance-corrected (PSIS)."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nfvi.evaluation import MIN_PSIS_DRAWS, posterior_error

Y = torch.tensor([0.8, 1.4, -0.3, 2.1])
#: the posterior of ``model``: mu ~ N(sum y / (n + 1), 1 / (n + 1)); scale s ~ LogNormal(0, 0.5) a priori
POST_LOC, POST_SD = float(Y.sum() / (len(Y) + 1)), (len(Y) + 1.0) ** -0.5


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("s", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def reference(n=20000):
    gen = torch.Generator().manual_seed(0)
    mu = POST_LOC + POST_SD * torch.randn(n, generator=gen)
    s = (0.5 * torch.randn(n, generator=gen)).exp()
    return {"mu": mu, "s": s}


def guide_at(loc, sd, s_loc=0.0, s_sd=0.5):
    def guide(y):
        pyro.sample("mu", dist.Normal(loc, sd))
        pyro.sample("s", dist.LogNormal(s_loc, s_sd))
    return guide


def test_the_posterior_itself_scores_near_zero_both_ways():
    pyro.set_rng_seed(0)
    guide = guide_at(POST_LOC, POST_SD)
    for importance in (False, True):
        err = posterior_error(model, guide, Y, reference=reference(), num_samples=20000, importance=importance)
        assert err.mean < 0.05 and err.sd < 0.05, (importance, err)
    assert err.khat < 0.2 and err.ess > 0.9 * 20000  # q = p: the weights are constant


def test_importance_weights_correct_a_wide_shifted_guide():
    """A guide shifted by 0.5 posterior sd and 1.5 times too wide: the raw moments miss, the
    self-normalised PSIS moments do not (q covers p, so the weights have a light tail)."""
    pyro.set_rng_seed(0)
    guide = guide_at(POST_LOC + 0.5 * POST_SD, 1.5 * POST_SD, s_loc=0.2, s_sd=0.7)
    raw = posterior_error(model, guide, Y, reference=reference(), num_samples=20000)
    corrected = posterior_error(model, guide, Y, reference=reference(), num_samples=20000, importance=True)
    assert raw.mean > 0.35 and raw.sd > 0.35 and raw.khat is None
    assert corrected.mean < 0.08 and corrected.sd < 0.08
    assert set(corrected.sites) == {"mu", "s"}
    assert corrected.khat < 0.5 and 2000 < corrected.ess < 20000


def test_a_too_narrow_guide_is_flagged_by_khat():
    pyro.set_rng_seed(0)
    guide = guide_at(POST_LOC, 0.2 * POST_SD)
    corrected = posterior_error(model, guide, Y, reference=reference(), num_samples=20000, importance=True)
    assert corrected.sd > 0.2  # importance weights cannot widen a guide this narrow ...
    assert corrected.khat > 0.5 and corrected.ess < 1000  # ... and k-hat and the ESS say so


def test_clear_errors():
    guide = guide_at(POST_LOC, POST_SD)
    with pytest.raises(ValueError, match="num_samples"):
        posterior_error(model, guide, Y, reference=reference(), num_samples=MIN_PSIS_DRAWS - 1, importance=True)

    def subsampled(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y), subsample_size=2) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    def mu_guide(y):
        pyro.sample("mu", dist.Normal(POST_LOC, POST_SD))

    def outside_support(y):  # a guide that puts mu where the model has zero density
        pyro.sample("mu", dist.Normal(-5.0, 1.0))

    def positive_model(y):
        pyro.sample("mu", dist.Uniform(0.0, 1.0))

    with pytest.raises(ValueError, match="support"):  # Pyro's validation names it first
        posterior_error(positive_model, outside_support, Y, reference={"mu": torch.rand(100)}, importance=True)
    with pyro.validation_enabled(False), pytest.raises(ValueError, match="NaN, \\+inf or all -inf"):
        posterior_error(positive_model, outside_support, Y, reference={"mu": torch.rand(100)}, importance=True)
    with pytest.raises(ValueError, match="subsampled"):
        posterior_error(subsampled, mu_guide, Y, reference={"mu": reference()["mu"]}, importance=True)
    assert math.isfinite(posterior_error(subsampled, mu_guide, Y, reference={"mu": reference()["mu"]}).mean)


def test_a_model_that_does_not_broadcast_over_draws_is_explained():
    # Pyro's examples/lkj.py builds its covariance with torch.mm(torch.diag(...)): it runs on one draw
    # but not on a batch of draws, which the importance-weighted evaluation needs
    def unbatched(y):
        scales = pyro.sample("scales", dist.HalfCauchy(torch.ones(2)).to_event(1))
        cov = torch.mm(torch.diag(scales), torch.eye(2))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.MultivariateNormal(torch.zeros(2), scale_tril=cov), obs=y)

    def scales_guide(y):
        pyro.sample("scales", dist.LogNormal(torch.zeros(2), 0.1).to_event(1))

    y = torch.randn(5, 2)
    draws = {"scales": dist.LogNormal(torch.zeros(2), 0.1).sample((200,))}
    assert math.isfinite(posterior_error(unbatched, scales_guide, y, reference=draws).mean)  # the guide's draws only
    with pytest.raises(ValueError, match=r"failed on 1000 guide draws at once .*diag.*must broadcast") as info:
        posterior_error(unbatched, scales_guide, y, reference=draws, num_samples=1000, importance=True)
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's own error, kept as the cause
