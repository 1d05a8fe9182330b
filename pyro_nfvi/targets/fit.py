r"""Fit a flow guide to a 2-D energy with the package's own guide, objective and training loop.

This is the experiment of Rezende & Mohamed (2015, Section 6.1, Figure 3).  The target is the Pyro
model :func:`~pyro_nfvi.targets.energy_model` (a flat prior on ``z`` and ``pyro.factor("U", -U(z))``),
the approximation is :class:`~pyro_nfvi.guides.AutoFlowGuide`,
:math:`q = (f_K \circ \dots \circ f_1)_\# \mathcal N(\mu, \mathrm{diag}\,\sigma^2)`, and the objective
is :class:`~pyro_nfvi.objectives.AnnealedELBO` in ``mode="free_energy"``, the annealed free energy

.. math:: \mathcal F_\beta(q) = \mathbb E_q[\log q(z) + \beta_t\, U(z)]

(R&M eq. 20), minimised by :class:`~pyro_nfvi.guides.FastSVI` with Adam and a cosine learning-rate
decay.  The inverse temperature rises linearly from 0.01 to 1 over :math:`T` steps,
:math:`\beta_t = 0.01 + 0.99\min(1, t/T)` (:func:`~pyro_nfvi.objectives.linear_warmup` with
``start=0.01``; R&M's :math:`\min(1, 0.01 + t/T)` reaches 1 at :math:`0.99\,T` instead of :math:`T`).
R&M use :math:`T = 10^4` of their :math:`5\times10^5` updates; here :math:`T` is ``anneal * steps``
(half the run by default) so that short runs anneal too.

At :math:`\beta = 1`, :math:`-\mathcal F_1(q) = \mathbb E_q[-U(z) - \log q(z)] = \log Z -
\mathrm{KL}(q\,\|\,p)` is a lower bound on :math:`\log Z`.  :func:`estimate_bound` estimates it from
the guide's own posterior (``guide.get_posterior()``: samples :math:`z` and their :math:`\log q(z)`)
and the energy; :func:`fit_energy` reports it with the grid :math:`\log Z`
(:func:`~pyro_nfvi.targets.log_normalizer`) and their gap, an estimate of :math:`\mathrm{KL}(q\,\|\,p)`.
"""
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide.initialization import init_to_mean
from tqdm import tqdm

from ..guides import AutoFlowGuide, FastSVI
from ..objectives import AnnealedELBO, constant, linear_warmup
from ..transforms import FAMILIES
from ..validation import check_choice, check_int, check_positive
from .energies import BOX, WALL, energy_model, log_normalizer, target_energy

__all__ = ["EnergyFit", "EnergyFitDiverged", "REPORT_SAMPLES", "estimate_bound", "fit_energy"]

#: Samples of the bound estimate in each progress report (at most ``eval_samples``).
REPORT_SAMPLES = 2000


def _draw(guide, num_samples, seed, chunk=10000):
    """Yield ``(z, log q(z))`` chunks from ``guide.get_posterior()``, seeded, without touching the caller's RNG.

    The draws run under ``module_local_params=True``, so a guide never reads or writes Pyro's global
    param store here.
    """
    with torch.no_grad(), torch.random.fork_rng(), pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        posterior = guide.get_posterior()
        for start in range(0, num_samples, chunk):
            z = posterior.sample((min(chunk, num_samples - start),))
            yield z, posterior.log_prob(z)  # the transforms' caches give log q without inverting the flow


def estimate_bound(guide, energy, num_samples, seed=0):
    r"""Monte Carlo mean and standard error of the bound :math:`\mathbb E_q[-U(z) - \log q(z)]`.

    Draws :math:`z_s \sim q` and :math:`\log q(z_s)` from ``guide.get_posterior()`` (a
    ``TransformedDistribution``; the transforms' caches give :math:`\log q` at the drawn points
    without inverting the flow) and returns the mean of :math:`-U(z_s) - \log q(z_s)` and its
    standard error, in float64.  Since :math:`\mathbb E_q[-U - \log q] = \log Z - \mathrm{KL}(q\,\|\,p)`,
    the mean is below :math:`\log Z` up to Monte Carlo error.  Runs in ``torch.no_grad`` with its own
    RNG stream (``seed``), leaving the caller's RNG and Pyro's param store alone.

    Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, eq. 20.

    Args:
        guide (AutoFlowGuide): a set-up guide over the single latent site ``"z"`` of shape ``(2,)``
            (e.g. built with ``model_args=()`` on :func:`~pyro_nfvi.targets.energy_model`).
        energy (callable): ``z (n, 2) -> U(z) (n,)``, e.g. :func:`~pyro_nfvi.targets.target_energy`.
        num_samples (int): number of draws (>= 2).
        seed (int): seed of the draws.

    Returns:
        tuple: ``(mean, standard error)`` as floats.

    Example:
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> from pyro_nfvi.targets import energy_model, log_normalizer, target_energy
        >>> guide = AutoFlowGuide(energy_model("U1"), flow="planar", num_flows=2, model_args=())
        >>> bound, se = estimate_bound(guide, target_energy("U1"), 2000)
        >>> bound < log_normalizer("U1", grid=200) + 4 * se
        True
    """
    num_samples = check_int("num_samples", num_samples, minimum=2)
    values = torch.cat([(-energy(z) - log_q).double() for z, log_q in _draw(guide, num_samples, seed)])
    return values.mean().item(), values.std().item() / math.sqrt(len(values))


@dataclass
class EnergyFit:
    r"""Result of :func:`fit_energy`: bounds in nats, the fitted guide and its training record.

    Attributes:
        target, flow, num_flows, steps: the fit's configuration.
        initial_bound (float): the bound :math:`\mathbb E_q[-U - \log q]` at initialisation.
        bound, bound_se (float): the final bound and its Monte Carlo standard error.
        log_z (float): the grid :math:`\log Z`.
        seconds (float): wall time of the fit (bound estimates and training; not the grid).
        train_seconds (float): wall time of the optimisation steps taken by this call (after a
            resume: since the resume), with the progress reports' bound estimates and the
            checkpoints but without the initial and final estimates.
        train_steps (int): the optimisation steps taken by this call.
        train_cpu_seconds (float): process CPU time of the same steps (all threads; on a shared
            machine a steadier measure of cost than the wall time).
        guide (AutoFlowGuide): the fitted guide.
        objective (AnnealedELBO): the objective; ``objective.t`` steps taken, ``objective.beta``
            the inverse temperature of the next step.
        history (list): ``(step, beta, bound)`` per report (``beta`` of that step; ``bound`` from
            ``REPORT_SAMPLES`` draws).
        skipped (int): steps the non-finite guard skipped (a NaN/inf gradient; see
            :class:`~pyro_nfvi.guides.FastSVI`'s ``max_skips``).

    Example:
        >>> fit = fit_energy("U1", num_flows=1, steps=5, samples=8, eval_samples=100, grid=50)
        >>> fit.kl == fit.log_z - fit.bound, fit.sample(3).shape
        (True, torch.Size([3, 2]))
    """

    target: str
    flow: str
    num_flows: int
    steps: int
    initial_bound: float
    bound: float
    bound_se: float
    log_z: float
    seconds: float
    guide: AutoFlowGuide = field(repr=False)
    objective: AnnealedELBO = field(repr=False)
    history: list = field(default_factory=list, repr=False)
    skipped: int = 0
    train_seconds: float = 0.0
    train_steps: int = 0
    train_cpu_seconds: float = 0.0

    @property
    def ms_per_step(self):
        """Milliseconds per optimisation step (``train_seconds / train_steps``; NaN if none was taken)."""
        return 1000.0 * self.train_seconds / self.train_steps if self.train_steps else math.nan

    @property
    def kl(self):
        """The gap ``log Z - bound``: a Monte Carlo estimate of ``KL(q || p)``."""
        return self.log_z - self.bound

    def sample(self, num_samples, seed=0):
        """Draw ``num_samples`` points of shape ``(num_samples, 2)`` from the fitted ``q`` (no gradients).

        The draws use their own RNG stream (``seed``) and leave the caller's RNG alone.
        """
        num_samples = check_int("num_samples", num_samples)
        return torch.cat([z for z, _ in _draw(self.guide, num_samples, seed)])


class EnergyFitDiverged(FloatingPointError):
    """:func:`fit_energy` diverged: the message says where and what to do; the record up to then is kept.

    Attributes:
        step (int): the step at which the fit stopped (``steps`` if only the final bound was not finite).
        history (list): ``(step, beta, bound)`` per report up to then, as in :attr:`EnergyFit.history`.

    Example:
        >>> err = EnergyFitDiverged("the fit diverged at step 7/10", step=7, history=[(5, 0.5, -1.0)])
        >>> isinstance(err, FloatingPointError), err.step, err.history
        (True, 7, [(5, 0.5, -1.0)])
    """

    def __init__(self, message, step, history):
        super().__init__(message)
        self.step = step
        self.history = list(history)


def _diverged(lr, step, steps, what):
    return (
        f"the fit diverged at step {step}/{steps} ({what}) with learning rate lr={lr:g}; "
        f"use a smaller learning rate (e.g. lr={lr / 10:g})"
    )


def _resume(svi, lr_decay, path, config):
    """Restore a checkpoint of :func:`fit_energy` into ``svi``; return ``(step, history, running)``."""
    svi.make_optimizer()  # creates the learning-rate schedule too
    caller_rng = random.getstate(), np.random.get_state()
    saved = svi.load(path)  # the torch RNG (forked by fit_energy) continues; the caller's others stay
    random.setstate(caller_rng[0])
    np.random.set_state(caller_rng[1])
    extra = saved["extra"] or {}
    if extra.get("config") != config:
        old = extra.get("config") or {}
        diff = ", ".join(f"{k}: saved {old.get(k)!r}, now {v!r}" for k, v in config.items() if old.get(k) != v)
        raise ValueError(
            f"checkpoint {path} was written by a fit with other settings ({diff}); rerun with the saved "
            "settings to resume, or delete the checkpoint to start afresh"
        )
    lr_decay[0].load_state_dict(extra["lr_decay"])
    return saved["step"], [tuple(h) for h in extra["history"]], list(extra["running"])


def fit_energy(
    target="U1",
    flow="planar",
    num_flows=8,
    steps=3000,
    samples=128,
    lr=1e-2,
    final_lr=0.05,
    anneal=0.5,
    seed=0,
    eval_samples=20000,
    grid=1000,
    box=BOX,
    wall=WALL,
    log_every=500,
    progress=False,
    verbose=False,
    flow_opts=None,
    checkpoint=None,
    checkpoint_every=500,
    resume=False,
):
    r"""Fit an :class:`~pyro_nfvi.guides.AutoFlowGuide` to :math:`p(z) \propto e^{-U(z)}` by annealed VI.

    The guide is ``AutoFlowGuide(energy_model(target, box, wall), flow, num_flows, precondition=False, model_args=())``
    started at :math:`\mu = 0`, :math:`\sigma = 1` (``init_to_mean``, ``init_scale=1``).  Each of the
    ``steps`` :class:`~pyro_nfvi.guides.FastSVI` steps draws ``samples`` vectorized particles and
    takes one Adam step on the free energy :math:`\frac1S\sum_s [\log q(z_s) + \beta_t U(z_s)]`
    (:class:`~pyro_nfvi.objectives.AnnealedELBO`, ``mode="free_energy"``), with
    :math:`\beta_t = 0.01 + 0.99\min(1, t/T)`, :math:`T` = ``round(anneal * steps)``
    (:func:`~pyro_nfvi.objectives.linear_warmup`; :math:`\beta = 1` throughout if :math:`T = 0`).
    The learning rate decays from ``lr`` to ``lr * final_lr`` by a cosine schedule (``final_lr=1``:
    constant).  The progress bar shows the mean batch free energy (``loss``) since the last update
    and :math:`\beta`.  The bound
    :math:`\mathbb E_q[-U - \log q]` is then estimated by :func:`estimate_bound` from
    ``eval_samples`` draws.  The global torch RNG is forked, so the call is reproducible from
    ``seed`` and leaves the caller's RNG alone; Pyro's global param store is not used
    (``module_local_params``).

    Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Sec. 6.1.

    Args:
        target (str): ``"U1"`` ... ``"U4"`` (boxed by ``box``/``wall``, see
            :func:`~pyro_nfvi.targets.target_energy`).
        flow (str): flow family (see :func:`pyro_nfvi.transforms.flow`), or ``"none"``.
        num_flows (int): number of layers ``K``.
        steps (int): optimisation steps.
        samples (int): Monte Carlo samples (vectorized particles) per step.
        lr (float): initial Adam learning rate; it decays to ``lr * final_lr`` by a cosine schedule.
        final_lr (float): final learning rate as a fraction of ``lr``, in ``(0, 1]``.
        anneal (float): fraction of ``steps`` over which :math:`\beta` rises from 0.01 to 1 (0: none).
        seed (int): random seed (flow initialisation, training draws and bound estimates).
        eval_samples (int): samples for the initial and final bound estimates.
        grid (int): grid cells per axis for :math:`\log Z`.
        box (float or None): half-width of the target's box wall; ``wall`` its length scale.
        log_every (int): report ``beta``, the mean batch free energy and a bound estimate every
            this many steps (0: never).
        progress (bool): show a tqdm progress bar (on stderr).
        verbose (bool): print the reports (through ``tqdm.write`` on stdout).
        flow_opts (dict): extra options for :func:`pyro_nfvi.transforms.flow`.
        checkpoint (str or None): write a checkpoint (:meth:`~pyro_nfvi.guides.FastSVI.save`, atomic)
            to this path every ``checkpoint_every`` steps and after the last step.
        checkpoint_every (int): steps between checkpoints.
        resume (bool): continue from ``checkpoint`` if the file exists (it must come from a fit with
            the same arguments); the result is identical to an uninterrupted fit.

    Returns:
        EnergyFit: ``initial_bound`` (at initialisation), ``bound`` +- ``bound_se`` (final),
        ``log_z``, ``kl`` (= ``log_z - bound``), ``seconds``, the fitted ``guide``, the
        ``objective`` and ``history`` (``(step, beta, bound)`` per report).

    Raises:
        EnergyFitDiverged: (a ``FloatingPointError``) if the fit diverges (a non-finite loss,
            parameter, run of gradients or final bound); the message names the learning rate and
            suggests a smaller one, and the exception keeps the ``history`` up to the failure.

    Example:
        >>> fit = fit_energy("U1", num_flows=2, steps=20, samples=16, eval_samples=500, grid=100)
        >>> fit.bound <= fit.log_z + 0.5, len(fit.guide.flow_stack), fit.objective.t
        (True, 2, 20)
    """
    steps = check_int("steps", steps, minimum=0)
    samples = check_int("samples", samples, minimum=2)
    eval_samples = check_int("eval_samples", eval_samples, minimum=2)
    log_every = check_int("log_every", log_every, minimum=0)
    num_flows = check_int("num_flows", num_flows, minimum=0)
    lr = check_positive("lr", lr)
    if not (check_positive("final_lr", final_lr) <= 1.0):
        raise ValueError(f"final_lr must be in (0, 1], got {final_lr!r}")
    if isinstance(anneal, bool) or not isinstance(anneal, (int, float)) or not 0.0 <= anneal <= 1.0:
        raise ValueError(f"anneal must be a number in [0, 1], got {anneal!r}")
    flow = check_choice("flow", flow, sorted(FAMILIES) + ["none"])
    checkpoint_every = check_int("checkpoint_every", checkpoint_every)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path> (the checkpoint to continue from)")
    # what a resumed fit must share with the one that wrote the checkpoint
    config = {"target": target, "flow": flow, "num_flows": num_flows, "steps": steps, "samples": samples,
              "lr": lr, "final_lr": final_lr, "anneal": anneal, "seed": seed, "box": box, "wall": wall,
              "flow_opts": repr(sorted((flow_opts or {}).items()))}
    energy = target_energy(target, box, wall)
    log_z = log_normalizer(target, grid=grid, box=box, wall=wall)
    anneal_steps = int(round(anneal * steps))
    schedule = linear_warmup(anneal_steps, start=0.01) if anneal_steps > 0 else constant(1.0)
    report_samples = min(eval_samples, REPORT_SAMPLES)

    def report(message):
        if verbose:
            tqdm.write(message, file=sys.stdout)

    start = time.perf_counter()
    with torch.random.fork_rng(), pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        model = energy_model(target, box, wall)
        # no preconditioner: the annealed run never sets it (it is Laplace whitening for fit's warm start)
        guide = AutoFlowGuide(model, flow=flow, num_flows=num_flows, init_loc_fn=init_to_mean,
                              init_scale=1.0, precondition=False, model_args=(), **(flow_opts or {}))
        initial_bound, _ = estimate_bound(guide, energy, eval_samples, seed)
        elbo = Trace_ELBO(num_particles=samples, vectorize_particles=True, max_plate_nesting=0)
        objective = AnnealedELBO(elbo, schedule=schedule, mode="free_energy")
        lr_decay = []

        def adam_with_cosine_decay(params):
            optimizer = torch.optim.Adam(params, lr=lr)
            lr_decay.append(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr * final_lr))
            return optimizer

        svi = FastSVI(model, guide, loss=objective, optimizer=adam_with_cosine_decay)
        history, running = [], []
        done = 0
        if resume and os.path.exists(checkpoint):
            done, history, running = _resume(svi, lr_decay, checkpoint, config)
            report(f"resumed from {checkpoint} at step {done}/{steps}")

        def save():
            extra = {"config": config, "lr_decay": lr_decay[0].state_dict(), "history": history,
                     "running": running}
            svi.save(checkpoint, extra=extra)

        report(f"{target}: {flow} x {num_flows}, initial bound {initial_bound:.4f}, log Z {log_z:.4f}")
        bar = tqdm(range(done + 1, steps + 1), desc=f"fit {target}", disable=not progress, file=sys.stderr,
                   leave=False)
        bar_losses = []
        train_start, train_cpu_start = time.perf_counter(), time.process_time()
        try:
            for step in bar:
                beta = objective.beta
                try:
                    loss = svi.step()
                except ValueError as err:  # e.g. a NaN draw rejected by distribution validation
                    if all(bool(torch.isfinite(p).all()) for p in guide.parameters()):
                        raise
                    raise EnergyFitDiverged(_diverged(lr, step, steps, "non-finite parameters"), step,
                                            history) from err
                except FloatingPointError as err:  # FastSVI's guard: too many non-finite gradients in a row
                    raise EnergyFitDiverged(str(err), step, history) from err
                if not math.isfinite(loss):
                    raise EnergyFitDiverged(_diverged(lr, step, steps, f"loss {loss}"), step, history)
                lr_decay[0].step()
                running.append(loss)
                if progress:
                    bar_losses.append(loss)
                    if len(bar_losses) == 100 or step == steps:
                        bar.set_postfix(loss=f"{sum(bar_losses) / len(bar_losses):.4g}", beta=f"{beta:.2f}",
                                        refresh=False)
                        bar_losses = []
                if log_every and (step % log_every == 0 or step == steps):
                    bound, _ = estimate_bound(guide, energy, report_samples, seed)
                    history.append((step, beta, bound))
                    report(f"step {step:>6d}/{steps}  beta {beta:.3f}  free energy (batch mean) "
                           f"{sum(running) / len(running):.4f}  bound {bound:.4f}")
                    running = []
                if checkpoint is not None and (step % checkpoint_every == 0 or step == steps):
                    save()
        finally:
            bar.close()
        train_seconds = time.perf_counter() - train_start
        train_cpu_seconds = time.process_time() - train_cpu_start
        bound, bound_se = estimate_bound(guide, energy, eval_samples, seed)
    if not math.isfinite(bound):
        raise EnergyFitDiverged(_diverged(lr, steps, steps, f"final bound {bound}"), steps, history)
    seconds = time.perf_counter() - start
    return EnergyFit(
        target=target,
        flow=flow,
        num_flows=num_flows,
        steps=steps,
        initial_bound=initial_bound,
        bound=bound,
        bound_se=bound_se,
        log_z=log_z,
        seconds=seconds,
        guide=guide,
        objective=objective,
        history=history,
        skipped=svi.guard.skipped if svi.guard is not None else 0,
        train_seconds=train_seconds,
        train_steps=steps - done,
        train_cpu_seconds=train_cpu_seconds,
    )
