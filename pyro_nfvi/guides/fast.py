"""The fast training path: Pyro's ``ELBOModule`` plus one torch optimizer, with module-local params.

Pyro's :class:`~pyro.infer.SVI` with a ``pyro.optim`` optimizer keeps one torch optimizer per
parameter and looks every parameter up in the global param store on every step; for a VAE most
of its overhead is that bookkeeping, not tracing.  The fast path removes it:

.. code-block:: python

    pyro.settings.set(module_local_params=True)        # before building model and guide
    model = MyModel()                                  # a PyroModule / nn.Module holding its nets
    guide = AmortizedFlowGuide(model, plate="data", model_args=(x,))
    loss_fn = pyro.infer.Trace_ELBO()(model, guide)    # an ELBOModule
    optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-3, fused=True)  # one fused kernel for all tensors
    for x in batches:
        optim.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optim.step()

:class:`FastSVI` packages exactly this loop.  The flow guides of :mod:`pyro_nfvi.guides` keep all
their weights as module parameters, so they work unchanged in this mode.  The model's networks
must be submodules of the model object (a ``PyroModule`` or ``nn.Module`` whose ``forward`` is the
model), not ``pyro.module``/``pyro.param`` statements, so ``loss_fn.parameters()`` sees them.

Reference: Bingham et al., *Pyro: Deep Universal Probabilistic Programming*, JMLR 2019
(``pyro.infer.ELBOModule`` and ``module_local_params``).
"""
import pyro
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO
from pyro.nn.module import PyroModule

from ..validation import check_int, check_positive
from .checkpoint import load_checkpoint, save_checkpoint
from .guard import DEFAULT_MAX_SKIPS, NonFiniteGuard

__all__ = ["FastSVI", "check_module_local_contexts", "fit_fast", "fused_adam"]


def fused_adam(params, lr):
    """``torch.optim.Adam`` with the fused kernel where this torch build has it (one kernel for all tensors).

    On CPU it is about 2.5 times faster than the ``foreach`` form for the 110,000 parameters of a
    4-layer IAF guide of 55 dimensions (0.26 against 0.68 ms per step).

    Example:
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> optim = fused_adam([w], lr=0.1)
        >>> w.grad = torch.ones(3)
        >>> optim.step()
        >>> [round(v, 4) for v in w.tolist()]
        [0.9, 0.9, 0.9]
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def check_module_local_contexts(*modules):
    """Refuse a ``PyroModule`` built before ``pyro.settings.set(module_local_params=True)``.

    With module-local params each ``PyroModule`` keeps its parameters in a state it creates when it
    is built; one built before the setting would silently keep reading the global param store.
    Does nothing when the setting is off.  Used by :class:`FastSVI` and by
    :class:`pyro_nfvi.lightning.SVIModule`.

    Args:
        *modules: the model and the guide (objects that are not ``nn.Module`` are skipped).

    Raises:
        ValueError: naming the class of the first module built too early.

    Example:
        >>> from pyro.nn import PyroModule
        >>> early = PyroModule[torch.nn.Linear](2, 2)
        >>> with pyro.settings.context(module_local_params=True):
        ...     check_module_local_contexts(PyroModule[torch.nn.Linear](2, 2))  # built in time: fine
        ...     check_module_local_contexts(early)
        Traceback (most recent call last):
        ...
        ValueError: PyroLinear was built before pyro.settings.set(module_local_params=True); set it first, then build the model and the guide
    """
    if not pyro.settings.get("module_local_params"):
        return
    for top in modules:
        if not isinstance(top, torch.nn.Module):
            continue
        for m in top.modules():
            if isinstance(m, PyroModule) and not hasattr(m._pyro_context, "param_state"):
                raise ValueError(
                    f"{type(m).__name__} was built before pyro.settings.set(module_local_params=True); "
                    "set it first, then build the model and the guide"
                )


class FastSVI:
    """One training step = ``zero_grad``; ``loss = ELBOModule(*args)``; ``backward``; ``step``.

    A drop-in for :class:`pyro.infer.SVI` (``step``, ``evaluate_loss``) that optimizes
    ``loss(model, guide).parameters()`` with a single torch optimizer.  Call
    ``pyro.settings.set(module_local_params=True)`` *before* building the model and the guide for
    the full speed-up (Pyro then skips the global param store); it also runs without that setting.
    The optimizer is created at the first :meth:`step`, after the call that builds any lazily
    created parameters (a guide built without ``model_args``).

    Reference: Bingham et al., *Pyro: Deep Universal Probabilistic Programming*, JMLR 2019.

    Args:
        model (callable): the model; an ``nn.Module`` if it has parameters of its own.
        guide (nn.Module): the guide, e.g. :class:`~pyro_nfvi.guides.AutoFlowGuide`.
        loss (pyro.infer.ELBO): the objective (default ``Trace_ELBO()``).
        optimizer (callable): ``optimizer(params) -> torch.optim.Optimizer``; default Adam with ``lr`` (``fused=True`` where available).
        lr (float): learning rate of the default Adam.
        clip_norm (float or None): clip the global gradient norm before each update.
        max_skips (int or None): a step whose loss or a gradient is NaN/inf is skipped (parameters
            and optimizer state unchanged); after this many consecutive skips a
            ``FloatingPointError`` names the step, the parameter and its flow layer
            (``pyro_nfvi.guides.guard.NonFiniteGuard``).  ``None`` never raises.
        guard (bool): ``False`` turns the check off (every step is applied, as before).

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> with pyro.settings.context(module_local_params=True):
        ...     guide = AutoFlowGuide(model, flow="planar", num_flows=2)
        ...     svi = FastSVI(model, guide, lr=0.01)
        ...     losses = [svi.step() for _ in range(3)]
        >>> len(losses), all(isinstance(l, float) for l in losses)
        (3, True)
    """

    def __init__(self, model, guide, loss=None, optimizer=None, lr=1e-3, clip_norm=None,
                 max_skips=DEFAULT_MAX_SKIPS, guard=True):
        lr = check_positive("lr", lr)
        if clip_norm is not None:
            clip_norm = check_positive("clip_norm", clip_norm)
        if optimizer is not None and not callable(optimizer):
            raise TypeError("optimizer must be a callable params -> torch.optim.Optimizer")
        check_module_local_contexts(model, guide)
        self.model, self.guide = model, guide
        self.loss = Trace_ELBO() if loss is None else loss
        if isinstance(self.loss, JitTrace_ELBO) and pyro.settings.get("module_local_params"):
            raise ValueError(
                "JitTrace_ELBO reads parameters from Pyro's global param store and does not work with "
                "module_local_params=True; use Trace_ELBO (or the standard SVI for JIT)"
            )
        self.loss_fn = self.loss(model, guide)
        self._make_optimizer = optimizer or (lambda params: fused_adam(params, lr))
        self.optimizer = None
        self.clip_norm = clip_norm
        if not isinstance(guard, bool):
            raise TypeError(f"guard must be True or False, got {guard!r}")
        self.guard = NonFiniteGuard(max_skips, module=self.loss_fn) if guard else None
        self._named = None
        #: Number of completed :meth:`step` calls (saved and restored by :meth:`save`/:meth:`load`).
        self.num_steps = 0

    def parameters(self):
        """The parameters being optimized (those of the model and guide modules)."""
        return [p for p in self.loss_fn.parameters() if p.requires_grad]

    def step(self, *args, **kwargs):
        """Take one gradient step on a fresh ELBO estimate; return the loss as a float.

        An objective with a step counter (``advance()``, e.g. :class:`~pyro_nfvi.objectives.AnnealedELBO`)
        is advanced once per step, as ``SVI.step`` does through ``loss_and_grads``.  A step whose
        loss or a gradient is not finite is skipped (see ``max_skips``); the loss is still returned.
        """
        loss = self.loss_fn(*args, **kwargs)
        self.make_optimizer()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.guard is not None and not self.guard.check(loss.detach(), self._named):
            self.optimizer.zero_grad(set_to_none=True)  # skipped: parameters and state untouched
        else:
            self._update()
        advance = getattr(self.loss, "advance", None)
        if callable(advance):
            advance()  # as SVI, whose objective advances whether or not the step is applied
        self.num_steps += 1
        return loss.item()

    def make_optimizer(self):
        """Create the optimizer now if it does not exist yet (the first :meth:`step` does it otherwise).

        Needs the guide's parameters, i.e. a guide set up with ``model_args`` or called once.
        Returns the optimizer.
        """
        if self.optimizer is None:
            params = self.parameters()
            if not params:
                raise ValueError(
                    "FastSVI found no parameters in the model and guide modules; build the guide with "
                    "model_args=(...) or take a step first"
                )
            self.optimizer = self._make_optimizer(params)
            self._named = [(n, p) for n, p in self.loss_fn.named_parameters() if p.requires_grad]
        return self.optimizer

    def save(self, path, extra=None):
        """Checkpoint the run to ``path`` atomically (:func:`~pyro_nfvi.guides.save_checkpoint`).

        Saves the guide, the model (if an ``nn.Module``), the optimizer, the objective's step
        counter, the guard's counters, :attr:`num_steps`, the RNG states and ``extra``.

        Example:
            >>> import os, tempfile
            >>> import pyro.distributions as dist
            >>> from pyro_nfvi.guides import AutoFlowGuide
            >>> def model():
            ...     pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
            >>> with pyro.settings.context(module_local_params=True):
            ...     svi = FastSVI(model, AutoFlowGuide(model, flow="iaf", num_flows=1, model_args=()))
            ...     _ = svi.step()
            ...     svi.save(path)
            ...     next_loss = svi.step()
            ...     resumed = FastSVI(model, AutoFlowGuide(model, flow="iaf", num_flows=1, model_args=()))
            ...     step = resumed.load(path)["step"]
            ...     step, resumed.step() == next_loss
            (1, True)
        """
        optimizer = self.optimizer if self.optimizer is not None else self.make_optimizer()
        save_checkpoint(path, guide=self.guide, model=self.model, optimizer=optimizer, objective=self.loss,
                        guard=self.guard, step=self.num_steps, extra=extra)

    def load(self, path, restore_rng=True):
        """Restore a checkpoint written by :meth:`save` into this (freshly built) ``FastSVI``.

        Returns the dict of :func:`~pyro_nfvi.guides.load_checkpoint` (``step``, ``extra``).
        """
        out = load_checkpoint(path, guide=self.guide, model=self.model, optimizer=self.make_optimizer(),
                              objective=self.loss, guard=self.guard, restore_rng=restore_rng)
        self.num_steps = out["step"]
        return out

    def _update(self):
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.clip_norm)
        self.optimizer.step()

    @torch.no_grad()
    def evaluate_loss(self, *args, **kwargs):
        """The loss (negative ELBO estimate) without a gradient step."""
        return self.loss_fn(*args, **kwargs).item()


def fit_fast(model, guide, *args, num_steps=1000, loss=None, lr=1e-3, optimizer=None, callback=None, **kwargs):
    """Run ``num_steps`` steps of :class:`FastSVI` on fixed arguments; return the list of losses.

    Args:
        model, guide: as for :class:`FastSVI`.
        *args: the model's arguments, the same at every step.
        **kwargs: keyword arguments, as ``*args``.
        num_steps (int): number of steps.
        loss (pyro.infer.ELBO): the objective (default ``Trace_ELBO()``).
        lr (float): learning rate of the default Adam.
        optimizer (callable): ``optimizer(params) -> torch.optim.Optimizer``.
        callback (callable): ``callback(step, loss)`` after every step.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> def model():
        ...     pyro.sample("z", dist.Normal(3.0, 1.0))
        >>> guide = AutoFlowGuide(model, flow="none")
        >>> losses = fit_fast(model, guide, num_steps=300, lr=0.05)
        >>> bool(abs(guide.median()["z"] - 3.0) < 0.5)
        True
    """
    num_steps = check_int("num_steps", num_steps, minimum=0)
    svi = FastSVI(model, guide, loss=loss, optimizer=optimizer, lr=lr)
    losses = []
    for step in range(num_steps):
        value = svi.step(*args, **kwargs)
        losses.append(value)
        if callback is not None:
            callback(step, value)
    return losses
