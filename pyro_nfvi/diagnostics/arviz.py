r"""ArviZ interface (written against arviz 0.23): InferenceData from a guide, and corrected PSIS-LOO.

This module builds ArviZ objects (``InferenceData``, ``ELPDData``); the numerics of the log
weights (Pareto smoothing, :math:`\hat k`) live in ``pyro_nfvi.evaluation.psis``, the only
other module that touches ``arviz`` (``arviz.psislw``), and :func:`psislw` is re-exported from
there.  :func:`to_inference_data` draws once from the guide (one vectorized trace of the
guide and the replayed model) and stores the draws, the posterior predictive, the pointwise log
likelihood and the log importance weights :math:`\log p(y, \theta_s) - \log q(\theta_s)` of the
*same* draws.  :func:`loo` uses those weights to correct PSIS-LOO for the fact that the draws come
from ``q``, not from the posterior (Magnusson et al. 2019).
"""
import math

import arviz as az
import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions import Unit
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.poutine.util import prune_subsample_sites
from scipy.special import logsumexp

from ..evaluation.model_kwargs import check_model_kwargs
from ..evaluation.psis import MIN_PSIS_DRAWS, pareto_khat, psislw
from ..evaluation.traces import (
    SAMPLE_PLATE,
    log_weights_from_traces,
    max_plate_nesting,
    resolve_plate,
    site_log_prob,
    vectorized_traces,
)

from ..validation import check_choice, check_int

__all__ = ["loo", "reference_inference_data", "to_inference_data", "OBSERVED_MASK"]

_SCALES = {"log": 1.0, "negative_log": -1.0, "deviance": -2.0}


def _layout(site, batch_shape, depth, event_shape, coords):
    """Dims kept for an array with ``batch_shape`` (plate part only) and ``event_shape``.

    Returns ``(keep, dims)``: which plate-part positions to keep (plate dims, and non-plate dims
    of size > 1) and the dim names (plate names, then ``{site}_dim_{k}``).
    """
    name = site["name"]
    frames = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized and f.name != SAMPLE_PLATE}
    keep, dims, k = [], [], 0
    batch_shape = (1,) * (depth - len(batch_shape)) + tuple(batch_shape)
    for j, size in enumerate(batch_shape):
        frame = frames.get(j - depth)
        if frame is not None:
            keep.append(True)
            dims.append(frame.name)
            coords[frame.name] = np.arange(frame.size)
        elif size == 1:
            keep.append(False)
        else:
            keep.append(True)
            dims.append(f"{name}_dim_{k}")
            k += 1
    dims.extend(f"{name}_dim_{k + i}" for i in range(len(event_shape)))
    return keep, dims


def _draws(site, tensor, depth, event_dim, coords):
    """``(1, S, *site_shape)`` numpy array of a ``(S, b_1..b_depth, *event)`` tensor, and its dims."""
    num = tensor.shape[0]
    batch = tensor.shape[1 : tensor.dim() - event_dim]
    event = tensor.shape[tensor.dim() - event_dim :]
    tensor = tensor.reshape((num,) + (1,) * (depth - len(batch)) + tuple(batch) + tuple(event))
    keep, dims = _layout(site, batch, depth, event, coords)
    shape = [num] + [s for s, kept in zip(tensor.shape[1 : depth + 1], keep) if kept] + list(event)
    return tensor.reshape(shape).detach().cpu().numpy()[None], dims


def _deterministic_value(value, num_samples, depth):
    """``pyro.deterministic`` values and their event dims (their Delta's ``event_dim`` defaults to all dims)."""
    if value.dim() >= depth + 1 and value.shape[0] == num_samples:
        return value, value.dim() - depth - 1
    return value.expand((num_samples,) + (1,) * depth + value.shape), value.dim()


def _site_mask(site):
    """The observed-points mask of a site (``poutine.mask`` and ``Distribution.mask``), or ``None``."""
    fn = site["fn"]
    masks = (site["mask"], fn._mask if isinstance(fn, MaskedDistribution) else None)
    masks = [torch.as_tensor(m, dtype=torch.bool) for m in masks if m is not None and m is not True]
    if not masks:
        return None
    mask = masks[0] if len(masks) == 1 else masks[0] & masks[1]
    return mask.expand(fn.batch_shape)


def to_inference_data(model, guide, *args, num_samples=1000, plate=None, **kwargs):
    r"""Draw ``num_samples`` times from ``guide`` and return an ``arviz.InferenceData`` (one chain).

    Groups (all from one vectorized trace of the guide and the replayed model, so draws, log
    likelihood and weights belong to the same samples):

    * ``posterior``: every latent model site (and ``pyro.deterministic`` site), constrained, with
      dims named after its plates (coords ``0..size-1``) and ``{site}_dim_{k}`` for event dims;
    * ``posterior_predictive``: one draw of each observed site from the likelihood at each draw;
    * ``log_likelihood``: per observed site, :math:`\log p(y_i \mid \theta_s)` per data point (event
      dims summed, plate dims kept, mask applied: masked points hold 0 and are marked in the
      variable's ``attrs["observed_mask"]``, which :func:`loo` reads);
    * ``observed_data``: the observed values;
    * ``sample_stats``: ``log_weight`` = :math:`\log p(y, \theta_s) - \log q(\theta_s)` per draw (per draw
      and data point when a data plate is known and every site lies in it; joint otherwise, unless
      ``plate=`` was passed explicitly, which then raises), with ``attrs["khat"]`` the PSIS
      :math:`\hat k` of those weights (Yao et al. 2018; ``inf`` with fewer than
      :data:`~pyro_nfvi.evaluation.MIN_PSIS_DRAWS` = 21 draws, too few for the tail fit) and
      ``attrs["num_samples"]``.

    ``pyro.factor`` terms enter the weights but not the observed groups.  Plates must not be
    subsampled.

    Args:
        model, guide: a Pyro model and a guide with the same signature.
        *args: passed to both (the data).
        **kwargs: keyword arguments, as ``*args``.
        num_samples (int): number of draws (``>= 2``).
        plate (str or False): data plate of an amortized guide (default ``guide.plate``; ``False``
            for none); selects per-point weights and :math:`\hat k`.

    Returns:
        arviz.InferenceData

    Reference: Kumar, Carroll, Hartikainen & Martin, *ArviZ*, JOSS 2019.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("obs", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = lambda y: pyro.sample("mu", dist.Normal(y.sum() / (len(y) + 1), (len(y) + 1.0) ** -0.5))
        >>> idata = to_inference_data(model, guide, torch.tensor([0.1, 0.5, -0.2]), num_samples=50)
        >>> idata.posterior["mu"].shape, idata.log_likelihood["y"].dims
        ((1, 50), ('chain', 'draw', 'obs'))
    """
    check_model_kwargs(to_inference_data, model, kwargs)
    check_int("num_samples", num_samples, minimum=2)
    explicit = isinstance(plate, str)
    plate = resolve_plate(guide, plate)
    depth = max_plate_nesting(model, guide, args, kwargs)
    with torch.no_grad():
        model_trace, guide_trace = vectorized_traces(model, guide, num_samples, depth, args, kwargs)
        try:
            log_weight = log_weights_from_traces(model_trace, guide_trace, depth, plate)
        except ValueError:
            if explicit or plate is None:
                raise
            plate = None  # guide.plate, but the model has global sites: joint weights
            log_weight = log_weights_from_traces(model_trace, guide_trace, depth, plate)
        posterior, predictive, loglik, observed, dims, coords = {}, {}, {}, {}, {}, {}
        masks = {}
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            fn = site["fn"]
            full = tuple(fn.batch_shape) + tuple(fn.event_shape)
            if site["infer"].get("_deterministic"):
                value, event_dim = _deterministic_value(site["value"], num_samples, depth)
                posterior[name], dims[name] = _draws(site, value, depth, event_dim, coords)
                continue
            if not site["is_observed"]:
                value = site["value"].expand(full) if site["value"].shape != full else site["value"]
                posterior[name], dims[name] = _draws(site, value, depth, fn.event_dim, coords)
                continue
            if isinstance(fn, Unit) or site["value"].numel() == 0:
                continue  # pyro.factor: part of the weights only
            predictive[name], dims[name] = _draws(site, fn.sample(), depth, fn.event_dim, coords)
            value = site["value"]
            try:
                value = value.expand(full[1:])
            except RuntimeError:
                pass
            observed[name] = value.detach().cpu().numpy().reshape(predictive[name].shape[2:])
            lp = site_log_prob(site, scaled=False).expand(fn.batch_shape)
            loglik[name], _ = _draws(site, lp, depth, 0, coords)
            mask = _site_mask(site)
            if mask is not None and not bool(mask.all()):
                masks[name] = _draws(site, mask.to(lp.dtype), depth, 0, coords)[0][0, 0]
    if num_samples >= MIN_PSIS_DRAWS:
        khat = pareto_khat(log_weight).cpu().numpy()  # under a CUDA default device, too
    else:  # too few draws for a tail fit: arviz's convention, k-hat = inf
        khat = np.full(log_weight.shape[1:], np.inf)
    khat = float(khat) if khat.ndim == 0 else khat.astype(np.float64)
    if plate is not None:
        dims["log_weight"] = [plate]
    idata = az.from_dict(
        posterior=posterior,
        posterior_predictive=predictive or None,
        log_likelihood=loglik or None,
        observed_data=observed or None,
        sample_stats={"log_weight": log_weight.double().cpu().numpy()[None]},
        coords=coords,
        dims=dims,
        sample_stats_attrs={"khat": khat, "num_samples": num_samples},
        attrs={"inference_library": "pyro_nfvi"},
    )
    for name, mask in masks.items():  # which points are observed (flattened in C order); see loo
        idata.log_likelihood[name].attrs[OBSERVED_MASK] = mask.astype(np.int8).ravel()
    return idata


#: Attribute of a ``log_likelihood`` variable: 1 where a data point is observed, 0 where ``obs_mask``
#: (or ``poutine.mask``) masked it out, flattened in C order over its data dims.  Set by
#: :func:`to_inference_data` only when some point is masked; :func:`loo` skips the masked points.
OBSERVED_MASK = "observed_mask"


def _log_likelihood(idata, var_name):
    if "log_likelihood" not in idata.groups():
        raise TypeError("loo: idata has no log_likelihood group (use to_inference_data on a model with observations)")
    group = idata.log_likelihood
    if var_name is None:
        names = list(group.data_vars)
        if len(names) != 1:
            raise TypeError(f"loo: found several log likelihood variables {names}; pass var_name=")
        var_name = names[0]
    if var_name not in group.data_vars:
        raise TypeError(f"loo: no log likelihood variable {var_name!r}; have {list(group.data_vars)}")
    return group[var_name]


def loo(idata, var_name=None, reff=1.0, pointwise=True, scale="log"):
    r"""PSIS-LOO for draws from an approximate posterior ``q`` (Magnusson et al. 2019).

    ``arviz.loo`` on raw VI draws treats them as posterior draws.  Here each draw :math:`\theta_s`
    also carries :math:`\log w_s = \log p(y, \theta_s) - \log q(\theta_s)` (``sample_stats.log_weight``
    from :func:`to_inference_data`, summed over data points if stored per point), and the
    leave-one-out ratios are :math:`\log r_{is} = -\log p(y_i \mid \theta_s) + \log w_s`, i.e.
    :math:`p(\theta \mid y_{-i}) / q(\theta)` up to a constant.  They are Pareto-smoothed
    (``arviz.psislw``, normalised) and

    .. math:: \widehat{\mathrm{elpd}}_i = \log \sum_s \tilde w_{is}\, p(y_i \mid \theta_s).

    ``p_loo = lppd - elpd_loo`` with the importance-corrected :math:`\mathrm{lppd}_i = \log \sum_s
    \tilde w_s p(y_i \mid \theta_s)` (PSIS weights of :math:`\log w_s`), and
    ``se = sqrt(n var(elpd_i))``.  The estimate is reliable when the Pareto :math:`\hat k` values
    are small: ``pareto_k`` (per point) and ``posterior_k`` (of :math:`\log w` alone).

    Args:
        idata (arviz.InferenceData): from :func:`to_inference_data`.
        var_name (str): log likelihood variable (needed if there are several).
        reff (float): relative efficiency (1 for independent draws).
        pointwise (bool): include ``loo_i`` and ``pareto_k``.
        scale (str): ``"log"``, ``"negative_log"`` or ``"deviance"`` (as ``arviz.loo``).

    Returns:
        arviz.stats.ELPDData: the fields of ``arviz.loo`` plus ``posterior_k``.

    Reference: Magnusson, Andersen, Jonasson & Vehtari, *Bayesian Leave-One-Out Cross-Validation
    for Large Data*, ICML 2019; Vehtari, Gelman & Gabry, *Practical Bayesian model evaluation using
    leave-one-out cross-validation and WAIC*, Stat. Comput. 2017.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("obs", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = lambda y: pyro.sample("mu", dist.Normal(0.1, 0.6))
        >>> pyro.set_rng_seed(0)
        >>> res = loo(to_inference_data(model, guide, torch.tensor([0.1, 0.5, -0.2]), num_samples=2000))
        >>> res.n_data_points, bool(res.elpd_loo < 0)
        (3, True)
    """
    check_choice("scale", scale, _SCALES)
    if "sample_stats" not in idata.groups() or "log_weight" not in idata.sample_stats:
        raise TypeError("loo: idata needs sample_stats.log_weight (build it with to_inference_data)")
    ll = _log_likelihood(idata, var_name)
    mask = ll.attrs.get(OBSERVED_MASK)
    ll = ll.stack(__sample__=("chain", "draw"))
    obs_dims = [d for d in ll.dims if d != "__sample__"]
    ll = ll.stack(__obs__=obs_dims) if obs_dims else ll.expand_dims("__obs__")
    ll = ll.transpose("__obs__", "__sample__")
    ll_all = ll.values.astype(np.float64)
    keep = np.ones(ll_all.shape[0], dtype=bool) if mask is None else np.asarray(mask).astype(bool).ravel()
    if keep.shape != (ll_all.shape[0],):
        raise ValueError(
            f"loo: the log likelihood's {OBSERVED_MASK!r} attribute has {keep.size} entries for "
            f"{ll_all.shape[0]} data points; rebuild idata with to_inference_data"
        )
    if not keep.any():
        raise ValueError("loo: every data point of the log likelihood is masked (obs_mask); nothing to score")
    ll_np = ll_all[keep]  # masked observations are no data points (their log likelihood is a 0 placeholder)
    lw = idata.sample_stats["log_weight"]
    lw = lw.sum([d for d in lw.dims if d not in ("chain", "draw")]).stack(__sample__=("chain", "draw"))
    lw_np = lw.values.astype(np.float64)
    n_obs, n_samples = ll_np.shape
    if lw_np.shape != (n_samples,):
        raise ValueError(f"loo: log_weight has {lw_np.shape} draws, log likelihood {n_samples}")

    lw_loo, pareto_k = psislw(-ll_np + lw_np[None], reff)
    loo_i = logsumexp(lw_loo + ll_np, axis=1)
    lw_post, posterior_k = psislw(lw_np[None], reff)
    lppd = float(logsumexp(lw_post + ll_np, axis=1).sum())
    scale_value = _SCALES[scale]
    elpd = float(loo_i.sum())
    se = float((n_obs * np.var(scale_value * loo_i)) ** 0.5)
    p_loo = lppd - elpd
    good_k = min(1 - 1 / math.log10(n_samples), 0.7)
    warning = bool(np.any(pareto_k > good_k))
    data = [scale_value * elpd, se, p_loo, n_samples, n_obs, warning]
    index = ["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning"]
    if pointwise:
        template = ll.isel(__sample__=0, drop=True)
        loo_full = np.full(keep.shape, np.nan)
        loo_full[keep] = scale_value * loo_i
        k_full = np.full(keep.shape, np.nan)
        k_full[keep] = pareto_k
        loo_da = template.copy(data=loo_full).rename("loo_i")
        k_da = template.copy(data=k_full).rename("pareto_shape")
        if obs_dims:
            loo_da, k_da = loo_da.unstack("__obs__"), k_da.unstack("__obs__")
        else:
            loo_da, k_da = loo_da.isel(__obs__=0, drop=True), k_da.isel(__obs__=0, drop=True)
        data += [loo_da, k_da]
        index += ["loo_i", "pareto_k"]
    data += [scale, good_k, float(posterior_k[0])]
    index += ["scale", "good_k", "posterior_k"]
    return az.ELPDData(data=data, index=index)


def _vectorized_draws(probe, draws, depth):
    """``{site: (S, 1, ..., *site shape)}``: each latent site's draws laid out under the sample plate."""
    latent = [n for n, s in probe.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
    missing, extra = sorted(set(latent) - set(draws)), sorted(set(draws) - set(latent))
    if missing or extra:
        raise ValueError(
            f"draws must hold one entry per latent site of the model, {sorted(latent)}; "
            + (f"missing {missing}" if missing else f"not latent sites: {extra}")
        )
    sizes = {name: len(draws[name]) for name in latent}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every site needs the same number of draws, got {sizes}")
    out = {}
    for name in latent:
        site = probe.nodes[name]
        shape = tuple(site["value"].shape)
        value = torch.as_tensor(draws[name])
        if tuple(value.shape[1:]) != shape:
            raise ValueError(
                f"site {name!r}: draws of shape {tuple(value.shape)}, expected (num_draws,) + {shape}"
            )
        batch = len(shape) - site["fn"].event_dim
        out[name] = value.to(site["value"].dtype).reshape((len(value),) + (1,) * (depth - batch) + shape)
    return out


def reference_inference_data(model, draws, *args, **kwargs):
    r"""An ``arviz.InferenceData`` of reference draws (NUTS, exact), in the layout of :func:`to_inference_data`.

    The model runs once, vectorized over the draws: every latent site is conditioned on its draws
    :math:`\theta_s` inside ``pyro.plate`` of the draws, and each observed site gives
    :math:`\log p(y_i \mid \theta_s)` per data point.  Groups: ``posterior`` (same variable and dim
    names as :func:`to_inference_data`'s, so that ``arviz.summary`` and plots line up),
    ``log_likelihood`` and ``observed_data``.  There is no ``sample_stats.log_weight``: the draws
    are posterior draws, so plain ``arviz.loo`` applies (and this package's :func:`loo` does not).

    Args:
        model: the Pyro model.
        draws (dict): ``{site: draws (num_draws, *site shape)}`` for every latent site, e.g.
            :func:`pyro_nfvi.targets.reference.load_reference`'s ``draws``.
        *args, **kwargs: the model's arguments (the data).

    Returns:
        arviz.InferenceData

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("obs", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([0.1, 0.5, -0.2])
        >>> post = dist.Normal(y.sum() / 4, 0.5).sample((500,))  # the exact posterior
        >>> idata = reference_inference_data(model, {"mu": post}, y)
        >>> idata.posterior["mu"].shape, idata.log_likelihood["y"].dims
        ((1, 500), ('chain', 'draw', 'obs'))
        >>> bool(az.loo(idata).elpd_loo < 0)
        True
    """
    check_model_kwargs(reference_inference_data, model, kwargs)
    if not isinstance(draws, dict) or not draws:
        raise ValueError("draws must be a non-empty dict {site: tensor of draws (num_draws, *site shape)}")
    depth = max_plate_nesting(model, model, args, kwargs)
    with torch.no_grad():
        with poutine.block():
            probe = prune_subsample_sites(poutine.trace(model).get_trace(*args, **kwargs))
        data = _vectorized_draws(probe, draws, depth)
        num_draws = len(next(iter(data.values())))

        def vectorized(*a, **k):
            with pyro.plate(SAMPLE_PLATE, num_draws, dim=-(depth + 1)):
                return model(*a, **k)

        trace = poutine.trace(poutine.condition(vectorized, data=data)).get_trace(*args, **kwargs)
        trace = prune_subsample_sites(trace)
        posterior, loglik, observed, dims, coords = {}, {}, {}, {}, {}
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            fn = site["fn"]
            if name in data:
                posterior[name], dims[name] = _draws(site, site["value"], depth, fn.event_dim, coords)
                continue
            if site["infer"].get("_deterministic"):
                value, event_dim = _deterministic_value(site["value"], num_draws, depth)
                posterior[name], dims[name] = _draws(site, value, depth, event_dim, coords)
                continue
            if not site["is_observed"] or isinstance(fn, Unit) or site["value"].numel() == 0:
                continue  # pyro.factor: no data points
            if _site_mask(site) is not None:
                raise ValueError(f"observed site {name!r} is masked; reference_inference_data needs every point "
                                 "observed")
            lp = site_log_prob(site, scaled=False).expand(fn.batch_shape)
            loglik[name], dims[name] = _draws(site, lp, depth, 0, coords)
            full = tuple(fn.batch_shape) + tuple(fn.event_shape)
            observed[name] = _draws(site, site["value"].expand(full), depth, fn.event_dim, coords)[0][0, 0]
    return az.from_dict(
        posterior=posterior,
        log_likelihood=loglik or None,
        observed_data=observed or None,
        coords=coords,
        dims=dims,
        attrs={"inference_library": "pyro_nfvi (reference draws)"},
    )
