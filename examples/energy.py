"""Fit the 2-D energies U1-U4 of Rezende & Mohamed (2015) with flows of increasing length.

This reproduces, in spirit, the experiment of R&M's Figure 3: for each target
p(z) ~ exp(-U(z)) and each number of layers K, an AutoFlowGuide (a Gaussian pushed through K flow
layers) is fitted to the Pyro model of the target by FastSVI on the annealed free energy
(AnnealedELBO; see :func:`pyro_nfvi.targets.fit_energy`), and the script reports the
bound E_q[-U - log q] = log Z - KL(q || p), the grid log Z and the gap (an estimate of KL(q || p)).
U2-U4 are flat along z1, so the targets are restricted to [-4, 4]^2 by a soft wall (as in the
paper's plots; see :func:`pyro_nfvi.targets.target_energy`).

Usage::

    python examples/energy.py                                  # U1-U4, planar, K = 2, 8, 32
    python examples/energy.py --targets U1 U3 --flow radial --num-flows 4 16 --plot energy.png
"""
import argparse
import sys

from pyro_nfvi.targets import ENERGIES, fit_energy, plot_energy_fits
from pyro_nfvi.transforms import FAMILIES


def parse_args(args=None):
    """Parse the command line (``args``: list of strings, default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", choices=sorted(ENERGIES), default=sorted(ENERGIES),
                        help="energies to fit (default: U1 U2 U3 U4)")
    parser.add_argument("--flow", choices=sorted(FAMILIES) + ["none"], default="planar",
                        help="flow family (default: planar)")
    parser.add_argument("--num-flows", nargs="+", type=int, default=[2, 8, 32],
                        help="numbers of layers K to compare (default: 2 8 32, as in R&M Fig. 3)")
    parser.add_argument("--steps", type=int, default=3000, help="optimisation steps per fit")
    parser.add_argument("--samples", type=int, default=128, help="samples per step")
    parser.add_argument("--lr", type=float, default=1e-2, help="initial Adam learning rate")
    parser.add_argument("--anneal", type=float, default=0.5,
                        help="fraction of the steps over which beta rises from 0.01 to 1")
    parser.add_argument("--eval-samples", type=int, default=20000, help="samples for the final bound")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="save a figure (targets and samples of every fit) to PATH")
    parser.add_argument("--quiet", action="store_true", help="print only the final table")
    return parser.parse_args(args)


def main(args=None):
    """Run the sweep; ``args`` is a list of command-line strings or an ``argparse.Namespace``.

    Returns the list of :class:`~pyro_nfvi.targets.EnergyFit` results (one per target and K).
    """
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    fits = []
    for target in args.targets:
        for k in args.num_flows:
            fit = fit_energy(
                target=target,
                flow=args.flow,
                num_flows=k,
                steps=args.steps,
                samples=args.samples,
                lr=args.lr,
                anneal=args.anneal,
                seed=args.seed,
                eval_samples=args.eval_samples,
                log_every=0,
                progress=not args.quiet and sys.stderr.isatty(),
            )
            fits.append(fit)
            if not args.quiet:
                print(f"{target} {args.flow} K={k}: bound {fit.bound:.4f}, KL {fit.kl:.4f} "
                      f"({fit.seconds:.1f} s)", flush=True)
    print(f"\n{'target':<7}{'flow':<12}{'K':>4}{'bound':>10}{'+-':>8}{'log Z':>9}{'KL(q||p)':>10}")
    for fit in fits:
        print(f"{fit.target:<7}{fit.flow:<12}{fit.num_flows:>4}{fit.bound:>10.4f}{fit.bound_se:>8.4f}"
              f"{fit.log_z:>9.4f}{fit.kl:>10.4f}")
    if args.plot:
        plot_energy_fits(fits, args.plot)
        print(f"figure: {args.plot}")
    return fits


if __name__ == "__main__":
    main()
