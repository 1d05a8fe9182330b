"""Time one training step of the recipe's estimator (loss and gradients) on the models of ``bayes.py``.

The guide is the recipe's configuration, ``AutoFlowGuide(model, marginals="sinh_arcsinh")`` at its
initialisation; the loss is what ``fit`` builds for the estimator (``pyro_nfvi.recipe.make_loss``:
DReG by default, ``--jit`` for the compiled form). Each step is ``loss_and_grads`` under a
parameter trace, as in ``fit``'s own step, without the optimizer. CPU time per step: after
``--warmup`` steps, ``--rounds`` rounds of ``--steps`` steps; the table gives the fastest round and
the median one. To compare two versions of the code, run the script in each checkout in turn, a
round of each at a time (timings separated in time differ by 10-20% on a shared machine).

Usage::

    python benchmarks/step_time.py --models hierarchical_logistic eight_schools_noncentered --modes jit eager
"""
import argparse
import statistics
import time
import warnings

import pyro
import torch
from pyro import poutine

from pyro_nfvi import AutoFlowGuide
from pyro_nfvi.recipe import ESTIMATORS, make_loss
from pyro_nfvi.targets.bayes import MODELS
from report import write_report


def step_times(name, mode, estimator, particles, warmup, steps, rounds):
    """CPU milliseconds per step of each round."""
    model, args = MODELS[name]()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, marginals="sinh_arcsinh")
    guide(*args)
    loss = make_loss(estimator, guide, particles, True, mode == "jit")
    params = [p for p in guide.parameters() if p.requires_grad]

    def step():
        with poutine.trace(param_only=True):
            loss.loss_and_grads(model, guide, *args)
        for p in params:
            p.grad = None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's tracer warnings on the first (compiling) call
        for _ in range(warmup):
            step()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(steps):
            step()
        times.append((time.process_time() - start) / steps * 1e3)
    return times


def main(args):
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for mode in args.modes:
            times = step_times(name, mode, args.estimator, args.particles, args.warmup, args.steps, args.rounds)
            rows.append({"model": name, "mode": mode, "estimator": args.estimator, "particles": args.particles,
                         "ms_per_step": times, "fastest": min(times), "median": statistics.median(times)})
            print(f"{name:28s} {mode:6s} fastest {min(times):.2f} ms, median {statistics.median(times):.2f} ms", flush=True)
    command = ("python benchmarks/step_time.py --models " + " ".join(args.models) + " --modes " + " ".join(args.modes)
               + f" --estimator {args.estimator} --particles {args.particles} --warmup {args.warmup}"
               + f" --steps {args.steps} --rounds {args.rounds} --threads {args.threads}")
    table = ["| model | mode | estimator | particles | ms per step, fastest round | median round |", "|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['mode']} | {r['estimator']} | {r['particles']} | {r['fastest']:.2f} | {r['median']:.2f} |"
              for r in rows]
    intro = ("CPU time of one step (`loss_and_grads` of the loss `fit` builds, no optimizer) with "
             "`AutoFlowGuide(model, marginals=\"sinh_arcsinh\")` at its initialisation; "
             f"{args.rounds} rounds of {args.steps} steps after {args.warmup} warm-up steps.")
    return write_report(args.out, args.name, command, rows, "Time per training step", intro, table)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["eight_schools_noncentered", "hierarchical_logistic"],
                   choices=sorted(MODELS), help="models (default: eight schools and the hierarchical regression)")
    p.add_argument("--modes", nargs="+", default=["jit", "eager"], choices=["jit", "eager"],
                   help="compiled (fit(..., jit=True)) and/or eager losses (default: both)")
    p.add_argument("--estimator", default="dreg", choices=[e for e in ESTIMATORS if e != "auto"],
                   help="the estimator (default: dreg, fit's choice on these models)")
    p.add_argument("--particles", type=int, default=8, help="particles per step (default: fit's 8)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (default: 20)")
    p.add_argument("--steps", type=int, default=100, help="steps per round (default: 100)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (default: 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    p.add_argument("--name", default="step_time", help="the report's file stem")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
