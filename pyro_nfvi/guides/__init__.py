"""Flow guides for any Pyro model: :class:`AutoFlowGuide`, :class:`AmortizedFlowGuide`, and the fast path
(:class:`FastSVI`, :func:`fit`: Pyro's ``ELBOModule`` with one torch optimizer)."""
from .amortized import AmortizedFlowGuide
from .auto import AutoFlowGuide
from .fast import FastSVI, fit

__all__ = ["AmortizedFlowGuide", "AutoFlowGuide", "FastSVI", "fit"]
