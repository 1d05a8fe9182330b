"""Neural-network building blocks for amortized guides: encoders and Gaussian heads."""
from .encoders import ACTIVATIONS, MLP, LocScaleHead, inverse_softplus

__all__ = ["ACTIVATIONS", "MLP", "LocScaleHead", "inverse_softplus"]
