"""Stability soak: non-finite losses, skipped steps and errors of long fits, per configuration.

The soak of the "no silent failures" issue, in three parts:

* **energies** -- :func:`pyro_nfvi.targets.fit_energy` (annealed VI, :class:`~pyro_nfvi.guides.FastSVI`
  with the non-finite guard on, its default ``lr=1e-2``) for every seed x every flow family (and
  ``"none"``) x U1-U4 x ``--steps`` steps.  ``fit_energy`` stops with a ``FloatingPointError`` at
  the first non-finite loss, so a non-finite loss is also an error there;
* **bayes** -- eight schools (non-centered) and Neal's funnel (``pyro_nfvi.targets.bayes.MODELS``)
  with :class:`~pyro_nfvi.AutoFlowGuide` (its default family) at each of ``--lrs``, under
  ``FastSVI`` (guard on: a NaN/inf step is skipped) and under Pyro's plain ``SVI`` with
  ``ClippedAdam(clip_norm=10)`` (guard off: every step is applied), both with
  ``Trace_ELBO(num_particles=4, vectorize_particles=True)``, for every seed x ``--steps`` steps;
* **vae** -- the MNIST flow VAE of ``pyro_nfvi.targets.vae`` (also ``examples/vae.py``'s) (``AmortizedFlowGuide``, ``FastSVI`` with
  the guard on, Adam lr 1e-3, batch 100) for ``--vae-seeds`` seeds x ``--vae-families`` x
  ``--vae-epochs`` epochs over ``--vae-num-train`` images (``--vae-epochs 0`` skips it).

Every run records the number of non-finite losses, the number of steps the guard skipped, and any
exception (caught, counted, its message kept).  The defaults are the issue's full setting (20 seeds
x every family x U1-U4 x 10,000 steps; eight schools and the funnel at lr 1e-3, 5e-3, 1e-2; 5 seeds
x every family x 3 epochs of the VAE): many CPU hours.  ``--quick`` is a reduced setting.
Results go to ``benchmarks/results/soak.{json,md}``.

Usage::

    python benchmarks/soak.py                 # the full setting
    python benchmarks/soak.py --quick         # energies 1 seed x 500 steps, bayes 2 seeds x 1000 steps,
                                              # VAE 1 seed x planar x 1 epoch of 2000 images (about 6 CPU minutes)
    python benchmarks/soak.py --seeds 1 --steps 20 --families planar --targets U1 --vae-epochs 0 --out /tmp/s
"""
import argparse
import math
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_nfvi import AutoFlowGuide
from pyro_nfvi.guides import FastSVI
from pyro_nfvi.targets import fit_energy
from pyro_nfvi.targets.bayes import MODELS
from pyro_nfvi.transforms import FAMILIES
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
ALL_FAMILIES = sorted(FAMILIES) + ["none"]
TARGETS = ["U1", "U2", "U3", "U4"]
BAYES = ["eight_schools_noncentered", "funnel"]


def _error(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}" if str(exc) else type(exc).__name__


def run_energy(target, family, seed, steps, eval_samples, grid):
    """One ``fit_energy`` run; a non-finite loss ends it with a FloatingPointError (counted as both)."""
    start, row = time.perf_counter(), {"part": "energy", "config": f"{target} {family}", "seed": seed}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the guard's first-skip warning: counted below
            result = fit_energy(target, flow=family, steps=steps, seed=seed, eval_samples=eval_samples,
                                grid=grid, log_every=0)
        row.update(steps=steps, nonfinite_losses=0, skipped=result.skipped, error=None,
                   final=result.bound)
    except Exception as exc:  # noqa: BLE001 - a soak counts every failure
        message = _error(exc)
        row.update(steps=None, nonfinite_losses=int("(loss " in message), skipped=None, error=message, final=None)
    row["seconds"] = time.perf_counter() - start
    return row


def run_bayes(name, lr, guarded, seed, steps):
    """``steps`` steps of an AutoFlowGuide on ``MODELS[name]``: FastSVI (guard on) or plain SVI (off)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model, args = MODELS[name]()
    guide = AutoFlowGuide(model)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    if guarded:
        svi = FastSVI(model, guide, elbo, lr=lr, clip_norm=10.0)
    else:
        svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0}), elbo)
    row = {"part": "bayes", "config": f"{name} lr={lr:g} {'FastSVI guard on' if guarded else 'SVI guard off'}",
           "seed": seed}
    start, nonfinite, done, error, losses = time.perf_counter(), 0, 0, None, []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the guard's and Pyro's NaN warnings
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                loss = svi.step(*args)
                done += 1
                losses.append(loss)
                nonfinite += not math.isfinite(loss)
    except Exception as exc:  # noqa: BLE001
        error = _error(exc)
    tail = [v for v in losses[-200:] if math.isfinite(v)]
    row.update(steps=done, nonfinite_losses=nonfinite, skipped=svi.guard.skipped if guarded else None,
               error=error, final=sum(tail) / len(tail) if tail else None, seconds=time.perf_counter() - start)
    return row


def run_vae(family, seed, epochs, num_train, batch=100):
    """``epochs`` epochs of the MNIST flow VAE (:class:`pyro_nfvi.targets.VAEModel`) under FastSVI (guard on)."""
    from pyro_nfvi.targets.vae import VAEModel  # noqa: PLC0415

    from pyro_nfvi import AmortizedFlowGuide  # noqa: PLC0415
    from pyro_nfvi.datasets import load_binarized_mnist  # noqa: PLC0415

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    train = load_binarized_mnist("train")[:num_train]
    batch = min(batch, len(train))
    row = {"part": "vae", "config": f"VAE {family}", "seed": seed}
    start, nonfinite, done, error, losses, svi = time.perf_counter(), 0, 0, None, [], None
    try:
        with pyro.settings.context(module_local_params=True), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            model = VAEModel(40, (300, 300))
            guide = AmortizedFlowGuide(model, plate="data", flow=family, num_flows=8, encoder_hidden=(300, 300),
                                       model_args=(train[:batch],))
            svi = FastSVI(model, guide, Trace_ELBO(), lr=1e-3)
            for _ in range(epochs):
                order = torch.randperm(len(train))
                for i in range(0, len(train) - batch + 1, batch):
                    loss = svi.step(train[order[i : i + batch]])
                    done += 1
                    losses.append(loss / batch)
                    nonfinite += not math.isfinite(loss)
    except Exception as exc:  # noqa: BLE001
        error = _error(exc)
    tail = [v for v in losses[-50:] if math.isfinite(v)]
    row.update(steps=done, nonfinite_losses=nonfinite, skipped=svi.guard.skipped if svi is not None else None,
               error=error, final=sum(tail) / len(tail) if tail else None, seconds=time.perf_counter() - start)
    return row


def _print(row):
    final = "-" if row["final"] is None else f"{row['final']:.3f}"
    print(f"{row['part']:6s} {row['config']:45s} seed={row['seed']:<3d} nonfinite={row['nonfinite_losses']} "
          f"skipped={row['skipped']} final={final} error={row['error']} ({row['seconds']:.1f} s)", flush=True)


def _table(rows):
    table = ["| part | configuration | runs | steps (total) | non-finite losses (runs) | skipped steps | errors | first error |",
             "|---|---|---|---|---|---|---|---|"]
    configs = list(dict.fromkeys((r["part"], r["config"]) for r in rows))
    for part, config in configs:
        sel = [r for r in rows if (r["part"], r["config"]) == (part, config)]
        steps = sum(r["steps"] or 0 for r in sel)
        nonfinite = sum(r["nonfinite_losses"] for r in sel)
        nonfinite_runs = sum(r["nonfinite_losses"] > 0 for r in sel)
        skipped = sum(r["skipped"] or 0 for r in sel) if any(r["skipped"] is not None for r in sel) else "-"
        errors = [r["error"] for r in sel if r["error"]]
        first = errors[0].replace("|", "\\|") if errors else ""
        table.append(f"| {part} | {config} | {len(sel)} | {steps} | {nonfinite} ({nonfinite_runs}) | {skipped} | "
                     f"{len(errors)} | {first} |")
    return table


def main(args):
    if args.quick:
        args.seeds, args.steps, args.bayes_seeds, args.bayes_steps = 1, 500, 2, 1000
        args.eval_samples, args.grid = 5000, 300
        args.vae_seeds, args.vae_families, args.vae_epochs, args.vae_num_train = 1, ["planar"], 1, 2000
    bayes_seeds = args.seeds if args.bayes_seeds is None else args.bayes_seeds
    bayes_steps = args.steps if args.bayes_steps is None else args.bayes_steps
    families = args.families or ALL_FAMILIES
    vae_families = args.vae_families or ALL_FAMILIES
    rows = []
    for target in args.targets:
        for family in families:
            for seed in range(args.seeds):
                rows.append(run_energy(target, family, seed, args.steps, args.eval_samples, args.grid))
                _print(rows[-1])
    for name in args.models:
        for lr in args.lrs:
            for guarded in (True, False):
                for seed in range(bayes_seeds):
                    rows.append(run_bayes(name, lr, guarded, seed, bayes_steps))
                    _print(rows[-1])
    if args.vae_epochs:
        for family in vae_families:
            for seed in range(args.vae_seeds):
                rows.append(run_vae(family, seed, args.vae_epochs, args.vae_num_train))
                _print(rows[-1])
    command = (f"python benchmarks/soak.py --seeds {args.seeds} --steps {args.steps} --families {' '.join(families)} "
               f"--targets {' '.join(args.targets)} --models {' '.join(args.models)} --lrs "
               + " ".join(map(str, args.lrs))
               + f" --bayes-seeds {bayes_seeds} --bayes-steps {bayes_steps}"
               + f" --eval-samples {args.eval_samples} --grid {args.grid} --vae-epochs {args.vae_epochs}"
               + (f" --vae-seeds {args.vae_seeds} --vae-families {' '.join(vae_families)} --vae-num-train "
                  f"{args.vae_num_train}" if args.vae_epochs else ""))
    full = (args.seeds, args.steps, bayes_seeds, bayes_steps, families, args.targets, args.vae_seeds, vae_families, args.vae_epochs,
            args.vae_num_train) == (20, 10000, 20, 10000, ALL_FAMILIES, TARGETS, 5, ALL_FAMILIES, 3, 50000)
    what = ("This is the issue's full setting." if full else
            "**This is a reduced setting, not the issue's full one** (20 seeds x every family x U1-U4 x 10,000 "
            "steps; eight schools and the funnel at lr 1e-3, 5e-3, 1e-2 for 20 seeds x 10,000 steps; 5 seeds x "
            "every family x 3 epochs of 50,000 images of the VAE). What ran: "
            f"energies {args.seeds} seed(s) x {', '.join(families)} x {', '.join(args.targets)} x {args.steps} steps; "
            f"{' and '.join(args.models)} at lr {', '.join(f'{lr:g}' for lr in args.lrs)} x {bayes_seeds} seed(s) "
            f"x {bayes_steps} steps; "
            + (f"VAE {args.vae_seeds} seed(s) x {', '.join(vae_families)} x {args.vae_epochs} epoch(s) of "
               f"{args.vae_num_train} images." if args.vae_epochs else "the VAE skipped."))
    intro = (
        f"{what} Per configuration (rows of every seed pooled): the runs, the steps taken, the non-finite "
        "losses (and the runs with any), the steps the guard skipped (FastSVI; '-': no guard), and the "
        "errors (exceptions caught; the first message shown). Energies: `fit_energy` defaults (8 layers, "
        f"128 particles, lr 1e-2 with cosine decay, annealing over half the steps; guard on), bound from "
        f"{args.eval_samples} draws, log Z on a {args.grid}^2 grid; a non-finite loss stops `fit_energy` with "
        "an error. Bayes: AutoFlowGuide (default family), Trace_ELBO with 4 vectorized particles, clip_norm "
        "10; FastSVI (guard on) versus Pyro's SVI + ClippedAdam (guard off, every step applied). VAE: "
        "pyro_nfvi.targets.vae's model (ELU), AmortizedFlowGuide with 8 layers, FastSVI (guard on), Adam lr 1e-3, batch "
        "100. Targets: zero non-finite losses with the guard off at the default learning rates, zero "
        "crashes with it on at every rate."
    )
    return write_report(args.out, "soak", command, rows, "Stability soak: non-finite losses, skipped steps, errors",
                        intro, _table(rows))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a reduced setting: energies 1 seed x 500 steps (5000 draws, 300^2 grid), bayes 2 seeds x "
                             "1000 steps, VAE 1 seed x planar x 1 epoch of 2000 images")
    parser.add_argument("--seeds", type=int, default=20, help="seeds of the energy (and bayes) runs")
    parser.add_argument("--steps", type=int, default=10000, help="steps of each energy (and bayes) run")
    parser.add_argument("--families", nargs="+", choices=ALL_FAMILIES, help="energy families (default: all)")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=TARGETS, help="energy targets")
    parser.add_argument("--eval-samples", type=int, default=20000, help="draws of fit_energy's final bound")
    parser.add_argument("--grid", type=int, default=1000, help="grid cells per axis of fit_energy's log Z")
    parser.add_argument("--models", nargs="*", choices=sorted(MODELS), default=BAYES, help="bayes models")
    parser.add_argument("--bayes-seeds", type=int, help="seeds of the bayes runs (default: --seeds)")
    parser.add_argument("--bayes-steps", type=int, help="steps of each bayes run (default: --steps)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3, 1e-2], help="bayes learning rates")
    parser.add_argument("--vae-epochs", type=int, default=3, help="VAE epochs (0: skip the VAE)")
    parser.add_argument("--vae-seeds", type=int, default=5, help="VAE seeds")
    parser.add_argument("--vae-families", nargs="+", choices=ALL_FAMILIES, help="VAE families (default: all)")
    parser.add_argument("--vae-num-train", type=int, default=50000, help="training images of the VAE")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
