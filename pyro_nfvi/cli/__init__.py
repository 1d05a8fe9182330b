"""The ``nfvi`` command line (also ``python -m pyro_nfvi.cli``).

Subcommands, each a module of this package with ``add_parser(subparsers)`` and ``run(args) -> exit code``,
listed in :data:`SUBCOMMANDS`:

* ``demo`` -- the plugin's job in two minutes (what ``make demo`` runs): on the centered eight
  schools, Pyro's ``AutoNormal`` under plain SVI against :class:`~pyro_nfvi.AutoFlowGuide` under the
  recipe :func:`pyro_nfvi.fit`, each compared with the shipped NUTS draws (moment errors, PSIS k-hat,
  ``arviz.summary``, importance-corrected LOO); then U1 of Rezende & Mohamed (2015) fitted with a
  planar flow (bound, grid log Z, KL).  A report folder (``--out``, default ``runs/demo``):
  ``summary.md``, ``tau.png``, ``u1.png`` and the guides' InferenceData as netCDF.  ``--only`` runs
  one part; ``--checkpoint PATH``/``--resume`` checkpoint and resume the U1 fit.  See
  :mod:`pyro_nfvi.cli.demo`.

Every command checks its arguments before any work (a bad one: exit status 2 and a message naming
it), shows tqdm progress bars unless ``--quiet``, exits with status 1 if a fit diverges and 130
after Ctrl-C (a one-line message, no traceback).  Helpers: :mod:`~pyro_nfvi.cli.arguments` (shared
argument checks), :mod:`~pyro_nfvi.cli.report` (tables, machine, command line of a report).

* ``vae`` -- train the flow VAE of Henrion & Welleck (40 latents, MLPs 784-300-300, batch 100,
  Adam) on the shipped binarized MNIST with an :class:`~pyro_nfvi.guides.AmortizedFlowGuide`
  (``--flow none``: the plain VAE), early stopping on the validation -ELBO, a checkpoint every epoch
  (``--resume``), then the train/valid/test -ELBO and the test IWAE NLL in ``--out/results.json``.
  ``--strategy ddp --devices N --num-nodes M`` trains on PyTorch Lightning's DDP.

* ``energy`` -- one cell of Rezende & Mohamed's Figure 3: a flow fitted to U1-U4 on their budget shape
  (100 particles, Adam 1e-3, annealing over T = 10^4 steps) through
  :func:`pyro_nfvi.targets.fit_energy`; prints the bound, the grid log Z, KL(q || p) and ms per step,
  and writes a result JSON and a figure to ``--out``.  The full grid is ``benchmarks/energy.py``.

Planned (not yet implemented): ``fit`` (a flow guide for a user model).  Add it as a module
registered in :data:`SUBCOMMANDS`.
"""
import argparse
import sys

from . import demo, energy, vae

__all__ = ["build_parser", "main", "EXIT_INTERRUPTED", "SUBCOMMANDS"]

#: Exit status after Ctrl-C (``KeyboardInterrupt``): 128 + SIGINT, as a shell reports it.
EXIT_INTERRUPTED = 130

#: The subcommand modules, in the order ``nfvi --help`` lists them; each has ``add_parser(subparsers)``
#: and ``run(args) -> exit code``.
SUBCOMMANDS = (demo, energy, vae)


def build_parser():
    """Return the ``nfvi`` argument parser with one subparser per subcommand.

    Example:
        >>> args = build_parser().parse_args(["demo", "--energy-steps", "10"])
        >>> args.energy_steps, args.target, args.flow, args.out
        (10, 'U1', 'planar', 'runs/demo')
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
        >>> import tempfile
        >>> main(["demo", "--only", "energy", "--energy-steps", "5", "--samples", "8", "--num-flows", "2",
        ...       "--eval-samples", "100", "--quiet", "--out", tempfile.mkdtemp()])  # doctest: +ELLIPSIS
        nfvi demo: energy; report in ...
        U1 of Rezende & Mohamed, planar flow (K=2), ...
        report: .../summary.md (... s)
        0
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # for the command line a report records
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

