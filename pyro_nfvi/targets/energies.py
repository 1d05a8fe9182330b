r"""The 2-D test energies :math:`U_1, \dots, U_4` of Rezende & Mohamed (2015, Table 1).

The unnormalised target density is :math:`p(z) \propto \exp(-U(z))` on :math:`z \in \mathbb{R}^2`.
With :math:`w_1(z) = \sin(2\pi z_1/4)`, :math:`w_2(z) = 3\exp(-\tfrac12((z_1-1)/0.6)^2)` and
:math:`w_3(z) = 3\,\sigma((z_1-1)/0.3)`:

* :math:`U_1(z) = \tfrac12((\lVert z\rVert-2)/0.4)^2
  - \log(e^{-\frac12((z_1-2)/0.6)^2} + e^{-\frac12((z_1+2)/0.6)^2})`
* :math:`U_2(z) = \tfrac12((z_2-w_1)/0.4)^2`
* :math:`U_3(z) = -\log(e^{-\frac12((z_2-w_1)/0.35)^2} + e^{-\frac12((z_2-w_1+w_2)/0.35)^2})`
* :math:`U_4(z) = -\log(e^{-\frac12((z_2-w_1)/0.4)^2} + e^{-\frac12((z_2-w_1+w_3)/0.35)^2})`

:math:`U_2, U_3, U_4` do not depend on :math:`z_1` far from the origin, so :math:`\exp(-U)` is not
integrable on :math:`\mathbb{R}^2`; the paper shows (and fits) them on the box :math:`[-4, 4]^2`.
Here the *target* is therefore :math:`\exp(-U(z) - B(z))` with a soft box wall
:math:`B(z) = \tfrac12\sum_i (\max(|z_i| - b, 0)/s)^2` (``box`` :math:`b = 4`, ``wall`` :math:`s = 0.1`
by default), which leaves :math:`U` untouched inside the box, makes every target normalisable, and
changes :math:`\log Z` of :math:`U_1` by about :math:`2\times10^{-9}`.  ``box=None`` gives the bare
:math:`U` (proper for :math:`U_1` only).  :func:`log_normalizer` integrates the same target on a grid.
"""
import math

import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "U1",
    "U2",
    "U3",
    "U4",
    "ENERGIES",
    "BOX",
    "WALL",
    "box_wall",
    "target_energy",
    "energy_model",
    "log_normalizer",
]

#: Default half-width of the box ``[-BOX, BOX]^2`` on which the targets live (as in the paper's plots).
BOX = 4.0
#: Default length scale of the soft wall at the box's edge.
WALL = 0.1


def _check(z):
    if not torch.is_tensor(z):
        raise TypeError(f"z must be a tensor of shape (..., 2), got {type(z).__name__}")
    if z.dim() == 0 or z.shape[-1] != 2:
        raise ValueError(f"z must have shape (..., 2), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a floating-point tensor, got dtype {z.dtype}")
    return z[..., 0], z[..., 1]


def _w1(z1):
    return torch.sin(0.5 * math.pi * z1)


def _w2(z1):
    return 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1):
    return 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)


def U1(z):
    r"""Ring with two lobes: :math:`U_1(z) = \tfrac12((\lVert z\rVert-2)/0.4)^2
    - \log(e^{-\frac12((z_1-2)/0.6)^2} + e^{-\frac12((z_1+2)/0.6)^2})`.

    Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Table 1.
    The log-sum-exp is computed stably (``torch.logaddexp``) and the norm has a finite gradient at 0.

    Args:
        z (torch.Tensor): points of shape ``(..., 2)``.

    Returns:
        torch.Tensor: energies of shape ``(...)``.

    Example:
        >>> U1(torch.tensor([[2.0, 0.0], [0.0, 2.0]])).shape
        torch.Size([2])
    """
    z1, _ = _check(z)
    ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - 2.0) / 0.4) ** 2
    lobes = torch.logaddexp(-0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2)
    return ring - lobes


def U2(z):
    r"""Sine valley: :math:`U_2(z) = \tfrac12((z_2 - w_1(z))/0.4)^2`, :math:`w_1 = \sin(2\pi z_1/4)`.

    Reference: Rezende & Mohamed 2015, Table 1.  Not integrable along :math:`z_1`; see
    :func:`target_energy` for the boxed target.

    Args:
        z (torch.Tensor): points of shape ``(..., 2)``.

    Returns:
        torch.Tensor: energies of shape ``(...)``.

    Example:
        >>> float(U2(torch.tensor([1.0, 1.0])))
        0.0
    """
    z1, z2 = _check(z)
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2


def U3(z):
    r"""Split sine valley: :math:`U_3(z) = -\log(e^{-\frac12((z_2-w_1)/0.35)^2}
    + e^{-\frac12((z_2-w_1+w_2)/0.35)^2})`, :math:`w_2 = 3 e^{-\frac12((z_1-1)/0.6)^2}`.

    Reference: Rezende & Mohamed 2015, Table 1.

    Args:
        z (torch.Tensor): points of shape ``(..., 2)``.

    Returns:
        torch.Tensor: energies of shape ``(...)``.

    Example:
        >>> U3(torch.zeros(3, 4, 2)).shape
        torch.Size([3, 4])
    """
    z1, z2 = _check(z)
    d = z2 - _w1(z1)
    return -torch.logaddexp(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + _w2(z1)) / 0.35) ** 2)


def U4(z):
    r"""Sine valley with a sigmoid step: :math:`U_4(z) = -\log(e^{-\frac12((z_2-w_1)/0.4)^2}
    + e^{-\frac12((z_2-w_1+w_3)/0.35)^2})`, :math:`w_3 = 3\sigma((z_1-1)/0.3)`.

    Reference: Rezende & Mohamed 2015, Table 1.

    Args:
        z (torch.Tensor): points of shape ``(..., 2)``.

    Returns:
        torch.Tensor: energies of shape ``(...)``.

    Example:
        >>> U4(torch.zeros(2)).shape
        torch.Size([])
    """
    z1, z2 = _check(z)
    d = z2 - _w1(z1)
    return -torch.logaddexp(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + _w3(z1)) / 0.35) ** 2)


#: The energies by name.
ENERGIES = {"U1": U1, "U2": U2, "U3": U3, "U4": U4}


def _get(name):
    if name not in ENERGIES:
        raise ValueError(f"unknown energy {name!r}; expected one of {sorted(ENERGIES)}")
    return ENERGIES[name]


def _check_box(box, wall):
    if box is not None and not (isinstance(box, (int, float)) and box > 0):
        raise ValueError(f"box must be a positive number or None, got {box!r}")
    if not (isinstance(wall, (int, float)) and wall > 0):
        raise ValueError(f"wall must be a positive number, got {wall!r}")


def box_wall(z, box=BOX, wall=WALL):
    r"""Soft wall :math:`B(z) = \tfrac12\sum_i (\max(|z_i| - \mathrm{box}, 0)/\mathrm{wall})^2`.

    Zero inside ``[-box, box]^2``; a Gaussian fall-off of scale ``wall`` outside.

    Args:
        z (torch.Tensor): points of shape ``(..., 2)``.
        box (float): half-width of the box.
        wall (float): length scale of the wall.

    Returns:
        torch.Tensor: shape ``(...)``.

    Example:
        >>> [round(v, 6) for v in box_wall(torch.tensor([[0.0, 3.9], [4.1, 0.0], [0.0, -5.0]])).tolist()]
        [0.0, 0.5, 50.0]
    """
    _check(z)
    _check_box(box, wall)
    excess = torch.relu(z.abs() - box) / wall
    return 0.5 * (excess * excess).sum(-1)


def target_energy(name, box=BOX, wall=WALL):
    r"""The target's energy :math:`U(z) + B(z)` (:func:`box_wall`), or the bare :math:`U` if ``box=None``.

    Args:
        name (str): ``"U1"``, ``"U2"``, ``"U3"`` or ``"U4"``.
        box (float or None): half-width of the box; ``None`` for no wall.
        wall (float): length scale of the wall.

    Returns:
        callable: ``z (..., 2) -> energy (...)``.

    Example:
        >>> energy = target_energy("U2")
        >>> bool(energy(torch.tensor([1.0, 1.0])) == 0), bool(energy(torch.tensor([5.0, 1.0])) > 40)
        (True, True)
    """
    U = _get(name)
    _check_box(box, wall)
    if box is None:
        return U

    def energy(z):
        return U(z) + box_wall(z, box, wall)

    energy.__name__ = f"{name}_box"
    energy.__doc__ = f"{name}(z) + box_wall(z, box={box}, wall={wall})."
    return energy


def energy_model(name, box=BOX, wall=WALL):
    r"""A Pyro model with the single latent site ``"z"`` whose posterior is :math:`\propto e^{-U(z) - B(z)}`.

    The model is a flat prior on ``z`` (``log_prob = 0``) followed by
    ``pyro.factor("U", -energy(z))`` (:func:`target_energy`), so its joint density is the
    unnormalised target and :math:`\log Z` is :func:`log_normalizer`.  The flat prior is
    ``Normal(0, 1).to_event(1).mask(False)`` rather than ``ImproperUniform``: the two have the same
    (zero) log density, but this one can be sampled, which autoguide initialisation strategies
    (``init_to_feasible``, ``init_to_median``, ``init_to_sample``) need; its samples are used only
    there.  The model has no plates, so it works with vectorized particles: a ``(P, 2)`` ``z``
    gives a factor of shape ``(P,)``.

    Args:
        name (str): ``"U1"`` ... ``"U4"``.
        box (float or None): half-width of the box wall (``None``: bare ``U``, proper for U1 only).
        wall (float): length scale of the wall.

    Returns:
        callable: the model (no arguments).

    Example:
        >>> import pyro.poutine as poutine
        >>> model = energy_model("U1")
        >>> z = torch.tensor([2.0, 0.0])
        >>> tr = poutine.trace(poutine.condition(model, {"z": z})).get_trace()
        >>> bool(torch.isclose(tr.log_prob_sum(), -U1(z)))
        True
    """
    energy = target_energy(name, box, wall)

    def model():
        flat = dist.Normal(torch.zeros(2), 1.0).to_event(1).mask(False)
        z = pyro.sample("z", flat)
        pyro.factor("U", -energy(z))
        return z

    model.__name__ = f"energy_model_{name}"
    model.__doc__ = f"Pyro model with posterior proportional to exp(-{energy.__name__}(z))."
    return model


def log_normalizer(name, grid=1000, box=BOX, wall=WALL, extent=None):
    r""":math:`\log Z = \log \int e^{-U(z) - B(z)}\,dz` by the midpoint rule on a square grid (float64).

    The grid covers ``[-extent, extent]^2`` with ``grid`` cells per axis; the default extent is
    ``box + 10 * wall`` (where the wall factor is below :math:`e^{-50}`), or 6 for ``box=None``
    (U1's density is below :math:`e^{-50}` beyond radius 6).  The integrand is smooth and decays at the
    edges, so the rule converges fast: 500 and 1000 cells agree to better than :math:`10^{-6}`.

    Args:
        name (str): ``"U1"`` ... ``"U4"``.
        grid (int): cells per axis (>= 10).
        box (float or None): half-width of the box wall; ``None`` only for ``"U1"``.
        wall (float): length scale of the wall.
        extent (float or None): half-width of the integration square (default above).

    Returns:
        float: :math:`\log Z`.

    Example:
        >>> abs(log_normalizer("U1", grid=400) - log_normalizer("U1", grid=800)) < 1e-4
        True
    """
    energy = target_energy(name, box, wall)
    if box is None and name != "U1":
        raise ValueError(
            f"{name} is not normalisable on R^2 (it is flat along z1 far from the origin): pass a box"
        )
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 10:
        raise ValueError(f"grid must be an integer >= 10, got {grid!r}")
    if extent is None:
        extent = 6.0 if box is None else box + 10.0 * wall
    if not (isinstance(extent, (int, float)) and extent > 0):
        raise ValueError(f"extent must be a positive number, got {extent!r}")
    h = 2.0 * extent / grid
    centres = torch.linspace(-extent + 0.5 * h, extent - 0.5 * h, grid, dtype=torch.float64)
    z1, z2 = torch.meshgrid(centres, centres, indexing="ij")
    logp = -energy(torch.stack([z1, z2], dim=-1))
    return float(torch.logsumexp(logp.reshape(-1), 0)) + 2.0 * math.log(h)
