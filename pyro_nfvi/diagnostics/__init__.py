"""ArviZ diagnostics for guides: :func:`to_inference_data` and importance-corrected :func:`loo`.

Everything that touches ``arviz`` lives in :mod:`pyro_nfvi.diagnostics.arviz` (written against
arviz 0.23) and is re-exported here.
"""
from .arviz import loo, psislw, to_inference_data

__all__ = ["loo", "psislw", "to_inference_data"]
