r"""Compiled forms of the path-derivative objectives: :class:`JitIW_ELBO` and :class:`JitSTL_ELBO`.

What Pyro's :class:`~pyro.infer.JitTrace_ELBO` is to :class:`~pyro.infer.Trace_ELBO`: the
differentiable loss is traced once with ``pyro.ops.jit.trace`` (``torch.jit`` tracing, the
parameters passed in as inputs) and replayed as one compiled graph, without Pyro's tracing and the
guide's Python overhead at every step.  The path derivative (``pyro_nfvi.guides.path``) needs no
backward pass inside the loss where every map of the guide has a closed-form Jacobian (IAF, planar,
Householder, sinh-arcsinh, the affine base): the base's score is pushed through the maps' Jacobian
factors, plain tensor operations that ``torch.jit.trace`` records, so the compiled graph computes the
same estimate (the tests compare the gradients with the eager objective's on the same draws).  A
guide with a map without one (radial, Sylvester, coupling, decentering) would need
``torch.autograd.grad`` inside the loss, which tracing cannot record through composite operations:
it is refused with a ``NotImplementedError``.  On the 10-dimensional eight schools of
``benchmarks/bayes.py`` a DReG step of 8 particles falls from about 13 to 4-5 ms.

The restrictions are those of ``JitTrace_ELBO``: the model and guide must have a static structure
(no Python branching on sampled values or data), tensors enter through ``*args``, anything else
through ``**kwargs`` (one compilation per distinct value), and every parameter must exist after the
first call.  ``loss`` (no gradients) stays eager.

By default the compiled graph runs in TorchScript's plain interpreter
(``torch.jit.optimized_execution(False)`` around each call; ``optimized_execution=True`` to change
it): the profiling executor's fusion and symbolic
differentiation made a DReG step slower, not faster (on the 55-dimensional hierarchical regression
13 against 9 ms, after a first optimising pass of about a second).

Reference: Bingham et al., *Pyro: Deep Universal Probabilistic Programming*, JMLR 2019 (``pyro.ops.jit``).
"""
import pyro.ops.jit
import torch
from pyro.infer import JitTrace_ELBO

from ..guides.path import path_derivative
from .iw import IW_ELBO
from .path import STL_ELBO

__all__ = ["CompiledLoss", "JitIW_ELBO", "JitSTL_ELBO"]


class CompiledLoss:
    """``differentiable_loss(model, guide, *args, **kwargs)`` compiled once per model, guide and keyword values.

    Args:
        loss (callable): ``(model, guide, *args, **kwargs) -> Tensor``, the eager differentiable loss.
        ignore_warnings (bool): silence ``torch.jit``'s ``TracerWarning`` s while compiling.
        jit_options (dict): options for ``torch.jit.trace`` (``check_trace`` defaults to ``False``).
        optimized_execution (bool): run under TorchScript's optimising (profiling) executor.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import Trace_ELBO
        >>> from pyro.infer.autoguide import AutoNormal
        >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> guide = AutoNormal(model)
        >>> compiled = CompiledLoss(Trace_ELBO().differentiable_loss, ignore_warnings=True)
        >>> loss = compiled(model, guide)
        >>> loss.shape, len(compiled.compiled)
        (torch.Size([]), 1)
    """

    def __init__(self, loss, ignore_warnings=False, jit_options=None, optimized_execution=False):
        self.loss = loss
        self.optimized_execution = optimized_execution
        self.ignore_warnings = ignore_warnings
        self.jit_options = jit_options
        # (id(model), id(guide)) -> pyro.ops.jit.CompiledFunction; its closure holds both, so the ids stay theirs
        self.compiled = {}

    def __call__(self, model, guide, *args, **kwargs):
        key = (id(model), id(guide))
        if key not in self.compiled:
            loss = self.loss

            def traced(*args, **kwargs):
                return loss(model, guide, *args, **kwargs)

            options = None if self.jit_options is None else dict(self.jit_options)
            self.compiled[key] = pyro.ops.jit.trace(traced, ignore_warnings=self.ignore_warnings, jit_options=options)
        with torch.jit.optimized_execution(self.optimized_execution):
            return self.compiled[key](*args, **kwargs)


class JitIW_ELBO(IW_ELBO):
    r""":class:`~pyro_nfvi.objectives.IW_ELBO` with its differentiable loss compiled by ``pyro.ops.jit.trace``.

    The same bound :math:`\log \frac1M \sum_i w_i` and the same DReG (or IWAE) gradient; see the
    module docstring for the restrictions.

    Args:
        ignore_jit_warnings (bool): silence ``torch.jit``'s ``TracerWarning`` s.
        jit_options (dict): options for ``torch.jit.trace``.
        optimized_execution (bool): run under TorchScript's optimising (profiling) executor.
        **kwargs: :class:`~pyro_nfvi.objectives.IW_ELBO`'s arguments.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import SVI
        >>> from pyro.optim import Adam
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.tensor([1.0, -1.0]), 0.5).to_event(1))
        >>> guide = AutoFlowGuide(model, flow="iaf", num_flows=2, name="jit_iw")
        >>> svi = SVI(model, guide, Adam({"lr": 0.02}), JitIW_ELBO(num_particles=8, ignore_jit_warnings=True))
        >>> losses = [svi.step() for _ in range(300)]
        >>> bool((guide.median()["z"] - torch.tensor([1.0, -1.0])).abs().max() < 0.2)
        True
    """

    def __init__(self, *args, ignore_jit_warnings=False, jit_options=None, optimized_execution=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._compiled = CompiledLoss(super().differentiable_loss, ignore_jit_warnings, jit_options, optimized_execution)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The compiled :meth:`IW_ELBO.differentiable_loss <pyro_nfvi.objectives.IW_ELBO.differentiable_loss>`."""
        self._check(guide)
        return self._compiled(model, guide, *args, **kwargs)


class JitSTL_ELBO(STL_ELBO, JitTrace_ELBO):
    r""":class:`~pyro_nfvi.objectives.STL_ELBO` compiled as Pyro's :class:`~pyro.infer.JitTrace_ELBO` compiles ``Trace_ELBO``.

    The same ELBO and the same sticking-the-landing gradient: ``JitTrace_ELBO``'s compiled loss,
    traced inside ``STL_ELBO``'s path-derivative block.  See the module docstring for the
    restrictions (and ``JitTrace_ELBO``'s: one model and guide per instance).

    Args:
        ignore_jit_warnings, jit_options, optimized_execution: as for :class:`JitIW_ELBO`.
        **kwargs: :class:`~pyro_nfvi.objectives.STL_ELBO`'s arguments.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> guide = AutoFlowGuide(model, flow="none", init_scale=1.0, name="jit_stl",
        ...                       init_loc_fn=lambda site: torch.tensor(0.0))
        >>> loss = JitSTL_ELBO(num_particles=4, ignore_jit_warnings=True).differentiable_loss(model, guide)
        >>> [float(g.abs().max()) for g in torch.autograd.grad(loss, [guide.loc, guide.scale_raw])]  # q = p
        [0.0, 0.0]
    """

    def __init__(self, *args, ignore_jit_warnings=False, jit_options=None, optimized_execution=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.ignore_jit_warnings = ignore_jit_warnings
        self.jit_options = jit_options
        self.optimized_execution = optimized_execution

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a tensor whose gradient is the sticking-the-landing estimate (compiled).

        Built from ``JitTrace_ELBO.loss_and_surrogate_loss``: Pyro 1.9's own
        ``JitTrace_ELBO.differentiable_loss`` adds the undetached loss to the surrogate, which
        doubles the gradient of every reparameterised site.
        """
        with path_derivative(guide), torch.jit.optimized_execution(self.optimized_execution):
            loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate - surrogate.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Backpropagate the compiled sticking-the-landing surrogate and return the loss (a float)."""
        with torch.jit.optimized_execution(self.optimized_execution):
            return super().loss_and_grads(model, guide, *args, **kwargs)
