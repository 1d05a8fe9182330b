r"""The eight schools part of ``nfvi demo``: ``AutoNormal`` or ``AutoFlowGuide``, fitted through SVI, against NUTS.

What a user of the package does with an existing Pyro model, on Rubin's eight schools in the
centered form (:func:`pyro_nfvi.targets.bayes.eight_schools`, ``theta ~ N(mu, tau)``: a funnel
in ``(log tau, theta)``, hard for every Gaussian guide):

1. :func:`fit_autonormal` -- Pyro's ``AutoNormal`` with plain ``SVI`` (``ClippedAdam``,
   ``Trace_ELBO``);
2. :func:`fit_flow` -- ``AutoFlowGuide(model)`` (its defaults: 4 IAF layers with scaled networks on a diagonal
   Gaussian, here with sinh-arcsinh marginals) with the recommended recipe :func:`pyro_nfvi.fit` (warm start,
   learning-rate probes, ``ClippedAdam`` with decay; the ELBO, since the guide decenters theta), also ``SVI``
   underneath;
3. :func:`evaluate` -- per guide, against the shipped NUTS draws
   (:func:`~pyro_nfvi.targets.reference.load_reference`): the moment errors of
   :func:`~pyro_nfvi.evaluation.posterior_error` (max over components of
   :math:`|\bar u^q - \bar u^{NUTS}| / s^{NUTS}` and :math:`|s^q / s^{NUTS} - 1|` on the
   unconstrained scale), the PSIS :math:`\hat k` of the importance weights (Yao et al. 2018), the
   ``arviz.InferenceData`` (:func:`~pyro_nfvi.diagnostics.to_inference_data`) and the
   importance-corrected PSIS-LOO (:func:`~pyro_nfvi.diagnostics.loo`);
4. :func:`compare` runs the three and the NUTS reference's own ``arviz.loo``, and
   :meth:`EightSchools.verdict` says which guide is closer to NUTS.
"""
import logging
import math
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from ..diagnostics import loo, reference_inference_data, to_inference_data
from ..evaluation import posterior_error
from ..guides import AutoFlowGuide
from ..recipe import fit
from ..targets.bayes import MODELS
from ..targets.reference import load_reference

__all__ = [
    "MODEL",
    "TARGET",
    "EightSchools",
    "GuideReport",
    "compare",
    "evaluate",
    "fit_autonormal",
    "fit_flow",
    "quiet_pyro",
]

#: The benchmark model of :data:`pyro_nfvi.targets.bayes.MODELS` the demo fits.
MODEL = "eight_schools_centered"

#: The package's accuracy target for both moment errors (``README``: mean error and sd error <= 0.1).
TARGET = 0.1


@dataclass
class GuideReport:
    """One guide's fit and how close it came to NUTS.

    Attributes:
        name (str): the guide, e.g. ``"AutoNormal"``.
        how (str): how it was fitted (optimiser, objective, learning rate).
        steps (int): SVI steps taken in all (the recipe's warm start and probes included).
        seconds (float): wall time of the fit.
        error (pyro_nfvi.evaluation.PosteriorError): moment errors against NUTS (unconstrained scale).
        khat (float): PSIS :math:`\\hat k` of the ``idata`` draws' importance weights.
        loo (arviz.ELPDData): the importance-corrected PSIS-LOO.
        idata (arviz.InferenceData): the guide's draws (:func:`~pyro_nfvi.diagnostics.to_inference_data`).
        guide: the fitted guide.
        corrected (pyro_nfvi.evaluation.PosteriorError): the same errors of the importance-corrected
            posterior (the draws weighted by their Pareto-smoothed importance weights).
    """

    name: str
    how: str
    steps: int
    seconds: float
    error: object
    khat: float
    loo: object
    idata: object = field(repr=False)
    guide: object = field(repr=False)
    corrected: object = None


@dataclass
class EightSchools:
    """The result of :func:`compare`: the NUTS reference (``nuts_idata``, ``nuts_loo``, ``nuts_info``), the guides."""

    nuts_idata: object = field(repr=False)
    nuts_loo: object
    nuts_info: dict
    guides: list

    def verdict(self):
        """Which guide is closer to NUTS in the means and the sds (or that they split); which meet :data:`TARGET`."""
        if len(self.guides) < 2:
            return ""
        by_mean = min(self.guides, key=lambda g: g.error.mean)
        by_sd = min(self.guides, key=lambda g: g.error.sd)
        errors = "; ".join(f"{g.name}: mean error {g.error.mean:.2f} sd, sd error {g.error.sd:.2f}"
                           for g in self.guides)
        if by_mean is by_sd:
            verdict = f"{by_mean.name} is closer to NUTS, in both the means and the sds ({errors})."
        else:
            verdict = (f"Neither guide is closer on both counts: {by_mean.name} has the closer means, {by_sd.name} "
                       f"the closer sds ({errors}).")
        met = [g.name for g in self.guides if g.error.mean <= TARGET and g.error.sd <= TARGET]
        if not met:
            return verdict + f" Neither is within {TARGET} NUTS sd in every mean and sd."
        return verdict + f" Within {TARGET} NUTS sd in every mean and sd: {', '.join(met)}."


@contextmanager
def quiet_pyro():
    """Silence Pyro's INFO messages (``Guessed max_plate_nesting = ...``) for the duration; then restore the level."""
    logger = logging.getLogger("pyro")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def fit_autonormal(model, *args, steps=1000, lr=0.01, num_particles=8, progress=True):
    """Fit Pyro's ``AutoNormal`` with plain ``SVI``: ``ClippedAdam(lr, clip_norm=10)``, vectorized ``Trace_ELBO``.

    Returns:
        tuple: ``(guide, losses, seconds)``.

    Raises:
        FloatingPointError: if a loss is not finite (naming the step and the learning rate).

    Example:
        >>> import pyro.distributions as dist, torch
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide, losses, _ = fit_autonormal(model, torch.tensor([4.8, 5.3]), steps=100, lr=0.1, progress=False)
        >>> len(losses), bool(abs(guide.median(torch.tensor([4.8, 5.3]))["mu"] - 5.0) < 0.5)
        (100, True)
    """
    start = time.perf_counter()
    guide = AutoNormal(model)
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True)
    svi = SVI(model, guide, ClippedAdam({"lr": lr, "clip_norm": 10.0}), elbo)
    losses = []
    with tqdm(range(1, steps + 1), desc="AutoNormal", disable=not progress, leave=False) as bar:
        for step in bar:
            loss = svi.step(*args)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"AutoNormal: the loss was {loss} at step {step}/{steps} with lr={lr:g}; "
                    "use a smaller learning rate"
                )
            losses.append(loss)
            if step % 50 == 0 or step == steps:
                window = losses[-50:]
                bar.set_postfix(loss=f"{sum(window) / len(window):.4g}")
    return guide, losses, time.perf_counter() - start


def fit_flow(model, *args, flow="iaf", num_flows=4, marginals="sinh_arcsinh", steps=1000, progress=True):
    """Fit ``AutoFlowGuide(model, flow, num_flows, marginals=marginals)`` with the recommended recipe :func:`pyro_nfvi.fit`.

    ``marginals="sinh_arcsinh"``: the base's marginals get a learned skew and tail weight, which
    is what gives log tau its long left tail on eight schools (sd error 0.35 -> 0.11 at 1000 steps,
    ``benchmarks/results/bayes_sas_1000.md``).

    The recipe's warm start takes ``steps // 2`` steps and each of its three learning-rate probes
    ``max(10, steps // 20)``: its defaults for 1000 to 2000 steps, scaled down for the tiny budgets of
    a smoke test.  The defaults ``flow="iaf", num_flows=4`` are :class:`~pyro_nfvi.AutoFlowGuide`'s.

    Returns:
        tuple: ``(guide, FitResult, phases)``, with ``phases`` the SVI steps of each phase
        (``{"warm start": n, "probes": n, "main run": n}``); ``FitResult.seconds`` is the wall time.
    """
    guide = AutoFlowGuide(model, flow=flow, num_flows=num_flows, marginals=marginals)
    warm_start_steps, probe_steps = steps // 2, max(10, steps // 20)
    if progress:  # the warm start has no bar of its own: say what the pause is
        tqdm.write(f"AutoFlowGuide: warm start of the Gaussian base ({warm_start_steps} steps), then the recipe's "
                   "probes and main run", file=sys.stderr)
    result = fit(model, guide, *args, num_steps=steps, warm_start_steps=warm_start_steps,
                 probe_steps=probe_steps, progress=progress)
    phases = {"warm start": len(result.warm_start_losses), "probes": probe_steps * len(result.probe_scores),
              "main run": len(result.losses)}
    return guide, result, phases


def evaluate(name, how, steps, seconds, model, guide, *args, reference, num_samples=4000):
    """A :class:`GuideReport` of a fitted ``guide``: ``num_samples`` draws against the ``reference`` draws."""
    idata = to_inference_data(model, guide, *args, num_samples=num_samples)
    error = posterior_error(model, guide, *args, reference=reference, num_samples=num_samples)
    corrected_error = posterior_error(model, guide, *args, reference=reference, num_samples=num_samples, importance=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz's high-k warning: the k-hats are in the report
        corrected = loo(idata)
    return GuideReport(name=name, how=how, steps=steps, seconds=seconds, error=error,
                       khat=float(idata.sample_stats.attrs["khat"]), loo=corrected, idata=idata, guide=guide,
                       corrected=corrected_error)


def compare(steps=1000, lr=0.01, flow="iaf", num_flows=4, num_samples=4000, seed=0, device="cpu", progress=True):
    """Fit ``AutoNormal`` and ``AutoFlowGuide`` to the centered eight schools and compare each with NUTS.

    Both fits start from ``pyro.set_rng_seed(seed)`` and an empty param store; ``AutoNormal`` takes
    ``steps`` steps at ``lr``, the recipe ``steps`` main-run steps (after its warm start and probes).

    Args:
        steps (int): SVI steps of AutoNormal, and of the recipe's main run.
        lr (float): AutoNormal's learning rate (the recipe picks its own).
        flow, num_flows: the flow guide's family and number of layers (:func:`fit_flow`).
        num_samples (int): draws per guide for the errors, k-hat, InferenceData and LOO.
        seed (int): the random seed of each fit.
        device (str): the torch device of the data and the guides' parameters.
        progress (bool): tqdm progress bars while fitting.

    Returns:
        EightSchools
    """
    import arviz as az

    model, args = MODELS[MODEL]()
    args = tuple(a.to(device) for a in args)
    ref = load_reference(MODEL)
    draws = {site: value.to(device) for site, value in ref.draws.items()}
    nuts_idata = reference_inference_data(model, draws, *args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts_loo = az.loo(nuts_idata)
    guides = []
    with quiet_pyro():
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide, losses, seconds = fit_autonormal(model, *args, steps=steps, lr=lr, progress=progress)
        how = f"SVI, ClippedAdam(lr={lr:g}, clip_norm=10), Trace_ELBO(8 particles)"
        guides.append(evaluate("AutoNormal", how, len(losses), seconds, model, guide, *args, reference=draws,
                               num_samples=num_samples))
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide, result, phases = fit_flow(model, *args, flow=flow, num_flows=num_flows, steps=steps,
                                         progress=progress)
        objective = {"dreg": "IW-ELBO with DReG gradients", "stl": "ELBO with STL gradients"}.get(result.estimator, "ELBO")
        how = (f"pyro_nfvi.fit (SVI): {guide.marginals} base marginals; warm start of the base ({phases['warm start']} steps), "
               f"{len(result.probe_scores)} learning-rate probes ({phases['probes']} steps) -> lr={result.lr:g}, "
               f"main run ({phases['main run']} steps): ClippedAdam decaying to a tenth, {objective} (8 particles)")
        name = f"AutoFlowGuide({flow}, K={num_flows})"
        guides.append(evaluate(name, how, sum(phases.values()), result.seconds, model, guide, *args, reference=draws,
                               num_samples=num_samples))
    return EightSchools(nuts_idata=nuts_idata, nuts_loo=nuts_loo, nuts_info=ref.info, guides=guides)

