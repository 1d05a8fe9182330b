"""Encoder networks for amortized variational inference.

* :class:`MLP` -- a fully connected trunk ``(..., D_in) -> (..., H)`` (the encoder of a VAE).
* :class:`LocScaleHead` -- one linear layer that maps a hidden vector to the loc and the raw
  (pre-softplus) scale of a diagonal Gaussian, initialised so that the scale starts at a chosen value.
* :func:`inverse_softplus` -- the raw value whose softplus is a given positive number.

These are plain :class:`torch.nn.Module` s (not ``PyroModule`` s), so they can be used inside any
guide; :class:`~pyro_nfvi.guides.AmortizedFlowGuide` builds them automatically.

Reference: Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014; Rezende & Mohamed,
*Variational Inference with Normalizing Flows*, ICML 2015 (the encoder also feeds the flow's
hypernetworks).
"""
import math

import torch
from torch import nn

from ..transforms.output_scale import output_scale

__all__ = ["MLP", "LocScaleHead", "inverse_softplus", "ACTIVATIONS"]

#: Activations accepted by name.
ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "softplus": nn.Softplus, "tanh": nn.Tanh}


def inverse_softplus(y):
    r"""The ``x`` with :math:`\mathrm{softplus}(x) = \log(1 + e^x) = y` for a positive float ``y``.

    Computed as :math:`y + \log(-\mathrm{expm1}(-y))`, stable for small and large ``y``; elementwise
    for a tensor.

    Args:
        y (float or torch.Tensor): a positive number, or a tensor of them.

    Example:
        >>> round(float(torch.nn.functional.softplus(torch.tensor(inverse_softplus(0.1)))), 6)
        0.1
    """
    if isinstance(y, torch.Tensor):
        if not bool((y > 0).all()) or not bool(torch.isfinite(y).all()):
            raise ValueError("inverse_softplus needs finite positive numbers, got a tensor with others")
        return y + torch.log(-torch.expm1(-y))
    y = float(y)
    if not y > 0 or not math.isfinite(y):
        raise ValueError(f"inverse_softplus needs a finite positive number, got {y!r}")
    return y + math.log(-math.expm1(-y))


def _to_weight_dtype(x, network):
    """``x`` in the dtype of ``network``'s weights: float64 data to a float32 encoder is promoted
    by the flows downstream instead of failing in a matrix product."""
    for param in network.parameters():
        return x.to(param.dtype) if x.is_floating_point() and x.dtype != param.dtype else x
    return x


def _activation(activation):
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[activation]
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation
    raise TypeError(f"activation must be a name or an nn.Module class, got {activation!r}")


class MLP(nn.Sequential):
    r"""Fully connected network :math:`h = a(W_L \cdots a(W_1 x + b_1) \cdots + b_L)`.

    The activation follows every layer (including the last), so the output is a hidden
    representation ready for linear heads.  With ``hidden_dims=()`` it is the identity and
    ``output_dim == input_dim``.

    Reference: Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014 (the VAE encoder).

    Args:
        input_dim (int): size ``D_in`` of the input's last dimension.
        hidden_dims (tuple of int): layer widths.
        activation (str or type): ``"elu"`` (default), ``"relu"``, ``"softplus"`` or ``"tanh"``, or an
            ``nn.Module`` subclass.

    Example:
        >>> net = MLP(784, (300, 300))
        >>> net(torch.zeros(5, 784)).shape, net.output_dim
        (torch.Size([5, 300]), 300)
    """

    def __init__(self, input_dim, hidden_dims=(), activation="elu"):
        if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"input_dim must be a positive integer, got {input_dim!r}")
        hidden_dims = tuple(hidden_dims)
        for h in hidden_dims:
            if isinstance(h, bool) or not isinstance(h, int) or h < 1:
                raise ValueError(f"hidden_dims must be positive integers, got {hidden_dims!r}")
        act = _activation(activation)
        layers, width = [], input_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), act()]
            width = h
        super().__init__(*layers)
        self.input_dim = input_dim
        self.output_dim = width

    def forward(self, x):
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"MLP expects input of shape (..., {self.input_dim}), got {tuple(x.shape)}")
        return super().forward(_to_weight_dtype(x, self))


class LocScaleHead(nn.Module):
    r"""Linear head ``h -> (loc, scale_raw)`` of a diagonal Gaussian with ``scale = softplus(scale_raw)``.

    One ``nn.Linear(H, 2 D)`` computes both halves in one matrix product.  The scale half's weight
    is scaled by ``scale_weight_gain`` (default 0.01) and its bias set to
    ``inverse_softplus(init_scale)``, so every data point starts with ``scale ~ init_scale``.

    With ``scale_output`` :math:`c` the scale half is :math:`b_s + c\,W_s h` (the weight stored is
    :math:`W_s` and the initial effective weight :math:`c\,W_s` is the same for every :math:`c`).
    Adam moves each of the :math:`H` entries of a row of :math:`W_s` by about ``lr`` per step, so
    ``scale_raw`` moves by about ``c * H * lr``: with ``c = 1`` (``"none"``) 3 per step at lr 1e-2
    and ``H = 300``, enough to throw the softplus from its linear to its exponential side in a few
    steps; ``"fan_in"`` (``c = 1 / H``) makes it about ``lr`` and ``"sqrt_fan_in"``
    (``c = 1 / sqrt(H)``) about ``sqrt(H) * lr`` (see ``pyro_nfvi.transforms.output_scale``).  The
    loc half is not scaled.

    Reference: Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014.

    Args:
        hidden_dim (int): input size ``H``.
        dim (int): output size ``D``.
        init_scale (float): the initial scale.
        scale_weight_gain (float): multiplies the default initial weight of the scale half.
        scale_output (float or str): ``"none"`` (1), ``"sqrt_fan_in"`` (``1 / sqrt(hidden_dim)``),
            ``"fan_in"`` (``1 / hidden_dim``) or a positive factor on the scale half's weight.

    Example:
        >>> head = LocScaleHead(8, 3, init_scale=0.5)
        >>> loc, scale_raw = head(torch.randn(4, 8))
        >>> loc.shape, bool(torch.allclose(torch.nn.functional.softplus(scale_raw), torch.tensor(0.5), atol=0.05))
        (torch.Size([4, 3]), True)
    """

    def __init__(self, hidden_dim, dim, init_scale=1.0, scale_weight_gain=0.01, scale_output="none"):
        super().__init__()
        self.dim = dim
        self.scale_output = output_scale(scale_output, hidden_dim)
        self.linear = nn.Linear(hidden_dim, 2 * dim)
        with torch.no_grad():
            self.linear.weight[dim:].mul_(scale_weight_gain / self.scale_output)
            self.linear.bias[:dim].zero_()
            self.linear.bias[dim:].fill_(inverse_softplus(init_scale))

    def weight(self):
        """The effective weight: the stored one with its scale half multiplied by ``scale_output``."""
        w = self.linear.weight
        if self.scale_output == 1.0:
            return w
        return torch.cat([w[: self.dim], self.scale_output * w[self.dim :]], 0)

    def forward(self, h):
        out = nn.functional.linear(_to_weight_dtype(h, self.linear), self.weight(), self.linear.bias)
        return out[..., : self.dim], out[..., self.dim :]
