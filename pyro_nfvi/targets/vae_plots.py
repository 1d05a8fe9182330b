"""Figures of the flow VAE: learning curves of several runs on one plot, and samples and reconstructions
(matplotlib, Agg canvas, no pyplot state)."""
import pyro
import torch

__all__ = ["plot_learning_curves", "plot_samples_and_reconstructions"]


def _figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def plot_learning_curves(histories, path, title="flow VAE on binarized MNIST"):
    """Plot the training loss (dashed) and the validation -ELBO (solid) per epoch of every run; save to ``path``.

    Args:
        histories (dict): label -> history (a list of dicts with ``epoch``, ``train`` and ``valid``,
            as :attr:`~pyro_nfvi.targets.vae_training.VAERun.history`).
        path (str): the PNG file.
        title (str): the figure's title.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
        >>> plot_learning_curves({"none": [{"epoch": 1, "train": 120.0, "valid": 110.0}]}, path)
        >>> os.path.getsize(path) > 0
        True
    """
    fig = _figure(figsize=(8, 5))
    ax = fig.subplots()
    values = []
    for i, (label, history) in enumerate(histories.items()):
        if not history:
            continue
        epochs = [h["epoch"] for h in history]
        color = f"C{i % 10}"
        ax.plot(epochs, [h["valid"] for h in history], color=color, lw=1.5, label=f"{label} (valid)")
        ax.plot(epochs, [h["train"] for h in history], color=color, lw=1.0, ls="--", alpha=0.7)
        values += [h["valid"] for h in history] + [h["train"] for h in history]
    finite = sorted(v for v in values if v == v and abs(v) != float("inf"))
    if finite:  # the first epochs are far above the rest: show the range where the runs differ
        low, high = finite[0], finite[min(len(finite) - 1, int(0.9 * len(finite)))]
        ax.set_ylim(low - 1.0, high + 0.1 * (high - low) + 1.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO (nats per image)")
    ax.set_title(f"{title}\nsolid: validation -ELBO; dashed: training loss (warm-up objective while beta < 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


@torch.no_grad()
def plot_samples_and_reconstructions(model, guide, images, path, num=10, seed=0, title=""):
    """Save a grid to ``path``: ``num`` test images, their reconstructions (Bernoulli means) and ``num`` x 2 samples.

    Samples are decoder means :math:`\\sigma(g(z))` for :math:`z \\sim \\mathcal N(0, I)`;
    reconstructions are :math:`\\sigma(g(z))` for one :math:`z \\sim q(z \\mid x)`.

    Args:
        model (VAEModel): the trained model.
        guide (pyro_nfvi.guides.AmortizedFlowGuide): its trained guide.
        images (torch.Tensor): ``(N, 784)`` images; ``num`` of them, evenly spaced, are reconstructed.
        path (str): the PNG file.
        num (int): images per row.
        seed (int): seed of the draws.
        title (str): the figure's title.
    """
    pyro.set_rng_seed(seed)
    x = images[torch.linspace(0, len(images) - 1, num).long()]  # spread over the set (it may be sorted)
    device = next(model.parameters()).device
    z_post = guide(x.to(device))["latent"]
    recon = torch.sigmoid(model.decoder(z_post)).cpu()
    z_prior = torch.randn(2 * num, model.z_dim, device=device)
    samples = torch.sigmoid(model.decoder(z_prior)).cpu()
    rows = [x.cpu(), recon, samples[:num], samples[num:]]
    labels = ["data", "reconstruction", "samples", ""]
    fig = _figure(figsize=(num * 0.9, len(rows) * 0.95))
    axes = fig.subplots(len(rows), num, squeeze=False)
    for r, (row, label) in enumerate(zip(rows, labels)):
        for c in range(num):
            ax = axes[r, c]
            ax.imshow(row[c].reshape(28, 28).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
