"""PLACEHOLDER: being written (issue 2)."""
from .base import FlowModule

__all__ = ["IAF"]


class IAF(FlowModule):
    def __init__(self, dim, context_dim=0, **kwargs):
        raise NotImplementedError("IAF is being written")
