"""Tests of the base classes: caching in FlowTransform, parameters of FlowModule, Hypernet, ConditionedFlow."""
import copy
import math
import pickle

import pyro.distributions as dist
import pytest
import torch
from torch.testing import assert_close

from pyro_nfvi.transforms.base import ConditionedFlow, FlowModule, FlowTransform, Hypernet


class Toy(FlowModule):
    """Elementwise affine family ``y = x exp(s) + t`` that counts its forward and inverse passes."""

    def __init__(self, dim, context_dim=0, hidden=(), cache_size=1, bad_init=False):
        super().__init__(dim, context_dim=context_dim, cache_size=cache_size)
        self.calls = {"forward": 0, "inverse": 0}
        self.bad_init = bad_init
        self._build_params(hidden)

    def param_shapes(self):
        return {"s": (self.dim,), "t": (self.dim,)}

    def init_params(self):
        return {"s": torch.full((self.dim + int(self.bad_init),), 0.5), "t": torch.arange(float(self.dim))}

    def _forward(self, x, p):
        self.calls["forward"] += 1
        return x * p["s"].exp() + p["t"], (x * 0 + p["s"]).sum(-1)

    def _inverse(self, y, p):
        self.calls["inverse"] += 1
        return (y - p["t"]) * (-p["s"]).exp(), (y * 0 + p["s"]).sum(-1)


class NoInverse(FlowTransform):
    def forward_and_log_det(self, x):
        return 2 * x, x.new_full(x.shape[:-1], self.dim * 0.6931471805599453)


def test_dim_checks_use_the_shared_wording():
    # base.check_dim was replaced by pyro_nfvi.validation.check_int; the message is unchanged
    for bad in (0, -2, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="dim must be an integer >= 1"):
            Toy(bad)
    with pytest.raises(ValueError, match="context_dim must be an integer >= 0"):
        Toy(2, context_dim=-1)


def test_constructor_arguments_are_validated():
    with pytest.raises(ValueError, match="dim"):
        Toy(0)
    with pytest.raises(ValueError, match="context_dim"):
        Toy(2, context_dim=-1)
    with pytest.raises(ValueError, match="cache_size"):
        Toy(2, cache_size=2)
    with pytest.raises(ValueError, match=r"init_params\(\)\['s'\] has shape \(3,\), expected \(2,\)"):
        Toy(2, bad_init=True)
    with pytest.raises(ValueError, match="hidden"):
        Toy(2, context_dim=3, hidden=(0,))


def test_forward_cache_is_keyed_by_identity():
    t = Toy(3)
    x = torch.randn(4, 3)
    y = t(x)
    assert t(x) is y and t.calls["forward"] == 1
    ladj = t.log_abs_det_jacobian(x, y)
    assert t.calls["forward"] == 1
    assert_close(ladj, torch.full((4,), 1.5))
    assert t.inv(y) is x and t.calls["inverse"] == 0
    # equal values but a different tensor: recomputed
    assert_close(t(x.clone()), y)
    assert t.calls["forward"] == 2
    assert_close(t.log_abs_det_jacobian(x, y.clone()), ladj)
    assert t.calls["forward"] == 3


def test_inverse_fills_the_cache():
    t = Toy(2)
    y = torch.randn(5, 2)
    x = t.inv(y)
    assert t.calls["inverse"] == 1
    assert_close(t(x), y)
    assert t(x) is y and t.calls["forward"] == 0  # the inverse cached (x, y, ladj)
    assert_close(t.log_abs_det_jacobian(x, y), torch.full((5,), 1.0))
    assert t.calls["forward"] == 0
    assert t.inv(y) is x and t.calls["inverse"] == 1


def test_cache_size_zero_never_caches():
    t = Toy(2, cache_size=0)
    x = torch.randn(3, 2)
    y = t(x)
    t(x)
    t.log_abs_det_jacobian(x, y)
    assert t.calls["forward"] == 3
    t.inv(y)
    assert t.calls["inverse"] == 1 and t._cache is None


def test_with_cache_and_clear_cache():
    t = Toy(2)
    assert t.with_cache(1) is t
    with pytest.raises(NotImplementedError, match="Toy"):
        t.with_cache(0)
    x = torch.randn(3, 2)
    y = t(x)
    t.clear_cache()
    assert t(x) is not y and t.calls["forward"] == 2


def test_in_place_parameter_updates_invalidate_the_cache():
    t = Toy(2)
    x = torch.randn(3, 2)
    y = t(x)
    ladj = t.log_abs_det_jacobian(x, y)
    (y.sum() + ladj.sum()).backward()
    torch.optim.SGD(t.parameters(), lr=0.1).step()
    y2 = t(x)
    assert y2 is not y
    assert_close(y2, x * t.s.exp() + t.t)
    assert_close(t.log_abs_det_jacobian(x, y2), t.s.sum().expand(3))
    with torch.no_grad():
        t.t.add_(1.0)
    assert_close(t(x), y2.detach() + 1.0)


def test_input_checks_name_the_event_shape():
    t = Toy(3)
    with pytest.raises(ValueError, match=r"event shape \(3,\).*input of shape \(4, 2\)"):
        t(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"event shape \(3,\).*shape \(\)"):
        t(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"event shape \(3,\).*value of shape \(5,\)"):
        t.inv(torch.randn(5))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        t.log_abs_det_jacobian(torch.randn(2), torch.randn(2))
    with pytest.raises(TypeError, match="tensor"):
        t([1.0, 2.0, 3.0])


def test_missing_inverse_is_a_clear_error():
    t = NoInverse(2)
    x = torch.randn(3, 2)
    y = t(x)
    assert t.inv(y) is x  # cached
    with pytest.raises(NotImplementedError, match="NoInverse does not implement an inverse"):
        t.inv(y.clone())


def test_copies_drop_the_cache():
    t = Toy(2)
    x = torch.randn(3, 2, requires_grad=True)
    t(x)  # the cache now holds non-leaf tensors with a graph
    for clone in (copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        assert clone._cache is None
        assert_close(clone(x), t(x))


def test_owned_and_amortized_parameters():
    owned = Toy(2)
    assert {n for n, _ in owned.named_parameters()} == {"s", "t"}
    assert_close(owned.params()["s"], torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="context_dim=0"):
        owned.params(torch.randn(3))
    amortized = Toy(2, context_dim=3)
    assert all(n.startswith("hypernet.") for n, _ in amortized.named_parameters())
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"context_dim=3: call \.condition\(context\).*\(\.\.\., 3\)"):
        amortized(x)
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 3\)"):
        amortized.condition(torch.randn(4, 2))
    t = amortized.condition(torch.randn(4, 3))
    assert isinstance(t, ConditionedFlow) and "Toy" in repr(t)
    assert t.bound["s"].shape == (4, 2) and t.raw["s"].shape == (4, 2)
    assert_close(t(x), x * math.exp(0.5) + torch.arange(2.0))  # the init values for every context


def test_bind_uses_given_raw_parameters():
    t = Toy(2).bind({"s": torch.zeros(5, 2), "t": torch.ones(5, 2)})
    x = torch.randn(5, 2)
    assert_close(t(x), x + 1)
    assert_close(t.log_abs_det_jacobian(x, t(x)), torch.zeros(5))
    assert_close(t.inv(t(x).clone()), x)


def test_conditioned_flow_broadcasts_particles():
    amortized = Toy(2, context_dim=3)
    with torch.no_grad():
        amortized.hypernet.head.weight.normal_()
    ctx = torch.randn(4, 3)
    t = amortized.condition(ctx)
    x = torch.randn(6, 4, 2)
    y = t(x)
    assert y.shape == (6, 4, 2) and t.log_abs_det_jacobian(x, y).shape == (6, 4)
    assert_close(y[3], amortized.condition(ctx)(x[3]))


@pytest.mark.parametrize("hidden", [(), (5,), (4, 6)])
def test_hypernet_starts_at_init_for_any_context(hidden):
    init = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor(0.25), "m": torch.arange(6.0).reshape(2, 3)}
    net = Hypernet(4, {"a": (2,), "b": (), "m": (2, 3)}, init, hidden)
    ctx = 100 * torch.randn(7, 5, 4)
    out = net(ctx)
    assert out["a"].shape == (7, 5, 2) and out["b"].shape == (7, 5) and out["m"].shape == (7, 5, 2, 3)
    for key in init:
        assert_close(out[key], init[key].expand_as(out[key]))
    # the zero-initialised head still learns: its weight gets a non-zero gradient
    sum(v.square().sum() for v in out.values()).backward()
    assert net.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        net(torch.randn(3))


@pytest.mark.parametrize("hidden", [(), (64,)])
def test_hypernet_output_scale_multiplies_the_head_and_slows_adam(hidden):
    init = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor(0.5)}
    ctx = torch.randn(9, 300)
    fan_in = hidden[-1] if hidden else 300
    moves = {}
    for scale in (1.0, 1.0 / fan_in):
        torch.manual_seed(1)
        net = Hypernet(300, {"a": (2,), "b": ()}, init, hidden, output_scale=scale)
        out = net(ctx)
        for key in init:  # still the identity's parameters for every context
            assert_close(out[key], init[key].expand_as(out[key]))
        with torch.no_grad():
            net.head.weight.normal_()
            trunk = net.trunk(ctx)
            expected = net.head.bias + scale * trunk @ net.head.weight.T
            assert_close(torch.cat([net(ctx)["a"], net(ctx)["b"].unsqueeze(-1)], -1), expected)
            net.head.weight.zero_()
        # Adam's first step moves every head weight and bias by lr (the sign of its gradient), so
        # output i moves by lr * (1 + scale * sum_j |h_ij|) when the signs agree
        optim = torch.optim.Adam(net.head.parameters(), lr=1e-3)
        net(ctx)["b"].sum().backward()
        sign = net.head.weight.grad[-1].sign()
        optim.step()
        with torch.no_grad():
            move = net(ctx)["b"] - init["b"]
            assert_close(move, -1e-3 * (1 + scale * trunk @ sign), rtol=1e-4, atol=1e-7)
        moves[scale] = move.abs().max().item()
    assert moves[1.0] > 5 * moves[1.0 / fan_in]
    with pytest.raises(ValueError, match="output_scale"):
        Hypernet(3, {"a": (1,)}, {"a": torch.zeros(1)}, output_scale=0.0)


@pytest.mark.parametrize("family", ["planar", "radial", "householder", "sylvester"])
def test_output_scale_needs_a_hypernetwork(family):
    from pyro_nfvi.transforms import flow

    layer = flow(family, 3, 1, context_dim=4, output_scale="fan_in")[0]
    assert layer.hypernet.output_scale == 1.0 / 4  # no hidden layer: fan_in is the context size
    assert flow(family, 3, 1, context_dim=4, hidden=(8,), output_scale="fan_in")[0].hypernet.output_scale == 1.0 / 8
    with pytest.raises(ValueError, match="context_dim=0"):
        flow(family, 3, 1, output_scale="fan_in")
    with pytest.raises(ValueError, match="output_scale"):
        flow(family, 3, 1, context_dim=4, output_scale="fan-in")


def test_chained_householder_refuses_an_output_scale():
    from pyro_nfvi.transforms import Householder

    with pytest.raises(ValueError, match="chained"):
        Householder(3, context_dim=3, chained=True, output_scale="fan_in")


def test_hypernet_validates_sizes():
    with pytest.raises(ValueError, match="context_dim"):
        Hypernet(0, {"a": (1,)}, {"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="hidden"):
        Hypernet(2, {"a": (1,)}, {"a": torch.zeros(1)}, hidden=(3, -1))


def test_modules_are_hashable_and_work_in_pyro():
    t = Toy(2)
    assert len({t, Toy(2)}) == 2 and {t: 1}[t] == 1
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, [t])
    z = q.rsample((3,))
    assert t.calls["forward"] == 1
    q.log_prob(z)
    assert t.calls == {"forward": 1, "inverse": 0}
    q.log_prob(z.clone())
    assert t.calls == {"forward": 1, "inverse": 1}


def test_conditioned_flow_names_its_bound_parameters_bound():
    # ConditionedFlow.params was a dict while FlowModule.params(...) is a method; now .raw / .bound
    module = Toy(2, context_dim=3)
    t = module.condition(torch.randn(4, 3))
    assert not hasattr(t, "params")
    assert t.raw.keys() == {"s", "t"} and t.bound.keys() == {"s", "t"}
    assert_close(t.bound["s"], module.params(torch.zeros(4, 3))["s"])
    assert t.param_batch_shape == (4,)
    assert ConditionedFlow(module, t.raw).param_batch_shape == (4,)
