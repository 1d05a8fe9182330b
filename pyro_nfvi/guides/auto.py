"""AutoFlowGuide: a normalizing-flow posterior over every latent site of a Pyro model."""
import math

import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.guides import AutoGuide
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions.transforms import AffineTransform, ComposeTransform

from ..nn.encoders import inverse_softplus
from ..transforms.stack import FAMILIES, flow as build_flow
from ._util import ParamStoreSync, SitePacker, SiteSpec, is_enumerated, latent_sites, own_attr, setup_eagerly

__all__ = ["AutoFlowGuide", "check_flow_kind"]


def check_flow_kind(kind, argument="flow"):
    """Return ``kind`` if it names a flow family (or ``"none"``), else raise a ``ValueError``."""
    if kind != "none" and kind not in FAMILIES:
        raise ValueError(f"unknown {argument}={kind!r}; expected one of {sorted(FAMILIES) + ['none']}")
    return kind


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _hide_fn(msg):
    # Record only latent, non-enumerated sample sites in the prototype trace.
    return msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg) or is_enumerated(msg)


class AutoFlowGuide(ParamStoreSync, AutoContinuous):
    r"""Flow posterior :math:`q(z) = f_K \circ \dots \circ f_1 \circ (\mu + \sigma \odot \cdot)_\# \mathcal N(0, I)`
    over all latent sites of a model, packed into one unconstrained vector.

    Every continuous latent site is mapped to the real line with ``biject_to(support)`` (positive,
    simplex, correlation Cholesky, bounded, ...), the unconstrained values are concatenated into
    one vector :math:`z \in \mathbb R^D`, and :math:`z` is drawn from a learnable affine Gaussian
    followed by a flow stack built by :func:`pyro_nfvi.transforms.flow`.  The affine base lets
    volume-preserving flows (Householder) fit the scale; its loc starts at ``init_loc_fn`` (default
    :func:`~pyro.infer.autoguide.initialization.init_to_median`), its scale at ``init_scale`` and the
    flow layers at the identity.  ``flow="none"`` gives the Gaussian baseline through the same code.

    It is a Pyro :class:`~pyro.infer.autoguide.AutoContinuous`, so ``median()``, ``quantiles()``,
    ``get_posterior()``, ``sample_latent()``, :class:`~pyro.infer.Predictive` and
    :class:`~pyro.infer.autoguide.AutoGuideList` work.  With a flow, ``median`` and ``quantiles`` are
    the per-coordinate Monte Carlo quantiles of the unconstrained latent (``num_mc_samples`` draws
    under a fixed seed, so repeated calls agree) mapped to the supports; without one they are exact.

    **Eager parameters.**  Parameters are plain ``nn.Parameter`` s and buffers of this module (the flow
    stack is the child ``flow_stack``), created in the constructor by tracing the model with
    ``model_args``/``model_kwargs`` (default: no arguments), each registered under one name.  So
    :class:`~pyro.infer.JitTrace_ELBO` works (Pyro's own flow autoguides fail there, pyro issue
    #3132), a ``state_dict`` loads into a fresh guide with no warm-up call, an optimizer can be
    built before the first step, and ``pyro.get_param_store().save/load`` restores flow weights
    *and* buffers (e.g. IAF masks and permutations; see
    :class:`~pyro_nfvi.guides._util.ParamStoreSync`).  If the model needs arguments that were not
    given, setup falls back to the first call, as in Pyro; pass ``model_args`` to get the above
    before that call.

    A latent site inside a subsampled plate raises a ``ValueError`` pointing to
    :class:`~pyro_nfvi.guides.AmortizedFlowGuide`; a discrete latent site must be enumerated
    (``infer={"enumerate": "parallel"}``, then it is skipped, as Pyro's autoguides expect) or blocked.

    For the fastest training, see :class:`~pyro_nfvi.guides.FastSVI` (``module_local_params``).

    References: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015;
    Kucukelbir et al., *Automatic Differentiation Variational Inference*, JMLR 2017.

    Args:
        model (callable): a Pyro model.
        flow (str): ``"planar"``, ``"radial"``, ``"householder"``, ``"iaf"``, ``"sylvester"``,
            ``"coupling"`` or ``"none"``.
        num_flows (int): number of flow layers.
        init_loc_fn (callable): per-site initialisation of the base loc.
        init_scale (float): initial scale of the base Gaussian.
        model_args (tuple): positional arguments used to trace the model at construction.
        model_kwargs (dict): keyword arguments used to trace the model at construction.
        num_mc_samples (int): draws used by ``median``/``quantiles`` when there is a flow.
        create_plates (callable): as in :class:`~pyro.infer.autoguide.AutoGuide`.
        **flow_opts: passed to :func:`pyro_nfvi.transforms.flow` (e.g. ``hidden=(32,)``).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), scale).to_event(1))
        >>> guide = AutoFlowGuide(model, flow="planar", num_flows=2)
        >>> guide.latent_dim, sorted(guide().keys())
        (3, ['scale', 'x'])
        >>> guide.quantiles([0.25, 0.75])["x"].shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        model,
        flow="planar",
        num_flows=8,
        *,
        init_loc_fn=init_to_median,
        init_scale=0.1,
        model_args=(),
        model_kwargs=None,
        num_mc_samples=1000,
        create_plates=None,
        **flow_opts,
    ):
        self._flow_kind = check_flow_kind(flow)
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 0:
            raise ValueError(f"num_flows must be an integer >= 0, got {num_flows!r}")
        self._num_flows = num_flows
        self._init_scale = _check_positive("init_scale", init_scale)
        if isinstance(num_mc_samples, bool) or not isinstance(num_mc_samples, int) or num_mc_samples < 1:
            raise ValueError(f"num_mc_samples must be a positive integer, got {num_mc_samples!r}")
        self._flow_opts = dict(flow_opts)
        if not isinstance(model_args, (tuple, list)):
            raise TypeError(f"model_args must be a tuple, got {type(model_args).__name__}")
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self.create_plates = create_plates
        self.num_mc_samples = num_mc_samples
        self.mc_seed = 0
        self.latent_dim = None
        setup_eagerly(self, model, model_args, model_kwargs)

    _prototype_hide_fn = staticmethod(_hide_fn)

    # -- setup --------------------------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs):
        AutoGuide._setup_prototype(self, *args, **kwargs)
        sites = latent_sites(self.prototype_trace, type(self).__name__)
        self._packer = SitePacker([SiteSpec(site) for site in sites])
        self._unconstrained_shapes = {s.name: s.shape for s in self._packer.specs}
        self._cond_indep_stacks = {s.name: s.frames for s in self._packer.specs}
        self.latent_dim = self._packer.dim
        if self.latent_dim == 0:
            raise RuntimeError(f"{type(self).__name__} found no latent variables; use an empty guide instead")
        init = self._init_loc().detach()
        if not init.dtype.is_floating_point:
            init = init.to(torch.get_default_dtype())
        stack = build_flow(self._flow_kind, self.latent_dim, self._num_flows, **self._flow_opts)
        stack = stack.to(dtype=init.dtype, device=init.device)
        loc = init.clone()
        if len(stack):
            # layers that are not the identity at init (Householder reflections, IAF permutations)
            # map an isotropic base to an isotropic Gaussian; start it at init_loc_fn's values
            with torch.no_grad():
                try:
                    loc = stack.inverse_and_log_det(init)[0].clone()
                except NotImplementedError:
                    pass
        self.loc = nn.Parameter(loc)
        self.scale_raw = nn.Parameter(torch.full_like(init, inverse_softplus(self._init_scale)))
        self.flow_stack = stack
        self._reset_store_cache()

    def _init_loc(self):
        nodes = self.prototype_trace.nodes
        return self._packer.pack({name: nodes[name]["value"].detach() for name in self._packer.names})

    def _ensure_setup(self, args, kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)

    # -- the posterior ------------------------------------------------------------------------------
    def get_base_dist(self):
        """The standard normal base :math:`\\mathcal N(0, I_D)` (event shape ``(D,)``)."""
        loc = own_attr(self, "loc")
        return dist.Normal(loc.new_zeros(()), loc.new_ones(())).expand([self.latent_dim]).to_event(1)

    def _transforms(self):
        loc, scale = own_attr(self, "loc"), nn.functional.softplus(own_attr(self, "scale_raw"))
        parts = [AffineTransform(loc, scale, event_dim=1, cache_size=1)]
        stack = own_attr(self, "flow_stack")
        if len(stack):
            parts.append(stack)
        return parts

    def get_transform(self, *args, **kwargs):
        """The map from the base to the packed latent: affine ``loc + scale * eps``, then the flow."""
        self._ensure_setup(args, kwargs)
        self._sync_param_store()
        return ComposeTransform(self._transforms())

    def get_posterior(self, *args, **kwargs):
        """``TransformedDistribution(Normal(0, 1)^D, [affine(loc, scale), flow stack])``."""
        self._ensure_setup(args, kwargs)
        self._sync_param_store()
        return dist.TransformedDistribution(self.get_base_dist(), self._transforms())

    def forward(self, *args, **kwargs):
        """Sample every latent site (constrained) given the model's ``*args, **kwargs``."""
        self._ensure_setup(args, kwargs)
        latent = self.sample_latent(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        return self._packer.emit(latent, plates)

    def _unpack_latent(self, latent):
        for spec, value in self._packer.unpack(latent):
            yield self.prototype_trace.nodes[spec.name], value

    # -- summaries ----------------------------------------------------------------------------------
    def _loc_scale(self, *args, **kwargs):
        self._ensure_setup(args, kwargs)
        return self.loc, nn.functional.softplus(self.scale_raw)

    @torch.no_grad()
    def _latent_quantiles(self, quantiles, args, kwargs):
        self._ensure_setup(args, kwargs)
        self._sync_param_store()
        q = torch.as_tensor(quantiles, dtype=self.loc.dtype, device=self.loc.device).reshape(-1)
        if bool(((q <= 0) | (q >= 1)).any()):
            raise ValueError(f"quantiles must lie strictly between 0 and 1, got {q.tolist()}")
        if not len(self.flow_stack):
            loc, scale = self._loc_scale()
            return dist.Normal(loc, scale).icdf(q.unsqueeze(-1))
        with torch.random.fork_rng(devices=[self.loc.device] if self.loc.is_cuda else []):
            torch.manual_seed(self.mc_seed)
            draws = self.get_posterior().sample((self.num_mc_samples,))
        return torch.quantile(draws, q, dim=0)

    def median(self, *args, **kwargs):
        """Posterior median of each latent site: ``{name: tensor}`` (Monte Carlo when there is a flow)."""
        latent = self._latent_quantiles([0.5], args, kwargs)[0]
        return self._packer.constrain(latent)

    def quantiles(self, quantiles, *args, **kwargs):
        """Posterior quantiles of each site: ``{name: tensor of shape (len(quantiles),) + site shape}``.

        Per-coordinate quantiles of the unconstrained latent mapped to each support (exact for the
        Gaussian baseline, Monte Carlo otherwise; see the class docstring).
        """
        latents = self._latent_quantiles(quantiles, args, kwargs)
        result = {}
        for latent in latents:
            for name, value in self._packer.constrain(latent).items():
                result.setdefault(name, []).append(value)
        return {k: torch.stack(v) for k, v in result.items()}
