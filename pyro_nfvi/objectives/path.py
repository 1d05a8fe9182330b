r"""Sticking the landing: the path-derivative ELBO gradient for the flow guides.

:class:`STL_ELBO` estimates the same ELBO as :class:`pyro.infer.Trace_ELBO` but differentiates
:math:`\log p(x, z_\theta) - \log q_{\bar\theta}(z_\theta)`, with :math:`\bar\theta` the guide's
parameters held fixed in ``log q`` while the draw :math:`z_\theta = T_\theta(\varepsilon)` keeps its
path.  The dropped score term :math:`\nabla_\theta \log q_\theta(z)` has zero expectation, so the
estimator is unbiased, and its variance vanishes when ``q`` equals the posterior.
"""
import torch
from pyro.infer import Trace_ELBO

from ..guides.path import check_flow_guide, path_derivative
from ..validation import check_int

__all__ = ["STL_ELBO"]


class STL_ELBO(Trace_ELBO):
    r"""The ELBO with the sticking-the-landing gradient,
    :math:`\nabla_\theta\, \mathbb E_\varepsilon[\log p(x, T_\theta(\varepsilon)) - \log q_{\bar\theta}(T_\theta(\varepsilon))]`.

    The loss value is ``Trace_ELBO``'s on the same draws (the surrogate of ``log q`` has its exact
    value); only the gradient of the guide's parameters differs.  Works with
    :class:`pyro.infer.SVI`, ``ELBOModule`` and :class:`~pyro_nfvi.guides.FastSVI` (through
    :meth:`differentiable_loss`), for :class:`~pyro_nfvi.guides.AutoFlowGuide` and
    :class:`~pyro_nfvi.guides.AmortizedFlowGuide` with every flow family; ``log q`` with stopped
    parameters comes from ``pyro_nfvi.guides.path.path_derivative``, which costs the flow's Jacobian
    (in closed form for IAF, planar, Householder, sinh-arcsinh and the affine maps; else ``D`` backward passes) and an
    ``O(D^3)`` solve per draw of the packed latent of size ``D``.  Any
    other guide raises a ``TypeError``.

    The variance is lower near the posterior (zero at it); far from it, e.g. a guide much narrower
    than the posterior at initialisation, it can be far higher than ``Trace_ELBO``'s
    (``benchmarks/results/estimators.md``): the score term then cancels noise of the path term.

    Reference: Roeder, Wu & Duvenaud, *Sticking the landing: simple, lower-variance gradient
    estimators for variational inference*, NeurIPS 2017.

    Args:
        num_particles (int): draws per estimate.
        vectorize_particles (bool): draw the particles as one leading batch dim.
        max_plate_nesting (int): as in :class:`pyro.infer.ELBO` (guessed if omitted).
        retain_graph (bool): as in :class:`pyro.infer.ELBO`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.tensor([1.0, -1.0]), 0.5).to_event(1))
        >>> guide = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=(), name="demo")
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), STL_ELBO(num_particles=4))
        >>> losses = [svi.step() for _ in range(300)]
        >>> bool((guide.median()["z"] - torch.tensor([1.0, -1.0])).abs().max() < 0.2)
        True
    """

    def __init__(self, num_particles=1, vectorize_particles=True, max_plate_nesting=float("inf"), retain_graph=None):
        super().__init__(
            num_particles=check_int("num_particles", num_particles),
            vectorize_particles=bool(vectorize_particles),
            max_plate_nesting=max_plate_nesting,
            retain_graph=retain_graph,
        )

    def loss(self, model, guide, *args, **kwargs):
        """The negative ELBO estimate (a float); no gradients are computed.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> from pyro_nfvi.guides import AutoFlowGuide
            >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
            >>> guide = AutoFlowGuide(model, flow="none", init_scale=1.0, name="stl_loss",
            ...                       init_loc_fn=lambda site: torch.tensor(0.0))
            >>> abs(STL_ELBO().loss(model, guide)) < 1e-6
            True
        """
        check_flow_guide(guide, type(self).__name__)
        with torch.no_grad():
            return super().loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a tensor whose gradient is the sticking-the-landing estimate.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> from pyro_nfvi.guides import AutoFlowGuide
            >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
            >>> guide = AutoFlowGuide(model, flow="none", init_scale=1.0, name="stl_grad",
            ...                       init_loc_fn=lambda site: torch.tensor(0.0))
            >>> loss = STL_ELBO().differentiable_loss(model, guide)
            >>> [float(g.abs().max()) for g in torch.autograd.grad(loss, [guide.loc, guide.scale_raw])]  # q = p
            [0.0, 0.0]
        """
        with path_derivative(guide):
            return super().differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Backpropagate the sticking-the-landing surrogate and return the loss (a float)."""
        with path_derivative(guide):
            return super().loss_and_grads(model, guide, *args, **kwargs)
