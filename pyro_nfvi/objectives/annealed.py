r"""Annealed and KL-constrained evidence lower bounds for :class:`pyro.infer.SVI`.

:class:`~pyro_nfvi.objectives.AnnealedELBO` re-weights the terms of the Monte Carlo ELBO that :class:`pyro.infer.Trace_ELBO`
would compute from the same guide trace and replayed model trace.  With ``log p`` the model's
(scaled, masked) log densities split into observed sites ``x`` and latent sites ``z``, and ``log q``
the guide's, the per-particle losses are

* ``"free_energy"`` (Rezende & Mohamed 2015, eq. 20):
  :math:`\log q(z) - \beta_t [\log p(x \mid z) + \log p(z)]`;
* ``"kl_warmup"`` (Bowman et al. 2016; Sønderby et al. 2016):
  :math:`-\log p(x \mid z) - \beta_t [\log p(z) - \log q(z)]`;
* ``"free_bits"`` (Kingma et al. 2016, "minimum information constraint"):
  :math:`-\log p(x \mid z) + \sum_j \max(\lambda\, n_j, \widehat{KL}_j)` over KL groups ``j``
  (see :class:`~pyro_nfvi.objectives.AnnealedELBO`).

``beta_t = schedule(t)`` where ``t`` counts completed :meth:`AnnealedELBO.loss_and_grads` calls
(i.e. ``svi.step`` calls); :meth:`~AnnealedELBO.loss` and :meth:`~AnnealedELBO.differentiable_loss`
never advance it.
"""
import math

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import MultiFrameTensor, get_plate_stacks, is_validation_enabled, torch_item
from pyro.util import check_if_enumerated, warn_if_nan

from .schedules import linear_warmup, rezende_mohamed

__all__ = ["AnnealedELBO", "MODES"]

#: The objectives :class:`~pyro_nfvi.objectives.AnnealedELBO` implements.
MODES = ("free_energy", "kl_warmup", "free_bits")


def _elementwise_log_prob(fn, value):
    """``(log_prob per scalar element, number of event dims)`` when ``fn`` factorises, else ``None``.

    ``fn`` factorises over its event elements when, after unwrapping ``Independent``, its base
    distribution has an empty event shape (Normal, LogNormal, Delta with ``event_dim=0``, ...).
    """
    base, n_event = fn, 0
    while isinstance(base, torch.distributions.Independent):
        n_event += base.reinterpreted_batch_ndims
        base = base.base_dist
    if tuple(base.event_shape) != ():
        return None
    return base.log_prob(value), n_event


def _weights_like(tensor, site, n_event):
    """``scale * mask`` of ``site`` broadcast to ``tensor`` (whose last ``n_event`` dims are event dims)."""
    mask = site["mask"]
    if isinstance(mask, torch.Tensor) and n_event:
        mask = mask.reshape(mask.shape + (1,) * n_event)
    return scale_and_mask(torch.ones_like(tensor), site["scale"], mask)


def _plate_dims(site, ndim, n_event):
    """Tensor dims (negative) of the vectorized plates of ``site`` for a tensor with ``n_event`` event dims."""
    dims = [frame.dim - n_event for frame in site["cond_indep_stack"] if frame.vectorized]
    for d in dims:
        if -d > ndim:
            raise ValueError(
                f"site '{site['name']}': plate dim {d + n_event} does not exist in its log_prob of "
                f"{ndim - n_event} batch dims; declare the plate's dim consistently"
            )
    return dims


def _event_numel(site):
    value = site["value"]
    event_dim = site["fn"].event_dim
    return int(math.prod(value.shape[value.dim() - event_dim:])) if event_dim else 1


class AnnealedELBO(ELBO):
    r"""An annealed / KL-constrained ELBO usable as the ``loss`` of :class:`pyro.infer.SVI`.

    Modes (``x``: observed sites, ``z``: latent sites, all log densities include Pyro's subsample
    ``scale`` and ``mask``; one particle shown, particles are averaged):

    * ``"free_energy"``: loss :math:`= \log q(z) - \beta_t \log p(x, z)`, the annealed free energy of
      Rezende & Mohamed (2015, eq. 20).  Default schedule :func:`~pyro_nfvi.objectives.rezende_mohamed`
      (:math:`\beta_t = \min(1, 0.01 + t/10^4)`).
    * ``"kl_warmup"``: loss :math:`= -\log p(x \mid z) - \beta_t (\log p(z) - \log q(z))`; the
      schedule is :func:`~pyro_nfvi.objectives.linear_warmup` over ``warmup_steps`` (or any ``schedule``).
    * ``"free_bits"``: loss :math:`= -\log p(x \mid z) + \sum_j \max(\lambda n_j w_j, \widehat{KL}_j)`,
      the minimum-information constraint of Kingma et al. (2016, appendix), where the KL of every
      latent dimension is floored at ``lambda = free_bits`` nats.  What is computed:

      - a KL *group* ``j`` is one element of a latent site's shape outside its vectorized plates;
        ``\widehat{KL}_j`` is the Monte Carlo estimate of :math:`\log q - \log p` summed (with
        the sites' scale and mask) over the plate dims -- i.e. over the minibatch, as in Kingma et al.
        -- and averaged over particles, and ``w_j`` is the matching sum of ``scale * mask`` (the
        effective number of data points, ``N`` for a subsampled plate of full size ``N``).  The max
        is taken after that average, so the floor acts on the minibatch KL, not on each point;
      - a site is split per *event element* (``n_j = 1``) only when both its prior and its guide
        distribution factorise over the event (``Independent`` of a scalar distribution such as
        ``Normal(...).to_event(1)`` in ``AutoNormal``): then
        :math:`\mathbb{E}_q[\log q_i - \log p_i] = KL(q_i \| p_i)` exactly.  Otherwise (flows,
        full-covariance guides) the whole event is one group with ``n_j`` = its number of elements,
        i.e. the floor :math:`\lambda n_j` is the per-dimension floor summed over the site;
      - if the guide has sites the model lacks (auxiliary sites, e.g. ``AutoContinuous``' joint
        latent), the KL does not split by site and a single joint group is floored at the sum of
        all sites' floors.

    Args:
        elbo (pyro.infer.Trace_ELBO): supplies ``num_particles``, ``vectorize_particles``,
            ``max_plate_nesting`` and ``retain_graph`` (default ``Trace_ELBO()``).  Only its settings
            are used: the terms are recomputed here (TraceMeanField's analytic KL and JIT are not used).
        schedule (callable): ``t -> beta_t`` (annealing modes only).
        mode (str): one of :data:`~pyro_nfvi.objectives.MODES`.
        warmup_steps (int): shortcut for ``schedule=linear_warmup(warmup_steps)``.
        free_bits (float): the floor ``lambda`` in nats per latent dimension (``"free_bits"`` only).

    Guide sites without ``rsample`` get the score-function term of ``Trace_ELBO`` with the
    weighted cost (annealing modes); ``"free_bits"`` requires reparameterised guide sites.

    References: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015;
    Kingma et al., *Improved Variational Inference with Inverse Autoregressive Flow*, NeurIPS 2016;
    Sønderby et al., *Ladder Variational Autoencoders*, NeurIPS 2016.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer import SVI
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model(x):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> pyro.clear_param_store()
        >>> loss = AnnealedELBO(mode="kl_warmup", warmup_steps=4)
        >>> svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}), loss)
        >>> for _ in range(2):
        ...     _ = svi.step(torch.tensor(0.5))
        >>> loss.t, loss.beta
        (2, 0.5)
    """

    def __init__(self, elbo=None, schedule=None, mode="free_energy", warmup_steps=None, free_bits=None):
        elbo = Trace_ELBO() if elbo is None else elbo
        if not isinstance(elbo, Trace_ELBO):
            raise TypeError(f"AnnealedELBO: elbo must be a pyro.infer.Trace_ELBO, got {type(elbo).__name__}")
        if mode not in MODES:
            raise ValueError(f"AnnealedELBO: mode must be one of {MODES}, got {mode!r}")
        super().__init__(
            num_particles=elbo.num_particles,
            vectorize_particles=elbo.vectorize_particles,
            strict_enumeration_warning=elbo.strict_enumeration_warning,
            ignore_jit_warnings=elbo.ignore_jit_warnings,
            jit_options=elbo.jit_options,
            retain_graph=elbo.retain_graph,
        )
        self.max_plate_nesting = elbo.max_plate_nesting  # already includes the particle plate
        self.elbo = elbo
        self.mode = mode
        self.free_bits = None
        if mode == "free_bits":
            if schedule is not None or warmup_steps is not None:
                raise ValueError("AnnealedELBO: mode='free_bits' takes no schedule= or warmup_steps=")
            if free_bits is None or not float(free_bits) > 0:
                raise ValueError(f"AnnealedELBO: mode='free_bits' needs free_bits=lambda > 0, got {free_bits}")
            self.free_bits = float(free_bits)
        else:
            if free_bits is not None:
                raise ValueError(f"AnnealedELBO: free_bits= is only used with mode='free_bits', not {mode!r}")
            if schedule is not None and warmup_steps is not None:
                raise ValueError("AnnealedELBO: give either schedule= or warmup_steps=, not both")
            if warmup_steps is not None:
                schedule = linear_warmup(warmup_steps)
            elif schedule is None:
                if mode == "kl_warmup":
                    raise ValueError("AnnealedELBO: mode='kl_warmup' needs warmup_steps= or schedule=")
                schedule = rezende_mohamed
            if not callable(schedule):
                raise TypeError(f"AnnealedELBO: schedule must be callable t -> beta, got {type(schedule).__name__}")
        self.schedule = schedule
        #: Number of completed optimisation steps (``loss_and_grads`` calls).
        self.t = 0

    @property
    def beta(self):
        """The current inverse temperature ``schedule(t)`` (``1.0`` in ``"free_bits"`` mode).

        Example:
            >>> AnnealedELBO().beta  # rezende_mohamed at t = 0
            0.01
        """
        if self.schedule is None:
            return 1.0
        beta = float(self.schedule(self.t))
        if not (beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"AnnealedELBO: schedule({self.t}) = {beta} is not a finite number >= 0")
        return beta

    def advance(self, n=1):
        """Advance the step counter by ``n`` (for hand-written loops around :meth:`differentiable_loss`).

        Example:
            >>> elbo = AnnealedELBO(mode="kl_warmup", warmup_steps=10)
            >>> elbo.advance(5)
            >>> elbo.beta
            0.5
        """
        self.t += int(n)

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    # --- annealing modes -------------------------------------------------------------------------
    def _coefficients(self, beta):
        """Weights ``(observed, latent prior, guide)`` of the log densities in the ELBO."""
        if self.mode == "free_energy":
            return beta, beta, 1.0
        return 1.0, beta, beta

    def _weighted_particle(self, model_trace, guide_trace, beta):
        """``(elbo, surrogate elbo)`` of one particle, with the mode's weights (cf. ``Trace_ELBO``)."""
        c_obs, c_lat, c_q = self._coefficients(beta)
        elbo = 0.0
        surrogate = 0.0
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                c = c_obs if site["is_observed"] else c_lat
                elbo = elbo + c * torch_item(site["log_prob_sum"])
                surrogate = surrogate + c * site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                elbo = elbo - c_q * torch_item(site["log_prob_sum"])
                if not is_identically_zero(entropy_term):
                    surrogate = surrogate - c_q * entropy_term.sum()
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = self._weighted_log_r(model_trace, guide_trace, c_obs, c_lat, c_q)
                    cost = log_r.sum_to(site["cond_indep_stack"])
                    surrogate = surrogate + (cost * score_function_term).sum()
        return elbo, surrogate

    @staticmethod
    def _weighted_log_r(model_trace, guide_trace, c_obs, c_lat, c_q):
        log_r = MultiFrameTensor()
        stacks = get_plate_stacks(model_trace)
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                term = c_obs * site["log_prob"]
            else:
                term = c_lat * site["log_prob"]
                if name in guide_trace.nodes:
                    term = term - c_q * guide_trace.nodes[name]["log_prob"]
            log_r.add((stacks[name], term.detach()))
        return log_r

    # --- free bits ---------------------------------------------------------------------------------
    def _free_bits_particle(self, model_trace, guide_trace, acc):
        """Add one trace's reconstruction term and KL group sums to ``acc``."""
        model_latent = {
            name: site
            for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["fn"].has_rsample:
                raise ValueError(f"AnnealedELBO(mode='free_bits'): guide site '{name}' is not reparameterised")
        for site in model_trace.nodes.values():
            if site["type"] == "sample" and site["is_observed"]:
                acc["rec"] = acc["rec"] + site["log_prob_sum"]
        guide_only = [
            name
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and name not in model_latent
        ]
        if guide_only:  # the KL does not split by site: one joint group
            kl = sum(guide_trace.nodes[n]["log_prob_sum"] for n in guide_only)
            floor_w = 0.0
            for name, msite in model_latent.items():
                kl = kl - msite["log_prob_sum"]
                if name in guide_trace.nodes:
                    kl = kl + guide_trace.nodes[name]["log_prob_sum"]
                w = _weights_like(msite["log_prob"], msite, 0)
                floor_w = floor_w + _event_numel(msite) * w.sum()
            self._accumulate(acc, "_joint_", kl, floor_w)
            return
        for name, msite in model_latent.items():
            gsite = guide_trace.nodes.get(name)
            value = msite["value"]
            lp_el = _elementwise_log_prob(msite["fn"], value)
            lq_el = None if gsite is None else _elementwise_log_prob(gsite["fn"], value)
            factorised = (
                lp_el is not None
                and (gsite is None or (lq_el is not None and lq_el[1] == lp_el[1]))
            )
            if factorised:
                n_event, n_dims = lp_el[1], 1
                lp = lp_el[0]
                lq = None if gsite is None else lq_el[0]
            else:
                n_event, n_dims = 0, _event_numel(msite)
                lp = msite["fn"].log_prob(value)
                lq = None if gsite is None else gsite["fn"].log_prob(value)
            shape = lp.shape if lq is None else torch.broadcast_shapes(lp.shape, lq.shape)
            w_p = _weights_like(lp.expand(shape), msite, n_event)
            kl = -w_p * lp
            if lq is not None:
                kl = kl + _weights_like(lq.expand(shape), gsite, n_event) * lq
            dims = _plate_dims(msite, kl.dim(), n_event)
            if dims:
                kl, w_p = kl.sum(dims), w_p.sum(dims)
            self._accumulate(acc, name, kl, n_dims * w_p)

    @staticmethod
    def _accumulate(acc, key, kl, floor_w):
        if key in acc["groups"]:
            old_kl, old_w = acc["groups"][key]
            acc["groups"][key] = (old_kl + kl, old_w + floor_w)
        else:
            acc["groups"][key] = (kl, floor_w)

    def _free_bits_loss(self, traces):
        acc = {"rec": 0.0, "groups": {}}
        for model_trace, guide_trace in traces:
            self._free_bits_particle(model_trace, guide_trace, acc)
        n = self.num_particles
        loss = -acc["rec"] / n
        for kl, floor_w in acc["groups"].values():
            kl = kl / n
            floor = self.free_bits * floor_w / n
            if not isinstance(floor, torch.Tensor):
                floor = torch.as_tensor(floor, dtype=kl.dtype, device=kl.device)
            loss = loss + torch.maximum(kl, floor.to(kl.dtype)).sum()
        return loss

    # --- the ELBO interface -----------------------------------------------------------------------
    def _loss_and_surrogate(self, model, guide, args, kwargs):
        """``(loss, surrogate loss)`` averaged over particles; no backward, no counter change."""
        traces = self._get_traces(model, guide, args, kwargs)
        if self.mode == "free_bits":
            surrogate = self._free_bits_loss(traces)
            return torch_item(surrogate), surrogate
        beta = self.beta
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in traces:
            elbo, surr = self._weighted_particle(model_trace, guide_trace, beta)
            loss = loss - elbo / self.num_particles
            surrogate = surrogate - surr / self.num_particles
        return loss, surrogate

    def loss(self, model, guide, *args, **kwargs):
        """The weighted loss estimate (a float).  Does not advance the step counter.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
            >>> guide = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
            >>> AnnealedELBO(mode="free_energy").loss(model, guide) <= 10.0
            True
        """
        loss, _ = self._loss_and_surrogate(model, guide, args, kwargs)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The weighted loss as a differentiable tensor (surrogate gradients); does not advance ``t``.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
            >>> guide = lambda: pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.3)), 1.0))
            >>> AnnealedELBO(free_bits=0.1, mode="free_bits").differentiable_loss(model, guide).requires_grad
            True
        """
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs)
        if not isinstance(surrogate, torch.Tensor):
            return torch.as_tensor(loss)
        warn_if_nan(surrogate, "loss")
        return surrogate + (loss - torch_item(surrogate))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Compute the loss, backpropagate the surrogate, then advance the step counter by one.

        :class:`pyro.infer.SVI` calls this exactly once per ``svi.step``.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
            >>> guide = lambda: pyro.sample("z", dist.Normal(pyro.param("m2", torch.tensor(0.3)), 1.0))
            >>> elbo = AnnealedELBO()
            >>> _ = elbo.loss_and_grads(model, guide)
            >>> elbo.t
            1
        """
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs)
        if isinstance(surrogate, torch.Tensor) and surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        self.t += 1
        return loss
