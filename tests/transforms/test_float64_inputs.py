"""A float64 input or context is promoted the same way by every flow family (issue 9).

The flows' parameters are float32; a float64 input gives a float64 output and log-det (torch's type
promotion, as the elementwise families always did) and a float64 context is read by the
hypernetwork or conditioner in its own dtype.  Either way the result equals the float32 one to
float32 precision, for owned and for amortized (``.condition(context)``) stacks.
"""
import pytest
import torch

from pyro_nfvi.nn import MLP
from pyro_nfvi.transforms import FAMILIES, flow

FAMILY_NAMES = sorted(FAMILIES)
DIM, CONTEXT_DIM = 3, 2


def _perturb(stack):
    # move away from the identity start so that the parameters and networks matter
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("context_dim", [0, CONTEXT_DIM], ids=["owned", "conditioned"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_float64_input_and_context_agree_with_float32(family, context_dim):
    torch.manual_seed(0)
    stack = flow(family, DIM, 2, context_dim=context_dim)
    _perturb(stack)
    x = torch.randn(4, DIM)
    context = torch.randn(4, CONTEXT_DIM)

    def apply(x_in, context_in):
        t = stack.condition(context_in) if context_dim else stack
        y = t(x_in)
        return y, t.log_abs_det_jacobian(x_in, y)

    y32, ladj32 = apply(x, context)
    assert y32.dtype == ladj32.dtype == torch.float32
    contexts = [context, context.double()] if context_dim else [None]
    for c in contexts:
        for x_in in (x, x.double()):
            if c is None and x_in.dtype == torch.float32:
                continue
            y, ladj = apply(x_in, c)
            # the output follows the input's dtype, as for planar: float64 in, float64 out
            assert y.dtype == ladj.dtype == x_in.dtype
            torch.testing.assert_close(y.float(), y32, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ladj.float(), ladj32, rtol=1e-5, atol=1e-5)


def test_encoder_mlp_promotes_float64_data():
    net = MLP(3, (4,))
    x = torch.randn(2, 3)
    torch.testing.assert_close(net(x.double()), net(x))
