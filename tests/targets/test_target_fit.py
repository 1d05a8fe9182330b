"""Tests of the energy fit through AutoFlowGuide + AnnealedELBO + FastSVI, of its bound and of its figure."""
import math

import pyro
import pytest
import torch
from pyro.infer.autoguide.initialization import init_to_mean

from pyro_nfvi.guides import AutoFlowGuide
from pyro_nfvi.targets import (
    EnergyFit,
    EnergyFitDiverged,
    energy_model,
    estimate_bound,
    fit_energy,
    log_normalizer,
    plot_energy_fits,
    target_energy,
)

SMALL = dict(samples=32, eval_samples=2000, grid=200)


@pytest.fixture(scope="module")
def u1_fit():
    """A short fit of U1 (a few seconds).

    Calibration (this configuration, seeds 0-3): KL 0.056, 0.062, 0.206, 0.065; the Gaussian baseline
    (``flow="none"``, 1000 steps) stays at KL 3.3.
    """
    return fit_energy("U1", num_flows=16, steps=300, samples=64, lr=0.03, eval_samples=20000, grid=400,
                      log_every=100)


def test_short_fit_reaches_a_small_kl(u1_fit):
    fit = u1_fit
    assert isinstance(fit, EnergyFit) and isinstance(fit.guide, AutoFlowGuide)
    assert len(fit.guide.flow_stack) == 16
    assert fit.log_z == pytest.approx(1.8775, abs=1e-3)
    assert fit.initial_bound < fit.log_z - 3.0  # N(0, I) is far from the ring
    assert 0 < fit.kl < 0.4  # about twice the worst of four seeds, far below the Gaussian's 3.3
    # a lower bound on log Z up to Monte Carlo error
    assert fit.bound < fit.log_z + 4 * fit.bound_se
    assert fit.kl == pytest.approx(fit.log_z - fit.bound)
    # q put its mass on U1's ring of radius 2 (exp(-U1) has almost no mass at |z| < 1)
    radius = fit.sample(5000).norm(dim=-1)
    assert abs(radius.median().item() - 2.0) < 0.2 and (radius < 1.0).float().mean() < 0.03


def test_annealing_schedule_reached_beta_one(u1_fit):
    fit = u1_fit
    assert fit.objective.mode == "free_energy"
    assert fit.objective.t == fit.steps == 300  # FastSVI advanced the counter once per step
    assert fit.objective.beta == 1.0
    steps, betas, bounds = zip(*fit.history)
    assert steps == (100, 200, 300)
    # beta_t = 0.01 + 0.99 min(1, t/150) at the step taken (t = step - 1), 1 once t >= 150
    assert betas == pytest.approx((0.01 + 0.99 * 99 / 150, 1.0, 1.0))
    assert all(math.isfinite(b) for b in bounds) and bounds[-1] > bounds[0]


def test_no_annealing_runs_at_beta_one():
    fit = fit_energy("U1", num_flows=1, steps=10, anneal=0.0, log_every=5, **SMALL)
    assert [h[1] for h in fit.history] == [1.0, 1.0]


def test_estimate_bound_of_a_standard_normal_guide():
    # flow="none" at init: q = N(0, I), so E_q[-U - log q] = E[-U(eps)] + log(2 pi e) exactly
    model = energy_model("U2")
    guide = AutoFlowGuide(model, flow="none", init_scale=1.0, init_loc_fn=init_to_mean, model_args=())
    energy = target_energy("U2")
    bound, se = estimate_bound(guide, energy, 40000, seed=3)
    eps = torch.randn(200000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = (-energy(eps)).mean().item() + 1.0 + math.log(2 * math.pi)
    assert 0 < se < 0.05
    assert bound == pytest.approx(want, abs=4 * se + 0.01)
    assert bound < log_normalizer("U2", grid=200)


def test_estimate_bound_is_seeded_and_leaves_rng_and_param_store_alone():
    pyro.clear_param_store()
    guide = AutoFlowGuide(energy_model("U1"), flow="planar", num_flows=2, model_args=())
    energy = target_energy("U1")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = estimate_bound(guide, energy, 500, seed=1)
    after = torch.rand(3)
    assert torch.equal(after, expected)
    assert a == estimate_bound(guide, energy, 500, seed=1) != estimate_bound(guide, energy, 500, seed=2)
    assert len(pyro.get_param_store()) == 0
    with pytest.raises(ValueError, match="num_samples"):
        estimate_bound(guide, energy, 1)


def test_reproducible_and_leaves_global_rng_and_param_store_alone():
    pyro.clear_param_store()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = fit_energy("U3", num_flows=2, steps=20, seed=7, **SMALL)
    after = torch.rand(3)
    b = fit_energy("U3", num_flows=2, steps=20, seed=7, log_every=5, **SMALL)  # reports do not change the fit
    assert torch.equal(after, expected)
    assert a.bound == b.bound and a.initial_bound == b.initial_bound
    assert torch.equal(a.sample(100, seed=4), b.sample(100, seed=4))
    c = fit_energy("U3", num_flows=2, steps=20, seed=8, **SMALL)
    assert c.bound != a.bound
    assert len(pyro.get_param_store()) == 0  # the guides kept their parameters to themselves


@pytest.mark.filterwarnings("ignore:Encountered:UserWarning")  # Pyro warns of the inf on the way
def test_divergence_raises_and_names_the_learning_rate():
    with pytest.raises(FloatingPointError, match=r"lr=100000.*smaller learning rate"):
        fit_energy("U1", num_flows=2, steps=50, lr=1e5, **SMALL)


@pytest.mark.filterwarnings("ignore:Encountered:UserWarning")
def test_divergence_keeps_the_record_up_to_the_failure():
    with pytest.raises(EnergyFitDiverged, match=r"lr=100000") as info:
        fit_energy("U1", num_flows=2, steps=50, lr=1e5, log_every=1, **SMALL)
    err = info.value
    assert isinstance(err, FloatingPointError) and 2 <= err.step <= 50
    # a bound estimate for every step before the failing one, in order
    assert [h[0] for h in err.history] == list(range(1, err.step))


def test_fit_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        fit_energy("U1", steps=-1)
    with pytest.raises(ValueError, match="samples"):
        fit_energy("U1", samples=1)
    with pytest.raises(ValueError, match="anneal"):
        fit_energy("U1", anneal=2.0)
    with pytest.raises(ValueError, match="lr"):
        fit_energy("U1", lr=0.0)
    with pytest.raises(ValueError, match="final_lr"):
        fit_energy("U1", final_lr=1.5)
    with pytest.raises(ValueError, match="flow"):
        fit_energy("U1", flow="nope", steps=1, **SMALL)
    with pytest.raises(ValueError, match="energy"):
        fit_energy("U9", steps=1, **SMALL)


def test_plot_several_targets(tmp_path):
    fits = [fit_energy(t, num_flows=k, steps=2, **SMALL) for t in ("U1", "U2") for k in (1, 2)]
    out = plot_energy_fits(fits[:3], tmp_path / "fits.png", num_samples=500)
    assert (tmp_path / "fits.png").stat().st_size > 1000 and out == tmp_path / "fits.png"
    with pytest.raises(ValueError, match="at least one"):
        plot_energy_fits([], tmp_path / "none.png")


def test_fit_times_its_steps():
    fit = fit_energy("U1", num_flows=1, steps=6, **SMALL)
    assert fit.train_steps == 6 and 0 < fit.train_seconds <= fit.seconds and fit.train_cpu_seconds > 0
    assert fit.ms_per_step == pytest.approx(1000 * fit.train_seconds / 6)


def test_energy_histogram_layout_and_panels(tmp_path):
    from pyro_nfvi.targets import energy_histogram, plot_energy_panels

    # z1 across (columns), z2 up (rows): a point at (3, -3) lands bottom right
    counts = energy_histogram(torch.tensor([[3.0, -3.0]] * 5 + [[0.5, 9.0]]), bins=8, extent=4.0)
    assert counts.shape == (8, 8) and counts.sum() == 5 and counts[1, 7] == 5
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        energy_histogram(torch.zeros(4, 3))
    path = plot_energy_panels({"U1": [("q", counts), ("missing", None)]}, tmp_path / "p.png", panel_size=1.5, dpi=60)
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="at least one target"):
        plot_energy_panels({}, tmp_path / "none.png")
