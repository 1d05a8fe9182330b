"""PLACEHOLDER: being written (issue 2)."""
from .base import FlowModule

__all__ = ["Householder"]


class Householder(FlowModule):
    def __init__(self, dim, context_dim=0, **kwargs):
        raise NotImplementedError("Householder is being written")
