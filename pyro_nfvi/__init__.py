"""pyro_nfvi: variational inference with normalizing flows for Pyro."""
from . import transforms
from .guides import AmortizedFlowGuide, AutoFlowGuide
from .transforms import flow

__version__ = "0.1.0"
__all__ = ["AmortizedFlowGuide", "AutoFlowGuide", "flow", "transforms", "__version__"]
