r"""Pareto-smoothed importance sampling (PSIS) of log importance weights: smoothing and :math:`\hat k`.

The numerics behind :func:`pyro_nfvi.evaluation.psis_khat` and the ArviZ diagnostics of
:mod:`pyro_nfvi.diagnostics`: :func:`psislw` (a thin wrapper of ``arviz.psislw``),
:func:`pareto_khat` (the :math:`\hat k` of draws-first log weights, a block of data points at a
time) and :data:`~pyro_nfvi.evaluation.MIN_PSIS_DRAWS`, the fewest draws for which a :math:`\hat k` can be fitted at all.

PSIS fits a generalized Pareto distribution to the :math:`M = \lceil \min(S/5, 3\sqrt{S/r_\text{eff}})
\rceil` largest of the :math:`S` weights :math:`w_s = \exp(\log w_s)`; its shape :math:`\hat k` measures
how heavy their tail is (:math:`\hat k < 0.5` good, :math:`\hat k \ge 0.7` unreliable).  ``arviz``
needs :math:`M \ge 5` tail draws (it returns :math:`\hat k = \infty` below that, and fails for
:math:`S = 1`), hence ``MIN_PSIS_DRAWS = 21``.

References: Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling*, JMLR 2024;
Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational Inference*, ICML 2018.

Example:
    >>> import torch
    >>> lw = torch.distributions.Normal(0.0, 0.3).sample((1000, 4))  # (S, B): draws first
    >>> tuple(pareto_khat(lw).shape), bool((pareto_khat(lw) < 0.5).all())
    ((4,), True)
"""
import numpy as np
import torch

from ..validation import check_int, check_positive

__all__ = ["MIN_PSIS_DRAWS", "check_log_weights", "check_psis_draws", "pareto_khat", "psislw"]

#: The fewest draws for which ``arviz.psislw`` fits a Pareto tail (``ceil(S / 5) >= 5`` tail draws).
MIN_PSIS_DRAWS = 21


def check_log_weights(caller, log_weights):
    """Raise ``ValueError`` (naming ``caller``) if a log weight is NaN or +inf, or every one is -inf.

    A log weight of -inf is a draw of zero posterior density (e.g. outside the model's support):
    weight 0, which PSIS handles.

    Example:
        >>> check_log_weights("f", np.array([0.0, -np.inf]))
        >>> check_log_weights("f", np.array([0.0, np.nan]))
        Traceback (most recent call last):
            ...
        ValueError: f: 1 of 2 log weights are NaN or +inf (NaN, +inf or all -inf weights: the guide and the model disagree on the support)
    """
    log_weights = np.asarray(log_weights, dtype=np.float64)
    why = "(NaN, +inf or all -inf weights: the guide and the model disagree on the support)"
    bad = int((np.isnan(log_weights) | (log_weights == np.inf)).sum())
    if bad:
        raise ValueError(f"{caller}: {bad} of {log_weights.size} log weights are NaN or +inf {why}")
    if not np.isfinite(log_weights).any():
        raise ValueError(f"{caller}: every draw has zero weight (log weight -inf) {why}")


def check_psis_draws(name, value):
    """Return ``value`` if it is an int of at least :data:`~pyro_nfvi.evaluation.MIN_PSIS_DRAWS` draws, else raise ``ValueError``.

    Args:
        name (str): the argument's name, used in the message (e.g. ``"num_samples"``).
        value: the number of draws given.

    Example:
        >>> check_psis_draws("num_samples", 1000)
        1000
        >>> check_psis_draws("num_samples", 5)
        Traceback (most recent call last):
            ...
        ValueError: num_samples must be an integer >= 21 for a Pareto k-hat (...), got 5
    """
    try:
        return check_int(name, value, minimum=MIN_PSIS_DRAWS)
    except ValueError:
        raise ValueError(
            f"{name} must be an integer >= {MIN_PSIS_DRAWS} for a Pareto k-hat (the tail fit needs the 5 "
            f"largest of at least {MIN_PSIS_DRAWS} draws; use a few thousand for a stable estimate), "
            f"got {value!r}"
        ) from None


def psislw(log_weights, reff=1.0):
    r"""Pareto-smoothed log weights and :math:`\hat k` (a thin wrapper of ``arviz.psislw``).

    The largest :math:`M` weights are replaced by the expected order statistics of the fitted
    generalized Pareto distribution, truncated at the largest raw weight, and the result is
    normalised: :math:`\sum_s \exp(\widetilde{\log w}_s) = 1` along the last axis.  Fewer than
    :data:`~pyro_nfvi.evaluation.MIN_PSIS_DRAWS` draws give :math:`\hat k = \infty` (no smoothing).

    Args:
        log_weights (array-like): ``(..., S)`` log importance weights, draws on the last axis.
        reff (float): relative efficiency of the draws (1 for independent draws from ``q``).

    Returns:
        tuple: normalised smoothed log weights ``(..., S)`` and :math:`\hat k` of shape ``(...)``
        (numpy float64 arrays).

    Reference: Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling*, JMLR 2024.

    Example:
        >>> lw, k = psislw(np.zeros((2, 100)))
        >>> lw.shape, k.shape, bool(np.allclose(np.exp(lw).sum(-1), 1.0))
        ((2, 100), (2,), True)
    """
    import arviz as az  # imported here: importing arviz takes seconds, and most evaluation needs none of it

    reff = check_positive("reff", reff)
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.ndim == 0 or log_weights.shape[-1] < 1:
        raise ValueError(f"log_weights must have at least one draw on the last axis, got shape {log_weights.shape}")
    lw, khat = az.psislw(log_weights, reff=reff)
    return np.asarray(lw), np.asarray(khat)


def pareto_khat(log_weights, reff=1.0, block_size=256):
    r""":math:`\hat k` of draws-first log weights: a scalar for ``(S,)``, one per column for ``(S, B)``.

    The log weights :math:`\log w_s = \log p(x, z_s) - \log q(z_s)` are passed to :func:`psislw`
    ``block_size`` data points at a time (each block converted to float64 with draws last), so the
    float64 copies ``arviz`` makes are bounded by ``block_size x S`` rather than ``B x S``.

    Args:
        log_weights (torch.Tensor or array-like): ``(S,)`` or ``(S, B)``, draws on the first axis;
            ``S >= MIN_PSIS_DRAWS``.
        reff (float): relative efficiency of the draws.
        block_size (int): data points per call of ``arviz.psislw``.

    Returns:
        torch.Tensor: float64 :math:`\hat k`, shape ``()`` or ``(B,)``.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) is not None
        True
        >>> khat = pareto_khat(torch.randn(2000, 3) * 0.1)  # nearly constant weights
        >>> tuple(khat.shape), khat.dtype, bool((khat < 0.5).all())
        ((3,), torch.float64, True)
    """
    block_size = check_int("block_size", block_size, minimum=1)
    lw = torch.as_tensor(log_weights).detach()
    if lw.dim() not in (1, 2):
        raise ValueError(f"log_weights must have shape (S,) or (S, B), draws first; got {tuple(lw.shape)}")
    check_psis_draws("the number of draws (log_weights.shape[0])", lw.shape[0])
    if lw.dim() == 1:
        return torch.as_tensor(psislw(lw.double().cpu().numpy(), reff)[1], dtype=torch.float64)
    blocks = []
    for start in range(0, lw.shape[1], block_size):
        block = lw[:, start : start + block_size].transpose(0, 1).double().cpu().numpy()
        blocks.append(psislw(block, reff)[1])
    return torch.as_tensor(np.concatenate(blocks) if blocks else np.zeros(0), dtype=torch.float64)

