"""Gradient variance of the guide's parameters: Trace_ELBO vs STL_ELBO, IWAE vs DReG (IW_ELBO).

The model is a conjugate Gaussian, ``z ~ N(0, I_D)``, ``x ~ N(z, 0.7^2 I_D)``, with its exact
posterior ``N(m, s^2 I)``.  An :class:`~pyro_nfvi.AutoFlowGuide` of each family (2 layers) is
placed either *near* the posterior (loc ``m + 0.1``, scale ``1.2 s``: the regime of a converging
fit) or left *at init* (loc at the prior median, scale 0.1: far from it).  For each estimator
pair (Trace_ELBO vs STL with one particle; IWAE vs DReG with ``M`` particles) the gradient of
every guide parameter is drawn ``--reps`` times (float64, fixed seeds) and the table gives the
summed variances and their ratio (below 1: the new estimator is better).
Results go to ``benchmarks/results/estimators.{json,md}``.

Usage::

    python benchmarks/estimators.py                                  # planar, iaf, none; 200 reps
    python benchmarks/estimators.py --reps 20 --families none --out /tmp/e   # a smoke run
"""
import argparse
import math
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide.initialization import init_to_value

from pyro_nfvi import AutoFlowGuide
from pyro_nfvi.objectives import IW_ELBO, STL_ELBO
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
SIGMA = 0.7


def make_model(dim):
    x = torch.linspace(-1.5, 2.0, dim, dtype=torch.float64)

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(dim, dtype=torch.float64), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)

    return model, x / (1 + SIGMA**2), SIGMA / math.sqrt(1 + SIGMA**2)


def make_guide(model, family, setting, mean, sd):
    if setting == "near":
        return AutoFlowGuide(model, flow=family, num_flows=2, init_scale=1.2 * sd,
                             init_loc_fn=init_to_value(values={"z": mean + 0.1}), model_args=())
    return AutoFlowGuide(model, flow=family, num_flows=2, model_args=())


def variance(elbo, model, guide, reps, seed):
    params = list(guide.parameters())
    pyro.set_rng_seed(seed)
    draws = []
    for _ in range(reps):
        grads = torch.autograd.grad(elbo.differentiable_loss(model, guide), params, allow_unused=True)
        draws.append(torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if g is None else g.reshape(-1)
                                for p, g in zip(params, grads)]))
    return float(torch.stack(draws).var(0).sum())


def pairs(particles):
    yield "Trace_ELBO", "STL", 1, Trace_ELBO(vectorize_particles=True), STL_ELBO()
    for m in particles:
        yield "IWAE", "DReG", m, IW_ELBO(num_particles=m, gradient="iwae"), IW_ELBO(num_particles=m, gradient="dreg")


def main(args):
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, mean, sd = make_model(args.dim)
        rows = []
        for family in args.families:
            for setting in args.settings:
                for old_name, new_name, m, old, new in pairs(args.particles):
                    pyro.clear_param_store()
                    guide = make_guide(model, family, setting, mean, sd)
                    start = time.perf_counter()
                    var_old = variance(old, model, guide, args.reps, seed=0)
                    mid = time.perf_counter()
                    var_new = variance(new, model, guide, args.reps, seed=1)
                    end = time.perf_counter()
                    row = {"family": family, "setting": setting, "baseline": old_name, "estimator": new_name,
                           "num_particles": m, "var_baseline": var_old, "var_estimator": var_new,
                           "ratio": var_new / var_old, "ms_baseline": 1e3 * (mid - start) / args.reps,
                           "ms_estimator": 1e3 * (end - mid) / args.reps}
                    rows.append(row)
                    print(f"{family:10s} {setting:5s} {new_name:4s}/{old_name:10s} M={m:<4d} ratio={row['ratio']:.3g} "
                          f"({row['ms_baseline']:.1f} vs {row['ms_estimator']:.1f} ms per gradient)", flush=True)
    finally:
        torch.set_default_dtype(dtype)
    command = (f"python benchmarks/estimators.py --dim {args.dim} --reps {args.reps} --families "
               + " ".join(args.families) + " --particles " + " ".join(map(str, args.particles))
               + " --settings " + " ".join(args.settings))
    intro = (f"Summed variance of the guide parameters' gradient over {args.reps} draws (D={args.dim} conjugate "
             "Gaussian, float64), baseline vs estimator, and their ratio (below 1: lower variance). 'near': the "
             "guide at loc m + 0.1, scale 1.2 s of the exact posterior N(m, s^2 I); 'init': the default "
             "initialisation (prior median, scale 0.1). Times: ms per gradient.")
    table = ["| family | setting | estimator vs baseline | M | var (baseline) | var (estimator) | ratio | ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['family']} | {r['setting']} | {r['estimator']} vs {r['baseline']} | {r['num_particles']} | "
                     f"{r['var_baseline']:.3g} | {r['var_estimator']:.3g} | {r['ratio']:.3g} | "
                     f"{r['ms_baseline']:.1f} / {r['ms_estimator']:.1f} |")
    return write_report(args.out, "estimators", command, rows, "Gradient variance: STL and DReG", intro, table)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=3, help="latent dimension D")
    parser.add_argument("--reps", type=int, default=200, help="gradient draws per estimator")
    parser.add_argument("--families", nargs="+", default=["none", "planar", "iaf"], help="flow families")
    parser.add_argument("--particles", type=int, nargs="+", default=[10, 100], help="M of IWAE / DReG")
    parser.add_argument("--settings", nargs="+", default=["near", "init"], choices=["near", "init"],
                        help="where the guide sits")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
