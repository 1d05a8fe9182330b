"""The scale of a conditioner network's output layer, shared by IAF and coupling layers.

Adam moves every weight by about ``lr`` per step whatever the size of its gradient.  The shift and
log-scale of an IAF or coupling layer are sums over the ``fan_in`` weights of the network's last
layer, so with an unscaled output they move by about ``lr * fan_in`` per step (``fan_in`` is
``3 D + 1`` for a default IAF of event size ``D``): far faster than the base Gaussian's own
location and log-scale, which move by about ``lr``.  Multiplying the output by ``1 / fan_in``
brings the flow to the same pace (for Adam it is the same as dividing the last layer's learning
rate by ``fan_in``), and keeps the layer the identity at initialisation, since the last layer starts
at zero.  ``"sqrt_fan_in"`` (``1 / sqrt(fan_in)``) is the middle ground: a move of about
``lr * sqrt(fan_in)`` per step when the signs of the last layer's inputs agree.
"""
import math

from ..validation import check_positive

__all__ = ["OUTPUT_SCALES", "output_scale"]

#: The named output scales: ``"fan_in"`` (``1 / fan_in`` of the last layer), ``"sqrt_fan_in"``
#: (``1 / sqrt(fan_in)``) and ``"none"`` (1).
OUTPUT_SCALES = ("fan_in", "sqrt_fan_in", "none")


def output_scale(value, fan_in):
    """Return the factor that multiplies a conditioner network's output.

    Args:
        value (float or str): a positive factor, ``"fan_in"`` for ``1 / fan_in``, ``"sqrt_fan_in"``
            for ``1 / sqrt(fan_in)`` or ``"none"`` for 1.
        fan_in (int): the number of inputs of the network's last layer (its last hidden size).

    Example:
        >>> output_scale("fan_in", 16), output_scale("sqrt_fan_in", 16), output_scale("none", 16), output_scale(0.5, 16)
        (0.0625, 0.25, 1.0, 0.5)
        >>> output_scale("fan-in", 16)
        Traceback (most recent call last):
            ...
        ValueError: output_scale must be a positive float, 'fan_in', 'sqrt_fan_in' or 'none', got 'fan-in'
    """
    if isinstance(value, str):
        if value not in OUTPUT_SCALES:
            raise ValueError(f"output_scale must be a positive float, 'fan_in', 'sqrt_fan_in' or 'none', got {value!r}")
        if value == "none":
            return 1.0
        return 1.0 / fan_in if value == "fan_in" else 1.0 / math.sqrt(fan_in)
    return check_positive("output_scale", value)
