"""pyro_nfvi: variational inference with normalizing flows for Pyro."""
from . import transforms
from .transforms import flow

__version__ = "0.1.0"
__all__ = ["flow", "transforms", "__version__"]
