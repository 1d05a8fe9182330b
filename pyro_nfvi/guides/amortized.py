"""AmortizedFlowGuide: an encoder that outputs a flow posterior per data point (Rezende & Mohamed)."""
from collections import namedtuple

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide.guides import AutoGuide
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..nn.encoders import MLP, LocScaleHead
from ..transforms.stack import flow as build_flow
from ._util import ParamStoreSync, SitePacker, SiteSpec, latent_sites, own_attr, setup_eagerly
from .auto import AutoFlowGuide, _check_positive, _hide_fn, check_flow_kind

__all__ = ["AmortizedFlowGuide"]

#: Where an observed value comes from: ``source`` is ``("arg", i)`` or ``("kwarg", name)``, ``axis``
#: the data axis of that tensor, ``subsampled`` whether the model indexes it with the plate's indices.
_InputMap = namedtuple("_InputMap", ["site", "source", "axis", "subsampled"])


def _get(source, args, kwargs):
    kind, key = source
    return args[key] if kind == "arg" else kwargs[key]


def _per_point(value, axis):
    """Move ``axis`` to the front and flatten the rest: ``(B, -1)``."""
    return value.movedim(axis, 0).reshape(value.shape[axis], -1)


def _same(a, b):
    return a.shape == b.shape and torch.equal(a.to(b.dtype), b)


def _match_observed(site, axis, args, kwargs, indices):
    """Find the model argument holding the observed value of ``site`` (see AmortizedFlowGuide)."""
    target = _per_point(site["value"].detach(), axis)
    B = target.shape[0]
    candidates = [(("arg", i), a) for i, a in enumerate(args)] + [(("kwarg", k), a) for k, a in kwargs.items()]
    for source, a in candidates:
        if not torch.is_tensor(a) or a.dim() == 0:
            continue
        for ax in range(a.dim()):
            n = a.shape[ax]
            if n == B and a.numel() == target.numel() and _same(_per_point(a, ax), target):
                return _InputMap(site["name"], source, ax, False)
            if (
                indices is not None
                and n != B
                and n > int(indices.max())
                and (a.numel() // n) * B == target.numel()
                and _same(_per_point(a.index_select(ax, indices.to(a.device)), ax), target)
            ):
                return _InputMap(site["name"], source, ax, True)
    return None


class AmortizedFlowGuide(ParamStoreSync, AutoGuide):
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
    the plate get an internal :class:`AutoFlowGuide` (``global_flow``, ``global_num_flows``).

    **Encoder input.**  By default the observed values of the sample sites inside the plate, each
    flattened per data point and concatenated.  At setup each observed value is matched to a model
    argument (the same values, possibly reshaped, possibly indexed by the plate's subsample
    indices); each call reads the input from that argument, and the plate's size follows it, so
    minibatches work either through ``pyro.plate(..., subsample_size=...)`` or by passing a
    subsample of the data.  ``encoder_input=callable(*args, **kwargs) -> (N, D_in)`` overrides the
    input (for a subsampled plate return every data point; the guide indexes the subsample),
    ``encoder=nn.Module`` (``(..., D_in) -> (..., H)``) overrides the MLP trunk.

    Vectorized particles (``Trace_ELBO(num_particles=k, vectorize_particles=True)``) reuse one
    encoder pass: parameters of batch ``(B,)`` broadcast against draws ``(k, B, D)``.

    **For evaluation code:** ``guide.plate``, ``guide.local_sites``, :meth:`encode`,
    :meth:`local_posterior` and :meth:`unpack_local`.

    Parameters are built eagerly from ``model_args``/``model_kwargs`` (needed for
    :class:`~pyro.infer.JitTrace_ELBO`, warm-up-free ``load_state_dict`` and param-store loading; see
    :class:`AutoFlowGuide`); a model that needs arguments not given is set up at the first call.

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
        init_scale (float): initial scale of every local posterior.
        global_init_scale (float): initial scale of the global posterior.
        init_loc_fn (callable): initialisation of the global loc.
        model_args (tuple), model_kwargs (dict): arguments used to trace the model at construction.
        create_plates (callable): as in :class:`~pyro.infer.autoguide.AutoGuide` (may return the data plate).
        encoder_activation (str): activation of the MLP encoder.
        num_mc_samples (int): draws used by ``median``/``quantiles`` when there is a flow.
        global_flow_opts (dict): options of the global flow (default: ``flow_opts`` if the families match).
        **flow_opts: options of the local flow layers (e.g. ``hidden=(64,)`` for their hypernetworks).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(mu, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 0.5), obs=x)
        >>> x = torch.randn(10)
        >>> guide = AmortizedFlowGuide(model, plate="data", num_flows=2, encoder_hidden=(16,), model_args=(x,))
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
        encoder_hidden=(300, 300),
        encoder_input=None,
        encoder=None,
        global_flow=None,
        global_num_flows=None,
        *,
        init_scale=1.0,
        global_init_scale=0.1,
        init_loc_fn=init_to_median,
        model_args=(),
        model_kwargs=None,
        create_plates=None,
        encoder_activation="elu",
        num_mc_samples=1000,
        global_flow_opts=None,
        **flow_opts,
    ):
        if not isinstance(plate, str):
            raise TypeError(f"plate must be the name of a pyro.plate (a str), got {plate!r}")
        check_flow_kind(flow)
        global_flow = flow if global_flow is None else check_flow_kind(global_flow, "global_flow")
        for name, value in (("num_flows", num_flows), ("global_num_flows", global_num_flows)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if encoder_input is not None and not callable(encoder_input):
            raise TypeError("encoder_input must be a callable (*args, **kwargs) -> (N, D_in)")
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        if not isinstance(model_args, (tuple, list)):
            raise TypeError(f"model_args must be a tuple, got {type(model_args).__name__}")
        super().__init__(model, create_plates=create_plates)
        self.plate = plate
        self._config = dict(
            flow=flow,
            num_flows=num_flows,
            encoder_hidden=tuple(encoder_hidden),
            encoder_activation=encoder_activation,
            global_flow=global_flow,
            global_num_flows=num_flows if global_num_flows is None else global_num_flows,
            init_scale=_check_positive("init_scale", init_scale),
            global_init_scale=_check_positive("global_init_scale", global_init_scale),
            init_loc_fn=init_loc_fn,
            flow_opts=dict(flow_opts),
            global_flow_opts=dict(flow_opts if global_flow == flow else {})
            if global_flow_opts is None
            else dict(global_flow_opts),
        )
        self.encoder_input = encoder_input
        self._user_encoder = encoder
        self.num_mc_samples = num_mc_samples
        self.mc_seed = 0
        self.local_sites = None
        self.global_guide = None
        setup_eagerly(self, model, model_args, model_kwargs)

    # -- setup --------------------------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs):
        cfg, name = self._config, type(self).__name__
        full = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
        frames = {}
        for site in full.nodes.values():
            if site["type"] == "sample":
                for f in site["cond_indep_stack"]:
                    frames.setdefault(f.name, f)
        if self.plate not in frames:
            raise ValueError(
                f"{name}: the model has no plate named {self.plate!r}; its plates are {sorted(frames)}"
            )
        frame = frames[self.plate]
        if not frame.vectorized:
            raise ValueError(f"{name}: plate {self.plate!r} must be a vectorized pyro.plate, not a sequential one")
        self._frame = frame
        self._subsampled = frame.full_size is not None and frame.size != frame.full_size

        # the prototype trace holds the latent, non-enumerated sites (as AutoGuide's does)
        proto = full.copy()
        for node_name, site in list(full.nodes.items()):
            if _hide_fn(site):
                proto.remove_node(node_name)
        self.prototype_trace = proto
        self._prototype_frames = {}
        for site in proto.nodes.values():
            for f in site["cond_indep_stack"]:
                if not f.vectorized:
                    raise NotImplementedError("AutoGuide does not support sequential pyro.plate")
                self._prototype_frames[f.name] = f

        latents = latent_sites(proto, name, forbid_subsampled=False)
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
        self._local_packer = SitePacker([SiteSpec(s, plate_dim=frame.dim) for s in local], local=True)
        self.local_dim = self._local_packer.dim
        dtype = next(s["value"] for s in local).dtype
        dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
        device = next(s["value"] for s in local).device
        self._dtype = dtype

        # encoder input: match observed values to the model's arguments
        sub = full.nodes.get(self.plate)
        indices = sub["value"] if sub is not None and site_is_subsample(sub) else None
        self._input_map = []
        if self.encoder_input is None:
            observed = [
                s for s in full.nodes.values()
                if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)
                and any(f.name == self.plate for f in s["cond_indep_stack"])
            ]
            usable = []
            for s in observed:
                axis = s["value"].dim() - s["fn"].event_dim + frame.dim
                if axis >= 0 and s["value"].shape[axis] == frame.size:
                    usable.append((s, axis))
            if not usable:
                raise ValueError(
                    f"{name}: no observed site inside plate {self.plate!r} varies along it; pass "
                    "encoder_input=callable(*args, **kwargs) -> (N, D_in)"
                )
            for s, axis in usable:
                m = _match_observed(s, axis, args, kwargs, indices)
                if m is None:
                    raise ValueError(
                        f"{name}: could not find the observed values of site {s['name']!r} (shape "
                        f"{tuple(s['value'].shape)}) among the model's arguments; pass "
                        "encoder_input=callable(*args, **kwargs) -> (N, D_in)"
                    )
                self._input_map.append(m)
            x = torch.cat([_per_point(s["value"].detach(), axis) for s, axis in usable], -1)
        else:
            x = self._call_encoder_input(args, kwargs)
            if self._subsampled and indices is not None and x.shape[0] == frame.full_size:
                x = x[indices.to(x.device)]
        x = x.to(dtype=dtype, device=device)

        # global latents: an internal AutoFlowGuide on the model with the local sites hidden
        global_sites = [s["name"] for s in latents if s["name"] not in self.local_sites]
        if global_sites:
            self.global_guide = AutoFlowGuide(
                poutine.block(self.model, hide=list(self.local_sites)),
                flow=cfg["global_flow"],
                num_flows=cfg["global_num_flows"],
                init_loc_fn=cfg["init_loc_fn"],
                init_scale=cfg["global_init_scale"],
                model_args=tuple(args),
                model_kwargs=kwargs,
                **cfg["global_flow_opts"],
            )
        else:
            self.global_guide = None

        # encoder trunk, heads and the amortized flow
        if self._user_encoder is None:
            encoder = MLP(x.shape[-1], cfg["encoder_hidden"], activation=cfg["encoder_activation"])
        else:
            encoder = self._user_encoder
        encoder = encoder.to(dtype=dtype, device=device)
        with torch.no_grad():
            hidden_dim = encoder(x[:16]).shape[-1]
        self.encoder = encoder
        self.head = LocScaleHead(hidden_dim, self.local_dim, init_scale=cfg["init_scale"]).to(dtype=dtype, device=device)
        stack = build_flow(cfg["flow"], self.local_dim, cfg["num_flows"], context_dim=hidden_dim, **cfg["flow_opts"])
        self.flow_stack = stack.to(dtype=dtype, device=device)
        self.input_dim = x.shape[-1]
        self.hidden_dim = hidden_dim
        self._reset_store_cache()

    def _check_prototype(self, part_trace):
        for name, part_site in part_trace.iter_stochastic_nodes():
            self_site = self.prototype_trace.nodes.get(name)
            if self_site is not None and part_site["value"].shape != self_site["value"].shape:
                raise ValueError(f"site {name!r} has shape {tuple(part_site['value'].shape)} in a part guide "
                                 f"but {tuple(self_site['value'].shape)} in the model")

    def _ensure_setup(self, args, kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)

    # -- encoder input and plates -------------------------------------------------------------------
    def _call_encoder_input(self, args, kwargs):
        x = self.encoder_input(*args, **kwargs)
        if not torch.is_tensor(x) or x.dim() != 2:
            raise ValueError(
                f"encoder_input must return a tensor of shape (N, D_in), got "
                f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}"
            )
        return x

    def _gather(self, args, kwargs, indices=None):
        """The encoder input ``(B, D_in)``; ``indices`` selects rows of subsampled sources."""
        parts = []
        for m in self._input_map:
            a = _get(m.source, args, kwargs)
            if m.subsampled and indices is not None:
                a = a.index_select(m.axis, indices)
            parts.append(_per_point(a, m.axis))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        return x.to(self._dtype)

    def _data_plate(self, args, kwargs):
        f = self._frame
        if self._input_map:
            m = self._input_map[0]
            n = _get(m.source, args, kwargs).shape[m.axis]
            subsampled_source = m.subsampled
        else:
            x = self._call_encoder_input(args, kwargs)
            self.__dict__["_call_input"] = x
            n = x.shape[0]
            subsampled_source = self._subsampled and n == f.full_size
        if subsampled_source:
            return pyro.plate(self.plate, n, subsample_size=min(f.size, n), dim=f.dim)
        if self._subsampled:
            # the arguments already hold the minibatch: subsample indices only set the scale
            return pyro.plate(self.plate, f.full_size, subsample_size=n, dim=f.dim)
        return pyro.plate(self.plate, n, dim=f.dim)

    def _input_for(self, args, kwargs, indices):
        if self._input_map:
            return self._gather(args, kwargs, indices)
        x = self.__dict__.pop("_call_input", None)
        if x is None:  # the data plate came from create_plates
            x = self._call_encoder_input(args, kwargs)
        if x.shape[0] != indices.shape[0]:
            x = x.index_select(0, indices.to(x.device))
        return x.to(self._dtype)

    def _create_plates(self, *args, **kwargs):
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
            plates[self.plate] = self._data_plate(args, kwargs)
        self.plates = plates
        return plates

    # -- the local posterior ------------------------------------------------------------------------
    def _encode(self, x, encoder, head, stack):
        h = encoder(x)
        loc, scale_raw = head(h)
        return {"loc": loc, "scale_raw": scale_raw, "flow": stack.raw_params(h) if len(stack) else []}

    @staticmethod
    def _posterior(encoded, stack):
        base = dist.Normal(encoded["loc"], nn.functional.softplus(encoded["scale_raw"])).to_event(1)
        if not len(stack):
            return base
        return dist.TransformedDistribution(base, [stack.bind(encoded["flow"])])

    def encode(self, *args, **kwargs):
        """Per-data-point variational parameters for every data point in the arguments.

        Returns ``{"loc": (N, D), "scale_raw": (N, D), "flow": [per-layer raw parameter dicts, None
        for layers with their own parameters]}`` with ``scale = softplus(scale_raw)``.  For a
        subsampled plate, ``N`` is the full number of data points.
        """
        self._ensure_setup(args, kwargs)
        self._sync_param_store()
        x = self._gather(args, kwargs) if self._input_map else self._call_encoder_input(args, kwargs).to(self._dtype)
        return self._encode(x, self.encoder, self.head, self.flow_stack)

    def local_posterior(self, encoded):
        """The distribution of the packed local latents given :meth:`encode`'s output.

        Batch shape ``(N,)``, event shape ``(D,)``; differentiable w.r.t. the encoded tensors (which may
        be refined as free tensors).
        """
        return self._posterior(encoded, self.flow_stack)

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
        self._sync_param_store()
        plates = self._create_plates(*args, **kwargs)
        result = {}
        if self.global_guide is not None:
            result.update(self.global_guide(*args, **kwargs))
        encoder, head, stack = (own_attr(self, n) for n in ("encoder", "head", "flow_stack"))
        ones = (1,) * (-self._frame.dim - 1)
        with plates[self.plate] as indices:
            x = self._input_for(args, kwargs, indices)
            x = x.reshape(x.shape[:1] + ones + x.shape[1:])
            q = self._posterior(self._encode(x, encoder, head, stack), stack)
            z = pyro.sample(f"_{self._pyro_name}_local_latent", q, infer={"is_auxiliary": True})
            if ones:
                z = z.reshape(z.shape[: z.dim() - 1 - len(ones)] + z.shape[-1:])
            result.update(self._local_packer.emit(z, plates, skip_frames=(self.plate,)))
        return result

    # -- summaries ----------------------------------------------------------------------------------
    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs):
        """Per-coordinate posterior quantiles of every site, ``{name: (len(quantiles),) + shape}``.

        Global sites as in :class:`AutoFlowGuide`; local sites for every data point in the arguments
        (Monte Carlo with ``num_mc_samples`` draws under a fixed seed when there is a flow).
        """
        encoded = self.encode(*args, **kwargs)
        q = torch.as_tensor(quantiles, dtype=encoded["loc"].dtype).reshape(-1)
        if not len(self.flow_stack):
            scale = nn.functional.softplus(encoded["scale_raw"])
            latents = dist.Normal(encoded["loc"], scale).icdf(q.reshape((-1,) + (1,) * encoded["loc"].dim()))
        else:
            with torch.random.fork_rng(devices=[encoded["loc"].device] if encoded["loc"].is_cuda else []):
                torch.manual_seed(self.mc_seed)
                draws = self.local_posterior(encoded).sample((self.num_mc_samples,))
            latents = torch.quantile(draws, q, dim=0)
        result = {name: v for name, v in self.unpack_local(latents).items()}
        if self.global_guide is not None:
            result.update(self.global_guide.quantiles(quantiles, *args, **kwargs))
        return result

    def median(self, *args, **kwargs):
        """Posterior median of every site (local ones for every data point in the arguments)."""
        return {name: v[0] for name, v in self.quantiles([0.5], *args, **kwargs).items()}
