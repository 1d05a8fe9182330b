r"""Fused planar stacks: ``K`` planar layers as one autograd node.

In the small-dimension regime (a 2-D target, dozens of planar layers, ~100 particles) the cost of a
flow is launching operations, not arithmetic: a planar layer written with ordinary tensor ops
(:class:`~pyro_nfvi.transforms.planar.Planar`) costs ~20 kernel launches forward and as many
autograd nodes backward.  :func:`fused_planar` runs a whole run of layers in one
:class:`torch.autograd.Function`:

* forward: three ops per layer, written into pre-allocated buffers -- ``a = w.z + b`` (a
  matrix-vector product for shared parameters, a dot product against ``[w, b]`` for per-point
  ones), ``t = tanh(a)`` and ``z <- z + u-hat t`` -- then the log-det of every layer at once;
* backward: a hand-written reverse sweep with three ops per layer, then the gradients of every
  layer's ``u-hat``, ``w``, ``b`` and ``w.u`` at once (summed over the points that share them).

The maths is that of :mod:`~pyro_nfvi.transforms.planar`: the same constraint (applied outside the
fused node, so autograd routes its gradient to each layer's parameters or hypernetwork) and the same
log-space log-det :math:`\ell = \log\mathrm{sech}^2 a + \log(\sinh^2 a + s)` with
:math:`s = \mathrm{softplus}(w.u + \log(e - 1))`, computed as the equal
:math:`\ell = \mathrm{logaddexp}(2\log|	anh a|, \log\mathrm{sech}^2 a + \log s)`.  Its derivatives
are written in log space too, so they stay finite at ``w = 0`` and ``w.u -> -inf``:

.. math::

    rac{\partial \ell}{\partial a} = 2\,\mathrm{sign}(a)\, e^{\log|	anh a| - \ell} - 2	anh a,
    \qquad
    rac{\partial \ell}{\partial (w.u)} = e^{\log\mathrm{sech}^2 a + \log s - \ell}\,
    rac{d \log s}{d (w.u)}.

:class:`~pyro_nfvi.transforms.stack.FlowStack` calls :func:`forward_layers`, which sends every run
of two or more consecutive planar layers (owned, or bound to per-point parameters) through the
fused node; everything else, and every inverse, takes the per-layer path, as does tracing with
``torch.jit.trace`` (``JitTrace_ELBO``).  The fused node is first-order only (no double backward):
switch it off with :func:`use_fused_planar` where a Hessian through the flow is needed.

Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
"""
import contextlib
import math

import torch
from torch.autograd.function import once_differentiable

from .base import ConditionedFlow
from .planar import PLANAR_SHIFT, Planar, planar_log_det, planar_uhat

__all__ = ["fused_planar", "forward_layers", "planar_run_params", "use_fused_planar", "fused_planar_enabled"]

_LOG2 = math.log(2.0)
_STATE = {"enabled": True}


def fused_planar_enabled():
    """Whether :class:`~pyro_nfvi.transforms.stack.FlowStack` fuses runs of planar layers.

    Example:
        >>> fused_planar_enabled()
        True
    """
    return _STATE["enabled"]


@contextlib.contextmanager
def use_fused_planar(enabled=True):
    """Context manager that switches the fused planar path on or off (it is on by default).

    Switch it off to differentiate twice through a planar stack (the fused node is first-order).

    Args:
        enabled (bool): whether runs of planar layers use :func:`fused_planar`.

    Example:
        >>> with use_fused_planar(False):
        ...     print(fused_planar_enabled())
        False
        >>> fused_planar_enabled()
        True
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    previous = _STATE["enabled"]
    _STATE["enabled"] = enabled
    try:
        yield
    finally:
        _STATE["enabled"] = previous


# -- the log-det and its derivatives, in log space ----------------------------------------------------
def _log_softplus_and_grad(x):
    """``log softplus(x)`` exactly as :func:`planar.log_softplus`, and its derivative."""
    safe = torch.clamp(x, min=-15.0)
    sp = torch.nn.functional.softplus(safe)
    keep = x > -15.0
    value = torch.where(keep, torch.log(sp), x)
    grad = torch.where(keep, torch.sigmoid(safe) / sp, torch.ones_like(x))
    return value, grad


def _log_det_parts(a, t, log_s):
    """Per-layer log-det of :func:`planar.planar_log_det` from ``a``, ``t = tanh(a)`` and ``log s``.

    ``sech^2(a) (sinh^2(a) + s) = tanh^2(a) + sech^2(a) s``, so the log-det is
    ``logaddexp(2 log|tanh a|, log sech^2(a) + log s)``: the same function, in fewer ops.  Returns
    ``(ld, log|tanh a|, log sech^2(a) + log s)``; the last two give the derivatives.
    """
    abs_a = a.abs()
    log_abs_t = torch.log(t.abs())
    log_qs = (2.0 * _LOG2 + log_s) - 2.0 * (abs_a + torch.nn.functional.softplus(-2.0 * abs_a))
    return torch.logaddexp(2.0 * log_abs_t, log_qs), log_abs_t, log_qs


class _FusedPlanar(torch.autograd.Function):
    """``K`` planar layers on the layout ``x (M, P, D)``, params ``(K, P, D)`` / ``(K, P)``.

    ``P`` indexes parameter sets (1 for shared parameters, the batch for per-point ones) and ``M``
    the points sharing each set (e.g. particles).  With ``P = 1`` a layer is a matrix-vector
    product and a rank-one update; otherwise every op broadcasts over ``M``, and ``b`` rides along
    as an extra input column of ones so that ``a = w.z + b`` is a single dot product.
    """

    @staticmethod
    def forward(ctx, x, u, w, b, wu):
        K, P, D = u.shape
        M = x.shape[0]
        A = x.new_empty((K, M, P))
        T = x.new_empty((K, M, P, 1))
        if P == 1:
            Z = x.new_empty((K + 1, M, D))
            Z[0].copy_(x.reshape(M, D))
            zs, us, ws, bs = Z.unbind(0), u.reshape(K, D).unbind(0), w.reshape(K, D).unbind(0), b.reshape(K).unbind(0)
            as_, ts, ts1 = A.reshape(K, M).unbind(0), T.reshape(K, M).unbind(0), T.reshape(K, M, 1).unbind(0)
            for k in range(K):
                torch.addmv(bs[k], zs[k], ws[k], out=as_[k])
                torch.tanh(as_[k], out=ts[k])
                torch.addcmul(zs[k], ts1[k], us[k], out=zs[k + 1])
            y = Z[K].reshape(M, P, D)
        else:
            Z = x.new_empty((K + 1, M, P, D + 1))
            Z[0, ..., :D].copy_(x)
            Z[0, ..., D] = 1.0
            w_aug = torch.cat([w, b.unsqueeze(-1)], -1)
            u_aug = torch.cat([u, u.new_zeros((K, P, 1))], -1)
            zs, us, ws = Z.unbind(0), u_aug.unbind(0), w_aug.unbind(0)
            as_, ts, ts1 = A.unbind(0), T.squeeze(-1).unbind(0), T.unbind(0)
            for k in range(K):
                torch.linalg.vecdot(zs[k], ws[k], out=as_[k])
                torch.tanh(as_[k], out=ts[k])
                torch.addcmul(zs[k], ts1[k], us[k], out=zs[k + 1])
            y = Z[K, ..., :D]
        log_s, dlog_s = _log_softplus_and_grad(wu + PLANAR_SHIFT)
        log_s, dlog_s = log_s.unsqueeze(1), dlog_s.unsqueeze(1)
        ld, log_abs_t, log_qs = _log_det_parts(A, T.squeeze(-1), log_s)
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(Z, T, u, w, ld, log_abs_t, log_qs, dlog_s)
        return y, ld.sum(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gld):
        Z, T, u, w, ld, log_abs_t, log_qs, dlog_s = ctx.saved_tensors
        K, P, D = u.shape
        M = T.shape[1]
        t = T.squeeze(-1)
        # d ld / d a = 2 tanh(a) (exp(-ld) - 1), written in log space (finite at a = 0 and ld -> -inf)
        dld_da = 2.0 * torch.sign(t) * torch.exp(log_abs_t - ld) - 2.0 * t
        gld = gld.unsqueeze(0)
        C = gld * dld_da
        gwu = (gld * torch.exp(log_qs - ld)).sum(1) * dlog_s.squeeze(1)
        Q = 1.0 - t * t
        GA = Z.new_empty((K, M, P))
        if P == 1:
            G = Z.new_empty((K + 1, M, D))
            G[K].copy_(gy.reshape(M, D))
            GU = Z.new_empty((M,))
            gs, us, ws = G.unbind(0), u.reshape(K, D).unbind(0), w.reshape(K, D).unbind(0)
            gas, gas1 = GA.reshape(K, M).unbind(0), GA.reshape(K, M, 1).unbind(0)
            cs, qs = C.reshape(K, M).unbind(0), Q.reshape(K, M).unbind(0)
            for k in range(K - 1, -1, -1):
                torch.mv(gs[k + 1], us[k], out=GU)
                torch.addcmul(cs[k], GU, qs[k], out=gas[k])
                torch.addcmul(gs[k + 1], gas1[k], ws[k], out=gs[k])
            gu = torch.bmm(T.reshape(K, 1, M), G[1:]).reshape(K, P, D)
            gw = torch.bmm(GA.reshape(K, 1, M), Z[:-1]).reshape(K, P, D)
        else:
            G = Z.new_empty((K + 1, M, P, D))
            G[K].copy_(gy)
            GU = Z.new_empty((M, P))
            gs, us, ws = G.unbind(0), u.unbind(0), w.unbind(0)
            gas, gas1, cs, qs = GA.unbind(0), GA.unsqueeze(-1).unbind(0), C.unbind(0), Q.unbind(0)
            for k in range(K - 1, -1, -1):
                torch.linalg.vecdot(gs[k + 1], us[k], out=GU)
                torch.addcmul(cs[k], GU, qs[k], out=gas[k])
                torch.addcmul(gs[k + 1], gas1[k], ws[k], out=gs[k])
            gu = (T * G[1:]).sum(1)
            gw = (GA.unsqueeze(-1) * Z[:-1, ..., :D]).sum(1)
        gb = GA.sum(1)
        return G[0].reshape(M, P, D), gu, gw, gb, gwu


def fused_planar(x, u, w, b, wu):
    """Apply ``K`` planar layers ``z <- z + u_k tanh(w_k.z + b_k)`` in one autograd node.

    Returns ``(y, sum_k log|det J_k|)`` with the log-det of :func:`planar.planar_log_det`.  The
    parameters are the *constrained* ones (``u`` is u-hat, ``wu = w . u`` of the raw ``u``, as
    returned by :func:`planar.planar_uhat`), stacked over layers on dim 0.  Their batch shape
    broadcasts against ``x``'s (e.g. per-point parameters ``(K, B, D)`` with vectorized particles
    ``x (S, B, D)``); gradients are summed over broadcast dimensions.

    Args:
        x (Tensor): inputs ``(*batch_x, D)``.
        u (Tensor): u-hat, ``(K, *batch_p, D)``.
        w (Tensor): ``(K, *batch_p, D)``.
        b (Tensor): ``(K, *batch_p)``.
        wu (Tensor): ``w . u`` before the constraint, ``(K, *batch_p)``.

    Example:
        >>> K, D = 4, 2
        >>> uhat, wu = planar_uhat(torch.randn(K, D), torch.randn(K, D))
        >>> y, ld = fused_planar(torch.randn(100, D), uhat, torch.randn(K, D), torch.zeros(K), wu)
        >>> y.shape, ld.shape
        (torch.Size([100, 2]), torch.Size([100]))
    """
    for name, value in (("x", x), ("u", u), ("w", w), ("b", b), ("wu", wu)):
        if not torch.is_tensor(value):
            raise TypeError(f"fused_planar: {name} must be a tensor, got {type(value).__name__}")
    if x.dim() == 0 or u.dim() < 2 or u.shape != w.shape or u.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"fused_planar: expected x (..., D) and u, w (K, ..., D) of one shape, got x {tuple(x.shape)}, "
            f"u {tuple(u.shape)}, w {tuple(w.shape)}"
        )
    if b.shape != u.shape[:-1] or wu.shape != u.shape[:-1]:
        raise ValueError(
            f"fused_planar: b and wu must have shape {tuple(u.shape[:-1])}, got b {tuple(b.shape)}, "
            f"wu {tuple(wu.shape)}"
        )
    K, D = u.shape[0], u.shape[-1]
    pbatch, xbatch = u.shape[1:-1], x.shape[:-1]
    batch = torch.broadcast_shapes(xbatch, pbatch)
    # layout (M, P, D): the parameters' batch is the trailing part of `batch` (size P), the leading
    # part (size M) shares them; parameters with size-1 dims inside that tail are expanded (autograd
    # sums their gradients back).
    pb = tuple(pbatch)
    while pb and pb[0] == 1:
        pb = pb[1:]
    tail = tuple(batch[len(batch) - len(pb):]) if pb else ()
    if pb != tail:
        u, w = u.expand((K,) + tail + (D,)), w.expand((K,) + tail + (D,))
        b, wu = b.expand((K,) + tail), wu.expand((K,) + tail)
    P = math.prod(tail)
    M = math.prod(batch[: len(batch) - len(tail)])
    u, w, b, wu = u.reshape(K, P, D), w.reshape(K, P, D), b.reshape(K, P), wu.reshape(K, P)
    if xbatch != batch:
        x = x.expand(batch + (D,))
    if torch.jit.is_tracing():
        # a traced graph would record the in-place ops inside the fused node (and not its
        # backward): trace the per-layer maths instead
        y, ld = _layer_loop(x.reshape(M, P, D), u, w, b, wu)
    else:
        y, ld = _FusedPlanar.apply(x.reshape(M, P, D), u, w, b, wu)
    return y.reshape(batch + (D,)), ld.reshape(batch)


def _layer_loop(x, u, w, b, wu):
    """The same maths as :class:`_FusedPlanar`, one planar layer at a time (``Planar._forward``)."""
    total = 0.0
    for k in range(u.shape[0]):
        a = (x * w[k]).sum(-1) + b[k]
        x = x + u[k] * torch.tanh(a).unsqueeze(-1)
        total = total + planar_log_det(a, wu[k])
    return x, total


# -- dispatch from stacks ------------------------------------------------------------------------------
def _is_planar(layer):
    if type(layer) is Planar:
        return layer.context_dim == 0
    return type(layer) is ConditionedFlow and type(layer.module) is Planar


def planar_run_params(layers):
    """Stack the constrained parameters of consecutive planar layers for :func:`fused_planar`.

    Owned layers (``Planar(dim)``) have their raw parameters stacked and constrained once, for all
    layers together; bound layers (``Planar(dim, context_dim=c).condition(ctx)``) contribute their
    already constrained per-point parameters, broadcast to a common batch shape.

    Args:
        layers (list): ``Planar`` modules with ``context_dim=0`` and/or ``ConditionedFlow`` objects
            wrapping a ``Planar``.

    Returns:
        tuple: ``(u_hat, w, b, wu)`` stacked on dim 0.

    Example:
        >>> u, w, b, wu = planar_run_params([Planar(3), Planar(3)])
        >>> u.shape, b.shape
        (torch.Size([2, 3]), torch.Size([2]))
    """
    if not layers or not all(_is_planar(layer) for layer in layers):
        raise TypeError("planar_run_params expects a non-empty list of owned or bound Planar layers")
    if all(type(layer) is Planar for layer in layers):
        u = torch.stack([layer.u for layer in layers])
        w = torch.stack([layer.w for layer in layers])
        b = torch.stack([layer.b for layer in layers])
        uhat, wu = planar_uhat(u, w)
        return uhat, w, b, wu
    ps = [layer.params() if type(layer) is Planar else layer.params for layer in layers]
    shapes = {p["w"].shape[:-1] for p in ps}
    if len(shapes) > 1:
        pbatch = torch.broadcast_shapes(*shapes)
        D = ps[0]["w"].shape[-1]
        ps = [
            {
                "u": p["u"].expand(pbatch + (D,)),
                "w": p["w"].expand(pbatch + (D,)),
                "b": p["b"].expand(pbatch),
                "wu": p["wu"].expand(pbatch),
            }
            for p in ps
        ]
    return tuple(torch.stack([p[name] for p in ps]) for name in ("u", "w", "b", "wu"))


def _run_fusable(params, x):
    return all(t.dtype == x.dtype and t.device == x.device for t in params)


def forward_layers(layers, x):
    """``forward_and_log_det`` of the composition of ``layers``, fusing runs of planar layers.

    Every run of two or more consecutive planar layers (owned, or ``ConditionedFlow`` of a
    ``Planar``) goes through :func:`fused_planar` (unless switched off by
    :func:`use_fused_planar`); other layers use their own ``forward_and_log_det``.

    Args:
        layers (sequence): flow transforms with ``forward_and_log_det``.
        x (Tensor): input ``(..., D)``.

    Returns:
        tuple: ``(y, log|det J|)`` with shapes ``(..., D)`` and ``(...)``.

    Example:
        >>> layers = [Planar(2) for _ in range(3)]
        >>> y, ld = forward_layers(layers, torch.randn(5, 2))
        >>> y.shape, ld.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """
    total = None
    layers = list(layers)
    n, i = len(layers), 0
    fuse = _STATE["enabled"] and not torch.jit.is_tracing()
    while i < n:
        j = i
        if fuse:
            while j < n and _is_planar(layers[j]):
                j += 1
        if j - i >= 2:
            params = planar_run_params(layers[i:j])
            if _run_fusable(params, x):
                x, ladj = fused_planar(x, *params)
            else:
                x, ladj = _loop(layers[i:j], x)
            i = j
        else:
            x, ladj = layers[i].forward_and_log_det(x)
            i += 1
        total = ladj if total is None else total + ladj
    if total is None:
        return x, x.new_zeros(x.shape[:-1])
    if not torch.jit.is_tracing() and total.shape != x.shape[:-1]:
        total = total.expand(x.shape[:-1])
    return x, total


def _loop(layers, x):
    total = None
    for layer in layers:
        x, ladj = layer.forward_and_log_det(x)
        total = ladj if total is None else total + ladj
    return x, total
