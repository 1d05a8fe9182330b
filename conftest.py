"""Root pytest configuration: skip modules whose optional extra is not installed; a fresh param store per test."""
import importlib.util

import pyro
import pytest

collect_ignore = []
if importlib.util.find_spec("lightning") is None:  # pyro_nfvi[lightning] not installed
    collect_ignore += ["pyro_nfvi/lightning.py", "tests/lightning_ddp_script.py"]


@pytest.fixture(autouse=True)
def _fresh_param_store():
    """Every test and doctest starts with an empty Pyro param store and module-local params off.

    Doctests in ``pyro_nfvi/`` share one process with the tests: a guide saved into the store by one
    example must not be taken for a saved state by the next (the guides refuse such a state loudly).
    """
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=False):
        yield
    pyro.clear_param_store()
