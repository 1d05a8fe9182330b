"""Figures of the 2-D targets and of fitted approximations (matplotlib, Agg canvas, no pyplot state)."""
import os

import numpy as np
import torch

from .energies import BOX, WALL, target_energy

__all__ = ["energy_histogram", "plot_energy_fits", "plot_energy_panels"]


def _density_grid(name, extent, resolution, box, wall):
    centres = torch.linspace(-extent, extent, resolution, dtype=torch.float64)
    z2, z1 = torch.meshgrid(centres, centres, indexing="ij")  # rows = z2 (y axis), columns = z1
    u = target_energy(name, box, wall)(torch.stack([z1, z2], dim=-1))
    return torch.exp(-(u - u.min())).cpu().numpy()


def energy_histogram(samples, bins=120, extent=BOX):
    r"""Counts of 2-D ``samples`` on a ``bins x bins`` grid over :math:`[-\mathrm{extent}, \mathrm{extent}]^2`.

    Rows index :math:`z_2` and columns :math:`z_1` (the layout ``imshow(..., origin="lower")`` draws
    with :math:`z_1` across); samples outside the square are dropped.

    Args:
        samples (torch.Tensor or numpy.ndarray): points of shape ``(n, 2)``.
        bins (int): cells per axis.
        extent (float): half-width of the square.

    Returns:
        numpy.ndarray: integer counts of shape ``(bins, bins)``.

    Example:
        >>> h = energy_histogram(torch.tensor([[0.1, 3.9], [0.1, 3.9], [9.0, 0.0]]), bins=4, extent=4.0)
        >>> int(h.sum()), int(h[3, 2])
        (2, 2)
    """
    z = samples.detach().double().cpu().numpy() if torch.is_tensor(samples) else np.asarray(samples, dtype=float)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"samples must have shape (n, 2), got {tuple(z.shape)}")
    counts, _, _ = np.histogram2d(z[:, 1], z[:, 0], bins=bins, range=[[-extent, extent], [-extent, extent]])
    return counts.astype(np.int64)


def plot_energy_panels(panels, path, extent=BOX, box=BOX, wall=WALL, panel_size=2.6, dpi=100):
    r"""Save a grid figure: per target, :math:`e^{-U}` and then one histogram panel per approximation.

    Args:
        panels (dict): ``{target: [(title, counts), ...]}`` in row order; ``counts`` from
            :func:`energy_histogram` over the same ``extent``, or a string (e.g. ``"diverged"``)
            drawn on an empty panel, or ``None`` for an empty panel marked "not run" (so that a
            column keeps its meaning across rows).
        path (str or os.PathLike): output file (format from the extension, e.g. ``.png``, ``.pdf``).
        extent (float): half-width of the plotted square.
        box, wall: the target's box wall (as used for the fits).
        panel_size (float): width and height of one panel in inches.
        dpi (int): resolution of raster output.

    Returns:
        str or os.PathLike: ``path``.

    Example:
        >>> import tempfile
        >>> counts = energy_histogram(torch.randn(1000, 2), bins=40)
        >>> path = os.path.join(tempfile.mkdtemp(), "u.png")
        >>> out = plot_energy_panels({"U1": [("N(0, I)", counts)], "U2": [("-", None), ("K=2", "diverged")]}, path)
        >>> os.path.getsize(out) > 0
        True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("panels must hold at least one target")
    ncols = 1 + max(len(row) for row in panels.values())
    fig = Figure(figsize=(panel_size * ncols, panel_size * len(panels)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), ncols, squeeze=False)
    span = [-extent, extent, -extent, extent]
    fontsize = 9 if panel_size >= 2.4 else 7
    for i, (name, row) in enumerate(panels.items()):
        axes[i, 0].imshow(_density_grid(name, extent, 300, box, wall), origin="lower", extent=span,
                          cmap="viridis", aspect="equal")
        axes[i, 0].set_title(f"{name}: exp(-U)", fontsize=fontsize)
        for j, (title, counts) in enumerate(row, start=1):
            if counts is None or isinstance(counts, str):
                axes[i, j].text(0.5, 0.5, "not run" if counts is None else counts, ha="center", va="center",
                                transform=axes[i, j].transAxes, fontsize=fontsize, color="grey")
            else:
                axes[i, j].imshow(counts, origin="lower", extent=span, cmap="viridis", aspect="equal",
                                  interpolation="nearest")
            axes[i, j].set_title(title, fontsize=fontsize - 1)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[i, len(row) + 1:]:
            ax.set_visible(False)
    fig.savefig(os.fspath(path), dpi=dpi)
    return path


def plot_energy_fits(fits, path, num_samples=50000, bins=120, extent=BOX, box=BOX, wall=WALL, seed=0):
    r"""Save a figure with, per target, :math:`e^{-U}` and a histogram of each fit's samples.

    One row per target (in order of first appearance); the first column is the target density on
    ``[-extent, extent]^2``, the next columns the fits of that target (title: flow, K, bound, KL).
    Drawn by :func:`plot_energy_panels`.

    Args:
        fits (EnergyFit or list): results of :func:`~pyro_nfvi.targets.fit_energy`.
        path (str or os.PathLike): output file (format from the extension, e.g. ``.png``, ``.pdf``).
        num_samples (int): samples drawn from each fitted ``q``.
        bins (int): histogram bins per axis.
        extent (float): half-width of the plotted square.
        box, wall: the target's box wall (as used for the fits).
        seed (int): seed of the draws from each fit (:meth:`~pyro_nfvi.targets.EnergyFit.sample`).

    Returns:
        str: ``path``.

    Example:
        >>> import tempfile
        >>> from pyro_nfvi.targets.fit import fit_energy
        >>> fit = fit_energy("U1", num_flows=1, steps=2, samples=8, eval_samples=100, grid=50)
        >>> out = plot_energy_fits(fit, os.path.join(tempfile.mkdtemp(), "u1.png"), num_samples=1000)
        >>> os.path.getsize(out) > 0
        True
    """
    fits = [fits] if not isinstance(fits, (list, tuple)) else list(fits)
    if not fits:
        raise ValueError("fits must contain at least one EnergyFit")
    panels = {}
    for fit in fits:
        counts = energy_histogram(fit.sample(num_samples, seed=seed), bins, extent)
        title = f"{fit.flow} K={fit.num_flows}\nbound {fit.bound:.3f}, KL {fit.kl:.3f}"
        panels.setdefault(fit.target, []).append((title, counts))
    return plot_energy_panels(panels, path, extent=extent, box=box, wall=wall)
