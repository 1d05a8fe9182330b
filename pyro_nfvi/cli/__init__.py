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

* ``vae`` -- train the flow VAE of Henrion & Welleck (40 latents, MLPs 784-300-300, batch 100,
  Adam) on the shipped binarized MNIST with an :class:`~pyro_nfvi.guides.AmortizedFlowGuide`
  (``--flow none``: the plain VAE), early stopping on the validation -ELBO, a checkpoint every epoch
  (``--resume``), then the train/valid/test -ELBO and the test IWAE NLL in ``--out/results.json``.
  ``--strategy ddp --devices N --num-nodes M`` trains on PyTorch Lightning's DDP.

Planned (not yet implemented): ``energy`` (the U1-U4 sweep of ``examples/energy.py`` through the flow
guides) and ``fit`` (a flow guide for a user model).  Add each as a module registered in :data:`SUBCOMMANDS`.
"""
import argparse
import sys

from . import demo, vae

__all__ = ["build_parser", "main", "EXIT_INTERRUPTED", "SUBCOMMANDS"]

#: Exit status after Ctrl-C (``KeyboardInterrupt``): 128 + SIGINT, as a shell reports it.
EXIT_INTERRUPTED = 130

#: The subcommand modules, in the order ``nfvi --help`` lists them; each has ``add_parser(subparsers)``
#: and ``run(args) -> exit code``.
SUBCOMMANDS = (demo, vae)


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

