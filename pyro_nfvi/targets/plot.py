"""Figures of the 2-D targets and of fitted approximations (matplotlib, Agg canvas, no pyplot state)."""
import os

import torch

from .energies import BOX, target_energy

__all__ = ["plot_energy_fits"]


def _density_grid(name, extent, resolution, box, wall):
    centres = torch.linspace(-extent, extent, resolution, dtype=torch.float64)
    z2, z1 = torch.meshgrid(centres, centres, indexing="ij")  # rows = z2 (y axis), columns = z1
    u = target_energy(name, box, wall)(torch.stack([z1, z2], dim=-1))
    return torch.exp(-(u - u.min())).cpu().numpy()


def plot_energy_fits(fits, path, num_samples=50000, bins=120, extent=BOX, box=BOX, wall=0.1, seed=0):
    r"""Save a figure with, per target, :math:`e^{-U}` and a histogram of each fit's samples.

    One row per target (in order of first appearance); the first column is the target density on
    ``[-extent, extent]^2``, the next columns the fits of that target (title: flow, K, bound, KL).

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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fits = [fits] if not isinstance(fits, (list, tuple)) else list(fits)
    if not fits:
        raise ValueError("fits must contain at least one EnergyFit")
    rows = {}
    for fit in fits:
        rows.setdefault(fit.target, []).append(fit)
    ncols = 1 + max(len(r) for r in rows.values())
    fig = Figure(figsize=(2.6 * ncols, 2.6 * len(rows)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    span = [-extent, extent, -extent, extent]
    for i, (name, row) in enumerate(rows.items()):
        axes[i, 0].imshow(_density_grid(name, extent, 300, box, wall), origin="lower", extent=span,
                          cmap="viridis", aspect="equal")
        axes[i, 0].set_title(f"{name}: exp(-U)", fontsize=9)
        for j, fit in enumerate(row, start=1):
            z = fit.sample(num_samples, seed=seed).double().cpu().numpy()  # a fit on a GPU, too
            axes[i, j].hist2d(z[:, 0], z[:, 1], bins=bins, range=[span[:2], span[2:]], cmap="viridis")
            axes[i, j].set_aspect("equal")
            axes[i, j].set_title(
                f"{fit.flow} K={fit.num_flows}\nbound {fit.bound:.3f}, KL {fit.kl:.3f}", fontsize=8
            )
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[i, len(row) + 1:]:
            ax.set_visible(False)
    fig.savefig(os.fspath(path), dpi=100)
    return path
