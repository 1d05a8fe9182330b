"""What an amortized guide's encoder reads: the observed values it accepts and their standardisation.

**The rule for observed values.**  The encoder reads numbers, so an observed value is accepted
when its numeric value means something:

* real values (floating point) are read as they are;
* counts (integer tensors, or sites whose distribution has a ``total_count``: Poisson, Binomial,
  Multinomial, ...) and binary values (``bool`` tensors, Bernoulli) are cast to the guide's float
  dtype: their values are quantities, and the standardisation puts them on a common scale;
* category ids (``Categorical``, or any site whose support is an integer interval wider than
  ``{0, 1}`` and that has no ``total_count``) are refused: an id's number names a category, so an
  encoder reading it as a quantity learns nothing sensible (Pyro's LDA observes word ids);
  pass ``encoder_input`` returning features (one-hot vectors, counts) instead;
* complex values are refused, and so are NaN or infinite values at setup (the encoder cannot read
  a missing value: fill it in an ``encoder_input``, or mask the observation).

**Standardisation** (:class:`InputStandardizer`): each input feature is centred and divided by its
standard deviation, with statistics computed once, at setup, from every data point in the setup
call's arguments (the whole data set when the model subsamples the plate itself), and then fixed.
Features whose values all lie in ``[0, 1]`` (binary observations, probabilities, pixel intensities)
are left as they are: dividing a rarely-on pixel by its small standard deviation would turn it into
a large input, the very problem standardisation removes.  A constant feature is only centred.
"""
import torch
from pyro.distributions import constraints
from pyro.poutine.util import site_is_subsample
from torch import nn

from .observed import match_observed, per_point

__all__ = ["InputStandardizer", "as_float_input", "call_encoder_input", "is_category_ids", "observed_inputs"]


def _unwrap(fn):
    while hasattr(fn, "base_dist"):  # Independent, ExpandedDistribution, MaskedDistribution, ...
        fn = fn.base_dist
    return fn


def is_category_ids(fn):
    """Whether the values of distribution ``fn`` are category ids (refused as encoder input).

    Example:
        >>> import pyro.distributions as dist
        >>> is_category_ids(dist.Categorical(torch.ones(3)).expand([5])), is_category_ids(dist.Binomial(10, 0.5))
        (True, False)
    """
    base = _unwrap(fn)
    if isinstance(base, torch.distributions.Categorical):
        return True
    if hasattr(base, "total_count"):  # Binomial, Multinomial, ...: counts
        return False
    support = fn.support
    return isinstance(support, constraints.integer_interval) and bool(torch.as_tensor(support.upper_bound).max() > 1)


def as_float_input(x, dtype, what, check_finite=False):
    """``x`` cast to ``dtype`` if it holds real numbers, counts or binary values; else a clear error.

    Args:
        x (torch.Tensor): the values.
        dtype (torch.dtype): the guide's floating dtype.
        what (str): names the values in the messages (a site or ``encoder_input``).
        check_finite (bool): also refuse NaN and infinite values (costs a pass over ``x``).

    Example:
        >>> as_float_input(torch.tensor([1, 0, 3]), torch.float32, "site 'counts'")
        tensor([1., 0., 3.])
        >>> as_float_input(torch.tensor([1.0, float("nan")]), torch.float32, "site 'y'", check_finite=True)
        Traceback (most recent call last):
            ...
        ValueError: the values of site 'y' contain NaN or infinite entries (1 of 2); the encoder cannot read a missing value: fill them in an encoder_input=callable(*args, **kwargs) -> (N, D_in), or leave those observations out
    """
    if x.is_complex():
        raise TypeError(f"the values of {what} are complex ({x.dtype}); pass encoder_input=callable(*args, "
                        "**kwargs) -> (N, D_in) returning real features")
    x = x.to(dtype)
    if check_finite:
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(
                f"the values of {what} contain NaN or infinite entries ({bad} of {x.numel()}); the encoder "
                "cannot read a missing value: fill them in an encoder_input=callable(*args, **kwargs) -> "
                "(N, D_in), or leave those observations out"
            )
    return x


def call_encoder_input(fn, args, kwargs, dtype, check_finite=False, plate=None, sizes=()):
    """Call the user's ``encoder_input(*args, **kwargs)``; check and return its ``(N, D_in)`` output as floats.

    Args:
        fn (callable): the user's ``encoder_input``.
        args (tuple), kwargs (dict): the model's arguments.
        dtype (torch.dtype): the guide's floating dtype.
        check_finite (bool): also refuse NaN and infinite values.
        plate (str): the data plate's name (for the message).
        sizes (iterable of int): the row counts accepted (the plate's size, and its full size when
            it is subsampled); empty: any.

    Example:
        >>> call_encoder_input(lambda x: x[:, None], (torch.arange(3),), {}, torch.float32, plate="data", sizes=[3])
        tensor([[0.],
                [1.],
                [2.]])
        >>> call_encoder_input(lambda x: x[:2, None], (torch.arange(3),), {}, torch.float32, plate="data", sizes=[3])
        Traceback (most recent call last):
            ...
        ValueError: encoder_input returned 2 rows, but plate 'data' holds 3 data points; ...
    """
    x = fn(*args, **kwargs)
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(
            f"encoder_input must return a tensor of shape (N, D_in), got "
            f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}"
        )
    sizes = sorted({int(n) for n in sizes if n is not None})
    if sizes and x.shape[0] not in sizes:
        raise ValueError(
            f"encoder_input returned {x.shape[0]} rows, but plate {plate!r} holds "
            f"{' or '.join(map(str, sizes))} data points; encoder_input must return one row per data point "
            f"of the plate, shape (N, D_in) (every data point when the plate is subsampled)"
        )
    return as_float_input(x, dtype, "encoder_input", check_finite)


def observed_inputs(full, plate, frame, args, kwargs, indices, dtype, guide_name):
    """Match the observed sites of ``plate`` in trace ``full`` to the model's arguments.

    Returns ``(sources, x)``: one :class:`~pyro_nfvi.guides.observed.ObservedSource` per observed
    site that varies along the plate, and the setup batch's encoder input ``(B, D_in)``.  Raises a
    ``ValueError`` naming the site for category ids, NaN values, or values not found among the arguments.
    """
    observed = [
        s for s in full.nodes.values()
        if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)
        and any(f.name == plate for f in s["cond_indep_stack"])
    ]
    usable = []
    for s in observed:
        axis = s["value"].dim() - s["fn"].event_dim + frame.dim
        if axis >= 0 and s["value"].shape[axis] == frame.size:
            usable.append((s, axis))
    if not usable:
        seen = "; ".join(
            f"site {s['name']!r} has value shape {tuple(s['value'].shape)} (event dims {s['fn'].event_dim})"
            for s in observed
        )
        raise ValueError(
            f"{guide_name}: no observed site inside plate {plate!r} varies along it (size {frame.size} at dim "
            f"{frame.dim}){': ' + seen if seen else ''}; check the observed values' shape, or pass "
            "encoder_input=callable(*args, **kwargs) -> (N, D_in)"
        )
    sources, parts = [], []
    for s, axis in usable:
        if is_category_ids(s["fn"]):
            raise ValueError(
                f"{guide_name}: the observed values of site {s['name']!r} are category ids ({s['fn'].support}); an "
                "encoder reading ids as numbers learns nothing sensible: pass encoder_input=callable"
                "(*args, **kwargs) -> (N, D_in) returning features (e.g. one-hot vectors or counts)"
            )
        value = as_float_input(s["value"].detach(), dtype, f"site {s['name']!r}", check_finite=True)
        m = match_observed(s, axis, args, kwargs, indices)
        if m is None:
            raise ValueError(
                f"{guide_name}: could not find the observed values of site {s['name']!r} (shape "
                f"{tuple(s['value'].shape)}) among the model's arguments; pass "
                "encoder_input=callable(*args, **kwargs) -> (N, D_in)"
            )
        sources.append(m)
        parts.append(per_point(value, axis))
    return sources, torch.cat(parts, -1)


class InputStandardizer(nn.Module):
    r"""``x -> (x - loc) / scale`` per input feature, with ``loc`` and ``scale`` fixed at construction.

    :meth:`fit` computes them from data (see the module's docstring for the rule).  They are
    persistent buffers, so ``state_dict`` and ``torch.save`` carry them; ``state_buffers`` names
    them for the guide's param-store exchange (:mod:`~pyro_nfvi.guides.state`).  They never get
    gradients and no optimizer changes them.

    Args:
        loc (torch.Tensor): ``(D_in,)``.
        scale (torch.Tensor): ``(D_in,)``, positive.

    Example:
        >>> x = torch.tensor([[100.0, 0.0], [300.0, 1.0]])
        >>> s = InputStandardizer.fit(x)
        >>> s.loc, s.scale
        (tensor([200.,   0.]), tensor([100.,   1.]))
        >>> s(x)
        tensor([[-1.,  0.],
                [ 1.,  1.]])
    """

    #: buffers that are part of the guide's state (saved in Pyro's param store too)
    state_buffers = ("loc", "scale")

    def __init__(self, loc, scale):
        super().__init__()
        if loc.dim() != 1 or loc.shape != scale.shape:
            raise ValueError(f"loc and scale must have one shape (D_in,), got {tuple(loc.shape)} and {tuple(scale.shape)}")
        self.register_buffer("loc", loc.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    @classmethod
    def fit(cls, x):
        """The standardiser of the rows of ``x`` (``(N, D_in)``)."""
        x = x.detach()
        loc = x.mean(0)
        scale = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.zeros_like(loc)
        unit = ((x >= 0) & (x <= 1)).all(0)  # binary values, probabilities, intensities: as they are
        loc = torch.where(unit, torch.zeros_like(loc), loc)
        tiny = torch.finfo(x.dtype).eps * loc.abs().clamp(min=1.0) * 16
        scale = torch.where(unit | (scale <= tiny), torch.ones_like(scale), scale)
        return cls(loc, scale)

    def forward(self, x):
        return (x - self.loc) / self.scale

    def extra_repr(self):
        return f"features={self.loc.shape[0]}"
