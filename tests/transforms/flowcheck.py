"""Shared helpers of the family-specific transform tests (imported as ``flowcheck``)."""
import pyro.distributions as dist
import torch

F64 = torch.float64


def perturb(module, scale, fan_in=False):
    """Add ``scale * N(0, 1)`` noise to every parameter, in place: moves the flow away from its init.

    With ``fan_in`` the noise of a matrix is divided by ``sqrt(fan_in)``; this includes hypernetwork
    weights, so amortized parameters then vary with the context.
    """
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn_like(p)
            if fan_in and p.dim() >= 2:
                noise = noise / p.shape[-1] ** 0.5
            p.add_(noise * scale)
    return module


def randomize(module, scale=1.0):
    """Replace every parameter by ``scale * N(0, 1)`` draws, in place."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))
    return module


def bound(module, context):
    """The module itself (owned parameters) or the module conditioned on ``context`` (amortized)."""
    return module.condition(context) if module.context_dim else module


def check_float64_under_float32(module, context_dim, inverse_tol):
    """A float64 module under the float32 default dtype: forward, inverse and log_prob stay float64."""
    assert torch.get_default_dtype() == torch.float32
    ctx = torch.randn(7, context_dim, dtype=F64) if context_dim else None
    t = bound(module, ctx)
    x = torch.randn(7, 3, dtype=F64)
    y, ladj = t.forward_and_log_det(x)
    assert y.dtype == F64 and ladj.dtype == F64
    x_back, _ = t.inverse_and_log_det(y)
    assert x_back.dtype == F64 and (x_back - x).abs().max() < inverse_tol
    base = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    value = torch.randn(7, 3, dtype=F64)  # not a cached sample: goes through the inverse
    lp = dist.TransformedDistribution(base, [t]).log_prob(value)
    x_v, ladj_v = t.inverse_and_log_det(value)
    assert lp.dtype == F64 and torch.allclose(lp, base.log_prob(x_v) - ladj_v, atol=1e-12)
