"""ArviZ diagnostics for guides: :func:`to_inference_data`, importance-corrected :func:`loo`, and
:func:`reference_inference_data` for reference (NUTS) draws in the same layout; :func:`plot_marginals`
draws a variable's marginal under several of them on one axis; :func:`importance_resample` turns a
guide's draws into draws of the importance-corrected (PSIS) posterior.

The ArviZ objects are built in ``pyro_nfvi.diagnostics.arviz`` (written against arviz 0.23);
:func:`psislw`, the Pareto smoothing of log weights, lives in ``pyro_nfvi.evaluation.psis`` and
is re-exported here.
"""
from ..evaluation.psis import psislw
from .arviz import loo, reference_inference_data, to_inference_data
from .plot import plot_marginals
from .resample import importance_resample

__all__ = ["importance_resample", "loo", "plot_marginals", "psislw", "reference_inference_data", "to_inference_data"]
