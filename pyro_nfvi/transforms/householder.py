"""Householder flow (Tomczak & Welling 2016): an exactly orthogonal, volume-preserving reflection."""
import torch
from torch import nn

from .base import FlowModule

__all__ = ["Householder", "householder_unit"]


def householder_unit(v):
    """Return ``(u, c)`` with ``H = I - c u u^T`` the reflection through the hyperplane normal to ``v``.

    ``u = v / max_i |v_i|`` (``H`` depends only on the direction of ``v``) and ``c = 2 / |u|^2``,
    so ``1 <= |u|^2 <= D`` for every finite non-zero ``v``: no underflow for tiny ``v`` (``|v|^2``
    would be subnormal or 0 in float32 at ``|v| ~ 1e-20``), no overflow for huge ``v``, and ``H`` is
    orthogonal up to rounding.  At ``v = 0`` the reflection is undefined; there ``u = 0, c = 0``,
    i.e. ``H = I``, computed through ``where``-guards so the gradient w.r.t. ``v`` is 0, not NaN.

    Args:
        v (Tensor): shape ``batch + (D,)``.

    Returns:
        ``(u, c)`` with shapes ``batch + (D,)`` and ``batch + (1,)``.

    Example:
        >>> u, c = householder_unit(torch.tensor([0.0, 3e-30]))
        >>> u, c
        (tensor([0., 1.]), tensor([2.]))
    """
    scale = v.abs().amax(-1, keepdim=True)
    nonzero = scale > 0
    u = v / torch.where(nonzero, scale, torch.ones_like(scale))
    n2 = (u * u).sum(-1, keepdim=True)
    c = torch.where(nonzero, 2.0 / torch.where(nonzero, n2, torch.ones_like(n2)), torch.zeros_like(n2))
    return u, c


class Householder(FlowModule):
    r"""Householder flow :math:`f(z) = H z`, :math:`H = I - 2 v v^\top / |v|^2`, with
    :math:`\log|\det J| = 0`.

    Reference: Tomczak & Welling, *Improving Variational Auto-Encoders using Householder Flow*,
    NIPS workshop on Bayesian Deep Learning, 2016 (arXiv:1611.09630).

    ``H`` is a reflection: orthogonal, symmetric and its own inverse, so the flow is volume
    preserving (``volume_preserving = True``) and the log-det is exactly 0.  No ``eps`` is added to
    ``|v|^2`` (which would make ``H`` non-orthogonal and its log-det non-zero, singular at
    ``|v|^2 = eps``); instead ``v`` is rescaled by ``max_i |v_i|`` before normalising
    (``householder_unit``), and ``v = 0`` is guarded to give the identity with a zero gradient
    (Pyro's ``Householder`` returns NaN there).  So the map is exactly orthogonal for every
    ``v != 0`` and the returned log-det 0 is exact everywhere, including at ``v = 0``.

    A reflection cannot be the identity, so this is the one family that does not start at the
    identity: ``v ~ N(0, I)`` at initialisation, a random reflection, which is volume-preserving
    and harmless for the base density's entropy.  Stack several (``flow("householder", D, K)``)
    to reach a general orthogonal map.

    Amortized use (``context_dim > 0``): the first layer predicts ``v_1`` from the data context
    with the usual hypernetwork.  Following Tomczak & Welling, later layers are built with
    ``chained=True`` and ``context_dim=dim``: their context is the previous layer's raw ``v`` and
    their hypernetwork is a single ``Linear``, ``v_t = W_t v_{t-1} + b_t``
    (:class:`~pyro_nfvi.transforms.stack.FlowStack` passes ``v_{t-1}``).  ``W_t`` starts as a
    random orthogonal matrix and ``b_t = 0``: an identity start (``v_t = v_{t-1}``) would make
    ``H_t H_{t-1} = I``, i.e. consecutive layers would cancel and their gradients would be
    degenerate; an orthogonal ``W_t`` gives a different direction while keeping ``|v_t| = |v_{t-1}|``.

    Args:
        dim (int): event size ``D``.
        context_dim (int): 0 for an owned ``v``; ``> 0`` to predict ``v`` from a context.
        hidden (tuple): hidden sizes of the hypernetwork (amortized, not chained; ``()`` is linear).
        chained (bool): the layer reads the previous layer's ``v`` (requires ``context_dim == dim``
            and ``hidden == ()``).
        cache_size (int): 0 or 1.
        output_scale (float or str): amortized only: factor on the hypernetwork's output layer,
            ``"none"`` (1), ``"fan_in"`` (``1 / fan_in``: per-point parameters move at Adam's pace, see
            ``pyro_nfvi.transforms.output_scale``) or a positive float.

    Example:
        >>> flow = Householder(3)
        >>> x = torch.randn(5, 3)
        >>> y = flow(x)
        >>> bool(torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5))
        True
        >>> flow.log_abs_det_jacobian(x, y)
        tensor([0., 0., 0., 0., 0.])
        >>> bool(torch.allclose(flow.inv(y.clone()), x, atol=1e-5))
        True
    """

    volume_preserving = True
    jacobian_structure = "orthogonal"  # a reflection

    def __init__(self, dim, context_dim=0, hidden=(), chained=False, cache_size=1, output_scale="none"):
        super().__init__(dim, context_dim=context_dim, cache_size=cache_size)
        if not isinstance(chained, bool):
            raise TypeError(f"chained must be a bool, got {type(chained).__name__}")
        hidden = tuple(hidden)
        if chained:
            if context_dim != dim:
                raise ValueError(
                    f"a chained Householder layer reads the previous layer's v: context_dim must equal "
                    f"dim={dim}, got {context_dim}"
                )
            if hidden:
                raise ValueError(f"a chained Householder layer is a single Linear map: hidden must be (), got {hidden}")
        if chained and output_scale != "none":
            raise ValueError(f"a chained Householder layer is a plain Linear recurrence: output_scale must be 'none', got {output_scale!r}")
        self.chained = chained
        self._build_params(hidden, output_scale)
        if chained:
            with torch.no_grad():
                nn.init.orthogonal_(self.hypernet.head.weight)
                self.hypernet.head.bias.zero_()

    def param_shapes(self):
        return {"v": (self.dim,)}

    def init_params(self):
        # a reflection cannot be the identity: start at a random (volume-preserving) one
        return {"v": torch.randn(self.dim)}

    def constrain(self, raw):
        u, c = householder_unit(raw["v"])
        return {"v": raw["v"], "u": u, "c": c}

    @staticmethod
    def _reflect(x, p):
        u = p["u"]
        y = x - (p["c"] * (x * u).sum(-1, keepdim=True)) * u
        return y, torch.zeros_like(y[..., 0])

    def _forward(self, x, p):
        return self._reflect(x, p)

    def _inverse(self, y, p):
        return self._reflect(y, p)

    def _forward_jacobian(self, x, p):
        # dy/dx = I - c u u^T, the same for every x
        y, _ = self._reflect(x, p)
        u = p["u"]
        eye = torch.eye(self.dim, dtype=y.dtype, device=y.device)
        jac = eye - p["c"].unsqueeze(-1) * u.unsqueeze(-1) * u.unsqueeze(-2)
        return y, jac.expand(y.shape + (self.dim,)), y.new_zeros(y.shape)  # volume-preserving

    def extra_repr(self):
        return super().extra_repr() + (", chained=True" if self.chained else "")
