"""Coupling layers: NICE additive (Dinh et al. 2014) and RealNVP affine (Dinh et al. 2017).

A coupling layer splits the coordinates into a conditioning part ``x_I`` that passes through
unchanged and a transformed part ``x_T``; ``x_T`` gets a shift (and, in the affine form, a scale)
computed by a network from ``x_I`` (and the context, if amortized).  The Jacobian is triangular with
ones on the ``I`` block, so the log-det is the sum of the log-scales, and the inverse is exact.
"""
import math

import torch
from pyro.nn import DenseNN
from torch import nn

from ..validation import check_choice, check_int, check_positive
from .base import NetworkFlowModule, broadcast_context, to_network_dtype
from .hidden_sizes import hidden_sizes
from .output_scale import output_scale as resolve_output_scale

__all__ = ["AffineCoupling"]


class AffineCoupling(NetworkFlowModule):
    r"""Affine coupling :math:`y_I = x_I,\ y_T = x_T \odot e^{s(x_I)} + t(x_I)` with
    :math:`\log|\det J| = \sum_{i \in T} s_i(x_I)` (RealNVP), or additive :math:`s = 0` (NICE).

    References: Dinh, Krueger & Bengio, *NICE: Non-linear Independent Components Estimation*,
    arXiv:1410.8516 (2014); Dinh, Sohl-Dickstein & Bengio, *Density estimation using Real NVP*,
    ICLR 2017.

    Masks (halves, complementary for the two parities): with ``d = dim // 2``,

    * ``parity=0``: ``I`` = the first ``d`` coordinates, ``T`` = the last ``dim - d``;
    * ``parity=1``: ``T`` = the first ``d`` coordinates, ``I`` = the last ``dim - d``.

    So for ``dim >= 2`` two consecutive layers of opposite parity (as built by
    :func:`~pyro_nfvi.transforms.flow`) transform every coordinate and condition on every
    coordinate.  For ``dim=1`` both parities transform the single coordinate (``I`` is empty): the
    network reads only the context (amortized) and the layer is an elementwise affine map; with no
    context either, the shift and log-scale are plain parameters (``shift``, ``raw_scale``).

    The conditioner is :class:`pyro.nn.DenseNN` whose input is ``x_I`` concatenated with the context
    (broadcast to ``x``'s batch shape) and whose output is ``(t, s_raw)``; the log-scale is soft-clamped
    as ``s = log_scale_clip * tanh(s_raw / log_scale_clip)``.  Its last layer is zero-initialised, so
    the layer starts as the identity.

    Args:
        dim (int): event size ``D``.
        context_dim (int): 0 for a plain flow; ``> 0`` to feed a context to the network; call
            ``condition`` with it.
        parity (int): 0 or 1, which half is transformed (see above).
        hidden (tuple): hidden sizes of the conditioner (at least one layer; ``None`` -> ``(64, 64)``).
        form (str): ``"affine"`` (RealNVP) or ``"additive"`` (NICE, volume preserving).
        log_scale_clip (float or None): soft bound on ``|s|``; ``None`` for no bound.
        stable (bool): the gated scale of Glow (Kingma & Dhariwal 2018),
            ``exp(s) = sigmoid(s_raw + sigmoid_bias)``, in place of the soft clamp: the layer can
            only contract (it starts at ``sigmoid(sigmoid_bias) ~ 0.88``, not the identity), so
            expansions are left to the base distribution.
        sigmoid_bias (float): the bias of the gated scale.
        max_scale (float or None): with ``stable=True``, a gate that starts at the identity:
            ``exp(s) = m * sigmoid(m / (m - 1) * s_raw - log(m - 1))`` with ``m = max_scale``: a scale
            in ``(0, m)`` that is 1, with ``ds/ds_raw = 1``, at ``s_raw = 0`` -- the affine form's
            start, bounded (``sigmoid_bias`` is then unused); ``None`` (the default) keeps Glow's gate.
            Must exceed 1.
        output_scale (float or str): factor on the network's output ``(t, s_raw)``: ``"none"`` (1, the
            default), ``"fan_in"`` (``1 / hidden[-1]``, so that Adam moves ``t`` and ``s`` by about
            ``lr`` per step; see ``pyro_nfvi.transforms.output_scale``) or a positive float.
            The owned parameters of a ``dim=1`` layer without context are not scaled.
        cache_size (int): 0 or 1.

    Example:
        >>> layer = AffineCoupling(4, parity=1)
        >>> x = torch.randn(6, 4)
        >>> y = layer(x)
        >>> torch.equal(y, x), layer.log_abs_det_jacobian(x, y).shape
        (True, torch.Size([6]))
        >>> amortized = AffineCoupling(4, context_dim=3, form="additive")
        >>> amortized.condition(torch.randn(5, 3))(torch.randn(2, 5, 4)).shape
        torch.Size([2, 5, 4])
    """

    def __init__(
        self,
        dim,
        context_dim=0,
        parity=0,
        hidden=(64, 64),
        form="affine",
        log_scale_clip=5.0,
        stable=False,
        sigmoid_bias=2.0,
        max_scale=None,
        output_scale="none",
        cache_size=1,
    ):
        super().__init__(dim, context_dim=context_dim, cache_size=cache_size)
        check_choice("parity", check_int("parity", parity, minimum=0), (0, 1))
        check_choice("form", form, ("affine", "additive"))
        if log_scale_clip is not None:
            log_scale_clip = check_positive("log_scale_clip", log_scale_clip)
        self.parity = parity
        self.form = form
        self.log_scale_clip = log_scale_clip
        self.stable = bool(stable)
        self.sigmoid_bias = float(sigmoid_bias)
        if max_scale is not None:
            max_scale = check_positive("max_scale", max_scale)
            if max_scale <= 1.0:
                raise ValueError(f"max_scale must exceed 1 (the gate's upper bound on the scale), got {max_scale!r}")
            if not self.stable:
                raise ValueError("max_scale bounds the gated scale: pass it with stable=True")
        self.max_scale = max_scale
        # the gate m * sigmoid(c * s_raw + b) as (c, b, log m): Glow's (1, bias, 0), or one that starts at
        # the identity with slope 1 there, like exp(s_raw): (m / (m - 1), -log(m - 1), log m)
        if max_scale is None:
            self._gate = (1.0, self.sigmoid_bias, 0.0)
        else:
            self._gate = (max_scale / (max_scale - 1.0), -math.log(max_scale - 1.0), math.log(max_scale))
        self.hidden = hidden_sizes(hidden, (64, 64), 1)
        self.output_scale = resolve_output_scale(output_scale, self.hidden[-1])
        num_id = self.dim // 2
        if parity == 0 or self.dim == 1:
            cond, trans = torch.arange(num_id), torch.arange(num_id, self.dim)
        else:
            trans, cond = torch.arange(num_id), torch.arange(num_id, self.dim)
        # index buffers are a function of (dim, parity): not saved in state_dict
        self.register_buffer("cond_idx", cond, persistent=False)
        self.register_buffer("trans_idx", trans, persistent=False)
        self.register_buffer("inv_order", torch.argsort(torch.cat([cond, trans])), persistent=False)
        num_t = len(trans)
        num_out = 2 * num_t if form == "affine" else num_t
        num_in = len(cond) + self.context_dim
        if num_in == 0:  # dim=1 and no context: an elementwise affine map with owned parameters
            self.net = None
            self.shift = nn.Parameter(torch.zeros(num_t))
            if form == "affine":
                self.raw_scale = nn.Parameter(torch.zeros(num_t))
        else:
            self.net = DenseNN(num_in, list(self.hidden), param_dims=[num_out])
            last = self.net.layers[-1]
            with torch.no_grad():
                last.weight.zero_()
                last.bias.zero_()

    # -- maths --------------------------------------------------------------------------------
    def _shift_scale(self, x, context):
        """Return ``(x_I, x_T, t, s)`` for input ``x`` (already broadcast against the context)."""
        x_i, x_t = x[..., self.cond_idx], x[..., self.trans_idx]
        if self.net is None:
            t = self.shift.expand(x_t.shape)
            raw = self.raw_scale.expand(x_t.shape) if self.form == "affine" else None
        else:
            # read by the network in its own dtype: float64 in gives a promoted output, not an error
            inp = to_network_dtype(x_i, self.net)
            if context is not None:
                inp = torch.cat([inp, to_network_dtype(context, self.net)], dim=-1)
            out = self.net(inp)
            if self.output_scale != 1.0:
                out = self.output_scale * out
            num_t = x_t.shape[-1]
            t, raw = out[..., :num_t], (out[..., num_t:] if self.form == "affine" else None)
        if raw is None:
            return x_i, x_t, t, None
        if self.stable:  # the gated scale m * sigmoid(c * s_raw + b): Glow's (m = 1) contracts, never expands
            slope, bias, log_max = self._gate
            return x_i, x_t, t, log_max - nn.functional.softplus(-(slope * raw + bias))
        s = raw if self.log_scale_clip is None else self.log_scale_clip * torch.tanh(raw / self.log_scale_clip)
        return x_i, x_t, t, s

    def _prepare(self, x, p):
        context = p.get("context")
        if context is not None:
            x, context = broadcast_context(x, context)
        return x, context

    def _forward(self, x, p):
        x, context = self._prepare(x, p)
        x_i, x_t, t, s = self._shift_scale(x, context)
        if s is None:
            y_t, ladj = x_t + t, x.new_zeros(x.shape[:-1])
        else:
            y_t = x_t * torch.exp(s) + t
            ladj = s.sum(-1).to(y_t.dtype)  # promoted with the output, as in every family
        return torch.cat([x_i, y_t], dim=-1)[..., self.inv_order], ladj

    def _inverse(self, y, p):
        y, context = self._prepare(y, p)
        y_i, y_t, t, s = self._shift_scale(y, context)
        if s is None:
            x_t, ladj = y_t - t, y.new_zeros(y.shape[:-1])
        else:
            x_t = (y_t - t) * torch.exp(-s)
            ladj = s.sum(-1).to(x_t.dtype)
        return torch.cat([y_i, x_t], dim=-1)[..., self.inv_order], ladj

    def extra_repr(self):
        gate = "" if self.max_scale is None else f", max_scale={self.max_scale:.4g}"
        return f"{super().extra_repr()}, parity={self.parity}, form={self.form!r}, hidden={self.hidden}, stable={self.stable}{gate}, output_scale={self.output_scale:.4g}"
