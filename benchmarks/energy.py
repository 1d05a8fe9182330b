r"""Rezende & Mohamed's Figure 3 as a table: U1-U4 x flow family x K, bound, KL(q||p) and ms per step.

For each target :math:`p(z) \propto e^{-U(z) - B(z)}` (U1-U4 with the soft box wall
:math:`B` of :func:`pyro_nfvi.targets.target_energy`, grid :math:`\log Z` from
:func:`pyro_nfvi.targets.log_normalizer`), each family and each number of layers K:

* ``planar``, ``radial`` (R&M's) and ``iaf``, ``householder``, ``sylvester``, ``coupling`` (ours):
  :func:`pyro_nfvi.targets.fit_energy` -- ``AutoFlowGuide(energy_model(target), flow, K)`` trained
  by ``FastSVI`` on ``AnnealedELBO(Trace_ELBO(num_particles=samples, vectorized), mode="free_energy")``;
* ``pyro_planar``: Pyro's own ``AutoNormalizingFlow(model, partial(iterated, K, planar))`` (fixed
  N(0, I) base, Pyro's ``Planar`` layers) trained by plain Pyro ``SVI`` on the same objective, with
  the same optimiser (Adam, same learning rate and cosine decay), steps, particles and annealing.

The annealing is R&M's: :math:`\beta_t = 0.01 + 0.99\min(1, t/T)` with :math:`T = 10^4` updates
(``--anneal-steps``; at the default 20,000 steps, half the run; R&M train for far more updates).
After training, the bound :math:`\mathbb E_q[-U - \log q] = \log Z - \mathrm{KL}(q\|p)` is
estimated from ``--eval-samples`` draws (its standard error is in every row), and
:math:`\mathrm{KL} = \log Z - \text{bound}`; every row also keeps ``history``, ``(step, beta, bound)``
every 1000 steps (bound from 2,000 draws), to show whether the fit had converged.  ms/step is the wall time of the training loop per step.

Every finished row is appended at once to ``<out>/energy.json`` (with the histogram of 50,000 draws
of its ``q`` in ``<out>/energy_hist.npz``); a row already there with the same settings is skipped,
so the grid can be filled in several sittings.  A fit that diverges is a row too (its error and its
``history`` up to the failure; "diverged" in the table and the figures); ``--rerun-diverged`` runs
such cells again, appends the new row and reports it.  Each run rewrites ``<out>/energy.md`` (the table
of every stored row) and ``<out>/energy_grid.png`` (R&M's Figure 3: rows = targets, columns = the
true density and then ``q`` for planar K=2, 8, 32 and every other family at its largest K run) and,
per family, ``<out>/energy_grid_<family>.png`` (rows = targets, columns = the true density and ``q``
at each K run).

Usage::

    python benchmarks/energy.py                                         # the full grid (many CPU hours)
    python benchmarks/energy.py --targets U1 --families planar --num-flows 2 8 32
    python benchmarks/energy.py --targets U1 --families pyro_planar --num-flows 8 32
    python benchmarks/energy.py --steps 200 --out /tmp/energy           # a smoke run (not a measurement)
"""
import argparse
import datetime
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions.transforms as T
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow
from tqdm import tqdm

from pyro_nfvi.objectives import AnnealedELBO, constant, linear_warmup
from pyro_nfvi.targets import (
    ENERGIES,
    EnergyFitDiverged,
    energy_histogram,
    energy_model,
    estimate_bound,
    fit_energy,
    log_normalizer,
    plot_energy_panels,
    target_energy,
)
from pyro_nfvi.targets.fit import REPORT_SAMPLES
from report import machine, write_report

ROOT = Path(__file__).resolve().parent.parent
#: R&M's families, ours, then Pyro's built-in planar flow.
FAMILIES = ["planar", "radial", "iaf", "householder", "sylvester", "coupling", "pyro_planar"]
PYRO = "pyro_planar"
#: The settings that identify a row (a stored row with the same values is not rerun).
KEY = ("target", "family", "num_flows", "steps", "samples", "lr", "final_lr", "anneal_steps", "seed", "eval_samples")
#: Draws of each fitted q kept as a histogram for the figure, and its bins per axis on [-4, 4]^2.
FIGURE_SAMPLES, FIGURE_BINS, FIGURE_EXTENT = 50000, 100, 4.0
GRID = 1000  # cells per axis of the grid log Z
HISTORY_EVERY = 1000  # steps between the bound estimates (from REPORT_SAMPLES draws) kept in each row's history


def command_line(args):
    """The command that reproduces ``args`` (every setting spelled out)."""
    return (f"python benchmarks/energy.py --targets {' '.join(args.targets)} --families {' '.join(args.families)} "
            f"--num-flows {' '.join(map(str, args.num_flows))} --steps {args.steps} --samples {args.samples} "
            f"--lr {args.lr:g} --final-lr {args.final_lr:g} --anneal-steps {args.anneal_steps} "
            f"--eval-samples {args.eval_samples} --seed {args.seed}"
            + (" --rerun-diverged" if getattr(args, "rerun_diverged", False) else ""))


def anneal_steps(args):
    """:math:`T` of the run: ``--anneal-steps``, at most ``--steps``."""
    return min(args.anneal_steps, args.steps)


def fit_pyro_planar(target, num_flows, args, progress):
    """Fit ``AutoNormalizingFlow(model, partial(iterated, K, planar))`` with plain Pyro SVI; return ``(row, counts)``."""
    energy = target_energy(target)
    log_z = log_normalizer(target, grid=GRID)
    T_anneal = anneal_steps(args)
    schedule = linear_warmup(T_anneal, start=0.01) if T_anneal > 0 else constant(1.0)
    pyro.clear_param_store()
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        model = energy_model(target)
        guide = AutoNormalizingFlow(model, partial(T.iterated, num_flows, T.planar))
        guide()  # sets up the latent shape and the layers (their parameters go to Pyro's param store)
        initial_bound, _ = estimate_bound(guide, energy, args.eval_samples, args.seed)
        objective = AnnealedELBO(Trace_ELBO(num_particles=args.samples, vectorize_particles=True, max_plate_nesting=0),
                                 schedule=schedule, mode="free_energy")
        optim = pyro.optim.PyroLRScheduler(torch.optim.lr_scheduler.CosineAnnealingLR, {
            "optimizer": torch.optim.Adam, "optim_args": {"lr": args.lr}, "T_max": args.steps,
            "eta_min": args.lr * args.final_lr})
        svi = SVI(model, guide, optim, objective)
        bar = tqdm(range(1, args.steps + 1), desc=f"{target} {PYRO} K={num_flows}", disable=not progress, leave=False)
        losses, history = [], []
        train_start, train_cpu_start = time.perf_counter(), time.process_time()
        for step in bar:
            beta = objective.beta
            loss = svi.step()
            if not math.isfinite(loss):
                raise EnergyFitDiverged(f"the fit diverged at step {step}/{args.steps} (loss {loss}) with lr={args.lr:g}",
                                        step, history)
            optim.step()  # the learning-rate schedule
            losses.append(loss)
            if progress and (len(losses) == 100 or step == args.steps):
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.4g}", beta=f"{beta:.2f}", refresh=False)
                losses = []
            if step % HISTORY_EVERY == 0 or step == args.steps:
                history.append((step, beta, estimate_bound(guide, energy, min(REPORT_SAMPLES, args.eval_samples),
                                                           args.seed)[0]))
        bar.close()
        train_seconds = time.perf_counter() - train_start
        train_cpu_seconds = time.process_time() - train_cpu_start
        bound, bound_se = estimate_bound(guide, energy, args.eval_samples, args.seed)
        with torch.no_grad():
            torch.manual_seed(args.seed)
            z = guide.get_posterior().sample((FIGURE_SAMPLES,))
    if not math.isfinite(bound):
        raise EnergyFitDiverged(f"the fit diverged (final bound {bound}) with lr={args.lr:g}", args.steps, history)
    row = {"initial_bound": initial_bound, "bound": bound, "bound_se": bound_se, "log_z": log_z,
           "ms_per_step": 1000.0 * train_seconds / args.steps, "cpu_ms_per_step": 1000.0 * train_cpu_seconds / args.steps,
           "seconds": time.perf_counter() - start, "skipped": 0, "history": [list(h) for h in history]}
    return row, energy_histogram(z, FIGURE_BINS, FIGURE_EXTENT)


def fit_ours(target, family, num_flows, args, progress):
    """Fit ``AutoFlowGuide`` with :func:`~pyro_nfvi.targets.fit_energy`; return ``(row, counts)``."""
    fit = fit_energy(target=target, flow=family, num_flows=num_flows, steps=args.steps, samples=args.samples,
                     lr=args.lr, final_lr=args.final_lr, anneal=anneal_steps(args) / args.steps, seed=args.seed,
                     eval_samples=args.eval_samples, grid=GRID, log_every=HISTORY_EVERY, progress=progress)
    row = {"initial_bound": fit.initial_bound, "bound": fit.bound, "bound_se": fit.bound_se, "log_z": fit.log_z,
           "ms_per_step": fit.ms_per_step, "cpu_ms_per_step": 1000.0 * fit.train_cpu_seconds / fit.train_steps,
           "seconds": fit.seconds, "skipped": fit.skipped, "history": [list(h) for h in fit.history]}
    return row, energy_histogram(fit.sample(FIGURE_SAMPLES, seed=args.seed), FIGURE_BINS, FIGURE_EXTENT)


def run(target, family, num_flows, args, progress=False):
    """One row of the table (and the histogram of its ``q``, or ``None`` if the fit diverged)."""
    row = {"target": target, "family": family, "num_flows": num_flows, "steps": args.steps, "samples": args.samples,
           "lr": args.lr, "final_lr": args.final_lr, "anneal_steps": anneal_steps(args), "seed": args.seed,
           "eval_samples": args.eval_samples}
    try:
        if family == PYRO:
            result, counts = fit_pyro_planar(target, num_flows, args, progress)
        else:
            result, counts = fit_ours(target, family, num_flows, args, progress)
    except EnergyFitDiverged as err:  # the row keeps the error and the record up to it
        result, counts = {"bound": None, "error": str(err), "history": [list(h) for h in err.history]}, None
    row.update(result)
    if row["bound"] is not None:
        row["kl"] = row["log_z"] - row["bound"]
    row.update(command=command_line(args), machine=machine(), date=datetime.date.today().isoformat())
    return row, counts


def row_key(row):
    return tuple(row[k] for k in KEY)


def hist_name(row):
    return "/".join(str(row[k]) for k in KEY)


def load(out):
    """The stored rows and histograms of ``out`` (empty if none)."""
    path, hist_path = out / "energy.json", out / "energy_hist.npz"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    hists = dict(np.load(hist_path)) if hist_path.exists() else {}
    return rows, hists


def save_hists(out, hists):
    tmp = out / "energy_hist.tmp.npz"
    np.savez_compressed(tmp, **hists)
    tmp.replace(out / "energy_hist.npz")


def figure_columns(rows):
    """``(family, K)`` columns of the figure: planar K=2, 8, 32, then each other family at its largest K run."""
    done = {(r["family"], r["num_flows"]) for r in rows if r.get("bound") is not None}
    columns = [("planar", k) for k in (2, 8, 32) if ("planar", k) in done]
    for family in FAMILIES[1:]:
        ks = [k for f, k in done if f == family]
        if ks:
            columns.append((family, max(ks)))
    return columns


def best_rows(rows):
    """Per ``(target, family, K)`` the stored row with the most steps (then the latest): the one reported."""
    best = {}
    for r in rows:
        k = (r["target"], r["family"], r["num_flows"])
        if k not in best or r["steps"] >= best[k]["steps"]:
            best[k] = r
    return best


def panel_title_and_counts(row, family, k, hists):
    """``(title, counts)`` of one figure panel: the histogram of ``row``'s ``q`` (``None`` if not run, ``"diverged"``)."""
    if row is not None and row.get("bound") is None:
        return f"{'Pyro planar' if family == PYRO else family} K={k}", "diverged"
    counts = hists.get(hist_name(row)) if row is not None else None
    title = f"{'Pyro planar' if family == PYRO else family} K={k}" + (f"\nKL {row['kl']:.3f}" if counts is not None else "")
    return title, counts


def write_figure(out, rows, hists):
    best = best_rows(rows)
    columns = figure_columns(list(best.values()))
    targets = [t for t in sorted(ENERGIES) if any(k[0] == t for k in best)]
    if not columns or not targets:
        return None
    panels = {}
    for target in targets:
        panels[target] = []
        for family, k in columns:
            panels[target].append(panel_title_and_counts(best.get((target, family, k)), family, k, hists))
    path = plot_energy_panels(panels, out / "energy_grid.png", extent=FIGURE_EXTENT, panel_size=1.7, dpi=80)
    for family in dict.fromkeys(r["family"] for r in best.values()):
        ks = sorted({r["num_flows"] for r in best.values() if r["family"] == family})
        family_panels = {target: [panel_title_and_counts(best.get((target, family, k)), family, k, hists) for k in ks]
                         for target in targets}
        plot_energy_panels(family_panels, out / f"energy_grid_{family}.png", extent=FIGURE_EXTENT,
                           panel_size=1.7, dpi=80)
    return path


def checks(best):
    """The issue's targets on the stored rows, as markdown lines."""
    lines = []
    for k, bound in ((32, 0.01), (8, 0.05)):
        r = best.get(("U1", "planar", k))
        if r is not None and r.get("kl") is not None:
            ok = "met" if r["kl"] <= bound else "missed"
            lines.append(f"- U1 planar K={k}: KL {r['kl']:.4f} +- {r['bound_se']:.4f} (target <= {bound}): {ok} "
                         f"({r['steps']} steps).")
    for target in sorted(ENERGIES):
        kls = [(k, best[(target, "planar", k)].get("kl")) for k in (2, 8, 32) if (target, "planar", k) in best]
        if len(kls) == 3 and all(v is not None for _, v in kls):
            falls = kls[0][1] > kls[1][1] > kls[2][1]
            lines.append(f"- {target} planar: KL " + " > ".join(f"{v:.4f} (K={k})" for k, v in kls)
                         + (": falls with K." if falls else ": does NOT fall with K."))
    return lines


def write_tables(out, rows, hists):
    best = best_rows(rows)
    order = {f: i for i, f in enumerate(FAMILIES)}
    table = ["| target | family | K | steps | bound | +- | log Z | KL(q‖p) | ms/step | CPU ms/step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(best.values(), key=lambda r: (r["target"], order.get(r["family"], 99), r["num_flows"])):
        family = "Pyro AutoNormalizingFlow (planar)" if r["family"] == PYRO else r["family"]
        cpu = f"{r['cpu_ms_per_step']:.1f}" if r.get("cpu_ms_per_step") is not None else "-"
        if r.get("bound") is None:
            table.append(f"| {r['target']} | {family} | {r['num_flows']} | {r['steps']} | diverged | | | | | |")
            continue
        table.append(f"| {r['target']} | {family} | {r['num_flows']} | {r['steps']} | {r['bound']:.4f} | "
                     f"{r['bound_se']:.4f} | {r['log_z']:.4f} | {r['kl']:.4f} | {r['ms_per_step']:.1f} | {cpu} |")
    commands = list(dict.fromkeys(r["command"] for r in rows))
    machines = sorted({r["machine"] for r in rows})
    settings = sorted({(r["samples"], r["lr"], r["final_lr"], r["anneal_steps"], r["eval_samples"], r["seed"]) for r in rows})
    intro = (
        "Rezende & Mohamed (2015), Section 6.1 and Figure 3, as a table. Target: exp(-U(z) - B(z)) with the soft "
        "box wall B (box 4, wall 0.1); log Z on a 1000 x 1000 grid. Ours: `AutoFlowGuide(energy_model(target), "
        "flow, K)` + `FastSVI` (`fit_energy`); Pyro: `AutoNormalizingFlow(model, partial(iterated, K, planar))` "
        "(fixed N(0, I) base) + plain Pyro `SVI`. Both: `AnnealedELBO(Trace_ELBO(num_particles, vectorized), "
        "mode='free_energy')` with R&M's schedule beta_t = 0.01 + 0.99 min(1, t/T), Adam with cosine decay from "
        "lr to lr * final_lr. Settings (samples, lr, final_lr, T, eval samples, seed): "
        + "; ".join(str(s) for s in settings) + ". bound = E_q[-U - log q] from the eval samples (+- its standard "
        "error), KL(q‖p) = log Z - bound, ms/step = training wall time per step and CPU ms/step its process CPU "
        "time (one torch thread, rows run one after another on a machine shared with other jobs: the wall times "
        "include waiting for a core, the CPU times are the steadier measure of cost; '-': not recorded). R&M train for far more updates (5 x 10^5). "
        f"Machine(s): {'; '.join(machines)}. Every row records its steps; a row with fewer than 20000 steps is a "
        "reduced budget.\n\nCommands (one per sitting):\n\n" + "\n".join(f"    {c}" for c in commands)
    )
    lines = checks(best)
    table = table + ([""] + ["Targets of the issue (on the rows above):", ""] + lines if lines else [])
    command = "; ".join(commands)
    return write_report(out, "energy", command, rows, "Rezende & Mohamed's Figure 3 as a table", intro, table)


def main(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, hists = load(out)
    # a stored row is not rerun; a diverged one is with --rerun-diverged (the new row is appended and
    # reported, the old one stays in the JSON as the record of that sitting)
    done = {row_key(r) for r in rows if r.get("bound") is not None or not args.rerun_diverged}
    for target in args.targets:
        for family in args.families:
            for k in args.num_flows:
                key = (target, family, k, args.steps, args.samples, args.lr, args.final_lr, anneal_steps(args),
                       args.seed, args.eval_samples)
                if key in done:
                    print(f"{target} {family} K={k}: already in {out / 'energy.json'}, skipped", flush=True)
                    continue
                row, counts = run(target, family, k, args, progress=args.progress)
                rows.append(row)
                done.add(key)
                if counts is not None:
                    hists[hist_name(row)] = counts.astype(np.uint16)
                    save_hists(out, hists)
                write_tables(out, rows, hists)  # the JSON holds every finished row at once
                if row["bound"] is None:
                    print(f"{target} {family} K={k}: {row['error']}", flush=True)
                else:
                    print(f"{target} {family:12s} K={k:<3d} bound {row['bound']:.4f} +- {row['bound_se']:.4f} "
                          f"log Z {row['log_z']:.4f} KL {row['kl']:.4f} {row['ms_per_step']:.1f} ms/step "
                          f"({row['seconds']:.0f} s)", flush=True)
    report = write_tables(out, rows, hists) if rows else {"rows": []}
    write_figure(out, rows, hists)
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", choices=sorted(ENERGIES), default=sorted(ENERGIES), help="energies")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=FAMILIES, help="flow families")
    parser.add_argument("--num-flows", nargs="+", type=int, default=[2, 8, 32], help="numbers of layers K")
    parser.add_argument("--steps", type=int, default=20000, help="optimisation steps per fit (default: 20000)")
    parser.add_argument("--samples", type=int, default=100, help="particles per step (default: 100)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument("--final-lr", type=float, default=0.05,
                        help="final learning rate as a fraction of --lr, cosine decay (default: 0.05; 1: constant)")
    parser.add_argument("--anneal-steps", type=int, default=10000,
                        help="T of beta_t = 0.01 + 0.99 min(1, t/T) (default: R&M's 10000; at most --steps)")
    parser.add_argument("--eval-samples", type=int, default=200000,
                        help="draws for the final bound (default: 200000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per fit (loss and beta)")
    parser.add_argument("--rerun-diverged", action="store_true",
                        help="run again the cells whose stored row diverged (the new row is reported)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    args = parser.parse_args(argv)
    for name in ("steps", "samples", "eval_samples"):
        if getattr(args, name) < (2 if name != "steps" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if min(args.num_flows) < 1:
        parser.error(f"--num-flows must be positive, got {args.num_flows}")
    if not 0 < args.final_lr <= 1:
        parser.error(f"--final-lr must be in (0, 1], got {args.final_lr}")
    if args.anneal_steps < 0:
        parser.error(f"--anneal-steps must be >= 0, got {args.anneal_steps}")
    return args


if __name__ == "__main__":
    main(parse_args())
