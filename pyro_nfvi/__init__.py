"""pyro_nfvi: variational inference with normalizing flows for Pyro."""
from . import transforms
from .guides import AmortizedFlowGuide, AutoFlowGuide
from .recipe import FitResult, fit
from .transforms import flow
from .version import __version__

__all__ = ["AmortizedFlowGuide", "AutoFlowGuide", "FitResult", "fit", "flow", "transforms", "__version__"]
