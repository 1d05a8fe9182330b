r"""``nfvi energy``: one cell of Rezende & Mohamed's Figure 3 -- a flow fitted to U1-U4, with its KL(q||p).

Fits ``AutoFlowGuide(energy_model(target), flow, K)`` with :func:`pyro_nfvi.targets.fit_energy` on
R&M's budget shape (100 particles, Adam 1e-3, :math:`\beta_t = 0.01 + 0.99\min(1, t/T)`,
:math:`T = 10^4`), prints the bound :math:`\mathbb E_q[-U - \log q]`, the grid :math:`\log Z`, their
gap :math:`\mathrm{KL}(q\,\|\,p)` and the milliseconds per step, and writes
``energy_<target>_<flow>_K<K>.json`` and ``.png`` (the target and a histogram of ``q``) to ``--out``.
The whole grid (every target, family and K, with Pyro's own planar flow next to it) is
``benchmarks/energy.py``.
"""
import json
import os
import sys

import torch

from ..targets import ENERGIES
from ..transforms import FAMILIES
from .arguments import check_output_folder, non_negative_int, positive_float, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers):
    """Add the ``energy`` subcommand to ``subparsers`` and return its parser."""
    p = subparsers.add_parser(
        "energy",
        help="fit a flow to U1-U4 on Rezende & Mohamed's budget and report the bound, KL(q||p) and ms/step",
        description=(
            "One cell of Rezende & Mohamed's Figure 3: fit an AutoFlowGuide q = flow(N(mu, diag sigma^2)) to the "
            "Pyro model of p(z) ~ exp(-U(z)) (U2-U4 inside a soft box wall at |z_i| = 4) with FastSVI on the "
            "annealed free energy (AnnealedELBO, mode='free_energy'), beta_t = 0.01 + 0.99 min(1, t/T) with R&M's "
            "T = 10^4 (at most --steps), Adam with a cosine learning-rate decay to lr * FINAL_LR. Prints the bound "
            "E_q[-U - log q] = log Z - KL(q||p), the grid log Z, KL(q||p) and the milliseconds per step, and writes "
            "energy_<target>_<flow>_K<K>.json and .png to --out. Exits with status 1 if the fit diverges (then "
            "try a smaller --lr), 2 for a bad argument (before any work)."
        ),
    )
    p.add_argument("--target", choices=sorted(ENERGIES), default="U1", help="energy (default: U1)")
    p.add_argument("--flow", choices=sorted(FAMILIES), default="planar", help="flow family (default: planar)")
    p.add_argument("--num-flows", type=positive_int, default=32, help="number of flow layers K (default: 32)")
    p.add_argument("--steps", type=positive_int, default=20000, help="optimisation steps (default: 20000)")
    p.add_argument("--samples", type=positive_int, default=100, help="particles per step (default: 100)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="initial Adam learning rate (default: 0.001)")
    p.add_argument("--final-lr", type=positive_float, default=0.05,
                   help="final learning rate as a fraction of --lr, in (0, 1] (default: 0.05; 1: constant)")
    p.add_argument("--anneal-steps", type=non_negative_int, default=10000,
                   help="T of the annealing, capped at --steps; 0: beta = 1 throughout (default: R&M's 10000)")
    p.add_argument("--eval-samples", type=positive_int, default=100000,
                   help="draws for the final bound and its standard error (default: 100000)")
    p.add_argument("--log-every", type=non_negative_int, default=1000,
                   help="print beta, the free energy and a bound estimate every N steps (default: 1000; 0: never)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", default="energy_out", metavar="DIR",
                   help="folder for the result JSON and the figure (created; default: energy_out)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                   help="device of the fit (default: cpu; auto: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-step reports")
    p.set_defaults(run=run)
    return p


def check_args(args):
    """Refuse bad settings with a ``ValueError`` before any work; return the ``torch.device`` to use."""
    if args.final_lr > 1:
        raise ValueError(f"--final-lr must be in (0, 1] (a fraction of --lr), got {args.final_lr:g}")
    if args.eval_samples < 2:
        raise ValueError(f"--eval-samples must be at least 2 (for a standard error), got {args.eval_samples}")
    if args.samples < 2:
        raise ValueError(f"--samples must be at least 2, got {args.samples}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    check_output_folder("--out", args.out)
    return torch.device(device)


def run(args):
    """Run ``nfvi energy`` with parsed ``args``; return the exit code."""
    from ..targets import fit_energy, plot_energy_fits

    device = check_args(args)
    anneal_steps = min(args.anneal_steps, args.steps)
    stem = os.path.join(args.out, f"energy_{args.target}_{args.flow}_K{args.num_flows}")
    schedule = f"beta_t = 0.01 + 0.99 min(1, t/{anneal_steps})" if anneal_steps > 0 else "beta = 1"
    print(
        f"nfvi energy: {args.target} of Rezende & Mohamed (2015); q = AutoFlowGuide, {args.flow} flow "
        f"(K={args.num_flows}) on N(mu, diag sigma^2), {device}\n"
        f"  {args.steps} steps x {args.samples} samples, Adam lr {args.lr:g} (cosine decay to x{args.final_lr:g}), "
        f"AnnealedELBO free energy, {schedule}",
        flush=True,
    )
    try:
        with device:
            fit = fit_energy(
                target=args.target,
                flow=args.flow,
                num_flows=args.num_flows,
                steps=args.steps,
                samples=args.samples,
                lr=args.lr,
                final_lr=args.final_lr,
                anneal=anneal_steps / args.steps,
                seed=args.seed,
                eval_samples=args.eval_samples,
                log_every=0 if args.quiet else args.log_every,
                progress=not args.quiet and sys.stderr.isatty(),
                verbose=not args.quiet,
            )
    except FloatingPointError as err:
        print(f"nfvi energy: error: {err}", file=sys.stderr)
        return 1
    result = {
        "target": args.target, "flow": args.flow, "num_flows": args.num_flows, "steps": args.steps,
        "samples": args.samples, "lr": args.lr, "final_lr": args.final_lr, "anneal_steps": anneal_steps,
        "seed": args.seed, "eval_samples": args.eval_samples, "device": str(device),
        "initial_bound": fit.initial_bound, "bound": fit.bound, "bound_se": fit.bound_se, "log_z": fit.log_z,
        "kl": fit.kl, "ms_per_step": fit.ms_per_step,
        "cpu_ms_per_step": 1000.0 * fit.train_cpu_seconds / fit.train_steps, "seconds": fit.seconds, "skipped": fit.skipped,
        "history": [{"step": s, "beta": b, "bound": v} for s, b, v in fit.history],
        "torch": torch.__version__,
    }
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    plot_energy_fits(fit, stem + ".png")
    print(f"bound         : {fit.bound:.4f} +- {fit.bound_se:.4f}  (E_q[-U(z) - log q(z)], "
          f"{args.eval_samples} samples)")
    print(f"log Z (grid)  : {fit.log_z:.4f}")
    print(f"KL(q||p)      : {fit.kl:.4f}  (log Z - bound)")
    print(f"ms per step   : {fit.ms_per_step:.2f}")
    print(f"results       : {stem}.json, {stem}.png")
    return 0
