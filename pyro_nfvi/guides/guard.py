"""A non-finite guard: skip an optimizer step whose loss or gradients are NaN/inf, and stop a fit
that keeps producing them, naming the parameter and the flow layer where it happened.

NumPyro's ``stable_update`` keeps the previous state when an update is not finite; this module
does the same for torch/Pyro optimizers:

* :class:`NonFiniteGuard` checks the loss and every gradient before a step.  A non-finite value
  means *skip*: the caller leaves the parameters and the optimizer state untouched.  After
  ``max_skips`` consecutive skips it raises a ``FloatingPointError`` naming the step, the first
  parameter whose gradient is not finite and, for a parameter of a flow layer, the layer
  (``flow_stack.layers.3.weight`` -> ``layer 3 (IAF)``).  :class:`~pyro_nfvi.guides.FastSVI` uses it.
* :class:`GuardedOptim` wraps a Pyro optimizer (``pyro.optim.ClippedAdam(...)`` and the like) for
  plain :class:`pyro.infer.SVI`: ``SVI.step`` computes the loss and the gradients first and then
  calls the optimizer with the parameters, so the wrapper sees the gradients and skips the call.
"""
import re
import warnings

import pyro
import torch
from pyro.optim import PyroOptim

from ..transforms import FlowStack
from ..validation import check_int

__all__ = ["NonFiniteGuard", "GuardedOptim", "describe_parameter", "DEFAULT_MAX_SKIPS"]

#: Default number of consecutive skipped steps after which the guard raises.
DEFAULT_MAX_SKIPS = 10

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def describe_parameter(name, module=None):
    """``name``, followed by the flow layer it belongs to when there is one.

    ``name`` is a parameter name as from ``module.named_parameters()`` or from Pyro's param store
    (``"AutoFlowGuide.flow_stack$$$layers.3.weight"``).  The layer index is read from the first
    ``layers.<i>`` in the name; with ``module`` given, the layer's family comes from the
    :class:`~pyro_nfvi.transforms.FlowStack` it lies in (and a ``layers.<i>`` outside any flow
    stack is not reported as a layer).

    Args:
        name (str): the parameter's name.
        module (torch.nn.Module or None): a module holding the parameter (e.g. the guide).

    Example:
        >>> from pyro_nfvi.transforms import flow
        >>> class Guide(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.flow_stack = flow("iaf", 2, 2)
        >>> describe_parameter("flow_stack.layers.2.arn.layers.0.weight", Guide())
        "'flow_stack.layers.2.arn.layers.0.weight' (flow layer 2 (IAF))"
        >>> describe_parameter("loc")
        "'loc'"
    """
    normal = name.replace("$$$", ".")
    match = _LAYER.search(normal)
    if match is None:
        return repr(name)
    index = int(match.group(1))
    if module is None:
        return f"{name!r} (layer {index})"
    prefix = normal[: match.start()]
    for path, sub in module.named_modules():
        if isinstance(sub, FlowStack) and (prefix == path or prefix.endswith("." + path) or not path):
            if index < len(sub.layers):
                return f"{name!r} (flow layer {index} ({type(sub.layers[index]).__name__}))"
    return repr(name)  # "layers.<i>" of some other network


class NonFiniteGuard:
    """Checks the loss and the gradients before each optimizer step; stops a run of bad steps.

    Call :meth:`check` after ``backward()`` and before ``optimizer.step()``: it returns ``True``
    when the loss and every gradient are finite (take the step) and ``False`` when the step must be
    skipped (leave the parameters and the optimizer untouched, as NumPyro's ``stable_update``).  The
    first skip warns once.  After ``max_skips`` consecutive skips it raises a ``FloatingPointError``.

    Args:
        max_skips (int or None): consecutive skips allowed before raising (``>= 1``); ``None``
            never raises (steps are still skipped).
        module (torch.nn.Module or None): the module holding the parameters (e.g. the guide, or
            FastSVI's ``ELBOModule``), used to name a flow layer's family in the error.

    Attributes:
        step (int): the number of checks so far (the step being checked is ``step``, from 1).
        skipped (int): the total number of skipped steps.
        consecutive (int): the current run of skipped steps.
        last_reason (str or None): what made the last skipped step non-finite (the parameter and
            its flow layer, or the loss); ``None`` before any skip.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> guard = NonFiniteGuard(max_skips=2)
        >>> w.grad = torch.tensor([0.5, float("nan")])
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     guard.check(torch.tensor(1.0), [("w", w)])
        False
        >>> guard.check(torch.tensor(1.0), [("w", w)])
        Traceback (most recent call last):
            ...
        FloatingPointError: step 2: 2 consecutive steps with a non-finite loss or gradient ...
    """

    def __init__(self, max_skips=DEFAULT_MAX_SKIPS, module=None):
        self.max_skips = None if max_skips is None else check_int("max_skips", max_skips, minimum=1)
        self.module = module
        self.step = 0
        self.skipped = 0
        self.consecutive = 0
        self.last_reason = None
        self._warned = False

    def check(self, loss, named_params):
        """Return whether the step may be taken; raise after ``max_skips`` consecutive skips.

        Args:
            loss (Tensor or float or None): the loss of this step (``None``: gradients only).
            named_params (iterable): ``(name, parameter)`` pairs; parameters without ``.grad`` are
                ignored.
        """
        self.step += 1
        named = [(n, p.grad) for n, p in named_params if p.grad is not None]
        # the common case in one check: a NaN or inf element makes its tensor's sum non-finite
        sums = [g.sum() for _, g in named]
        if loss is not None:
            sums.append(torch.as_tensor(loss).sum())
        if not sums or bool(torch.isfinite(torch.stack([s.to(sums[0].dtype) for s in sums])).all()):
            self.consecutive = 0
            return True
        finite = [torch.isfinite(g).all() for _, g in named]
        if loss is not None:
            finite.append(torch.isfinite(torch.as_tensor(loss)).all())
        if bool(torch.stack(finite).all()):  # every element finite, only a sum overflowed
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        bad = next((n for (n, g), ok in zip(named, finite) if not bool(ok)), None)
        where = (
            f"the gradient of {describe_parameter(bad, self.module)} is the first that is not finite"
            if bad is not None
            else "the loss is not finite (the gradients are)"
        )
        self.last_reason = where
        if self.max_skips is not None and self.consecutive >= self.max_skips:
            raise FloatingPointError(
                f"step {self.step}: {self.consecutive} consecutive steps with a non-finite loss or "
                f"gradient were skipped; {where}. Lower the learning rate, clip the gradients "
                "(clip_norm), or check the model's log density for NaN/inf at these values"
            )
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"step {self.step} skipped: {where}; the parameters are left unchanged "
                f"(further skips are silent; the guard raises after {self.max_skips} in a row)",
                RuntimeWarning,
                stacklevel=3,
            )
        return False


class GuardedOptim(PyroOptim):
    """A Pyro optimizer that skips steps with non-finite gradients, for plain :class:`pyro.infer.SVI`.

    ``SVI.step`` computes the loss and its gradients, then calls the optimizer with the parameters,
    then zeroes their gradients.  This wrapper checks the gradients first (:class:`NonFiniteGuard`):
    if one is not finite the wrapped optimizer is not called, so the parameters and its state
    (e.g. Adam's moments) are unchanged; after ``max_skips`` consecutive skips it raises a
    ``FloatingPointError`` naming the parameter (as in Pyro's param store) and its flow layer.
    Everything else (``get_state``, ``set_state``, ``save``, ``load``) is the wrapped optimizer's.

    Args:
        optim (pyro.optim.PyroOptim): the optimizer to guard, e.g. ``pyro.optim.ClippedAdam(...)``.
        max_skips (int or None): as for :class:`NonFiniteGuard`.
        module (torch.nn.Module or None): the guide (or model), to name a flow layer's family.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlowGuide(model, flow="planar", num_flows=2)
        >>> optim = GuardedOptim(pyro.optim.ClippedAdam({"lr": 0.01}), max_skips=10, module=guide)
        >>> svi = SVI(model, guide, optim, Trace_ELBO())
        >>> all(isinstance(svi.step(), float) for _ in range(3)), optim.guard.skipped
        (True, 0)
    """

    def __init__(self, optim, max_skips=DEFAULT_MAX_SKIPS, module=None):
        # a PyroOptim so that SVI accepts it; the wrapped optimizer does the work (no base __init__)
        if not isinstance(optim, PyroOptim):
            raise TypeError(
                f"GuardedOptim wraps a Pyro optimizer (e.g. pyro.optim.ClippedAdam({{'lr': 1e-3}})), "
                f"got {type(optim).__name__}"
            )
        self.optim = optim
        self.guard = NonFiniteGuard(max_skips, module=module)

    def __call__(self, params, *args, **kwargs):
        params = list(params)  # SVI passes a set: put it in the param store's order
        store = pyro.get_param_store()
        order = {name: i for i, name in enumerate(store.keys())}
        named = []
        for p in params:
            name = store.param_name(p)
            named.append((name if name is not None else f"<parameter of shape {tuple(p.shape)}>", p))
        named.sort(key=lambda item: order.get(item[0], len(order)))
        if self.guard.check(None, named):
            self.optim(params, *args, **kwargs)

    def get_state(self):
        """The wrapped optimizer's state."""
        return self.optim.get_state()

    def set_state(self, state_dict):
        """Set the wrapped optimizer's state."""
        self.optim.set_state(state_dict)

    def save(self, filename):
        """Save the wrapped optimizer's state."""
        self.optim.save(filename)

    def load(self, filename, map_location=None):
        """Load the wrapped optimizer's state."""
        self.optim.load(filename, map_location=map_location)

    def __getattr__(self, name):
        if name in ("optim", "guard"):
            raise AttributeError(name)
        return getattr(self.optim, name)
