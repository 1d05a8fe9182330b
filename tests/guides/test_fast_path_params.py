"""The fast path (FastSVI) trains the same guides as SVI, through no switch inside them."""
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

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


def _fused_adam_supported():
    try:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


class ShiftModel(PyroModule):
    """z ~ N(shift, I): a model with a parameter of its own, optimized together with the guide's."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(2))

    def forward(self):
        pyro.sample("z", dist.Normal(self.shift, 1.0).to_event(1))


def test_fast_svi_trains_with_fused_adam(module_local):
    m = ShiftModel()
    guide = AutoFlowGuide(m, flow="planar", num_flows=2)
    svi = FastSVI(m, guide, lr=0.05)
    losses = [svi.step() for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))
    # one torch Adam holding every parameter of the model and of the guide exactly once
    assert type(svi.optimizer) is torch.optim.Adam
    held = [p for group in svi.optimizer.param_groups for p in group["params"]]
    expected = {id(p) for p in list(m.parameters()) + list(guide.parameters())}
    assert len(held) == len({id(p) for p in held}) == len(expected) > 2
    assert {id(p) for p in held} == expected and id(m.shift) in expected
    assert not torch.equal(m.shift.detach(), torch.zeros(2))  # the model's own parameter was trained
    # the fused multi-tensor kernel wherever this torch build has one
    if _fused_adam_supported():
        assert svi.optimizer.defaults["fused"] is True
    else:
        assert not svi.optimizer.defaults.get("fused")
