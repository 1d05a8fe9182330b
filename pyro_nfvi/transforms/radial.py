"""PLACEHOLDER: being written (issue 2)."""
from .base import FlowModule

__all__ = ["Radial", "radial_beta"]


def radial_beta(alpha, beta_raw):
    raise NotImplementedError


class Radial(FlowModule):
    def __init__(self, dim, context_dim=0, **kwargs):
        raise NotImplementedError("Radial is being written")
