"""Argument checks shared by every part of the package: one wording for every bad argument.

Each check returns the value (converted where that is safe) or raises a ``ValueError`` (``TypeError``
for a value of the wrong kind) whose message names the argument, says what was expected and what
was given.  The transforms, the guides, the objectives and the command line all use these, so a
user sees the same message for the same mistake everywhere.

Example:
    >>> check_int("num_flows", 4, minimum=0)
    4
    >>> check_positive("lr", 1e-3)
    0.001
    >>> check_choice("flow", "planar", ["planar", "iaf"])
    'planar'
    >>> check_int("num_flows", -1, minimum=0)
    Traceback (most recent call last):
        ...
    ValueError: num_flows must be an integer >= 0, got -1
"""
import math

__all__ = ["check_choice", "check_int", "check_positive", "check_probability"]


def check_int(name, value, minimum=1):
    """Return ``value`` if it is an ``int`` (not a ``bool``) ``>= minimum``, else raise ``ValueError``.

    Args:
        name (str): the argument's name, used in the message.
        value: the value given.
        minimum (int): the smallest value allowed.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(name, value, allow_zero=False):
    """Return ``float(value)`` if it is a finite number ``> 0`` (``>= 0`` with ``allow_zero``).

    Args:
        name (str): the argument's name, used in the message.
        value: the value given.
        allow_zero (bool): accept 0.
    """
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        what = "a finite number >= 0" if allow_zero else "a positive finite number"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_probability(name, value):
    """Return ``float(value)`` if it lies strictly between 0 and 1, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return float(value)


def check_choice(name, value, choices):
    """Return ``value`` if it is one of ``choices``, else raise a ``ValueError`` listing them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; expected one of {choices}")
    return value
