"""Divergence counts of every guide on eight schools at common learning rates, over seeds.

The run of the posteriors issue: ``SVI`` with ``ClippedAdam({"lr": lr, "clip_norm": 10})`` and
``Trace_ELBO(num_particles=4, vectorize_particles=True)``, ``--steps`` steps, for every flow family
of :class:`~pyro_nfvi.AutoFlowGuide` (default settings, ``num_flows=4``; ``--affine`` adds the IAF
and coupling rows in their affine, non-gated form) and Pyro's ``AutoNormal`` and
``AutoIAFNormal``.  A run *diverges* when a loss is non-finite or exceeds ``--threshold`` after
the first 100 steps (a converged run sits near 31.5; a diverging one spikes to 1e3-1e7).
Results go to ``benchmarks/results/stability.{json,md}``.

Usage::

    python benchmarks/stability.py                       # 5 seeds x lr 1e-3, 5e-3, 1e-2, 3000 steps
    python benchmarks/stability.py --seeds 1 --steps 300 --out /tmp/s   # a smoke run
"""
import argparse
import math
import time
from pathlib import Path

import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal

from pyro_nfvi import AutoFlowGuide
from pyro_nfvi.targets.bayes import eight_schools
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["planar", "radial", "householder", "iaf", "sylvester", "coupling", "none"]


def make_guide(name, model):
    if name == "AutoNormal":
        return AutoNormal(model)
    if name == "AutoIAFNormal":
        return AutoIAFNormal(model, num_transforms=2)
    family, _, form = name.partition(" ")
    opts = {"stable": False} if form == "(affine)" else {}
    return AutoFlowGuide(model, flow=family, num_flows=4, **opts)


def run(name, lr, seed, steps, threshold):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model, args = eight_schools()
    guide = make_guide(name, model)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0}),
              Trace_ELBO(num_particles=4, vectorize_particles=True))
    start, losses = time.perf_counter(), []
    for step in range(steps):
        loss = svi.step(*args)
        losses.append(loss)
        if not math.isfinite(loss):
            break
    late = losses[100:]
    diverged_at = next((100 + i for i, v in enumerate(late) if not math.isfinite(v) or v > threshold), None)
    tail = losses[-min(200, len(losses)):]
    return {
        "guide": name, "lr": lr, "seed": seed, "steps": len(losses), "diverged_at": diverged_at,
        "max_loss_after_100": max(late) if late else None, "final_loss_mean": sum(tail) / len(tail),
        "seconds": time.perf_counter() - start,
    }


def main(args):
    guides = args.guides or (FAMILIES + (["iaf (affine)", "coupling (affine)"] if args.affine else [])
                             + ["AutoNormal", "AutoIAFNormal"])
    rows = []
    for name in guides:
        for lr in args.lrs:
            for seed in range(args.seeds):
                row = run(name, lr, seed, args.steps, args.threshold)
                rows.append(row)
                print(f"{name:18s} lr={lr:<7g} seed={seed} diverged_at={row['diverged_at']} "
                      f"final={row['final_loss_mean']:.2f} ({row['seconds']:.0f} s)", flush=True)
    command = (f"python benchmarks/stability.py --seeds {args.seeds} --steps {args.steps} --lrs "
               + " ".join(map(str, args.lrs)) + (" --affine" if args.affine else ""))
    intro = (f"Diverged runs out of {args.seeds} seeds (a loss non-finite or above {args.threshold} after step "
             "100), and the mean loss over the last 200 steps (median over seeds).")
    table = ["| guide | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |", "|---|" + "---|" * len(args.lrs)]
    for name in guides:
        cells = []
        for lr in args.lrs:
            sel = [r for r in rows if r["guide"] == name and r["lr"] == lr]
            finals = sorted(r["final_loss_mean"] for r in sel)
            median = finals[len(finals) // 2]
            cells.append(f"{sum(r['diverged_at'] is not None for r in sel)}/{len(sel)} ({median:.1f})")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    return write_report(args.out, "stability", command, rows, "Divergences on eight schools (non-centered)", intro, table)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per guide and learning rate")
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps per run")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3, 1e-2], help="learning rates")
    parser.add_argument("--threshold", type=float, default=100.0, help="a loss above this after step 100 is a divergence")
    parser.add_argument("--affine", action="store_true", help="add the affine (non-gated) IAF and coupling rows")
    parser.add_argument("--guides", nargs="+", help="only these rows (e.g. planar 'iaf (affine)' AutoNormal)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
