"""Planar flow (Rezende & Mohamed 2015), with a log-space log-det and a true inverse."""
import math

import torch

from .base import FlowModule
from .monotone import solve_monotone

__all__ = ["Planar", "planar_uhat", "planar_shift_ratio", "planar_log_det", "log_softplus", "PLANAR_SHIFT"]

#: ``log(e - 1)``: shifts the softplus in :func:`planar_uhat` so that ``u = 0`` maps to ``u-hat = 0``.
PLANAR_SHIFT = math.log(math.e - 1.0)
_LOG2 = math.log(2.0)


def log_softplus(x):
    """``log(softplus(x))``, finite for every finite ``x`` (``~ x`` for ``x << 0``)."""
    safe = torch.clamp(x, min=-15.0)
    return torch.where(x > -15.0, torch.log(torch.nn.functional.softplus(safe)), x)


# Taylor coefficients at a = 0 of m(a) = softplus(a + log(e-1)) - 1: m^(k)(0) = sigmoid^(k-1)(log(e-1)).
_M1 = 1.0 - math.exp(-1.0)  # sigmoid(log(e-1))
_M2 = _M1 * (1.0 - _M1)
_M3 = _M2 * (1.0 - 2.0 * _M1)
_M4 = _M3 * (1.0 - 2.0 * _M1) - 2.0 * _M2 * _M2
_SERIES_BELOW = 1e-3  # |a| below which planar_shift_ratio uses its Taylor series


def planar_shift_ratio(a):
    r""":math:`g(a) = (m(a) - a) / a` for :math:`a \le 1`, with :math:`m(a) = \log(1 + (1 - e^{-1})(e^a - 1))`.

    :math:`m(a) = \mathrm{softplus}(a + \log(e-1)) - 1` written with ``log1p``/``expm1`` is exact to
    rounding for small :math:`a` (the softplus form loses all its digits there: ``softplus(a + log(e-1))
    - 1`` is ``0`` in float32 for :math:`|a| < 10^{-7}`), and :math:`g(a) \to m'(0) - 1 = -e^{-1}`;
    below :math:`|a| = 10^{-3}` a four-term Taylor series is used, so that the gradient is accurate
    too.  :func:`planar_uhat` multiplies it by the bounded projection :math:`e^\top u` instead of
    dividing by :math:`|w|`.

    Example:
        >>> a = torch.tensor([0.0, 1e-8, 0.5], dtype=torch.float64)
        >>> m = torch.nn.functional.softplus(a + PLANAR_SHIFT) - 1
        >>> round(float(planar_shift_ratio(a)[0]), 6), bool(torch.isclose(planar_shift_ratio(a)[2], (m[2] - 0.5) / 0.5))
        (-0.367879, True)
    """
    series = a.abs() < _SERIES_BELOW
    safe = torch.where(series, torch.full_like(a, -1.0), a)
    direct = torch.log1p(_M1 * torch.expm1(safe)) / safe - 1.0
    taylor = (_M1 - 1.0) + a * (_M2 / 2.0 + a * (_M3 / 6.0 + a * _M4 / 24.0))
    return torch.where(series, taylor, direct)


def planar_uhat(u, w):
    """Invertibility constraint of the planar flow: ``u-hat = u + (m(w.u) - w.u) w / |w|^2``.

    ``m(a) = softplus(a + log(e-1)) - 1 > -1``, so ``w . u-hat = m(w.u) > -1`` and the map
    ``z + u-hat tanh(w.z + b)`` is invertible (Rezende & Mohamed 2015, appendix A).  The shift makes
    ``m(0) = 0`` so that ``u = 0`` gives ``u-hat = 0`` (the identity).  At ``w = 0`` (or a subnormal
    ``w``) the correction vanishes and ``u-hat = u`` (the flow is then a translation), with no
    division by zero.

    Returns ``(u_hat, wu)`` where ``wu = w . u`` is what the log-det needs.

    Away from ``w = 0`` the correction is smooth, with the limit ``-(1/e) (e.u) e`` as ``|w| -> 0``
    along ``e = w / |w|``, and it is computed so that values and gradients stay accurate there: for
    ``w.u <= 1`` as ``(e.u) g(w.u) e`` (``planar_shift_ratio``, no division by ``|w|``), above it
    in a form without cancellation that survives an overflow of ``w.u``.  A scalar ``w`` that changes
    sign (the diagonal pairs of :class:`~pyro_nfvi.transforms.Sylvester`) passes through that limit.

    Example:
        >>> u, w = torch.tensor([-3.0, 0.0]), torch.tensor([1.0, 0.0])
        >>> uhat, wu = planar_uhat(u, w)
        >>> bool((uhat * w).sum() > -1)
        True
        >>> uhat, _ = planar_uhat(torch.tensor([2.0]), torch.tensor([1e-9]))  # m(a) / w -> m'(0) u
        >>> round(float(uhat), 5)
        1.26424
    """
    # Written with the unit vector e = w / |w| and the projection e.u (bounded by |u|), so that no
    # product |w| |u| is formed where it is not needed: with |w| |u| beyond the dtype's range (3e38
    # in float32) w.u overflows, but the correction (m(w.u) - w.u) / |w| stays finite.
    scale = w.abs().amax(-1, keepdim=True)
    nonzero = scale >= torch.finfo(w.dtype).tiny  # a subnormal w counts as 0 (1 / scale^2 would overflow)
    one = torch.ones_like(scale)
    ws = w / torch.where(nonzero, scale, one)
    nws = torch.sqrt(torch.where(nonzero, (ws * ws).sum(-1, keepdim=True), one))
    e = ws / nws
    nw = torch.where(nonzero, scale * nws, one)
    proj = (e * u).sum(-1, keepdim=True)
    wu = nw * proj
    pos = wu > 1.0
    zero = torch.zeros_like(wu)
    # a > 1: m(a) - a = log(e-1) - 1 + softplus(-a - log(e-1)) (bounded, no cancellation), over |w| > a / |e.u|
    # (w.u may have overflowed to inf there, e.u has not)
    coef_pos = (PLANAR_SHIFT - 1.0 + torch.nn.functional.softplus(-torch.where(pos, wu, zero) - PLANAR_SHIFT)) / nw
    # a <= 1: (m(a) - a) / |w| = (e.u) g(a), no division by |w|
    coef_rest = proj * planar_shift_ratio(torch.where(pos, zero, wu))
    coef = torch.where(nonzero, torch.where(pos, coef_pos, coef_rest), zero)
    # w.u itself (for the log-det) is clamped to the dtype's range: where it overflows, w.u-hat
    # ~ w.u is so large that the log-det is dominated by it only on a slab of width ~1/|w|.
    big = torch.finfo(wu.dtype).max
    return u + coef * e, torch.clamp(wu, -big, big).squeeze(-1)


def planar_log_det(a, wu):
    """``log(1 + (1 - tanh(a)^2) w.u-hat)`` computed in log space.

    With ``w.u-hat = softplus(wu + log(e-1)) - 1`` this equals
    ``log sech^2(a) + log(sinh^2(a) + softplus(wu + log(e-1)))``, which stays finite and exact when
    ``w.u << 0`` (``w.u-hat -> -1``) and when ``a = 0``.
    """
    abs_a = a.abs()
    pos = abs_a > 0
    safe = torch.where(pos, abs_a, torch.ones_like(abs_a))
    log_sinh = safe - _LOG2 + torch.log(-torch.expm1(-2.0 * safe))
    log_sinh2 = torch.where(pos, 2.0 * log_sinh, torch.full_like(abs_a, -math.inf))
    log_sech2 = 2.0 * (_LOG2 - abs_a - torch.nn.functional.softplus(-2.0 * abs_a))
    return log_sech2 + torch.logaddexp(log_sinh2, log_softplus(wu + PLANAR_SHIFT))


class Planar(FlowModule):
    r"""Planar flow :math:`f(z) = z + \hat u \tanh(w^\top z + b)` with
    :math:`\log|\det J| = \log|1 + (1 - \tanh^2(w^\top z + b))\, w^\top \hat u|`.

    Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.

    The constraint :func:`planar_uhat` keeps the map invertible for any raw ``u, w``; the log-det is
    computed in log space (``planar_log_det``).  The inverse solves the monotone scalar equation
    :math:`\alpha + w^\top\hat u \tanh(\alpha + b) = w^\top y` for :math:`\alpha = w^\top z` by
    safeguarded bisection plus Newton steps, so ``log_prob`` works on any value, not only on cached
    samples; its gradient follows from the implicit function theorem.

    Args:
        dim (int): event size ``D``.
        context_dim (int): 0 for owned parameters; ``> 0`` to predict ``u, w, b`` from a context.
        hidden (tuple): hidden sizes of the hypernetwork (amortized only; ``()`` is a linear map).
        cache_size (int): 0 or 1.
        output_scale (float or str): amortized only: factor on the hypernetwork's output layer,
            ``"none"`` (1), ``"fan_in"`` (``1 / fan_in``: per-point parameters move at Adam's pace, see
            ``pyro_nfvi.transforms.output_scale``) or a positive float.

    Example:
        >>> import pyro.distributions as dist
        >>> flow = Planar(2)
        >>> q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
        >>> q.log_prob(torch.tensor([[0.5, -1.0]])).shape
        torch.Size([1])
        >>> amortized = Planar(2, context_dim=4)
        >>> amortized.condition(torch.randn(8, 4))(torch.randn(8, 2)).shape
        torch.Size([8, 2])
    """

    def __init__(self, dim, context_dim=0, hidden=(), cache_size=1, output_scale="none"):
        super().__init__(dim, context_dim=context_dim, cache_size=cache_size)
        self._build_params(hidden, output_scale)

    def param_shapes(self):
        return {"u": (self.dim,), "w": (self.dim,), "b": ()}

    def init_params(self):
        # u = 0 gives the identity; a random w keeps the gradient w.r.t. u non-zero at the start.
        return {
            "u": torch.zeros(self.dim),
            "w": torch.randn(self.dim) / math.sqrt(self.dim),
            "b": torch.zeros(()),
        }

    def constrain(self, raw):
        uhat, wu = planar_uhat(raw["u"], raw["w"])
        return {"u": uhat, "w": raw["w"], "b": raw["b"], "wu": wu}

    def _forward(self, x, p):
        a = (x * p["w"]).sum(-1) + p["b"]
        y = x + p["u"] * torch.tanh(a).unsqueeze(-1)
        return y, planar_log_det(a, p["wu"])

    def _forward_jacobian(self, x, p):
        # dy/dx = I + u h'(a) w^T; log det = log(1 + h'(a) w.u), whose gradient is h''(a) w.u / det * w
        a = (x * p["w"]).sum(-1) + p["b"]
        h = torch.tanh(a)
        y = x + p["u"] * h.unsqueeze(-1)
        eye = torch.eye(self.dim, dtype=y.dtype, device=y.device)
        dh = 1.0 - h * h
        wu = (p["w"] * p["u"]).sum(-1)
        grad = (-2.0 * h * dh * wu / (1.0 + dh * wu)).unsqueeze(-1) * p["w"]
        return y, eye + (p["u"] * dh.unsqueeze(-1)).unsqueeze(-1) * p["w"].unsqueeze(-2), grad

    def _inverse(self, y, p):
        w, b, uhat = p["w"], p["b"], p["u"]
        wy = (w * y).sum(-1)
        uw = (uhat * w).sum(-1)
        with torch.no_grad():
            alpha = solve_monotone(wy.detach(), uw.detach(), b.detach() if torch.is_tensor(b) else b)
        # one Newton step with gradients attached: exact value, implicit-function gradient
        t = torch.tanh(alpha + b)
        g = alpha + uw * t - wy
        dg = 1.0 + uw * (1.0 - t * t)
        alpha = alpha - g / dg
        x = y - uhat * torch.tanh(alpha + b).unsqueeze(-1)
        return x, planar_log_det(alpha + b, p["wu"])
