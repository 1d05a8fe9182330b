r"""Train the flow VAE of :mod:`~pyro_nfvi.targets.vae` epoch by epoch, with checkpoints, resume and early stopping.

One epoch is one pass over the training images in a fresh random order, in full batches of
``batch_size`` (a remainder is dropped), each batch one step of :class:`~pyro_nfvi.guides.FastSVI`
(Pyro's ``ELBOModule`` and one Adam).  The learning rate of epoch :math:`t` (from 0) is
:math:`\eta_t = \eta / (1 + t / \tau)` (Henrion & Welleck's schedule, with :math:`\tau` =
``lr_decay`` epochs; they use :math:`\eta = 2\cdot10^{-4}`, :math:`\tau = 100` over 2000 epochs).
With ``warmup > 0`` the objective is :class:`~pyro_nfvi.objectives.AnnealedELBO` in
``"kl_warmup"`` mode, :math:`-\log p(x \mid z) - \beta_t (\log p(z) - \log q(z \mid x))` with
:math:`\beta` rising linearly from 0 to 1 over the first ``warmup`` epochs, then the ELBO itself.

After each epoch the validation :math:`-\mathrm{ELBO}` (one draw per image, at :math:`\beta = 1`)
is computed; the parameters with the best one are kept in ``best.pt``, and training stops early
after ``patience`` epochs without improvement.  Every epoch ends with an atomic checkpoint
(:func:`~pyro_nfvi.guides.save_checkpoint`) in ``last.pt``: model, guide, Adam, the objective's
step counter, the RNG states, the history and the early-stopping state, so that a run resumed
from it continues exactly as the uninterrupted run (the same data order and the same draws).
"""
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field

import pyro
import torch
from pyro.infer import Trace_ELBO
from tqdm import tqdm

from ..guides import FastSVI, load_checkpoint
from ..objectives import AnnealedELBO
from ..validation import check_int, check_positive
from .vae import ACTIVATION, HIDDEN, LATENT_DIM, VAEModel, iwae_nll, negative_elbo, vae_guide

__all__ = ["VAERun", "train_vae", "evaluate_vae", "LAST", "BEST", "training_settings"]

#: File names of the last and of the best checkpoint inside the run's folder.
LAST, BEST = "last.pt", "best.pt"


@dataclass
class VAERun:
    """A (possibly partial) training run of :func:`train_vae`.

    Attributes:
        model (VAEModel): the model, with the parameters of the best validation epoch.
        guide (pyro_nfvi.guides.AmortizedFlowGuide): the guide, with the parameters of that epoch.
        history (list of dict): per epoch ``epoch`` (from 1), ``train`` (the epoch's mean training
            loss per image: the ELBO at beta = 1, the warm-up objective before), ``valid``
            (validation -ELBO), ``beta``, ``lr`` and ``seconds`` (training time of the epoch).
        best_epoch (int): the epoch kept.
        best_valid (float): its validation -ELBO.
        stopped_early (bool): training stopped after ``patience`` epochs without improvement.
        settings (dict): the run's settings (``training_settings``).
    """

    model: object
    guide: object
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_valid: float = math.inf
    stopped_early: bool = False
    settings: dict = field(default_factory=dict)

    @property
    def epochs_done(self):
        """Number of completed epochs."""
        return len(self.history)

    @property
    def seconds(self):
        """Training time summed over the epochs (evaluation excluded), across resumed sittings."""
        return sum(h["seconds"] for h in self.history)

    @property
    def seconds_per_epoch(self):
        """Mean training time of an epoch."""
        return self.seconds / max(self.epochs_done, 1)


def training_settings(flow, num_flows, batch_size, lr, lr_decay, warmup, patience, seed, z_dim, hidden,
                      num_train, num_valid, flow_opts=None):
    """The settings a resumed run must share with the run it continues (``epochs`` may change).

    ``flow_opts`` enters only when given, so runs made before it existed keep their settings.
    """
    settings = {"flow": flow, "num_flows": int(num_flows), "batch_size": int(batch_size), "lr": float(lr),
                "lr_decay": float(lr_decay), "warmup": int(warmup), "patience": int(patience), "seed": int(seed),
                "z_dim": int(z_dim), "hidden": [int(h) for h in hidden], "num_train": int(num_train),
                "num_valid": int(num_valid)}
    if flow_opts:
        settings["flow_opts"] = dict(flow_opts)
    return settings


def _set_lr(optimizer, lr, lr_decay, epoch):
    value = lr / (1.0 + epoch / lr_decay) if lr_decay > 0 else lr
    for group in optimizer.param_groups:
        group["lr"] = value
    return value


def _check_settings(path, saved, settings):
    differ = {k: (saved.get(k), settings.get(k)) for k in {**saved, **settings} if saved.get(k) != settings.get(k)}
    if differ:
        text = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"the checkpoint {path} was written with other settings ({text}); resume with the same "
                         "settings or choose another folder")


def train_vae(train, valid, *, flow="iaf", num_flows=2, epochs=100, batch_size=100, lr=1e-3, lr_decay=100.0,
              warmup=10, patience=20, seed=0, z_dim=LATENT_DIM, hidden=HIDDEN, activation=ACTIVATION,
              flow_opts=None, folder=None, resume=False, device=None, progress=False, log=None):
    """Train the flow VAE on ``train`` with early stopping on ``valid``; return a :class:`VAERun`.

    Args:
        train (torch.Tensor): ``(N, 784)`` binarized training images.
        valid (torch.Tensor): ``(N_valid, 784)`` binarized validation images.
        flow (str): the guide's flow family (``"none"``: the Gaussian VAE).
        num_flows (int): the number of flow layers ``K``.
        epochs (int): the epoch budget (a resumed run continues up to it).
        batch_size (int): images per step (100).
        lr (float): Adam's initial learning rate.
        lr_decay (float): ``tau`` of ``lr / (1 + epoch / tau)``; ``0`` keeps ``lr`` constant.
        warmup (int): KL warm-up epochs (``0``: none).
        patience (int): epochs without a better validation -ELBO before stopping.
        seed (int): random seed.
        z_dim (int): the number of latents (40).
        hidden (tuple): the hidden sizes of the encoder and decoder MLPs ((300, 300)).
        activation (str): their activation (ELU).
        flow_opts (dict or None): options of every flow layer (e.g. ``{"stable": True}``), passed to
            :class:`~pyro_nfvi.guides.AmortizedFlowGuide`; part of the settings a resumed run checks.
        folder (str or None): where ``last.pt`` and ``best.pt`` are written every epoch (``None``: keep
            the best parameters in memory only).
        resume (bool): continue from ``folder/last.pt`` if it exists (same settings); else start afresh.
        device (torch.device or str or None): where to train (default CPU).
        progress (bool): a tqdm bar per epoch (on stderr) with the running loss and beta.
        log (callable or None): ``log(text)`` after every epoch.

    Example:
        >>> x = torch.bernoulli(torch.full((60, 784), 0.3))
        >>> run = train_vae(x[:40], x[40:], flow="iaf", num_flows=1, epochs=2, batch_size=20, warmup=1,
        ...                 z_dim=2, hidden=(16,))
        >>> run.epochs_done, [round(h["beta"], 2) for h in run.history]
        (2, [0.5, 1.0])
    """
    epochs = check_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size)
    lr = check_positive("lr", lr)
    lr_decay = check_positive("lr_decay", lr_decay, allow_zero=True)
    warmup = check_int("warmup", warmup, minimum=0)
    patience = check_int("patience", patience)
    if batch_size > len(train):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(train)} training images")
    device = torch.device("cpu" if device is None else device)
    settings = training_settings(flow, num_flows, batch_size, lr, lr_decay, warmup, patience, seed, z_dim, hidden,
                                 len(train), len(valid), flow_opts)
    last = best = None
    if folder is not None:
        last, best = os.path.join(folder, LAST), os.path.join(folder, BEST)
    train, valid = train.to(device), valid.to(device)
    steps_per_epoch = len(train) // batch_size
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(seed)
        model = VAEModel(z_dim, hidden, activation=activation).to(device)
        guide = vae_guide(model, flow, num_flows, train[:batch_size], hidden=hidden, activation=activation,
                          flow_opts=flow_opts).to(device)
        loss = AnnealedELBO(mode="kl_warmup", warmup_steps=warmup * steps_per_epoch) if warmup else Trace_ELBO()
        svi = FastSVI(model, guide, loss, lr=lr)
        run = VAERun(model, guide, settings=settings)
        kept = None  # the best parameters, when there is no folder to keep them in
        if resume and last is not None and os.path.exists(last):
            extra = svi.load(last)["extra"]
            _check_settings(last, extra["settings"], settings)
            run.history = [dict(h) for h in extra["history"]]
            run.best_epoch, run.best_valid = int(extra["best_epoch"]), float(extra["best_valid"])
            run.stopped_early = bool(extra["stopped_early"])
        for epoch in range(run.epochs_done, epochs):
            if run.stopped_early:
                break
            current_lr = _set_lr(svi.make_optimizer(), lr, lr_decay, epoch)
            beta = getattr(loss, "beta", 1.0)
            start = time.perf_counter()
            order = torch.randperm(len(train), device=device)
            total = 0.0
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                       file=sys.stderr, leave=False, mininterval=1.0)
            for step in bar:
                beta = getattr(loss, "beta", 1.0)
                total += svi.step(train[order[step * batch_size : (step + 1) * batch_size]])
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{total / ((step + 1) * batch_size):.2f}", beta=f"{beta:.2f}")
            bar.close()
            seconds = time.perf_counter() - start
            train_loss = total / (steps_per_epoch * batch_size)
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"the training loss of epoch {epoch + 1} is {train_loss} (flow={flow}, lr={current_lr:g}); "
                    "try a smaller learning rate"
                )
            valid_loss = negative_elbo(model, guide, valid)[0]
            run.history.append({"epoch": epoch + 1, "train": train_loss, "valid": valid_loss, "beta": float(beta),
                                "lr": current_lr, "seconds": seconds})
            if valid_loss < run.best_valid:
                run.best_epoch, run.best_valid = epoch + 1, valid_loss
                if best is not None:
                    svi.save(best)
                else:
                    kept = copy.deepcopy(svi.loss_fn.state_dict())
            run.stopped_early = epoch + 1 - run.best_epoch >= patience
            if last is not None:
                svi.save(last, extra={"settings": settings, "history": run.history, "best_epoch": run.best_epoch,
                                      "best_valid": run.best_valid, "stopped_early": run.stopped_early})
            if log is not None:
                log(f"epoch {epoch + 1:4d}/{epochs}  train {train_loss:9.3f}  valid -ELBO {valid_loss:9.3f}  "
                    f"beta {beta:4.2f}  lr {current_lr:.2e}  {seconds:6.1f} s"
                    + ("  (best)" if run.best_epoch == epoch + 1 else ""))
        # keep the best epoch's parameters
        if best is not None and os.path.exists(best):
            load_checkpoint(best, guide=guide, model=model, restore_rng=False)
        elif kept is not None:
            svi.loss_fn.load_state_dict(kept)
    return run


def evaluate_vae(model, guide, splits, iwae_k=1000, iwae_split="test", seed=0, progress=False):
    """The -ELBO of every split and the IWAE NLL (``k = iwae_k``) of ``iwae_split``, in nats per image.

    Args:
        model, guide: the trained VAE (e.g. :attr:`VAERun.model`, :attr:`VAERun.guide`).
        splits (dict): name -> ``(N, 784)`` images, e.g. ``{"train": ..., "valid": ..., "test": ...}``.
        iwae_k (int): draws per image of the IWAE bound (``0``: skip it).
        iwae_split (str): the split of the IWAE bound.
        seed (int): seed of the draws.
        progress (bool): a tqdm bar (on stderr) for the IWAE bound.

    Returns:
        dict: ``{"<split>_elbo": [mean, se], ..., "test_iwae": [mean, se], "iwae_k": k, "eval_seconds": s}``
        (the ``_elbo`` entries hold -ELBO: lower is better).
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    pyro.set_rng_seed(seed)
    out = {}
    with pyro.settings.context(module_local_params=True):
        for name, data in splits.items():
            out[f"{name}_elbo"] = list(negative_elbo(model, guide, data.to(device)))
        if iwae_k:
            data = splits[iwae_split].to(device)
            with tqdm(total=len(data), desc=f"IWAE k={iwae_k}", disable=not progress, file=sys.stderr,
                      leave=False, mininterval=1.0) as bar:
                out[f"{iwae_split}_iwae"] = list(iwae_nll(model, guide, data, num_samples=iwae_k, progress=bar.update))
    out["iwae_k"] = int(iwae_k)
    out["eval_seconds"] = time.perf_counter() - start
    return out
