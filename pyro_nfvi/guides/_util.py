"""Shared machinery of the flow guides: site discovery, checks, packing and param-store sync.

* :func:`latent_sites` -- the latent sample sites of a traced model, with clear errors for
  discrete sites that are not enumerated and (optionally) for local latents in subsampled plates.
* :class:`SitePacker` -- packs the unconstrained values of a list of sites into one flat vector
  (global) or one flat vector per data point (local) and emits each model site back as a
  :class:`~pyro.distributions.Delta` with the log-density of the change of variables
  (:func:`torch.distributions.biject_to`).  Both guides use this single implementation.
* :class:`ParamStoreSync` -- a mixin that keeps Pyro's global param store and a ``PyroModule``'s own
  ``nn.Parameter`` s and buffers in step, so ``pyro.get_param_store().save/load`` round-trips
  every weight *and* every buffer (e.g. a flow's permutation) of an eagerly built guide.
* :func:`can_call_without_args` -- whether a model can be traced without arguments (eager setup).

Reference: Kucukelbir et al., *Automatic Differentiation Variational Inference*, JMLR 2017 (the
packing of constrained sites into one unconstrained vector).
"""
import inspect
import weakref
from contextlib import ExitStack, contextmanager

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.distributions.util import sum_rightmost
from pyro.nn.module import PyroModule, _is_module_local_param_enabled
from pyro.params.param_store import param_with_module_name
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform, IndependentTransform

__all__ = [
    "setup_eagerly",
    "direct_params",
    "own_attr",
    "SiteSpec",
    "SitePacker",
    "ParamStoreSync",
    "latent_sites",
    "can_call_without_args",
    "is_enumerated",
]


def is_enumerated(site):
    """Whether a sample site is enumerated (``infer={"enumerate": ...}``), so a guide must skip it.

    Args:
        site (dict): a Pyro message or trace node.

    Example:
        >>> is_enumerated({"infer": {"enumerate": "parallel"}}), is_enumerated({"infer": {}})
        (True, False)
    """
    return site["infer"].get("enumerate") in ("parallel", "sequential")


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
            delta = dist.Delta(value, log_density=log_density, event_dim=spec.event_dim)
            with ExitStack() as stack:
                for frame in spec.frames:
                    if frame.name not in skip_frames:
                        stack.enter_context(plates[frame.name])
                result[spec.name] = pyro.sample(spec.name, delta)
        return result


def setup_eagerly(guide, model, model_args, model_kwargs):
    """Run ``guide._setup_prototype`` now when the model's arguments are known; else leave it lazy.

    The prototype is built from ``model_args``/``model_kwargs`` when given, or from no arguments
    when the model's signature (or, failing inspection, a trial call) allows it.  Otherwise
    ``guide.prototype_trace`` stays ``None`` and the guide sets itself up on its first call.
    """
    model_kwargs = dict(model_kwargs or {})
    callable_without_args = can_call_without_args(model)
    if model_args or model_kwargs or callable_without_args:
        guide._setup_prototype(*model_args, **model_kwargs)
    elif callable_without_args is None:
        try:
            guide._setup_prototype()
        except TypeError:
            guide.prototype_trace = None  # needs arguments: set up on the first call


def can_call_without_args(model):
    """Whether ``model()`` can be called with no arguments, judged from its signature.

    Args:
        model (callable): a function or an ``nn.Module`` (its ``forward`` is inspected).

    Returns:
        bool or None: ``None`` when the signature cannot be inspected.

    Example:
        >>> can_call_without_args(lambda: None), can_call_without_args(lambda x: None)
        (True, False)
    """
    fn = model.forward if isinstance(model, nn.Module) else model
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind()
    except TypeError:
        return False
    return True


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _store_entries(module, fullname):
    """``(store name, owner module, attribute, is_buffer)`` for every parameter and buffer, named
    as ``PyroModule`` names them in the param store (``pyro.module`` naming for plain submodules)."""
    out = []
    for n, p in module._parameters.items():
        if p is not None:
            out.append((_join(fullname, n), module, n, False))
    for n, b in module._buffers.items():
        if b is not None and n not in module._non_persistent_buffers_set:
            out.append((_join(fullname, n), module, n, True))
    for c, child in module._modules.items():
        if child is None:
            continue
        cname = _join(fullname, c)
        if isinstance(child, PyroModule):
            out += _store_entries(child, cname)
            continue
        for mod_name, mod in child.named_modules():
            for n, p in mod._parameters.items():
                if p is not None:
                    out.append((param_with_module_name(cname, _join(mod_name, n)), mod, n, False))
            for n, b in mod._buffers.items():
                if b is not None and n not in mod._non_persistent_buffers_set:
                    out.append((param_with_module_name(cname, _join(mod_name, n)), mod, n, True))
    return out


#: ``id(tensor) -> weakref`` of every tensor a guide has put in the param store (see ParamStoreSync).
_OWNED = {}


def _own(tensor):
    key = id(tensor)
    _OWNED[key] = weakref.ref(tensor, lambda _, key=key: _OWNED.pop(key, None))


def _owned(tensor):
    ref = _OWNED.get(id(tensor))
    return ref is not None and ref() is tensor


class ParamStoreSync:
    """Mixin for a ``PyroModule`` guide whose weights are plain ``nn.Parameter`` s and buffers.

    ``PyroModule`` registers an ``nn.Parameter`` in Pyro's global param store when it is used, but
    never reads it back, and buffers are not registered at all; so after
    ``pyro.get_param_store().load(path)`` a freshly built guide would silently keep its random
    initial flow weights and permutations.  :meth:`_sync_param_store` (called by the guides at the
    start of each call) keeps the two in step under the names ``PyroModule`` uses:

    * an entry that no live guide put in the store (loaded with ``load``/``set_state``) is copied
      *into* the guide's tensor, which then replaces it in the store;
    * otherwise the guide's tensor, buffers included (as non-trainable entries with constraint
      ``real``), is put in the store, so ``save`` writes it.  An entry left by another guide of
      the same name (e.g. a guide built earlier for another model) is replaced.

    Nothing happens under ``pyro.settings.set(module_local_params=True)``: there the global store is
    not used; checkpoint with ``guide.state_dict()``.
    """

    def _sync_param_store(self):
        if _is_module_local_param_enabled():
            return
        cache = self.__dict__.get("_store_cache")
        if cache is None or cache[0] != self._pyro_name:
            cache = (self._pyro_name, _store_entries(self, self._pyro_name))
            self.__dict__["_store_cache"] = cache
        store = pyro.get_param_store()
        params = store._params
        for name, owner, attr, is_buffer in cache[1]:
            tensor = owner._buffers[attr] if is_buffer else owner._parameters[attr]
            existing = params.get(name)
            if existing is tensor:
                continue
            if existing is not None:
                if not _owned(existing):
                    if existing.shape != tensor.shape:
                        raise ValueError(
                            f"the param store holds {name!r} with shape {tuple(existing.shape)} but the "
                            f"guide's tensor has shape {tuple(tensor.shape)}; call pyro.clear_param_store() "
                            "or give the guide a different name"
                        )
                    with torch.no_grad():
                        tensor.copy_(existing.detach())
                store._param_to_name.pop(existing, None)
            params[name] = tensor
            store._param_to_name[tensor] = name
            store._constraints[name] = constraints.real
            _own(tensor)

    def _reset_store_cache(self):
        self.__dict__.pop("_store_cache", None)


_DIRECT = [False]


@contextmanager
def direct_params():
    """While active, and with ``module_local_params``, guides read their weights without param messages.

    Under ``pyro.settings.set(module_local_params=True)`` a ``PyroModule`` still emits one (unused)
    ``param`` message per parameter of each attribute it reads, so that ``SVI`` with a
    ``pyro.optim`` optimizer can find them.  :class:`~pyro_nfvi.guides.fast.FastSVI` owns its torch
    optimizer and needs none of them; it runs its steps inside this context, where
    :func:`own_attr` reads the guide's parameters and submodules directly.  Outside it (standard
    ``SVI``, ``Predictive``, JIT) every message is emitted as usual.
    """
    previous = _DIRECT[0]
    _DIRECT[0] = True
    try:
        yield
    finally:
        _DIRECT[0] = previous


def own_attr(module, name):
    """``getattr(module, name)``, skipping PyroModule's param messages inside :func:`direct_params`."""
    if _DIRECT[0] and _is_module_local_param_enabled() and not torch._C._get_tracing_state():
        d = module.__dict__
        if name in d["_parameters"]:
            return d["_parameters"][name]
        if name in d["_modules"]:
            return d["_modules"][name]
    return getattr(module, name)
