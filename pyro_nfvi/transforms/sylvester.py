"""PLACEHOLDER: being written (issue 2)."""
from .base import FlowModule

__all__ = ["Sylvester"]


class Sylvester(FlowModule):
    def __init__(self, dim, context_dim=0, **kwargs):
        raise NotImplementedError("Sylvester is being written")
