"""Evaluation of (flow) guides: IWAE log-likelihood, PSIS k-hat and the amortization gap.

All functions are generic over Pyro guides: global guides (``AutoNormal``, flow guides, ...) give
joint estimates; amortized guides (a data plate named by ``plate=`` or ``guide.plate``) give one
estimate per data point.
"""
from .amortization import AmortizationGap, amortization_gap
from .iwae import iwae_log_likelihood, log_importance_weights, psis_khat
from .traces import max_plate_nesting, vectorized_traces

__all__ = [
    "AmortizationGap",
    "amortization_gap",
    "iwae_log_likelihood",
    "log_importance_weights",
    "max_plate_nesting",
    "psis_khat",
    "vectorized_traces",
]
