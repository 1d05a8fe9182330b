"""The fast path (FastSVI) trains the same guides as SVI, through no switch inside them."""
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_nfvi.guides import AutoFlowGuide, FastSVI


def model():
    pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))


@pytest.fixture
def module_local():
    pyro.settings.set(module_local_params=True)
    yield
    pyro.settings.set(module_local_params=False)


def _param_names(guide):
    tr = poutine.trace(guide, param_only=True).get_trace()
    return {name for name, site in tr.nodes.items() if site["type"] == "param"}


def test_guides_read_no_global_flag(module_local):
    """The fast path has no switch inside the guides: FastSVI and a plain ELBOModule see the same messages."""
    guide = AutoFlowGuide(model, flow="planar", num_flows=3, model_args=())
    names = _param_names(guide)
    assert {"loc", "scale_raw"} <= {n.split(".")[-1] for n in names}
    svi = FastSVI(model, guide, lr=0.01)
    svi.step()
    assert _param_names(guide) == names


def test_fast_svi_trains_with_fused_adam(module_local):
    guide = AutoFlowGuide(model, flow="planar", num_flows=2)
    svi = FastSVI(model, guide, lr=0.05)
    losses = [svi.step() for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert svi.optimizer.defaults.get("fused") in (True, None)
