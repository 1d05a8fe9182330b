"""The ``nfvi`` command line (also ``python -m pyro_nfvi.cli``).

Subcommands, each a module of this package with ``add_parser(subparsers)`` and ``run(args) -> exit code``,
listed in :data:`SUBCOMMANDS`:

* ``demo`` -- fit a 2-D energy of Rezende & Mohamed (2015), U1 by default, with an
  :class:`~pyro_nfvi.guides.AutoFlowGuide` trained by :class:`~pyro_nfvi.guides.FastSVI` on the
  annealed free energy (:func:`pyro_nfvi.targets.fit_energy`), and print the fitted bound, the grid
  log Z and their gap (an estimate of KL(q || p)).  ``--checkpoint PATH`` writes an atomic checkpoint
  every ``--checkpoint-every`` steps; ``--resume`` continues from it, with the same result as an
  uninterrupted run.  Exit status 1 if the fit diverges (the message names the learning rate), 2 for
  a bad argument (an unwritable ``--plot`` or ``--checkpoint`` path is refused before the fit; so is
  a ``--resume`` checkpoint written with other settings), 130 after Ctrl-C (a one-line message, no
  traceback).

* ``energy`` -- one cell of Rezende & Mohamed's Figure 3: a flow fitted to U1-U4 on their budget shape
  (100 particles, Adam 1e-3, annealing over T = 10^4 steps) through
  :func:`pyro_nfvi.targets.fit_energy`; prints the bound, the grid log Z, KL(q || p) and ms per step,
  and writes a result JSON and a figure to ``--out``.  The full grid is ``benchmarks/energy.py``.

Planned (not yet implemented): ``vae`` (a flow-VAE on the shipped binarized MNIST) and ``fit`` (a flow
guide for a user model).  Add each as a module registered in :data:`SUBCOMMANDS`.
"""
import argparse
import sys

from . import demo, energy

__all__ = ["build_parser", "main", "EXIT_INTERRUPTED", "SUBCOMMANDS"]

#: Exit status after Ctrl-C (``KeyboardInterrupt``): 128 + SIGINT, as a shell reports it.
EXIT_INTERRUPTED = 130

#: The subcommand modules, in the order ``nfvi --help`` lists them; each has ``add_parser(subparsers)``
#: and ``run(args) -> exit code``.
SUBCOMMANDS = (demo, energy)


def build_parser():
    """Return the ``nfvi`` argument parser with one subparser per subcommand.

    Example:
        >>> args = build_parser().parse_args(["demo", "--steps", "10"])
        >>> args.steps, args.target, args.flow
        (10, 'U1', 'planar')
    """
    parser = argparse.ArgumentParser(
        prog="nfvi", description="Variational inference with normalizing flows for Pyro."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv=None):
    """Run the ``nfvi`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Example:
        >>> main(["demo", "--steps", "5", "--samples", "8", "--num-flows", "2",
        ...       "--eval-samples", "100", "--quiet"])  # doctest: +ELLIPSIS
        nfvi demo: U1 ...
        fitted bound  : ...
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ValueError as err:
        parser.exit(2, f"nfvi {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        # Ctrl-C: a short message and the shell's status for SIGINT (128 + 2), not a traceback
        print(f"\nnfvi {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

