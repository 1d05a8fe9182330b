"""Runs of flow layers: the one place that splits a list of layers and picks how each part runs.

A stack of layers is applied part by part.  ``plan_layers`` is the single dispatch point: it
splits the layers (each with its raw per-point parameters, or ``None`` for owned ones) into maximal
runs of two or more consecutive planar layers, each becoming one :class:`PlanarRun` (parameters
stacked and constrained once by ``pyro_nfvi.transforms.fused.planar_run_params``, applied by
``pyro_nfvi.transforms.fused.fused_planar``, which itself chooses between its fused node and
the layer-by-layer maths), and single layers, bound to their raw parameters where they have them.
:func:`split_runs` is the run detection itself, shared with the batched hypernetwork heads of
:meth:`~pyro_nfvi.transforms.stack.FlowStack.raw_params`.

Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015 (planar
flows).
"""
import torch

from .base import ConditionedFlow, FlowTransform
from .jacobian import chain_closed_forms
from .fused import fused_planar, planar_run_params
from .planar import Planar

__all__ = [
    "PlanarRun",
    "compose_factors",
    "compose_forward",
    "compose_inverse",
    "compose_jacobian",
    "bind_layers",
    "forward_layers",
    "inverse_layers",
    "plan_layers",
    "split_runs",
]


def split_runs(flags, minimum=2):
    """Split ``range(len(flags))`` into maximal runs of ``>= minimum`` consecutive true flags and singles.

    Args:
        flags (sequence of bool): whether each item may join a run.
        minimum (int): the shortest run; shorter stretches of true flags are left as singles.

    Returns:
        list: ``(start, stop, is_run)`` triples covering every index once, in order.

    Example:
        >>> split_runs([True, True, False, True, True, True, True])
        [(0, 2, True), (2, 3, False), (3, 7, True)]
        >>> split_runs([True, False, True])
        [(0, 1, False), (1, 2, False), (2, 3, False)]
    """
    parts, i, n = [], 0, len(flags)
    while i < n:
        j = i
        while j < n and flags[j]:
            j += 1
        if j - i >= minimum:
            parts.append((i, j, True))
            i = j
        else:
            parts.append((i, i + 1, False))
            i += 1
    return parts


def _as_planar(layer, raw):
    """``(Planar module, raw or None)`` if the layer can join a planar run, else ``None``."""
    if type(layer) is ConditionedFlow and type(layer.module) is Planar and raw is None:
        return layer.module, layer.raw
    if type(layer) is Planar and (raw is not None or layer.context_dim == 0):
        return layer, raw
    return None


class PlanarRun(FlowTransform):
    """Consecutive planar layers, owned or bound to raw per-point parameters, applied as one run.

    The raw ``u, w, b`` of the ``K`` layers are stacked and constrained once
    (``pyro_nfvi.transforms.fused.planar_run_params``), then applied by
    ``pyro_nfvi.transforms.fused.fused_planar``; the inverse goes layer by layer.  Equivalent
    to applying each layer (bound with ``layer.bind(raw)`` where it has a raw entry) in turn, with
    fewer operations.  Built by ``plan_layers``.

    Args:
        layers (list): ``Planar`` modules (or ``ConditionedFlow`` objects of one, taken as the
            module and its ``raw``).
        raws (list or None): per layer, its raw parameter dict (as from ``layer.raw_params(context)``)
            or ``None`` for a layer that owns its parameters.

    Example:
        >>> from pyro_nfvi.transforms import flow
        >>> stack = flow("planar", 3, num_flows=4, context_dim=5)
        >>> run = PlanarRun(list(stack), stack.raw_params(torch.randn(7, 5)))
        >>> x = torch.randn(7, 3)
        >>> y, ld = run.forward_and_log_det(x)
        >>> torch.allclose(run.inv(y.clone()), x, atol=1e-5), ld.shape
        (True, torch.Size([7]))
    """

    def __init__(self, layers, raws=None):
        layers = list(layers)
        raws = [None] * len(layers) if raws is None else list(raws)
        pairs = [_as_planar(layer, raw) for layer, raw in zip(layers, raws)]
        if not layers or len(raws) != len(layers) or any(p is None for p in pairs):
            raise ValueError(
                "PlanarRun needs a non-empty list of Planar layers, each owned (raw None) or with its raw "
                f"parameters, got {[type(l).__name__ for l in layers]} with {len(raws)} raw entries"
            )
        super().__init__(layers[0].dim)
        self.layers, self.raws = [p[0] for p in pairs], [p[1] for p in pairs]
        layers, raws = self.layers, self.raws
        batches = [layer.raw_batch_shape(raw) for layer, raw in zip(layers, raws) if raw is not None]
        if batches:
            same = all(b == batches[0] for b in batches)
            self.param_batch_shape = batches[0] if same else torch.broadcast_shapes(*batches)

    def _stamp(self):
        return tuple(layer._stamp() for layer, raw in zip(self.layers, self.raws) if raw is None)

    def forward_and_log_det(self, x):
        return fused_planar(x, *planar_run_params(self.layers, self.raws))

    def inverse_and_log_det(self, y):
        return inverse_layers(self.layers, y, self.raws)

    def forward_and_jacobian(self, x):
        return compose_jacobian(bind_layers(self.layers, self.raws), x)

    def jacobian_factors(self, x):
        return compose_factors(bind_layers(self.layers, self.raws), x)


def plan_layers(layers, raws=None):
    """Split ``layers`` into runs and decide how each part runs: the one dispatch point of a stack.

    Every maximal run of two or more consecutive planar layers -- owned (``Planar(dim)``), bound to a
    raw entry, or already bound (a ``ConditionedFlow`` of a ``Planar``) -- becomes one
    :class:`PlanarRun`; every other layer is kept as it is (owned) or bound to its raw parameters
    (``layer.bind(raw)``).  Composing the returned transforms in order is the stack.

    Args:
        layers (sequence): flow transforms (modules or bound transforms).
        raws (sequence or None): per layer, ``None`` or the raw parameters to bind it to.

    Returns:
        list: transforms with ``forward_and_log_det``.

    Example:
        >>> from pyro_nfvi.transforms import Radial
        >>> [type(t).__name__ for t in plan_layers([Planar(2), Planar(2), Radial(2), Planar(2)])]
        ['PlanarRun', 'Radial', 'Planar']
    """
    layers = list(layers)
    raws = [None] * len(layers) if raws is None else list(raws)
    planar = [_as_planar(layer, raw) for layer, raw in zip(layers, raws)]
    steps = []
    for start, stop, is_run in split_runs([p is not None for p in planar]):
        if is_run:
            modules, run_raws = zip(*planar[start:stop])
            steps.append(PlanarRun(modules, run_raws))
        else:
            layer, raw = layers[start], raws[start]
            steps.append(layer if raw is None else layer.bind(raw))
    return steps


def forward_layers(layers, x, raws=None):
    """``forward_and_log_det`` of the composition of ``layers`` (first layer applied first).

    The layers are split by ``plan_layers``, so runs of planar layers go through the fused
    kernel.

    Args:
        layers (sequence): flow transforms with ``forward_and_log_det``.
        x (Tensor): input ``(..., D)``.
        raws (sequence or None): per layer, ``None`` or raw parameters to bind it to.

    Returns:
        tuple: ``(y, log|det J|)`` with shapes ``(..., D)`` and ``(...)``.

    Example:
        >>> layers = [Planar(2) for _ in range(3)]
        >>> y, ld = forward_layers(layers, torch.randn(5, 2))
        >>> y.shape, ld.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """
    return compose_forward(plan_layers(layers, raws), x)


def inverse_layers(layers, y, raws=None):
    """``inverse_and_log_det`` of the composition of ``layers`` (last layer inverted first).

    Inverses are not fused: each layer (bound to its raw parameters, if given) is inverted in turn.

    Example:
        >>> layers = [Planar(2) for _ in range(3)]
        >>> y, ld = forward_layers(layers, torch.randn(5, 2))
        >>> x, ld_inv = inverse_layers(layers, y)
        >>> torch.allclose(ld_inv, ld, atol=1e-5)
        True
    """
    return compose_inverse(bind_layers(layers, raws), y)


def bind_layers(layers, raws=None):
    """Each layer bound to its raw parameters (``layer.bind(raw)``), or as it is where ``raws`` has ``None`` (or is ``None``)."""
    raws = [None] * len(layers) if raws is None else list(raws)
    return [layer if raw is None else layer.bind(raw) for layer, raw in zip(layers, raws)]


def compose_forward(transforms, x):
    """Apply ``transforms`` in order; return ``(y, summed log|det J|)`` (``0`` for none)."""
    total = None
    for transform in transforms:
        x, ladj = transform.forward_and_log_det(x)
        total = ladj if total is None else total + ladj
    if total is None:
        return x, x.new_zeros(x.shape[:-1])
    if not torch.jit.is_tracing() and total.shape != x.shape[:-1]:
        total = total.expand(x.shape[:-1])
    return x, total


def compose_factors(transforms, x):
    r"""``(y, factors)``: ``transforms`` applied in order to ``x`` and the Jacobian factors of each (first applied first).

    Each transform contributes its ``jacobian_factors`` (one ``(J_k, g_k, structure_k)`` for a layer,
    one per layer for a stack); ``None`` if a transform has no closed form.  No graph.
    """
    factors = []
    with torch.no_grad():
        for transform in transforms:
            out = transform.jacobian_factors(x)
            if out is None:
                return None
            x = out[0]
            factors.extend(out[1])
    return x, factors


def compose_jacobian(transforms, x):
    r"""``(y, J, g)``: ``transforms`` applied in order to ``x``, their Jacobian ``(..., D, D)`` and ``g = d log|det J| / dx``.

    From the closed forms: :math:`J = J_K \cdots J_1` and
    :math:`g = \sum_k (J_{k-1} \cdots J_1)^\top g_k`, with :math:`g_k` the gradient of layer ``k``'s
    log-determinant at its input.  ``None`` if a transform has no closed form
    (``forward_and_jacobian`` returns ``None``); for no transforms, ``(x, I, 0)``.  No graph.
    """
    out = compose_factors(transforms, x)
    if out is None:
        return None
    y, factors = out
    if not factors:
        eye = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)
        return y, eye.expand(y.shape + y.shape[-1:]), y.new_zeros(y.shape)
    return (y,) + chain_closed_forms(factors)


def compose_inverse(transforms, y):
    """Invert ``transforms`` (last first); return ``(x, summed log|det J|)`` of the forward map."""
    total = y.new_zeros(y.shape[:-1])
    for transform in reversed(transforms):
        y, ladj = transform.inverse_and_log_det(y)
        total = total + ladj
    return y, total
