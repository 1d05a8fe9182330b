"""Stacks of flow layers: :class:`FlowStack`, :class:`Permute` and the :func:`flow` factory."""
import torch
from pyro.distributions.conditional import ConditionalTransform
from torch import nn

from .base import FlowModule, FlowTransform, check_dim
from .coupling import AffineCoupling
from .fused import forward_layers, fused_planar, fused_planar_enabled
from .householder import Householder
from .iaf import IAF
from .planar import Planar, planar_uhat
from .radial import Radial
from .sylvester import Sylvester

__all__ = ["FlowStack", "Permute", "PlanarRun", "flow", "FAMILIES"]

#: The flow families by name, as accepted by :func:`flow` and the guides' ``flow=`` argument.
FAMILIES = {
    "planar": Planar,
    "radial": Radial,
    "householder": Householder,
    "iaf": IAF,
    "sylvester": Sylvester,
    "coupling": AffineCoupling,
}


class Permute(FlowModule):
    """Volume-preserving permutation of the event dimension, ``y = x[..., perm]``; log-det 0.

    The permutation is a buffer, so it is saved with ``state_dict``.

    Example:
        >>> Permute(torch.tensor([2, 0, 1]))(torch.tensor([1.0, 2.0, 3.0]))
        tensor([3., 1., 2.])
    """

    volume_preserving = True

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

    def condition(self, context):
        return self


class FlowStack(FlowTransform, nn.Module, ConditionalTransform):
    """Composition ``f_K o ... o f_1`` of flow layers; ``log|det J|`` is the sum over layers.

    Works like one transform: in a ``TransformedDistribution`` it caches ``(x, y, log|det J|)`` of
    the whole stack, so scoring a sample costs no extra pass.  Amortized stacks are conditioned with
    :meth:`condition`; a layer marked ``chained`` (Householder in amortized use, Tomczak & Welling
    2016) takes the previous layer's vector as its context instead of the data context.

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
        return tuple(layer._stamp() for layer in self.layers)

    def forward_and_log_det(self, x):
        # runs of >= 2 consecutive planar layers go through one fused autograd node (fused.py)
        return forward_layers(self.layers, x)

    def inverse_and_log_det(self, y):
        return inverse_layers(self.layers, y)

    def raw_params(self, context):
        """Per-layer raw parameters for ``context``: a list with ``None`` for owned-parameter layers.

        A chained layer (amortized Householder after the first) reads the previous layer's raw
        ``"v"`` as its context.  Consecutive layers whose hypernetworks are single linear maps are
        evaluated with one matrix product over their concatenated weights.
        """
        raws, previous, i, n = [], None, 0, len(self.layers)
        while i < n:
            j = i
            while j < n and _linear_head(self.layers[j]):
                j += 1
            if j - i >= 2:
                raws.extend(_linear_heads(self.layers[i:j], context))
                previous, i = raws[-1], j
                continue
            layer = self.layers[i]
            if getattr(layer, "chained", False):
                raw = layer.raw_params(previous["v"])
            elif getattr(layer, "context_dim", 0):
                raw = layer.raw_params(context)
            else:
                raw = None
            raws.append(raw)
            previous, i = raw, i + 1
        return raws

    def bind(self, raws):
        """The stack's transform with per-layer raw parameters ``raws`` (see :meth:`raw_params`).

        A run of two or more amortized planar layers becomes one :class:`PlanarRun`, which applies
        the u-hat constraint once to the stacked parameters and runs the fused planar kernel.
        """
        if len(raws) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} raw parameter entries, got {len(raws)}")
        bound, i, n = [], 0, len(self.layers)
        while i < n:
            j = i
            while j < n and raws[j] is not None and type(self.layers[j]) is Planar:
                j += 1
            if j - i >= 2:
                bound.append(PlanarRun(self.layers[i:j], raws[i:j]))
                i = j
                continue
            layer, raw = self.layers[i], raws[i]
            bound.append(layer if raw is None else layer.bind(raw))
            i += 1
        return _BoundStack(bound, self.dim)

    def condition(self, context):
        """Bind every amortized layer to ``context``; owned-parameter layers are used as they are."""
        return self.bind(self.raw_params(context))

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __repr__(self):
        return nn.Module.__repr__(self)


def inverse_layers(layers, y):
    """``inverse_and_log_det`` of the composition of ``layers`` (last layer inverted first)."""
    total = y.new_zeros(y.shape[:-1])
    for layer in reversed(layers):
        y, ladj = layer.inverse_and_log_det(y)
        total = total + ladj
    return y, total


def _linear_head(layer):
    hypernet = getattr(layer, "hypernet", None)
    return hypernet is not None and hypernet.is_linear and not getattr(layer, "chained", False)


def _linear_heads(layers, context):
    """Raw parameters of layers with linear hypernetworks, from one matrix product."""
    for layer in layers:
        layer._check_context(context)
    heads = [layer.hypernet.head for layer in layers]
    flat = nn.functional.linear(context, torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads]))
    chunks = flat.split([h.out_features for h in heads], dim=-1)
    return [layer.hypernet.unflatten(chunk) for layer, chunk in zip(layers, chunks)]


class PlanarRun(FlowTransform):
    """Consecutive amortized planar layers bound to raw per-point parameters, run as one kernel.

    The raw ``u, w, b`` of the ``K`` layers are stacked and constrained once
    (:func:`~pyro_nfvi.transforms.planar.planar_uhat`), then applied by
    :func:`~pyro_nfvi.transforms.fused.fused_planar`; the inverse goes layer by layer.  Equivalent
    to binding each layer (``[layer.bind(raw) for ...]``), with fewer operations.

    Args:
        layers (list): ``Planar`` modules (amortized).
        raws (list): their raw parameter dicts, as from :meth:`FlowStack.raw_params`.

    Example:
        >>> stack = flow("planar", 3, num_flows=4, context_dim=5)
        >>> run = PlanarRun(list(stack), stack.raw_params(torch.randn(7, 5)))
        >>> x = torch.randn(7, 3)
        >>> y, ld = run.forward_and_log_det(x)
        >>> torch.allclose(run.inv(y.clone()), x, atol=1e-5), ld.shape
        (True, torch.Size([7]))
    """

    def __init__(self, layers, raws):
        super().__init__(layers[0].dim)
        self.layers, self.raws = list(layers), list(raws)
        self._layer_by_layer = None

    def _bound_layers(self):
        if self._layer_by_layer is None:
            self._layer_by_layer = [layer.bind(raw) for layer, raw in zip(self.layers, self.raws)]
        return self._layer_by_layer

    def forward_and_log_det(self, x):
        if not fused_planar_enabled() or torch.jit.is_tracing():
            return forward_layers(self._bound_layers(), x)
        u, w, b = (torch.stack(torch.broadcast_tensors(*[r[k] for r in self.raws])) for k in ("u", "w", "b"))
        if u.dtype != x.dtype or u.device != x.device:
            return forward_layers(self._bound_layers(), x)
        uhat, wu = planar_uhat(u, w)
        y, ladj = fused_planar(x, uhat, w, b, wu)
        if ladj.shape != x.shape[:-1]:
            ladj = ladj.expand(x.shape[:-1])
        return y, ladj

    def inverse_and_log_det(self, y):
        return inverse_layers(self._bound_layers(), y)


class _BoundStack(FlowTransform):
    def __init__(self, layers, dim):
        super().__init__(dim)
        self.layers = layers

    def _stamp(self):
        return tuple(layer._stamp() for layer in self.layers)

    forward_and_log_det = FlowStack.forward_and_log_det
    inverse_and_log_det = FlowStack.inverse_and_log_det


def flow(kind, dim, num_flows, context_dim=0, **opts):
    """Return a :class:`FlowStack` of ``num_flows`` layers of one family.

    Args:
        kind (str): one of ``"planar"``, ``"radial"``, ``"householder"``, ``"iaf"``,
            ``"sylvester"``, ``"coupling"``, or ``"none"`` (an empty stack: the identity).
        dim (int): event size.
        num_flows (int): number of layers.
        context_dim (int): 0 for owned parameters, ``> 0`` for amortized parameters.
        **opts: passed to every layer (e.g. ``hidden=(64,)``, ``kind="orthogonal"`` for Sylvester as
            ``sylvester_kind``); ``permutation="reverse"|"random"`` sets the order changes between
            IAF layers.

    The permutations a family needs are added here: IAF layers are separated by :class:`Permute`
    (reversal by default), coupling layers alternate their masks, and amortized Householder layers
    after the first are chained (``v_t = Linear(v_{t-1})``).

    Example:
        >>> stack = flow("iaf", 4, num_flows=2)
        >>> [type(layer).__name__ for layer in stack]
        ['IAF', 'Permute', 'IAF']
    """
    dim = check_dim("dim", dim)
    num_flows = check_dim("num_flows", num_flows, minimum=0)
    if kind == "none":
        return FlowStack([], dim=dim)
    if kind not in FAMILIES:
        raise ValueError(f"unknown flow kind {kind!r}; expected one of {sorted(FAMILIES) + ['none']}")
    permutation = opts.pop("permutation", "reverse")
    layers = []
    for i in range(num_flows):
        if kind == "iaf":
            if i > 0:
                layers.append(Permute(_permutation(permutation, dim)))
            layers.append(IAF(dim, context_dim=context_dim, **opts))
        elif kind == "coupling":
            layers.append(AffineCoupling(dim, context_dim=context_dim, parity=i % 2, **opts))
        elif kind == "sylvester":
            layers.append(Sylvester(dim, context_dim=context_dim, reverse=bool(i % 2), **opts))
        elif kind == "householder" and context_dim and i > 0:
            layers.append(Householder(dim, context_dim=dim, chained=True))
        else:
            layers.append(FAMILIES[kind](dim, context_dim=context_dim, **opts))
    return FlowStack(layers, dim=dim)


def _permutation(kind, dim):
    if kind == "reverse":
        return torch.arange(dim - 1, -1, -1)
    if kind == "random":
        return torch.randperm(dim)
    raise ValueError(f"permutation must be 'reverse' or 'random', got {kind!r}")
