"""Flow transforms: planar, radial, Householder, IAF, Sylvester and affine coupling (and the elementwise sinh-arcsinh).

Each family is one :class:`~pyro_nfvi.transforms.base.FlowModule` (a Pyro ``TransformModule``)
that owns its parameters (``context_dim=0``) or predicts them per data point from a context
(``context_dim > 0``; call ``.condition(context)``).  :func:`flow` builds a stack of any family.
"""
from .base import ConditionedFlow, FlowModule, FlowTransform, Hypernet, NetworkConditionedFlow, NetworkFlowModule
from .coupling import AffineCoupling
from .householder import Householder
from .iaf import IAF
from .planar import Planar, planar_uhat
from .radial import Radial, radial_beta
from .runs import PlanarRun
from .stack import FAMILIES, BoundStack, FlowStack, Permute, flow
from .sinh_arcsinh import SinhArcsinh
from .sylvester import Sylvester

__all__ = [
    "AffineCoupling",
    "BoundStack",
    "ConditionedFlow",
    "FAMILIES",
    "FlowModule",
    "FlowStack",
    "FlowTransform",
    "Householder",
    "Hypernet",
    "IAF",
    "NetworkConditionedFlow",
    "NetworkFlowModule",
    "Permute",
    "Planar",
    "PlanarRun",
    "Radial",
    "SinhArcsinh",
    "Sylvester",
    "flow",
    "planar_uhat",
    "radial_beta",
]
