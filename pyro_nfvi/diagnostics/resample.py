r"""Draws of the importance-corrected posterior: :func:`importance_resample` of an ``InferenceData``.

A guide's draws :math:`\theta_s \sim q` estimate posterior expectations with a bias that no number of
draws removes.  Self-normalised importance sampling with Pareto-smoothed weights
:math:`\tilde w_s \propto p(y, \theta_s) / q(\theta_s)` removes it where the weights' tail is light
(PSIS :math:`\hat k < 0.7`; Yao, Vehtari, Simpson & Gelman 2018), and is what a guide trained as an
importance-sampling proposal (``IW_ELBO`` with DReG, the default of :func:`pyro_nfvi.fit`) is for.
ArviZ's summaries and plots take equally weighted draws, so :func:`importance_resample` turns the
weights into draws: systematic resampling keeps draw :math:`s` about :math:`M \tilde w_s` times.
"""
import arviz as az
import numpy as np
import xarray as xr

from ..evaluation.psis import check_log_weights, psislw
from ..validation import check_int

__all__ = ["RESAMPLED_GROUPS", "importance_resample"]

#: The groups of an ``InferenceData`` whose draws are resampled (the others are kept as they are).
RESAMPLED_GROUPS = ("posterior", "posterior_predictive", "log_likelihood")


def _pick(ds, index):
    """``ds`` (dims ``chain, draw, ...``) with its draws flattened over chains and taken at ``index``: one chain."""
    data_vars = {}
    for name, da in ds.data_vars.items():
        if da.dims[:2] != ("chain", "draw"):
            raise ValueError(f"importance_resample: variable {name!r} has dims {da.dims}, not (chain, draw, ...)")
        values = da.values.reshape((-1,) + da.shape[2:])[index][None]
        data_vars[name] = (da.dims, values, da.attrs)
    coords = {k: v for k, v in ds.coords.items() if k not in ("chain", "draw")}
    coords.update(chain=[0], draw=np.arange(len(index)))
    return xr.Dataset(data_vars, coords=coords, attrs=ds.attrs)


def importance_resample(idata, num_samples=None, seed=None):
    r"""Resample ``idata``'s draws by their Pareto-smoothed importance weights; return a new ``InferenceData``.

    With :math:`\log w_s = \log p(y, \theta_s) - \log q(\theta_s)` (``sample_stats.log_weight`` of
    :func:`~pyro_nfvi.diagnostics.to_inference_data`, summed over data points where stored per point),
    PSIS smooths and normalises the weights to :math:`\tilde w_s`, and systematic resampling
    (Kitagawa 1996) keeps draw :math:`s` either :math:`\lfloor M \tilde w_s \rfloor` or
    :math:`\lceil M \tilde w_s \rceil` times; the kept draws are shuffled.  The groups
    ``posterior``, ``posterior_predictive`` and ``log_likelihood`` are resampled together (a draw
    keeps its predictive draw and log likelihood); ``sample_stats.log_weight`` becomes 0 (the new draws stand for the corrected
    posterior, so :func:`~pyro_nfvi.diagnostics.loo` treats them as posterior draws), and its
    attributes hold the weights' ``khat`` (trust the result for :math:`\hat k < 0.7`), their
    effective sample size ``ess`` = :math:`1 / \sum_s \tilde w_s^2` (repeated draws carry no new
    information: summaries are only as precise as ``ess`` draws) and ``num_proposals``.

    Reference: Yao, Vehtari, Simpson & Gelman, *Yes, but did it work?: Evaluating variational
    inference*, ICML 2018; Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto smoothed importance
    sampling*, JMLR 2024.

    Args:
        idata (arviz.InferenceData): from :func:`~pyro_nfvi.diagnostics.to_inference_data`.
        num_samples (int): draws to return (default: as many as ``idata`` holds).
        seed (int): seed of the resampling's ``numpy`` generator (default: fresh entropy).

    Returns:
        arviz.InferenceData: one chain of ``num_samples`` draws.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_nfvi.diagnostics import to_inference_data
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("obs", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([1.0, 1.5, 2.0])   # posterior N(1.125, 0.5^2)
        >>> guide = lambda y: pyro.sample("mu", dist.Normal(0.8, 0.7))
        >>> pyro.set_rng_seed(0)
        >>> idata = to_inference_data(model, guide, y, num_samples=4000)
        >>> corrected = importance_resample(idata, seed=0)
        >>> round(float(idata.posterior["mu"].mean()), 1), round(float(corrected.posterior["mu"].mean()), 1)
        (0.8, 1.1)
        >>> corrected.sample_stats.attrs["khat"] < 0.7
        True
    """
    if not isinstance(idata, az.InferenceData):
        raise TypeError(f"importance_resample: idata must be an arviz.InferenceData, got {type(idata).__name__}")
    if "sample_stats" not in idata.groups() or "log_weight" not in idata.sample_stats:
        raise TypeError("importance_resample: idata needs sample_stats.log_weight (build it with to_inference_data)")
    lw = idata.sample_stats["log_weight"]
    lw = lw.sum([d for d in lw.dims if d not in ("chain", "draw")]).transpose("chain", "draw")
    lw = lw.values.astype(np.float64).reshape(-1)
    check_log_weights("importance_resample", lw)
    num_samples = lw.size if num_samples is None else check_int("num_samples", num_samples)
    smoothed, khat = psislw(lw)
    weights = np.exp(smoothed)
    rng = np.random.default_rng(seed)
    positions = (rng.random() + np.arange(num_samples)) / num_samples
    index = np.minimum(np.searchsorted(np.cumsum(weights), positions), lw.size - 1)
    rng.shuffle(index)
    groups = {}
    for group in idata.groups():
        ds = idata[group]
        if group in RESAMPLED_GROUPS:
            ds = _pick(ds, index)
        elif group == "sample_stats":
            ds = _pick(ds, index)
            ds["log_weight"] = xr.zeros_like(ds["log_weight"])
            ds.attrs = dict(ds.attrs, khat=float(khat), ess=float(1.0 / np.sum(weights**2)), num_proposals=int(lw.size))
        groups[group] = ds
    return az.InferenceData(**groups)
