r"""Learnable non-centering of hierarchical sites inside a flow guide (variationally inferred parameterisation).

A hierarchical model written *centered*, :math:`\theta \sim \mathcal N(\mu, \sigma)` with
:math:`\mu, \sigma` other latent sites, has a funnel-shaped posterior when the data are weak: as
:math:`\sigma \to 0` the conditional of :math:`\theta` narrows with it.  Writing it *non-centered*,
:math:`\theta = \mu + \sigma\tilde\theta`, :math:`\tilde\theta \sim \mathcal N(0, 1)`, removes the
funnel, but that is a change to the model.  This module makes it a change to the guide: the flow
works in partially non-centered coordinates :math:`\tilde\theta` and the last map of the guide is

.. math::

    \theta = \mu + \sigma^{1 - \lambda} (\tilde\theta - \lambda \mu), \qquad
    \log\left|\frac{\partial \theta}{\partial \tilde\theta}\right| = (1 - \lambda) \log \sigma,

elementwise, where :math:`\mu, \sigma` are the site's prior location and scale evaluated at the
values of its parents (the sites before it), and the *centeredness* :math:`\lambda \in (0, 1)` is
learned with the rest of the guide (Gorinova, Moore & Hoffman 2020): :math:`\lambda = 1` is the
identity (the model's own, centered coordinates) and :math:`\lambda = 0` full non-centering.  The
map is triangular in the model's order, so it is a bijection whose log-determinant is a sum, and
its inverse is one pass with every value known.

A site qualifies when its prior is a ``Normal`` (or ``LogNormal``: the same in the unconstrained,
log coordinates), possibly ``Independent`` or expanded, and its location or scale depends on the
values of other latent sites (:func:`decenterable_sites`).  Computing :math:`\mu, \sigma` runs the
model with the latent values substituted, up to the last such site only.

References: Gorinova, Moore & Hoffman, *Automatic Reparameterisation of Probabilistic Programs*,
ICML 2020 (VIP); Papaspiliopoulos, Roberts & Sköld, *A General Framework for the Parametrization of
Hierarchical Models*, Statistical Science 2007.
"""
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import Transform, constraints

__all__ = ["DecenteringTransform", "decenterable_sites", "prior_loc_scale"]


def prior_loc_scale(fn):
    r"""``(loc, scale)`` of a ``Normal`` or ``LogNormal`` prior in unconstrained coordinates, else ``None``.

    ``Independent``, expanded and masked distributions are unwrapped; a ``LogNormal(loc, scale)`` is a
    ``Normal(loc, scale)`` in the log coordinates of ``biject_to(positive)``.

    Example:
        >>> prior_loc_scale(dist.LogNormal(1.0, 2.0).expand([3]).to_event(1))
        (tensor([1., 1., 1.]), tensor([2., 2., 2.]))
        >>> prior_loc_scale(dist.Normal(0.0, 3.0).mask(False))
        (tensor(0.), tensor(3.))
        >>> prior_loc_scale(dist.Gamma(1.0, 1.0)) is None
        True
    """
    while isinstance(fn, (torch.distributions.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.LogNormal):
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc, fn.scale
    return None


class _Done(Exception):
    """Raised by :class:`_Substitute` after the last site it has to see: the rest of the model is skipped."""


class _Substitute(Messenger):
    """Sets every packed latent site to a value from ``values(name, msg)``; stops after ``last``.

    ``foreign`` collects the latent sample sites it met that it does not set (enumerated or
    discrete sites, sites of another guide): the model draws those from their priors.
    """

    def __init__(self, names, values, last):
        super().__init__()
        self.names, self.values, self.last = names, values, last
        self.foreign = []

    def _pyro_sample(self, msg):
        name = msg["name"]
        if msg["is_observed"] or site_is_subsample(msg):
            return
        if name not in self.names:
            self.foreign.append(name)
            return
        msg["value"] = self.values(name, msg)
        msg["is_observed"] = True  # as poutine.condition: the value is given, nothing is sampled
        if name == self.last:
            raise _Done()


def _run_model(model, args, kwargs, names, values, last):
    substitute = _Substitute(names, values, last)
    with poutine.block():
        try:
            with substitute:
                model(*args, **kwargs)
        except _Done:
            pass
    return substitute.foreign


def decenterable_sites(model, packer, args=(), kwargs=None, values=None):
    """The packed latent sites whose ``Normal``/``LogNormal`` prior depends on other latent sites, in order.

    The model runs with every latent site set to ``values`` (default: the packer's sites at
    zero in unconstrained coordinates) as leaves that record gradients; a site qualifies when its
    prior's location or scale records one, that is depends on a latent value (or on a parameter
    of the model).  A site that may depend on a latent site this guide does not draw is left
    out: one after an enumerated or otherwise foreign latent site, and one whose location and
    scale come out different when the model runs twice (a parent hidden from this guide, as in an
    ``AutoGuideList``).

    Args:
        model (callable): the Pyro model.
        packer (object): the guide's packing of the latent sites (a ``SitePacker`` of ``pyro_nfvi.guides.sites``).
        args, kwargs: the model's arguments.
        values (torch.Tensor): a packed unconstrained latent, shape ``(D,)``.

    Example:
        >>> import pyro
        >>> from pyro_nfvi.guides.sites import SitePacker, SiteSpec, latent_sites
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        ...     tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        ...     with pyro.plate("schools", 8):
        ...         pyro.sample("theta", dist.Normal(mu, tau))
        >>> packer = SitePacker([SiteSpec(s) for s in latent_sites(pyro.poutine.trace(model).get_trace(), "guide")])
        >>> decenterable_sites(model, packer)
        ['theta']
    """
    kwargs = kwargs or {}
    latent = torch.zeros(packer.dim) if values is None else values.detach()
    leaves = {}
    for spec, u in packer.unpack(latent):
        leaves[spec.name] = (spec, u.clone().requires_grad_())
    runs = []
    for seed in range(2):
        found = {}

        def value(name, msg):
            spec, u = leaves[name]
            params = prior_loc_scale(msg["fn"])
            if params is not None and any(torch.is_tensor(p) and p.requires_grad for p in params):
                found[name] = [torch.as_tensor(p).detach() for p in params]
            if foreign:  # a foreign latent site came before: the prior may depend on it
                found.pop(name, None)
            return spec.transform(u)

        foreign = []
        with torch.enable_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)  # hidden sites draw different values in the two runs
            substitute = _Substitute(set(leaves), value, None)
            foreign = substitute.foreign
            with poutine.block():
                with substitute:
                    model(*args, **kwargs)
        runs.append(found)
    first, second = runs
    return [name for name in first if all(torch.equal(a, b) for a, b in zip(first[name], second[name]))]


class DecenteringTransform(Transform):
    r"""The map :math:`\tilde\theta \mapsto \theta = \mu + \sigma^{1-\lambda}(\tilde\theta - \lambda\mu)` on a packed latent.

    Sites named in ``sites`` are mapped as in the module docstring, every other coordinate is
    left unchanged.  Each call runs the model (blocked, every latent site substituted) up to the
    last of ``sites``; a latent of any batch shape ``(..., D)`` is flattened to draws placed left of
    the model's ``max_plate_nesting`` plate dims.

    Args:
        model (callable): the Pyro model.
        args, kwargs: the model's arguments for this call.
        packer (object): the guide's packing of the latent sites (a ``SitePacker`` of ``pyro_nfvi.guides.sites``).
        sites (list of str): the sites to map (:func:`decenterable_sites`), in the model's order.
        centeredness (torch.Tensor): :math:`\lambda`, one entry per coordinate of ``sites``
            (concatenated in that order), each in :math:`(0, 1]`.
        max_plate_nesting (int): the model's number of plate dims.

    Example:
        >>> import pyro
        >>> from pyro_nfvi.guides.sites import SitePacker, SiteSpec, latent_sites
        >>> def model():
        ...     log_s = pyro.sample("log_s", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(0.0, log_s.exp()))
        >>> packer = SitePacker([SiteSpec(s) for s in latent_sites(pyro.poutine.trace(model).get_trace(), "guide")])
        >>> t = DecenteringTransform(model, (), {}, packer, ["x"], torch.zeros(1), 0)
        >>> y = t(torch.tensor([2.0, 0.5]))  # lambda = 0: x = exp(2) * 0.5
        >>> y, t.log_abs_det_jacobian(torch.tensor([2.0, 0.5]), y)
        (tensor([2.0000, 3.6945]), tensor(2.))
        >>> t.inv(y)
        tensor([2.0000, 0.5000])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, model, args, kwargs, packer, sites, centeredness, max_plate_nesting, cache_size=1):
        super().__init__(cache_size=cache_size)
        self.model, self.args, self.kwargs = model, tuple(args), dict(kwargs)
        self.packer = packer
        self.centeredness = centeredness
        self.max_plate_nesting = int(max_plate_nesting)
        specs = self._specs = {s.name: s for s in packer.specs}
        self.sites, pos = {}, 0
        for name in sites:
            self.sites[name] = (pos, specs[name])
            pos += specs[name].size
        if pos != centeredness.shape[-1]:
            raise ValueError(f"centeredness has {centeredness.shape[-1]} entries, the sites {list(sites)} have {pos}")
        self._last = None

    def _run(self, latent, forward):
        """``(the other side, log|det d theta / d theta~|)`` of a packed ``latent`` (``theta~`` if ``forward``)."""
        batch = latent.shape[:-1]
        flat = latent.reshape((-1,) + (1,) * self.max_plate_nesting + latent.shape[-1:])
        parts = dict((spec.name, u) for spec, u in self.packer.unpack(flat))
        out, log_det = dict(parts), flat.new_zeros(flat.shape[:1])

        def value(name, msg):
            nonlocal log_det
            spec, u = (self.sites[name][1] if name in self.sites else None), parts[name]
            if spec is None:
                return self._specs[name].transform(u)
            start = self.sites[name][0]
            lam = self.centeredness[start : start + spec.size].reshape(spec.shape)
            loc, scale = prior_loc_scale(msg["fn"])
            power = 1.0 - lam
            if forward:
                theta = loc + scale.pow(power) * (u - lam * loc)
                out[name] = theta
            else:
                theta = u
                out[name] = (u - loc) * scale.pow(-power) + lam * loc
            ld = (power * scale.log()).expand(theta.shape)
            log_det = log_det + ld.reshape(ld.shape[0], -1).sum(-1)
            return spec.transform(theta)

        last = next(reversed(self.sites)) if self.sites else None
        _run_model(self.model, self.args, self.kwargs, set(parts), value, last)
        other = torch.cat([out[s.name].reshape(flat.shape[0], -1) for s in self.packer.specs], dim=-1)
        return other.reshape(latent.shape), log_det.reshape(batch)

    def call_and_log_det(self, x):
        """``(y, log|det dy/dx|)`` of a packed ``x``, computed together and not cached."""
        return self._run(x, forward=True)

    def _call(self, x):
        y, log_det = self._run(x, forward=True)
        self._last = (x, y, log_det)
        return y

    def _inverse(self, y):
        x, log_det = self._run(y, forward=False)
        self._last = (x, y, log_det)
        return x

    def log_abs_det_jacobian(self, x, y):
        last = self._last
        if last is not None and (x is last[0] or y is last[1]):
            return last[2]
        return self._run(x, forward=True)[1]
