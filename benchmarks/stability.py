"""Divergence counts of every guide on the benchmark models at common learning rates, over seeds.

The run of the posteriors issue: ``SVI`` with ``ClippedAdam({"lr": lr, "clip_norm": 10})`` and
``Trace_ELBO(num_particles=4, vectorize_particles=True)``, ``--steps`` steps, for every flow family
of :class:`~pyro_nfvi.AutoFlowGuide` (default settings, ``num_flows=4``; ``--affine`` adds the IAF
and coupling rows with unscaled networks, ``output_scale="none"``; a name such as
``"iaf (sinh_arcsinh)"`` or ``"iaf (gaussian)"`` sets the base marginals) and Pyro's ``AutoNormal`` and
``AutoIAFNormal``, on each model of :data:`pyro_nfvi.targets.bayes.MODELS` named in ``--models``.
A run *diverges* when a loss is non-finite, or when the rolling median of its losses (window
``WINDOW`` = 50 steps) rises more than ``--threshold`` nats plus ``RELATIVE`` = 5% of its size above
the lowest rolling median before it (the early losses of a badly scaled model are in the tens of
thousands, and their Monte Carlo noise alone moves a median by hundreds):
the parameters blew up and stayed up (the runs of the issue spiked by 1e3-1e7).  A slowly
converging run (every rolling median below the earlier ones) and single noisy ELBO draws (a
median ignores them) are not divergences; each row keeps the largest rise (``max_rise``) and the
rolling median every 20 steps (``trace``), so another criterion can be applied to the stored rows.
(The eight-schools-only report, ``stability.md``, used an absolute threshold of 100 after step
100, where a converged run sits near 31.5.)

Every finished run is appended to ``<out>/<name>.json`` at once and a rerun of the same command
skips the runs already there (same model, guide, learning rate, seed and steps), so the grid can be
filled across several sittings; ``<out>/<name>.md`` holds the table of what is done.

Usage::

    python benchmarks/stability.py                       # 7 models x 5 seeds x lr 1e-3, 5e-3, 1e-2
    python benchmarks/stability.py --models ar5 --seeds 1 --steps 300 --out /tmp/s   # a smoke run
"""
import argparse
import json
import math
import shlex
import statistics
import time
from pathlib import Path

import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal

from pyro_nfvi import AutoFlowGuide
from pyro_nfvi.targets.bayes import MODELS
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
#: steps of the rolling median whose rise marks a divergence
WINDOW = 50
#: the part of the rise allowed in proportion to the loss's level
RELATIVE = 0.05
FAMILIES = ["planar", "radial", "householder", "iaf", "sylvester", "coupling", "none"]
#: what a guide name's bracket may say: unscaled IAF/coupling networks, or the base marginals
FORMS = ("affine", "gaussian", "sinh_arcsinh")


def make_guide(name, model):
    if name == "AutoNormal":
        return AutoNormal(model)
    if name == "AutoIAFNormal":
        return AutoIAFNormal(model, num_transforms=2)
    family, _, form = name.partition(" ")
    form = form.strip("()")
    if form and form not in FORMS:
        raise SystemExit(f"unknown guide form {form!r} in {name!r}; choose from {FORMS}")
    opts = {"output_scale": "none"} if form == "affine" else {"marginals": form} if form else {}
    return AutoFlowGuide(model, flow=family, num_flows=4, **opts)


def divergence(losses, threshold):
    """``(diverged_at, max_rise, trace)``: the step where a run diverged (``None``: it did not), see above."""
    diverged_at, max_rise, trace = None, None, []
    if not all(math.isfinite(v) for v in losses):
        return next(i for i, v in enumerate(losses) if not math.isfinite(v)), None, trace
    rolling = [statistics.median(losses[i - WINDOW + 1 : i + 1]) for i in range(WINDOW - 1, len(losses))]
    lowest, max_rise = (rolling[0], 0.0) if rolling else (None, None)
    for i, level in enumerate(rolling):
        lowest = min(lowest, level)
        max_rise = max(max_rise, level - lowest)
        if diverged_at is None and level > lowest + threshold + RELATIVE * abs(lowest):
            diverged_at = i + WINDOW - 1
    return diverged_at, max_rise, [round(v, 3) for v in rolling[::20]]


def run(model_name, name, lr, seed, steps, threshold):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model, args = MODELS[model_name]()
    guide = make_guide(name, model)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0}),
              Trace_ELBO(num_particles=4, vectorize_particles=True))
    start, cpu_start, losses = time.perf_counter(), time.process_time(), []
    for step in range(steps):
        loss = svi.step(*args)
        losses.append(loss)
        if not math.isfinite(loss):
            break
    diverged_at, max_rise, trace = divergence(losses, threshold)
    tail = losses[-min(200, len(losses)):]
    return {
        "model": model_name, "guide": name, "lr": lr, "seed": seed, "steps": steps, "diverged_at": diverged_at,
        "max_rise": max_rise, "final_loss_mean": sum(tail) / len(tail), "trace": trace,
        "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
    }


def _load(path):
    if path.exists():
        return json.loads(path.read_text())["rows"]
    return []


def _key(row):
    return (row["model"], row["guide"], float(row["lr"]), int(row["seed"]), int(row["steps"]))


def main(args):
    guides = args.guides or (FAMILIES + (["iaf (affine)", "coupling (affine)"] if args.affine else [])
                             + ["AutoNormal", "AutoIAFNormal"])
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown --models {unknown}; choose from {sorted(MODELS)}")
    path = Path(args.out) / f"{args.name}.json"
    rows = _load(path)
    done = {_key(r) for r in rows}
    command = (f"python benchmarks/stability.py --models {' '.join(args.models)} --seeds {args.seeds} --steps "
               f"{args.steps} --threshold {args.threshold:g} --lrs " + " ".join(map(str, args.lrs))
               + (" --affine" if args.affine else "")
               + (" --guides " + " ".join(shlex.quote(g) for g in args.guides) if args.guides else ""))
    report = None
    for model_name in args.models:
        for seed in range(args.seeds):
            for name in guides:
                for lr in args.lrs:
                    if (model_name, name, float(lr), seed, args.steps) in done:
                        continue
                    row = run(model_name, name, lr, seed, args.steps, args.threshold)
                    rows.append(row)
                    print(f"{model_name:26s} {name:18s} lr={lr:<7g} seed={seed} diverged_at={row['diverged_at']} "
                          f"final={row['final_loss_mean']:.2f} ({row['seconds']:.0f} s)", flush=True)
                    report = _report(args, guides, rows, command)  # after every run: nothing finished is lost
    return report or _report(args, guides, rows, command)


def _report(args, guides, rows, command):
    intro = (f"Diverged runs out of the seeds run so far (a loss non-finite, or the rolling median of {WINDOW} losses "
             f"more than {args.threshold:g} nats + {RELATIVE:.0%} above its lowest earlier value), and the median over "
             f"seeds of the mean loss of the last 200 steps. AutoFlowGuide families with 4 layers and their "
             f"defaults (IAF and coupling affine with scaled networks, output_scale='fan_in'); {args.steps} steps, 4 particles.")
    models = [m for m in args.models if any(r["model"] == m for r in rows)]
    table = ["| model | guide | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " |",
             "|---|---|" + "---|" * len(args.lrs)]
    for model_name in models:
        for name in guides:
            cells = []
            for lr in args.lrs:
                sel = [r for r in rows if r["model"] == model_name and r["guide"] == name
                       and float(r["lr"]) == float(lr) and r["steps"] == args.steps]
                if not sel:
                    cells.append("-")
                    continue
                finals = sorted(r["final_loss_mean"] for r in sel)
                cells.append(f"{sum(r['diverged_at'] is not None for r in sel)}/{len(sel)} ({finals[len(finals) // 2]:.1f})")
            table.append(f"| {model_name} | {name} | " + " | ".join(cells) + " |")
    return write_report(args.out, args.name, command, rows, "Divergences on the benchmark models", intro, table)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per guide and learning rate")
    parser.add_argument("--steps", type=int, default=1000, help="SVI steps per run")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3, 1e-2], help="learning rates")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="benchmark models (default: all)")
    parser.add_argument("--threshold", type=float, default=100.0,
                        help="a second-half loss this many nats above that half's median is a divergence")
    parser.add_argument("--name", default="stability_models", help="stem of the output files")
    parser.add_argument("--affine", action="store_true", help="add the IAF and coupling rows with unscaled networks (output_scale='none')")
    parser.add_argument("--guides", nargs="+",
                        help="only these rows (e.g. planar 'iaf (affine)' 'iaf (sinh_arcsinh)' AutoNormal)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
