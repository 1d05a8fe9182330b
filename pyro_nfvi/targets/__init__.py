"""Target densities for testing variational approximations.

* :mod:`~pyro_nfvi.targets.energies` -- the 2-D energies U1-U4 of Rezende & Mohamed (2015), as
  functions, as Pyro models (:func:`energy_model`) and with their grid log-normalisers.
* :mod:`~pyro_nfvi.targets.fit` -- :func:`fit_energy`, an annealed fit of an
  :class:`~pyro_nfvi.guides.AutoFlowGuide` to one of these energies through :func:`energy_model`
  (used by ``nfvi demo`` and ``examples/energy.py``), and :func:`estimate_bound`.
* :mod:`~pyro_nfvi.targets.plot` -- :func:`plot_energy_fits` and :func:`plot_energy_panels`, figures of targets and fits.
* :mod:`~pyro_nfvi.targets.bayes` -- classic Bayesian models with their data, and ``MODELS``, the
  benchmark models by name.
* :mod:`~pyro_nfvi.targets.reference` -- ``load_reference``, their NUTS (or exact) reference draws,
  shipped in ``pyro_nfvi/targets/reference``.
"""
from .energies import (
    BOX,
    ENERGIES,
    U1,
    U2,
    U3,
    U4,
    WALL,
    box_wall,
    energy_model,
    log_normalizer,
    target_energy,
)
from .fit import EnergyFit, estimate_bound, fit_energy
from .plot import energy_histogram, plot_energy_fits, plot_energy_panels

__all__ = [
    "BOX",
    "ENERGIES",
    "EnergyFit",
    "U1",
    "U2",
    "U3",
    "U4",
    "WALL",
    "box_wall",
    "energy_histogram",
    "energy_model",
    "estimate_bound",
    "fit_energy",
    "log_normalizer",
    "plot_energy_fits",
    "plot_energy_panels",
    "target_energy",
]
