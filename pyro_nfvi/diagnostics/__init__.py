"""ArviZ diagnostics for guides: :func:`to_inference_data` and importance-corrected :func:`loo`.

The ArviZ objects are built in ``pyro_nfvi.diagnostics.arviz`` (written against arviz 0.23);
:func:`psislw`, the Pareto smoothing of log weights, lives in ``pyro_nfvi.evaluation.psis`` and
is re-exported here.
"""
from ..evaluation.psis import psislw
from .arviz import loo, to_inference_data

__all__ = ["loo", "psislw", "to_inference_data"]
