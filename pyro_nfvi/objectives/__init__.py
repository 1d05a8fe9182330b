"""Training objectives for flow guides: annealed free energy, KL warm-up and free bits.

:class:`AnnealedELBO` is a drop-in ``loss`` for :class:`pyro.infer.SVI`; the schedules are plain
callables ``t -> beta_t`` (:func:`rezende_mohamed`, :func:`linear_warmup`, :func:`constant`).
"""
from .annealed import MODES, AnnealedELBO
from .schedules import constant, linear_warmup, rezende_mohamed

__all__ = ["AnnealedELBO", "MODES", "constant", "linear_warmup", "rezende_mohamed"]
