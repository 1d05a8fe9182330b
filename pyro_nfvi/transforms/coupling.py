"""PLACEHOLDER: being written (issue 2)."""
from .base import FlowModule

__all__ = ["AffineCoupling"]


class AffineCoupling(FlowModule):
    def __init__(self, dim, context_dim=0, **kwargs):
        raise NotImplementedError("AffineCoupling is being written")
