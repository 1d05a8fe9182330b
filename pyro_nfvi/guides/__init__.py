"""Flow guides for any Pyro model: :class:`AutoFlowGuide`, :class:`AmortizedFlowGuide`, and the fast path
(:class:`FastSVI`, :func:`fit_fast`: Pyro's ``ELBOModule`` with one torch optimizer).

* :mod:`~pyro_nfvi.guides.sites` -- latent sites and their packing into one unconstrained vector;
* :mod:`~pyro_nfvi.guides.observed` -- where an amortized guide finds its encoder's input;
* :mod:`~pyro_nfvi.guides.encoder_input` -- what that encoder accepts, and its standardisation;
* :mod:`~pyro_nfvi.guides.state` -- what a guide saves (parameters + fingerprint) and the param store;
* :mod:`~pyro_nfvi.guides.base` -- what the two guides share;
* :mod:`~pyro_nfvi.guides.fast` -- the fast training path, behind one seam;
* :mod:`~pyro_nfvi.guides.checkpoint` -- atomic checkpoints that resume a run bit for bit.
"""
from .amortized import AmortizedFlowGuide
from .auto import AutoFlowGuide
from .checkpoint import load_checkpoint, save_checkpoint
from .fast import FastSVI, fit_fast

__all__ = ["AmortizedFlowGuide", "AutoFlowGuide", "FastSVI", "fit_fast", "load_checkpoint", "save_checkpoint"]
