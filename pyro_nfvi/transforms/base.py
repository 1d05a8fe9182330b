"""Base classes shared by every flow family.

Every flow in :mod:`pyro_nfvi.transforms` is a bijection ``y = f(x)`` on ``R^D`` with ``event_dim = 1``:
inputs have shape ``batch_shape + (D,)`` and ``log|det df/dx|`` has shape ``batch_shape``.  This
module states that once and implements the parts that are the same for every family:

* :class:`FlowTransform` -- a :class:`torch.distributions.Transform` whose single primitive
  :meth:`~FlowTransform.forward_and_log_det` computes ``y`` and ``log|det J|`` together.  Caching of
  ``(x, y, log|det J|)`` lives here and nowhere else, so ``TransformedDistribution.log_prob`` on a
  value the flow just sampled costs no extra pass, while any other value goes through the family's
  true inverse.
* :class:`FlowModule` -- the base of every family (``Planar``, ``Radial``, ...).  A family splits
  its maths from its parameters: ``_forward(x, params)`` / ``_inverse(y, params)`` take the
  parameters as tensors, so they can be owned by the module (``context_dim=0``) or predicted per
  data point by a hypernetwork from a context (``context_dim > 0``, see :meth:`FlowModule.condition`).
* :class:`Hypernet` -- a context network whose last layer is zero-initialised with its bias set to
  the family's identity parameters, so every amortized flow starts as the identity.
* :class:`ConditionedFlow` -- the transform returned by ``condition(context)`` or ``bind(raw)``:
  the family's maths bound to per-point parameters (``raw`` as given, ``bound`` after
  ``constrain``), which checks that every input's batch shape broadcasts against theirs.

Argument checks use :mod:`pyro_nfvi.validation`, so a bad ``dim`` reads the same everywhere.
"""
import math

import torch
from pyro.distributions.conditional import ConditionalTransform
from pyro.distributions.torch_transform import TransformModule
from torch import nn
from torch.distributions import Transform, constraints

from ..validation import check_choice, check_int, check_positive
from .output_scale import output_scale as resolve_output_scale

__all__ = [
    "FlowTransform",
    "FlowModule",
    "NetworkFlowModule",
    "ConditionedFlow",
    "NetworkConditionedFlow",
    "Hypernet",
    "broadcast_context",
    "check_batch",
    "to_network_dtype",
]


def _parameter_stamp(params):
    """``(id, version, tensor)`` of every parameter: changes when one is updated in place *or* replaced.

    ``_version`` alone misses ``module.u = nn.Parameter(...)`` (a new object starts at version 0
    again).  The tensor itself comes last: holding it keeps its ``id`` from being reused while the
    stamp is cached, and tuple equality reaches it only when the ids already match, i.e. it compares
    by identity, never elementwise.
    """
    return tuple((id(p), p._version, p) for p in params if p is not None)


def _detached(params):
    """The parameter dict with every tensor detached: the closed-form Jacobians are constants, and a
    ``torch.jit`` trace does not record ``no_grad``, so its replay would record them for autograd."""
    return {k: v.detach() if torch.is_tensor(v) else v for k, v in params.items()}


def to_network_dtype(tensor, network):
    """``tensor`` cast to the floating dtype of ``network``'s weights (unchanged if it has none).

    Every network a flow feeds (hypernetworks, IAF's MADE, coupling conditioners) reads its input
    through this, so a float64 input or context to a float32 flow is promoted the same way by every
    family instead of failing in a matrix product ("mat1 and mat2 must have the same dtype").  The
    flow's output then follows torch's type promotion of the input and the parameters, as for an
    elementwise family: float64 in, float64 out.

    Args:
        tensor (Tensor): the network's input.
        network (nn.Module): the network whose first parameter's dtype is used.

    Example:
        >>> to_network_dtype(torch.zeros(2, dtype=torch.float64), nn.Linear(2, 1)).dtype
        torch.float32
    """
    for param in network.parameters():
        if tensor.dtype != param.dtype and tensor.is_floating_point():
            return tensor.to(param.dtype)
        return tensor
    return tensor


class FlowTransform(Transform):
    """A bijection ``R^D -> R^D`` (``event_dim=1``) whose primitive returns ``(y, log|det J|)``.

    Subclasses implement :meth:`forward_and_log_det` and, where the inverse exists,
    :meth:`inverse_and_log_det` (which returns ``x`` and the log-det of the *forward* map at ``x``).
    The base class caches the last ``(x, y, log|det J|)`` triple, keyed by tensor identity and by a
    stamp of the parameters (``_stamp``), and checks every input: its event size, and for a
    transform bound to per-point parameters (``param_batch_shape`` not ``None``), that its batch
    shape broadcasts against theirs.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    #: Batch shape of the per-point parameters the transform is bound to; ``None`` when it owns them.
    param_batch_shape = None

    def __init__(self, dim, cache_size=1):
        check_choice("cache_size", cache_size, (0, 1))
        super().__init__(cache_size=cache_size)
        self.dim = check_int("dim", dim)
        self._cache = None

    # -- the primitive ------------------------------------------------------------------------
    def forward_and_log_det(self, x):
        """Return ``(y, log|det df/dx|)`` with shapes ``(..., D)`` and ``(...)``."""
        raise NotImplementedError

    def inverse_and_log_det(self, y):
        """Return ``(x, log|det df/dx|)`` with ``f(x) = y``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement an inverse")

    #: What the ``J`` of ``forward_and_jacobian`` is for every input: ``"lower"`` (lower
    #: triangular), ``"diagonal"``, ``"orthogonal"`` or ``"general"``.  A solve with ``J`` may rely on it
    #: (``pyro_nfvi.transforms.jacobian.push_score``); the tests check it on every family.
    jacobian_structure = "general"

    def forward_and_jacobian(self, x):
        r"""``(f(x), df/dx, d log|det df/dx| / dx)`` per draw, shapes ``(..., D)``, ``(..., D, D)``, ``(..., D)``, in closed form; ``None`` where there is none.

        Constants (no graph): the path-derivative ``log q`` uses them (``pyro_nfvi.transforms.jacobian``),
        the last one for :math:`\nabla_x \log q` without a backward pass.
        """
        return None

    def is_identity(self):
        """Whether the map is exactly the identity for every input at the current parameters (``False`` where that is not known)."""
        return False

    def jacobian_factors(self, x):
        r"""``(f(x), [(J_1, g_1, structure_1), ...])``: the closed-form Jacobian as factors, first applied first; ``None`` where there is none.

        :math:`\partial f / \partial x = J_K \cdots J_1`, each factor with the gradient ``g_k`` of its
        :math:`\log|\det J_k|` at its own input and its :attr:`jacobian_structure`.  One factor
        (:meth:`forward_and_jacobian`) for a layer; a stack gives one per layer, so that a solve with
        the product goes factor by factor instead of multiplying them out.
        """
        out = self.forward_and_jacobian(x)
        return None if out is None else (out[0], [(out[1], out[2], self.jacobian_structure)])

    # -- caching, in one place ------------------------------------------------------------------
    def _stamp(self):
        """A value that changes whenever a parameter changes in place or is replaced (modules override)."""
        return None

    def _check(self, value, what):
        if not torch.is_tensor(value):
            raise TypeError(f"{type(self).__name__} expects a tensor {what}, got {type(value).__name__}")
        if value.dim() == 0 or value.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} has event shape ({self.dim},) but got {what} of shape "
                f"{tuple(value.shape)}"
            )
        batch = self.param_batch_shape
        if batch is not None:
            check_batch(type(self).__name__, value.shape[:-1], batch, what)

    def __call__(self, x):
        cache = self._cache
        if cache is not None and cache[0] is x and cache[3] == self._stamp():
            return cache[1]
        self._check(x, "input")
        y, ladj = self.forward_and_log_det(x)
        if self._cache_size:
            self._cache = (x, y, ladj, self._stamp())
        return y

    def _inv_call(self, y):
        cache = self._cache
        if cache is not None and cache[1] is y and cache[3] == self._stamp():
            return cache[0]
        self._check(y, "value")
        x, ladj = self.inverse_and_log_det(y)
        if self._cache_size:
            self._cache = (x, y, ladj, self._stamp())
        return x

    def log_abs_det_jacobian(self, x, y):
        cache = self._cache
        if cache is not None and cache[0] is x and cache[1] is y and cache[3] == self._stamp():
            return cache[2]
        self._check(x, "input")
        return self.forward_and_log_det(x)[1]

    def clear_cache(self):
        self._cache = None

    def with_cache(self, cache_size=1):
        if cache_size == self._cache_size:
            return self
        raise NotImplementedError(f"{type(self).__name__}.with_cache({cache_size}) is not supported")

    def __getstate__(self):
        state = super().__getstate__()
        state["_cache"] = None
        return state


class Hypernet(nn.Module):
    """Maps a context ``(..., context_dim)`` to named parameter tensors ``(..., *shape)``.

    An optional hidden MLP (``hidden``, ELU activations) is followed by a linear layer whose weight
    is zero-initialised and whose bias is the flattened ``init`` values, so the predicted parameters
    start at ``init`` for every context (Rezende & Mohamed 2015 amortize the flow this way).  The
    layer computes ``bias + output_scale * weight @ h``: with ``output_scale = 1 / fan_in`` the
    per-point part moves at Adam's pace ``lr`` per step instead of ``lr * fan_in``
    (``pyro_nfvi.transforms.output_scale``).

    Example:
        >>> net = Hypernet(3, {"a": (2,), "b": ()}, {"a": torch.ones(2), "b": torch.zeros(())})
        >>> out = net(torch.randn(5, 3))
        >>> out["a"].shape, out["b"].shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(self, context_dim, shapes, init, hidden=(), output_scale=1.0):
        super().__init__()
        self.context_dim = check_int("context_dim", context_dim)
        self.output_scale = check_positive("output_scale", output_scale)
        self.names = list(shapes)
        self.shapes = [tuple(shapes[n]) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        layers, width = [], context_dim
        for h in hidden:
            layers += [nn.Linear(width, check_int("hidden", h)), nn.ELU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, sum(self.sizes))
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.cat([init[n].reshape(-1) for n in self.names]))

    def forward(self, context):
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context must have shape (..., {self.context_dim}), got {tuple(context.shape)}"
            )
        hidden = self.trunk(to_network_dtype(context, self.head))
        return self.unflatten(nn.functional.linear(hidden, self.weight(), self.head.bias))

    def weight(self):
        """The head's effective weight, ``output_scale * head.weight``."""
        return self.head.weight if self.output_scale == 1.0 else self.output_scale * self.head.weight

    @property
    def is_linear(self):
        """Whether the hypernetwork is a single linear map (no hidden layers)."""
        return len(self.trunk) == 0

    def unflatten(self, flat):
        """Split the head's output ``(..., sum sizes)`` into the named parameter tensors."""
        batch = flat.shape[:-1]
        out = {}
        for name, shape, chunk in zip(self.names, self.shapes, flat.split(self.sizes, dim=-1)):
            out[name] = chunk.reshape(batch + shape)
        return out


class FlowModule(FlowTransform, TransformModule, ConditionalTransform):
    """Base class of every flow family: owns its parameters or predicts them from a context.

    A family subclass defines

    * ``param_shapes()`` -- ``{name: shape}`` of its raw (unconstrained) per-sample parameters,
    * ``init_params()`` -- raw values at which the flow is the identity (or as close as the family
      allows), used for owned parameters and as the hypernetwork's bias,
    * ``constrain(raw)`` -- maps raw parameters to the ones the maths uses (e.g. planar u-hat),
    * ``_forward(x, p)`` -> ``(y, log|det J|)`` and ``_inverse(y, p)`` -> ``(x, log|det J|)``.

    Families whose parameters are not a plain tensor dict (IAF, coupling: a conditioner network that
    reads the context) override :meth:`params` instead.

    With ``context_dim=0`` the module is itself the transform.  With ``context_dim > 0`` call
    ``condition`` with a context of shape ``(..., context_dim)`` to get a
    :class:`ConditionedFlow` whose parameters have that batch shape.
    """

    def __init__(self, dim, context_dim=0, cache_size=1):
        super().__init__(dim, cache_size=cache_size)
        self.context_dim = check_int("context_dim", context_dim, minimum=0)
        self._param_list = []

    # -- hooks for families -----------------------------------------------------------------------
    def param_shapes(self):
        return {}

    def init_params(self):
        return {}

    def constrain(self, raw):
        return raw

    def _forward(self, x, p):
        raise NotImplementedError

    def _inverse(self, y, p):
        raise NotImplementedError(f"{type(self).__name__} does not implement an inverse")

    def _forward_jacobian(self, x, p):
        """``(y, dy/dx, d log|det dy/dx| / dx)`` per draw in closed form; ``None`` (the default) for a family without one."""
        return None

    # -- parameters ---------------------------------------------------------------------------------
    def _build_params(self, hidden=(), output_scale="none"):
        """Create owned parameters or the hypernetwork; families call this at the end of __init__.

        ``output_scale`` (``"none"``, ``"fan_in"`` or a positive float, see
        ``pyro_nfvi.transforms.output_scale``) multiplies the hypernetwork's output layer; owned
        parameters have no network, so anything but ``"none"`` is refused there.
        """
        shapes, init = self.param_shapes(), self.init_params()
        if not self.context_dim and output_scale != "none":
            raise ValueError(
                f"output_scale={output_scale!r} scales a hypernetwork's output, but {type(self).__name__} was built "
                "with context_dim=0 (owned parameters, no network): leave output_scale='none'"
            )
        for name, shape in shapes.items():
            if tuple(init[name].shape) != tuple(shape):
                raise ValueError(f"init_params()[{name!r}] has shape {tuple(init[name].shape)}, expected {shape}")
        if self.context_dim:
            fan_in = tuple(hidden)[-1] if tuple(hidden) else self.context_dim
            self.hypernet = Hypernet(self.context_dim, shapes, init, hidden, resolve_output_scale(output_scale, fan_in))
        else:
            for name in shapes:
                setattr(self, name, nn.Parameter(init[name]))

    def _stamp(self):
        if self.context_dim:
            return None
        if not self._modules:  # the common case: parameters owned directly, no recursion needed
            return _parameter_stamp(self._parameters.values())
        return _parameter_stamp(self.parameters())

    def _check_context(self, context):
        """Raise a clear error unless ``context`` fits ``context_dim``; return whether one is used."""
        if self.context_dim:
            if context is None:
                raise ValueError(
                    f"{type(self).__name__} was built with context_dim={self.context_dim}: call "
                    f".condition(context) with a context of shape (..., {self.context_dim})"
                )
            if not torch.is_tensor(context) or context.dim() == 0 or context.shape[-1] != self.context_dim:
                shape = tuple(context.shape) if torch.is_tensor(context) else type(context).__name__
                raise ValueError(f"context must have shape (..., {self.context_dim}), got {shape}")
            return True
        if context is not None:
            raise ValueError(f"{type(self).__name__} was built with context_dim=0 and takes no context")
        return False

    def raw_params(self, context=None):
        if self._check_context(context):
            return self.hypernet(context)
        if self.__dict__.get("packed_in_stack"):
            raise RuntimeError(
                f"this {type(self).__name__} layer's parameters are packed in its FlowStack "
                "(FlowStack.pack_parameters); apply the stack, not the layer"
            )
        return {name: getattr(self, name) for name in self.param_shapes()}

    def params(self, context=None):
        """The constrained parameters used by the maths, for the given context (if amortized)."""
        return self.constrain(self.raw_params(context))

    def raw_batch_shape(self, raw):
        """The batch shape of raw parameters ``raw`` (as from :meth:`raw_params`); checks them first.

        Raises a ``ValueError`` unless ``raw`` has exactly the names of :meth:`param_shapes`, each a
        tensor of shape ``batch + shape`` with batch shapes that broadcast together.
        """
        shapes = self.param_shapes()
        if not isinstance(raw, dict) or set(raw) != set(shapes):
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(
                f"{type(self).__name__}.bind expects raw parameters {sorted(shapes)} (as from "
                f".raw_params(context)), got {got}"
            )
        batches = []
        for name, shape in shapes.items():
            value = raw[name]
            n = len(shape)
            if not torch.is_tensor(value) or value.dim() < n or tuple(value.shape[value.dim() - n :]) != tuple(shape):
                got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise ValueError(
                    f"{type(self).__name__}.bind: raw[{name!r}] must have shape (..., *{shape}), got {got}"
                )
            batches.append(value.shape[: value.dim() - n])
        if all(b == batches[0] for b in batches):
            return torch.Size(batches[0])  # the common case, without torch.broadcast_shapes' cost
        try:
            return torch.broadcast_shapes(*batches)
        except RuntimeError:
            raise ValueError(
                f"{type(self).__name__}.bind: the raw parameters' batch shapes "
                f"{[tuple(b) for b in batches]} do not broadcast together"
            ) from None

    # -- transform --------------------------------------------------------------------------------
    def forward_and_log_det(self, x):
        return self._forward(x, self.params())

    def inverse_and_log_det(self, y):
        return self._inverse(y, self.params())

    @torch.no_grad()
    def forward_and_jacobian(self, x):
        return self._forward_jacobian(x, _detached(self.params()))

    def bind(self, raw):
        """Return the transform with the given raw parameters (as produced by :meth:`raw_params`).

        This is how an encoder that outputs every flow parameter per data point uses the family's
        maths, and how per-point parameters are refined as free tensors.
        """
        return ConditionedFlow(self, raw)

    def condition(self, context):
        """Return the transform with parameters computed from ``context`` (shape ``(..., context_dim)``)."""
        return self.bind(self.raw_params(context))

    def extra_repr(self):
        return f"dim={self.dim}, context_dim={self.context_dim}"

    def __hash__(self):
        return TransformModule.__hash__(self)


class ConditionedFlow(FlowTransform):
    """A flow family's maths bound to parameter tensors (e.g. predicted per data point).

    Built by :meth:`FlowModule.bind` (and so by :meth:`FlowModule.condition`).  It keeps the raw
    parameters it was given (``raw``, checked against the family's ``param_shapes``) and their
    constrained values (``bound``, what the family's ``_forward`` / ``_inverse`` read).  Inputs
    must have a batch shape that broadcasts against the parameters' (``param_batch_shape``): e.g.
    with a context of shape ``(B, C)`` an input ``(B, D)`` or, for ``S`` particles, ``(S, B, D)``.

    Args:
        module (FlowModule): the family whose maths is used.
        raw (dict): raw parameters, ``{name: tensor of shape batch + shape}``.
        cache_size (int): 0 or 1.

    Example:
        >>> from pyro_nfvi.transforms import Planar
        >>> t = Planar(2, context_dim=3).condition(torch.randn(4, 3))
        >>> t.param_batch_shape, sorted(t.bound)
        (torch.Size([4]), ['b', 'u', 'w', 'wu'])
        >>> t(torch.randn(5, 4, 2)).shape
        torch.Size([5, 4, 2])
    """

    def __init__(self, module, raw, cache_size=1):
        super().__init__(module.dim, cache_size=cache_size)
        self.param_batch_shape = module.raw_batch_shape(raw)
        self.module = module
        self.raw = raw
        self.bound = module.constrain(raw)

    def forward_and_log_det(self, x):
        return self.module._forward(x, self.bound)

    def inverse_and_log_det(self, y):
        return self.module._inverse(y, self.bound)

    @torch.no_grad()
    def forward_and_jacobian(self, x):
        return self.module._forward_jacobian(x, _detached(self.bound))

    @property
    def jacobian_structure(self):
        """The family's structure, since binding parameters does not change the shape of the Jacobian."""
        return self.module.jacobian_structure

    def __repr__(self):
        return f"ConditionedFlow({type(self.module).__name__}, dim={self.dim})"


class NetworkConditionedFlow(ConditionedFlow):
    """A conditioned flow whose module reads its network weights at call time (IAF, coupling).

    Unlike hypernetwork families, whose bound parameters are fixed tensors, these layers keep only the
    context and run the module's network on every call; the cache is therefore keyed by the
    module's parameter versions, so an in-place optimiser step invalidates it.
    """

    def _stamp(self):
        return self.module._stamp()


class NetworkFlowModule(FlowModule):
    """Base of families whose conditioner network reads ``x`` and the context itself (IAF, coupling).

    Their raw parameters are just ``{"context": context}`` (``{}`` when ``context_dim=0``); the
    weights live in the network, so the cache of the module and of every bound transform follows
    the network's parameter versions.
    """

    def raw_params(self, context=None):
        """``{"context": context}`` for an amortized layer, ``{}`` otherwise."""
        return {"context": context} if self._check_context(context) else {}

    def raw_batch_shape(self, raw):
        """The context's batch shape for ``raw = {"context": context}`` (``()`` for ``{}``); checks it."""
        if not isinstance(raw, dict) or set(raw) - {"context"}:
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"{type(self).__name__}.bind expects {{'context': tensor}} or {{}}, got {got}")
        context = raw.get("context")
        self._check_context(context)
        return torch.Size(()) if context is None else context.shape[:-1]

    def _stamp(self):
        return _parameter_stamp(self.parameters())

    def bind(self, raw):
        """The layer bound to ``raw`` (``{"context": ...}``): see :class:`NetworkConditionedFlow`."""
        return NetworkConditionedFlow(self, raw)


def check_batch(name, batch, param_batch, what="input"):
    """Raise a ``ValueError`` unless an input's ``batch`` shape broadcasts against ``param_batch``.

    Used by every transform bound to per-point parameters, so that a context of the wrong batch
    shape is reported with both shapes instead of a broadcasting error deep inside the maths.

    Example:
        >>> check_batch("Planar", torch.Size([3, 4]), torch.Size([4]))
        >>> check_batch("Planar", torch.Size([5]), torch.Size([8]))
        Traceback (most recent call last):
            ...
        ValueError: Planar: input batch shape (5,) does not broadcast against the batch shape (8,) ...
    """
    try:
        torch.broadcast_shapes(batch, param_batch)
    except RuntimeError:
        dims = ", ".join(str(d) for d in param_batch)
        raise ValueError(
            f"{name}: {what} batch shape {tuple(batch)} does not broadcast against the batch shape "
            f"{tuple(param_batch)} of its context (or bound parameters); give the {what} shape "
            f"(..., {dims}, D), sample dimensions first"
        ) from None


def broadcast_context(x, context):
    """Expand ``x`` (``(..., D)``) and ``context`` (``(..., C)``) to their common batch shape."""
    try:
        batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"input of shape {tuple(x.shape)} and context of shape {tuple(context.shape)} have batch "
            f"shapes {tuple(x.shape[:-1])} and {tuple(context.shape[:-1])} that do not broadcast"
        ) from None
    return x.expand(batch + x.shape[-1:]), context.expand(batch + context.shape[-1:])
