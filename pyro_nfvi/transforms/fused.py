"""Fused planar stacks: ``K`` planar layers as one autograd node.

In the small-dimension regime (a 2-D target, dozens of planar layers, ~100 particles) the cost of a
flow is launching operations, not arithmetic: a planar layer written with ordinary tensor ops
(:class:`~pyro_nfvi.transforms.planar.Planar`) costs ~20 kernel launches forward and as many
autograd nodes backward.  :func:`fused_planar` runs the whole run of layers in one
:class:`torch.autograd.Function`:

* forward: three ops per layer (``a = w.z + b`` and ``z += u-hat tanh(a)`` as batched matrix
  products, written into pre-allocated buffers), then the log-det of every layer at once;
* backward: a hand-written reverse sweep with three ops per layer, then the gradients of every
  layer's ``u-hat``, ``w``, ``b`` and ``w.u`` at once as batched matrix products.

The maths is that of :mod:`~pyro_nfvi.transforms.planar`: the same constraint (applied outside the
fused node, so autograd routes its gradient to each layer's parameters or hypernetwork) and the same
log-space log-det, ``log sech^2(a) + log(sinh^2(a) + softplus(w.u + log(e - 1)))``, whose
derivatives are written in log space too, so they stay finite at ``w = 0`` and ``w.u -> -inf``:

.. math::

    \\frac{\\partial \\ell}{\\partial a} = 2\\,\\mathrm{sign}(a)\\, e^{\\log|\\tanh a| - \\ell} - 2\\tanh a,
    \\qquad
    \\frac{\\partial \\ell}{\\partial (w.u)} = e^{\\log s - \\ell + \\log\\mathrm{sech}^2 a}\\,
    \\frac{d \\log s}{d (w.u)}.

:class:`~pyro_nfvi.transforms.stack.FlowStack` calls :func:`forward_layers`, which sends every run
of two or more consecutive planar layers (owned, or bound to per-point parameters) through the
fused node; everything else, and every inverse, takes the per-layer path.  The fused node is
first-order only (no double backward): switch it off with :func:`use_fused_planar` where a
Hessian through the flow is needed.

Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
"""
import contextlib
import math

import torch
from torch.autograd.function import once_differentiable

from .base import ConditionedFlow
from .planar import PLANAR_SHIFT, Planar, planar_uhat

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


def _log_det_parts(a, log_s):
    """Per-layer log-det ``ld`` of :func:`planar.planar_log_det` plus what its derivatives need."""
    abs_a = a.abs()
    pos = abs_a > 0
    safe = torch.where(pos, abs_a, torch.ones_like(abs_a))
    log_sinh = torch.where(pos, safe - _LOG2 + torch.log(-torch.expm1(-2.0 * safe)), torch.full_like(abs_a, -math.inf))
    log_sech2 = 2.0 * (_LOG2 - abs_a - torch.nn.functional.softplus(-2.0 * abs_a))
    ld = log_sech2 + torch.logaddexp(2.0 * log_sinh, log_s)
    return ld, log_sinh, log_sech2


class _FusedPlanar(torch.autograd.Function):
    """``K`` planar layers on the canonical layout: ``x (P, M, D)``, params ``(K, P, D)`` / ``(K, P)``."""

    @staticmethod
    def forward(ctx, x, u, w, b, wu):
        K, P, D = u.shape
        M = x.shape[1]
        Z = x.new_empty((K + 1, P, M, D))
        A = x.new_empty((K, P, M, 1))
        T = x.new_empty((K, P, M, 1))
        Z[0].copy_(x)
        zs, as_, ts = Z.unbind(0), A.unbind(0), T.unbind(0)
        ws, us, bs = w.unsqueeze(-1).unbind(0), u.unsqueeze(-2).unbind(0), b[..., None, None].unbind(0)
        for k in range(K):
            torch.baddbmm(bs[k], zs[k], ws[k], out=as_[k])
            torch.tanh(as_[k], out=ts[k])
            torch.baddbmm(zs[k], ts[k], us[k], out=zs[k + 1])
        log_s, dlog_s = _log_softplus_and_grad(wu + PLANAR_SHIFT)
        log_s, dlog_s = log_s[..., None], dlog_s[..., None]
        ld, log_sinh, log_sech2 = _log_det_parts(A.squeeze(-1), log_s)
        ctx.save_for_backward(Z, A, T, u, w, ld, log_sinh, log_sech2, log_s, dlog_s)
        return Z[K], ld.sum(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gld):
        Z, A, T, u, w, ld, log_sinh, log_sech2, log_s, dlog_s = ctx.saved_tensors
        K, P, M, D = Z.shape[0] - 1, Z.shape[1], Z.shape[2], Z.shape[3]
        t = T.squeeze(-1)
        # d ld / d a = 2 tanh(a) (exp(-ld) - 1), written in log space (finite at a = 0, ld -> -inf)
        log_abs_t = log_sinh + 0.5 * log_sech2
        dld_da = 2.0 * torch.sign(t) * torch.exp(log_abs_t - ld) - 2.0 * t
        gld = gld.unsqueeze(0)
        C = (gld * dld_da).unsqueeze(-1)
        gwu = (gld * torch.exp(log_s - ld + log_sech2)).sum(-1) * dlog_s.squeeze(-1)
        Q = 1.0 - T * T
        G = Z.new_empty((K + 1, P, M, D))
        GA = Z.new_empty((K, P, M, 1))
        G[K].copy_(gy)
        GU = Z.new_empty((P, M, 1))
        gs, gas, cs, qs = G.unbind(0), GA.unbind(0), C.unbind(0), Q.unbind(0)
        ucols, wrows = u.unsqueeze(-1).unbind(0), w.unsqueeze(-2).unbind(0)
        for k in range(K - 1, -1, -1):
            torch.bmm(gs[k + 1], ucols[k], out=GU)
            torch.addcmul(cs[k], GU, qs[k], out=gas[k])
            torch.baddbmm(gs[k + 1], gas[k], wrows[k], out=gs[k])
        gu = torch.matmul(T.transpose(-1, -2), G[1:]).squeeze(-2)
        gw = torch.matmul(GA.transpose(-1, -2), Z[:-1]).squeeze(-2)
        gb = GA.sum((-2, -1))
        return G[0], gu, gw, gb, gwu


def _fused_no_grad(x, u, w, b, wu):
    with torch.no_grad():
        K = u.shape[0]
        z = x
        A = []
        ws, us = w.unsqueeze(-1), u.unsqueeze(-2)
        bs = b[..., None, None]
        for k in range(K):
            a = torch.baddbmm(bs[k], z, ws[k])
            A.append(a)
            z = torch.baddbmm(z, torch.tanh(a), us[k])
        log_s, _ = _log_softplus_and_grad(wu + PLANAR_SHIFT)
        ld = _log_det_parts(torch.stack(A).squeeze(-1), log_s[..., None])[0]
        return z, ld.sum(0)


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
    # canonical layout: the parameters' batch is the trailing part of `batch` (size P), the rest is
    # shared by all of them (size M); x becomes (P, M, D).
    pb = tuple(pbatch)
    while pb and pb[0] == 1:
        pb = pb[1:]
    tail = batch[len(batch) - len(pb):] if pb else ()
    if pb != tuple(tail):
        u, w = u.expand((K,) + tuple(tail) + (D,)), w.expand((K,) + tuple(tail) + (D,))
        b, wu = b.expand((K,) + tuple(tail)), wu.expand((K,) + tuple(tail))
    P = math.prod(tail)
    lead = batch[: len(batch) - len(tail)]
    M = math.prod(lead)
    u, w, b, wu = u.reshape(K, P, D), w.reshape(K, P, D), b.reshape(K, P), wu.reshape(K, P)
    if xbatch != batch:
        x = x.expand(batch + (D,))
    x3 = x.reshape(M, P, D).transpose(0, 1)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x3, u, w, b, wu)):
        y3, ld2 = _FusedPlanar.apply(x3, u, w, b, wu)
    else:
        y3, ld2 = _fused_no_grad(x3, u, w, b, wu)
    return y3.transpose(0, 1).reshape(batch + (D,)), ld2.transpose(0, 1).reshape(batch)


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
    fuse = _STATE["enabled"]
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
    if total.shape != x.shape[:-1]:
        total = total.expand(x.shape[:-1])
    return x, total


def _loop(layers, x):
    total = None
    for layer in layers:
        x, ladj = layer.forward_and_log_det(x)
        total = ladj if total is None else total + ladj
    return x, total
