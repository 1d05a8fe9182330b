"""The flow() factory: its ``family`` argument, the deprecated ``kind=`` alias, options and buffers."""
import warnings

import pytest
import torch

from pyro_nfvi.transforms import FAMILIES, IAF, Permute, Planar, Sylvester, flow

CONFIGS = [
    ("planar", {}),
    ("radial", {}),
    ("householder", {}),
    ("iaf", {}),
    ("iaf", {"permutation": "random"}),
    ("iaf", {"permutation": "random", "seed": 3}),
    ("sylvester", {"kind": "orthogonal"}),
    ("sylvester", {"kind": "householder"}),
    ("sylvester", {"kind": "triangular"}),
    ("coupling", {}),
]


def test_family_is_the_first_argument():
    for stack in (flow("planar", 3, 2), flow(family="planar", dim=3, num_flows=2)):
        assert [type(layer) for layer in stack] == [Planar, Planar]


def test_kind_is_a_deprecated_alias_of_family():
    with pytest.warns(FutureWarning, match=r"flow\(kind='planar', \.\.\.\) is deprecated"):
        stack = flow(kind="planar", dim=3, num_flows=2)
    assert [type(layer) for layer in stack] == [Planar, Planar]
    with pytest.warns(FutureWarning):
        assert len(flow(kind="none", dim=3, num_flows=2)) == 0
    with pytest.raises(TypeError, match="needs the flow family"):
        flow(dim=3, num_flows=2)


def test_sylvester_kind_passes_straight_through():
    # used to raise "got multiple values for argument 'kind'"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning: kind names no family here
        stack = flow("sylvester", 3, 2, kind="householder")
        amortized = flow("sylvester", 3, 2, context_dim=4, kind="triangular")
    assert [layer.kind for layer in stack] == ["householder", "householder"]
    assert [layer.kind for layer in amortized] == ["triangular", "triangular"]
    assert [layer.reverse for layer in amortized] == [False, True]
    with pytest.warns(FutureWarning, match="sylvester_kind"):
        old = flow("sylvester", 3, 2, sylvester_kind="triangular")
    assert [layer.kind for layer in old] == ["triangular", "triangular"]
    with pytest.raises(ValueError, match="unknown kind='planar'"):
        flow("sylvester", 3, 2, kind="planar")  # a family name, but family is given: Sylvester's option


def test_factory_arguments_are_checked():
    with pytest.raises(ValueError, match=r"unknown family='spline'"):
        flow("spline", 3, 2)
    with pytest.raises(ValueError, match="permutation is only used by family='iaf'"):
        flow("planar", 3, 2, permutation="random")
    with pytest.raises(ValueError, match="unknown permutation='shuffled'"):
        flow("iaf", 3, 2, permutation="shuffled")
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        flow("iaf", 3, 2, permutation="random", seed=-1)


@pytest.mark.parametrize("family, opts", CONFIGS, ids=[f"{f}-{'-'.join(map(str, o.values()))}" for f, o in CONFIGS])
@pytest.mark.parametrize("context_dim", [0, 3])
def test_buffers_are_a_function_of_the_configuration(family, opts, context_dim):
    # IAF used Pyro's default random order (torch.randperm) and permutation="random" drew from the
    # global RNG: two stacks built alike under different seeds had different buffers
    torch.manual_seed(1)
    a = flow(family, 5, 3, context_dim=context_dim, **opts)
    torch.manual_seed(2)
    b = flow(family, 5, 3, context_dim=context_dim, **opts)
    buffers_a, buffers_b = dict(a.named_buffers()), dict(b.named_buffers())
    assert buffers_a.keys() == buffers_b.keys()
    for name in buffers_a:
        assert torch.equal(buffers_a[name], buffers_b[name]), name
    state_a, state_b = a.state_dict(), b.state_dict()
    persistent = set(state_a) - {n for n, _ in a.named_parameters()}
    assert all(torch.equal(state_a[n], state_b[n]) for n in persistent)
    if family == "iaf":
        assert any("mask" in name for name in buffers_a) and any("permutation" in name for name in buffers_a)


def test_iaf_order_is_the_identity_and_random_permutations_follow_the_seed():
    torch.manual_seed(5)
    assert torch.equal(IAF(4).permutation, torch.arange(4))
    assert torch.equal(IAF(4, context_dim=2).permutation, torch.arange(4))
    perms = {}
    for seed in (0, 1):
        stack = flow("iaf", 6, 4, permutation="random", seed=seed)
        perms[seed] = [layer.perm.tolist() for layer in stack if isinstance(layer, Permute)]
    assert perms[0] != perms[1]
    assert all(sorted(p) == list(range(6)) for p in perms[0])


def test_sylvester_kind_alias_warns():
    with pytest.warns(FutureWarning, match="sylvester_kind"):
        assert Sylvester(3, sylvester_kind="triangular").kind == "triangular"
    assert set(FAMILIES) == {"planar", "radial", "householder", "iaf", "sylvester", "coupling"}
