"""AutoFlowGuide: a normalizing-flow posterior over every latent site of a Pyro model."""
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.guides import AutoGuide
from pyro.infer.autoguide.initialization import init_to_median
from torch import nn
from pyro.distributions.transforms import LowerCholeskyAffine
from torch.distributions.transforms import AffineTransform, ComposeTransform

from ..nn.encoders import inverse_softplus
from ..transforms.sinh_arcsinh import SinhArcsinh
from ..transforms.stack import FlowStack
from ..transforms.stack import flow as build_flow
from ..validation import check_choice, check_int, check_positive
from .base import FlowGuide, check_flow_family, jsonable
from .decentering import DecenteringTransform, decenterable_sites
from .laplace import PRECONDITION_MAX_DIM, Preconditioner, laplace_approximation
from .minibatch import MinibatchCheck
from .path import path_posterior
from .sites import SitePacker, SiteSpec, latent_sites, prototype_hide_fn

__all__ = ["AutoFlowGuide", "BASES", "INITIAL_CENTEREDNESS", "MARGINALS", "SCALED_OUTPUT_BY_DEFAULT"]

#: The affine bases :class:`~pyro_nfvi.guides.AutoFlowGuide` offers: a diagonal scale, or a full lower-triangular one.
BASES = ("diagonal", "full")

#: The base marginals :class:`~pyro_nfvi.guides.AutoFlowGuide` offers: standard normal, or standard
#: normal through a learned elementwise :class:`~pyro_nfvi.transforms.SinhArcsinh` (skew and tail weight).
MARGINALS = ("gaussian", "sinh_arcsinh")

#: Families whose conditioner networks :class:`~pyro_nfvi.guides.AutoFlowGuide` builds with
#: ``output_scale="fan_in"`` unless another ``output_scale`` is passed: see "Stability" in the class docstring.
SCALED_OUTPUT_BY_DEFAULT = ("iaf", "coupling")

#: The centeredness :math:`\lambda` every decentered coordinate starts at (see ``decenter``).
INITIAL_CENTEREDNESS = 0.5


class AutoFlowGuide(FlowGuide, AutoContinuous):
    r"""Flow posterior :math:`q(z) = f_K \circ \dots \circ f_1 \circ (\mu + L\,\cdot) \# \mathcal N(0, I)`
    over all latent sites of a model, packed into one unconstrained vector.

    Every continuous latent site is mapped to the real line with ``biject_to(support)`` (positive,
    simplex, correlation Cholesky, bounded, ...), the unconstrained values are concatenated into
    one vector :math:`z \in \mathbb R^D`, and :math:`z` is drawn from a learnable Gaussian
    :math:`\mathcal N(\mu, L L^\top)` (``base="diagonal"``: :math:`L = \mathrm{diag}(\sigma)`;
    ``base="full"``: :math:`L` lower-triangular with a positive diagonal, for strongly correlated
    posteriors, at :math:`O(D^2)` parameters) pushed through a flow stack built by :func:`pyro_nfvi.transforms.flow` (Rezende & Mohamed's
    design).  At initialisation the flow is the identity or a linear map (Householder reflections,
    IAF permutations), and the Gaussian is placed so that the posterior starts centred at
    ``init_loc_fn``'s values (default :func:`~pyro.infer.autoguide.initialization.init_to_median`)
    with scale ``init_scale``; placing it costs a few network passes, not one per dimension.
    ``flow="none"`` gives the Gaussian baseline through the same code.

    **Marginals.**  ``marginals="sinh_arcsinh"`` passes each base coordinate through a learned
    elementwise :class:`~pyro_nfvi.transforms.SinhArcsinh` (skew and tail weight, Jones & Pewsey
    2009) before ``loc + L eps``.  Affine flows from a Gaussian base keep Gaussian-like tails (Jaini
    et al. 2020) and cut a long one-sided tail short, such as that of a hierarchical model's log
    group scale (eight schools' :math:`\log\tau`: its left tail, where the HalfCauchy prior is flat
    at zero).  On the non-centered eight schools (IAF, 4 layers, :func:`~pyro_nfvi.recipe.fit` with
    the ELBO, lr 1e-2, 2000 steps, seed 0) the sd error of :math:`\log\tau` against NUTS fell from
    0.31 to 0.09 and the ELBO rose from -31.47 to -31.36.  Over the posterior benchmark
    (``benchmarks/bayes.py``, 5 seeds) it helps where a scale parameter's posterior is skewed (the
    centered eight schools at 1000 steps: worst sd error 0.35 -> 0.11, k-hat 0.75 -> 0.64;
    non-centered: k-hat 0.75 -> 0.57) and changes little where the posterior is near-Gaussian; on
    Neal's funnel the heavier tails of :math:`v` make the sample sd of :math:`x = e^{v/2}\tilde x`
    erratic (sd error 0.6 -> 1.3-20, at the same ELBO).  Trained by :func:`~pyro_nfvi.recipe.fit`
    and importance-corrected (:func:`~pyro_nfvi.diagnostics.importance_resample`) it meets the
    benchmark's targets on every model but the funnel on every seed, at 1000 steps and at ``fit``'s
    default of 2000 (``benchmarks/results/bayes_sas_1000_corrected.md``, ``bayes_2000.md``; mean
    and sd errors at most 0.08 posterior sd, k-hat at most 0.64): the configuration that meets
    them.  The default stays ``"gaussian"`` for plain :class:`~pyro.infer.SVI` without ``fit``'s
    warm start: there the skew and tail weights take up the early transient and return slowly (on
    a correlated Gaussian posterior, ``base="full"``, 2000 steps at lr 1e-2: KL 0.16 against 0.03),
    and on the non-centered eight schools the final loss of IAF and planar guides was 0.2-0.7 nats
    higher at lr 5e-3 and 1e-2 (median of 5 seeds, 1000 steps; lower at 1e-3;
    ``benchmarks/results/stability_sas.md``).  ``"auto"`` chooses ``"sinh_arcsinh"`` under a flow
    and ``"gaussian"`` for ``flow="none"``.

    It is a Pyro :class:`~pyro.infer.autoguide.AutoContinuous`, so ``median()``, ``quantiles()``,
    ``get_posterior()``, ``sample_latent()``, :class:`~pyro.infer.Predictive` and
    :class:`~pyro.infer.autoguide.AutoGuideList` work.  With a flow, ``median`` and ``quantiles`` are
    the per-coordinate Monte Carlo quantiles of the unconstrained latent (``num_mc_samples`` draws
    under the fixed seed ``mc_seed``, kept until a parameter changes, so repeated calls agree and
    cost nothing) mapped to the supports; without one they are exact.

    **Setup.**  As with Pyro's autoguides the model is traced at the guide's first call, with the
    call's arguments.  Pass ``model_args`` (and ``model_kwargs``) to set up at once instead: then
    :class:`~pyro.infer.JitTrace_ELBO` works (Pyro's own flow autoguides fail there, pyro issue
    #3132), an optimizer can be built before the first step, and ``load_state_dict`` works on a
    fresh guide.  The state is the parameters plus a configuration fingerprint (see
    ``pyro_nfvi.guides.state``): ``state_dict``, ``torch.save(guide)`` and Pyro's param store
    all round-trip exactly, and a state saved from another configuration is refused.

    **Stability.**  IAF and affine coupling layers are built in their affine form with the
    conditioner's output scaled by ``1 / fan_in`` (``output_scale="fan_in"``, see
    ``pyro_nfvi.transforms.output_scale``).  A layer's shift and log-scale are sums over the
    ``fan_in`` weights of the network's last layer, each of which Adam moves by about ``lr`` per
    step, so unscaled they move about ``fan_in`` times faster than the Gaussian's own location and
    scale: when the posterior is wider than ``init_scale`` the flow takes over the expansion
    (log-scales up to the clip in every layer), ``q`` grows heavy tails and the loss spikes to
    1e3-1e7 (eight schools, ``lr`` 5e-3 to 1e-2; Pyro's ``AutoIAFNormal`` has the same
    unscaled network).  Scaled, the flow moves at the Gaussian's pace and keeps its expansions.
    The gated form (``stable=True``: Kingma et al.'s gated IAF, Glow's ``sigmoid(s + 2)`` coupling
    scale), this guide's default before, is also stable but can only contract: it stayed far from
    the funnel of the centered eight schools and at the Gaussian's KL on the multimodal U1.
    ``output_scale="none"`` gives the unscaled network.

    **Defaults.**  ``flow="iaf", num_flows=4`` with scaled networks: on the posterior benchmark
    (``benchmarks/bayes.py``) no family beat another by much under plain ``SVI`` with the ELBO,
    IAF did best on the hierarchical logistic regression, and 4 IAF layers trained with
    :func:`pyro_nfvi.recipe.fit` gave the best moment accuracy against NUTS; ``init_scale=0.1`` as
    Pyro's ``AutoNormal`` (the recipe's warm start fits the scale).  ``precondition="auto"``: where
    the Laplace Gaussian beats the fitted base (a collinear regression, AR(5), a simplex/LKJ
    model) the preconditioned recipe was as good or far better over 5 seeds (collinear regression:
    mean error 0.08 sd against 1.94); where it loses (hierarchical models, funnels) :func:`~pyro_nfvi.recipe.fit`
    leaves the map at the identity and nothing changes.

    **Decentering.**  A hierarchical site written centered, ``theta ~ Normal(mu, tau)`` with ``mu``
    and ``tau`` other latent sites, has a funnel-shaped posterior when the data are weak, which
    no flow of a few layers follows.  With ``decenter=True`` (the default) every such site (a
    ``Normal`` or ``LogNormal`` prior whose location or scale depends on other latent sites, see
    :func:`~pyro_nfvi.guides.decenterable_sites`) is drawn as
    :math:`\theta = \mu + \tau^{1-\lambda}(\tilde\theta - \lambda\mu)` from a flow over
    :math:`\tilde\theta`, with a learned centeredness :math:`\lambda \in (0, 1)` per coordinate
    (attribute ``centeredness_raw``, :math:`\lambda` = its sigmoid, starting at
    ``INITIAL_CENTEREDNESS`` = 0.5; :meth:`fit_base` trains it with the Gaussian), as Gorinova et al.'s
    VIP does to the model: the guide non-centers where that helps and stays centered where the
    data are strong.  The model is left as written; each draw runs it up to its last such site
    (see ``pyro_nfvi.guides.decentering``).  On the centered eight schools (:func:`~pyro_nfvi.recipe.fit`,
    1000 steps, worst of 5 seeds) the ELBO went from -34 to -31.5 (the non-centered model's) and
    the largest mean error from 0.61 to 0.11 posterior sds; on Neal's funnel q became the posterior
    (ELBO 0.00 = log Z).  Where the data are strong (the centered form is right) the centeredness
    stays near its start and costs 0.1-0.4 nats of ELBO.

    A latent site inside a subsampled plate raises a ``ValueError`` pointing to
    :class:`~pyro_nfvi.guides.AmortizedFlowGuide`; a discrete latent site must be enumerated
    (``infer={"enumerate": "parallel"}``, then it is skipped, as Pyro's autoguides expect) or blocked.

    References: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015;
    Kucukelbir et al., *Automatic Differentiation Variational Inference*, JMLR 2017.

    Args:
        model (callable): a Pyro model.
        flow (str): ``"iaf"`` (the default), ``"planar"``, ``"radial"``, ``"householder"``,
            ``"sylvester"``, ``"coupling"`` or ``"none"``.
        num_flows (int): number of flow layers (default 4).
        init_loc_fn (callable): per-site initialisation of the posterior's location.
        init_scale (float): initial scale of the posterior.
        base (str): ``"diagonal"`` or ``"full"``: the scale of the affine base (see above).
        marginals (str): ``"gaussian"`` (the default), ``"sinh_arcsinh"`` or ``"auto"``: the base's
            marginals (see above); the attribute ``marginals`` holds the choice.
        precondition (bool or str): end the flow with a fixed affine map :math:`v \mapsto \hat u + L_0 v`
            (a :class:`~pyro_nfvi.guides.Preconditioner`, the identity until
            :meth:`fit_laplace` sets it to the Laplace approximation), so that the flow learns in
            whitened coordinates; for strongly correlated or badly scaled posteriors.  It costs
            :math:`O(D^2)` memory and time per draw.  ``"auto"`` (the default): ``True`` when the
            model has at most :data:`~pyro_nfvi.guides.PRECONDITION_MAX_DIM` (200) latent dimensions (the attribute
            ``precondition`` holds the choice once the guide is set up).
        decenter (bool): learn the non-centering of hierarchical ``Normal``/``LogNormal`` sites
            (see "Decentering" above); the attribute ``decentered`` lists the sites.
        model_args (tuple): the model's positional arguments, to set up at construction.
        model_kwargs (dict): the model's keyword arguments, to set up at construction.
        num_mc_samples (int): draws used by ``median``/``quantiles`` when there is a flow.
        create_plates (callable): as in :class:`~pyro.infer.autoguide.AutoGuide`.
        name (str): the guide's name in Pyro's param store (default: the class name).
        **flow_opts: passed to :func:`pyro_nfvi.transforms.flow` (e.g. ``hidden=(32,)``).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x=None):
        ...     scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("x", dist.Normal(0.0, scale), obs=x)
        >>> x = torch.tensor([0.5, -1.0, 2.0])
        >>> guide = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=(x,))
        >>> guide.latent_dim, sorted(guide(x).keys())
        (1, ['scale'])
        >>> guide.quantiles([0.25, 0.75], x)["scale"].shape
        torch.Size([2])
    """

    def __init__(
        self,
        model,
        flow="iaf",
        num_flows=4,
        *,
        init_loc_fn=init_to_median,
        init_scale=0.1,
        base="diagonal",
        marginals="gaussian",
        precondition="auto",
        decenter=True,
        model_args=None,
        model_kwargs=None,
        num_mc_samples=1000,
        create_plates=None,
        name=None,
        **flow_opts,
    ):
        self._flow_family = check_flow_family(flow)
        self._num_flows = check_int("num_flows", num_flows, minimum=0)
        self._init_scale = check_positive("init_scale", init_scale)
        self._base = check_choice("base", base, BASES)
        marginals = check_choice("marginals", marginals, MARGINALS + ("auto",))
        if marginals == "auto":  # a skewed base under a flow; flow="none" stays the Gaussian baseline
            marginals = "gaussian" if self._flow_family == "none" else "sinh_arcsinh"
        self.marginals = marginals
        if not (isinstance(precondition, bool) or (isinstance(precondition, str) and precondition == "auto")):
            raise ValueError(f"precondition must be True, False or 'auto', got {precondition!r}")
        self._precondition_option = precondition
        if not isinstance(decenter, bool):
            raise TypeError(f"decenter must be True or False, got {decenter!r}")
        self._decenter = decenter
        self.decentered = []
        self.precondition = None if precondition == "auto" else precondition
        self.preconditioner = None
        self._flow_opts = dict(flow_opts)
        if self._flow_family in SCALED_OUTPUT_BY_DEFAULT:
            self._flow_opts.setdefault("output_scale", "fan_in")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self.__dict__["_user_model"] = (model,)  # self.model is wrapped in InitMessenger (for the setup only)
        self.create_plates = create_plates
        self.latent_dim = None
        self._init_flow_guide(name, model_args, model_kwargs, num_mc_samples)

    _prototype_hide_fn = staticmethod(prototype_hide_fn)

    @property
    def user_model(self):
        """The model as given to the guide.

        ``self.model`` is Pyro's ``InitMessenger`` around it, for the setup, which re-initialises every
        latent site (``init_loc_fn``, e.g. 15 prior draws for a median) on every call.
        """
        entry = self.__dict__.get("_user_model")
        return self.model if entry is None else entry[0]

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
        self.__dict__["_model_call"] = (args, kwargs)
        self.decentered = decenterable_sites(self.model, self._packer, args, kwargs, init) if self._decenter else []
        if self.decentered:
            size = sum(s.size for s in self._packer.specs if s.name in self.decentered)
            logit = torch.logit(torch.tensor(INITIAL_CENTEREDNESS, dtype=init.dtype)).item()
            self.centeredness_raw = nn.Parameter(init.new_full((size,), logit))
            with torch.no_grad():  # the flow's coordinates of the initial point
                init = self._decentering(args, kwargs).inv(init)
        stack = build_flow(self._flow_family, self.latent_dim, self._num_flows, **self._flow_opts)
        # one tensor for the tensor-parameter layers: one param message and one optimizer for the flow
        self.flow_stack = stack.pack_parameters().to(dtype=init.dtype, device=init.device)
        loc = init.clone()
        if len(stack):
            # layers that are not the identity at initialisation (Householder reflections, IAF
            # permutations, a gated IAF's scale) map N(loc, scale^2) to a Gaussian centred at
            # f(loc): start at f^-1(init).  Every layer is an explicit linear map at this point, and
            # the IAF inverse stops at its fixed point, so this costs a few passes, not D.
            with torch.no_grad():
                try:
                    loc = stack.inverse_and_log_det(init)[0].clone()
                except NotImplementedError:
                    pass
        self.loc = nn.Parameter(loc)
        self.scale_raw = nn.Parameter(torch.full_like(init, inverse_softplus(self._init_scale)))
        if self.marginals == "sinh_arcsinh":  # the identity at initialisation: loc and scale stand
            self.marginal_flow = SinhArcsinh(self.latent_dim).to(dtype=init.dtype, device=init.device)
        if self._base == "full":
            # the strictly lower triangle of L; its upper triangle and diagonal are never read
            self.scale_tril_raw = nn.Parameter(init.new_zeros(self.latent_dim, self.latent_dim))
        if self._precondition_option == "auto":
            self.precondition = self.latent_dim <= PRECONDITION_MAX_DIM
        if self.precondition:
            self.preconditioner = Preconditioner(self.latent_dim, dtype=init.dtype, device=init.device)
        self._fingerprint_fields = self._config_fingerprint()

    def _config_fingerprint(self):
        return {
            "guide": type(self).__name__,
            "flow": self._flow_family,
            "num_flows": self._num_flows,
            "base": self._base,
            **({"marginals": self.marginals} if self.marginals != "gaussian" else {}),
            **({"precondition": True} if self.precondition else {}),
            **({"decenter": list(self.decentered)} if self.decentered else {}),
            "flow_opts": jsonable(self._flow_opts),
            "sites": [[s.name, list(s.shape)] for s in self._packer.specs],
        }

    def _init_loc(self):
        nodes = self.prototype_trace.nodes
        return self._packer.pack({name: nodes[name]["value"].detach() for name in self._packer.names})

    # -- the posterior ------------------------------------------------------------------------------
    def get_base_dist(self):
        """The standard normal base :math:`\\mathcal N(0, I_D)` (event shape ``(D,)``)."""
        loc = self.loc
        return dist.Normal(loc.new_zeros(()), loc.new_ones(())).expand([self.latent_dim]).to_event(1)

    def _base_parameters(self):
        """The parameters of the base: ``loc``, ``scale_raw`` (``scale_tril_raw``, the centeredness, the marginals' skew and tail)."""
        names = ("loc", "scale_raw", "scale_tril_raw") if self._base == "full" else ("loc", "scale_raw")
        marginals = list(self.marginal_flow.parameters()) if self.marginals != "gaussian" else []
        return [getattr(self, n) for n in names + (("centeredness_raw",) if self.decentered else ())] + marginals

    def _affine(self):
        # each attribute read of a PyroModule emits one param message per parameter: read once
        scale = nn.functional.softplus(self.scale_raw)
        if self._base == "full":
            tril = self.scale_tril_raw.tril(-1) + torch.diag_embed(scale)
            return LowerCholeskyAffine(self.loc, tril, cache_size=1)
        return AffineTransform(self.loc, scale, event_dim=1, cache_size=1)

    def _decentering(self, args, kwargs, detach=False):
        """The :class:`~pyro_nfvi.guides.decentering.DecenteringTransform` of the model's call ``args, kwargs``."""
        if not args and not kwargs:  # e.g. median(): the arguments of the latest call
            args, kwargs = self.__dict__.get("_model_call", ((), {}))
        centeredness = torch.sigmoid(self.centeredness_raw)
        frames = [f.dim for s in self._packer.specs for f in s.frames if f.vectorized]
        return DecenteringTransform(self.user_model, args, kwargs, self._packer, self.decentered,
                                    centeredness.detach() if detach else centeredness, -min(frames, default=0))

    def _transforms(self, args=(), kwargs=None):
        stack = self.__dict__.get("_held_stack")  # fit_base's reduced stack (transforms.FlowStack.reduced)
        stack = self.flow_stack if stack is None else stack
        parts = [self._affine()] + ([stack] if not isinstance(stack, FlowStack) or len(stack) else [])
        if self.marginals != "gaussian":
            parts.insert(0, self.marginal_flow)
        if self.preconditioner is not None:
            parts.append(self.preconditioner.transform())
        return parts + [self._decentering(args, kwargs or {})] if self.decentered else parts

    def get_transform(self, *args, **kwargs):
        """The map from the base to the packed latent: ``loc + scale * eps`` (``eps`` through the
        sinh-arcsinh marginals first, if any), then the flow."""
        self._ensure_setup(args, kwargs)
        return ComposeTransform(self._transforms(args, kwargs))

    def get_posterior(self, *args, **kwargs):
        """``TransformedDistribution(Normal(0, 1)^D, [affine(loc, scale), flow stack, ...])``.

        With decentered sites the last map depends on the model's arguments: pass them (without
        them, those of the guide's latest call are used).
        """
        self._ensure_setup(args, kwargs)
        return dist.TransformedDistribution(self.get_base_dist(), self._transforms(args, kwargs))

    def forward(self, *args, **kwargs):
        """Sample every latent site (constrained) given the model's ``*args, **kwargs``."""
        self._ensure_setup(args, kwargs)
        self.__dict__["_model_call"] = (args, kwargs)
        check = self.__dict__.get("_minibatch_check")  # warns if minibatches come without a subsampled plate
        if check is None:
            self.__dict__["_minibatch_check"] = MinibatchCheck(self.model, args, kwargs, type(self).__name__)
        else:
            check(args, kwargs)
        latent = self.sample_latent(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        return self._packer.emit(latent, plates)

    def sample_latent(self, *args, **kwargs):
        """Sample the packed latent at the auxiliary site (path-derivative ``log q`` inside
        ``pyro_nfvi.guides.path.path_derivative``)."""
        posterior = path_posterior(self, self.get_posterior(*args, **kwargs))
        return pyro.sample(f"_{self._pyro_name}_latent", posterior, infer={"is_auxiliary": True})

    def _unpack_latent(self, latent):
        for spec, value in self._packer.unpack(latent):
            yield self.prototype_trace.nodes[spec.name], value

    # -- warm start -----------------------------------------------------------------------------------
    def fit_base(self, *args, num_steps=500, lr=0.05, num_particles=8, vectorize_particles=True, jit=False, **kwargs):
        """Fit the Gaussian base (``loc``, ``scale``) with the flow held at its initialisation; return the losses.

        A warm start (Agrawal, Sheldon & Domke 2020): the flow then starts training from a Gaussian
        at the posterior's location and scale, instead of learning the scale itself.  Runs
        ``num_steps`` steps of Adam on the base's parameters only (``loc``, ``scale_raw`` and, for
        ``base="full"``, ``scale_tril_raw``; with ``marginals="sinh_arcsinh"`` also their skew and
        tail weight; with decentered sites their centeredness), on a ``Trace_ELBO`` estimate
        with ``num_particles`` vectorized particles; the flow's parameters are left untouched.

        Args:
            *args: the model's arguments.
            **kwargs: keyword arguments, as ``*args``.
            num_steps (int): Adam steps.
            lr (float): Adam's learning rate.
            num_particles (int): particles of each ELBO estimate.
            vectorize_particles (bool): draw them in one vectorized trace (``False`` for a model
                that cannot broadcast over a particle dimension).
            jit (bool): compile the ELBO with Pyro's :class:`~pyro.infer.JitTrace_ELBO` (``torch.jit``
                tracing; about half the cost of a step on a small model; the model needs a static
                structure and tensor positional arguments).

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> def model():
            ...     pyro.sample("z", dist.Normal(torch.tensor([3.0, -2.0]), 2.0).to_event(1))
            >>> guide = AutoFlowGuide(model, flow="iaf", num_flows=2, model_args=())
            >>> losses = guide.fit_base(num_steps=300)
            >>> draws = guide.get_posterior().sample((4000,))
            >>> bool((draws.mean(0) - torch.tensor([3.0, -2.0])).abs().max() < 0.5)
            True
            >>> bool((draws.std(0) - 2.0).abs().max() < 0.3)
            True
        """
        num_steps = check_int("num_steps", num_steps)
        lr = check_positive("lr", lr)
        num_particles = check_int("num_particles", num_particles)
        self._ensure_setup(args, kwargs)
        elbo = (JitTrace_ELBO if jit else Trace_ELBO)(num_particles=num_particles,
                                                      vectorize_particles=bool(vectorize_particles))
        base = self._base_parameters()
        optim = torch.optim.Adam(base, lr=lr)
        model = self.user_model
        losses = []
        # the flow is held: while it is a permutation or the identity (an IAF stack until it trains),
        # its reduced form gives the same draws and densities to the bit, without the networks
        # (only when that is another object: the stack itself is read through PyroModule, as its parameters must be)
        stack = self.flow_stack
        reduced = stack.reduced()
        if reduced is not stack:
            self.__dict__["_held_stack"] = reduced
        try:
            for _ in range(num_steps):
                if jit:  # not JitTrace_ELBO.differentiable_loss, whose gradient is twice the ELBO's (Pyro 1.9)
                    with torch.jit.optimized_execution(False):  # TorchScript's plain interpreter: faster here
                        loss, surrogate = elbo.loss_and_surrogate_loss(model, self, *args, **kwargs)
                else:
                    loss = surrogate = elbo.differentiable_loss(model, self, *args, **kwargs)
                # gradients of the Gaussian only: nothing accumulates in the flow's .grad
                for p, g in zip(base, torch.autograd.grad(surrogate, base)):
                    p.grad = g
                optim.step()
                losses.append(loss.item())
        finally:
            self.__dict__.pop("_held_stack", None)
        for p in base:
            p.grad = None
        return losses

    def log_joint(self, latent, *args, **kwargs):
        r"""The model's log joint density at a packed unconstrained ``latent``, Jacobian included.

        :math:`\log p(x, T(u)) + \log|\det J_T(u)|`, where :math:`T` maps the packed unconstrained
        vector to every latent site's support (``biject_to``): the log density of the model in the
        coordinates the guide works in.  ``latent`` has shape ``(D,)`` (one draw).

        Args:
            latent (torch.Tensor): the packed unconstrained latent, shape ``(latent_dim,)``.
            *args, **kwargs: the model's arguments.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> def model():
            ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
            >>> guide = AutoFlowGuide(model, flow="none", model_args=())
            >>> u = torch.tensor([0.5])  # log s; the Jacobian turns LogNormal(0, 1) into Normal(0, 1)
            >>> bool(torch.isclose(guide.log_joint(u), dist.Normal(0.0, 1.0).log_prob(u).sum()))
            True
        """
        self._ensure_setup(args, kwargs)
        if latent.shape != (self.latent_dim,):
            raise ValueError(f"log_joint takes one packed latent of shape ({self.latent_dim},), got {tuple(latent.shape)}")
        values, log_det = self._packer.constrain_with_log_det(latent)
        with pyro.poutine.block():
            trace = pyro.poutine.trace(pyro.poutine.condition(self.user_model, data=values)).get_trace(*args, **kwargs)
        return trace.log_prob_sum() + log_det

    def fit_laplace(self, *args, num_steps=200, **kwargs):
        r"""Warm-start from the Laplace approximation :math:`\mathcal N(\hat u, H^{-1})` at the MAP; return it.

        :func:`~pyro_nfvi.guides.laplace_approximation` of :meth:`log_joint` (the model's
        density in the guide's unconstrained coordinates), from the guide's initial point.  With
        ``precondition=True`` the guide's :class:`~pyro_nfvi.guides.Preconditioner` becomes
        :math:`v \mapsto \hat u + L v` (:math:`L L^\top = H^{-1}`) and the base
        :math:`\mathcal N(0, I)` in those whitened coordinates, so that the flow learns where the
        posterior is close to a standard normal.  Without it the base's ``loc`` becomes
        :math:`\hat u` (through the flow's inverse at its initialisation) and its scale :math:`L`
        (``base="full"``) or the mean-field optimum :math:`1/\sqrt{H_{ii}}` (``base="diagonal"``).
        The flow is left untouched.

        Raises ``ValueError`` (the guide unchanged) when there is no finite mode or :math:`H` is not
        positive definite there, as on a funnel; :func:`pyro_nfvi.fit` then falls back to
        :meth:`fit_base`.

        Args:
            *args, **kwargs: the model's arguments.
            num_steps (int): L-BFGS iterations at most.

        Returns:
            tuple: ``(mode, covariance)``, float64 tensors of shapes ``(D,)`` and ``(D, D)``.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> cov = torch.tensor([[1.0, 0.95], [0.95, 1.0]])
            >>> def model():
            ...     pyro.sample("z", dist.MultivariateNormal(torch.tensor([1.0, -1.0]), cov))
            >>> guide = AutoFlowGuide(model, flow="iaf", num_flows=2, precondition=True, model_args=())
            >>> mode, covariance = guide.fit_laplace()
            >>> bool(torch.allclose(covariance.float(), cov, atol=1e-3))
            True
            >>> draws = guide.get_posterior().sample((20000,))
            >>> bool(torch.allclose(draws.mean(0), torch.tensor([1.0, -1.0]), atol=0.05))
            True
        """
        self._ensure_setup(args, kwargs)
        dtype = self.loc.dtype
        with torch.no_grad():
            start = self._init_loc().to(dtype)
        # with decentered sites, the Laplace approximation in the coordinates the flow works in
        decentering = self._decentering(args, kwargs, detach=True) if self.decentered else None
        if decentering is not None:
            with torch.no_grad():
                start = decentering.inv(start)

        def log_density(v):
            if decentering is None:
                return self.log_joint(v, *args, **kwargs)
            u, log_det = decentering.call_and_log_det(v)
            return self.log_joint(u, *args, **kwargs) + log_det

        try:
            mode, covariance = laplace_approximation(log_density, start, num_steps)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}.fit_laplace: {err}; use fit_base instead") from err
        with torch.no_grad():
            if self.preconditioner is not None:
                self.preconditioner.set_gaussian(mode, covariance)
                loc, target = torch.zeros_like(self.loc), torch.eye(self.latent_dim, dtype=torch.float64)
            else:
                loc, target = mode.to(dtype), covariance
            if len(self.flow_stack):
                try:
                    loc = self.flow_stack.inverse_and_log_det(loc)[0]
                except NotImplementedError:
                    pass
        # At initialisation the flow is (close to) a linear map A near loc (gated layers contract,
        # IAF layers permute): the base N(loc, S) is chosen so that A S A^T is the target.
        jac = torch.eye(self.latent_dim, dtype=torch.float64)
        if len(self.flow_stack):
            jac = torch.autograd.functional.jacobian(lambda x: self.flow_stack(x), loc.detach()).double()
        with torch.no_grad():
            self.loc.copy_(loc)
            if self._base == "full":
                inv_jac = torch.linalg.inv(jac)
                tril = torch.linalg.cholesky(inv_jac @ target @ inv_jac.T).to(dtype)
                self.scale_raw.copy_(inverse_softplus(tril.diagonal()))
                self.scale_tril_raw.copy_(tril.tril(-1))
            else:  # the mean-field optimum for a Gaussian target: 1 / sqrt(diag(A^T target^-1 A))
                precision = jac.T @ torch.cholesky_inverse(torch.linalg.cholesky(target)) @ jac
                self.scale_raw.copy_(inverse_softplus(precision.diagonal().rsqrt().to(dtype)))
        return mode, covariance

    # -- summaries ----------------------------------------------------------------------------------
    def _loc_scale(self, *args, **kwargs):
        """The base's location and marginal standard deviations."""
        self._ensure_setup(args, kwargs)
        diagonal = nn.functional.softplus(self.scale_raw)
        tril = self.scale_tril_raw.tril(-1) + torch.diag_embed(diagonal) if self._base == "full" else None
        if self.preconditioner is None:
            return self.loc, diagonal if tril is None else tril.norm(dim=-1)
        # the whole Gaussian shift + L0 (loc + L eps): its marginal sds are the row norms of L0 L
        tril = torch.diag_embed(diagonal) if tril is None else tril
        outer = self.preconditioner.scale_tril
        return self.preconditioner.shift + outer @ self.loc, (outer @ tril).norm(dim=-1)

    @torch.no_grad()
    def _latent_quantiles(self, quantiles, args, kwargs):
        self._ensure_setup(args, kwargs)
        q = self._check_quantiles(quantiles, self.loc)
        if not len(self.flow_stack) and not self.decentered and self.marginals == "gaussian":
            loc, scale = self._loc_scale()
            return dist.Normal(loc, scale).icdf(q.unsqueeze(-1))
        # with decentered sites q depends on the model's arguments: the draws are cached per call
        key, keep = (tuple(map(id, args)) + tuple(map(id, kwargs.values())), (args, kwargs)) if self.decentered else (None, None)
        draws = self._cached_draws(key, lambda: self.get_posterior(*args, **kwargs).sample((self.num_mc_samples,)), keep)
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
