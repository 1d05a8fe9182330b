"""``nfvi vae --strategy ddp``: the flow VAE trained on PyTorch Lightning's DDP through :class:`~pyro_nfvi.lightning.SVIModule`.

Every process builds the same model and guide (same seed), Lightning's ``DistributedSampler`` gives
each its share of every global batch of ``--batch-size`` images (``--batch-size / (devices x
num_nodes)`` per process), and the model's data plate is the subsample of the 50,000 training
images scaled to the full size (``VAEModel(num_data=N)`` called as ``model(x, idx)``), so every
process's loss is an unbiased estimate of the full-data -ELBO and DDP averages their gradients.
The learning-rate schedule, the KL warm-up and the early stopping are those of the single-process
path (:func:`~pyro_nfvi.targets.train_vae`): per epoch, ``lr / (1 + epoch / tau)``; a warm-up over
``--warmup`` epochs of steps; Lightning's ``EarlyStopping`` on the validation -ELBO (averaged over
processes) and ``ModelCheckpoint`` writing ``best.ckpt`` and ``last.ckpt`` in ``--out`` every epoch
(``--resume`` continues from ``last.ckpt``).  At the end every process's parameters are gathered and
compared (``ranks_identical`` in ``results.json``), and process 0 evaluates the best epoch and writes
the results.  Lightning's DDP launcher re-executes the command once per extra local process; on
several machines start the same command on each with ``MASTER_ADDR``, ``MASTER_PORT`` and
``NODE_RANK`` set (Lightning's documented launch), ``--num-nodes`` the number of machines.
"""
import os
import sys
import time

import lightning
import pyro
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pyro.infer import Trace_ELBO
from torch.utils.data import DataLoader, TensorDataset

from ..lightning import SVIModule
from ..objectives import AnnealedELBO
from ..targets.vae import VAEModel, vae_guide
from ..targets.vae_training import evaluate_vae, training_settings
from .vae import load_splits, print_summary, write_results

__all__ = ["VAEModule", "History", "run_ddp"]


class VAEModule(SVIModule):
    """:class:`~pyro_nfvi.lightning.SVIModule` plus the VAE's per-epoch learning rate and validation -ELBO.

    Args:
        model, guide, loss: as for :class:`~pyro_nfvi.lightning.SVIModule`.
        lr (float): the initial learning rate; epoch ``t`` uses ``lr / (1 + t / lr_decay)``.
        lr_decay (float): ``tau`` in epochs; ``0`` keeps ``lr``.
    """

    def __init__(self, model, guide, loss, lr, lr_decay):
        super().__init__(model, guide, loss=loss, lr=lr)
        self.lr_decay = float(lr_decay)
        self.valid_elbo = Trace_ELBO()  # at beta = 1, whatever the training objective

    def epoch_lr(self, epoch):
        """The learning rate of epoch ``epoch`` (from 0)."""
        return self.lr / (1.0 + epoch / self.lr_decay) if self.lr_decay > 0 else self.lr

    def on_train_epoch_start(self):
        for group in self.optimizers().param_groups:
            group["lr"] = self.epoch_lr(self.current_epoch)

    def validation_step(self, batch, batch_idx):
        """The validation -ELBO per image (one draw), logged as ``valid_loss`` averaged over processes.

        The model's plate is scaled to ``num_data`` images, so the loss divided by ``num_data`` is the
        batch's mean -ELBO per image."""
        x, idx = batch
        value = self.valid_elbo.loss(self.model, self.guide, x, idx) / self.model.num_data
        self.log("valid_loss", torch.tensor(value), sync_dist=True, batch_size=len(x), on_epoch=True, prog_bar=True)


class History(Callback):
    """Records ``epoch``, ``train`` (mean loss per image), ``valid``, ``beta``, ``lr``, ``seconds`` per epoch;
    saved in Lightning's checkpoints, so a resumed run keeps its history.  At the end of training it
    gathers every process's parameters and records whether they are identical."""

    def __init__(self, num_data):
        self.num_data = num_data
        self.history = []
        self.ranks_identical, self.max_param_diff = None, None
        self._total = self._count = 0
        self._start = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._total, self._count, self._start = 0.0, 0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        value = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._total += float(value) / self.num_data
        self._count += 1

    def on_train_epoch_end(self, trainer, pl_module):
        valid = trainer.callback_metrics.get("valid_loss")
        self.history.append({
            "epoch": trainer.current_epoch + 1, "train": self._total / max(self._count, 1),
            "valid": float(valid) if valid is not None else float("nan"),
            "beta": float(getattr(pl_module.objective, "beta", 1.0)),
            "lr": pl_module.epoch_lr(trainer.current_epoch), "seconds": time.perf_counter() - self._start,
        })

    def on_train_end(self, trainer, pl_module):
        vector = torch.cat([p.detach().flatten() for p in pl_module.trained_parameters()])
        gathered = pl_module.all_gather(vector)
        if gathered.dim() == 1:
            gathered = gathered.unsqueeze(0)
        self.max_param_diff = float((gathered - gathered[0]).abs().max())
        self.ranks_identical = bool(self.max_param_diff == 0.0)

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state_dict):
        self.history = list(state_dict["history"])


class _ProgressBar(TQDMProgressBar):
    """Lightning's bar with beta beside the loss."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        beta = getattr(pl_module.objective, "beta", None)
        if beta is not None:
            metrics["beta"] = f"{beta:.2f}"
        return metrics


def run_ddp(args, device):
    """Train with ``Trainer(strategy="ddp", devices=args.devices, num_nodes=args.num_nodes)``; return the exit code."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # share the cores, do not oversubscribe
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.devices))
    pyro.settings.set(module_local_params=True)
    lightning.seed_everything(args.seed, verbose=False)
    splits = load_splits(args)
    train, valid = splits["train"], splits["valid"]
    world = args.devices * args.num_nodes
    per_process = args.batch_size // world
    steps_per_epoch = len(train) // args.batch_size
    hidden = (args.hidden, args.hidden)
    model = VAEModel(args.latent_dim, hidden, num_data=len(train))
    guide = vae_guide(model, args.flow, args.num_flows, train[:per_process], torch.arange(per_process), hidden=hidden)
    loss = (AnnealedELBO(mode="kl_warmup", warmup_steps=args.warmup * steps_per_epoch) if args.warmup
            else Trace_ELBO())
    module = VAEModule(model, guide, loss, lr=args.lr, lr_decay=args.lr_decay)
    train_loader = DataLoader(TensorDataset(train, torch.arange(len(train))), batch_size=per_process, shuffle=True,
                              drop_last=True)
    valid_loader = DataLoader(TensorDataset(valid, torch.arange(len(valid))), batch_size=1000)
    history = History(len(train))
    best = ModelCheckpoint(dirpath=args.out, filename="best", monitor="valid_loss", mode="min", save_top_k=1,
                           save_last=True, every_n_epochs=1, enable_version_counter=False)
    callbacks = [history, best, EarlyStopping(monitor="valid_loss", mode="min", patience=args.patience)]
    if not args.quiet:
        callbacks.append(_ProgressBar())
    trainer = lightning.Trainer(
        strategy="ddp" if world > 1 else "auto", accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=args.devices, num_nodes=args.num_nodes, max_epochs=args.epochs, callbacks=callbacks,
        logger=False, enable_progress_bar=not args.quiet, enable_model_summary=False, num_sanity_val_steps=0,
    )
    last = os.path.join(args.out, "last.ckpt")
    try:
        trainer.fit(module, train_loader, valid_loader,
                    ckpt_path=last if args.resume and os.path.exists(last) else None)
    except FloatingPointError as err:
        print(f"nfvi vae: error: {err}", file=sys.stderr)
        return 1
    if not trainer.is_global_zero:
        return 0
    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    # evaluate with the unscaled model(x) (a full plate, as IWAE needs) holding the trained parameters
    eval_model = VAEModel(args.latent_dim, hidden)
    eval_guide = vae_guide(eval_model, args.flow, args.num_flows, train[:per_process], hidden=hidden)
    eval_model.load_state_dict(model.state_dict())
    eval_guide.load_state_dict(guide.state_dict())
    eval_model.to(device)
    eval_guide.to(device)
    evaluation = evaluate_vae(eval_model, eval_guide, splits, iwae_k=args.iwae_k, seed=args.seed,
                              progress=not args.quiet and sys.stderr.isatty())
    hist = history.history
    best_epoch = min(hist, key=lambda h: h["valid"])["epoch"] if hist else 0
    settings = training_settings(args.flow, args.num_flows, args.batch_size, args.lr, args.lr_decay, args.warmup,
                                 args.patience, args.seed, args.latent_dim, hidden, len(train), len(valid))
    results = write_results(args, hist, evaluation, {
        "strategy": "ddp", "devices": args.devices, "num_nodes": args.num_nodes, "world_size": trainer.world_size,
        "batch_per_process": per_process, "out": args.out, "best_epoch": best_epoch,
        "stopped_early": len(hist) < args.epochs, "ranks_identical": history.ranks_identical,
        "max_param_diff": history.max_param_diff, "settings": settings,
        "steps": int(trainer.global_step),
    })
    if not args.quiet:
        print_summary(results)
        print(f"ranks identical: {results['ranks_identical']} (max |difference| {results['max_param_diff']:.3g}) "
              f"over {trainer.world_size} processes")
    return 0
