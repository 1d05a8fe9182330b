r"""Importance-weighted evaluation of a guide: log importance weights, IWAE log-likelihood and PSIS :math:`\hat k`.

All three functions draw from the guide in vectorized chunks (one outer ``pyro.plate``), score each
draw under the guide that produced it and under the replayed model, and work with the log weights
:math:`\log w_s = \log p(x, z_s) - \log q(z_s)`; the Pareto smoothing itself lives in
``pyro_nfvi.evaluation.psis``.
"""
import math

import torch

from ..validation import check_int
from .model_kwargs import check_model_kwargs
from .psis import check_psis_draws, pareto_khat
from .traces import log_weights_from_traces, max_plate_nesting, resolve_plate, vectorized_traces

__all__ = ["iwae_log_likelihood", "log_importance_weights", "psis_khat"]


def _chunks(num_samples, chunk_size):
    for start in range(0, num_samples, chunk_size):
        yield min(chunk_size, num_samples - start)


def _setup(model, guide, args, kwargs, plate):
    plate = resolve_plate(guide, plate)
    depth = max_plate_nesting(model, guide, args, kwargs)
    return plate, depth


def log_importance_weights(model, guide, *args, num_samples=1000, chunk_size=None, plate=None, **kwargs):
    r"""Log importance weights :math:`\log p(x, z_s) - \log q(z_s)`, :math:`z_s \sim q`, of ``num_samples`` draws.

    Args:
        model, guide: a Pyro model and a guide with the same signature.
        *args: passed to both.
        **kwargs: keyword arguments, as ``*args``.
        num_samples (int): number of draws ``S``.
        chunk_size (int): draws per vectorized trace (default: all at once).
        plate (str or False): data plate for per-point weights (default ``guide.plate`` if the guide
            has one; ``False`` forces joint weights).

    Returns:
        torch.Tensor: ``(S,)`` joint log weights, or ``(S, B)`` per data point of ``plate``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> log_importance_weights(model, model, num_samples=4).abs().max().item()
        0.0
    """
    check_model_kwargs(log_importance_weights, model, kwargs)
    check_int("num_samples", num_samples)
    chunk_size = num_samples if chunk_size is None else check_int("chunk_size", chunk_size)
    plate, depth = _setup(model, guide, args, kwargs, plate)
    out, start = None, 0
    with torch.no_grad():
        for n in _chunks(num_samples, chunk_size):
            model_trace, guide_trace = vectorized_traces(model, guide, n, depth, args, kwargs)
            lw = log_weights_from_traces(model_trace, guide_trace, depth, plate)
            del model_trace, guide_trace
            if out is None:  # filled chunk by chunk: no list of chunks and no concatenated copy
                out = lw.new_empty((num_samples,) + lw.shape[1:])
            out[start : start + n] = lw
            start += n
    return out


def iwae_log_likelihood(model, guide, *args, num_samples=1000, chunk_size=100, plate=None, **kwargs):
    r"""Importance-weighted estimate of the evidence: :math:`\log \frac1k \sum_{s=1}^k p(x, z_s)/q(z_s)`.

    The IWAE bound of Burda et al. (2016): a stochastic lower bound of :math:`\log p(x)` whose
    expectation increases to :math:`\log p(x)` with ``k = num_samples``.

    * Amortized guide (a data plate is known: ``plate=`` or ``guide.plate``): the estimate per data
      point, :math:`\log \frac1k \sum_s p(x_i, z_{is}) / q(z_{is} \mid x_i)`, a ``(B,)`` tensor.  Every
      site must lie in the data plate; a latent or observed site outside it (a global latent) makes
      the per-point estimate non-separable and raises ``ValueError`` -- use ``plate=False`` then.
    * Global guide (no plate): the scalar :math:`\log p(\text{data})` (a 0-d tensor).

    The ``k`` draws are taken ``chunk_size`` at a time, each chunk one vectorized trace (guide in an
    outer ``pyro.plate("_num_samples", chunk_size, dim=-(max_plate_nesting + 1))``, model replayed),
    and combined with a running ``logaddexp``; memory is bounded by ``chunk_size x batch``, not ``k``.
    Values are scored under the guide exactly as it sampled them, so flows without an analytic
    inverse (planar, radial) are fine.  Runs under ``torch.no_grad()``; plates must not be subsampled.

    Memory (measured, CPU, float32): a Bernoulli VAE on binarized MNIST (784-200-200-50 encoder,
    50-200-200-784 decoder), one test batch of ``B = 100`` images, ``k = 5000``; peak RSS
    (``resource.getrusage``) minus the RSS just before the call, each run in a fresh process:
    67 MiB with ``chunk_size=50``, 179 MiB with ``chunk_size=100``, 277 MiB with ``chunk_size=250``.
    The peak follows ``chunk_size x B`` and not ``k`` (``k = 500`` vs ``5000`` at ``chunk_size=50``:
    67 vs 67 MiB), so ``k = 5000`` over the 10,000 MNIST test points (100 batches of 100) runs in
    bounded memory (about 15-25 s per batch on one core).  Reproduce with
    ``python benchmarks/measure_iwae_memory.py``.

    Args:
        model, guide: a Pyro model and a guide with the same signature.
        *args: passed to both (e.g. the data batch).
        **kwargs: keyword arguments, as ``*args``.
        num_samples (int): ``k``.
        chunk_size (int): draws per vectorized trace.
        plate (str or False): name of the data plate (default ``guide.plate`` when the guide has it;
            ``False`` forces the joint estimate).

    Returns:
        torch.Tensor: ``(B,)`` per data point, or a scalar for a global guide.

    Reference: Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(x):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):  # the exact posterior N(x/2, 1/2)
        ...     pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5))
        >>> x = torch.tensor(0.3)
        >>> est = iwae_log_likelihood(model, guide, x, num_samples=10)
        >>> bool(torch.isclose(est, dist.Normal(0.0, 2.0 ** 0.5).log_prob(x), atol=1e-5))
        True
    """
    check_model_kwargs(iwae_log_likelihood, model, kwargs)
    check_int("num_samples", num_samples)
    check_int("chunk_size", chunk_size)
    plate, depth = _setup(model, guide, args, kwargs, plate)
    total = None
    with torch.no_grad():
        for n in _chunks(num_samples, chunk_size):
            model_trace, guide_trace = vectorized_traces(model, guide, n, depth, args, kwargs)
            lw = log_weights_from_traces(model_trace, guide_trace, depth, plate)
            chunk = torch.logsumexp(lw, 0)
            total = chunk if total is None else torch.logaddexp(total, chunk)
            del model_trace, guide_trace, lw
    return total - math.log(num_samples)


def psis_khat(model, guide, *args, num_samples=1000, chunk_size=100, plate=None, **kwargs):
    r"""Pareto :math:`\hat k` of the importance weights :math:`p(x, z)/q(z)`, :math:`z \sim q`.

    Fits a generalized Pareto distribution to the largest weights with ``arviz.psislw``
    (Pareto-smoothed importance sampling, :func:`pyro_nfvi.evaluation.pareto_khat`).  Yao et al.
    (2018) use :math:`\hat k` as a diagnostic of the variational approximation: :math:`\hat k < 0.5`
    good, :math:`0.5 \le \hat k < 0.7` usable, :math:`\hat k \ge 0.7` the weights' variance is
    (close to) infinite and the approximation is poor.  For a proposal :math:`N(0, \sigma^2)` of a
    target :math:`N(0, 1)` the true shape is :math:`k = 1 - \sigma^2` for :math:`\sigma < 1`.

    The draws are taken ``chunk_size`` at a time (one vectorized trace each), so the traces never
    hold more than ``chunk_size x B`` draws; only the ``(S, B)`` log weights are kept, and they are
    smoothed a block of data points at a time.

    Args:
        model, guide: a Pyro model and a guide with the same signature.
        *args: passed to both.
        **kwargs: keyword arguments, as ``*args``.
        num_samples (int): draws, at least :data:`~pyro_nfvi.evaluation.MIN_PSIS_DRAWS` (21,
            the fewest for which the tail can be fitted); a few thousand for a stable fit.
        chunk_size (int): draws per vectorized trace.
        plate (str or False): data plate for one :math:`\hat k` per data point (default
            ``guide.plate``; ``False`` forces the global :math:`\hat k`).

    Returns:
        torch.Tensor: a scalar :math:`\hat k` (global guide) or ``(B,)`` (per data point), float64.

    References: Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational
    Inference*, ICML 2018; Vehtari et al., *Pareto Smoothed Importance Sampling*, JMLR 2024.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = lambda: pyro.sample("x", dist.Normal(0.0, 0.95))
        >>> pyro.set_rng_seed(0)
        >>> bool(psis_khat(model, guide, num_samples=2000) < 0.5)
        True
    """
    check_model_kwargs(psis_khat, model, kwargs)
    check_psis_draws("num_samples", num_samples)
    lw = log_importance_weights(
        model, guide, *args, num_samples=num_samples, chunk_size=chunk_size, plate=plate, **kwargs
    )
    return pareto_khat(lw)
