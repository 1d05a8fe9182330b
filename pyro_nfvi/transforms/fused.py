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
fused node by :func:`planar_run_params`, once for the stacked parameters of the run, so autograd
routes its gradient to each layer's parameters or hypernetwork) and the same log-space log-det
:math:`\ell = \log\mathrm{sech}^2 a + \log(\sinh^2 a + s)` with
:math:`s = \mathrm{softplus}(w.u + \log(e - 1))`, computed as the equal
:math:`\ell = \mathrm{logaddexp}(2\log|\tanh a|, \log\mathrm{sech}^2 a + \log s)`.  Its derivatives
are written in log space too, so they stay finite at ``w = 0`` and ``w.u -> -inf``:

.. math::

    \frac{\partial \ell}{\partial a} = 2\,\mathrm{sign}(a)\, e^{\log|\tanh a| - \ell} - 2\tanh a,
    \qquad
    \frac{\partial \ell}{\partial (w.u)} = e^{\log\mathrm{sech}^2 a + \log s - \ell}\,
    \frac{d \log s}{d (w.u)}.

**Where the fused node is not used.**  :func:`fused_planar` decides, in one place, between the
fused node and the same maths written with ordinary tensor ops (one layer at a time): the latter is
used when the fused path is switched off (:func:`use_fused_planar`), under ``torch.jit.trace``
(``JitTrace_ELBO``: a trace would record the node's in-place ops), under ``torch.compile`` and
inside ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, ...: the node has no functorch
rules), and when the parameters' dtype or device differ from the input's.  Higher derivatives
through the fused node itself work: its backward is written with in-place buffer ops when only a
gradient is wanted, and when a graph of the backward is wanted (``create_graph=True``, e.g. a
Hessian or Laplace warm start through the flow) it recomputes the run with ordinary ops and
differentiates that, so double backward is exact.

Which layers form a run is decided by :func:`~pyro_nfvi.transforms.runs.plan_layers`.

Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.
"""
import contextlib
import math

import torch

from .planar import PLANAR_SHIFT, Planar, planar_log_det, planar_uhat

__all__ = ["fused_planar", "planar_run_params", "use_fused_planar", "fused_planar_enabled"]

_LOG2 = math.log(2.0)
_STATE = {"enabled": True}


def fused_planar_enabled():
    """Whether :func:`fused_planar` may use its fused autograd node (see :func:`use_fused_planar`).

    Example:
        >>> fused_planar_enabled()
        True
    """
    return _STATE["enabled"]


@contextlib.contextmanager
def use_fused_planar(enabled=True):
    """Context manager that switches the fused planar node on or off (it is on by default).

    Switched off, runs of planar layers use the same maths with ordinary tensor ops, one layer at a
    time: an ablation for benchmarks.  It is never needed for correctness: higher derivatives,
    ``torch.func``, ``torch.compile`` and ``torch.jit.trace`` are handled automatically.

    Args:
        enabled (bool): whether runs of planar layers use the fused node.

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


def _functorch_active():
    # torch.func has no public "am I inside a transform" query; autograd.Function itself asks this
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active is not None and active())


def _compiling():
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling is not None and is_compiling())


def _use_fused_node(x, params):
    """The one decision between the fused node and the layer-by-layer maths (see the module doc)."""
    if not _STATE["enabled"] or torch.jit.is_tracing() or _compiling() or _functorch_active():
        return False
    return all(t.dtype == x.dtype and t.device == x.device for t in params)


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

    The backward has two forms: the in-place reverse sweep when only gradients are wanted, and,
    when autograd records the backward (``create_graph=True``), a differentiable one that
    recomputes the run with :func:`_layer_loop` and differentiates it, so every order works.
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
            ctx.save_for_backward(x, u, w, b, wu, Z, T, ld, log_abs_t, log_qs, dlog_s)
        return y, ld.sum(0)

    @staticmethod
    def backward(ctx, gy, gld):
        if torch.is_grad_enabled():
            # create_graph=True: the backward itself must be differentiable (Hessians, Laplace)
            return _differentiable_backward(ctx, gy, gld)
        _, u, w, _, _, Z, T, ld, log_abs_t, log_qs, dlog_s = ctx.saved_tensors
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


def _differentiable_backward(ctx, gy, gld):
    """The vector-Jacobian product of :class:`_FusedPlanar`, as a graph autograd can differentiate."""
    inputs = ctx.saved_tensors[:5]
    wanted = [t for t, needed in zip(inputs, ctx.needs_input_grad) if needed]
    with torch.enable_grad():
        y, ld = _layer_loop(*inputs)
        grads = iter(torch.autograd.grad((y, ld), wanted, (gy, gld), create_graph=True, allow_unused=True))
    return tuple(next(grads) if needed else None for needed in ctx.needs_input_grad)


def fused_planar(x, u, w, b, wu):
    """Apply ``K`` planar layers ``z <- z + u_k tanh(w_k.z + b_k)`` in one autograd node.

    Returns ``(y, sum_k log|det J_k|)`` with the log-det of :func:`planar.planar_log_det`.  The
    parameters are the *constrained* ones (``u`` is u-hat, ``wu = w . u`` of the raw ``u``, as
    returned by :func:`planar.planar_uhat` or :func:`planar_run_params`), stacked over layers on
    dim 0.  Their batch shape broadcasts against ``x``'s (e.g. per-point parameters ``(K, B, D)``
    with vectorized particles ``x (S, B, D)``); gradients are summed over broadcast dimensions.

    This is the one place that chooses between the fused autograd node and the same maths with
    ordinary ops (see the module docstring for when the latter is used); both give the same
    values and derivatives of every order.

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
    try:
        batch = torch.broadcast_shapes(xbatch, pbatch)
    except RuntimeError:
        raise ValueError(
            f"fused_planar: the input's batch shape {tuple(xbatch)} does not broadcast against the "
            f"parameters' batch shape {tuple(pbatch)} (u of shape {tuple(u.shape)})"
        ) from None
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
    if _use_fused_node(x, (u, w, b, wu)):
        y, ld = _FusedPlanar.apply(x.reshape(M, P, D), u, w, b, wu)
    else:
        y, ld = _layer_loop(x.reshape(M, P, D), u, w, b, wu)
    return y.reshape(batch + (D,)), ld.reshape(batch)


def _layer_loop(x, u, w, b, wu):
    """The same maths as :class:`_FusedPlanar`, one planar layer at a time (``Planar._forward``)."""
    total = 0.0
    for k in range(u.shape[0]):
        a = (x * w[k]).sum(-1) + b[k]
        x = x + u[k] * torch.tanh(a).unsqueeze(-1)
        total = total + planar_log_det(a, wu[k])
    return x, total


# -- the parameters of a run -------------------------------------------------------------------------
def planar_run_params(layers, raws=None):
    """The constrained parameters of consecutive planar layers, stacked for :func:`fused_planar`.

    This is the one place where planar parameters are stacked.  The raw ``u, w, b`` of every layer
    -- its own parameters (``raws[k] is None``, a ``Planar`` built with ``context_dim=0``) or the
    per-point raw parameters it is bound to (``raws[k]``, as from ``layer.raw_params(context)``) --
    are broadcast to a common batch shape, stacked on a new dim 0, and constrained once for the
    whole run (:func:`~pyro_nfvi.transforms.planar.planar_uhat`), instead of once per layer.

    Args:
        layers (sequence): ``Planar`` modules.
        raws (sequence or None): per layer, ``None`` (owned parameters) or a raw parameter dict
            ``{"u", "w", "b"}``; ``None`` means all owned.

    Returns:
        tuple: ``(u_hat, w, b, wu)`` with shapes ``(K, *batch, D)``, ``(K, *batch, D)``,
        ``(K, *batch)``, ``(K, *batch)``.

    Example:
        >>> u, w, b, wu = planar_run_params([Planar(3), Planar(3)])
        >>> u.shape, b.shape
        (torch.Size([2, 3]), torch.Size([2]))
        >>> amortized = Planar(3, context_dim=4)
        >>> raws = [None, amortized.raw_params(torch.randn(5, 4))]
        >>> planar_run_params([Planar(3), amortized], raws)[0].shape
        torch.Size([2, 5, 3])
    """
    layers = list(layers)
    raws = [None] * len(layers) if raws is None else list(raws)
    if not layers or len(raws) != len(layers) or any(type(layer) is not Planar for layer in layers):
        raise TypeError(
            "planar_run_params expects a non-empty list of Planar modules and one raw entry (or None) "
            f"per layer, got {[type(layer).__name__ for layer in layers]} and {len(raws)} raw entries"
        )
    us, ws, bs = [], [], []
    for i, (layer, raw) in enumerate(zip(layers, raws)):
        if raw is None:
            if layer.context_dim:
                raise ValueError(
                    f"planar_run_params: layer {i} is amortized (context_dim={layer.context_dim}) and needs "
                    "its raw parameters (layer.raw_params(context)), got None"
                )
            raw = layer.raw_params()
        us.append(raw["u"])
        ws.append(raw["w"])
        bs.append(raw["b"])
    if len({t.shape for t in us + ws}) > 1 or len({t.shape for t in bs}) > 1:
        D = layers[0].dim
        batch = torch.broadcast_shapes(*(t.shape[:-1] for t in us + ws), *(t.shape for t in bs))
        us = [t.expand(batch + (D,)) for t in us]
        ws = [t.expand(batch + (D,)) for t in ws]
        bs = [t.expand(batch) for t in bs]
    w = torch.stack(ws)
    uhat, wu = planar_uhat(torch.stack(us), w)
    return uhat, w, torch.stack(bs), wu
