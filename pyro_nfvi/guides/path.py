r"""Path-derivative log densities of the flow guides, without inverting the flow.

The estimators of :mod:`pyro_nfvi.objectives` (sticking the landing, DReG) need
:math:`\log q_{\bar\theta}(u_\theta)`: the guide's log density with its parameters held fixed
(:math:`\bar\theta`, stop-gradient) at a draw :math:`u_\theta = T_\theta(\varepsilon)` that keeps its
path to them.  Planar and radial layers have no inverse, so this module computes it from the draw
itself (in the spirit of Vaitl et al. 2022).  With ``lq`` the log density of the draw,
:math:`\log q(u) = \log p_0(\varepsilon) - \log|\det \partial T/\partial\varepsilon|`,

* :math:`g = \nabla_u \log q_{\bar\theta}(u)`: where every map has a closed form (the affine base,
  IAF, planar, Householder, sinh-arcsinh, permutations, the preconditioner) and the base is a
  Normal, the base's score (:func:`base_score`) is carried through the maps' Jacobian factors,
  :math:`a \leftarrow J_k^{-\top}(a - \nabla \log|\det J_k|)`, one structured solve each and no
  graph (``pyro_nfvi.transforms.jacobian.push_score``: a triangular solve for an IAF layer, a
  division for the elementwise maps); otherwise :math:`a = \partial\,lq / \partial\varepsilon` by a
  backward pass, :math:`J = \partial u / \partial\varepsilon` from the factors or ``D`` batched
  vector-Jacobian products, and :math:`g = J^{-\top} a` (one ``D x D`` solve per draw);
* the surrogate :math:`\mathrm{sg}(lq) + \langle u - \mathrm{sg}(u), \mathrm{sg}(g)\rangle`, whose value
  is ``log q`` and whose gradient w.r.t. every parameter is the path gradient
  :math:`\nabla_u \log q_{\bar\theta}(u)\, \partial u/\partial\theta`.

:class:`PathDerivative` wraps a guide's posterior of the packed latent with this ``log_prob``;
:func:`path_derivative` turns it on for one guide object for the duration of a ``with`` block (the
guides route their auxiliary site through :func:`path_posterior`, which returns the posterior
unchanged otherwise).  Cost per draw: the closed forms and one solve per map (or a backward pass,
``D`` more through the flow and an ``O(D^3)`` solve).  Without a backward pass the draw can be compiled by
``torch.jit`` tracing (:mod:`pyro_nfvi.objectives.jit`), which cannot record one through
composite operations such as ``linear``.

References: Roeder, Wu & Duvenaud, *Sticking the landing*, NeurIPS 2017; Tucker et al., *Doubly
reparameterized gradient estimators for Monte Carlo objectives*, ICLR 2019; Vaitl, Nicoli, Nakajima
& Kessel, *Gradients should stay on path*, NeurIPS 2022.
"""
from contextlib import contextmanager

import torch
from pyro.distributions import Normal, TorchDistribution, TransformedDistribution
from pyro.distributions.util import sum_rightmost

from ..transforms.jacobian import autograd_jacobian, chain_closed_forms, jacobian_factors, push_score
from .base import FlowGuide

__all__ = ["PathDerivative", "base_score", "check_flow_guide", "path_derivative", "path_posterior", "uses_path_derivative"]

_FLAG = "_path_derivative"


def _push(base, transforms, x):
    """``(T(x), log p0(x) - log|det dT/dx|, inputs)``: the log density per draw (event dims summed) and each transform's input."""
    lq = base.log_prob(x)
    y, inputs = x, []
    for t in transforms:
        inputs.append(y)
        z = t(y)
        ld = t.log_abs_det_jacobian(y, z)
        lq = lq - sum_rightmost(ld, ld.dim() - (z.dim() - 1))
        y = z
    return y, lq, inputs


class PathDerivative(TorchDistribution):
    r"""A reparameterised posterior whose ``log_prob`` of its own last draw has the path gradient only.

    Wraps a ``TransformedDistribution(base, transforms)`` (or a reparameterised distribution
    without transforms) with one event dim.  :meth:`rsample` draws :math:`u = T(x)`,
    :math:`x \sim` ``base``, and caches the surrogate :math:`\log q_{\bar\theta}(u)` (see the
    module docstring); :meth:`log_prob` returns it for that draw and the wrapped posterior's
    ``log_prob`` for any other value.  Every row of ``u`` must depend on its own row of ``x`` only
    (true of the flow families of this package).  ``expand`` (plates, vectorized particles)
    wraps the expanded posterior.  Without gradient recording it is the wrapped posterior.

    Args:
        posterior (torch.distributions.Distribution): the guide's posterior of the packed latent.

    Example:
        >>> import pyro.distributions as dist
        >>> loc = torch.zeros(2, requires_grad=True)
        >>> q = PathDerivative(dist.Normal(loc, 1.0).to_event(1))
        >>> u = q.rsample()
        >>> lq = q.log_prob(u)
        >>> bool(torch.allclose(lq, dist.Normal(0.0, 1.0).log_prob(u).sum(-1)))
        True
        >>> path = torch.autograd.grad(lq, loc)[0]  # the path term only: grad_u log q(u) * du/dloc
        >>> bool(torch.allclose(path, -(u - loc).detach()))
        True
        >>> torch.autograd.grad(q.posterior.log_prob(u), loc)[0]  # path + score terms cancel here
        tensor([0., 0.])
    """

    arg_constraints = {}
    has_rsample = True

    def __init__(self, posterior, validate_args=None):
        if isinstance(posterior, PathDerivative):
            posterior = posterior.posterior
        if not posterior.has_rsample:
            raise ValueError(f"PathDerivative needs a reparameterised posterior, got {type(posterior).__name__}")
        if len(posterior.event_shape) != 1:
            raise ValueError(f"PathDerivative needs one event dim, got event shape {tuple(posterior.event_shape)}")
        self.posterior = posterior
        self._draw = None
        super().__init__(posterior.batch_shape, posterior.event_shape, validate_args=False)

    @property
    def support(self):
        return self.posterior.support

    def expand(self, batch_shape, _instance=None):
        return PathDerivative(self.posterior.expand(batch_shape))

    def _parts(self):
        d = self.posterior
        if isinstance(d, torch.distributions.TransformedDistribution):
            return d.base_dist, list(d.transforms)
        return d, []

    def rsample(self, sample_shape=torch.Size()):
        if not torch.is_grad_enabled():
            self._draw = None
            return self.posterior.rsample(sample_shape)
        shape = self._extended_shape(sample_shape)
        base, transforms = self._parts()
        x = base.rsample(sample_shape)
        if not x.requires_grad:
            x = x.detach().requires_grad_()
        if x.shape != shape:
            x = x.expand(shape).clone()
        u, lq, inputs = _push(base, transforms, x)
        factors = jacobian_factors(transforms, inputs) if transforms else []
        score = base_score(base, x)
        if score is not None and factors is not None:
            # g from the score of the base, carried through the maps' closed forms one solve each: no backward pass
            g = push_score(factors, score)
        else:
            if torch.jit.is_tracing():
                raise NotImplementedError(
                    "the path derivative of this guide has no closed form (a map without one: radial, "
                    "Sylvester, coupling, decentering; or a base other than a Normal), and torch.jit tracing "
                    "cannot record the backward pass that replaces it; use the eager objective (jit=False) "
                    "or a guide whose maps have closed forms (iaf, planar, householder, none)"
                )
            (a,) = torch.autograd.grad(lq.sum(), x, retain_graph=True)
            if not transforms:
                g = a
            else:  # the factors' product, or D vector-Jacobian products for a map without a closed form
                jac = chain_closed_forms(factors)[0] if factors else autograd_jacobian(u, x)
                g = torch.linalg.solve(jac.transpose(-1, -2), a.unsqueeze(-1)).squeeze(-1)
        surrogate = lq.detach() + ((u - u.detach()) * g.detach()).sum(-1)
        self._draw = (u, surrogate)
        return u

    def log_prob(self, value):
        draw = self._draw
        if draw is not None and value is draw[0]:
            return draw[1]
        return self.posterior.log_prob(value)


def base_score(base, x):
    r""":math:`\nabla_x \log p_0(x)` in closed form for a Normal base (``Normal`` or ``Independent(Normal)``), no graph; else ``None``.

    Example:
        >>> import pyro.distributions as dist
        >>> base_score(dist.Normal(torch.zeros(2), 2.0).to_event(1), torch.tensor([1.0, -2.0]))
        tensor([-0.2500,  0.5000])
    """
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if type(base) not in (torch.distributions.Normal, Normal):
        return None
    with torch.no_grad():
        return -(x - base.loc) / base.scale.pow(2)


def _flow_guides(guide):
    return [m for m in guide.modules() if isinstance(m, FlowGuide)]


def check_flow_guide(guide, who="path_derivative"):
    """Raise a ``TypeError`` unless ``guide`` is one of this package's flow guides."""
    if not isinstance(guide, FlowGuide):
        raise TypeError(
            f"{who} supports the guides of pyro_nfvi (AutoFlowGuide, AmortizedFlowGuide), which can "
            f"compute log q with stopped parameters; got {type(guide).__name__}"
        )


@contextmanager
def path_derivative(guide):
    """Within the block, ``guide`` (and a guide nested in it) emits its packed latent from :class:`PathDerivative`.

    The switch is an attribute of the guide objects, restored on exit; nothing global changes.

    Args:
        guide (FlowGuide): an :class:`~pyro_nfvi.guides.AutoFlowGuide` or
            :class:`~pyro_nfvi.guides.AmortizedFlowGuide`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> model = lambda: pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=(), name="demo")
        >>> with path_derivative(guide):
        ...     tr = pyro.poutine.trace(guide).get_trace()
        >>> type(tr.nodes["_demo_latent"]["fn"]).__name__, uses_path_derivative(guide)
        ('PathDerivative', False)
    """
    check_flow_guide(guide)
    guides = _flow_guides(guide)
    old = [g.__dict__.get(_FLAG, False) for g in guides]
    for g in guides:
        g.__dict__[_FLAG] = True
    try:
        yield guide
    finally:
        for g, v in zip(guides, old):
            g.__dict__[_FLAG] = v


def uses_path_derivative(guide):
    """Whether ``guide`` is inside a :func:`path_derivative` block."""
    return bool(guide.__dict__.get(_FLAG, False))


def path_posterior(guide, posterior):
    """``PathDerivative(posterior)`` inside :func:`path_derivative` for ``guide``, else ``posterior`` itself.

    Example:
        >>> import pyro.distributions as dist
        >>> q = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> path_posterior(torch.nn.Module(), q) is q
        True
    """
    if guide.__dict__.get(_FLAG, False):
        return PathDerivative(posterior)
    return posterior
