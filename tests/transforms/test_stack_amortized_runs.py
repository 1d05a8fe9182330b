"""FlowStack's batched paths for amortized layers equal binding each layer on its own."""
import pytest
import torch

from pyro_nfvi.transforms import BoundStack, PlanarRun, flow

from flowcheck import perturb


def _per_layer(stack, context):
    raws = [layer.raw_params(context) for layer in stack]
    return BoundStack([layer.bind(raw) for layer, raw in zip(stack, raws)], stack.dim), raws


@pytest.mark.parametrize("output_scale", ["none", "fan_in", 0.3])
@pytest.mark.parametrize("kind", ["planar", "radial", "sylvester"])
def test_concatenated_linear_heads_equal_per_layer_hypernets(kind, output_scale):
    torch.manual_seed(0)
    stack = flow(kind, 3, num_flows=4, context_dim=5, output_scale=output_scale).double()
    perturb(stack, 0.3)
    context = torch.randn(6, 5, dtype=torch.float64)
    _, expected = _per_layer(stack, context)
    got = stack.raw_params(context)
    for e, g in zip(expected, got):
        assert e.keys() == g.keys()
        for k in e:
            torch.testing.assert_close(g[k], e[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("particles", [(), (4,)])
def test_planar_run_matches_layer_by_layer(particles):
    torch.manual_seed(1)
    stack = flow("planar", 3, num_flows=5, context_dim=4).double()
    perturb(stack, 0.3)
    context = torch.randn(6, 4, dtype=torch.float64)
    x = torch.randn(particles + (6, 3), dtype=torch.float64)
    bound = stack.condition(context)
    assert any(isinstance(t, PlanarRun) for t in bound.layers)
    reference, _ = _per_layer(stack, context)

    def run(transform):
        stack.zero_grad()
        y, ld = transform.forward_and_log_det(x)
        (y.square().sum() + ld.sum()).backward()
        return y.detach(), ld.detach(), [p.grad.clone() for p in stack.parameters()]

    y1, ld1, g1 = run(bound)
    bound2, _ = _per_layer(stack, context)
    y2, ld2, g2 = run(bound2)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld1, ld2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert torch.allclose(bound.inv(y1.clone()), x, atol=1e-8)
