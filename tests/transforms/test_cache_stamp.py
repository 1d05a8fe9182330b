"""The transform cache follows parameter *objects*: replacing a parameter invalidates it."""
import torch
from torch import nn
from torch.testing import assert_close

from pyro_nfvi.transforms import IAF, Planar, flow


def _same_version(new, old):
    """``new`` with as many in-place updates as ``old`` had: only the object tells them apart."""
    with torch.no_grad():
        while new._version < old._version:
            new.add_(0.0)
    assert new._version == old._version
    return new


def _check_replacement_invalidates(transform, replace):
    x = torch.randn(6, transform.dim)
    y = transform(x)
    assert transform(x) is y  # a cache hit before the replacement
    replace()
    y_new = transform(x)
    assert y_new is not y  # used to return the stale cached y
    expected, ladj = transform.forward_and_log_det(x)
    assert_close(y_new, expected)
    assert_close(transform.log_abs_det_jacobian(x, y_new), ladj)
    assert not torch.allclose(y_new, y)


def test_replacing_a_planar_parameter_invalidates_the_cache():
    p = Planar(3)
    _check_replacement_invalidates(p, lambda: setattr(p, "u", _same_version(nn.Parameter(torch.randn(3)), p.u)))


def test_replacing_an_iaf_weight_invalidates_the_cache():
    layer = IAF(3)
    last = layer.arn.layers[-1]
    assert last.weight._version > 0  # zeroed at initialisation

    def replace():
        last.weight = _same_version(nn.Parameter(torch.randn_like(last.weight)), last.weight)

    _check_replacement_invalidates(layer, replace)


def test_replacing_a_parameter_inside_a_stack_invalidates_the_cache():
    stack = flow("planar", 3, 4)
    new = nn.Parameter(torch.randn(3))
    _check_replacement_invalidates(stack, lambda: setattr(stack[2], "u", _same_version(new, stack[2].u)))


def test_replaced_parameter_ids_are_not_reused_while_cached():
    # replacing twice between calls frees the middle object; the cached stamp keeps the cached one
    # alive, so a new parameter can never take its id and look unchanged
    p = Planar(2)
    x = torch.randn(4, 2)
    with torch.no_grad():
        for _ in range(50):
            y = p(x)
            p.u = nn.Parameter(torch.randn(2))
            p.u = nn.Parameter(torch.randn(2))
            assert_close(p(x), p.forward_and_log_det(x)[0])
            assert p(x) is not y
