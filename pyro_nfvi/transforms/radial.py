"""Radial flow (Rezende & Mohamed 2015), with an always-finite log-det and a closed-form inverse.

The map ``f(z) = z + beta h(alpha, r) (z - z0)`` with ``r = |z - z0|`` and ``h = 1 / (alpha + r)``
scales ``z - z0`` by ``g(r) = (s + r) / (alpha + r)`` where ``s = alpha + beta``.  Everything here
is written in terms of ``alpha > 0`` and ``s > 0`` (both softplus outputs), which keeps the
log-det finite and exact for any raw parameters, and gives the inverse in closed form: the radius
``r_y = r g(r)`` is a monotone function of ``r`` whose inverse is the root of a quadratic.
"""
import math

import torch
from torch.nn.functional import softplus

from .base import FlowModule
from .planar import log_softplus

__all__ = ["Radial", "radial_alpha", "radial_beta", "radial_log_det", "RADIAL_ALPHA_MIN"]

#: Floor added to ``softplus(alpha_raw)``: keeps ``alpha > 0`` after rounding (``softplus(-1e4)``
#: is exactly 0), so ``h = 1 / (alpha + r)`` and its derivatives stay finite at ``z = z0``.
RADIAL_ALPHA_MIN = 1e-6
_LOG2 = math.log(2.0)


def radial_alpha(alpha_raw):
    """Positive radial scale ``alpha = softplus(alpha_raw) + 1e-6`` (:data:`RADIAL_ALPHA_MIN`).

    The floor only matters for ``alpha_raw < -13`` or so; it stops ``alpha`` from rounding to 0,
    where the map would have an infinite Jacobian at ``z0``.

    Example:
        >>> bool(radial_alpha(torch.tensor(-1e4)) > 0)
        True
    """
    return softplus(alpha_raw) + RADIAL_ALPHA_MIN


def radial_beta(alpha, beta_raw):
    """Invertibility constraint of the radial flow: ``beta = -alpha + softplus(beta_raw) >= -alpha``.

    Rezende & Mohamed (2015, appendix A) show that ``f(z) = z + beta (z - z0) / (alpha + |z - z0|)``
    is invertible iff ``beta >= -alpha``.  The bound holds exactly in floating point, since
    ``softplus(beta_raw) >= 0``.  The identity (``beta = 0``) is at ``beta_raw = log(expm1(alpha))``.

    Args:
        alpha (Tensor): positive scale (see ``radial_alpha``).
        beta_raw (Tensor): unconstrained parameter, broadcasting against ``alpha``.

    Example:
        >>> alpha = torch.tensor([0.5, 2.0])
        >>> bool((radial_beta(alpha, torch.tensor([-1e4, 3.0])) >= -alpha).all())
        True
    """
    return softplus(beta_raw) - alpha


def _safe_norm(d):
    """``|d|`` over the last dimension: rescaled by ``max_i |d_i|`` (no underflow or overflow of
    ``|d|^2``) and guarded so that the gradient at ``d = 0`` is 0, not NaN.  A non-finite ``d``
    gives ``max_i |d_i|`` (NaN or inf), never 0."""
    m = d.abs().amax(-1)
    pos = (m > 0) & torch.isfinite(m)
    m_safe = torch.where(pos, m, torch.ones_like(m))
    sq = ((d / m_safe.unsqueeze(-1)) ** 2).sum(-1)
    norm = torch.where(pos, m_safe * torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(m))
    return torch.where(torch.isfinite(m), norm, m)


def radial_log_det(r, alpha, s, log_alpha, log_s, dim):
    r"""``log|det J|`` of the radial flow at radius ``r = |z - z0|``, finite for any parameters.

    With ``s = alpha + beta > 0``, ``1 + beta h = g = (s + r) / (alpha + r)`` and
    ``1 + beta h + beta h'(r) r = q = (alpha s + 2 alpha r + r^2) / (alpha + r)^2
    = (alpha g + r) / (alpha + r)``, so

    .. math::
        \log|\det J| = (D - 1)\log g + \log q
        = (D - 1)[\log(s + r) - \log(\alpha + r)] + \log(\alpha s + 2\alpha r + r^2) - 2\log(\alpha + r).

    ``g`` and ``q`` are ratios of sums of positive terms (no cancellation), so ``log g`` and
    ``log q`` are accurate to a few ulps; where either would leave ``[1e-30, 1e30]`` (e.g. ``s``
    underflows to 0 at ``r = 0``) the right-hand form is used instead, as ``logaddexp`` of the finite
    ``log alpha``, ``log s`` and ``log r`` (``log r = -inf`` at ``r = 0`` is guarded so that no
    gradient is NaN).

    Args:
        r (Tensor): radii, shape ``batch``.
        alpha (Tensor): ``alpha > 0``, broadcasting against ``r``.
        s (Tensor): ``alpha + beta = softplus(beta_raw) >= 0``, broadcasting against ``r``.
        log_alpha (Tensor): ``log(alpha)``.
        log_s (Tensor): ``log(softplus(beta_raw))``, finite even where ``s`` underflows.
        dim (int): event size ``D``.

    Example:
        >>> one = torch.tensor(1.0)
        >>> ld = radial_log_det(torch.tensor([0.0, 1.0]), one, one, 0.0 * one, 0.0 * one, 3)
        >>> bool(torch.allclose(ld, torch.zeros(2)))
        True
    """
    g = (s + r) / (alpha + r)
    q = (alpha * g + r) / (alpha + r)
    direct = (g > 1e-30) & (g < 1e30) & (q > 1e-30) & (q < 1e30)
    one = torch.ones_like(g)
    log_direct = (dim - 1) * torch.log(torch.where(direct, g, one)) + torch.log(torch.where(direct, q, one))
    pos = r > 0
    log_r = torch.where(pos, torch.log(torch.where(pos, r, torch.ones_like(r))), torch.full_like(r, -math.inf))
    log_ar = torch.logaddexp(log_alpha, log_r)
    log_sr = torch.logaddexp(log_s, log_r)
    terms = torch.broadcast_tensors(log_alpha + log_s, _LOG2 + log_alpha + log_r, 2.0 * log_r)
    log_c = torch.logsumexp(torch.stack(terms), dim=0)
    log_space = (dim - 1) * (log_sr - log_ar) + log_c - 2.0 * log_ar
    out = torch.where(direct, log_direct, log_space)
    # a non-finite radius (NaN or inf input, or a NaN centre) gives NaN, never a plausible 0
    return torch.where(torch.isfinite(r), out, torch.full_like(out, math.nan))


class Radial(FlowModule):
    r"""Radial flow :math:`f(z) = z + \beta h(\alpha, r)(z - z_0)`, :math:`r = |z - z_0|`,
    :math:`h = 1/(\alpha + r)`, with
    :math:`\log|\det J| = (D-1)\log(1 + \beta h) + \log(1 + \beta h + \beta h'(r) r)`.

    Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.

    Raw parameters are ``z0`` (``(D,)``), ``alpha_raw`` and ``beta_raw`` (scalars), constrained by
    ``alpha = softplus(alpha_raw) + 1e-6`` (``radial_alpha``) and
    ``beta = -alpha + softplus(beta_raw)`` (:func:`radial_beta`), so the map is invertible for
    any raw values.  The log-det is computed in log form (``radial_log_det``) and is finite
    for any raw parameters, including at ``z = z0`` where ``r`` has a guarded (zero) gradient.

    The inverse is exact and closed form: ``r_y = |y - z0| = r (s + r) / (alpha + r)`` with
    ``s = alpha + beta`` is increasing in ``r``, so ``r`` is the non-negative root of
    ``r^2 + (s - r_y) r - alpha r_y = 0`` (taken in the cancellation-free form), and
    ``z = y - (r_y - r) (y - z0) / r_y`` with ``r_y - r = r beta / (alpha + r)`` (no overflow where
    ``s + r`` is tiny).  It is differentiable w.r.t. the parameters, and
    ``TransformedDistribution.log_prob`` works on any value, not only on cached samples (Pyro's
    ``Radial`` has no inverse and raises there).

    At initialisation ``beta = 0`` (the identity), ``alpha = log 2 + 1e-6`` and ``z0 ~ N(0, 0.01 I)``, so
    the gradient w.r.t. ``beta_raw`` is non-zero from the first step.

    Args:
        dim (int): event size ``D``.
        context_dim (int): 0 for owned parameters; ``> 0`` to predict ``z0, alpha, beta`` from a
            context.
        hidden (tuple): hidden sizes of the hypernetwork (amortized only; ``()`` is a linear map).
        cache_size (int): 0 or 1.
        output_scale (float or str): amortized only: factor on the hypernetwork's output layer,
            ``"none"`` (1), ``"fan_in"`` (``1 / fan_in``: per-point parameters move at Adam's pace, see
            ``pyro_nfvi.transforms.output_scale``) or a positive float.

    Example:
        >>> import pyro.distributions as dist
        >>> flow = Radial(2)
        >>> q = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
        >>> q.log_prob(torch.tensor([[0.5, -1.0]])).shape
        torch.Size([1])
        >>> amortized = Radial(2, context_dim=4)
        >>> amortized.condition(torch.randn(8, 4))(torch.randn(8, 2)).shape
        torch.Size([8, 2])
    """

    def __init__(self, dim, context_dim=0, hidden=(), cache_size=1, output_scale="none"):
        super().__init__(dim, context_dim=context_dim, cache_size=cache_size)
        self._build_params(hidden, output_scale)

    def param_shapes(self):
        return {"z0": (self.dim,), "alpha_raw": (), "beta_raw": ()}

    def init_params(self):
        # beta = 0 is the identity; a random z0 keeps the gradient w.r.t. beta non-zero there.
        alpha_raw = torch.zeros(())
        alpha = radial_alpha(alpha_raw)
        return {
            "z0": 0.1 * torch.randn(self.dim),
            "alpha_raw": alpha_raw,
            "beta_raw": torch.log(torch.expm1(alpha)),
        }

    def constrain(self, raw):
        alpha_raw, beta_raw = raw["alpha_raw"], raw["beta_raw"]
        alpha = radial_alpha(alpha_raw)
        return {
            "z0": raw["z0"],
            "alpha": alpha,
            "beta": radial_beta(alpha, beta_raw),
            "s": softplus(beta_raw),
            "log_alpha": torch.log(alpha),
            "log_s": log_softplus(beta_raw),
        }

    def _forward(self, x, p):
        d = x - p["z0"]
        r = _safe_norm(d)
        y = x + d * (p["beta"] / (p["alpha"] + r)).unsqueeze(-1)
        return y, radial_log_det(r, p["alpha"], p["s"], p["log_alpha"], p["log_s"], x.shape[-1])

    def _inverse(self, y, p):
        alpha, s, beta = p["alpha"], p["s"], p["beta"]
        d = y - p["z0"]
        r_y = _safe_norm(d)
        # r^2 + b r - alpha r_y = 0 with b = s - r_y; the non-negative root without cancellation
        b = s - r_y
        disc = b * b + 4.0 * alpha * r_y
        pos_disc = disc > 0
        sq = torch.sqrt(torch.where(pos_disc, disc, torch.ones_like(disc)))
        sq = torch.where(pos_disc, sq, torch.zeros_like(sq))
        b_pos = b > 0
        den = torch.where(b_pos, b + sq, torch.ones_like(b))
        r = torch.where(b_pos, 2.0 * alpha * r_y / den, 0.5 * (sq - b))
        # y - x = (r_y - r) (y - z0) / r_y with r_y - r = r beta / (alpha + r): no overflow even
        # where s + r is tiny; at r_y = 0 (y = z0) the preimage is z0 = y
        pos = r_y > 0
        step = r * beta / (alpha + r) / torch.where(pos, r_y, torch.ones_like(r_y))
        x = y - d * torch.where(pos, step, torch.zeros_like(step)).unsqueeze(-1)
        return x, radial_log_det(r, alpha, s, p["log_alpha"], p["log_s"], y.shape[-1])
