r"""How far a guide's posterior is from reference draws (NUTS, or exact), moment by moment.

:func:`posterior_error` draws from the guide (one vectorized trace) and compares the
first two moments of every scalar component of every site with the reference's, on the
unconstrained scale :math:`u = \mathrm{biject\_to}(\mathrm{support})^{-1}(z)` (log for a scale,
stick-breaking for a simplex, ...): there the moments exist and a few thousand draws estimate them
well, while the sd of a heavy-tailed positive site such as eight schools' tau does not settle.
With ``importance=True`` the guide's draws are weighted by their Pareto-smoothed importance weights
:math:`\tilde w_s \propto p(x, z_s) / q(z_s)` (self-normalised importance sampling, Yao et al. 2018):
the moments of the importance-corrected posterior, which is what a guide trained as a proposal
(``IW_ELBO``, DReG) is for.
"""
from typing import NamedTuple

import pyro
import torch
from torch.distributions import biject_to

from ..validation import check_int
from .psis import check_log_weights, check_psis_draws, psislw
from .traces import log_weights_from_traces, max_plate_nesting, vectorized_traces

__all__ = ["PosteriorError", "posterior_error"]


class PosteriorError(NamedTuple):
    """``mean`` = ``max |mean error| / reference sd`` and ``sd`` = ``max |sd ratio - 1|`` over all components,
    ``sites`` = ``{site: (mean error, sd error)}`` (each the max over the site's components), and, for
    importance-weighted moments, the PSIS ``khat`` of the weights and their effective sample size ``ess``
    (:math:`1 / \sum_s \tilde w_s^2`; ``None`` otherwise)."""

    mean: float
    sd: float
    sites: dict
    khat: float = None
    ess: float = None


@torch.no_grad()
def posterior_error(model, guide, *args, reference, num_samples=4000, importance=False, **kwargs):
    r"""Moment errors of ``guide`` against ``reference`` draws, in reference sds, on the unconstrained scale.

    For each scalar component :math:`j` of each site: :math:`|\bar u^q_j - \bar u^{ref}_j| / s^{ref}_j`
    and :math:`|s^q_j / s^{ref}_j - 1|`; the result holds the maxima.  The issue targets of this
    package are both at most 0.1.

    Args:
        model, guide: the Pyro model and a fitted guide.
        *args: the model's arguments.
        **kwargs: keyword arguments, as ``*args``.
        reference (dict): ``{site: tensor of draws (num_draws, *site shape)}`` (e.g.
            ``pyro_nfvi.targets.reference.load_reference``'s ``draws``).
        num_samples (int): guide draws, in one trace of the guide under a particle plate.  Only the
            guide runs: the draws do not pass through the model, whose broadcasting
            :class:`~pyro.infer.Predictive` would rely on.
        importance (bool): weight the draws by their Pareto-smoothed importance weights (the model is
            replayed against them; plates must not be subsampled); then at least
            :data:`~pyro_nfvi.evaluation.MIN_PSIS_DRAWS` draws.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> reference = {"s": dist.LogNormal(0.0, 1.0).sample((4000,))}
        >>> guide = lambda: pyro.sample("s", dist.LogNormal(0.3, 1.0))
        >>> err = posterior_error(model, guide, reference=reference)
        >>> 0.2 < err.mean < 0.4, err.sd < 0.1
        (True, True)
        >>> corrected = posterior_error(model, guide, reference=reference, importance=True)
        >>> corrected.mean < 0.1, corrected.khat < 0.7
        (True, True)
    """
    if importance:
        check_psis_draws("num_samples", num_samples)
    else:
        check_int("num_samples", num_samples, minimum=2)
    if not isinstance(reference, dict) or not reference:
        raise ValueError("reference must be a non-empty dict {site: draws}")
    trace = pyro.poutine.trace(model).get_trace(*args, **kwargs)
    missing = [s for s in reference if s not in trace.nodes or trace.nodes[s]["type"] != "sample"]
    if missing:
        raise ValueError(f"reference sites {missing} are not sample sites of the model")
    depth = max_plate_nesting(model, guide, args, kwargs)
    weights = khat = ess = None
    if importance:
        model_trace, guide_trace = vectorized_traces(model, guide, num_samples, depth, args, kwargs)
        log_weights = log_weights_from_traces(model_trace, guide_trace, depth).double()
        check_log_weights("posterior_error(importance=True)", log_weights.cpu().numpy())
        smoothed, khat = psislw(log_weights.cpu().numpy())
        weights = torch.as_tensor(smoothed, dtype=torch.float64).exp()
        khat, ess = float(khat), float(1.0 / (weights**2).sum())
    else:
        with pyro.plate("_num_samples", num_samples, dim=-(depth + 1)):
            guide_trace = pyro.poutine.trace(guide).get_trace(*args, **kwargs)
    sites = {}
    for site, ref in reference.items():
        if site not in guide_trace.nodes:
            raise ValueError(f"reference site {site!r} is not a sample site of the guide")
        to_real = biject_to(trace.nodes[site]["fn"].support).inv
        shape = tuple(trace.nodes[site]["value"].shape)
        value = guide_trace.nodes[site]["value"].detach().double()
        if value.numel() != num_samples * trace.nodes[site]["value"].numel():
            raise ValueError(
                f"site {site!r}: the guide's draw of shape {tuple(value.shape)} does not hold {num_samples} "
                f"draws of the model's shape {shape}"
            )
        ref_u = to_real(torch.as_tensor(ref).double()).reshape(len(ref), -1)
        q_u = to_real(value.reshape((num_samples,) + shape)).reshape(num_samples, -1)
        if q_u.shape[1] != ref_u.shape[1]:
            raise ValueError(
                f"site {site!r}: the guide's draws have {q_u.shape[1]} unconstrained components, the reference "
                f"{ref_u.shape[1]}; is the reference for this model?"
            )
        sd = ref_u.std(0)
        if weights is None:
            q_mean, q_sd = q_u.mean(0), q_u.std(0)
        else:
            w = weights.to(q_u.device).unsqueeze(-1)
            q_mean = (w * q_u).sum(0)
            q_sd = (w * (q_u - q_mean) ** 2).sum(0).sqrt()
        mean_err = ((q_mean - ref_u.mean(0)).abs() / sd).max().item()
        sd_err = (q_sd / sd - 1).abs().max().item()
        sites[site] = (mean_err, sd_err)
    return PosteriorError(max(m for m, _ in sites.values()), max(s for _, s in sites.values()), sites, khat, ess)
