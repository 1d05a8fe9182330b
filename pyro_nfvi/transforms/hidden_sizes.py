"""The check of a conditioner network's hidden layer sizes, shared by IAF and coupling layers."""
from ..validation import check_int

__all__ = ["hidden_sizes"]


def hidden_sizes(hidden, default, minimum):
    """Return ``hidden`` as a list of layer sizes, each an ``int >= minimum``; ``None`` -> ``default``.

    A single ``int`` is one hidden layer.  An empty sequence is refused: the conditioners built from
    these sizes (:class:`pyro.nn.AutoRegressiveNN`, :class:`pyro.nn.DenseNN`) need a hidden layer.

    Args:
        hidden (int, sequence of int or None): the sizes given.
        default (sequence of int): the sizes used for ``None``.
        minimum (int): the smallest size allowed (IAF: the event size, so MADE masks keep every
            autoregressive path).

    Example:
        >>> hidden_sizes(None, (64, 64), 1), hidden_sizes(16, (64,), 3)
        ([64, 64], [16])
        >>> hidden_sizes([2], (64,), 3)
        Traceback (most recent call last):
            ...
        ValueError: hidden sizes must be >= 3 (the event size), got [2]
    """
    if hidden is None:
        return list(default)
    if isinstance(hidden, int):
        hidden = [hidden]
    hidden = [check_int("hidden", h) for h in hidden]
    if not hidden:
        raise ValueError("hidden must name at least one hidden layer size, got an empty sequence")
    for h in hidden:
        if h < minimum:
            raise ValueError(f"hidden sizes must be >= {minimum} (the event size), got {hidden}")
    return hidden
