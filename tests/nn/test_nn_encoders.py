"""Tests of the encoder building blocks in :mod:`pyro_nfvi.nn`."""
import math

import pytest
import torch

from pyro_nfvi.nn import MLP, LocScaleHead, inverse_softplus


@pytest.mark.parametrize("y", [1e-4, 0.1, 1.0, 30.0])
def test_inverse_softplus(y):
    x = inverse_softplus(y)
    assert math.isclose(float(torch.nn.functional.softplus(torch.tensor(x, dtype=torch.float64))), y, rel_tol=1e-9)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_inverse_softplus_rejects(bad):
    with pytest.raises(ValueError, match="positive"):
        inverse_softplus(bad)


def test_mlp_shapes_and_activation():
    net = MLP(6, (5, 4), activation="relu")
    assert net.output_dim == 4
    out = net(torch.randn(2, 3, 6))
    assert out.shape == (2, 3, 4)
    assert bool((out >= 0).all())  # the activation follows the last layer too
    identity = MLP(6, ())
    x = torch.randn(3, 6)
    assert identity.output_dim == 6 and torch.equal(identity(x), x)


def test_mlp_errors():
    with pytest.raises(ValueError, match="input_dim"):
        MLP(0, (3,))
    with pytest.raises(ValueError, match="hidden_dims"):
        MLP(3, (0,))
    with pytest.raises(ValueError, match="activation"):
        MLP(3, (2,), activation="swishy")
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        MLP(3, (2,))(torch.randn(4, 5))


def test_mlp_float64():
    net = MLP(3, (4,)).double()
    assert net(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("scale_output", ["none", "fan_in", 0.5])
@pytest.mark.parametrize("init_scale", [0.1, 1.0])
def test_loc_scale_head_init(init_scale, scale_output):
    head = LocScaleHead(16, 5, init_scale=init_scale, scale_output=scale_output)
    h = torch.randn(100, 16)
    loc, scale_raw = head(h)
    assert loc.shape == scale_raw.shape == (100, 5)
    scale = torch.nn.functional.softplus(scale_raw)
    assert torch.allclose(scale, torch.full_like(scale, init_scale), rtol=0.1)
    assert loc.std() > 0.05  # the loc half keeps its default initialisation
    loc.sum().backward()
    assert head.linear.weight.grad[:5].abs().sum() > 0


def test_loc_scale_head_scale_output_is_the_same_function_at_init_and_slows_adam_on_the_scale_half():
    h = torch.randn(9, 300)
    moves = {}
    for scale_output, c in (("none", 1.0), ("fan_in", 1 / 300)):
        torch.manual_seed(3)
        head = LocScaleHead(300, 4, init_scale=0.5, scale_output=scale_output)
        loc, scale_raw = head(h)
        if moves:  # the initial effective weight does not depend on scale_output
            torch.testing.assert_close((loc, scale_raw), first)
        else:
            first = (loc.detach(), scale_raw.detach())
        with torch.no_grad():
            w = head.linear.weight
            expected = head.linear.bias + h @ torch.cat([w[:4], c * w[4:]]).T
            torch.testing.assert_close(torch.cat(head(h), -1), expected)
        # Adam's first step moves each weight and bias by lr against the sign of its gradient: the
        # scale half moves by lr * (1 + c * sum_j |h_j|) where the signs agree, the loc half by c = 1
        optim = torch.optim.Adam(head.parameters(), lr=1e-3)
        sum(head(h)).sum().backward()
        sign_s, sign_l = head.linear.weight.grad[4].sign(), head.linear.weight.grad[0].sign()
        optim.step()
        with torch.no_grad():
            loc_after, scale_after = head(h)
            torch.testing.assert_close(scale_after[:, 0] - first[1][:, 0], -1e-3 * (1 + c * h @ sign_s),
                                       rtol=1e-3, atol=1e-6)
            torch.testing.assert_close(loc_after[:, 0] - first[0][:, 0], -1e-3 * (1 + h @ sign_l),
                                       rtol=1e-3, atol=1e-6)
        moves[scale_output] = (scale_after - first[1]).abs().max().item()
    assert moves["none"] > 20 * moves["fan_in"]
    with pytest.raises(ValueError, match="output_scale"):
        LocScaleHead(8, 2, scale_output=0.0)
