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


@pytest.mark.parametrize("init_scale", [0.1, 1.0])
def test_loc_scale_head_init(init_scale):
    head = LocScaleHead(16, 5, init_scale=init_scale)
    h = torch.randn(100, 16)
    loc, scale_raw = head(h)
    assert loc.shape == scale_raw.shape == (100, 5)
    scale = torch.nn.functional.softplus(scale_raw)
    assert torch.allclose(scale, torch.full_like(scale, init_scale), rtol=0.1)
    assert loc.std() > 0.05  # the loc half keeps its default initialisation
    loc.sum().backward()
    assert head.linear.weight.grad[:5].abs().sum() > 0
