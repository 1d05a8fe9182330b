"""Flow-guided SVI on PyTorch Lightning: the same model and guide, trained on one or many processes.

:class:`SVIModule` wraps a Pyro model and a flow guide (:class:`~pyro_nfvi.guides.AutoFlowGuide`,
:class:`~pyro_nfvi.guides.AmortizedFlowGuide`) in a :class:`lightning.LightningModule`.  It builds
Pyro's ``ELBOModule`` (``loss(model, guide)``) with ``pyro.settings.set(module_local_params=True)``,
so every parameter is an ordinary module parameter that Lightning's strategies (DDP, devices,
checkpoints) handle like any other network's.  Our guides build their parameters at construction
(``model_args=``), so, unlike Pyro's ``examples/svi_lightning.py``, no dummy call is needed
before ``configure_optimizers``.

Data come from a ``DataLoader``; each batch is passed to the model as its arguments (a tuple or
list -> ``*args``, a dict -> ``**kwargs``, a tensor -> one argument).  Under DDP Lightning adds a
``DistributedSampler``: each process sees its share of every global batch, and the gradients are
averaged across processes.  The model's data plate must then be *scaled to the full data size*:
give the plate the data-set size and the batch's indices,
``pyro.plate("data", size=N, subsample=idx)`` (or let the plate draw them with
``subsample_size=``); each process's ELBO is then an unbiased estimate of the full-data ELBO and
their average is the estimate of the global batch.

This module is the only one of the package that imports ``lightning`` (an optional extra:
``pip install pyro_nfvi[lightning]``).
"""
import pyro
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO

try:
    import lightning
except ImportError as error:  # pragma: no cover - exercised by a test that hides lightning
    raise ImportError(
        "pyro_nfvi.lightning needs PyTorch Lightning, which is not installed; "
        "install it with `pip install pyro_nfvi[lightning]` (or `pip install 'lightning>=2.6'`)"
    ) from error

from .guides.checkpoint import get_rng_state, set_rng_state
from .guides.fast import check_module_local_contexts
from .guides.guard import DEFAULT_MAX_SKIPS, NonFiniteGuard
from .validation import check_positive

__all__ = ["SVIModule", "batch_to_args"]

#: key of this module's extra state inside a Lightning checkpoint.
CHECKPOINT_KEY = "pyro_nfvi"


def batch_to_args(batch):
    """Split a DataLoader batch into the model's ``(args, kwargs)``.

    A tuple or list becomes the positional arguments, a dict the keyword arguments, anything else
    (a tensor) the one positional argument.

    Args:
        batch: one batch from the ``DataLoader``.

    Example:
        >>> batch_to_args((1, 2)), batch_to_args({"x": 1}), batch_to_args(torch.zeros(2))
        (((1, 2), {}), ((), {'x': 1}), ((tensor([0., 0.]),), {}))
    """
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    if isinstance(batch, dict):
        return (), dict(batch)
    return (batch,), {}


def _objective_state(objective):
    if callable(getattr(objective, "get_state", None)) and callable(getattr(objective, "set_state", None)):
        return {"kind": "state", "state": objective.get_state()}
    if isinstance(getattr(objective, "t", None), int):
        return {"kind": "t", "t": objective.t}
    return None


class SVIModule(lightning.LightningModule):
    """A ``LightningModule`` that trains a Pyro model and guide by stochastic variational inference.

    Each training step computes the loss (negative ELBO) of ``loss(model, guide)`` on the batch,
    backpropagates it (Lightning's ``manual_backward``: under DDP the gradients are averaged
    across processes), checks the loss and every gradient with a
    ``pyro_nfvi.guides.guard.NonFiniteGuard`` (a non-finite step is skipped on every process
    alike: parameters and optimizer state unchanged), clips the gradient norm if asked, steps the
    optimizer, and advances an annealed objective (:class:`~pyro_nfvi.objectives.AnnealedELBO`)
    once.  It logs ``loss`` (averaged over processes), ``grad_norm`` (before clipping), ``beta``
    (annealed objectives) and ``skipped`` (the guard's count).  It uses Lightning's manual
    optimization, so ``Trainer(gradient_clip_val=...)`` and ``accumulate_grad_batches`` do not
    apply: pass ``clip_norm`` here.  Lightning's ``global_step`` (and so ``max_steps``) counts
    *applied* optimizer steps: a skipped step does not count, while the objective's step counter
    advances at every step, as with :class:`pyro.infer.SVI`.  On resume Lightning restarts the
    DataLoader's epoch (a plain DataLoader has no position to restore), so the continuation is
    exact when the data order does not depend on where the run stopped (e.g. one batch per epoch).

    A Lightning checkpoint (``trainer.save_checkpoint``, ``ckpt_path=``) holds the model's and
    guide's parameters and buffers (this module's ``state_dict``), the optimizer, and, under the
    ``"pyro_nfvi"`` key, the objective's step counter (β), the guard's counters and the RNG
    states, so a resumed run continues exactly as the uninterrupted one.  Rebuild the model and
    guide as before (same ``model_args``) and pass the checkpoint as ``ckpt_path``.

    Call ``pyro.settings.set(module_local_params=True)`` *before* building the model and the guide.
    The model's networks must be submodules of the model (an ``nn.Module``/``PyroModule`` whose
    ``forward`` is the model), so that Lightning sees their parameters.

    Args:
        model (callable): the Pyro model; an ``nn.Module`` if it has parameters of its own.
        guide (nn.Module): the guide, set up with ``model_args=`` (e.g.
            :class:`~pyro_nfvi.guides.AmortizedFlowGuide`).
        loss (pyro.infer.ELBO or None): the objective, e.g. ``Trace_ELBO()``,
            :class:`~pyro_nfvi.objectives.AnnealedELBO`, :class:`~pyro_nfvi.objectives.STL_ELBO`,
            :class:`~pyro_nfvi.objectives.IW_ELBO` (default ``Trace_ELBO()``).
        optimizer (callable or None): ``optimizer(params) -> torch.optim.Optimizer``; default Adam.
        lr (float): learning rate of the default Adam.
        clip_norm (float or None): clip the global gradient norm before each update.
        max_skips (int or None): consecutive non-finite steps after which the guard raises a
            ``FloatingPointError`` naming the parameter and flow layer; ``None`` never raises.
        guard (bool): ``False`` turns the non-finite check off.
        restore_rng (bool): restore the RNG states saved in a checkpoint when resuming (under DDP
            every process gets the saving process's state).

    Example:
        >>> import lightning, pyro.distributions as dist
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from pyro_nfvi.guides import AmortizedFlowGuide
        >>> N = 64
        >>> x = torch.randn(N) + 2.0
        >>> class Model(torch.nn.Module):
        ...     def forward(self, x, idx):
        ...         mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        ...         with pyro.plate("data", size=N, subsample=idx):  # scaled to the full data
        ...             z = pyro.sample("z", dist.Normal(mu, 1.0))
        ...             pyro.sample("x", dist.Normal(z, 0.5), obs=x)
        >>> with pyro.settings.context(module_local_params=True):
        ...     model = Model()
        ...     guide = AmortizedFlowGuide(model, plate="data", num_flows=1, encoder_hidden=(8,),
        ...                                model_args=(x[:16], torch.arange(16)))
        ...     module = SVIModule(model, guide, lr=0.01)
        ...     loader = DataLoader(TensorDataset(x, torch.arange(N)), batch_size=16, shuffle=True)
        ...     trainer = lightning.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False,
        ...                                 enable_progress_bar=False, enable_checkpointing=False,
        ...                                 enable_model_summary=False)
        ...     trainer.fit(module, loader)
        >>> trainer.global_step, sorted(trainer.callback_metrics)
        (2, ['grad_norm', 'loss', 'skipped'])
    """

    def __init__(self, model, guide, loss=None, optimizer=None, lr=1e-3, clip_norm=None,
                 max_skips=DEFAULT_MAX_SKIPS, guard=True, restore_rng=True):
        super().__init__()
        if not pyro.settings.get("module_local_params"):
            raise RuntimeError(
                "SVIModule needs module-local parameters: call pyro.settings.set(module_local_params=True) "
                "before building the model and the guide, then build them and the SVIModule"
            )
        check_module_local_contexts(model, guide)
        if not isinstance(guide, torch.nn.Module):
            raise TypeError(f"guide must be an nn.Module (e.g. AmortizedFlowGuide), got {type(guide).__name__}")
        if getattr(guide, "is_set_up", True) is False:
            raise ValueError(
                f"the guide ({type(guide).__name__}) has not built its parameters yet; build it with "
                "model_args=(...) (the model's arguments for one batch) so that configure_optimizers sees them"
            )
        if optimizer is not None and not callable(optimizer):
            raise TypeError("optimizer must be a callable params -> torch.optim.Optimizer")
        if clip_norm is not None:
            clip_norm = check_positive("clip_norm", clip_norm)
        if not isinstance(guard, bool):
            raise TypeError(f"guard must be True or False, got {guard!r}")
        self.objective = Trace_ELBO() if loss is None else loss
        if isinstance(self.objective, JitTrace_ELBO):
            raise ValueError(
                "JitTrace_ELBO reads parameters from Pyro's global param store and does not work with "
                "module_local_params=True; use Trace_ELBO"
            )
        #: Pyro's ELBOModule; its submodules ``model`` and ``guide`` hold every trained parameter.
        self.elbo = self.objective(model, guide)
        self.model, self.guide = model, guide  # the same objects (registered once, under elbo.)
        self.lr = check_positive("lr", lr)
        self.clip_norm = clip_norm
        self._make_optimizer = optimizer
        self.guard = NonFiniteGuard(max_skips, module=self.elbo) if guard else None
        self.restore_rng = bool(restore_rng)
        self.automatic_optimization = False

    # nn.Module would register model and guide twice; keep them as plain attributes.
    def __setattr__(self, name, value):
        if name in ("model", "guide"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def trained_parameters(self):
        """The parameters being optimized: those of the model and guide modules that require grad."""
        return [p for p in self.elbo.parameters() if p.requires_grad]

    def forward(self, *args, **kwargs):
        """The loss (negative ELBO estimate) for the model's arguments, differentiable."""
        return self.elbo(*args, **kwargs)

    def configure_optimizers(self):
        """Adam (or ``optimizer(params)``) over the model's and guide's parameters."""
        params = self.trained_parameters()
        if not params:
            raise ValueError(
                "SVIModule found no parameters in the model and guide modules; build the guide with "
                "model_args=(...) and make the model's networks submodules of the model"
            )
        if self._make_optimizer is not None:
            return self._make_optimizer(params)
        return torch.optim.Adam(params, lr=self.lr)

    def _global_mean(self, value):
        if self._trainer is None or self.trainer.world_size == 1:
            return value
        return self.trainer.strategy.reduce(value, reduce_op="mean")

    def training_step(self, batch, batch_idx):
        """One SVI step on ``batch``; returns the detached loss."""
        args, kwargs = batch_to_args(batch)
        optimizer = self.optimizers()
        beta = getattr(self.objective, "beta", None)
        loss = self.elbo(*args, **kwargs)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        # the guard sees the loss averaged over processes (a NaN anywhere is a NaN everywhere) and
        # the gradients DDP already averaged: every process takes the same decision
        loss_all = self._global_mean(loss.detach())
        named = [(n, p) for n, p in self.elbo.named_parameters() if p.requires_grad]
        grads = [p.grad for _, p in named if p.grad is not None]
        grad_norm = (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                     if grads else torch.zeros(()))
        if self.guard is None or self.guard.check(loss_all, named):
            if self.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for _, p in named], self.clip_norm)
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)  # skipped: parameters and optimizer state unchanged
        advance = getattr(self.objective, "advance", None)
        if callable(advance):
            advance()  # once per step, applied or skipped, as SVI and FastSVI do
        self.log("loss", loss_all, prog_bar=True)
        self.log("grad_norm", grad_norm.detach())
        if beta is not None:
            self.log("beta", float(beta))
        if self.guard is not None:
            self.log("skipped", float(self.guard.skipped))
        return loss_all

    def on_save_checkpoint(self, checkpoint):
        """Add the objective's step counter (β), the guard's counters and the RNG states."""
        guard = None if self.guard is None else {k: getattr(self.guard, k) for k in ("step", "skipped", "consecutive")}
        checkpoint[CHECKPOINT_KEY] = {
            "objective": _objective_state(self.objective),
            "guard": guard,
            "rng": get_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint):
        """Restore what :meth:`on_save_checkpoint` added."""
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            return
        objective = saved.get("objective")
        if objective is not None:
            if objective["kind"] == "state":
                self.objective.set_state(objective["state"])
            else:
                self.objective.t = objective["t"]
        if self.guard is not None and saved.get("guard") is not None:
            for key, value in saved["guard"].items():
                setattr(self.guard, key, value)
        if self.restore_rng and saved.get("rng") is not None:
            set_rng_state(saved["rng"])

    @torch.no_grad()
    def evaluate_loss(self, *args, **kwargs):
        """The loss (negative ELBO estimate) without a gradient step, as a float."""
        return self.elbo(*args, **kwargs).item()
