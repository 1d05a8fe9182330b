"""``nfvi demo``: the plugin's job in two minutes -- swap a model's guide for a flow, fit with SVI, check against NUTS.

Two parts, both by default (``--only`` picks one), each with a tqdm progress bar (``--quiet``: none):

1. **eight schools**, centered (:mod:`pyro_nfvi.cli.eight_schools`): Pyro's ``AutoNormal`` under
   plain ``SVI`` against ``AutoFlowGuide`` under the recommended recipe :func:`pyro_nfvi.fit`, each
   compared with the shipped NUTS draws: moment errors (raw and importance-corrected), PSIS k-hat, ``arviz.summary`` of tau and
   theta, and the importance-corrected PSIS-LOO next to NUTS's;
2. **U1** of Rezende & Mohamed (2015) (:func:`pyro_nfvi.targets.fit_energy`): ``AutoFlowGuide(flow=
   "planar")`` on ``energy_model("U1")`` by annealed VI, with the bound, the grid log Z and their gap
   (a KL estimate); ``--checkpoint``/``--resume`` as before.

The report goes to ``--out`` (default ``runs/demo``, created before any fit): ``summary.md`` (the
tables, the settings, the command, date, machine and timings), ``tau.png`` (tau's posterior: NUTS,
AutoNormal, the flow), ``u1.png`` (the target density and q's samples) and the InferenceData of
each guide as netCDF (``eight_schools_autonormal.nc``, ``eight_schools_flow.nc``).  The terminal
shows the tables and the report's path.
"""
import contextlib
import datetime
import os
import sys
import time

from ..targets import ENERGIES
from ..transforms import FAMILIES
from .arguments import check_device, check_output_folder, check_output_path, positive_int
from .report import Table, command_line, machine_description

__all__ = ["DEFAULT_OUT", "PARTS", "add_parser", "run"]

#: The report folder when ``--out`` is not given.
DEFAULT_OUT = os.path.join("runs", "demo")

#: The parts of the demo, in the order they run (``--only`` picks one).
PARTS = ("eight-schools", "energy")


def add_parser(subparsers):
    """Add the ``demo`` subcommand to ``subparsers`` and return its parser."""
    p = subparsers.add_parser(
        "demo",
        help="eight schools: AutoNormal vs AutoFlowGuide against NUTS; U1 with a planar flow; a report folder",
        description=(
            "The plugin's job in two minutes. (1) Eight schools, centered: Pyro's AutoNormal (SVI, "
            "ClippedAdam, Trace_ELBO) against AutoFlowGuide (sinh-arcsinh marginals, theta decentered) fitted by "
            "pyro_nfvi.fit (warm start, learning-rate probes, the ELBO), each compared with the shipped NUTS "
            "draws: max |mean error| / NUTS sd and max |sd ratio - 1| (unconstrained scale), PSIS k-hat, "
            "arviz.summary of tau and theta, importance-corrected PSIS-LOO. (2) U1 of Rezende & Mohamed: "
            "AutoFlowGuide(flow='planar') on energy_model('U1') by annealed VI (beta_t = 0.01 + 0.99 "
            "min(1, t/T), T = ANNEAL * ENERGY_STEPS), with the bound E_q[-U - log q] = log Z - KL(q||p), "
            "the grid log Z and their gap. Writes summary.md, tau.png, u1.png and netCDF InferenceData "
            "to --out. Exit status 1 if a fit diverges, 2 for a bad argument, 130 after Ctrl-C."
        ),
    )
    common = p.add_argument_group("report and run")
    common.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                        help=f"report folder, created if needed (default: {DEFAULT_OUT})")
    common.add_argument("--only", choices=PARTS, default=None, help="run one part only (default: both)")
    common.add_argument("--seed", type=int, default=0, help="random seed of every fit (default: 0)")
    common.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N] (default: cpu)")
    common.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (default: 1; the demo's tensors are small, and more threads "
                             "only contend, badly so on a busy machine)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")

    schools = p.add_argument_group("eight schools")
    schools.add_argument("--schools-steps", type=positive_int, default=1000, metavar="N",
                         help="SVI steps of AutoNormal and of the recipe's main run; the recipe adds a warm "
                              "start of N/2 and 3 probes of max(10, N/20) steps (default: 1000)")
    schools.add_argument("--schools-lr", type=float, default=0.01, metavar="LR",
                         help="AutoNormal's learning rate (the recipe picks its own) (default: 0.01)")
    schools.add_argument("--draws", type=positive_int, default=4000,
                         help="draws per guide for the errors, k-hat, LOO and InferenceData (default: 4000)")

    energy = p.add_argument_group("energy (U1)")
    energy.add_argument("--target", choices=sorted(ENERGIES), default="U1", help="energy (default: U1)")
    energy.add_argument("--flow", choices=sorted(FAMILIES) + ["none"], default="planar",
                        help="flow family (default: planar)")
    energy.add_argument("--num-flows", type=positive_int, default=16, help="number of flow layers K (default: 16)")
    energy.add_argument("--energy-steps", type=positive_int, default=2000, metavar="N",
                        help="optimisation steps (default: 2000)")
    energy.add_argument("--samples", type=positive_int, default=128, help="samples per step (default: 128)")
    energy.add_argument("--lr", type=float, default=1e-2, help="initial Adam learning rate (default: 0.01)")
    energy.add_argument("--anneal", type=float, default=0.5,
                        help="fraction of the steps over which beta rises to 1 (default: 0.5)")
    energy.add_argument("--eval-samples", type=positive_int, default=20000,
                        help="samples for the bound estimates (default: 20000)")
    energy.add_argument("--log-every", type=int, default=0, metavar="N",
                        help="print beta and a bound estimate every N steps (default: 0, never)")
    energy.add_argument("--checkpoint", metavar="PATH", default=None,
                        help="write a checkpoint of the fit to PATH every --checkpoint-every steps (atomic)")
    energy.add_argument("--checkpoint-every", type=positive_int, default=500, metavar="N",
                        help="steps between checkpoints (default: 500)")
    energy.add_argument("--resume", action="store_true",
                        help="continue from --checkpoint if it exists (same settings); the result is identical "
                             "to an uninterrupted run")
    p.set_defaults(run=run)
    return p


def _check(args):
    """Every argument check, before any work: raise ``ValueError`` naming the argument."""
    from ..evaluation.psis import MIN_PSIS_DRAWS

    device = check_device("--device", args.device)
    for option, value, minimum in (("--draws", args.draws, MIN_PSIS_DRAWS), ("--samples", args.samples, 2),
                                   ("--eval-samples", args.eval_samples, 2)):
        if value < minimum:  # else the fits would run first and the evaluation fail after them
            raise ValueError(f"{option} must be at least {minimum}, got {value}")
    for option, value in (("--schools-lr", args.schools_lr), ("--lr", args.lr)):
        if not value > 0:
            raise ValueError(f"{option} must be positive, got {value}")
    if not 0.0 <= args.anneal <= 1.0:
        raise ValueError(f"--anneal must lie in [0, 1], got {args.anneal}")
    if args.log_every < 0:
        raise ValueError(f"--log-every must be >= 0, got {args.log_every}")
    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint PATH (the checkpoint to continue from)")
    if args.checkpoint:
        if args.only == "eight-schools":
            raise ValueError("--checkpoint is for the energy fit, which --only eight-schools skips")
        check_output_path("--checkpoint", args.checkpoint)
    check_output_folder("--out", args.out)
    return device


def _f(value, digits=2):
    return f"{value:.{digits}f}"


def _posterior_table(result, var_names=("mu", "tau", "theta")):
    """``az.summary`` (mean, sd, 94% HDI) of each variable under NUTS and each guide, one column each."""
    import arviz as az

    columns = {"NUTS": result.nuts_idata}
    columns.update((g.name, g.idata) for g in result.guides)
    summaries = {name: az.summary(idata, var_names=list(var_names), kind="stats") for name, idata in columns.items()}
    rows = []
    for label in summaries["NUTS"].index:
        cells = [label]
        for summary in summaries.values():
            row = summary.loc[label]
            cells.append(f"{row['mean']:.2f} ± {row['sd']:.2f} [{row['hdi_3%']:.2f}, {row['hdi_97%']:.2f}]")
        rows.append(cells)
    return Table(["variable"] + [f"{name}: mean ± sd [94% HDI]" for name in columns], rows)


def _guide_table(result):
    """Per guide (and NUTS): steps, seconds, moment errors, PSIS k-hat, the importance-corrected errors and PSIS-LOO."""
    nuts = result.nuts_info.get("nuts") or {}
    seconds = nuts.get("seconds")
    rows = [["NUTS (reference)", "-", "-" if seconds is None else f"{seconds:.0f}", "0", "0", "-", "-",
             f"{result.nuts_loo.elpd_loo:.2f} ± {result.nuts_loo.se:.2f}", _f(result.nuts_loo.p_loo),
             _f(float(result.nuts_loo.pareto_k.max()))]]
    for g in result.guides:
        psis = "-" if g.corrected is None else f"{_f(g.corrected.mean)} / {_f(g.corrected.sd)}"
        rows.append([g.name, str(g.steps), f"{g.seconds:.1f}", _f(g.error.mean), _f(g.error.sd), _f(g.khat), psis,
                     f"{g.loo.elpd_loo:.2f} ± {g.loo.se:.2f}", _f(g.loo.p_loo), _f(float(g.loo.pareto_k.max()))])
    header = ["guide", "SVI steps", "seconds", "mean error (sd)", "sd error", "PSIS k-hat",
              "PSIS-corrected mean / sd error", "elpd_loo ± se",
              "p_loo", "max Pareto k (LOO)"]
    return Table(header, rows)


def _energy_table(fit, args):
    return Table(
        ["target", "flow", "K", "steps", "samples", "initial bound", "bound ± se", "log Z (grid)", "KL estimate",
         "seconds"],
        [[fit.target, fit.flow, str(fit.num_flows), str(fit.steps), str(args.samples), f"{fit.initial_bound:.4f}",
          f"{fit.bound:.4f} ± {fit.bound_se:.4f}", f"{fit.log_z:.4f}", f"{fit.kl:.4f}", f"{fit.seconds:.1f}"]],
    )


def _run_eight_schools(args, device, report, files):
    from ..diagnostics import plot_marginals
    from .eight_schools import compare

    result = compare(steps=args.schools_steps, lr=args.schools_lr, num_samples=args.draws, seed=args.seed,
                     device=device, progress=not args.quiet)
    autonormal, flow = result.guides
    for guide, name in ((autonormal, "eight_schools_autonormal.nc"), (flow, "eight_schools_flow.nc")):
        guide.idata.to_netcdf(os.path.join(args.out, name))
        files.append((name, f"arviz.InferenceData of {guide.name}'s {args.draws} draws (az.from_netcdf)"))
    plot_marginals({"NUTS": result.nuts_idata, autonormal.name: autonormal.idata, flow.name: flow.idata}, "tau",
                   os.path.join(args.out, "tau.png"), title="eight schools (centered): posterior of tau")
    files.append(("tau.png", "tau's posterior: NUTS, AutoNormal and the flow"))
    guides, posterior, verdict = _guide_table(result), _posterior_table(result), result.verdict()
    info = result.nuts_info
    nan = float("nan")
    reference = (f"{len(result.nuts_idata.posterior.draw)} draws of {info.get('source', 'NUTS')} (split R-hat max "
                 f"{info.get('rhat_max', nan):.3f}, bulk ESS min {info.get('ess_bulk_min', nan):.0f})")
    report.append(
        "## 1. Eight schools (centered): AutoNormal vs AutoFlowGuide, against NUTS\n\n"
        "`pyro_nfvi.targets.bayes.eight_schools(centered=True)`: `mu ~ N(0, 5)`, `tau ~ HalfCauchy(5)`, "
        "`theta_j ~ N(mu, tau)`, `y_j ~ N(theta_j, sigma_j)`. The same model, two guides, both through SVI:\n\n"
        + "".join(f"- **{g.name}**: {g.how}; {g.steps} steps in all, {g.seconds:.1f} s\n" for g in result.guides)
        + f"- **NUTS reference**: {reference}\n\n"
        + guides.markdown()
        + f"\n\n**Which is closer to NUTS:** {verdict}\n\n"
        "Mean error = max over mu, tau, theta of |mean_q - mean_NUTS| / sd_NUTS, "
        "sd error = max |sd_q / sd_NUTS - 1|, "
        "both on the unconstrained scale (log tau) (`pyro_nfvi.evaluation.posterior_error`, "
        f"{args.draws} draws); PSIS k-hat of the importance weights p(y, z) / q(z) (< 0.5 good, < 0.7 usable, "
        "Yao et al. 2018); elpd_loo: PSIS-LOO, importance-corrected for the guides (`pyro_nfvi.diagnostics.loo`, "
        "Magnusson et al. 2019), `arviz.loo` for NUTS. NUTS's seconds: the shipped reference run's wall time "
        "(`benchmarks/nuts_reference.py`), not run here.\n\n"
        "### Posterior of mu, tau and theta (`az.summary`)\n\n"
        + posterior.markdown()
        + "\n\n![tau's posterior](tau.png)\n"
    )
    print("\nEight schools (centered), against NUTS:")
    print(guides.text())
    print(f"Which is closer to NUTS: {verdict}\n")
    print(posterior.text())


def _run_energy(args, report, files):
    from .. import targets

    steps = args.energy_steps
    anneal_steps = int(round(args.anneal * steps))
    schedule = f"beta_t = 0.01 + 0.99 min(1, t/{anneal_steps})" if anneal_steps > 0 else "beta = 1"
    # the bar shows beta and a bound estimate (log_every > 0); lines are printed only with --log-every
    log_every = args.log_every or (0 if args.quiet else max(1, steps // 20))
    fit = targets.fit_energy(
        target=args.target, flow=args.flow, num_flows=args.num_flows, steps=steps, samples=args.samples,
        lr=args.lr, anneal=args.anneal, seed=args.seed, eval_samples=args.eval_samples, log_every=log_every,
        progress=not args.quiet, verbose=bool(args.log_every) and not args.quiet, checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every, resume=args.resume,
    )
    figure = f"{args.target.lower()}.png"
    targets.plot_energy_fits(fit, os.path.join(args.out, figure))
    files.append((figure, f"exp(-{args.target}) and a histogram of q's samples"))
    table = _energy_table(fit, args)
    report.append(
        f"## 2. {args.target} of Rezende & Mohamed (2015)\n\n"
        f"`AutoFlowGuide(energy_model(\"{args.target}\"), flow=\"{args.flow}\", num_flows={args.num_flows})` "
        f"on N(mu, diag sigma^2), fitted by `pyro_nfvi.targets.fit_energy`: {steps} FastSVI steps x {args.samples} "
        f"samples, Adam lr {args.lr:g} (cosine decay), annealed free energy, {schedule}. The bound "
        f"E_q[-U(z) - log q(z)] = log Z - KL(q || p) ({args.eval_samples} samples), log Z on a grid, and their "
        "gap, an estimate of KL(q || p).\n\n"
        + table.markdown()
        + f"\n\n![{args.target}: target and q]({figure})\n"
    )
    print(f"\n{args.target} of Rezende & Mohamed, {args.flow} flow (K={args.num_flows}), {schedule}:")
    print(table.text())


def run(args):
    """Run ``nfvi demo`` with parsed ``args``; return the exit code."""
    import torch

    device = _check(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(threads)


def _run(args, device):
    import torch

    argv = getattr(args, "argv", None)
    started = datetime.datetime.now(datetime.timezone.utc)
    # the cores may be shared: the load says how far the wall times below are from an idle machine's
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"
    parts = PARTS if args.only is None else (args.only,)
    print(f"nfvi demo: {', '.join(parts)}; report in {args.out}", flush=True)
    report, files, seconds = [], [], {}
    start = time.perf_counter()
    try:
        # a non-CPU device becomes the default for new tensors (the models' constants, the guides' parameters);
        # on the CPU no mode is entered, since a torch function mode slows every one of Pyro's small ops
        with contextlib.nullcontext() if device.type == "cpu" else torch.device(device):
            for part in parts:
                t0 = time.perf_counter()
                if part == "eight-schools":
                    _run_eight_schools(args, device, report, files)
                else:
                    _run_energy(args, report, files)
                seconds[part] = time.perf_counter() - t0
    except FloatingPointError as err:
        print(f"nfvi demo: error: {err}", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    timing = ", ".join(f"{part} {s:.1f} s" for part, s in seconds.items())
    header = (
        "# nfvi demo\n\n"
        f"- command: `{command_line('nfvi', argv if argv is not None else ['demo'])}`\n"
        f"- date: {started:%Y-%m-%d %H:%M} UTC\n"
        f"- machine: {machine_description()}; load average at the start {load}\n"
        f"- wall time: {total:.1f} s of fitting and evaluation ({timing}; imports not counted), seed {args.seed}, "
        f"device {device}\n"
    )
    listing = "## Files\n\n" + "".join(f"- `{name}`: {what}\n" for name, what in files)
    path = os.path.join(args.out, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join([header] + report + [listing]))
    print(f"\nreport: {path} ({total:.0f} s)")
    return 0
