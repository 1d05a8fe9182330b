"""Evaluation of (flow) guides: IWAE log-likelihood, PSIS k-hat, the amortization gap, and moment errors against reference draws.

All functions are generic over Pyro guides: global guides (``AutoNormal``, flow guides, ...) give
joint estimates; amortized guides (a data plate named by ``plate=`` or ``guide.plate``) give one
estimate per data point.  The Pareto smoothing of log weights (:func:`psislw`, :func:`pareto_khat`)
lives in ``pyro_nfvi.evaluation.psis``; :mod:`pyro_nfvi.diagnostics` builds ArviZ objects on top
of this package and is never imported by it.
"""
from .accuracy import PosteriorError, posterior_error
from .amortization import AmortizationGap, amortization_gap
from .iwae import iwae_log_likelihood, log_importance_weights, psis_khat
from .psis import MIN_PSIS_DRAWS, pareto_khat, psislw
from .traces import max_plate_nesting, vectorized_traces

__all__ = [
    "MIN_PSIS_DRAWS",
    "AmortizationGap",
    "PosteriorError",
    "amortization_gap",
    "iwae_log_likelihood",
    "log_importance_weights",
    "max_plate_nesting",
    "pareto_khat",
    "posterior_error",
    "psis_khat",
    "psislw",
    "vectorized_traces",
]
