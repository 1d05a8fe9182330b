"""``python -m pyro_nfvi.cli``: the ``nfvi`` command line."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
