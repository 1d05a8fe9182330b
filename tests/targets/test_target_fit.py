"""Tests of the plain-torch flow fit to the 2-D energies and of its figure."""
import math

import pyro.distributions as dist
import pytest
import torch

from pyro_nfvi.targets import FlowApproximation, anneal_beta, fit_energy, plot_energy_fits

SMALL = dict(samples=32, eval_samples=2000, grid=200)


def test_anneal_schedule():
    assert anneal_beta(0, 1000) == pytest.approx(0.01)
    assert anneal_beta(500, 1000) == pytest.approx(0.51)
    assert anneal_beta(990, 1000) == 1.0 and anneal_beta(5000, 1000) == 1.0
    assert anneal_beta(0, 0) == 1.0


@pytest.mark.parametrize("kind,k", [("planar", 3), ("none", 0)])
def test_log_q_matches_transformed_distribution(kind, k):
    torch.manual_seed(0)
    q = FlowApproximation(2, kind, num_flows=k)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.5 * torch.randn_like(p))
    z, log_q = q.rsample_and_log_prob(50)
    base = dist.Normal(q.loc, q.log_scale.exp()).to_event(1)
    # score fresh copies of z, so the flow's true inverse is used rather than its cache
    ref = dist.TransformedDistribution(base, [q.stack]).log_prob(z.detach().clone())
    assert torch.allclose(log_q, ref, atol=1e-4)


def test_fit_is_a_bound_and_improves():
    fit = fit_energy("U1", num_flows=4, steps=300, **SMALL)
    assert math.isfinite(fit.bound) and math.isfinite(fit.initial_bound)
    assert fit.bound > fit.initial_bound + 2.0
    # a lower bound on log Z up to Monte Carlo error
    assert fit.bound < fit.log_z + 4 * fit.bound_se
    assert fit.kl == pytest.approx(fit.log_z - fit.bound)
    assert [h[0] for h in fit.history] == [300]
    assert fit.history[-1][1] == 1.0


def test_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = fit_energy("U3", num_flows=2, steps=20, seed=7, **SMALL)
    after = torch.rand(3)
    b = fit_energy("U3", num_flows=2, steps=20, seed=7, **SMALL)
    assert torch.equal(after, expected)
    assert a.bound == b.bound and a.initial_bound == b.initial_bound
    c = fit_energy("U3", num_flows=2, steps=20, seed=8, **SMALL)
    assert c.bound != a.bound


def test_fit_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        fit_energy("U1", steps=-1)
    with pytest.raises(ValueError, match="samples"):
        fit_energy("U1", samples=1)
    with pytest.raises(ValueError, match="anneal"):
        fit_energy("U1", anneal=2.0)
    with pytest.raises(ValueError, match="flow kind"):
        fit_energy("U1", flow="nope", steps=1, **SMALL)


def test_plot_several_targets(tmp_path):
    fits = [fit_energy(t, num_flows=k, steps=2, **SMALL) for t in ("U1", "U2") for k in (1, 2)]
    out = plot_energy_fits(fits[:3], tmp_path / "fits.png", num_samples=500)
    assert (tmp_path / "fits.png").stat().st_size > 1000 and out == tmp_path / "fits.png"
    with pytest.raises(ValueError, match="at least one"):
        plot_energy_fits([], tmp_path / "none.png")
