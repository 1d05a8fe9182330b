r"""Elementwise sinh-arcsinh transform (Jones & Pewsey 2009): learned skew and tail weight per coordinate."""
import math

import torch

from .base import FlowModule

__all__ = ["SinhArcsinh", "MAX_LOG_TAIL", "MAX_SKEW", "log_cosh"]

#: Bound on :math:`|\log\delta|`: the tail weight :math:`\delta` stays in :math:`[1/4, 4]`.
MAX_LOG_TAIL = math.log(4.0)
#: Bound on :math:`|\epsilon|`, the skew.
MAX_SKEW = 4.0


def log_cosh(a):
    r""":math:`\log\cosh a = |a| + \log(1 + e^{-2|a|}) - \log 2`, finite for every finite ``a``.

    Example:
        >>> a = torch.tensor([0.0, 1000.0])  # cosh(1000) overflows, its log does not
        >>> bool(torch.allclose(log_cosh(a), torch.tensor([0.0, 1000.0 - math.log(2.0)])))
        True
    """
    a = a.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)


class SinhArcsinh(FlowModule):
    r"""Elementwise sinh-arcsinh map :math:`y_i = \sinh(\delta_i \operatorname{arcsinh}(x_i) - \epsilon_i)`,
    with :math:`\log|\det J| = \sum_i \log\delta_i + \log\cosh(\delta_i \operatorname{arcsinh} x_i - \epsilon_i)
    - \tfrac12 \log(1 + x_i^2)`.

    Applied to a standard normal it gives Jones & Pewsey's sinh-arcsinh distribution: the skew
    :math:`\epsilon_i` moves mass into one tail (:math:`\epsilon > 0`: the left one), and the tail
    weight :math:`\delta_i` sets how fast the tails grow (:math:`y \approx \tfrac12 (2x)^{\delta}`
    for large :math:`x`: :math:`\delta > 1` heavier than Gaussian, :math:`\delta < 1` lighter).
    Affine flows (IAF, coupling with bounded log-scales) from a Gaussian base keep Gaussian-like
    marginal tails (Jaini et al. 2020), so a posterior with one long tail -- the log group scale of
    a hierarchical model, whose prior density is flat at zero -- is cut short by them; this layer
    gives each coordinate its own skew and tail weight.  It is the identity at initialisation
    (:math:`\epsilon = 0, \delta = 1`).  Both are bounded: :math:`\epsilon = s \tanh(r_\epsilon / s)`
    with :math:`s = 4` (``MAX_SKEW``), :math:`\log\delta = t \tanh(r_\delta / t)` with
    :math:`t = \log 4` (``MAX_LOG_TAIL``; slope 1 at the identity, so Adam moves them at its usual pace).

    References: Jones & Pewsey, *Sinh-arcsinh distributions*, Biometrika 96(4), 2009; Jaini et al.,
    *Tails of Lipschitz Triangular Flows*, ICML 2020.

    Args:
        dim (int): event size ``D``.
        context_dim (int): 0 for owned parameters; ``> 0`` to predict them from a context.
        hidden (tuple): hidden sizes of the hypernetwork (amortized only).
        cache_size (int): 0 or 1.
        output_scale (float or str): amortized only: factor on the hypernetwork's output layer
            (see ``pyro_nfvi.transforms.output_scale``).

    Example:
        >>> t = SinhArcsinh(2)
        >>> x = torch.tensor([[0.5, -2.0]])
        >>> bool(torch.allclose(t(x), x))  # the identity at initialisation
        True
        >>> with torch.no_grad():
        ...     _ = t.skew.fill_(1.0)
        >>> y, ladj = t.forward_and_log_det(x)
        >>> bool(torch.allclose(t.inverse_and_log_det(y)[0], x, atol=1e-6)), ladj.shape
        (True, torch.Size([1]))
    """

    jacobian_structure = "diagonal"  # elementwise

    def __init__(self, dim, context_dim=0, hidden=(), cache_size=1, output_scale="none"):
        super().__init__(dim, context_dim=context_dim, cache_size=cache_size)
        self._build_params(hidden, output_scale)

    def param_shapes(self):
        return {"skew": (self.dim,), "tail": (self.dim,)}

    def init_params(self):
        return {"skew": torch.zeros(self.dim), "tail": torch.zeros(self.dim)}

    def constrain(self, raw):
        skew = MAX_SKEW * torch.tanh(raw["skew"] / MAX_SKEW)
        log_delta = MAX_LOG_TAIL * torch.tanh(raw["tail"] / MAX_LOG_TAIL)
        return {"epsilon": skew, "log_delta": log_delta, "delta": torch.exp(log_delta)}

    @staticmethod
    def _log_det(x, a, p):
        return (p["log_delta"] + log_cosh(a) - 0.5 * torch.log1p(x * x)).sum(-1)

    def _forward(self, x, p):
        a = p["delta"] * torch.asinh(x) - p["epsilon"]
        return torch.sinh(a), self._log_det(x, a, p)

    def _forward_jacobian(self, x, p):
        # dy/dx = cosh(a) * delta / sqrt(1 + x^2), elementwise; d log(dy/dx) / dx = tanh(a) da/dx - x / (1 + x^2)
        a = p["delta"] * torch.asinh(x) - p["epsilon"]
        da = p["delta"] * torch.rsqrt(1.0 + x * x)
        grad = torch.tanh(a) * da - x / (1.0 + x * x)
        return torch.sinh(a), torch.diag_embed(torch.cosh(a) * da), grad

    def _inverse(self, y, p):
        a = torch.asinh(y)
        x = torch.sinh((a + p["epsilon"]) / p["delta"])
        return x, self._log_det(x, a, p)
