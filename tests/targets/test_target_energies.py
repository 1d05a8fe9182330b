"""Tests of the energies U1-U4, their Pyro models and their grid log-normalisers."""
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_nfvi.targets import (
    ENERGIES,
    U1,
    U2,
    U3,
    U4,
    box_wall,
    energy_model,
    log_normalizer,
    target_energy,
)


# Reference implementations straight from Table 1 of Rezende & Mohamed (2015), naive scalar maths.
def _ref(name, z1, z2):
    w1 = math.sin(2 * math.pi * z1 / 4)
    w2 = 3 * math.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + math.exp(-(z1 - 1) / 0.3))
    if name == "U1":
        r = math.hypot(z1, z2)
        return 0.5 * ((r - 2) / 0.4) ** 2 - math.log(
            math.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + math.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
        )
    if name == "U2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "U3":
        return -math.log(math.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + math.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
    return -math.log(math.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + math.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))


def test_values_by_hand():
    # U1 at (2, 0): on the ring, one lobe at its centre, the other at distance 4 (weight e^{-22.2}).
    assert U1(torch.tensor([2.0, 0.0], dtype=torch.float64)).item() == pytest.approx(
        -math.log1p(math.exp(-0.5 * (4 / 0.6) ** 2)), abs=1e-15
    )
    # U1 at the origin: 0.5 (2/0.4)^2 - log(2 e^{-0.5 (2/0.6)^2}) = 12.5 + 50/9 - log 2.
    assert U1(torch.zeros(2, dtype=torch.float64)).item() == pytest.approx(12.5 + 50 / 9 - math.log(2), rel=1e-12)
    # U2 vanishes on the sine z2 = sin(pi z1 / 2) and is 0.5 one standard deviation (0.4) away.
    assert U2(torch.tensor([1.0, 1.0])).item() == 0.0
    assert U2(torch.tensor([0.0, 0.4], dtype=torch.float64)).item() == pytest.approx(0.5, rel=1e-12)
    # U3 at (1, -0.5): w1 = 1, w2 = 3, so both terms are e^{-0.5 (1.5/0.35)^2}.
    assert U3(torch.tensor([1.0, -0.5], dtype=torch.float64)).item() == pytest.approx(
        0.5 * (1.5 / 0.35) ** 2 - math.log(2), rel=1e-12
    )


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_matches_reference(name):
    z = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    got = ENERGIES[name](z)
    want = torch.tensor([_ref(name, a, b) for a, b in z.tolist()], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(ENERGIES))
@pytest.mark.parametrize("batch", [(), (7,), (6, 5), (3, 4, 5)])
def test_batch_shapes_and_dtype(name, batch):
    z = torch.randn(batch + (2,), dtype=torch.float64)
    u = ENERGIES[name](z)
    assert u.shape == batch and u.dtype == torch.float64
    # elementwise: the batched result equals the flattened one
    assert torch.equal(u.reshape(-1), ENERGIES[name](z.reshape(-1, 2)))


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_stable_far_away_and_at_origin(name):
    # far from the modes every exp underflows: a naive log(sum exp) gives inf; logsumexp stays finite
    z = torch.tensor([[0.0, 0.0], [0.0, 100.0], [-1e3, 1e3], [1e3, -1e3]], requires_grad=True)
    u = ENERGIES[name](z)
    u.sum().backward()
    assert torch.isfinite(u).all() and torch.isfinite(z.grad).all()
    assert (u[1:] > 1e3).all()


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        U1(torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        U2(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="U5"):
        target_energy("U5")
    with pytest.raises(ValueError, match="box"):
        target_energy("U1", box=-1.0)


def test_box_wall():
    z = torch.tensor([[3.9, -3.9], [4.2, 0.0], [0.0, -4.1], [5.0, 5.0]], dtype=torch.float64)
    assert box_wall(z).tolist() == pytest.approx([0.0, 2.0, 0.5, 100.0])
    inside = torch.rand(20, 2, dtype=torch.float64) * 8 - 4
    assert torch.equal(target_energy("U3")(inside), U3(inside))
    assert target_energy("U3", box=None) is U3


def test_model_density_and_particle_plate():
    model = energy_model("U4")
    z = torch.randn(5, 2)
    with pyro.plate("particles", 5, dim=-1):
        tr = poutine.trace(poutine.condition(model, {"z": z})).get_trace()
    tr.compute_log_prob()
    assert tr.nodes["U"]["log_prob"].shape == (5,)
    assert torch.allclose(tr.nodes["U"]["log_prob"] + tr.nodes["z"]["log_prob"], -target_energy("U4")(z))


def test_model_under_trace_elbo_with_autonormal():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = energy_model("U1")
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(num_particles=2))
    assert all(math.isfinite(svi.step()) for _ in range(5))
    # vectorized particles: z has shape (P, 2) inside the particle plate, the factor (P,)
    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    losses = [svi.step() for _ in range(150)]
    assert all(math.isfinite(loss) for loss in losses)
    # the ELBO is a lower bound on log Z: -loss <= log Z up to Monte Carlo noise, and it improved
    log_z = log_normalizer("U1")
    final = -Trace_ELBO(num_particles=4000, vectorize_particles=True).loss(model, guide)
    assert final < log_z + 0.05
    assert final > -sum(losses[:10]) / 10 + 0.5
    assert final > log_z - 2.0


def test_log_normalizer_analytic_and_consistent():
    # U2 in the box: z2 integrates to 0.4 sqrt(2 pi); z1 gives 8 plus two half-Gaussian walls of scale 0.1.
    want = math.log(0.4 * math.sqrt(2 * math.pi) * (8 + 0.1 * math.sqrt(2 * math.pi)))
    assert log_normalizer("U2") == pytest.approx(want, abs=1e-6)
    for name in ENERGIES:
        coarse, fine = log_normalizer(name, grid=300), log_normalizer(name, grid=600)
        assert abs(coarse - fine) < 1e-5, name
    # the box hardly changes U1, which is proper on R^2
    assert log_normalizer("U1", box=None) == pytest.approx(log_normalizer("U1"), abs=1e-6)
    assert log_normalizer("U1", grid=600, extent=8.0, box=None) == pytest.approx(
        log_normalizer("U1", grid=600, box=None), abs=1e-6
    )


def test_log_normalizer_errors():
    with pytest.raises(ValueError, match="U3 is not normalisable"):
        log_normalizer("U3", box=None)
    with pytest.raises(ValueError, match="grid"):
        log_normalizer("U1", grid=3)
