"""FlowStack.pack_parameters: one flat parameter for a stack's owned layers, with unchanged maths."""
import pytest
import torch

from pyro_nfvi.transforms import flow

from flowcheck import perturb

FAMILIES = ["planar", "radial", "householder", "sylvester", "iaf", "coupling"]


def _random_stack(family, dim=4, num_flows=3):
    torch.manual_seed(0)
    return perturb(flow(family, dim, num_flows).double(), 0.3)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_stack_computes_the_same_map(family):
    stack = _random_stack(family)
    x = torch.randn(7, 4, dtype=torch.float64)
    y, ld = stack.forward_and_log_det(x)
    stack.pack_parameters()
    y2, ld2 = stack.forward_and_log_det(x)
    assert torch.allclose(y, y2, atol=1e-12) and torch.allclose(ld, ld2, atol=1e-12)
    x2, _ = stack.inverse_and_log_det(y2)
    assert torch.allclose(x2, x, atol=1e-8)
    jac = torch.autograd.functional.jacobian(lambda v: stack.forward_and_log_det(v)[0], x[0])
    assert torch.allclose(torch.linalg.slogdet(jac)[1], ld2[0], atol=1e-8)
    closed = stack.forward_and_jacobian(x)  # packed layers bound to views of `packed`: same closed forms
    if family in ("planar", "householder", "iaf"):
        assert torch.allclose(closed[0], y2, atol=1e-12) and torch.allclose(closed[1][0], jac, atol=1e-10)
        xr = x.clone().requires_grad_()
        ladj = stack.forward_and_log_det(xr)[1]
        auto = torch.autograd.grad(ladj.sum(), xr)[0] if ladj.requires_grad else torch.zeros_like(xr)
        assert torch.allclose(closed[2], auto, atol=1e-10)
    else:
        assert closed is None


@pytest.mark.parametrize("family", ["planar", "radial", "householder", "sylvester"])
def test_tensor_parameter_layers_share_one_tensor(family):
    stack = _random_stack(family).pack_parameters()
    assert [name for name, _ in stack.named_parameters()] == ["packed"]
    assert set(stack.state_dict()) >= {"packed"}
    y, ld = stack.forward_and_log_det(torch.randn(5, 4, dtype=torch.float64))
    (y.sum() + ld.sum()).backward()
    assert stack.packed.grad is not None and bool(stack.packed.grad.abs().sum() > 0)
    with pytest.raises(RuntimeError, match="packed in its FlowStack"):
        stack[0].raw_params()


def test_packing_keeps_network_layers_and_is_idempotent():
    stack = _random_stack("iaf")
    names = [n for n, _ in stack.named_parameters()]
    assert [n for n, _ in stack.pack_parameters().pack_parameters().named_parameters()] == names


def test_in_place_update_of_the_packed_tensor_refreshes_the_cache():
    stack = _random_stack("planar").pack_parameters()
    x = torch.randn(3, 4, dtype=torch.float64)
    y = stack(x)
    with torch.no_grad():
        stack.packed.add_(0.5)
    assert not torch.allclose(stack(x), y)


def test_amortized_stacks_are_not_packed():
    with pytest.raises(ValueError, match="amortized"):
        flow("planar", 3, 2, context_dim=4).pack_parameters()
