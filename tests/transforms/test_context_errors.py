"""Misused contexts fail fast with a clear message: unamortized stacks, bad raw entries, bad batch shapes."""
import pytest
import torch

from pyro_nfvi.transforms import (
    IAF,
    AffineCoupling,
    FlowStack,
    Householder,
    Planar,
    Radial,
    Sylvester,
    flow,
)

FAMILY_NAMES = ["planar", "radial", "householder", "iaf", "sylvester", "coupling"]
LAYERS = {
    "planar": lambda d, c: Planar(d, context_dim=c),
    "radial": lambda d, c: Radial(d, context_dim=c),
    "householder": lambda d, c: Householder(d, context_dim=c),
    "iaf": lambda d, c: IAF(d, context_dim=c),
    "sylvester": lambda d, c: Sylvester(d, context_dim=c),
    "coupling": lambda d, c: AffineCoupling(d, context_dim=c),
}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_unamortized_stack_refuses_a_context(family):
    # used to return a stack silently, as if the context had been used
    stack = flow(family, 3, 2)
    context = torch.randn(32, 16)
    with pytest.raises(ValueError, match="FlowStack was built with context_dim=0.*takes no context"):
        stack.condition(context)
    with pytest.raises(ValueError, match="FlowStack was built with context_dim=0.*takes no context"):
        stack.raw_params(context)
    # the same wording as a single layer
    with pytest.raises(ValueError, match="was built with context_dim=0 and takes no context"):
        Planar(3).condition(context)


def test_empty_stack_refuses_a_context_but_binds_nothing():
    stack = flow("none", 3, 0)
    with pytest.raises(ValueError, match="takes no context"):
        stack.condition(torch.randn(4, 2))
    x = torch.randn(4, 3)
    assert torch.equal(stack.bind([])(x), x)  # what the amortized guide does for flow="none"


def test_stack_bind_checks_its_raw_entries():
    D, C = 3, 4
    stack = FlowStack([Planar(D), Planar(D, context_dim=C), Radial(D, context_dim=C)])
    raws = stack.raw_params(torch.randn(5, C))
    assert raws[0] is None
    stack.bind(raws)  # the right entries
    with pytest.raises(ValueError, match=r"expected 3 raw parameter entries.*got 2"):
        stack.bind(raws[:2])
    with pytest.raises(ValueError, match=r"layer 1 \(Planar\) is amortized.*raws\[1\] is None"):
        stack.bind([None, None, raws[2]])
    with pytest.raises(ValueError, match=r"layer 0 \(Planar\) was built with context_dim=0.*raws\[0\] must be None"):
        stack.bind([raws[1], raws[1], raws[2]])
    with pytest.raises(TypeError, match="list of per-layer raw parameters"):
        stack.bind(raws[1])
    with pytest.raises(ValueError, match=r"Planar.bind expects raw parameters \['b', 'u', 'w'\]"):
        stack.bind([None, {"u": raws[1]["u"]}, raws[2]])
    bad = dict(raws[1], w=torch.randn(5, D + 1))
    with pytest.raises(ValueError, match=r"raw\['w'\] must have shape \(\.\.\., \*\(3,\)\)"):
        stack.bind([None, bad, raws[2]])
    with pytest.raises(ValueError, match="Planar.bind expects raw parameters"):
        Planar(D).bind([1.0])


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("as_stack", [False, True])
def test_context_batch_mismatch_names_both_shapes(family, as_stack):
    # used to fail deep in torch ("Attempting to broadcast a dimension of length 8 at -1!", or
    # "The size of tensor a (5) must match the size of tensor b (8)")
    D, C = 3, 4
    module = flow(family, D, 3, context_dim=C) if as_stack else LAYERS[family](D, C)
    transform = module.condition(torch.randn(8, C))
    assert tuple(transform.param_batch_shape) == (8,)
    pattern = r"batch shape \(5,\) does not broadcast against the batch shape \(8,\) of its context"
    with pytest.raises(ValueError, match=pattern):
        transform(torch.randn(5, D))
    with pytest.raises(ValueError, match=pattern):
        transform.inv(torch.randn(5, D))
    with pytest.raises(ValueError, match=r"value batch shape \(2, 5\)"):
        transform.inv(torch.randn(2, 5, D))
    # shapes that broadcast still work: one point per context row, particles first, or one point
    for shape in [(8, D), (2, 8, D), (1, D), (D,)]:
        assert transform(torch.randn(shape)).shape == torch.broadcast_shapes(shape[:-1], (8,)) + (D,)


def test_network_layers_check_the_context_shape_when_bound():
    iaf = IAF(3, context_dim=2)
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\)"):
        iaf.bind({"context": torch.randn(4, 3)})
    with pytest.raises(ValueError, match=r"IAF.bind expects \{'context': tensor\}"):
        iaf.bind({"ctx": torch.randn(4, 2)})
