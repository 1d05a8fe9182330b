"""Posterior accuracy of every guide on classic Bayesian models, against NUTS reference draws.

For each model of :data:`pyro_nfvi.targets.bayes.MODELS` (reference draws shipped in
``pyro_nfvi/targets/reference``, made by ``benchmarks/nuts_reference.py``) and each guide:

* Pyro's ``AutoNormal``, ``AutoMultivariateNormal``, ``AutoLowRankMultivariateNormal``,
  ``AutoIAFNormal`` (2 transforms) and ``AutoNormalizingFlow`` (8 planar layers), and
  :class:`~pyro_nfvi.AutoFlowGuide` for each family with 8 layers and its other defaults: plain ``SVI`` with
  ``ClippedAdam({"lr": lr, "clip_norm": 10})`` and ``Trace_ELBO(num_particles, vectorized)`` for
  ``--steps`` steps, at every learning rate of ``--lrs``;
* ``recipe``: the recommended guide (``--recipe-flow``, ``--recipe-num-flows``, ``--recipe-base``, ``--recipe-marginals``) fitted by :func:`pyro_nfvi.fit` with the
  same step budget and the same learning-rate grid (it probes the grid and keeps the best);
  ``recipe`` builds it with ``precondition=False``;
* ``recipe (precondition)``: the same guide built with ``precondition=True``, whose warm start also
  tries the Laplace whitening and keeps the Gaussian with the higher ELBO (``--guides 'recipe (precondition)'``).
  This is ``AutoFlowGuide``'s default on every model here (``precondition="auto"``: at most 200
  latent dimensions).

Measured per run (guide draws against the reference, every scalar component of every site, on the
unconstrained scale ``biject_to(support).inv``: log tau, not tau): max |mean error| / reference sd,
max |sd ratio - 1|, PSIS k-hat and the ELBO from 4000
importance weights, and the wall time.  A run *diverges* when a loss is not finite, or the
second half of its losses spikes more than 1000 nats above its median.  The table shows, per
model and guide, the divergences over all runs, and the worst accuracy over the seeds at the
guide's best learning rate (lowest median final ELBO); NUTS's own wall time is the reference's.
Results go to ``benchmarks/results/bayes.{json,md}``.

Usage::

    python benchmarks/bayes.py                                   # the full benchmark (hours)
    python benchmarks/bayes.py --models eight_schools_noncentered --guides AutoNormal recipe --seeds 1 --steps 200
    python benchmarks/bayes.py --merge a/bayes.json b/bayes.json --seeds 1   # one table from split runs
"""
import argparse
import inspect
import json
import math
import statistics
import time
from functools import partial
from pathlib import Path

import pyro
import pyro.distributions.transforms as T
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)

from pyro_nfvi import AutoFlowGuide, fit
from pyro_nfvi.guides.auto import MARGINALS
from pyro_nfvi.evaluation import log_importance_weights, pareto_khat, posterior_error
from pyro_nfvi.targets.bayes import MODELS
from pyro_nfvi.targets.reference import load_reference
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["planar", "radial", "householder", "iaf", "sylvester", "coupling", "none"]
PYRO_GUIDES = {
    "AutoNormal": AutoNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoLowRankMultivariateNormal": AutoLowRankMultivariateNormal,
    "AutoIAFNormal": partial(AutoIAFNormal, num_transforms=2),
    "AutoNormalizingFlow (planar)": lambda model: AutoNormalizingFlow(model, partial(T.iterated, 8, T.planar)),
}


#: The recipe on ``AutoFlowGuide(..., precondition=True)``: its warm start also tries the Laplace whitening.
RECIPE_PRECONDITIONED = "recipe (precondition)"


def make_guide(name, model, args):
    if name in PYRO_GUIDES:
        return PYRO_GUIDES[name](model)
    if name.startswith("recipe"):
        return AutoFlowGuide(model, flow=args.recipe_flow, num_flows=args.recipe_num_flows, base=args.recipe_base,
                             marginals=args.recipe_marginals, precondition=name == RECIPE_PRECONDITIONED)
    return AutoFlowGuide(model, flow=name, num_flows=8)


def diverged(losses):
    if not losses or not all(math.isfinite(v) for v in losses):
        return True
    late = losses[len(losses) // 2 :]
    return max(late) > statistics.median(late) + 1000.0


def run(model_name, guide_name, lr, seed, args):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model, model_args = MODELS[model_name]()
    guide = make_guide(guide_name, model, args)
    row = {"model": model_name, "guide": guide_name, "lr": lr, "seed": seed}
    start, cpu_start = time.perf_counter(), time.process_time()
    if guide_name.startswith("recipe"):
        result = fit(model, guide, *model_args, num_steps=args.steps, lrs=tuple(args.lrs), num_particles=args.particles,
                     estimator=args.estimator, final_lr_fraction=args.final_lr_fraction, progress=False,
                     warm_start_steps=args.warm_start_steps, probe_steps=args.probe_steps, jit=args.jit)
        losses = result.losses
        row.update(lr=result.lr, probe_scores={str(k): v for k, v in result.probe_scores.items()},
                   rollbacks=result.rollbacks, warm_start_steps=len(result.warm_start_losses),
                   warm_start=result.warm_start, warm_start_bounds=result.warm_start_bounds)
    else:
        svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0}),
                  Trace_ELBO(num_particles=args.particles, vectorize_particles=True))
        losses = []
        for _ in range(args.steps):
            losses.append(svi.step(*model_args))
            if not math.isfinite(losses[-1]):
                break
    row["seconds"] = time.perf_counter() - start
    row["cpu_seconds"] = time.process_time() - cpu_start
    row["diverged"] = diverged(losses)
    tail = losses[-min(200, len(losses)):]
    row["final_loss"] = sum(tail) / len(tail)
    row.update(mean_err=math.inf, sd_err=math.inf, khat=math.inf, elbo=-math.inf, mean_err_psis=math.inf, sd_err_psis=math.inf)
    if not row["diverged"]:
        try:
            reference = load_reference(model_name).draws
            err = posterior_error(model, guide, *model_args, reference=reference, num_samples=args.draws)
            row["mean_err"], row["sd_err"], row["sites"] = err.mean, err.sd, {k: list(v) for k, v in err.sites.items()}
            corrected = posterior_error(model, guide, *model_args, reference=reference, num_samples=args.draws,
                                        importance=True)
            row["mean_err_psis"], row["sd_err_psis"] = corrected.mean, corrected.sd
            row["sites_psis"] = {k: list(v) for k, v in corrected.sites.items()}
            with torch.no_grad():
                lw = log_importance_weights(model, guide, *model_args, num_samples=args.draws, plate=False)
            row["khat"] = float(pareto_khat(lw.double()))
            row["elbo"] = float(lw.mean())
        except (ValueError, RuntimeError) as error:  # a guide that fails to evaluate counts as diverged
            row["diverged"], row["error"] = True, str(error).splitlines()[0]
    return row


def noise_floor(model_name, num_samples, seeds, reps=4000):
    """The table's accuracy measures for a guide that *is* the posterior: pure Monte Carlo error.

    Per scalar unconstrained component, the error of the mean is about ``|N(0, 1/n + 1/ESS)|`` reference
    sds and that of the sd ratio about ``|N(0, (kurt - 1) (1/(4n) + 1/(4 ESS)))|``, with ``n`` guide
    draws, ``kurt`` the component's kurtosis in the reference draws (3 for a Gaussian: then the
    variance is ``1/(2n) + 1/(2 ESS)``; heavy tails, as a funnel's, make the sample sd noisy) and every
    component given the reference's smallest bulk ESS (at most its number of stored draws); the
    measures take the max over components.  Returns the median over ``reps`` simulations of the
    worst over ``seeds`` fits and the median of one fit, for the mean and the sd error, and the
    largest kurtosis.
    """
    model, model_args = MODELS[model_name]()
    reference = load_reference(model_name)
    trace = pyro.poutine.trace(model).get_trace(*model_args)
    columns = []
    for site, draws in reference.draws.items():
        draws = torch.as_tensor(draws).double()
        u = torch.distributions.biject_to(trace.nodes[site]["fn"].support).inv(draws)
        columns.append(u.reshape(u.shape[0], -1))
    u = torch.cat(columns, dim=-1)
    kurt = (((u - u.mean(0)) / u.std(0)) ** 4).mean(0)
    dim = u.shape[-1]
    ess = min(reference.info["ess_bulk_min"], u.shape[0])  # the stored draws are thinned
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, reps, seeds, dim, generator=gen, dtype=torch.float64).abs()
    mean = z[0].amax(-1) * math.sqrt(1 / num_samples + 1 / ess)
    sd = (z[1] * ((kurt - 1) * (1 / (4 * num_samples) + 1 / (4 * ess))).sqrt()).amax(-1)
    return {"dim": dim, "ess": ess, "kurtosis": kurt.max().item(),
            "mean": (mean.amax(-1).median().item(), mean[:, 0].median().item()),
            "sd": (sd.amax(-1).median().item(), sd[:, 0].median().item())}


def summarize(rows, model_name, guide_name):
    sel = [r for r in rows if r["model"] == model_name and r["guide"] == guide_name]
    by_lr = {}
    for r in sel:  # the recipe picks its own learning rate: all its runs form one group
        by_lr.setdefault("auto" if guide_name.startswith("recipe") else r["lr"], []).append(r)
    ok = {lr: rs for lr, rs in by_lr.items() if not any(r["diverged"] for r in rs)}
    pool = ok or by_lr
    best_lr = min(pool, key=lambda lr: statistics.median(final_loss(r) for r in pool[lr]))
    best = pool[best_lr]
    return {
        "divergences": f"{sum(r['diverged'] for r in sel)}/{len(sel)}",
        "lr": best_lr,
        "mean_err": spread([r["mean_err"] for r in best]),
        "sd_err": spread([r["sd_err"] for r in best]),
        "khat": spread([r["khat"] for r in best]),
        "mean_err_psis": spread([r["mean_err_psis"] for r in best]) if all("mean_err_psis" in r for r in best) else "-",
        "sd_err_psis": spread([r["sd_err_psis"] for r in best]) if all("sd_err_psis" in r for r in best) else "-",
        "elbo": statistics.median(r["elbo"] for r in best),
        "seconds": statistics.median(r["seconds"] for r in best),
        "cpu_seconds": statistics.median(r.get("cpu_seconds") or math.nan for r in best),
    }


def spread(values):
    """``"worst (median)"`` over seeds, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{max(values):.2f} ({statistics.median(values):.2f})"


def final_loss(row):
    """The run's mean loss over its last 200 steps (rows rebuilt from a log carry -ELBO instead)."""
    return row["final_loss"] if row.get("final_loss") is not None else -row["elbo"]


def main(args):
    models = args.models or list(MODELS)
    guides = args.guides or (list(PYRO_GUIDES) + FAMILIES + ["recipe"])
    rows, to_run = [], models
    if args.merge:  # the rows of earlier runs (e.g. models split over processes): report only
        reports = [json.loads(Path(f).read_text()) for f in args.merge]
        for rep in reports:  # a later report replaces the earlier rows of the (model, guide) pairs it holds
            again = {(r["model"], r["guide"]) for r in rep["rows"]}
            rows = [r for r in rows if (r["model"], r["guide"]) not in again] + rep["rows"]
        models = list(dict.fromkeys(r["model"] for r in rows))
        guides = list(dict.fromkeys(r["guide"] for r in rows))
        to_run = []
    for model_name in to_run:
        for guide_name in guides:
            lrs = [None] if guide_name.startswith("recipe") else args.lrs
            seeds = args.recipe_seeds if guide_name.startswith("recipe") else args.seeds
            for lr in lrs:
                for seed in range(seeds):
                    row = run(model_name, guide_name, lr, seed, args)
                    rows.append(row)
                    print(f"{model_name:26s} {guide_name:30s} lr={row['lr']!s:7s} seed={seed} div={row['diverged']} "
                          f"mean_err={row['mean_err']:.3g} sd_err={row['sd_err']:.3g} khat={row['khat']:.2f} "
                          f"psis={row['mean_err_psis']:.3g}/{row['sd_err_psis']:.3g} "
                          f"elbo={row['elbo']:.2f} ({row['seconds']:.1f} s)", flush=True)
    command = (f"python benchmarks/bayes.py --seeds {args.seeds} --recipe-seeds {args.recipe_seeds} --steps {args.steps} --particles {args.particles} "
               f"--lrs {' '.join(map(str, args.lrs))} --estimator {args.estimator} --recipe-flow {args.recipe_flow} "
               f"--recipe-num-flows {args.recipe_num_flows} --recipe-base {args.recipe_base} --recipe-marginals {args.recipe_marginals} "
               f"--final-lr-fraction {args.final_lr_fraction} --draws {args.draws}"
               + (f" --warm-start-steps {args.warm_start_steps}" if args.warm_start_steps is not None else "")
               + (f" --probe-steps {args.probe_steps}" if args.probe_steps is not None else "")
               + (" --jit" if args.jit else "")
               + (f" --models {' '.join(models)}" if args.models else "")
               + (" --guides " + " ".join(repr(g) if " " in g else g for g in guides) if args.guides else ""))
    intro = (f"Per model and guide: divergences over all runs ({args.seeds} seeds x {len(args.lrs)} learning rates; "
             f"the recipe: {args.recipe_seeds} seeds, it picks its learning rate), then at the best learning rate the worst over "
             "seeds (and the median, in brackets) of max |mean error| / reference sd, max |sd ratio - 1| and PSIS k-hat "
             "(every scalar component, on the unconstrained scale), the same two errors of the importance-corrected "
             "posterior (the guide's draws weighted by their Pareto-smoothed importance weights; '-': not measured), "
             "the median ELBO and the "
             f"median wall time of one fit ({args.steps} steps, {args.particles} particles; the recipe adds its warm "
             "start and probes). NUTS: the wall time of the reference run (chains run one after another). "
             f"Noise floor: what a guide that is exactly the posterior would score, from Monte Carlo error alone "
             f"({args.draws} guide draws against the reference; worst of {args.recipe_seeds} fits, one fit in brackets; "
             "see noise_floor).")
    table = ["| model | guide | divergences | lr | mean err (sd) | sd err | k-hat | mean err, PSIS | sd err, PSIS | ELBO "
             "| seconds | CPU seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model_name in models:
        info = load_reference(model_name).info
        nuts = info.get("nuts", {})
        cpu = nuts.get("cpu_seconds")
        table.append(f"| {model_name} | NUTS ({info.get('source', '?')}) | {nuts.get('divergences', '-')} | - | 0 | 0 | - | - | - | - | "
                     f"{nuts.get('seconds', float('nan')):.1f} | {'-' if cpu is None else f'{cpu:.1f}'} |")
        floor = noise_floor(model_name, args.draws, args.recipe_seeds)
        table.append(f"| {model_name} | the exact posterior: noise floor ({floor['dim']} components, reference ESS "
                     f"{floor['ess']:.0f}, largest kurtosis {floor['kurtosis']:.0f}) | - | - | {floor['mean'][0]:.2f} ({floor['mean'][1]:.2f}) | "
                     f"{floor['sd'][0]:.2f} ({floor['sd'][1]:.2f}) | - | - | - | - | - | - |")
        for guide_name in guides:
            if not any(r["model"] == model_name and r["guide"] == guide_name for r in rows):
                continue  # a guide run on some models only (e.g. a merged report)
            s = summarize(rows, model_name, guide_name)
            table.append(f"| {model_name} | {guide_name} | {s['divergences']} | {s['lr']} | {s['mean_err']} | "
                         f"{s['sd_err']} | {s['khat']} | {s['mean_err_psis']} | {s['sd_err_psis']} | {s['elbo']:.2f} "
                         f"| {s['seconds']:.1f} | {s['cpu_seconds']:.1f} |")
    return write_report(args.out, args.name, command, rows, "Posterior accuracy against NUTS", intro, table)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="models (default: all)")
    parser.add_argument("--guides", nargs="+", help="guides (default: Pyro's, every family, recipe)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per guide and learning rate")
    parser.add_argument("--recipe-seeds", type=int, default=5, help="seeds of the recipe")
    parser.add_argument("--steps", type=int, default=1000, help="optimisation steps per fit")
    parser.add_argument("--particles", type=int, default=8, help="ELBO particles per step")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3, 1e-2], help="the learning-rate grid")
    parser.add_argument("--estimator", default="auto",
                        help="the recipe's estimator (auto: dreg, or elbo after a Laplace warm start; elbo, stl, dreg)")
    parser.add_argument("--recipe-flow", default="iaf", help="the recipe's flow family")
    parser.add_argument("--recipe-num-flows", type=int, default=4, help="the recipe's number of layers")
    parser.add_argument("--recipe-base", default="diagonal", help="the recipe's base: diagonal or full")
    parser.add_argument("--recipe-marginals", default="gaussian", choices=list(MARGINALS), help="the recipe's base marginals")
    parser.add_argument("--final-lr-fraction", type=float, default=inspect.signature(fit).parameters["final_lr_fraction"].default,
                        help="the recipe's learning rate at its last step, as a fraction of the chosen one (default: fit's)")
    parser.add_argument("--warm-start-steps", type=int, default=None, help="the recipe's warm-start steps (default: fit's)")
    parser.add_argument("--probe-steps", type=int, default=None, help="the recipe's steps per learning-rate probe (default: fit's)")
    parser.add_argument("--jit", action="store_true", help="the recipe compiles its losses (fit(..., jit=True))")
    parser.add_argument("--draws", type=int, default=4000, help="guide draws for the accuracy, ELBO and k-hat")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="write the report from these earlier reports' rows, running nothing (a later file's "
                             "rows replace the earlier rows of the same model and guide)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    parser.add_argument("--name", default="bayes", help="the report's file stem")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
