"""pyro_nfvi: variational inference with normalizing flows for Pyro."""
from . import transforms
from .guides import AmortizedFlowGuide, AutoFlowGuide
from .transforms import flow
from .version import __version__

__all__ = ["AmortizedFlowGuide", "AutoFlowGuide", "flow", "transforms", "__version__"]
