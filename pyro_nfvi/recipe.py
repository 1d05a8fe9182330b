r"""The recommended way to fit a guide: :func:`fit`, a black-box VI recipe on Pyro's ELBOs (as ``SVI`` steps).

The recipe follows what the black-box VI studies found to work across many Stan models (Agrawal,
Sheldon & Domke 2020; Agrawal & Domke 2024; Welandawe et al. 2022):

1. **warm start** -- fit the Gaussian base first with the flow held at its initialisation
   (:meth:`AutoFlowGuide.fit_base <pyro_nfvi.guides.AutoFlowGuide.fit_base>`), so that the flow
   starts at the posterior's location and scale instead of learning the scale itself; a
   preconditioned guide (``AutoFlowGuide``'s default up to 200 latent dimensions) also tries the Laplace approximation at the MAP
   (:meth:`AutoFlowGuide.fit_laplace <pyro_nfvi.guides.AutoFlowGuide.fit_laplace>`), which
   whitens the coordinates the flow learns in, and keeps whichever Gaussian has the higher ELBO
   (on the collinear regression the Laplace one: the mean error fell from 1.9 to 0.06 sd; a
   funnel has no mode, and on a hierarchical model the fitted base wins);
2. **step-size selection** -- a short probe run from the same state for each candidate learning
   rate; the largest one whose smoothed loss is within two standard errors of the lowest
   continues (a short probe favours small steps; non-finite losses disqualify);
3. **clipping and decay** -- Adam with each gradient clamped elementwise to ``[-clip_norm, clip_norm]``
   (the update of Pyro's :class:`~pyro.optim.clipped_adam.ClippedAdam`; here one fused
   ``torch.optim.Adam`` over every trainable tensor, with ``torch.nn.utils.clip_grad_value_``) and
   the learning rate decaying geometrically to ``final_lr_fraction`` of its value, so that the
   last steps average out the optimiser's noise;
4. **the estimator** -- ``"auto"`` (the default) is ``"dreg"``, the importance-weighted bound with
   ``num_particles`` particles and doubly reparameterised gradients, whose ``q`` covers the
   posterior's tails better than the ELBO's (on eight schools the sd error of log tau fell from 0.3
   to 0.05), except after a Laplace warm start, where it is ``"elbo"``: the whitened posterior is
   already close to the Gaussian, and there DReG training raised PSIS k-hat from about 0.3 to
   0.75-1.0 on the collinear regression and AR(5) while the ELBO kept it near 0.3 with mean and sd
   errors below 0.06; and for a guide that decenters hierarchical sites (``AutoFlowGuide``'s
   ``decenter``), where it is ``"elbo"`` too: decentered, the centered eight schools is the
   non-centered one, and DReG's ``q`` over-spread its tails there (sd error of theta 1.2-4.9 at
   1000 steps, 0.2-0.5 at 2000, against 0.3 for the ELBO); ``"stl"`` (sticking the landing), ``"dreg"``, ``"elbo"``
   (:class:`~pyro.infer.Trace_ELBO`) or any Pyro ELBO instance force a choice.  A DReG-trained ``q``
   is an importance-sampling proposal: weighted by its importance weights
   (:func:`pyro_nfvi.diagnostics.importance_resample`) it is closer to the posterior than on its own
   (on the hierarchical regression of ``benchmarks/bayes.py`` the worst mean error over 5 fits fell
   from 0.12 to 0.03 posterior sd);
5. **a guard** -- a ``pyro_nfvi.guides.guard.NonFiniteGuard`` checks every step: a step whose
   gradients are not finite is skipped (parameters and Adam's moments unchanged), and after
   ``max_skips`` consecutive skips a ``FloatingPointError`` names the step, the first parameter
   whose gradient went non-finite and, for a flow guide, its layer; a non-finite *loss* rolls the
   parameters back to the last good state and halves the learning rate, and after
   ``max_rollbacks`` roll-backs a ``FloatingPointError`` says where;
6. **a stopping rule** (optional) -- stop when the mean loss of a window of ``window`` steps
   improves on the previous window's by less than ``tol`` nats;
7. a `tqdm <https://tqdm.github.io>`_ progress bar with the smoothed loss;
8. **a check of the draws** after a ``"dreg"`` fit: the ELBO and the log-evidence estimate of 512
   draws of the fitted guide (:attr:`FitResult.elbo`, :attr:`FitResult.log_evidence`); their gap
   estimates :math:`\mathrm{KL}(q \,\|\, p)`, and above ``DRAWS_KL_WARNING`` nats a warning says that
   ``q`` is a proposal to weight rather than a posterior to use as it is.  The importance-weighted
   bound barely penalises ``q`` for mass where the posterior has almost none: on the banana of
   Pyro's ``examples/neutra.py`` (3 seeds) DReG-trained IAF guides had a KL of 0.7-6.8 nats and sd
   errors of 0.33-1.69 (coupling: up to 10^3 nats at PSIS k-hat 0.2), where ``"stl"`` gave a KL of
   0.1-0.5 and sd errors of 0.10-0.12.

It works for every guide: the flow guides of this package and Pyro's own autoguides (for which
the warm start is skipped and ``"stl"``/``"dreg"`` fall back to ``"elbo"``).
"""
import math
import time
import warnings
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO
from tqdm.auto import tqdm

from .guides.fast import fused_adam
from .guides.guard import DEFAULT_MAX_SKIPS, NonFiniteGuard
from .validation import check_choice, check_int, check_positive

__all__ = ["DRAWS_KL_WARNING", "ESTIMATORS", "FitResult", "fit", "make_loss"]

#: Names accepted by :func:`fit`'s ``estimator`` (``"auto"``: ``"dreg"``, or ``"elbo"`` after a Laplace warm start
#: or for a guide that decenters sites).
ESTIMATORS = ("auto", "elbo", "stl", "dreg")

#: After a ``"dreg"`` fit, :func:`fit` warns when the gap between the log-evidence estimate and the
#: ELBO of the fitted guide -- an estimate of :math:`\mathrm{KL}(q \,\|\, p)` -- exceeds this many nats:
#: the importance-weighted bound has let ``q`` put mass where the posterior has almost none (on the
#: banana of Pyro's ``examples/neutra.py`` the gap reached 7 nats, and the sd of the guide's own draws
#: 2.7 times the posterior's).
DRAWS_KL_WARNING = 2.0


@dataclass
class FitResult:
    r"""What :func:`fit` did: the losses of the main run and the choices it made.

    Attributes:
        losses (list of float): the loss (negative ELBO estimate) of every step of the main run.
        lr (float): the learning rate chosen (after any halving by the guard).
        probe_scores (dict): candidate learning rate -> smoothed probe loss (``inf`` if it diverged).
        warm_start (str): ``"laplace"`` (a preconditioned guide whitened with the Laplace
            approximation), ``"base"`` (the Gaussian base fitted on the ELBO) or ``None``.
        warm_start_bounds (dict): ``"laplace"``/``"base"`` -> the ELBO estimate of each warm start
            tried on a preconditioned guide (the higher one is kept).
        warm_start_error (str): why the Laplace warm start was not possible (then ``"base"``).
        estimator (str): the estimator that trained (``"auto"`` resolved; ``"elbo"`` for a guide
            not of this package, which falls back to the ELBO), or the ELBO instance's class name.
        warm_start_losses (list of float): the losses of the ``"base"`` warm start (empty if none).
        rollbacks (int): how many times the guard rolled back after a non-finite loss.
        skipped (int): steps of the main run not applied because a gradient (or the loss) was not finite.
        stopped_early (bool): whether the stopping rule ended the run.
        elbo (float): after a ``"dreg"`` fit (vectorized particles): the ELBO of the fitted guide,
            :math:`\frac1S \sum_s \log w_s` over :math:`S = 512` draws (``nan`` otherwise).
        log_evidence (float): from the same draws, :math:`\log \frac1S \sum_s w_s`; the gap
            ``log_evidence - elbo`` estimates :math:`\mathrm{KL}(q \,\|\, p)`, how far the guide's
            own draws are from the posterior (``fit`` warns above ``DRAWS_KL_WARNING`` nats).
        seconds (float): wall time of the whole recipe.
    """

    losses: list = field(default_factory=list)
    lr: float = math.nan
    probe_scores: dict = field(default_factory=dict)
    warm_start: str = None
    warm_start_bounds: dict = field(default_factory=dict)
    warm_start_error: str = None
    estimator: str = None
    warm_start_losses: list = field(default_factory=list)
    rollbacks: int = 0
    skipped: int = 0
    stopped_early: bool = False
    elbo: float = math.nan
    log_evidence: float = math.nan
    seconds: float = 0.0


def make_loss(estimator, guide, num_particles, vectorize, jit=False):
    """The objective for ``estimator``: an ELBO instance as given, else by name; Pyro's guides get ``Trace_ELBO``.

    With ``jit`` each is compiled: Pyro's :class:`~pyro.infer.JitTrace_ELBO`, or
    :class:`~pyro_nfvi.objectives.JitSTL_ELBO` / :class:`~pyro_nfvi.objectives.JitIW_ELBO`.

    Example:
        >>> from pyro.infer.autoguide import AutoNormal
        >>> type(make_loss("dreg", AutoNormal(lambda: None), 8, True)).__name__
        'Trace_ELBO'
    """
    if not isinstance(estimator, str):
        return estimator
    check_choice("estimator", estimator, ESTIMATORS)
    if estimator == "auto":
        estimator = "dreg"
    if estimator != "elbo":
        from .guides.base import FlowGuide  # noqa: PLC0415 - objectives below need our guides

        if isinstance(guide, FlowGuide):
            from . import objectives  # noqa: PLC0415

            if estimator == "stl":
                stl = objectives.JitSTL_ELBO if jit else objectives.STL_ELBO
                return stl(num_particles=num_particles, vectorize_particles=vectorize)
            iw = objectives.JitIW_ELBO if jit else objectives.IW_ELBO
            return iw(num_particles=num_particles, gradient="dreg", vectorize_particles=vectorize)
    return (JitTrace_ELBO if jit else Trace_ELBO)(num_particles=num_particles, vectorize_particles=vectorize)


def _check_jit(estimator, args):
    """Refuse, before any work, what ``fit(..., jit=True)`` cannot compile."""
    if not isinstance(estimator, str):
        raise ValueError(
            f"jit=True compiles fit's own ELBO; got an ELBO instance ({type(estimator).__name__}): pass "
            "estimator='elbo', or compile it yourself (e.g. pyro.infer.JitTrace_ELBO) and leave jit=False"
        )
    for i, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            raise ValueError(
                f"jit=True traces the model with torch.jit, which takes tensors as positional arguments; "
                f"positional argument {i} is a {type(arg).__name__}: pass it as a keyword argument (the "
                "model is compiled once per keyword value) or use jit=False"
            )


def _trainable(model, guide, args, kwargs):
    """Every tensor of the guide (and of modules) to optimise, after one traced call has created them (lazy autoguides)."""
    with poutine.trace(param_only=True) as capture, torch.no_grad():
        guide(*args, **kwargs)
    store = pyro.get_param_store()
    tensors = {}
    for name in capture.trace.nodes:
        if name in store:
            tensors[name] = store.get_param(name).unconstrained()
    for owner in (model, guide):
        if isinstance(owner, torch.nn.Module):
            for name, p in owner.named_parameters():
                tensors.setdefault(f"{type(owner).__name__}.{name}", p)
    return tensors


class _Snapshot:
    """Values of the trainable tensors, restored in place (their identity, and so Pyro's bindings, kept)."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.values = {k: t.detach().clone() for k, t in tensors.items()}

    def restore(self):
        with torch.no_grad():
            for k, t in self.tensors.items():
                t.copy_(self.values[k])


def _state_copy(module):
    """A copy of ``module.state_dict()`` (tensors cloned), to restore later with ``load_state_dict``."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in module.state_dict().items()}


def _bound(model, guide, args, kwargs, vectorize=True):
    """A Monte Carlo ELBO estimate without gradients: 512 vectorized draws, or 64 one at a time."""
    with torch.no_grad():
        elbo = Trace_ELBO(num_particles=512, vectorize_particles=True) if vectorize else Trace_ELBO(num_particles=64)
        return -elbo.loss(model, guide, *args, **kwargs)


def _importance_weighted(loss):
    from .objectives import IW_ELBO  # noqa: PLC0415 - as in make_loss

    return isinstance(loss, IW_ELBO)


def _check_draws(model, guide, args, kwargs, result):
    """Fill ``result.elbo`` and ``result.log_evidence`` from 512 draws; warn if their gap exceeds ``DRAWS_KL_WARNING``."""
    from .evaluation import log_importance_weights  # noqa: PLC0415 - evaluation sits below the recipe

    # 8 traces of 64 draws: memory stays that of 64 particles on a large data set
    try:
        lw = log_importance_weights(model, guide, *args, num_samples=512, chunk_size=64, plate=False, **kwargs).double()
    except (ValueError, RuntimeError, NotImplementedError) as error:  # the fit is done: say why, keep its result
        warnings.warn(f"fit: the draws of the fitted guide could not be checked ({type(error).__name__}: {error})",
                      UserWarning, stacklevel=3)
        return
    if lw.dim() != 1 or not bool(torch.isfinite(lw).all()):
        return
    result.elbo = float(lw.mean())
    result.log_evidence = float(torch.logsumexp(lw, 0) - math.log(len(lw)))
    gap = result.log_evidence - result.elbo
    if gap > DRAWS_KL_WARNING:
        warnings.warn(
            f"fit: the guide puts mass where the posterior has almost none: its ELBO ({result.elbo:.4g}) is "
            f"{gap:.3g} nats below the log-evidence estimate ({result.log_evidence:.4g}), an estimate of "
            f"KL(q || p) (DRAWS_KL_WARNING = {DRAWS_KL_WARNING}). Trained on the importance-weighted bound "
            "(estimator='dreg'), q is a proposal rather than a posterior: weight its draws "
            "(pyro_nfvi.diagnostics.importance_resample), or refit with estimator='stl' for a q to use as it is",
            UserWarning,
            stacklevel=3,
        )


def _warm_start(model, guide, args, kwargs, steps, num_particles, result, vectorize=True, jit=False):
    """The warm start of :func:`fit`: the better, by the ELBO, of the Laplace whitening and the fitted base.

    A guide with a ``preconditioner`` tries :meth:`~pyro_nfvi.guides.AutoFlowGuide.fit_laplace`
    (none on a funnel) and, from its initial state, :meth:`~pyro_nfvi.guides.AutoFlowGuide.fit_base`;
    it keeps the Gaussian with the higher ELBO (the Laplace Gaussian is far better on a collinear
    regression, worse on a hierarchical model whose mode sits at a small group scale).  Other
    guides with ``fit_base`` run it; Pyro's guides get no warm start.
    """
    laplace = None
    if getattr(guide, "preconditioner", None) is not None and callable(getattr(guide, "fit_laplace", None)):
        initial = _state_copy(guide)
        try:
            guide.fit_laplace(*args, **kwargs)
            result.warm_start_bounds["laplace"] = _bound(model, guide, args, kwargs, vectorize)
            laplace = _state_copy(guide)
            result.warm_start = "laplace"
        except ValueError as err:
            result.warm_start_error = str(err)
        if steps and callable(getattr(guide, "fit_base", None)):
            guide.load_state_dict(initial)  # the identity preconditioner again
    if steps and callable(getattr(guide, "fit_base", None)):
        options = {"jit": True} if jit else {}  # a guide of another package need not know jit
        result.warm_start_losses = guide.fit_base(*args, num_steps=steps, num_particles=num_particles,
                                                  vectorize_particles=vectorize, **options, **kwargs)
        result.warm_start = "base"
        if laplace is not None:
            result.warm_start_bounds["base"] = _bound(model, guide, args, kwargs, vectorize)
            if result.warm_start_bounds["laplace"] > result.warm_start_bounds["base"]:
                guide.load_state_dict(laplace)
                result.warm_start = "laplace"


class _AdamSteps:
    r"""The recipe's optimisation step: ``loss.loss_and_grads``, a ``NonFiniteGuard``, one torch Adam.

    What ``SVI(model, guide, GuardedOptim(ClippedAdam(...)), loss).step`` does -- gradients clamped
    elementwise to ``[-clip, clip]``, Adam, the learning rate multiplied by ``lrd`` before every
    step, a step with a non-finite gradient skipped -- with one fused Adam
    (``pyro_nfvi.guides.fast.fused_adam``) over every trainable tensor instead of one optimizer per
    parameter and a param-store lookup per step (about 2 ms of a 5 ms compiled step on eight schools).  The tensors are ``fit``'s and
    those the first step's param trace finds (a model's ``pyro.param`` sites).
    """

    def __init__(self, model, guide, loss, tensors, lr, lrd, clip, guard):
        self.model, self.guide, self.loss = model, guide, loss
        seen, self.named = set(), []
        for name, tensor in tensors.items():  # a guide's tensor is both a module parameter and a param-store entry
            if id(tensor) not in seen:
                seen.add(id(tensor))
                self.named.append((name, tensor))
        self.lr, self.lrd, self.clip, self.guard = lr, lrd, clip, guard
        self.optim = None

    def _setup(self, capture):
        known = {id(t) for _, t in self.named}
        store = pyro.get_param_store()
        for name, site in capture.trace.nodes.items():
            tensor = site["value"].unconstrained()
            if id(tensor) not in known:
                known.add(id(tensor))
                self.named.append((store.param_name(tensor) or name, tensor))
        self.params = [t for _, t in self.named]
        self.optim = fused_adam(self.params, self.lr)

    def step(self, *args, **kwargs):
        # a compiled loss runs in TorchScript's plain interpreter (pyro_nfvi.objectives.jit: faster here)
        with torch.jit.optimized_execution(False):
            if self.optim is None:
                with poutine.trace(param_only=True) as capture:
                    loss = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
                self._setup(capture)
            else:
                loss = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
        group = self.optim.param_groups[0]
        group["lr"] *= self.lrd  # before each step, as ClippedAdam (a skipped step too: the schedule ends as planned)
        if self.guard.check(None, self.named):
            torch.nn.utils.clip_grad_value_(self.params, self.clip, foreach=True)
            self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        return float(loss)


def _run(svi, steps, args, kwargs, bar=None, guard=None):
    """``steps`` SVI steps; return the losses, stopping at the first non-finite one (returned last)."""
    losses = []
    for _ in range(steps):
        try:
            loss = svi.step(*args, **kwargs)
        except ValueError as error:
            # with validation on, a non-finite value fails a distribution's argument check first
            if "found invalid values" not in str(error):
                raise
            loss = math.nan
        losses.append(loss)
        if bar is not None:
            bar.update(1)
        if not math.isfinite(loss):
            break
        if guard is not None:
            guard(len(losses), loss)
    return losses


def _smoothed(losses):
    """Mean of the last half of ``losses`` (``inf`` if any loss is not finite)."""
    return _smoothed_with_error(losses)[0]


def _smoothed_with_error(losses):
    """Mean of the last half of ``losses`` and its standard error (``inf`` if any loss is not finite)."""
    if not losses or not all(math.isfinite(v) for v in losses):
        return math.inf, math.inf
    tail = losses[len(losses) // 2 :]
    mean = sum(tail) / len(tail)
    var = sum((v - mean) ** 2 for v in tail) / max(len(tail) - 1, 1)
    return mean, math.sqrt(var / len(tail))


def _nonfinite_parameters(tensors):
    return [k for k, t in tensors.items() if not bool(torch.isfinite(t).all())]


def fit(
    model,
    guide,
    *args,
    num_steps=2000,
    lrs=(1e-2, 5e-3, 1e-3),
    probe_steps=None,
    estimator="auto",
    num_particles=8,
    vectorize_particles=True,
    clip_norm=10.0,
    final_lr_fraction=0.1,
    warm_start=True,
    warm_start_steps=None,
    tol=None,
    window=200,
    max_rollbacks=3,
    max_skips=DEFAULT_MAX_SKIPS,
    jit=False,
    progress=True,
    **kwargs,
):
    r"""Fit ``guide`` to ``model(*args, **kwargs)`` with the recommended recipe; return a :class:`FitResult`.

    Minimises :math:`-\mathrm{ELBO} = \mathbb E_q[\log q(z) - \log p(x, z)]` (or the IW bound for
    ``"dreg"``) in four phases: warm start, one probe of ``probe_steps`` steps per learning rate in
    ``lrs`` (each from the warm-started state), the main run of ``num_steps`` steps continuing from
    the best probe, with the learning rate decaying geometrically to ``final_lr_fraction`` of the
    chosen one.  See the module docstring for the reasons and references.  The guide is trained in
    place, through Pyro's param store (as :class:`~pyro.infer.SVI` does).

    References: Agrawal, Sheldon & Domke, *Advances in Black-Box VI: Normalizing Flows, Importance
    Weighting, and Optimization*, NeurIPS 2020; Roeder, Wu & Duvenaud, *Sticking the Landing*,
    NeurIPS 2017; Tucker et al., *Doubly Reparameterized Gradient Estimators for Monte Carlo
    Objectives*, ICLR 2019.

    Args:
        model (callable): the Pyro model.
        guide (callable): any guide (this package's or Pyro's).
        *args: the model's arguments, the same at every step.
        **kwargs: keyword arguments, as ``*args``.
        num_steps (int): steps of the main run (probes and warm start come on top).
        lrs (sequence of float): candidate learning rates; one candidate skips the probes.
        probe_steps (int): steps of each probe (default ``num_steps // 20``, at least 50; with a
            tenth, 2 of 5 fits of the hierarchical regression of ``benchmarks/bayes.py`` ended with
            k-hat above 0.7 at 1000 steps, none with a twentieth, which also costs less).
        estimator (str or pyro.infer.ELBO): ``"auto"`` (``"dreg"``, or ``"elbo"`` after a Laplace
            warm start or for a guide that decenters sites), ``"stl"``, ``"dreg"``, ``"elbo"``, or an ELBO instance.
        num_particles (int): particles per gradient estimate.
        vectorize_particles (bool): draw the particles in one vectorized pass.
        clip_norm (float): the bound on every gradient element, as :class:`~pyro.optim.clipped_adam.ClippedAdam`'s ``clip_norm``.
        final_lr_fraction (float): the learning rate at the last step, as a fraction of the chosen one.
        warm_start (bool): fit the base first when the guide has ``fit_base``.
        warm_start_steps (int): steps of the warm start (default ``num_steps // 2``, within [300, 1000]).
        tol (float): stop when a window's mean loss improves by less than ``tol``; ``None``: never.
        window (int): the window of the stopping rule and of the progress bar's smoothed loss.
        max_rollbacks (int): non-finite losses tolerated (each rolls back and halves the lr).
        max_skips (int): consecutive steps with a non-finite gradient skipped before a
            ``FloatingPointError`` (naming the step, the parameter and its flow layer) ends the fit.
        jit (bool): compile the loss of the warm start, the probes and the main run with Pyro's
            :class:`~pyro.infer.JitTrace_ELBO` (``torch.jit`` tracing, as Pyro's examples'
            ``--jit``), :class:`~pyro_nfvi.objectives.JitSTL_ELBO` or
            :class:`~pyro_nfvi.objectives.JitIW_ELBO`: a third to a half of the cost of a step on
            the models of ``benchmarks/bayes.py``.  The model must have a static structure (no
            Python branching on sampled values or data) and take its tensors as positional
            arguments; anything else goes in ``**kwargs`` (compiled once per value).  ``"stl"``
            and ``"dreg"`` also need a guide whose maps have closed-form Jacobians (IAF, planar,
            Householder, ``"none"``; not a decentered guide).
        progress (bool): show a tqdm progress bar.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_nfvi import AutoFlowGuide
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([4.8, 5.3, 5.1, 4.6])
        >>> guide = AutoFlowGuide(model, flow="iaf", num_flows=2)
        >>> result = fit(model, guide, y, num_steps=300, estimator="elbo", progress=False)
        >>> result.lr in (1e-2, 5e-3, 1e-3), bool(abs(guide.median(y)["mu"] - 4.95) < 0.2)
        (True, True)
    """
    num_steps = check_int("num_steps", num_steps)
    lrs = [check_positive("lrs", lr) for lr in (lrs if isinstance(lrs, (list, tuple)) else [lrs])]
    if not lrs:
        raise ValueError("lrs must hold at least one learning rate")
    probe_steps = max(50, num_steps // 20) if probe_steps is None else check_int("probe_steps", probe_steps)
    num_particles = check_int("num_particles", num_particles)
    clip_norm = check_positive("clip_norm", clip_norm)
    final_lr_fraction = check_positive("final_lr_fraction", final_lr_fraction)
    if final_lr_fraction > 1:
        raise ValueError(f"final_lr_fraction must lie in (0, 1], got {final_lr_fraction!r}")
    warm_start_steps = min(1000, max(300, num_steps // 2)) if warm_start_steps is None else check_int("warm_start_steps", warm_start_steps, minimum=0)
    tol = None if tol is None else check_positive("tol", tol)
    window = check_int("window", window)
    max_rollbacks = check_int("max_rollbacks", max_rollbacks, minimum=0)
    max_skips = check_int("max_skips", max_skips, minimum=1)

    if pyro.settings.get("module_local_params"):
        raise ValueError(
            "fit trains through Pyro's param store, which module_local_params=True turns off; use "
            "pyro_nfvi.guides.FastSVI there, or pyro.settings.set(module_local_params=False)"
        )
    start = time.perf_counter()
    result = FitResult()
    if isinstance(estimator, str):
        check_choice("estimator", estimator, ESTIMATORS)
    if jit:
        _check_jit(estimator, args)
    # one traced call creates a lazy guide's parameters (and sets up a flow guide) before the warm start
    tensors = _trainable(model, guide, args, kwargs)
    if not tensors:
        raise ValueError("fit found no parameters in the guide (or the model) to train")
    if warm_start:
        _warm_start(model, guide, args, kwargs, warm_start_steps, num_particles, result, vectorize_particles, jit)
    if estimator == "auto":
        near_gaussian = result.warm_start == "laplace" or bool(getattr(guide, "decentered", None))
        estimator = "elbo" if near_gaussian else "dreg"
    loss = make_loss(estimator, guide, num_particles, vectorize_particles, jit)
    if not isinstance(estimator, str):
        result.estimator = type(estimator).__name__
    elif type(loss) in (Trace_ELBO, JitTrace_ELBO):  # "elbo", or a Pyro guide's fall-back from "stl"/"dreg"
        result.estimator = "elbo"
    else:
        result.estimator = estimator

    module = guide if isinstance(guide, torch.nn.Module) else None

    def svi_at(lr, decay_steps, guard=None):
        lrd = final_lr_fraction ** (1.0 / decay_steps) if decay_steps else 1.0
        guard = NonFiniteGuard(max_skips, module=module) if guard is None else guard
        return _AdamSteps(model, guide, loss, tensors, lr, lrd, clip_norm, guard)

    total = num_steps + (probe_steps * len(lrs) if len(lrs) > 1 else 0)
    bar = tqdm(total=total, disable=not progress, desc="fit", leave=False)
    try:
        # -- step-size selection: each candidate from the same state; the best one continues
        lr = lrs[0]
        if len(lrs) > 1:
            warm, probes = _Snapshot(tensors), {}
            for candidate in lrs:
                warm.restore()
                try:
                    score, error = _smoothed_with_error(_run(svi_at(candidate, 0), probe_steps, args, kwargs, bar))
                except FloatingPointError:  # max_skips non-finite gradients in a row: diverged
                    score, error = math.inf, math.inf
                result.probe_scores[candidate] = score
                if math.isfinite(score):
                    probes[candidate] = (score, error, _Snapshot(tensors))
            if not probes:
                warm.restore()
                raise FloatingPointError(
                    f"fit: every candidate learning rate {lrs} diverged (non-finite loss) within {probe_steps} "
                    "probe steps; try smaller learning rates, a smaller init_scale, or check the model"
                )
            # a short probe favours small steps (less noise, not more progress): the largest learning
            # rate whose probe is within two standard errors of the best one continues
            best_score, best_error, _ = min(probes.values(), key=lambda p: p[0])
            lr = max(c for c, (score, _, _) in probes.items() if score <= best_score + 2 * best_error)
            probes[lr][2].restore()
        # -- the main run, with a guard: roll back to the last good state on a non-finite loss
        good, done = _Snapshot(tensors), 0
        guard = NonFiniteGuard(max_skips, module=module)
        svi = svi_at(lr, num_steps, guard)
        while done < num_steps:
            try:
                chunk = _run(svi, min(window, num_steps - done), args, kwargs, bar)
            except FloatingPointError as error:
                result.skipped = guard.skipped
                good.restore()
                raise FloatingPointError(
                    f"fit: the main run at lr={lr:.3g} gave up at {error}; the parameters hold the last "
                    "finite state"
                ) from error
            result.skipped = guard.skipped
            if math.isfinite(chunk[-1]):
                result.losses.extend(chunk)
                done += len(chunk)
                good = _Snapshot(tensors)
                bar.set_postfix(loss=f"{_smoothed(result.losses[-window:]):.4g}", lr=f"{lr:.2g}")
                if tol is not None and len(result.losses) >= 2 * window:
                    prev = sum(result.losses[-2 * window : -window]) / window
                    cur = sum(result.losses[-window:]) / window
                    if prev - cur < tol:
                        result.stopped_early = True
                        break
                continue
            result.losses.extend(chunk[:-1])
            done += len(chunk)
            bad = _nonfinite_parameters(tensors)
            good.restore()
            result.rollbacks += 1
            if result.rollbacks > max_rollbacks:
                if bad:
                    where = f"; non-finite parameters: {bad}"
                elif guard.last_reason is not None:
                    where = f"; at the last non-finite step {guard.last_reason}"
                else:
                    where = ""
                raise FloatingPointError(
                    f"fit: the loss was not finite at step {done} of the main run at lr={lr:.3g} "
                    f"after {max_rollbacks} roll-backs (each halving the learning rate){where}; the "
                    "parameters hold the last finite state. Try smaller lrs, a smaller init_scale or clip_norm"
                )
            lr /= 2
            svi = svi_at(lr, max(num_steps - done, 1), guard)
    finally:
        bar.close()
    result.lr = lr
    if result.estimator == "dreg" and vectorize_particles and _importance_weighted(loss):
        _check_draws(model, guide, args, kwargs, result)  # Pyro's guides fall back to the ELBO: nothing to check
    result.seconds = time.perf_counter() - start
    return result
