"""The latent sites of a model and their packing into one unconstrained vector.

* :func:`latent_sites` -- the latent sample sites of a traced model, with clear errors for
  discrete sites that are not enumerated and (optionally) for local latents in subsampled plates.
* :class:`SitePacker` -- packs the unconstrained values of a list of sites into one flat vector
  (global) or one flat vector per data point (local) and emits each model site back as a
  :class:`~pyro.distributions.Delta` with the log-density of the change of variables
  (:func:`torch.distributions.biject_to`).  Both guides use this single implementation.
* :func:`prototype_hide_fn` -- which sites a guide's prototype trace leaves out.

Reference: Kucukelbir et al., *Automatic Differentiation Variational Inference*, JMLR 2017 (the
packing of constrained sites into one unconstrained vector).
"""
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.util import sum_rightmost
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to, register_kl
from torch.distributions.transforms import ComposeTransform, IndependentTransform

__all__ = ["FlowDelta", "SitePacker", "SiteSpec", "is_enumerated", "latent_sites", "prototype_hide_fn"]


class FlowDelta(dist.Delta):
    r"""The ``Delta`` a flow guide emits at each model site: its ``log_density`` is part of ``log q``.

    The guide's density of a constrained value ``v`` is the flow's density of the unconstrained
    draw plus ``log|det d(unconstrained)/dv|``, carried as ``log_density``.  Pyro's analytic KL for a
    ``Delta`` (used by :class:`~pyro.infer.TraceMeanField_ELBO`) is :math:`-\log p(v)`, which
    drops that term; for this class it is :math:`\mathrm{log\_density} - \log p(v)`, so
    ``TraceMeanField_ELBO`` and ``Trace_ELBO`` agree on the same draws.

    Example:
        >>> q = FlowDelta(torch.tensor(2.0), log_density=torch.tensor(-0.7))
        >>> float(torch.distributions.kl_divergence(q, dist.Normal(0.0, 1.0)))  # doctest: +ELLIPSIS
        2.218...
    """


@register_kl(FlowDelta, dist.Distribution)  # Pyro's base class, as Pyro registers (Delta, Distribution)
def _kl_flow_delta(q, p):
    return q.log_density - p.log_prob(q.v)


def is_enumerated(site):
    """Whether a sample site is enumerated (``infer={"enumerate": ...}``), so a guide must skip it.

    Args:
        site (dict): a Pyro message or trace node.

    Example:
        >>> is_enumerated({"infer": {"enumerate": "parallel"}}), is_enumerated({"infer": {}})
        (True, False)
    """
    return site["infer"].get("enumerate") in ("parallel", "sequential")


def prototype_hide_fn(msg):
    """Whether a guide's prototype trace leaves ``msg`` out: it keeps latent, non-enumerated sample sites.

    Example:
        >>> prototype_hide_fn({"type": "param"})
        True
    """
    return msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg) or is_enumerated(msg)


def _is_identity(transform):
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


def _subsampled_frames(site):
    return [
        f for f in site["cond_indep_stack"]
        if f.vectorized and f.full_size is not None and f.size != f.full_size
    ]


def latent_sites(trace, guide_name, forbid_subsampled=True):
    """Return the latent (non-observed, non-enumerated) sample sites of ``trace`` in order.

    Raises a ``ValueError`` naming the site if a latent site is discrete and not enumerated, or
    (``forbid_subsampled=True``) if it lies inside a subsampled plate: a packed global posterior
    cannot represent latents whose number changes with the subsample.

    Reference: Kucukelbir et al., *Automatic Differentiation Variational Inference*, JMLR 2017.

    Args:
        trace (pyro.poutine.Trace): a trace of the model.
        guide_name (str): the guide's name, used in error messages.
        forbid_subsampled (bool): reject latent sites inside subsampled plates.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     pyro.sample("b", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))
        >>> [s["name"] for s in latent_sites(pyro.poutine.trace(model).get_trace(), "guide")]
        ['a']
    """
    sites = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if is_enumerated(site):
            continue
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"{guide_name} cannot handle the discrete latent site {name!r} (support "
                f"{site['fn'].support}): enumerate it (infer={{'enumerate': 'parallel'}} or "
                "pyro.infer.config_enumerate, then TraceEnum_ELBO) or hide it from the guide with "
                f"poutine.block(model, hide=[{name!r}])"
            )
        if forbid_subsampled:
            frames = _subsampled_frames(site)
            if frames:
                f = frames[0]
                raise ValueError(
                    f"{guide_name}: latent site {name!r} lies inside the subsampled plate {f.name!r} "
                    f"(subsample_size={f.size} < size={f.full_size}); a global guide cannot represent "
                    "local latents of a subsample. Use pyro_nfvi.AmortizedFlowGuide(model, "
                    f"plate={f.name!r}) to amortize them, or do not subsample that plate"
                )
        sites.append(site)
    return sites


class SiteSpec:
    """What the packer needs to know about one latent site (no reference to the trace).

    Args:
        site (dict): the site's trace node.
        plate_dim (int or None): for a local site, the dim of the amortization plate; the packed
            unit is then one data point's slice.

    Attributes: ``name``, ``event_dim`` (of the site's distribution), ``transform``
    (``biject_to(support)``), ``identity`` (the support is the real line), ``shape`` (the
    unconstrained shape of one packed unit: the whole site for a global site, one data point's
    slice for a local one), ``constrained_ndim``, ``size`` and ``frames`` (the site's plates).
    """

    __slots__ = ("name", "event_dim", "transform", "identity", "shape", "unconstrained_event_dim", "size", "frames")

    def __init__(self, site, plate_dim=None):
        self.name = site["name"]
        self.event_dim = site["fn"].event_dim
        self.transform = biject_to(site["fn"].support)
        self.identity = _is_identity(self.transform)
        value = site["value"].detach()
        unconstrained = self.transform.inv(value)
        self.unconstrained_event_dim = self.event_dim + unconstrained.dim() - value.dim()
        shape = tuple(unconstrained.shape)
        if plate_dim is not None:
            # local: drop the plate axis and every axis left of it (they must be size 1)
            batch_ndim = len(shape) - self.unconstrained_event_dim
            axis = batch_ndim + plate_dim
            if axis < 0:
                raise ValueError(
                    f"local site {self.name!r} has batch shape {shape[:batch_ndim]} that does not reach "
                    f"the plate dim {plate_dim}"
                )
            if any(s != 1 for s in shape[:axis]):
                raise ValueError(
                    f"local site {self.name!r} (shape {tuple(value.shape)}) is inside a plate outside the "
                    "amortization plate; only plates inside it (to its right) are supported"
                )
            shape = shape[axis + 1 :]
        self.shape = shape
        self.size = 1
        for s in shape:
            self.size *= s
        self.frames = tuple(site["cond_indep_stack"])


class SitePacker:
    """Packs sites into one flat unconstrained vector and emits them back as ``Delta`` sites.

    With ``local=False`` (global sites) unpacking follows Pyro's ``AutoContinuous._unpack_latent``:
    a latent of shape ``batch + (D,)`` (e.g. vectorized particles) broadcasts against each site's
    unconstrained shape.  With ``local=True`` a latent of shape ``(..., B, D)`` is split per site and
    reshaped to ``(..., B) + point_shape``: the plate axis is kept in place.

    Args:
        specs (list of SiteSpec): the sites, in packing order.
        local (bool): per-data-point packing.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     pyro.sample("b", dist.Dirichlet(torch.ones(3)))
        >>> tr = pyro.poutine.trace(model).get_trace()
        >>> packer = SitePacker([SiteSpec(s) for s in latent_sites(tr, "guide")])
        >>> packer.dim
        3
        >>> {k: tuple(v.shape) for k, v in packer.constrain(torch.zeros(5, 3)).items()}
        {'a': (5,), 'b': (5, 3)}
    """

    def __init__(self, specs, local=False):
        self.specs = list(specs)
        self.local = local
        self.dim = sum(s.size for s in self.specs)
        self.names = [s.name for s in self.specs]

    def unpack(self, latent):
        """Yield ``(spec, unconstrained_value)`` for each site of a flat ``latent``."""
        batch = latent.shape[:-1]
        pos = 0
        for spec in self.specs:
            chunk = latent[..., pos : pos + spec.size]
            if self.local:
                shape = batch + spec.shape
            else:
                shape = torch.broadcast_shapes(spec.shape, batch + (1,) * spec.unconstrained_event_dim)
            yield spec, chunk.reshape(shape)
            pos += spec.size

    def pack(self, values):
        """Flatten ``{name: constrained value}`` (one global draw) into the unconstrained vector."""
        parts = [spec.transform.inv(values[spec.name]).reshape(-1) for spec in self.specs]
        return torch.cat(parts)

    def constrain(self, latent):
        """``{name: constrained value}`` for a flat unconstrained ``latent``."""
        return {spec.name: spec.transform(u) for spec, u in self.unpack(latent)}

    def constrain_with_log_det(self, latent):
        """Like :meth:`constrain`, plus the summed ``log|det J|`` of the maps to the supports.

        For a local packer the log-det has the latent's batch shape ``(..., B)``.
        """
        values, total = {}, 0.0
        for spec, u in self.unpack(latent):
            value = spec.transform(u)
            values[spec.name] = value
            if not spec.identity:
                ld = spec.transform.log_abs_det_jacobian(u, value)
                keep = latent.dim() - 1
                total = total + sum_rightmost(ld, ld.dim() - keep)
        return values, total

    def emit(self, latent, plates, skip_frames=()):
        """Emit one ``pyro.sample(name, Delta(...))`` per site for a flat ``latent``; return the values.

        Each Delta carries ``log|det d(unconstrained)/d(value)|`` (as Pyro's ``AutoContinuous`` does),
        so the guide's density is that of the constrained value.  ``plates`` maps plate names to
        ``pyro.plate`` objects entered around each site; frames named in ``skip_frames`` are not
        entered (the caller is already inside them).
        """
        result = {}
        masked = poutine.get_mask() is False
        for spec, u in self.unpack(latent):
            if spec.identity:
                value, log_density = u, 0.0
            else:
                value = spec.transform(u)
                if masked:
                    log_density = 0.0
                else:
                    ld = spec.transform.inv.log_abs_det_jacobian(value, u)
                    log_density = sum_rightmost(ld, ld.dim() - value.dim() + spec.event_dim)
            delta = FlowDelta(value, log_density=log_density, event_dim=spec.event_dim)
            with ExitStack() as stack:
                for frame in spec.frames:
                    if frame.name not in skip_frames:
                        stack.enter_context(plates[frame.name])
                result[spec.name] = pyro.sample(spec.name, delta)
        return result
