r"""The importance-weighted ELBO with the doubly reparameterised (DReG) or the plain IWAE gradient.

With ``M`` particles :math:`z_i = T_\phi(\varepsilon_i)` and :math:`\log w_i = \log p_\theta(x, z_i) - \log q_\phi(z_i)`,
the bound is :math:`\log \frac1M \sum_i w_i`.  Its reparameterised (IWAE) gradient is
:math:`\sum_i \tilde w_i \nabla \log w_i` (:math:`\tilde w` the normalised weights).  DReG keeps this
for the model's parameters and uses, for the guide's,
:math:`\sum_i \tilde w_i^2\, \partial \log w_i/\partial z_i\; \partial z_i/\partial\phi` with
``log q`` under stopped parameters: unbiased, and its variance does not blow up with ``M``.

One differentiable scalar gives both (needed by ``differentiable_loss`` / ``ELBOModule``): with
:math:`\log w_i` computed under ``pyro_nfvi.guides.path.path_derivative`` and :math:`u_i` the
guide's packed latent draws (their path reaches only the guide's parameters),

.. math:: \sum_i \mathrm{sg}(\tilde w_i) \log w_i + \sum_i \big\langle \mathrm{sg}\big((\tilde w_i^2 - \tilde w_i)\,
          \partial \log w_i / \partial u_i\big),\, u_i \big\rangle .

The second sum takes a backward pass of its own.  When the model has no parameters (and every guide
site is a path-derivative draw or a ``Delta`` of one), the parameters reach :math:`\log w_i` only
through :math:`u_i` and the surrogate is Tucker et al.'s :math:`\sum_i \mathrm{sg}(\tilde w_i^2) \log w_i`,
with one backward pass and the same gradient.
"""
import math

import torch
from pyro.distributions import Delta
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.util import check_if_enumerated, warn_if_nan
from torch.distributions import Independent

from ..guides.path import PathDerivative, check_flow_guide, path_derivative
from ..validation import check_choice, check_int

__all__ = ["GRADIENTS", "IW_ELBO"]

#: The gradient estimators :class:`IW_ELBO` offers.
GRADIENTS = ("dreg", "iwae")


def _reduce(t, ndim, keep):
    """Sum ``t`` (batch dims right-aligned to ``ndim`` plate dims) over every dim not in ``keep``, keeping dims."""
    if t.dim() < ndim:
        t = t.reshape((1,) * (ndim - t.dim()) + tuple(t.shape))
    dims = [d for d in range(-t.dim(), 0) if d not in keep]
    return t.sum(dims, keepdim=True) if dims else t


def _path_only(model_trace, guide_trace):
    """Whether the model has no parameters and every guide sample site is a path-derivative draw or a ``Delta``."""
    if any(site["type"] == "param" for site in model_trace.nodes.values()):
        return False
    for site in guide_trace.nodes.values():
        if site["type"] != "sample":
            continue
        fn = site["fn"]
        while isinstance(fn, Independent):
            fn = fn.base_dist
        if not isinstance(fn, (PathDerivative, Delta)):
            return False
    return True


class IW_ELBO(ELBO):
    r"""The importance-weighted bound :math:`\mathbb E\big[\log \frac1M \sum_{i=1}^M p(x, z_i)/q(z_i)\big]`
    with the DReG (default) or the plain IWAE gradient.

    The loss value is that of :class:`pyro.infer.RenyiELBO` with ``alpha=0`` on the same draws.
    By default the weights are over the whole trace (every site of the model and the guide);
    ``plate="data"`` splits them per data point of that plate (a VAE with an amortized guide:
    :math:`\sum_b \log \frac1M \sum_i w_{ib}`, the subsampling scale applied outside the ``log``);
    then every sample site must lie inside that plate.  (Pyro's ``RenyiELBO`` also splits the weights
    along plates that hold *every* site; ``plate=None`` here never does.)  Near the posterior the
    DReG guide gradient has orders of magnitude less variance than IWAE's; far from it (a guide
    much narrower than the posterior) it can have more (``benchmarks/results/estimators.md``).
    ``gradient="dreg" needs one of this
    package's guides (:class:`~pyro_nfvi.guides.AutoFlowGuide`,
    :class:`~pyro_nfvi.guides.AmortizedFlowGuide`; any other raises a ``TypeError``) and costs, per
    draw of the packed latent of size ``D``, the flow's Jacobian (in closed form for IAF, planar, Householder, sinh-arcsinh and
    the affine maps; else ``D`` backward passes) and an ``O(D^3)`` solve.

    Reference: Burda, Grosse & Salakhutdinov, *Importance weighted autoencoders*, ICLR 2016;
    Tucker, Lawson, Gu & Maddison, *Doubly reparameterized gradient estimators for Monte Carlo
    objectives*, ICLR 2019.

    Args:
        num_particles (int): ``M``, the importance samples per estimate.
        gradient (str): ``"dreg"`` or ``"iwae"``.
        plate (str or None): name of the plate to weight per data point (default: the whole trace).
        vectorize_particles (bool): draw the particles as one leading batch dim.
        max_plate_nesting (int): as in :class:`pyro.infer.ELBO` (guessed if omitted).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.tensor([1.0, -1.0]), 0.5).to_event(1))
        >>> guide = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=(), name="demo")
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), IW_ELBO(num_particles=8))
        >>> losses = [svi.step() for _ in range(300)]
        >>> bool((guide.median()["z"] - torch.tensor([1.0, -1.0])).abs().max() < 0.2)
        True
    """

    def __init__(self, num_particles=10, gradient="dreg", plate=None, vectorize_particles=True,
                 max_plate_nesting=float("inf")):
        if plate is not None and not isinstance(plate, str):
            raise TypeError(f"plate must be the name of a pyro.plate (a str) or None, got {plate!r}")
        self.gradient = check_choice("gradient", gradient, GRADIENTS)
        self.plate = plate
        super().__init__(
            num_particles=check_int("num_particles", num_particles),
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=bool(vectorize_particles),
        )

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    # -- log weights ----------------------------------------------------------------------------
    def _plate_dim(self, traces):
        frames = {}
        for trace in traces:
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    for f in site["cond_indep_stack"]:
                        frames.setdefault(f.name, f)
        if self.plate not in frames:
            names = sorted(n for n in frames if n != "num_particles_vectorized")
            raise ValueError(f"IW_ELBO: the model has no plate named {self.plate!r}; its plates are {names}")
        if not frames[self.plate].vectorized:
            raise ValueError(f"IW_ELBO: plate {self.plate!r} must be a vectorized pyro.plate")
        return frames[self.plate].dim

    def _log_weights(self, model_trace, guide_trace):
        """``(log w, scale)``: log weights with every plate dim (size 1 where summed) and the plate's scale."""
        sites = [
            (sign, site)
            for sign, trace in ((1.0, model_trace), (-1.0, guide_trace))
            for site in trace.nodes.values()
            if site["type"] == "sample"
        ]
        dims = [f.dim for _, s in sites for f in s["cond_indep_stack"] if f.vectorized]
        ndim = -min(dims) if dims else 0
        keep = {-ndim} if self.vectorize_particles and self.num_particles > 1 else set()
        scale = 1.0
        if self.plate is not None:
            keep.add(self._plate_dim((model_trace, guide_trace)))
            scales = set()
            for _, site in sorted(sites, key=lambda pair: pair[0]):  # guide sites first
                if not any(f.name == self.plate for f in site["cond_indep_stack"]):
                    where = "guide" if any(s is site for s in guide_trace.nodes.values()) else "model"
                    raise ValueError(
                        f"IW_ELBO(plate={self.plate!r}): the {where} site {site['name']!r} lies outside "
                        f"plate {self.plate!r}, so its log density cannot be split per data point; use "
                        "plate=None (weights over the whole trace)"
                    )
                scales.add(float(site["scale"]))
            if len(scales) > 1:
                raise ValueError(f"IW_ELBO(plate={self.plate!r}): the sites have different scales {sorted(scales)}")
            scale = scales.pop() if scales else 1.0
        lw = 0.0
        for sign, site in sites:
            lp = site["log_prob"]
            if self.plate is not None and scale != 1.0:
                lp = lp / scale  # unscaled (and masked): the scale applies outside the log-mean-exp
            if torch.is_tensor(lp):
                lw = lw + sign * _reduce(lp, ndim, keep)
        return lw, scale

    def _particles(self, model, guide, args, kwargs):
        """``(log w with the particles in dim 0, scale, [per-particle list of path-derivative draws], path_only)``.

        ``path_only``: the model has no parameters and every guide site is a path-derivative draw or
        a ``Delta`` of one, so the weights reach trainable parameters only through the draws.
        """
        lws, draws, scale, path_only = [], [], 1.0, True
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            lw, scale = self._log_weights(model_trace, guide_trace)
            if not torch.is_tensor(lw):
                raise ValueError("IW_ELBO: the model and guide have no sample sites")
            lws.append(lw)
            draws.append([
                site["value"] for site in guide_trace.nodes.values()
                if site["type"] == "sample" and isinstance(site["fn"], PathDerivative) and site["value"].requires_grad
            ])
            path_only = path_only and _path_only(model_trace, guide_trace)
        if self.vectorize_particles and self.num_particles > 1:
            return lws[0], scale, draws, path_only
        return torch.stack(lws), scale, draws, path_only

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        lw, scale, draws, path_only = self._particles(model, guide, args, kwargs)
        log_mean = torch.logsumexp(lw.detach(), 0) - math.log(self.num_particles)
        loss = -scale * log_mean.sum()
        if not lw.requires_grad:
            return loss, None
        w = torch.softmax(lw.detach(), 0)
        us = [u for particle in draws for u in particle]
        if self.gradient == "dreg" and us and path_only:
            # every trainable parameter reaches log w through the draws only: sum_i sg(w_i^2) log w_i
            # has the DReG gradient in one backward pass (Tucker et al.'s own form)
            return loss, -scale * (w * w * lw).sum()
        surrogate = scale * (w * lw).sum()
        if self.gradient == "dreg" and us:
            grads = torch.autograd.grad(lw.sum(), us, retain_graph=True, allow_unused=True)
            coef = scale * (w * w - w)
            it = iter(grads)
            for i, particle in enumerate(draws):
                c = coef if len(draws) == 1 else coef[i]
                for u in particle:
                    g = next(it)
                    if g is None:
                        continue
                    ci = c
                    while ci.dim() > u.dim() - 1 and ci.shape[0] == 1:
                        ci = ci.squeeze(0)
                    if ci.dim() > u.dim() - 1:
                        raise ValueError(f"IW_ELBO: cannot align weights of shape {tuple(c.shape)} with a draw "
                                         f"of shape {tuple(u.shape)}")
                    surrogate = surrogate + ((ci.unsqueeze(-1) * g).detach() * u).sum()
        return loss, -surrogate

    # -- the ELBO interface ---------------------------------------------------------------------
    def _check(self, guide):
        if self.gradient == "dreg":
            check_flow_guide(guide, f"IW_ELBO(gradient={self.gradient!r})")

    def loss(self, model, guide, *args, **kwargs):
        """The negative importance-weighted bound estimate (a float); no gradients are computed.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> from pyro_nfvi.guides import AutoFlowGuide
            >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
            >>> guide = AutoFlowGuide(model, flow="none", init_scale=1.0, name="iw_loss",
            ...                       init_loc_fn=lambda site: torch.tensor(0.0))
            >>> abs(IW_ELBO().loss(model, guide)) < 1e-6
            True
        """
        self._check(guide)
        with torch.no_grad():
            loss, _ = self._loss_and_surrogate(model, guide, args, kwargs)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a tensor whose gradient is the DReG (or IWAE) estimate.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> from pyro_nfvi.guides import AutoFlowGuide
            >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
            >>> guide = AutoFlowGuide(model, flow="none", init_scale=1.0, name="iw_grad",
            ...                       init_loc_fn=lambda site: torch.tensor(0.0))
            >>> loss = IW_ELBO(num_particles=5).differentiable_loss(model, guide)
            >>> [float(g.abs().max()) for g in torch.autograd.grad(loss, [guide.loc, guide.scale_raw])]  # q = p
            [0.0, 0.0]
        """
        self._check(guide)
        if self.gradient == "dreg":
            with path_derivative(guide):
                loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs)
        else:
            loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs)
        if surrogate is None:
            return loss
        warn_if_nan(surrogate, "loss")
        return loss + (surrogate - surrogate.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Backpropagate the surrogate of :meth:`differentiable_loss` and return the loss (a float)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss
