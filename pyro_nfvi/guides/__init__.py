"""Flow guides for any Pyro model: :class:`~pyro_nfvi.guides.AutoFlowGuide`, :class:`AmortizedFlowGuide`, and the fast path
(:class:`FastSVI`, :func:`fit_fast`: Pyro's ``ELBOModule`` with one torch optimizer).

* ``pyro_nfvi.guides.sites`` -- latent sites and their packing into one unconstrained vector;
* ``pyro_nfvi.guides.observed`` -- where an amortized guide finds its encoder's input;
* ``pyro_nfvi.guides.encoder_input`` -- what that encoder accepts, and its standardisation;
* ``pyro_nfvi.guides.state`` -- what a guide saves (parameters + fingerprint) and the param store;
* ``pyro_nfvi.guides.base`` -- what the two guides share;
* ``pyro_nfvi.guides.fast`` -- the fast training path, behind one seam;
* ``pyro_nfvi.guides.checkpoint`` -- atomic checkpoints that resume a run bit for bit;
* ``pyro_nfvi.guides.laplace`` -- the Laplace approximation and the whitening of ``precondition=True``;
* ``pyro_nfvi.guides.decentering`` -- the learned non-centering of hierarchical sites (``decenter=True``).
"""
from .amortized import AmortizedFlowGuide
from .auto import AutoFlowGuide
from .checkpoint import load_checkpoint, save_checkpoint
from .decentering import DecenteringTransform, decenterable_sites
from .fast import FastSVI, check_module_local_contexts, fit_fast
from .laplace import PRECONDITION_MAX_DIM, Preconditioner, laplace_approximation

__all__ = [
    "AmortizedFlowGuide",
    "AutoFlowGuide",
    "DecenteringTransform",
    "FastSVI",
    "PRECONDITION_MAX_DIM",
    "Preconditioner",
    "check_module_local_contexts",
    "decenterable_sites",
    "fit_fast",
    "laplace_approximation",
    "load_checkpoint",
    "save_checkpoint",
]
