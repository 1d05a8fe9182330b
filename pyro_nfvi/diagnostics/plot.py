"""Figures of posterior marginals from several ``arviz.InferenceData`` (matplotlib, Agg canvas, no pyplot state)."""
import os

import numpy as np

__all__ = ["plot_marginals"]


def plot_marginals(posteriors, var_name, path, bins=60, tail=0.005, title=None):
    r"""Save one axis with the marginal density of the scalar ``var_name`` under each posterior.

    Each posterior is drawn as a step histogram (a density: area 1) on bins shared by all of them,
    spanning the ``tail`` and ``1 - tail`` quantiles pooled over the posteriors (draws outside are
    not drawn), with its mean and sd in the legend.  Meant for a reference (NUTS) next to
    variational fits, e.g. eight schools' ``tau``: where a guide misses the mass near 0 or the tail,
    the histograms part.

    Args:
        posteriors (dict): label -> ``arviz.InferenceData`` (its ``posterior`` group) or an array
            of draws; drawn in this order.
        var_name (str): a scalar variable of every posterior.
        path (str or os.PathLike): output file (format from the extension, e.g. ``.png``).
        bins (int): number of bins.
        tail (float): probability left out on each side, in ``[0, 0.5)``.
        title (str): the axis title (default ``var_name``).

    Returns:
        str or os.PathLike: ``path``.

    Example:
        >>> import tempfile
        >>> rng = np.random.default_rng(0)
        >>> out = plot_marginals({"a": rng.normal(size=500), "b": rng.normal(1.0, 2.0, size=500)},
        ...                      "x", os.path.join(tempfile.mkdtemp(), "x.png"))
        >>> os.path.getsize(out) > 0
        True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not posteriors:
        raise ValueError("posteriors must hold at least one label -> InferenceData (or draws)")
    if not 0.0 <= tail < 0.5:
        raise ValueError(f"tail must lie in [0, 0.5), got {tail!r}")
    draws = {}
    for label, posterior in posteriors.items():
        if hasattr(posterior, "posterior"):
            if var_name not in posterior.posterior:
                raise ValueError(
                    f"{label}: no variable {var_name!r} in the posterior; have {list(posterior.posterior)}"
                )
            values = np.asarray(posterior.posterior[var_name])
            values = values.reshape(values.shape[0] * values.shape[1], -1)
        else:
            values = np.asarray(posterior).reshape(len(posterior), -1)
        if values.shape[1] != 1:
            raise ValueError(f"{label}: {var_name!r} is not a scalar (it has {values.shape[1]} components per draw)")
        draws[label] = values[:, 0].astype(np.float64)
    lo = min(np.quantile(v, tail) for v in draws.values())
    hi = max(np.quantile(v, 1 - tail) for v in draws.values())
    edges = np.linspace(lo, hi, bins + 1)
    fig = Figure(figsize=(6.0, 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, values in draws.items():
        inside = values[(values >= lo) & (values <= hi)]
        density, _ = np.histogram(inside, bins=edges)
        density = density / (len(values) * np.diff(edges))
        ax.stairs(density, edges, label=f"{label}: mean {values.mean():.2f}, sd {values.std(ddof=1):.2f}",
                  linewidth=1.5)
    ax.set_xlabel(var_name)
    ax.set_ylabel("density")
    ax.set_title(var_name if title is None else title, fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(os.fspath(path), dpi=100)
    return path
