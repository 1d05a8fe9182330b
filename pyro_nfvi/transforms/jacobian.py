r"""Per-draw Jacobians :math:`J = \partial T(x) / \partial x` of the maps from a guide's base to its latent.

The path-derivative estimators (sticking the landing, DReG; ``pyro_nfvi.guides.path``) need, per
draw, :math:`\nabla_u \log q(u) = J^{-\top} \nabla_x [\log p_0(x) - \log|\det J|]`.  Autograd gets
the Jacobian with ``D`` vector-Jacobian products through every layer (:func:`autograd_jacobian`); a
layer with a closed form (``FlowTransform.forward_and_jacobian``: IAF, planar, Householder,
sinh-arcsinh, permutations, stacks of them; the affine maps of the base and the preconditioner)
gives it from one pass without a graph, as factors that know their structure (triangular, diagonal,
orthogonal: :func:`jacobian_factors`).  :func:`push_score` carries the score through the factors
one solve each; :func:`chain_jacobian` multiplies them out where the whole matrix is wanted.
"""
import warnings

import torch
from pyro.distributions.transforms import LowerCholeskyAffine
from torch.distributions.transforms import AffineTransform, ComposeTransform

from .base import FlowTransform

__all__ = [
    "autograd_jacobian",
    "chain_closed_forms",
    "chain_jacobian",
    "chain_jacobian_and_log_det_grad",
    "closed_form_jacobian",
    "jacobian_factors",
    "push_score",
]


def autograd_jacobian(u, x):
    r"""The per-draw Jacobian :math:`J_{\dots kj} = \partial u_{\dots k} / \partial x_{\dots j}` by autograd, shape ``(..., D, D)``.

    ``u`` must be computed from ``x`` draw by draw (row ``...`` of ``u`` depends on row ``...`` of
    ``x`` only); the graph is retained.  ``D`` batched vector-Jacobian products (a loop where
    batching is not supported).

    Example:
        >>> x = torch.randn(4, 3, requires_grad=True)
        >>> J = autograd_jacobian(2.0 * x + x.sum(-1, keepdim=True), x)
        >>> J.shape, bool(torch.allclose(J[0], 2.0 * torch.eye(3) + 1.0))
        (torch.Size([4, 3, 3]), True)
    """
    d = u.shape[-1]
    eye = torch.eye(d, dtype=u.dtype, device=u.device)
    seeds = eye.reshape((d,) + (1,) * (u.dim() - 1) + (d,)).expand((d,) + tuple(u.shape))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # vmap's "no batching rule, falling back" notices
            (rows,) = torch.autograd.grad(u, x, grad_outputs=seeds, retain_graph=True, is_grads_batched=True)
    except (RuntimeError, NotImplementedError):
        rows = torch.stack([torch.autograd.grad(u, x, grad_outputs=s, retain_graph=True)[0] for s in seeds])
    return rows.movedim(0, -2)


def closed_form_jacobian(transform, x):
    r"""``dtransform(x)/dx`` per draw, shape ``(..., D, D)``, in closed form and without a graph; ``None`` if there is none.

    Knows this package's flow transforms (their ``forward_and_jacobian``), torch's ``AffineTransform`` with
    ``event_dim=1``, Pyro's ``LowerCholeskyAffine`` and a ``ComposeTransform`` of those.

    Example:
        >>> from torch.distributions.transforms import AffineTransform
        >>> t = AffineTransform(torch.zeros(2), torch.tensor([2.0, 3.0]), event_dim=1)
        >>> closed_form_jacobian(t, torch.randn(5, 2))[0]
        tensor([[2., 0.],
                [0., 3.]])
    """
    factors = _factors(transform, x)
    if factors is None:
        return None
    return chain_closed_forms(factors)[0] if factors else _identity(x)[0]


def _factors(transform, x):
    """The factors ``[(J_k, g_k, structure_k), ...]`` of ``transform`` at ``x`` in closed form (no graph), or ``None``."""
    with torch.no_grad():
        if isinstance(transform, FlowTransform):
            out = transform.jacobian_factors(x)
            return None if out is None else out[1]
        if isinstance(transform, AffineTransform) and transform.event_dim == 1:
            # detached (a torch.jit trace does not record no_grad); a tensor as it is: torch.as_tensor on one warns under tracing
            scale = transform.scale
            scale = scale.detach().to(x.dtype) if torch.is_tensor(scale) else torch.as_tensor(scale, dtype=x.dtype, device=x.device)
            return [(torch.diag_embed(scale.expand(x.shape)), x.new_zeros(x.shape), "diagonal")]
        if isinstance(transform, LowerCholeskyAffine):
            tril = transform.scale_tril.detach()
            return [(tril.expand(x.shape[:-1] + tril.shape[-2:]), x.new_zeros(x.shape), "lower")]
        if isinstance(transform, ComposeTransform):
            return jacobian_factors(transform.parts, _inputs(transform.parts, x))
    return None


def _identity(x):
    """``(I, 0)``: the Jacobian and log-determinant gradient of the identity at ``x``."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    return eye.expand(x.shape + x.shape[-1:]), x.new_zeros(x.shape)


def _inputs(transforms, x):
    """The input of every transform of the chain ``transforms`` applied to ``x`` (no graph)."""
    inputs = []
    with torch.no_grad():
        for t in transforms:
            inputs.append(x)
            x = t(x)
    return inputs


def chain_jacobian(transforms, inputs):
    r"""The Jacobian of the chain ``transforms`` (first applied first), :math:`J_K \cdots J_1`, from closed forms.

    Args:
        transforms (sequence): the transforms, in the order they are applied.
        inputs (sequence of Tensor): the input of each transform, shape ``(..., D)``.

    Returns:
        Tensor or None: ``(..., D, D)`` (no graph), or ``None`` if a transform has no closed form
        (the caller then uses :func:`autograd_jacobian`); ``None`` for an empty chain too.

    Example:
        >>> from torch.distributions.transforms import AffineTransform
        >>> ts = [AffineTransform(0.0, torch.tensor([2.0, 3.0]), event_dim=1)] * 2
        >>> x = torch.randn(5, 2)
        >>> chain_jacobian(ts, [x, ts[0](x)])[0]
        tensor([[4., 0.],
                [0., 9.]])
    """
    out = chain_jacobian_and_log_det_grad(transforms, inputs)
    return None if out is None else out[0]


def chain_jacobian_and_log_det_grad(transforms, inputs):
    r"""The chain's Jacobian :math:`J = J_K \cdots J_1` and the gradient of its :math:`\log|\det J|` at the first input.

    :math:`g = \nabla_x \sum_k \log|\det J_k| = \sum_k (J_{k-1} \cdots J_1)^\top g_k`, each
    :math:`g_k` in closed form at its layer's input.  With :math:`\nabla_x \log p_0(x)` it gives
    :math:`\nabla_x \log q(T(x))`, the path derivative's ``a``, without a backward pass -- and so
    inside a ``torch.jit`` trace, which cannot record a backward pass through composite ops.

    Args:
        transforms (sequence): the transforms, in the order they are applied.
        inputs (sequence of Tensor): the input of each transform, shape ``(..., D)``.

    Returns:
        tuple or None: ``(J, g)`` of shapes ``(..., D, D)`` and ``(..., D)`` (no graph), or ``None``
        if a transform has no closed form or the chain is empty.

    Example:
        >>> from pyro_nfvi.transforms import SinhArcsinh
        >>> t = SinhArcsinh(2)
        >>> x = torch.randn(5, 2, requires_grad=True)
        >>> jac, g = chain_jacobian_and_log_det_grad([t], [x])
        >>> auto = torch.autograd.grad(t.log_abs_det_jacobian(x, t(x)).sum(), x)[0]
        >>> bool(torch.allclose(g, auto, atol=1e-6))
        True
    """
    factors = jacobian_factors(transforms, inputs)
    if factors is None or not inputs:
        return None
    return chain_closed_forms(factors) if factors else _identity(inputs[0])  # only empty stacks: the identity


def jacobian_factors(transforms, inputs):
    r"""The closed-form Jacobian factors ``[(J_k, g_k, structure_k), ...]`` of the chain ``transforms``, first applied first.

    A layer gives one factor, a stack one per layer (``FlowTransform.jacobian_factors``); the
    chain's Jacobian is their product, which :func:`push_score` never forms.

    Args:
        transforms (sequence): the transforms, in the order they are applied.
        inputs (sequence of Tensor): the input of each transform, shape ``(..., D)``.

    Returns:
        list or None: the factors (no graph), or ``None`` if a transform has no closed form.

    Example:
        >>> from pyro_nfvi.transforms import SinhArcsinh
        >>> [(tuple(j.shape), s) for j, _, s in jacobian_factors([SinhArcsinh(2)], [torch.randn(5, 2)])]
        [((5, 2, 2), 'diagonal')]
    """
    factors = []
    for t, x in zip(transforms, inputs):
        out = _factors(t, x.detach())
        if out is None:
            return None
        factors.extend(out)
    return factors


def push_score(factors, score):
    r"""The score :math:`\nabla_y \log q_Y(y)` of the pushed-forward density at :math:`y = T(x)`, from :math:`\nabla_x \log q_X(x)`.

    Through each factor in turn, :math:`a \leftarrow J_k^{-\top} (a - g_k)` (from
    :math:`\log q_Y(y) = \log q_X(x) - \log|\det J|`), one solve per factor that uses its structure: a
    division for ``"diagonal"``, a triangular solve for ``"lower"``, a product for ``"orthogonal"``
    (:math:`J^{-\top} = J`), an LU solve for ``"general"`` -- never the product of the factors, whose
    multiplication and LU cost :math:`O(K D^3)` per draw (Vaitl et al., *Gradients should stay on
    path*, NeurIPS 2022, propagate the score layer by layer the same way).

    Args:
        factors (sequence): ``(J_k, g_k, structure_k)`` as from :func:`jacobian_factors`.
        score (Tensor): :math:`\nabla_x \log q_X(x)`, shape ``(..., D)``.

    Returns:
        Tensor: the score at ``y``, shape ``(..., D)`` (no graph).

    Example:
        >>> j = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
        >>> push_score([(j, torch.zeros(2), "lower")], torch.tensor([1.0, 1.0]))  # j^{-T} @ [1, 1]
        tensor([0., 1.])
    """
    a = score
    with torch.no_grad():
        for jac, grad, structure in factors:
            v = a - grad
            if structure == "diagonal":
                a = v / jac.diagonal(0, -2, -1)
            elif structure == "orthogonal":
                a = (jac @ v.unsqueeze(-1)).squeeze(-1)
            elif structure == "lower":  # a^T J = v^T
                a = torch.linalg.solve_triangular(jac, v.unsqueeze(-2), upper=False, left=False).squeeze(-2)
            else:
                a = torch.linalg.solve(jac.transpose(-1, -2), v.unsqueeze(-1)).squeeze(-1)
    return a


def chain_closed_forms(pieces):
    r"""``(J, g)`` of a chain from its layers' ``(J_k, g_k)`` (or factors ``(J_k, g_k, structure_k)``), first applied first; ``None`` for no layers.

    :math:`J = J_K \cdots J_1` and :math:`g = \sum_k (J_{k-1} \cdots J_1)^\top g_k`, with :math:`g_k`
    the gradient of layer ``k``'s :math:`\log|\det J_k|` at its own input: the gradient of the
    chain's log-determinant at the chain's input.

    Example:
        >>> j1, j2 = torch.diag(torch.tensor([2.0, 3.0])), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
        >>> jac, g = chain_closed_forms([(j1, torch.tensor([1.0, 1.0])), (j2, torch.tensor([1.0, 0.0]))])
        >>> jac.tolist(), g.tolist()
        ([[2.0, 3.0], [0.0, 3.0]], [3.0, 1.0])
    """
    jac, grad = None, None
    for j, g, *_ in pieces:
        if jac is None:
            jac, grad = j, g
        else:
            grad = grad + (g.unsqueeze(-2) @ jac).squeeze(-2)
            jac = j @ jac
    return None if jac is None else (jac, grad)
