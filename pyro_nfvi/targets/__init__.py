"""Target densities for testing variational approximations.

* ``pyro_nfvi.targets.energies`` -- the 2-D energies U1-U4 of Rezende & Mohamed (2015), as
  functions, as Pyro models (:func:`energy_model`) and with their grid log-normalisers.
* ``pyro_nfvi.targets.fit`` -- :func:`fit_energy`, an annealed fit of an
  :class:`~pyro_nfvi.guides.AutoFlowGuide` to one of these energies through :func:`energy_model`
  (used by ``nfvi demo`` and ``examples/energy.py``), and :func:`estimate_bound`.
* ``pyro_nfvi.targets.plot`` -- :func:`plot_energy_fits` and :func:`plot_energy_panels`, figures of targets and fits.
* ``pyro_nfvi.targets.bayes`` -- classic Bayesian models with their data, and ``MODELS``, the
  benchmark models by name.
* ``pyro_nfvi.targets.vae`` -- the flow VAE of Henrion & Welleck on binarized MNIST
  (:class:`VAEModel`, :func:`vae_guide`, :func:`negative_elbo`, :func:`iwae_nll`), and
  ``pyro_nfvi.targets.vae_training`` -- :func:`train_vae`, its training with checkpoints,
  resume and early stopping (used by ``nfvi vae``, ``benchmarks/mnist_vae.py`` and ``examples/vae.py``).
* ``pyro_nfvi.targets.reference`` -- ``load_reference``, their NUTS (or exact) reference draws,
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
from .fit import EnergyFit, EnergyFitDiverged, estimate_bound, fit_energy
from .plot import energy_histogram, plot_energy_fits, plot_energy_panels
from .vae import Decoder, VAEModel, iwae_nll, negative_elbo, vae_guide
from .vae_training import VAERun, evaluate_vae, train_vae

__all__ = [
    "BOX",
    "Decoder",
    "ENERGIES",
    "EnergyFit",
    "EnergyFitDiverged",
    "U1",
    "U2",
    "U3",
    "U4",
    "VAEModel",
    "VAERun",
    "WALL",
    "box_wall",
    "energy_histogram",
    "energy_model",
    "estimate_bound",
    "evaluate_vae",
    "fit_energy",
    "iwae_nll",
    "log_normalizer",
    "negative_elbo",
    "plot_energy_fits",
    "plot_energy_panels",
    "target_energy",
    "train_vae",
    "vae_guide",
]
