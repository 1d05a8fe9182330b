"""Shared pytest fixtures: every test starts from a fixed seed and the project's default dtype."""
import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_restore_default_dtype():
    """Seed torch/pyro before each test and restore the default dtype (and Pyro's param store) after it."""
    dtype = torch.get_default_dtype()
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()
