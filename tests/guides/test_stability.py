"""Flow guides train without divergence at common settings (regressions of the posteriors issue).

The eight-schools run of the issue: ``ClippedAdam(lr, clip_norm=10)``, ``Trace_ELBO(num_particles=4,
vectorize_particles=True)``.  Before the fix the affine IAF (K=4) reached losses of 1e3-1e7 within
the first ~700 steps at lr 1e-2 (and ~1000 at 5e-3), and affine coupling within ~900 at lr 5e-3.
The cause: Adam moves each of the ``fan_in`` weights of the conditioner's last layer by about
``lr`` per step, so the shift and log-scale move by about ``lr * fan_in``; the fix scales the
network's output by ``1 / fan_in`` (``output_scale="fan_in"``, the guide's default for both).
"""
import math

import pyro
import torch
import pytest
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_nfvi import AutoFlowGuide
from pyro_nfvi.targets.bayes import eight_schools
from pyro_nfvi.transforms import IAF, AffineCoupling, FlowStack, Permute, flow


def _fit(guide, model, args, lr, steps):
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0}),
              Trace_ELBO(num_particles=4, vectorize_particles=True))
    return [svi.step(*args) for _ in range(steps)]


@pytest.mark.parametrize("family", ["iaf", "coupling"])
def test_eight_schools_does_not_diverge(family):
    model, args = eight_schools()
    losses = _fit(AutoFlowGuide(model, flow=family, num_flows=4), model, args, lr=1e-2, steps=1200)
    assert all(math.isfinite(v) for v in losses)
    assert max(losses[100:]) < 80.0, max(losses[100:])  # a spike of a diverging run is 1e3-1e7
    pyro.clear_param_store()
    reference = _fit(AutoNormal(model), model, args, lr=1e-2, steps=1200)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(losses[-200:]) < mean(reference[-200:]) + 1.0


@pytest.mark.parametrize("family", ["iaf", "planar"])
def test_fit_base_warm_starts_the_gaussian_and_leaves_the_flow(family):
    model, args = eight_schools()
    guide = AutoFlowGuide(model, flow=family, num_flows=2, model_args=args)
    flow_before = [p.detach().clone() for p in guide.flow_stack.parameters()]
    loc_before = guide.loc.detach().clone()
    losses = guide.fit_base(*args, num_steps=300, lr=0.05)
    assert all(torch.equal(a, b) for a, b in zip(flow_before, guide.flow_stack.parameters()))
    assert not torch.equal(loc_before, guide.loc.detach())
    assert all(p.grad is None for p in guide.parameters())  # nothing left for the next optimizer
    elbo = Trace_ELBO(num_particles=1000, vectorize_particles=True)
    pyro.set_rng_seed(1)
    warm = elbo.loss(model, guide, *args)
    pyro.clear_param_store()
    reference = AutoNormal(model)
    _fit(reference, model, args, lr=0.05, steps=300)
    pyro.set_rng_seed(1)
    assert warm < elbo.loss(model, reference, *args) + 1.0, (warm, losses[-5:])


@pytest.mark.parametrize("jit", [False, True])
def test_fit_base_runs_an_untrained_iaf_stack_as_one_permutation_with_the_same_result(jit, monkeypatch):
    """The held IAF stack is the identity between permutations: ``fit_base`` runs its reduced form
    (``FlowStack.reduced``), and trains the base exactly as through the whole stack."""
    model, args = eight_schools()
    runs = []
    for reduce in (True, False):
        if not reduce:
            monkeypatch.setattr(FlowStack, "reduced", lambda self: self)
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoFlowGuide(model, flow="iaf", num_flows=3, model_args=args)
        assert isinstance(guide.flow_stack.reduced(), Permute) == reduce
        losses = guide.fit_base(*args, num_steps=40, lr=0.05, jit=jit)
        runs.append((losses, guide.loc.detach().clone(), guide.scale_raw.detach().clone()))
        assert "_held_stack" not in guide.__dict__
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][2], runs[1][2])


def test_a_trained_or_gated_iaf_stack_is_not_reduced():
    stack = flow("iaf", 4, num_flows=2)
    assert isinstance(stack.reduced(), Permute)
    gated = flow("iaf", 4, num_flows=2, stable=True)
    assert gated.reduced() is gated
    with torch.no_grad():
        stack.layers[0].arn.layers[-1].bias[0] = 1e-3
    assert stack.reduced() is stack
    planar = flow("planar", 4, num_flows=2)
    assert planar.reduced() is planar
    assert len(flow("none", 4, 0).reduced()) == 0


@pytest.mark.parametrize("make", [lambda scale: IAF(5, output_scale=scale),
                                  lambda scale: AffineCoupling(5, hidden=(24,), output_scale=scale)],
                         ids=["iaf", "coupling"])
def test_one_adam_step_moves_the_unscaled_output_fan_in_times_further(make):
    """The mechanism: Adam's first step moves every weight by exactly ``lr``, so the output moves by
    ``lr * sum_j |h_j|`` unscaled and ``1 / fan_in`` of that scaled."""
    x = torch.randn(64, 5)
    moves = {}
    for scale in ("none", "fan_in"):
        torch.manual_seed(0)
        layer = make(scale)
        fan_in = layer.hidden[-1]
        before = layer(x).detach()
        opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
        loss = (layer(x) ** 2).sum() - layer.log_abs_det_jacobian(x, layer(x)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        layer.clear_cache()
        moves[scale] = (layer(x).detach() - before).abs().max().item()
    assert moves["none"] / moves["fan_in"] == pytest.approx(fan_in, rel=0.05), (moves, fan_in)
    assert moves["fan_in"] < 0.05  # about lr times the hidden activations, not lr * fan_in


@pytest.mark.parametrize("family", ["iaf", "coupling"])
def test_the_guide_builds_affine_layers_with_scaled_networks_by_default(family):
    model, args = eight_schools()
    layers = [m for m in AutoFlowGuide(model, flow=family, num_flows=2, model_args=args).flow_stack
              if hasattr(m, "output_scale")]
    assert len(layers) == 2
    assert all(not m.stable and m.output_scale == pytest.approx(1.0 / m.hidden[-1]) for m in layers)
    unscaled = AutoFlowGuide(model, flow=family, num_flows=2, model_args=args, output_scale="none", name="other")
    assert all(m.output_scale == 1.0 for m in unscaled.flow_stack if hasattr(m, "output_scale"))
