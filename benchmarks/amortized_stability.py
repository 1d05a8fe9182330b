"""Divergence counts of AmortizedFlowGuide on a subsampled hierarchical regression with raw-scale data.

The run of the amortized-defaults issue: a random-effects regression with ``N`` data points whose
covariates and observations are on the scale of hundreds (as data usually come: nobody
standardised them), a local latent ``z_i`` per data point in ``pyro.plate("data", N,
subsample_size=100)`` and four global latents.  :class:`~pyro_nfvi.AmortizedFlowGuide` with its
default settings (``num_flows=--num-flows``) is fitted by ``SVI`` with ``ClippedAdam({"lr": lr,
"clip_norm": 10})`` and ``Trace_ELBO()`` for ``--steps`` steps, for every flow family, learning
rate and seed.  ``--old-defaults`` reproduces the defaults before the fix (``init_scale=1.0``,
``standardize=False``: the encoder reads the raw observations).

A run *diverges* when a loss is non-finite, or exceeds ``--factor`` times its loss at step 0 after
the first 100 steps (every guide starts near 3e7 on this model, the model's globals being far
from the data at initialisation; a converged run reaches a few thousand; a diverging one goes to
1e19 or NaN).  Results go to ``benchmarks/results/amortized_stability{,_old}.{json,md}``.

Usage::

    python benchmarks/amortized_stability.py                  # 5 seeds x lr 1e-3, 5e-3, 1e-2, 1000 steps
    python benchmarks/amortized_stability.py --old-defaults   # the same with the defaults before the fix
    python benchmarks/amortized_stability.py --seeds 1 --steps 105 --families none --out /tmp/s  # a smoke run
"""
import argparse
import json
import math
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_nfvi import AmortizedFlowGuide
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["none", "planar", "iaf", "coupling"]


def regression_data(n=1000, seed=0):
    """Covariates ``x`` ``(n, 3)`` around 100 (sd 50) and observations ``y`` ``(n,)`` around 300 (sd ~100)."""
    g = torch.Generator().manual_seed(seed)
    x = 50.0 * torch.randn(n, 3, generator=g) + 100.0
    z = 300.0 + x @ torch.tensor([1.0, -2.0, 0.5]) + 5.0 * torch.randn(n, generator=g)
    return x, z + 2.0 * torch.randn(n, generator=g)


def model(x, y, subsample_size=100):
    """Random-effects regression: ``z_i ~ N(alpha + x_i . beta, tau)``, ``y_i ~ N(z_i, sigma)``."""
    alpha = pyro.sample("alpha", dist.Normal(0.0, 1000.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([x.shape[1]]).to_event(1))
    tau = pyro.sample("tau", dist.HalfNormal(10.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(10.0))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(alpha + x[idx] @ beta, tau))
        pyro.sample("y", dist.Normal(z, sigma), obs=y[idx])


def run(family, lr, seed, steps, factor, num_flows, old_defaults, n, head_output_scale=None, flow_opts=None):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    x, y = regression_data(n)
    opts = {"init_scale": 1.0, "standardize": False} if old_defaults else {}
    if head_output_scale is not None:
        opts["head_output_scale"] = head_output_scale
    opts.update(flow_opts or {})
    guide = AmortizedFlowGuide(model, plate="data", flow=family, num_flows=num_flows, **opts)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0}), Trace_ELBO())
    start, losses, error = time.perf_counter(), [], None
    for _ in range(steps):
        try:
            loss = svi.step(x, y)
        except ValueError as e:  # a distribution refusing NaN parameters: the run has diverged
            loss, error = float("nan"), str(e).split("\n")[0][:200]
        losses.append(loss)
        if not math.isfinite(loss):
            break
    bound = factor * losses[0] if math.isfinite(losses[0]) else -math.inf
    diverged_at = next((i for i, v in enumerate(losses) if not math.isfinite(v) or (i >= 100 and v > bound)), None)
    tail = losses[-min(100, len(losses)):]
    return {
        "family": family, "lr": lr, "seed": seed, "steps": len(losses), "diverged_at": diverged_at,
        "initial_loss": losses[0], "max_loss": max(losses), "final_loss_mean": sum(tail) / len(tail),
        "error": error, "seconds": time.perf_counter() - start,
    }


def main(args):
    rows = []
    for family in args.families:
        for lr in args.lrs:
            for seed in range(args.seeds):
                row = run(family, lr, seed, args.steps, args.factor, args.num_flows, args.old_defaults, args.n,
                          args.head_output_scale, json.loads(args.flow_opts) if args.flow_opts else None)
                rows.append(row)
                print(f"{family:9s} lr={lr:<7g} seed={seed} diverged_at={row['diverged_at']} "
                      f"final={row['final_loss_mean']:.4g} ({row['seconds']:.0f} s)", flush=True)
    command = (f"python benchmarks/amortized_stability.py --seeds {args.seeds} --steps {args.steps} --num-flows "
               f"{args.num_flows} --families {' '.join(args.families)} --lrs {' '.join(map(str, args.lrs))}"
               + (" --old-defaults" if args.old_defaults else "")
               + (f" --head-output-scale {args.head_output_scale}" if args.head_output_scale else "")
               + (f" --flow-opts '{args.flow_opts}'" if args.flow_opts else "")
               + (f" --name {args.name}" if args.name else ""))
    which = ("the defaults before the fix (init_scale=1.0, raw encoder input)" if args.old_defaults
             else "the defaults (init_scale=0.1, standardised encoder input)")
    head = args.head_output_scale or "sqrt_fan_in"
    which += f" and head_output_scale={head!r}" + (f", flow options {args.flow_opts}" if args.flow_opts else "")
    intro = (f"AmortizedFlowGuide with {which} on a subsampled random-effects regression (N={args.n}, batch 100, "
             "data on the scale of hundreds), ClippedAdam(clip_norm=10). Diverged runs out of "
             f"{args.seeds} seeds (a non-finite loss, or a loss above {args.factor:g} x the step-0 loss after "
             f"step 100), and the median over seeds of the mean loss over the last 100 steps (nan: every run diverged).")
    table = ["| flow | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |", "|---|" + "---|" * len(args.lrs)]
    for family in args.families:
        cells = []
        for lr in args.lrs:
            sel = [r for r in rows if r["family"] == family and r["lr"] == lr]
            finals = sorted(r["final_loss_mean"] for r in sel if r["diverged_at"] is None)
            median = finals[len(finals) // 2] if finals else float("nan")
            cells.append(f"{sum(r['diverged_at'] is not None for r in sel)}/{len(sel)} ({median:.4g})")
        table.append(f"| {family} | " + " | ".join(cells) + " |")
    name = "amortized_stability_old" if args.old_defaults else "amortized_stability"
    if args.head_output_scale is not None:
        name += f"_head_{args.head_output_scale}"
    if args.name:
        name = args.name
    title = "AmortizedFlowGuide divergences on a subsampled hierarchical model" + (" (old defaults)" if args.old_defaults else "")
    if args.head_output_scale == "none":
        title += " (unscaled loc/scale head)"
    return write_report(args.out, name, command, rows, title, intro, table)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per flow family and learning rate")
    parser.add_argument("--steps", type=int, default=1000, help="SVI steps per run")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3, 1e-2], help="learning rates")
    parser.add_argument("--families", nargs="+", default=FAMILIES, help="local flow families")
    parser.add_argument("--num-flows", type=int, default=2, help="local (and global) flow layers")
    parser.add_argument("--n", type=int, default=1000, help="number of data points")
    parser.add_argument("--factor", type=float, default=30.0,
                        help="a loss above factor x the step-0 loss after step 100 is a divergence")
    parser.add_argument("--old-defaults", action="store_true", help="init_scale=1.0 and standardize=False")
    parser.add_argument("--head-output-scale", choices=["none", "sqrt_fan_in", "fan_in"], default=None,
                        help="the guide's head_output_scale (default: the guide's default, sqrt_fan_in)")
    parser.add_argument("--flow-opts", default=None, help="extra AmortizedFlowGuide options as JSON, e.g. '{\"stable\": true}'")
    parser.add_argument("--name", default=None, help="the report's file stem (default from the options)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
