"""Stacks of flow layers: :class:`FlowStack`, :class:`BoundStack`, :class:`Permute` and the :func:`flow` factory."""
import warnings

import torch
from pyro.distributions.conditional import ConditionalTransform
from torch import nn

from ..validation import check_choice, check_int
from .base import FlowModule, FlowTransform, to_network_dtype
from .coupling import AffineCoupling
from .householder import Householder
from .iaf import IAF
from .planar import Planar
from .radial import Radial
from .runs import bind_layers, compose_factors, compose_forward, compose_inverse, compose_jacobian, forward_layers, inverse_layers, plan_layers, split_runs
from .sylvester import Sylvester

__all__ = ["BoundStack", "FlowStack", "Permute", "flow", "FAMILIES", "PERMUTATIONS"]

#: The flow families by name, as accepted by :func:`flow` and the guides' ``flow=`` argument.
FAMILIES = {
    "planar": Planar,
    "radial": Radial,
    "householder": Householder,
    "iaf": IAF,
    "sylvester": Sylvester,
    "coupling": AffineCoupling,
}

#: The orders :func:`flow` can put between IAF layers (``permutation=``).
PERMUTATIONS = ("reverse", "random")


class Permute(FlowModule):
    """Volume-preserving permutation of the event dimension, ``y = x[..., perm]``; log-det 0.

    The permutation is a buffer, so it is saved with ``state_dict``.

    Example:
        >>> Permute(torch.tensor([2, 0, 1]))(torch.tensor([1.0, 2.0, 3.0]))
        tensor([3., 1., 2.])
    """

    volume_preserving = True
    jacobian_structure = "orthogonal"  # a permutation matrix

    def __init__(self, perm, cache_size=1):
        perm = torch.as_tensor(perm, dtype=torch.long)
        super().__init__(len(perm), cache_size=cache_size)
        if not torch.equal(torch.sort(perm).values, torch.arange(len(perm))):
            raise ValueError(f"perm must be a permutation of 0..{len(perm) - 1}, got {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def _stamp(self):
        return None

    def forward_and_log_det(self, x):
        return x[..., self.perm], x.new_zeros(x.shape[:-1])

    def inverse_and_log_det(self, y):
        return y[..., self.inv_perm], y.new_zeros(y.shape[:-1])

    def forward_and_jacobian(self, x):
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return x[..., self.perm], eye[self.perm].expand(x.shape[:-1] + (self.dim, self.dim)), x.new_zeros(x.shape)

    def condition(self, context):
        return self


class FlowStack(FlowTransform, nn.Module, ConditionalTransform):
    """Composition ``f_K o ... o f_1`` of flow layers; ``log|det J|`` is the sum over layers.

    Works like one transform: in a ``TransformedDistribution`` it caches ``(x, y, log|det J|)`` of
    the whole stack, so scoring a sample costs no extra pass.  Amortized stacks are conditioned with
    ``condition`` (or :meth:`raw_params` then :meth:`bind`), which return a
    :class:`BoundStack`; a layer marked ``chained`` (Householder in amortized use, Tomczak &
    Welling 2016) takes the previous layer's vector as its context instead of the data context.
    Runs of planar layers are applied by one fused kernel
    (``pyro_nfvi.transforms.runs.plan_layers`` decides).

    An empty stack is the identity (the Gaussian base alone).

    Example:
        >>> stack = flow("planar", 3, num_flows=4)
        >>> x = torch.randn(10, 3)
        >>> y = stack(x)
        >>> stack.log_abs_det_jacobian(x, y).shape
        torch.Size([10])
        >>> torch.allclose(stack.inv(y.clone()), x, atol=1e-5)
        True
    """

    def __init__(self, layers, dim=None, cache_size=1):
        layers = list(layers)
        if dim is None:
            if not layers:
                raise ValueError("an empty FlowStack needs dim")
            dim = layers[0].dim
        super().__init__(dim, cache_size=cache_size)
        for i, layer in enumerate(layers):
            if layer.dim != dim:
                raise ValueError(f"layer {i} ({type(layer).__name__}) has dim {layer.dim}, expected {dim}")
        self.layers = nn.ModuleList(layers)
        self.context_dim = max([getattr(l, "context_dim", 0) for l in layers if not getattr(l, "chained", False)] or [0])

    __hash__ = object.__hash__

    def _stamp(self):
        packed = self._parameters.get("packed")
        layers = tuple(layer._stamp() for layer in self.layers)
        return layers if packed is None else layers + ((id(packed), packed._version),)

    def forward_and_log_det(self, x):
        raws = self._packed_raws() if "packed" in self._parameters else None
        return forward_layers(self.layers, x, raws)

    def inverse_and_log_det(self, y):
        raws = self._packed_raws() if "packed" in self._parameters else None
        return inverse_layers(self.layers, y, raws)

    def forward_and_jacobian(self, x):
        """``(y, J, d log|det J| / dx)`` from the layers' closed forms (``None`` if a layer has none; ``(x, I, 0)`` if empty)."""
        raws = self._packed_raws() if "packed" in self._parameters else None
        return compose_jacobian(bind_layers(self.layers, raws), x)

    def reduced(self):
        """The same map with fewer operations: one :class:`Permute` (or an empty stack) while every layer is a permutation or exactly the identity, else the stack itself.

        An IAF stack is that until it trains (its layers start as the identity, with
        :class:`Permute` layers between them); ``AutoFlowGuide.fit_base``, which holds the flow at
        its initialisation, runs the reduced map: the same draws and densities to the bit, without
        the networks.

        Example:
            >>> stack = flow("iaf", 3, num_flows=2)
            >>> stack.reduced()
            Permute()
            >>> x = torch.randn(4, 3)
            >>> torch.equal(stack.reduced()(x), stack(x))
            True
        """
        perm = None
        for layer in self.layers:
            if isinstance(layer, Permute):
                perm = layer.perm if perm is None else perm[layer.perm]  # x[p1][p2] = x[p1[p2]]
            elif not layer.is_identity():
                return self
        return FlowStack([], dim=self.dim) if perm is None else Permute(perm)

    def jacobian_factors(self, x):
        """``(y, factors)``: one factor per layer (see :meth:`FlowTransform.jacobian_factors`); ``(x, [])`` if empty."""
        raws = self._packed_raws() if "packed" in self._parameters else None
        return compose_factors(bind_layers(self.layers, raws), x)

    # -- packed parameters --------------------------------------------------------------------------
    def pack_parameters(self):
        """Keep the parameters of every owned layer with plain tensor parameters in one flat tensor.

        After this call the stack owns one ``nn.Parameter`` ``packed`` (the concatenation of the
        layers' raw parameters, in layer order) and those layers own none: each application binds
        them to views of ``packed`` (as an amortized layer is bound to its per-point parameters), so
        the maths and its results are unchanged.  Layers whose parameters live in a network (IAF,
        coupling) and permutations keep theirs.  An optimizer then sees one tensor for the whole
        flow instead of three or more per layer, which is what makes Pyro's per-parameter
        bookkeeping (one ``param`` message, one optimizer per tensor) cheap.  Returns ``self``.

        Example:
            >>> stack = flow("planar", 3, num_flows=4)
            >>> x = torch.randn(5, 3)
            >>> y = stack(x)
            >>> [n for n, _ in stack.pack_parameters().named_parameters()]
            ['packed']
            >>> torch.allclose(stack(x.clone()), y)
            True
        """
        if self.context_dim:
            raise ValueError("pack_parameters packs owned parameters; this stack is amortized (context_dim > 0)")
        if "packed" in self._parameters:
            return self
        plan, chunks, start = [], [], 0
        for i, layer in enumerate(self.layers):
            names = list(layer.param_shapes()) if isinstance(layer, FlowModule) else []
            if not names or layer._modules or set(layer._parameters) != set(names):
                continue
            entries = []
            for name in names:
                value = layer._parameters[name].detach()
                entries.append((name, tuple(value.shape), start, start + value.numel()))
                chunks.append(value.reshape(-1))
                start += value.numel()
                del layer._parameters[name]
            layer.packed_in_stack = True
            plan.append((i, entries))
        if not plan:
            return self
        self._packing = plan
        self.packed = nn.Parameter(torch.cat(chunks))
        return self

    def _packed_raws(self):
        """Per-layer raw parameters: views of ``packed`` for packed layers, ``None`` for the others."""
        packed = self.packed
        raws = [None] * len(self.layers)
        for i, entries in self._packing:
            raws[i] = {name: packed[a:b].view(shape) for name, shape, a, b in entries}
        return raws

    def raw_params(self, context):
        """Per-layer raw parameters for ``context``: a list with ``None`` for owned-parameter layers.

        A chained layer (amortized Householder after the first) reads the previous layer's raw
        ``"v"`` as its context.  Consecutive layers whose hypernetworks are single linear maps are
        evaluated with one matrix product over their concatenated weights.

        Raises a ``ValueError`` if no layer of the stack is amortized (``context_dim=0``).
        """
        self._check_amortized()
        layers = self.layers
        raws, previous = [], None
        for start, stop, is_run in split_runs([_linear_head(layer) for layer in layers]):
            if is_run:
                raws.extend(_linear_heads(layers[start:stop], context))
                previous = raws[-1]
                continue
            layer = layers[start]
            if getattr(layer, "chained", False):
                raw = layer.raw_params(previous["v"])
            elif getattr(layer, "context_dim", 0):
                raw = layer.raw_params(context)
            else:
                raw = None
            raws.append(raw)
            previous = raw
        return raws

    def bind(self, raws):
        """The stack's transform with per-layer raw parameters ``raws`` (see :meth:`raw_params`).

        ``raws`` has one entry per layer: the raw parameter dict of every amortized layer and
        ``None`` for every layer that owns its parameters.  Runs of planar layers become one
        :class:`~pyro_nfvi.transforms.runs.PlanarRun` each (parameters constrained once, fused
        kernel); see ``pyro_nfvi.transforms.runs.plan_layers``.

        Returns:
            BoundStack
        """
        if not isinstance(raws, (list, tuple)):
            raise TypeError(f"FlowStack.bind expects a list of per-layer raw parameters, got {type(raws).__name__}")
        if len(raws) != len(self.layers):
            raise ValueError(
                f"FlowStack.bind: expected {len(self.layers)} raw parameter entries (one per layer, as from "
                f"raw_params(context)), got {len(raws)}"
            )
        for i, (layer, raw) in enumerate(zip(self.layers, raws)):
            amortized = getattr(layer, "context_dim", 0) > 0
            if amortized and raw is None:
                raise ValueError(
                    f"FlowStack.bind: layer {i} ({type(layer).__name__}) is amortized (context_dim="
                    f"{layer.context_dim}) but raws[{i}] is None; pass the list from raw_params(context)"
                )
            if not amortized and raw is not None:
                raise ValueError(
                    f"FlowStack.bind: layer {i} ({type(layer).__name__}) was built with context_dim=0 and "
                    f"owns its parameters, so raws[{i}] must be None, got {type(raw).__name__}"
                )
        return BoundStack(plan_layers(self.layers, raws), self.dim)

    def condition(self, context):
        """Bind every amortized layer to ``context``; owned-parameter layers are used as they are.

        Raises a ``ValueError`` if no layer of the stack is amortized (``context_dim=0``).
        """
        return self.bind(self.raw_params(context))

    def _check_amortized(self):
        if not self.context_dim:
            raise ValueError(
                "FlowStack was built with context_dim=0 (none of its layers is amortized) and takes no "
                "context: use the stack itself as the transform, or build it with "
                "flow(family, dim, num_flows, context_dim=C)"
            )

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __repr__(self):
        return nn.Module.__repr__(self)


def _linear_head(layer):
    hypernet = getattr(layer, "hypernet", None)
    return hypernet is not None and hypernet.is_linear and not getattr(layer, "chained", False)


def _linear_heads(layers, context):
    """Raw parameters of layers with linear hypernetworks, from one matrix product."""
    for layer in layers:
        layer._check_context(context)
    nets = [layer.hypernet for layer in layers]
    context = to_network_dtype(context, nets[0].head)
    flat = nn.functional.linear(context, torch.cat([n.weight() for n in nets]), torch.cat([n.head.bias for n in nets]))
    chunks = flat.split([n.head.out_features for n in nets], dim=-1)
    return [layer.hypernet.unflatten(chunk) for layer, chunk in zip(layers, chunks)]


class BoundStack(FlowTransform):
    """A :class:`FlowStack` bound to per-layer raw parameters: what :meth:`FlowStack.bind` returns.

    ``layers`` holds the planned transforms (``pyro_nfvi.transforms.runs.plan_layers``): a
    :class:`~pyro_nfvi.transforms.runs.PlanarRun` per run of planar layers, bound layers and owned
    layers.  Inputs must broadcast against the batch shape of the context (``param_batch_shape``).

    Example:
        >>> stack = flow("planar", 2, num_flows=3, context_dim=4)
        >>> bound = stack.condition(torch.randn(5, 4))
        >>> bound.param_batch_shape, bound(torch.randn(7, 5, 2)).shape
        (torch.Size([5]), torch.Size([7, 5, 2]))
    """

    def __init__(self, layers, dim):
        super().__init__(dim)
        self.layers = list(layers)
        batches = [t.param_batch_shape for t in self.layers if t.param_batch_shape is not None]
        if batches:
            self.param_batch_shape = torch.broadcast_shapes(*batches)

    def _stamp(self):
        return tuple(layer._stamp() for layer in self.layers)

    def forward_and_log_det(self, x):
        return compose_forward(self.layers, x)

    def inverse_and_log_det(self, y):
        return compose_inverse(self.layers, y)

    def forward_and_jacobian(self, x):
        return compose_jacobian(self.layers, x)

    def jacobian_factors(self, x):
        return compose_factors(self.layers, x)

    def __repr__(self):
        return f"BoundStack({', '.join(type(t).__name__ for t in self.layers)}; dim={self.dim})"


def flow(family=None, dim=None, num_flows=None, context_dim=0, seed=0, **opts):
    """Return a :class:`FlowStack` of ``num_flows`` layers of one family.

    Args:
        family (str): one of ``"planar"``, ``"radial"``, ``"householder"``, ``"iaf"``,
            ``"sylvester"``, ``"coupling"``, or ``"none"`` (an empty stack: the identity).
        dim (int): event size.
        num_flows (int): number of layers.
        context_dim (int): 0 for owned parameters, ``> 0`` for amortized parameters.
        seed (int): seeds the layer orders drawn at random (``permutation="random"``) with a
            generator of its own, so the stack's buffers are a function of the arguments only,
            never of the global torch RNG.
        **opts: passed to every layer (e.g. ``hidden=(64,)``, ``kind="orthogonal"`` for Sylvester);
            ``permutation="reverse"|"random"`` (IAF only) sets the order changes between IAF layers.
            ``kind="planar"`` (naming a family, with no ``family`` given) is the deprecated former
            name of ``family`` and gives a ``FutureWarning``.

    The permutations a family needs are added here: IAF layers are separated by :class:`Permute`
    (reversal by default), coupling layers alternate their masks, Sylvester layers alternate
    ``reverse`` (used by ``kind="triangular"``), and amortized Householder layers after the first
    are chained (``v_t = Linear(v_{t-1})``).

    Example:
        >>> stack = flow("iaf", 4, num_flows=2)
        >>> [type(layer).__name__ for layer in stack]
        ['IAF', 'Permute', 'IAF']
        >>> [layer.kind for layer in flow("sylvester", 3, 2, kind="triangular")]
        ['triangular', 'triangular']
    """
    kind = opts.get("kind")
    if family is None and isinstance(kind, str) and (kind in FAMILIES or kind == "none"):
        warnings.warn(
            f"flow(kind={kind!r}, ...) is deprecated: the family is flow's first argument, "
            f"flow({kind!r}, dim, num_flows) or flow(family={kind!r}, ...)",
            FutureWarning,
            stacklevel=2,
        )
        family = opts.pop("kind")
    if family is None:
        raise TypeError("flow() needs the flow family as its first argument, e.g. flow('planar', dim, num_flows)")
    check_choice("family", family, sorted(FAMILIES) + ["none"])
    dim = check_int("dim", dim)
    num_flows = check_int("num_flows", num_flows, minimum=0)
    seed = check_int("seed", seed, minimum=0)
    permutation = opts.pop("permutation", None)
    if permutation is not None and family != "iaf":
        raise ValueError(f"permutation is only used by family='iaf' (the order between IAF layers), not {family!r}")
    permutation = check_choice("permutation", "reverse" if permutation is None else permutation, PERMUTATIONS)
    if family == "none":
        return FlowStack([], dim=dim)
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(num_flows):
        if family == "iaf":
            if i > 0:
                if permutation == "reverse":
                    layers.append(Permute(torch.arange(dim - 1, -1, -1)))
                else:
                    layers.append(Permute(torch.randperm(dim, generator=generator)))
            layers.append(IAF(dim, context_dim=context_dim, **opts))
        elif family == "coupling":
            layers.append(AffineCoupling(dim, context_dim=context_dim, parity=i % 2, **opts))
        elif family == "sylvester":
            layers.append(Sylvester(dim, context_dim=context_dim, reverse=bool(i % 2), **opts))
        elif family == "householder" and context_dim and i > 0:
            layers.append(Householder(dim, context_dim=dim, chained=True))
        else:
            layers.append(FAMILIES[family](dim, context_dim=context_dim, **opts))
    return FlowStack(layers, dim=dim)
