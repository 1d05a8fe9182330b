"""Training objectives for flow guides: annealed free energy, KL warm-up and free bits, and two
lower-variance gradient estimators (sticking the landing, importance weighting with DReG).

:class:`~pyro_nfvi.objectives.AnnealedELBO` is a drop-in ``loss`` for :class:`pyro.infer.SVI`; the schedules are plain
callables ``t -> beta_t`` (:func:`rezende_mohamed`, :func:`linear_warmup`, :func:`constant`).
:class:`STL_ELBO` and :class:`IW_ELBO` need the guides of :mod:`pyro_nfvi.guides`.
"""
from .annealed import MODES, AnnealedELBO
from .iw import GRADIENTS, IW_ELBO
from .jit import JitIW_ELBO, JitSTL_ELBO
from .path import STL_ELBO
from .schedules import constant, linear_warmup, rezende_mohamed

__all__ = ["AnnealedELBO", "GRADIENTS", "IW_ELBO", "JitIW_ELBO", "JitSTL_ELBO", "MODES", "STL_ELBO", "constant", "linear_warmup", "rezende_mohamed"]
