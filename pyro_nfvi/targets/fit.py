r"""Fit a flow-transformed Gaussian to a 2-D energy with plain torch (no Pyro guide).

This is the experiment of Rezende & Mohamed (2015, Section 6.1, Figure 3): the approximation is
:math:`q = (f_K \circ \dots \circ f_1)_\# \mathcal N(\mu, \mathrm{diag}\,\sigma^2)` and the free energy

.. math:: \mathcal F_\beta(q) = \mathbb E_q[\log q(z) + \beta\, U(z)]

is minimised over :math:`\mu, \sigma` and the flow parameters with Adam (one optimiser, cosine
learning-rate decay), where the inverse temperature
follows R&M's annealing :math:`\beta_t = \min(1, 0.01 + t/T)`.  R&M use :math:`T = 10^4` of their
:math:`5\times10^5` updates; here :math:`T` is ``anneal * steps`` (half the run by default) so that
short runs anneal too.  At :math:`\beta = 1`, :math:`-\mathcal F_1(q) = \mathbb E_q[-U(z) - \log q(z)]
= \log Z - \mathrm{KL}(q\,\|\,p)` is a lower bound on :math:`\log Z`; :func:`fit_energy` reports its
Monte Carlo estimate, the grid :math:`\log Z` (:func:`~pyro_nfvi.targets.log_normalizer`) and their
gap, an estimate of :math:`\mathrm{KL}(q\,\|\,p)`.
"""
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from ..transforms import flow as make_flow
from .energies import BOX, WALL, log_normalizer, target_energy

__all__ = ["FlowApproximation", "EnergyFit", "fit_energy", "anneal_beta"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class FlowApproximation(nn.Module):
    r"""A diagonal Gaussian pushed through a flow stack: :math:`z = f(\mu + \sigma \odot \epsilon)`,
    :math:`\log q(z) = \log \mathcal N(\epsilon; 0, I) - \sum_i \log\sigma_i - \log|\det J_f|`.

    Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015.

    Args:
        dim (int): event size.
        flow (str): a family name accepted by :func:`pyro_nfvi.transforms.flow` (or ``"none"``).
        num_flows (int): number of flow layers ``K``.
        **flow_opts: passed to :func:`pyro_nfvi.transforms.flow`.

    Example:
        >>> q = FlowApproximation(2, "planar", num_flows=3)
        >>> z, log_q = q.rsample_and_log_prob(5)
        >>> z.shape, log_q.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(self, dim, flow="planar", num_flows=8, **flow_opts):
        super().__init__()
        self.stack = make_flow(flow, dim, num_flows, **flow_opts)
        self.dim = self.stack.dim
        self.loc = nn.Parameter(torch.zeros(self.dim))
        self.log_scale = nn.Parameter(torch.zeros(self.dim))

    def rsample_and_log_prob(self, num_samples, generator=None):
        """Draw ``num_samples`` reparameterised samples ``(n, dim)`` and their ``log q`` ``(n,)``."""
        eps = torch.randn(
            num_samples, self.dim, dtype=self.loc.dtype, device=self.loc.device, generator=generator
        )
        z0 = self.loc + self.log_scale.exp() * eps
        log_q0 = -0.5 * (eps * eps).sum(-1) - self.dim * _HALF_LOG_2PI - self.log_scale.sum()
        z, ladj = self.stack.forward_and_log_det(z0)
        return z, log_q0 - ladj

    @torch.no_grad()
    def sample(self, num_samples, generator=None):
        """Draw ``num_samples`` samples of shape ``(n, dim)`` without gradients."""
        return self.rsample_and_log_prob(num_samples, generator)[0]


def anneal_beta(step, anneal_steps):
    r"""R&M's inverse temperature :math:`\beta_t = \min(1, 0.01 + t/T)` (``T = anneal_steps``; ``T = 0``: 1).

    Example:
        >>> anneal_beta(0, 100), anneal_beta(49, 100), anneal_beta(500, 100), anneal_beta(0, 0)
        (0.01, 0.5, 1.0, 1.0)
    """
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, 0.01 + step / anneal_steps)


@dataclass
class EnergyFit:
    """Result of :func:`fit_energy`: bounds in nats; ``kl = log_z - bound``."""

    target: str
    flow: str
    num_flows: int
    steps: int
    initial_bound: float
    bound: float
    bound_se: float
    log_z: float
    seconds: float
    approx: FlowApproximation = field(repr=False)
    history: list = field(default_factory=list, repr=False)

    @property
    def kl(self):
        """The gap ``log Z - bound``: a Monte Carlo estimate of ``KL(q || p)``."""
        return self.log_z - self.bound


@torch.no_grad()
def _estimate_bound(approx, energy, num_samples, generator, chunk=10000):
    """Monte Carlo mean and standard error of ``E_q[-U(z) - log q(z)]``."""
    values = []
    for start in range(0, num_samples, chunk):
        z, log_q = approx.rsample_and_log_prob(min(chunk, num_samples - start), generator)
        values.append(-energy(z) - log_q)
    values = torch.cat(values).double()
    se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean().item(), se


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
):
    r"""Fit :class:`FlowApproximation` to :math:`p(z) \propto e^{-U(z)}` by annealed reparameterised VI.

    Each step draws ``samples`` points, takes one Adam step on
    :math:`\frac1S\sum_s [\log q(z_s) + \beta_t U(z_s)]` with :math:`\beta_t` = :func:`anneal_beta`
    ``(t, anneal * steps)``, and records the batch estimate of the :math:`\beta = 1` bound.  The global
    torch RNG is forked, so the call is reproducible from ``seed`` and leaves the caller's RNG alone.

    Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, Sec. 6.1.

    Args:
        target (str): ``"U1"`` ... ``"U4"`` (boxed by ``box``/``wall``, see
            :func:`~pyro_nfvi.targets.target_energy`).
        flow (str): flow family (see :func:`pyro_nfvi.transforms.flow`), or ``"none"``.
        num_flows (int): number of layers ``K``.
        steps (int): optimisation steps.
        samples (int): Monte Carlo samples per step.
        lr (float): initial Adam learning rate; it decays to ``lr * final_lr`` by a cosine schedule.
        final_lr (float): final learning rate as a fraction of ``lr``.
        anneal (float): fraction of ``steps`` over which :math:`\beta` rises from 0.01 to 1 (0: none).
        seed (int): random seed (flow initialisation and sampling).
        eval_samples (int): samples for the initial and final bound estimates.
        grid (int): grid cells per axis for :math:`\log Z`.
        box (float or None): half-width of the target's box wall; ``wall`` its length scale.
        log_every (int): report the mean batch bound every this many steps (0: never).
        progress (bool): show a tqdm progress bar (on stderr).
        verbose (bool): print the reports (through ``tqdm.write`` on stdout).
        flow_opts (dict): extra options for :func:`pyro_nfvi.transforms.flow`.

    Returns:
        EnergyFit: ``initial_bound`` (at initialisation), ``bound`` +- ``bound_se`` (final),
        ``log_z``, ``kl`` (= ``log_z - bound``), ``seconds``, the fitted ``approx`` and ``history``
        (``(step, beta, mean batch bound)`` per report).

    Example:
        >>> fit = fit_energy("U1", num_flows=2, steps=20, samples=16, eval_samples=500, grid=100)
        >>> fit.bound <= fit.log_z + 0.5, len(fit.approx.stack)
        (True, 2)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    for name, value in (("samples", samples), ("eval_samples", eval_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    if not 0.0 < final_lr <= 1.0:
        raise ValueError(f"final_lr must be in (0, 1], got {final_lr!r}")
    if not 0.0 <= anneal <= 1.0:
        raise ValueError(f"anneal must be in [0, 1], got {anneal!r}")
    energy = target_energy(target, box, wall)
    log_z = log_normalizer(target, grid=grid, box=box, wall=wall)
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        approx = FlowApproximation(2, flow, num_flows, **(flow_opts or {}))
        initial_bound, _ = _estimate_bound(approx, energy, eval_samples, generator)
        optimizer = torch.optim.Adam(approx.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1), eta_min=lr * final_lr)
        anneal_steps = int(round(anneal * steps))
        history, running = [], []

        def report(message):
            if verbose:
                tqdm.write(message, file=sys.stdout)

        report(f"{target}: {flow} x {num_flows}, initial bound {initial_bound:.4f}, log Z {log_z:.4f}")
        bar = tqdm(range(1, steps + 1), desc=f"fit {target}", disable=not progress, file=sys.stderr,
                   leave=False)
        for step in bar:
            beta = anneal_beta(step - 1, anneal_steps)
            z, log_q = approx.rsample_and_log_prob(samples, generator)
            u = energy(z)
            loss = (log_q + beta * u).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            running.append(-(u + log_q).mean().item())
            if log_every and (step % log_every == 0 or step == steps):
                mean = sum(running) / len(running)
                history.append((step, beta, mean))
                bar.set_postfix(beta=f"{beta:.2f}", bound=f"{mean:.3f}")
                report(f"step {step:>6d}/{steps}  beta {beta:.3f}  bound (batch mean) {mean:.4f}")
                running = []
        bar.close()
        bound, bound_se = _estimate_bound(approx, energy, eval_samples, generator)
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
        approx=approx,
        history=history,
    )
