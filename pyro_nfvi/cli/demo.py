"""``nfvi demo``: fit a 2-D energy of Rezende & Mohamed with a flow guide and print the fitted bound."""
import sys

from ..targets import ENERGIES
from ..transforms import FAMILIES
from .arguments import check_output_path, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers):
    """Add the ``demo`` subcommand to ``subparsers`` and return its parser."""
    p = subparsers.add_parser(
        "demo",
        help="fit a 2-D energy of Rezende & Mohamed with a flow and print the fitted bound",
        description=(
            "Fit an AutoFlowGuide q = flow(N(mu, diag sigma^2)) to the Pyro model of p(z) ~ exp(-U(z)) "
            "with FastSVI (Adam, cosine learning-rate decay) on the annealed free energy of Rezende & "
            "Mohamed (AnnealedELBO, mode='free_energy'), then print the bound E_q[-U - log q] = "
            "log Z - KL(q||p), the grid log Z and the gap (an estimate of KL). The inverse temperature "
            "rises as beta_t = 0.01 + 0.99 min(1, t/T) with T = ANNEAL * STEPS (R&M: T = 10^4). Exits "
            "with status 1 if the fit diverges (then try a smaller --lr)."
        ),
    )
    p.add_argument("--target", choices=sorted(ENERGIES), default="U1", help="energy (default: U1)")
    p.add_argument("--flow", choices=sorted(FAMILIES) + ["none"], default="planar",
                   help="flow family (default: planar)")
    p.add_argument("--num-flows", type=int, default=16, help="number of flow layers K (default: 16)")
    p.add_argument("--steps", type=int, default=3000, help="optimisation steps (default: 3000)")
    p.add_argument("--samples", type=positive_int, default=128, help="samples per step (default: 128)")
    p.add_argument("--lr", type=float, default=1e-2, help="initial Adam learning rate (default: 0.01)")
    p.add_argument("--anneal", type=float, default=0.5,
                   help="fraction of the steps over which beta rises to 1 (default: 0.5)")
    p.add_argument("--eval-samples", type=positive_int, default=20000,
                   help="samples for the bound estimates (default: 20000)")
    p.add_argument("--log-every", type=int, default=500, help="report every N steps (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--plot", metavar="PATH", default=None,
                   help="save a figure of the target and of q's samples to PATH (e.g. demo.png)")
    p.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="write a checkpoint of the fit to PATH every --checkpoint-every steps (atomic)")
    p.add_argument("--checkpoint-every", type=positive_int, default=500, metavar="N",
                   help="steps between checkpoints (default: 500)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint if it exists (same settings); the result is identical "
                        "to an uninterrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-step reports")
    p.set_defaults(run=run)
    return p


def run(args):
    """Run ``nfvi demo`` with parsed ``args``; return the exit code."""
    from ..targets import fit_energy, plot_energy_fits

    if args.plot:
        check_output_path("--plot", args.plot)
    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint PATH (the checkpoint to continue from)")
    if args.checkpoint:
        check_output_path("--checkpoint", args.checkpoint)
    steps = args.steps
    anneal_steps = int(round(args.anneal * steps))
    schedule = f"beta_t = 0.01 + 0.99 min(1, t/{anneal_steps})" if anneal_steps > 0 else "beta = 1"
    print(
        f"nfvi demo: {args.target} of Rezende & Mohamed (2015); q = AutoFlowGuide, {args.flow} flow "
        f"(K={args.num_flows}) on N(mu, diag sigma^2)\n"
        f"  {steps} steps x {args.samples} samples, Adam lr {args.lr:g} (cosine decay), "
        f"AnnealedELBO free energy, {schedule}",
        flush=True,
    )
    try:
        fit = fit_energy(
            target=args.target,
            flow=args.flow,
            num_flows=args.num_flows,
            steps=steps,
            samples=args.samples,
            lr=args.lr,
            anneal=args.anneal,
            seed=args.seed,
            eval_samples=args.eval_samples,
            log_every=0 if args.quiet else args.log_every,
            progress=not args.quiet and sys.stderr.isatty(),
            verbose=not args.quiet,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
        )
    except FloatingPointError as err:
        print(f"nfvi demo: error: {err}", file=sys.stderr)
        return 1
    print(f"initial bound : {fit.initial_bound:.4f}")
    print(f"fitted bound  : {fit.bound:.4f} +- {fit.bound_se:.4f}  "
          f"(E_q[-U(z) - log q(z)], {args.eval_samples} samples)")
    print(f"log Z (grid)  : {fit.log_z:.4f}")
    print(f"gap = log Z - bound (estimate of KL(q||p)) : {fit.kl:.4f}")
    print(f"time          : {fit.seconds:.1f} s")
    if args.plot:
        plot_energy_fits(fit, args.plot)
        print(f"figure        : {args.plot}")
    return 0


