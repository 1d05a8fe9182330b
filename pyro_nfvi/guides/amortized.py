"""AmortizedFlowGuide: an encoder that outputs a flow posterior per data point (Rezende & Mohamed)."""
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide.guides import AutoGuide
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..nn.encoders import MLP, LocScaleHead
from ..transforms.output_scale import output_scale
from ..transforms.stack import flow as build_flow
from ..validation import check_int, check_positive
from .auto import AutoFlowGuide
from .base import FlowGuide, check_flow_family, jsonable
from .encoder_input import InputStandardizer, as_float_input, call_encoder_input, observed_inputs
from .observed import per_point, read_observed
from .path import path_posterior
from .sites import SitePacker, SiteSpec, latent_sites, prototype_hide_fn

__all__ = ["AMORTIZED_GATED", "AMORTIZED_MAX_SCALE", "AMORTIZED_SCALED_OUTPUT", "AmortizedFlowGuide", "gated_defaults"]

#: Local flow families whose hypernetworks :class:`AmortizedFlowGuide` builds with
#: ``output_scale="fan_in"`` unless another ``output_scale`` is passed: see "Stability" in its docstring.
AMORTIZED_SCALED_OUTPUT = ("planar", "sylvester")
#: Families whose layers :class:`AmortizedFlowGuide` builds with a bounded gate (``stable=True,
#: max_scale=AMORTIZED_MAX_SCALE``) unless ``stable`` or ``max_scale`` is passed, locally and globally:
#: see "Stability" in its docstring.
AMORTIZED_GATED = ("coupling",)
#: The bound on each gated layer's scale (the gate starts at the identity; see ``AffineCoupling``).
AMORTIZED_MAX_SCALE = 2.0


def gated_defaults(opts):
    """``opts`` (a family's layer options) with the bounded gate filled in where neither ``stable`` nor ``max_scale`` is given.

    ``stable=True`` alone keeps Glow's gate (a contraction, starting at ``sigmoid(2)``); ``max_scale``
    alone implies ``stable=True``; ``stable=False`` is the affine form.

    Example:
        >>> gated_defaults({}), gated_defaults({"stable": True}), gated_defaults({"max_scale": 3.0})
        ({'stable': True, 'max_scale': 2.0}, {'stable': True}, {'max_scale': 3.0, 'stable': True})
    """
    opts = dict(opts)
    if "stable" not in opts and "max_scale" not in opts:
        opts.update(stable=True, max_scale=AMORTIZED_MAX_SCALE)
    elif "max_scale" in opts:
        opts.setdefault("stable", True)
    return opts


class AmortizedFlowGuide(FlowGuide, AutoGuide):
    r"""Amortized flow guide :math:`q(z_i \mid x_i) = f^{(i)}_K \circ \dots \circ f^{(i)}_1 \# \mathcal N(\mu_i, \sigma_i^2)`
    for the local latents of a plate, with *every* flow parameter predicted per data point.

    The model is traced to find the latent sites inside ``plate`` (which may be subsampled) and
    the observed sites inside it.  The local latents of one data point (mapped to the real line
    with ``biject_to``) are flattened and concatenated into :math:`z_i \in \mathbb R^{D}`.  In one
    pass an encoder maps the data point's input to a hidden :math:`h_i`; a linear head gives
    :math:`\mu_i, \sigma_i` and the flow stack (built with ``context_dim=H``) predicts all flow
    parameters from :math:`h_i` through zero-initialised hypernetworks, so every flow starts as the
    identity.  :math:`z_i` is sampled as one auxiliary site inside ``pyro.plate(plate, ...)`` and
    each model site is emitted as a ``Delta`` (as in Pyro's ``AutoContinuous``).  Latent sites outside
    the plate get an internal :class:`~pyro_nfvi.guides.AutoFlowGuide` (``global_flow``, ``global_num_flows``).

    **Encoder input.**  By default the observed values of the sample sites inside the plate, each
    flattened per data point and concatenated.  At setup each observed value is matched to a model
    argument (the same values, possibly reshaped, possibly indexed by the plate's subsample
    indices); each call reads the input from that argument, and the plate's size follows it, so
    minibatches work either through ``pyro.plate(..., subsample_size=...)`` or by passing a
    subsample of the data.  ``encoder_input=callable(*args, **kwargs) -> (N, D_in)`` overrides the
    input (for a subsampled plate return every data point; the guide indexes the subsample),
    ``encoder=nn.Module`` (``(..., D_in) -> (..., H)``) overrides the MLP trunk.

    **Defaults that hold outside VAEs.**  The encoder reads its input *standardised*
    (``standardize=True``): each feature is centred and divided by its standard deviation, with
    statistics computed once at setup from every data point in the setup call's arguments (the
    whole data set when the model subsamples the plate itself) and then fixed; features within
    ``[0, 1]`` (binary pixels, probabilities) are read as they are, constant ones only centred (the
    rule: ``pyro_nfvi.guides.encoder_input``).  The statistics are part of the saved state
    (``guide.input_standardizer``; ``state_dict``, ``torch.save`` and the param store carry them).
    Why: Adam moves every weight by about ``lr`` per step whatever the gradient's size, so the
    encoder's outputs move by about ``lr`` times the size of its input; on a subsampled regression
    whose observations are near 300, the raw input put the initial ``scale_raw`` between -39 and 0
    (scales 1e-17 to 1) and moved ``loc`` by about 50 per step, and the loss was NaN within 1 to 7
    steps at lr 5e-3 and 1e-2 (``benchmarks/amortized_stability.py``; ``ClippedAdam``'s clipping
    does not help: Adam normalises the gradient anyway).  Standardised, the same runs start with
    every scale at ``init_scale`` and train at lr 1e-3 and 5e-3 (at 1e-2 some still diverge near step
    20: the local loc must travel to ~300 and overshoots; see the benchmark).  ``init_scale`` is 0.1, as for the global guide and
    :class:`~pyro_nfvi.guides.AutoFlowGuide`: a unit scale in the unconstrained space is wide for a
    latent with a narrow posterior, and its draws make the first gradients large.
    ``standardize=False`` gives the raw input (e.g. when ``encoder_input`` already returns
    standardised features).

    **Amortized Sylvester layers** predict a ``D x M`` matrix per data point, orthonormalised by QR.
    With an unscaled hypernetwork Adam moves each raw entry by about ``lr * fan_in`` per step (0.3 at
    lr 1e-3 on the MNIST VAE's 300-unit encoder), the per-point matrices drift to near-singular ones
    (smallest singular value 2e-4, condition number 1.7e4 after 5 epochs) and QR's gradient, which
    scales with the inverse of the smallest singular value, blows up: the validation -ELBO went 112,
    773, 128 at epochs 5 to 7 (``benchmarks/mnist_vae.py``).  So this family's hypernetworks are
    built with ``output_scale="fan_in"`` (``AMORTIZED_SCALED_OUTPUT``; ``output_scale="none"`` gives
    the unscaled network).  Planar layers too: unscaled, the planar K=2 VAE trailed the plain VAE
    by about 1 nat through training and ended 0.42 nats worse on test; scaled it leads on train from
    epoch 4 and on valid from epoch 11, and ends 0.45 better (94.45 against 94.90).  Radial and Householder layers were not
    measured scaled and keep the unscaled network.

    **The scale head.**  ``scale_raw`` is :math:`b_s + c\,W_s h` with :math:`c = 1/\sqrt H`
    (``head_output_scale="sqrt_fan_in"``, see :class:`~pyro_nfvi.nn.LocScaleHead`).  Unscaled
    (``"none"``), Adam moves each of the :math:`H` weights of a row by about ``lr`` per step and
    ``scale_raw`` by up to ``H * lr``, 3 per step at lr 1e-2 with the default 300-unit encoder.  On
    the subsampled regression above the unscaled head diverged in 3 of 5 seeds at lr 1e-2 with
    ``flow="none"`` (seed 0: the scale went from 0.1 to 50 and then to 1e-24 between steps 10 and
    17, then the loss was NaN), and coupling, Sylvester and Householder guides in 3, 2 and 1 of 5
    (``benchmarks/results/amortized_stability_head_none.md``).  With :math:`c = 1/H` (``"fan_in"``)
    only coupling diverged (``amortized_stability_head_fan_in.md``), but the head then learns the
    per-point scales slowly: on Pyro's VAE example (``examples/vae/vae.py``, its model with this
    guide, 156 steps of Adam at 1e-3) the test -ELBO was 167.2 with ``flow="none"`` and 178.2 with
    planar layers, against 149.8 and 148.8 unscaled.  :math:`c = 1/\sqrt H` keeps both: 150.4 and
    148.2 there, and on the regression no family but coupling diverged at lr 1e-3, 5e-3 or 1e-2 (coupling:
    2 of 5 at 1e-2, and 4 of 5 runs had loss spikes of 1e11 to 1e28, through its local layers as well
    as its global ones: without global layers the same seeds still spiked to 1e9-1e12;
    ``benchmarks/results/amortized_stability.md``).  **So coupling layers are gated by default**
    (``AMORTIZED_GATED``, for the local and the global layers, unless ``stable`` or ``max_scale`` is
    passed; ``pyro_nfvi.guides.amortized.gated_defaults``): each layer's scale is ``m * sigmoid(m / (m - 1) s - log(m - 1))``
    with ``m = AMORTIZED_MAX_SCALE = 2``, bounded by 2, and the identity with the affine form's slope
    at initialisation.  On the regression 0 of 15 runs diverged (median final loss 5379 / 6010 / 5877
    at lr 1e-3 / 5e-3 / 1e-2, against 6322 / 7476 / 7057 ungated;
    ``amortized_stability_coupling_bounded2.md``); with ``m = 5`` none diverged either, but one seed's
    loss rose to 6.7x its start at step 6 (``m = 3``: one seed ended 4x higher).  Glow's gate
    (``stable=True`` alone: each layer can only contract, starting at ``sigmoid(2) ~ 0.88``), the
    default before, is as stable (0 of 15; 5528 / 5856 / 5797) but slow to start on a VAE: on Pyro's
    VAE example (its model and settings, this guide with 2 layers; test -ELBO, seeds 0 / 1) Glow's gate
    is at 118.1 / 117.9 after 400 steps, the bounded gate at 114.4 / 113.7, the ungated layers at
    111.5 / 112.6 and the example's own Gaussian guide at 116.8 / 117.0; after 1500 steps the bounded
    gate 90.70 / 90.64, ungated 89.62 / 90.68, Glow's 91.55 / 91.14, the example's guide 90.92 / 90.84
    (``docs/findings.md``, "AmortizedFlowGuide stability").

    **What the encoder accepts.**  Real observations as they are; counts (integer tensors, Poisson,
    Binomial) and binary values cast to floats; category ids (``Categorical``, as in Pyro's LDA)
    are refused, and so are NaN or infinite values at setup, with errors that name the site and
    say to pass ``encoder_input``.

    Vectorized particles (``Trace_ELBO(num_particles=k, vectorize_particles=True)``) reuse one
    encoder pass: parameters of batch ``(B,)`` broadcast against draws ``(k, B, D)``.

    **For evaluation code:** ``guide.plate``, ``guide.local_sites``, :meth:`encode`,
    :meth:`local_posterior` and :meth:`unpack_local`.

    **Setup and state** work as in :class:`~pyro_nfvi.guides.AutoFlowGuide`: at the first call with
    the call's arguments, or at once with ``model_args``/``model_kwargs``; the state is the
    parameters (global guide included) plus a configuration fingerprint.

    References: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015;
    Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014.

    Args:
        model (callable): a Pyro model.
        plate (str): name of the plate of data points.
        flow (str): flow family of the local posterior (``"none"``: the Gaussian VAE encoder).
        num_flows (int): number of local flow layers.
        encoder_hidden (tuple): hidden sizes of the MLP encoder.
        encoder_input (callable): ``(*args, **kwargs) -> (N, D_in)``; default: the observed values.
        encoder (nn.Module): replaces the MLP trunk.
        global_flow (str): flow family of the global latents (default: ``flow``).
        global_num_flows (int): layers of the global flow (default: ``num_flows``).
        init_scale (float): initial scale of every local posterior (in the unconstrained space).
        global_init_scale (float): initial scale of the global posterior.
        standardize (bool): standardise the encoder's input with statistics fixed at setup.
        init_loc_fn (callable): initialisation of the global loc.
        model_args (tuple): the model's arguments, to set up at construction.
        model_kwargs (dict): the model's keyword arguments, likewise.
        create_plates (callable): as in :class:`~pyro.infer.autoguide.AutoGuide` (may return the data plate).
        encoder_activation (str): activation of the MLP encoder.
        num_mc_samples (int): draws used by ``median``/``quantiles`` when there is a flow.
        global_flow_opts (dict): options of the global flow (default: ``flow_opts`` if the families match).
        head_output_scale (str or float): ``"sqrt_fan_in"``, ``"fan_in"``, ``"none"`` or a positive
            factor on the weight of the head's scale half (:class:`~pyro_nfvi.nn.LocScaleHead`'s
            ``scale_output``).
        name (str): the guide's name in Pyro's param store (default: the class name).
        **flow_opts: options of the local flow layers (e.g. ``hidden=(64,)`` for their hypernetworks).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(mu, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 0.5), obs=x)
        >>> x = torch.randn(10)
        >>> guide = AmortizedFlowGuide(model, plate="data", num_flows=2,
        ...                            encoder_hidden=(16,), model_args=(x,))
        >>> guide.local_sites, {k: tuple(v.shape) for k, v in guide(x).items()}
        (['z'], {'mu': (), 'z': (10,)})
        >>> guide.local_posterior(guide.encode(x)).batch_shape
        torch.Size([10])
    """

    def __init__(
        self,
        model,
        plate="data",
        flow="planar",
        num_flows=8,
        *,
        encoder_hidden=(300, 300),
        encoder_input=None,
        encoder=None,
        global_flow=None,
        global_num_flows=None,
        init_scale=0.1,
        global_init_scale=0.1,
        standardize=True,
        init_loc_fn=init_to_median,
        model_args=None,
        model_kwargs=None,
        create_plates=None,
        encoder_activation="elu",
        num_mc_samples=1000,
        global_flow_opts=None,
        head_output_scale="sqrt_fan_in",
        name=None,
        **flow_opts,
    ):
        if not isinstance(plate, str):
            raise TypeError(f"plate must be the name of a pyro.plate (a str), got {plate!r}")
        if encoder_input is not None and not callable(encoder_input):
            raise TypeError("encoder_input must be a callable (*args, **kwargs) -> (N, D_in)")
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        self.plate = plate
        self.flow_family = check_flow_family(flow)
        self.num_flows = check_int("num_flows", num_flows, minimum=0)
        self.global_flow = flow if global_flow is None else check_flow_family(global_flow, "global_flow")
        self.global_num_flows = num_flows if global_num_flows is None else check_int("global_num_flows", global_num_flows, minimum=0)
        self.encoder_hidden = tuple(check_int("encoder_hidden", h) for h in encoder_hidden)
        self.encoder_activation = encoder_activation
        self.init_scale = check_positive("init_scale", init_scale)
        if not isinstance(standardize, bool):
            raise TypeError(f"standardize must be True or False, got {standardize!r}")
        self.standardize = standardize
        self.global_init_scale = check_positive("global_init_scale", global_init_scale)
        self.init_loc_fn = init_loc_fn
        output_scale(head_output_scale, 1)  # refuse a bad value now, not at setup
        self.head_output_scale = head_output_scale
        self.flow_opts = dict(flow_opts)
        if global_flow_opts is None:
            global_flow_opts = flow_opts if self.global_flow == self.flow_family else {}
        self.global_flow_opts = dict(global_flow_opts)
        if self.flow_family in AMORTIZED_SCALED_OUTPUT:
            self.flow_opts.setdefault("output_scale", "fan_in")
        if self.flow_family in AMORTIZED_GATED:
            self.flow_opts = gated_defaults(self.flow_opts)
        if self.global_flow in AMORTIZED_GATED:
            self.global_flow_opts = gated_defaults(self.global_flow_opts)
        super().__init__(model, create_plates=create_plates)
        self.encoder_input = encoder_input
        self._user_encoder = encoder
        self.local_sites = None
        self.global_guide = None
        self._init_flow_guide(name, model_args, model_kwargs, num_mc_samples)

    # -- setup, in named steps ------------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs):
        full = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
        self._find_data_plate(full)
        latents = self._build_prototype(full)
        local = self._find_local_sites(latents)
        x = self._encoder_input_at_setup(full, local, args, kwargs)
        self._build_global_guide(latents, args, kwargs)
        self._build_networks(x)
        self._fingerprint_fields = self._config_fingerprint()

    def _find_data_plate(self, full):
        frames = {}
        for site in full.nodes.values():
            if site["type"] == "sample":
                for f in site["cond_indep_stack"]:
                    frames.setdefault(f.name, f)
        if self.plate not in frames:
            raise ValueError(
                f"{type(self).__name__}: the model has no plate named {self.plate!r}; its plates are {sorted(frames)}"
            )
        frame = frames[self.plate]
        if not frame.vectorized:
            raise ValueError(f"{type(self).__name__}: plate {self.plate!r} must be a vectorized pyro.plate, not a sequential one")
        self._frame = frame
        self._subsampled = frame.full_size is not None and frame.size != frame.full_size

    def _build_prototype(self, full):
        """The prototype trace holds the latent, non-enumerated sites (as AutoGuide's does)."""
        proto = full.copy()
        for node_name, site in list(full.nodes.items()):
            if prototype_hide_fn(site):
                proto.remove_node(node_name)
        self.prototype_trace = proto
        self._prototype_frames = {}
        for site in proto.nodes.values():
            for f in site["cond_indep_stack"]:
                if not f.vectorized:
                    raise NotImplementedError("AutoGuide does not support sequential pyro.plate")
                self._prototype_frames[f.name] = f
        return latent_sites(proto, type(self).__name__, forbid_subsampled=False)

    def _find_local_sites(self, latents):
        name = type(self).__name__
        local = [s for s in latents if any(f.name == self.plate for f in s["cond_indep_stack"])]
        if not local:
            raise ValueError(
                f"{name}: no latent sample site lies inside plate {self.plate!r}; use AutoFlowGuide for "
                "models without local latents"
            )
        for s in local:
            others = [f for f in s["cond_indep_stack"] if f.name != self.plate and f.full_size not in (None, f.size)]
            if others:
                raise ValueError(
                    f"{name}: local site {s['name']!r} is also inside the subsampled plate {others[0].name!r}; "
                    f"only the amortization plate {self.plate!r} may be subsampled"
                )
        self.local_sites = [s["name"] for s in local]
        self._local_packer = SitePacker([SiteSpec(s, plate_dim=self._frame.dim) for s in local], local=True)
        self.local_dim = self._local_packer.dim
        value = local[0]["value"]
        self._dtype = value.dtype if value.dtype.is_floating_point else torch.get_default_dtype()
        self._device = value.device
        return local

    def _encoder_input_at_setup(self, full, local, args, kwargs):
        """Match the observed values to the model's arguments (or check ``encoder_input``'s output),
        fix the standardisation statistics, and return the setup batch's (raw) input."""
        name, frame = type(self).__name__, self._frame
        sub = full.nodes.get(self.plate)
        indices = sub["value"] if sub is not None and site_is_subsample(sub) else None
        self._input_map = []
        if self.encoder_input is not None:
            x_all = call_encoder_input(self.encoder_input, args, kwargs, self._dtype, check_finite=True,
                                       plate=self.plate, sizes=(frame.size, frame.full_size))
            x = x_all
            if self._subsampled and indices is not None and x.shape[0] == frame.full_size:
                x = x[indices.to(x.device)]
        else:
            self._input_map, x = observed_inputs(full, self.plate, frame, args, kwargs, indices, self._dtype, name)
            x_all = self._gather(args, kwargs)  # every data point in the arguments
        x_all, x = x_all.to(device=self._device), x.to(device=self._device)
        self.input_standardizer = InputStandardizer.fit(x_all) if self.standardize else None
        return x

    def _build_global_guide(self, latents, args, kwargs):
        """Latents outside the plate: an internal AutoFlowGuide on the model with the local sites hidden."""
        if not any(s["name"] not in self.local_sites for s in latents):
            self.global_guide = None
            return
        self.global_guide = AutoFlowGuide(
            poutine.block(self.model, hide=list(self.local_sites)),
            flow=self.global_flow,
            num_flows=self.global_num_flows,
            init_loc_fn=self.init_loc_fn,
            init_scale=self.global_init_scale,
            model_args=tuple(args),
            model_kwargs=kwargs,
            **self.global_flow_opts,
        )
        self.global_guide._nested = True  # this guide carries its state

    def _build_networks(self, x):
        """The encoder trunk, the loc/scale head and the amortized flow (context = the trunk's output)."""
        encoder = self._user_encoder
        if encoder is None:
            encoder = MLP(x.shape[-1], self.encoder_hidden, activation=self.encoder_activation)
        encoder = encoder.to(dtype=self._dtype, device=self._device)
        with torch.no_grad():
            hidden_dim = encoder(x[:16] if self.input_standardizer is None else self.input_standardizer(x[:16])).shape[-1]
        self.encoder = encoder
        self.head = LocScaleHead(hidden_dim, self.local_dim, init_scale=self.init_scale,
                                 scale_output=self.head_output_scale).to(self._device, self._dtype)
        stack = build_flow(self.flow_family, self.local_dim, self.num_flows, context_dim=hidden_dim, **self.flow_opts)
        self.flow_stack = stack.to(dtype=self._dtype, device=self._device)
        self.input_dim = x.shape[-1]
        self.hidden_dim = hidden_dim

    def _config_fingerprint(self):
        fields = {
            "guide": type(self).__name__,
            "plate": self.plate,
            "flow": self.flow_family,
            "num_flows": self.num_flows,
            "flow_opts": jsonable(self.flow_opts),
            "encoder": "MLP" if self._user_encoder is None else type(self._user_encoder).__name__,
            "encoder_hidden": list(self.encoder_hidden) if self._user_encoder is None else None,
            "input_dim": self.input_dim,
            "standardize": self.standardize,
            "local_sites": [[s.name, list(s.shape)] for s in self._local_packer.specs],
            "global": None if self.global_guide is None else self.global_guide._fingerprint_fields,
        }
        if self.head_output_scale != "none":  # states saved before the option existed load unchanged
            fields["head_output_scale"] = jsonable(self.head_output_scale)
        return fields

    def _check_prototype(self, part_trace):
        for name, part_site in part_trace.iter_stochastic_nodes():
            self_site = self.prototype_trace.nodes.get(name)
            if self_site is not None and part_site["value"].shape != self_site["value"].shape:
                raise ValueError(f"site {name!r} has shape {tuple(part_site['value'].shape)} in a part guide "
                                 f"but {tuple(self_site['value'].shape)} in the model")

    # -- encoder input and plates -------------------------------------------------------------------
    def _call_encoder_input(self, args, kwargs):
        return call_encoder_input(self.encoder_input, args, kwargs, self._dtype)

    def _gather(self, args, kwargs, indices=None):
        """The encoder input ``(B, D_in)`` from the matched arguments; ``indices`` selects rows of subsampled ones."""
        parts = []
        for m in self._input_map:
            a = read_observed(m, args, kwargs, type(self).__name__)
            if m.subsampled and indices is not None:
                a = a.index_select(m.axis, indices.to(a.device))
            parts.append(per_point(a, m.axis))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        return as_float_input(x, self._dtype, "the encoder input")

    def _data_source(self, args, kwargs):
        """``(make_plate, rows)``: ``make_plate()`` builds the data plate of this call (unless
        ``create_plates`` supplies it) and ``rows(indices) -> (B, D_in)`` reads its encoder input."""
        f = self._frame
        if self._input_map:
            m = self._input_map[0]
            n = read_observed(m, args, kwargs, type(self).__name__).shape[m.axis]
            subsampled_source = m.subsampled

            def rows(indices):
                return self._gather(args, kwargs, indices)
        else:
            x = self._call_encoder_input(args, kwargs)
            n = x.shape[0]
            subsampled_source = self._subsampled and n == f.full_size

            def rows(indices):
                out = x if x.shape[0] == indices.shape[0] else x.index_select(0, indices.to(x.device))
                return out.to(self._dtype)

        def make_plate():
            if subsampled_source:
                return pyro.plate(self.plate, n, subsample_size=min(f.size, n), dim=f.dim)
            if self._subsampled:
                # the arguments already hold the minibatch: subsample indices only set the scale
                return pyro.plate(self.plate, f.full_size, subsample_size=n, dim=f.dim)
            return pyro.plate(self.plate, n, dim=f.dim)

        return make_plate, rows

    def _make_plates(self, args, kwargs, make_data_plate):
        if self.master is not None:
            self.plates = self.master().plates
            return self.plates
        plates = {}
        if self.create_plates is not None:
            user = self.create_plates(*args, **kwargs)
            user = [user] if isinstance(user, pyro.plate) else list(user)
            plates.update({p.name: p for p in user})
        for name, frame in sorted(self._prototype_frames.items()):
            if name not in plates and name != self.plate:
                plates[name] = pyro.plate(name, frame.full_size or frame.size, dim=frame.dim, subsample_size=frame.size)
        if self.plate not in plates:
            plates[self.plate] = make_data_plate()
        self.plates = plates
        return plates

    def _create_plates(self, *args, **kwargs):
        return self._make_plates(args, kwargs, self._data_source(args, kwargs)[0])

    # -- the local posterior ------------------------------------------------------------------------
    def _encode(self, x, stack=None):
        standardizer = self.input_standardizer
        h = self.encoder(x if standardizer is None else standardizer(x))
        loc, scale_raw = self.head(h)
        stack = self.flow_stack if stack is None else stack
        return {"loc": loc, "scale_raw": scale_raw, "flow": stack.raw_params(h) if len(stack) else []}

    def encode(self, *args, **kwargs):
        """Per-data-point variational parameters for every data point in the arguments.

        Returns ``{"loc": (N, D), "scale_raw": (N, D), "flow": [per-layer raw parameter dicts, None
        for layers with their own parameters]}`` with ``scale = softplus(scale_raw)``.  For a
        subsampled plate, ``N`` is the full number of data points.
        """
        self._ensure_setup(args, kwargs)
        x = self._gather(args, kwargs) if self._input_map else self._call_encoder_input(args, kwargs).to(self._dtype)
        return self._encode(x)

    def local_posterior(self, encoded, stack=None):
        """The distribution of the packed local latents given :meth:`encode`'s output.

        Batch shape ``(N,)``, event shape ``(D,)``; differentiable w.r.t. the encoded tensors (which may
        be refined as free tensors).
        """
        base = dist.Normal(encoded["loc"], nn.functional.softplus(encoded["scale_raw"])).to_event(1)
        stack = self.flow_stack if stack is None else stack
        if not len(stack):
            return base
        return dist.TransformedDistribution(base, [stack.bind(encoded["flow"])])

    def unpack_local(self, z, log_det=False):
        """``{site: constrained value}`` for a packed draw ``z`` of shape ``(..., N, D)``.

        With ``log_det=True`` also return ``log|det J|`` of the maps to the supports, shape ``(..., N)``,
        so that ``q(values) = local_posterior(...).log_prob(z) - log_det``.
        """
        if z.shape[-1] != self.local_dim:
            raise ValueError(f"z must have shape (..., N, {self.local_dim}), got {tuple(z.shape)}")
        values, ld = self._local_packer.constrain_with_log_det(z)
        return (values, ld) if log_det else values

    # -- the guide ----------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """Sample the global and local latent sites given the model's ``*args, **kwargs``."""
        self._ensure_setup(args, kwargs)
        make_data_plate, rows = self._data_source(args, kwargs)
        plates = self._make_plates(args, kwargs, make_data_plate)
        result = {}
        if self.global_guide is not None:
            result.update(self.global_guide(*args, **kwargs))
        ones = (1,) * (-self._frame.dim - 1)
        with plates[self.plate] as indices:
            x = rows(indices)
            x = x.reshape(x.shape[:1] + ones + x.shape[1:])
            stack = self.flow_stack  # one read: each read of a PyroModule attribute emits param messages
            q = path_posterior(self, self.local_posterior(self._encode(x, stack), stack))
            z = pyro.sample(f"_{self._pyro_name}_local_latent", q, infer={"is_auxiliary": True})
            if ones:
                z = z.reshape(z.shape[: z.dim() - 1 - len(ones)] + z.shape[-1:])
            result.update(self._local_packer.emit(z, plates, skip_frames=(self.plate,)))
        return result

    # -- summaries ----------------------------------------------------------------------------------
    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs):
        """Per-coordinate posterior quantiles of every site, ``{name: (len(quantiles),) + shape}``.

        Global sites as in :class:`~pyro_nfvi.guides.AutoFlowGuide`; local sites for every data point in the arguments
        (Monte Carlo with ``num_mc_samples`` draws under a fixed seed when there is a flow, kept until
        a parameter or an argument changes).
        """
        encoded = self.encode(*args, **kwargs)
        q = self._check_quantiles(quantiles, encoded["loc"])
        if not len(self.flow_stack):
            scale = nn.functional.softplus(encoded["scale_raw"])
            latents = dist.Normal(encoded["loc"], scale).icdf(q.reshape((-1,) + (1,) * encoded["loc"].dim()))
        else:
            values = list(args) + list(kwargs.values())
            key = tuple((id(a), a._version) if torch.is_tensor(a) else id(a) for a in values)
            draws = self._cached_draws(
                key, lambda: self.local_posterior(encoded).sample((self.num_mc_samples,)), keep=values
            )
            latents = torch.quantile(draws, q, dim=0)
        result = dict(self.unpack_local(latents))
        if self.global_guide is not None:
            result.update(self.global_guide.quantiles(quantiles, *args, **kwargs))
        return result

    def median(self, *args, **kwargs):
        """Posterior median of every site (local ones for every data point in the arguments)."""
        return {name: v[0] for name, v in self.quantiles([0.5], *args, **kwargs).items()}
