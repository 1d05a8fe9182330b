"""Inverse autoregressive flow (Kingma et al. 2016) on Pyro's masked autoregressive network (MADE).

One IAF layer maps ``x`` to ``y = mu(x) + sigma(x) * x`` where ``mu_i`` and ``sigma_i`` depend only on
the coordinates that come before ``i`` in the autoregressive order of the network, so the Jacobian is
triangular (after that permutation) and ``log|det J| = sum_i log sigma_i``.  The conditioner is
:class:`pyro.nn.AutoRegressiveNN` (or :class:`pyro.nn.ConditionalAutoRegressiveNN` when the flow is
amortized and also reads a context), used as is: this module only adds the identity initialisation,
the numerically stable gated form, a broadcasting context and an inverse that works in any dtype.
"""
import warnings

import torch
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch.nn import functional as F

from .base import NetworkFlowModule, broadcast_context, to_network_dtype
from .hidden_sizes import hidden_sizes
from .output_scale import output_scale as resolve_output_scale

__all__ = ["IAF"]


def _derivative(f, pre):
    """The derivative of the elementwise nonlinearity ``f`` at ``pre`` (ReLU in closed form, others by autograd)."""
    if isinstance(f, torch.nn.ReLU):
        return (pre > 0).to(pre.dtype)
    with torch.enable_grad():
        p = pre.detach().requires_grad_()
        (d,) = torch.autograd.grad(f(p).sum(), p)
    return d


def _rows_times(rows, w):
    """``rows @ w`` for per-draw rows ``(..., R, H)`` and one weight matrix ``(H, H')``: one ``(H', H) @ (H, N R)`` product.

    ``torch.matmul`` would broadcast ``w`` over the draws and run one small product per draw; of
    the two orientations of the one product, the wide output is the faster one on the CPU (MKL:
    115 against 190 us for ``N R = 448``, ``H = 166``, ``H' = 55``).
    """
    flat = rows.reshape(-1, rows.shape[-1])
    return (w.t() @ flat.t()).t().reshape(rows.shape[:-1] + w.shape[-1:])


class IAF(NetworkFlowModule):
    r"""Inverse autoregressive flow :math:`y = \mu(x) + \sigma(x) \odot x` with
    :math:`\log|\det J| = \sum_i \log \sigma_i(x)`, :math:`\sigma = \exp(\mathrm{clip}(s))`.

    Reference: Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, *Improved Variational
    Inference with Inverse Autoregressive Flow*, NeurIPS 2016.

    ``mu`` and ``s`` come from :class:`pyro.nn.AutoRegressiveNN` (``arn``), whose ``permutation``
    buffer fixes the autoregressive order: output ``i`` reads only the inputs before ``i`` in that
    order.  It is the identity here, not Pyro's default ``torch.randperm``: the buffers (the
    permutation and the MADE masks, which Pyro builds deterministically from it) are then a pure
    function of the arguments, so two modules built alike are alike whatever the RNG state, and a
    stack changes the order between layers with explicit :class:`~pyro_nfvi.transforms.stack.Permute`
    layers (as :func:`~pyro_nfvi.transforms.flow` does).  They are saved with ``state_dict``, so a
    freshly built module that loads it reproduces the flow exactly.

    * ``stable=False`` (affine form): ``sigma = exp(clamp(s, log_scale_min_clip, log_scale_max_clip))``.
      The clamp is a plain clamp (true gradients, zero beyond the clips).
    * ``stable=True`` (gated form, Kingma et al. eqs. 12-14):
      ``sigma = sigmoid(s + sigmoid_bias)``, ``y = sigma * x + (1 - sigma) * m`` and
      ``log sigma = -softplus(-(s + sigmoid_bias))`` (the log-sigmoid, finite for every ``s``).

    Initialisation: the weight of the network's last masked layer is zeroed and its bias set to 0,
    so ``m = s = 0`` for every input.  The affine form is then exactly the identity.  The gated form
    cannot be the identity (``sigma < 1``): it starts as ``y = sigmoid(sigmoid_bias) * x``
    (``~0.88 x`` for the default bias), as in Kingma et al.

    The inverse is sequential: ``x <- (y - shift(x)) / sigma(x)`` repeated ``D`` times makes the
    ``k``-th coordinate in autoregressive order exact after ``k`` passes, so ``D`` network passes
    give the exact inverse (a differentiable function of ``y`` and the weights).  The iteration
    stops as soon as a pass leaves ``x`` unchanged (a fixed point is the exact inverse): at
    initialisation, where the network ignores its input, that is after two passes.  For ``dim=1`` the
    network's output can depend on no input coordinate, so the layer is an elementwise affine map
    whose shift and scale come from the network's biases (and the context, if amortized); Pyro's
    warning about ``input_dim = 1`` is silenced because that is the intended behaviour.

    Args:
        dim (int): event size ``D``.
        context_dim (int): 0 for a plain flow; ``> 0`` to feed a context to the network
            (:class:`~pyro.nn.ConditionalAutoRegressiveNN`); call ``condition`` with it.
        hidden (list[int] or None): hidden sizes of the network, each ``>= dim``; default
            ``[max(3 * dim + 1, 16)]``.
        stable (bool): use the gated, numerically stable form.
        sigmoid_bias (float): bias added to ``s`` in the gated form.
        log_scale_min_clip (float): lower clip of ``log sigma`` in the affine form.
        log_scale_max_clip (float): upper clip of ``log sigma`` in the affine form.
        output_scale (float or str): factor on the network's outputs ``m`` and ``s``: ``"none"``
            (1, the default), ``"fan_in"`` (``1 / hidden[-1]``: Adam then moves ``m`` and ``s`` by
            about ``lr`` per step, not ``lr * hidden[-1]``; see ``pyro_nfvi.transforms.output_scale``)
            or a positive float.
        cache_size (int): 0 or 1.

    Example:
        >>> flow = IAF(3)
        >>> x = torch.randn(5, 3)
        >>> y = flow(x)
        >>> torch.equal(y, x), flow.log_abs_det_jacobian(x, y).shape
        (True, torch.Size([5]))
        >>> amortized = IAF(3, context_dim=2, stable=True)
        >>> amortized.condition(torch.randn(4, 2))(torch.randn(10, 4, 3)).shape
        torch.Size([10, 4, 3])
    """

    def __init__(
        self,
        dim,
        context_dim=0,
        hidden=None,
        stable=False,
        sigmoid_bias=2.0,
        log_scale_min_clip=-5.0,
        log_scale_max_clip=3.0,
        output_scale="none",
        cache_size=1,
    ):
        super().__init__(dim, context_dim=context_dim, cache_size=cache_size)
        hidden = hidden_sizes(hidden, [max(3 * self.dim + 1, 16)], self.dim)
        if not log_scale_min_clip < log_scale_max_clip:
            raise ValueError(
                f"log_scale_min_clip must be < log_scale_max_clip, got {log_scale_min_clip} and {log_scale_max_clip}"
            )
        self.stable = bool(stable)
        self.sigmoid_bias = float(sigmoid_bias)
        self.log_scale_min_clip = float(log_scale_min_clip)
        self.log_scale_max_clip = float(log_scale_max_clip)
        self.hidden = hidden
        self.output_scale = resolve_output_scale(output_scale, hidden[-1])
        with warnings.catch_warnings():
            # dim=1 is supported on purpose (an elementwise affine map); see the class docstring
            warnings.filterwarnings("ignore", message="ConditionalAutoRegressiveNN input_dim = 1")
            order = torch.arange(self.dim)  # explicit: Pyro's default order is a random permutation
            if self.context_dim:
                self.arn = ConditionalAutoRegressiveNN(
                    self.dim, self.context_dim, hidden, param_dims=[1, 1], permutation=order
                )
            else:
                self.arn = AutoRegressiveNN(self.dim, hidden, param_dims=[1, 1], permutation=order)
        # Output ordering of the last MaskedLinear: rows [0, D) are m, rows [D, 2D) are s (Pyro reshapes
        # to (..., 2, D)).  Zeroing the weight (the mask multiplies it, so masks are respected) and the
        # bias gives m = s = 0 for every input and context.
        last = self.arn.layers[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()

    #: Output ``i`` reads only the inputs before ``i`` in the (identity) autoregressive order.
    jacobian_structure = "lower"

    def is_identity(self):
        """Whether the layer is exactly the identity: the affine form with its last layer zero (as initialised).

        Then ``m = s = 0`` for every input and context, and ``y = exp(0) x + 0 = x`` to the bit; the
        gated form is not the identity (its gate starts at ``sigmoid(sigmoid_bias)``).
        """
        last = self.arn.layers[-1]
        return (not self.stable and self.arn.skip_layer is None
                and not bool(last.weight.detach().any()) and not bool(last.bias.detach().any()))

    @property
    def permutation(self):
        """The autoregressive order of the network (a buffer of ``arn``)."""
        return self.arn.permutation

    # -- maths --------------------------------------------------------------------------------
    def _net(self, x, context):
        x = to_network_dtype(x, self.arn)  # float64 in: the output is promoted, not an error
        if context is None:
            return self.arn(x)
        return self.arn(x, context=to_network_dtype(context, self.arn))

    def _affine(self, x, context):
        """Return ``(shift, log sigma)`` with ``y = exp(log sigma) * x + shift``."""
        m, s = self._net(x, context)
        if self.output_scale != 1.0:
            m, s = self.output_scale * m, self.output_scale * s
        if self.stable:
            a = s + self.sigmoid_bias
            log_sigma = -F.softplus(-a)
            return (1.0 - torch.sigmoid(a)) * m, log_sigma
        return m, torch.clamp(s, self.log_scale_min_clip, self.log_scale_max_clip)

    def _forward(self, x, p):
        context = p.get("context")
        if context is not None:
            x, context = broadcast_context(x, context)
        shift, log_sigma = self._affine(x, context)
        return torch.exp(log_sigma) * x + shift, log_sigma.sum(-1)

    def _forward_jacobian(self, x, p):
        r"""``y``, ``dy/dx = diag(sigma) + diag(sigma x) d(log sigma)/dx + d(shift)/dx`` (the gated form: likewise) and ``sum_i d(log sigma_i)/dx``.

        Both are rows of one product, carried backwards through the network (reverse mode): the
        coefficients of ``dm/dx`` and ``ds/dx`` in each row of ``J`` (and of ``ds/dx`` in the
        gradient) meet the last layer's weights first, so each layer costs one
        ``(N (D + 1), H) @ (H, H')`` product for ``N`` draws, where carrying the network's
        ``2D x D`` output Jacobian forwards would cost twice that (no autograd over ``x``).
        """
        context = p.get("context")
        if context is not None:
            x, context = broadcast_context(x, context)
        xn = to_network_dtype(x, self.arn)
        arn, d = self.arn, self.dim
        inp = xn if context is None else torch.cat([to_network_dtype(context.detach(), arn).expand(xn.shape[:-1] + context.shape[-1:]), xn], -1)
        first = inp.shape[-1] - d  # the context's columns come first
        # detached: a torch.jit trace records no grad mode, and the replayed graph would otherwise
        # record these products for a backward pass that never comes
        h, hidden = inp, []
        for layer in arn.layers[:-1]:
            w = layer.weight.detach() * layer.mask
            pre = F.linear(h, w, layer.bias.detach())
            hidden.append((w, pre))
            h = arn.f(pre)
        last = arn.layers[-1]
        w = last.weight.detach() * last.mask
        out = F.linear(h, w, last.bias.detach())
        skip = None
        if arn.skip_layer is not None:
            skip = arn.skip_layer.weight.detach() * arn.skip_layer.mask
            out = out + F.linear(inp, skip)
        m, s = out[..., :d], out[..., d:]
        if self.output_scale != 1.0:
            m, s = self.output_scale * m, self.output_scale * s
        # J = diag(sigma) + diag(cm) dm/dx + diag(cs) ds/dx and grad = gs^T ds/dx, with m, s the raw outputs times output_scale
        if self.stable:
            a = s + self.sigmoid_bias
            sig = torch.sigmoid(a)
            y = torch.exp(-F.softplus(-a)) * x + (1.0 - sig) * m  # as _forward computes it
            diag, cm, cs, gs = sig, 1.0 - sig, (x - m) * sig * (1.0 - sig), 1.0 - sig  # d(-softplus(-a))/da = 1 - sigmoid(a)
        else:
            inside = ((s >= self.log_scale_min_clip) & (s <= self.log_scale_max_clip)).to(s.dtype)
            diag = torch.exp(torch.clamp(s, self.log_scale_min_clip, self.log_scale_max_clip))
            y = diag * x + m
            cm, cs, gs = torch.ones_like(s), diag * x * inside, inside  # the clamp passes no gradient outside its range
        scale = self.output_scale  # the coefficients meet the network's weights in the network's dtype
        cm, cs, gs = ((scale * c if scale != 1.0 else c).to(out.dtype) for c in (cm, cs, gs))
        def rows(w):  # the coefficients times the rows of w for m (first D) and s (last D)
            return torch.cat([cm.unsqueeze(-1) * w[:d] + cs.unsqueeze(-1) * w[d:], gs.unsqueeze(-2) @ w[d:]], -2)

        back = rows(w)  # (..., D + 1, H) per draw: the rows of J - diag(sigma), then the gradient
        for i in range(len(hidden) - 1, -1, -1):
            w, pre = hidden[i]
            back = back * _derivative(arn.f, pre).unsqueeze(-2)
            back = _rows_times(back, w[:, first:] if i == 0 else w)
        if skip is not None:
            back = back + rows(skip[:, first:])
        jac = torch.diag_embed(diag) + back[..., :d, :]
        return y.to(x.dtype), jac.to(x.dtype), back[..., d, :].to(x.dtype)

    def _inverse(self, y, p):
        context = p.get("context")
        if context is not None:
            y, context = broadcast_context(y, context)
        x = y
        # stopping early at the fixed point is exact; it needs data-dependent control flow
        may_stop = not torch.jit.is_tracing() and not torch.compiler.is_compiling()
        for _ in range(self.dim):
            shift, log_sigma = self._affine(x, context)
            x_next = (y - shift) * torch.exp(-log_sigma)
            if may_stop and torch.equal(x_next, x):
                return x_next, log_sigma.sum(-1)  # log_sigma was computed at x == x_next
            x = x_next
        # the last pass read coordinates that were all exact already, so log_sigma is that of x
        return x, log_sigma.sum(-1)

    def extra_repr(self):
        return f"{super().extra_repr()}, hidden={self.hidden}, stable={self.stable}, output_scale={self.output_scale:.4g}"
