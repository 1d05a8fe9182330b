"""Where the observed values of a plate come from among a model's arguments (the encoder's input).

An amortized guide reads, for each data point, the values observed in the data plate.  At setup
each observed site is matched to the model argument that holds the same values (possibly
reshaped, possibly indexed by the plate's subsample indices); at every call the encoder input is
read from that argument, so it follows the data the model is given.
"""
from collections import namedtuple

import torch

__all__ = ["ObservedSource", "match_observed", "per_point", "read_argument", "read_observed"]

#: Where the observed values of ``site`` come from: ``source`` is ``("arg", i)`` or ``("kwarg", name)``,
#: ``axis`` the data axis of that tensor, ``subsampled`` whether the model indexes it with the plate's
#: subsample indices (the argument then holds every data point).
ObservedSource = namedtuple("ObservedSource", ["site", "source", "axis", "subsampled"])


def read_argument(source, args, kwargs):
    """The argument named by ``source`` (``("arg", i)`` or ``("kwarg", name)``)."""
    kind, key = source
    return args[key] if kind == "arg" else kwargs[key]


def read_observed(source, args, kwargs, guide_name="AmortizedFlowGuide"):
    """The tensor holding the observed values of ``source`` (an :class:`ObservedSource`) in this call.

    Raises a ``ValueError`` naming the site and the argument when the call lacks it (e.g.
    ``Predictive(model, guide=guide)(x)`` without the observations) or passes ``None`` there.

    Example:
        >>> m = ObservedSource("obs", ("arg", 1), 0, False)
        >>> read_observed(m, (torch.zeros(3), torch.ones(3)), {})
        tensor([1., 1., 1.])
        >>> read_observed(m, (torch.zeros(3),), {})
        Traceback (most recent call last):
            ...
        ValueError: AmortizedFlowGuide: the encoder reads the observed values of site 'obs' from the model's argument 1, which is missing in this call; ...
    """
    kind, key = source.source
    present = key < len(args) if kind == "arg" else key in kwargs
    value = read_argument(source.source, args, kwargs) if present else None
    if not torch.is_tensor(value):
        where = f"argument {key}" if kind == "arg" else f"keyword argument {key!r}"
        got = "is missing" if not present else f"is {value!r}" if value is None else f"is a {type(value).__name__}"
        raise ValueError(
            f"{guide_name}: the encoder reads the observed values of site {source.site!r} from the model's {where}, "
            f"which {got} in this call; an amortized guide needs the observed data at every call (e.g. "
            "Predictive(model, guide=guide)(x, y), not (x)). To sample without them, build the guide with "
            "encoder_input=callable(*args, **kwargs) -> (N, D_in) reading only what every call passes"
        )
    return value


def per_point(value, axis):
    """Move ``axis`` to the front and flatten the rest: shape ``(N, -1)``.

    Example:
        >>> per_point(torch.zeros(3, 5, 2), 1).shape
        torch.Size([5, 6])
    """
    return value.movedim(axis, 0).reshape(value.shape[axis], -1)


def _same(a, b):
    return a.shape == b.shape and torch.equal(a.to(b.dtype), b)


def match_observed(site, axis, args, kwargs, indices=None):
    """Find the model argument holding the observed value of ``site``; ``None`` if there is none.

    Args:
        site (dict): the observed site's trace node.
        axis (int): the data axis of the site's value.
        args (tuple), kwargs (dict): the model's arguments.
        indices (torch.Tensor): the plate's subsample indices, if it is subsampled.

    Returns:
        ObservedSource or None.

    Example:
        >>> site = {"name": "x", "value": torch.arange(6.0).reshape(3, 2)}
        >>> match_observed(site, 0, (torch.arange(6.0).reshape(3, 2),), {})
        ObservedSource(site='x', source=('arg', 0), axis=0, subsampled=False)
    """
    target = per_point(site["value"].detach(), axis)
    B = target.shape[0]
    candidates = [(("arg", i), a) for i, a in enumerate(args)] + [(("kwarg", k), a) for k, a in kwargs.items()]
    for source, a in candidates:
        if not torch.is_tensor(a) or a.dim() == 0:
            continue
        for ax in range(a.dim()):
            n = a.shape[ax]
            if n == B and a.numel() == target.numel() and _same(per_point(a, ax), target):
                return ObservedSource(site["name"], source, ax, False)
            if (
                indices is not None
                and n != B
                and n > int(indices.max())
                and (a.numel() // n) * B == target.numel()
                and _same(per_point(a.index_select(ax, indices.to(a.device)), ax), target)
            ):
                return ObservedSource(site["name"], source, ax, True)
    return None
