"""Time to build a flow guide and take its first SVI step, against Pyro's ``AutoIAFNormal``.

For each latent size ``D`` and each family, a model with one ``D``-dimensional Gaussian latent and
an observed site is built; the row is the wall time of ``AutoFlowGuide(model, flow=family,
num_flows=2, model_args=(y,))`` (construction, which sets the guide up) and of the first
``SVI.step``.  Pyro's ``AutoIAFNormal(model, num_transforms=2)`` sets up lazily, so its
construction time is that of the guide plus its first call.  Results go to
``benchmarks/results/construction.{json,md}``.

Usage::

    python benchmarks/construction.py                      # D = 10, 100, 1000, 5000
    python benchmarks/construction.py --dims 10 100 --out /tmp/c
"""
import argparse
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal

from pyro_nfvi import AutoFlowGuide
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["planar", "radial", "householder", "iaf", "sylvester", "coupling", "none"]


def make_model(dim):
    def model(y):
        z = pyro.sample("z", dist.Normal(torch.zeros(dim), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    return model


def time_row(dim, family):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = make_model(dim)
    y = torch.randn(dim)
    start = time.perf_counter()
    if family == "pyro AutoIAFNormal":
        guide = AutoIAFNormal(model, num_transforms=2)
        guide(y)  # Pyro's guides set up at their first call
    else:
        guide = AutoFlowGuide(model, flow=family, num_flows=2, model_args=(y,))
    built = time.perf_counter() - start
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    start = time.perf_counter()
    svi.step(y)
    step = time.perf_counter() - start
    return {"dim": dim, "guide": family, "construct_s": built, "first_step_s": step}


def main(args):
    torch.set_num_threads(args.threads) if args.threads else None
    time_row(10, "planar")  # warm-up: first-use costs of torch and Pyro are not construction costs
    rows = []
    for dim in args.dims:
        for family in args.families + ["pyro AutoIAFNormal"]:
            row = time_row(dim, family)
            rows.append(row)
            print(f"D={dim:5d} {family:20s} construct {row['construct_s']:8.3f} s   first step {row['first_step_s']:8.3f} s",
                  flush=True)
    command = "python benchmarks/construction.py --dims " + " ".join(map(str, args.dims))
    if args.families != FAMILIES:
        command += " --families " + " ".join(args.families)
    table = ["| D | guide | construct (s) | first step (s) |", "|---|---|---|---|"]
    table += [f"| {r['dim']} | {r['guide']} | {r['construct_s']:.3f} | {r['first_step_s']:.3f} |" for r in rows]
    intro = ("Seconds to build the guide (ours: `model_args` given, so construction sets it up; Pyro's: "
             "construction plus the first call) and to take the first `SVI.step`; 2 flow layers each.")
    report = write_report(args.out, "construction", command, rows, "Guide construction time", intro, table)
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 100, 1000, 5000], help="latent sizes D")
    parser.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES, help="flow families")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
