"""The fast path skips PyroModule's unused param messages only inside FastSVI, never for standard SVI."""
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_nfvi.guides import AutoFlowGuide, FastSVI
from pyro_nfvi.guides._util import direct_params


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


def test_param_messages_only_skipped_inside_direct_params(module_local):
    guide = AutoFlowGuide(model, flow="planar", num_flows=3)
    outside = _param_names(guide)
    # standard SVI discovers the optimised tensors through these messages: all of them must be there
    assert {"loc", "scale_raw"} <= {n.split(".")[-1] for n in outside}
    assert sum(p.numel() for p in guide.parameters()) > 0 and len(outside) >= 2 + 3 * 3
    with direct_params():
        assert _param_names(guide) == set()
    assert _param_names(guide) == outside


def test_fast_path_matches_plain_elbo_module(module_local):
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, flow="planar", num_flows=3)
    loss_fn = pyro.infer.Trace_ELBO()(model, guide)
    pyro.set_rng_seed(1)
    plain = loss_fn()
    pyro.set_rng_seed(1)
    with direct_params():
        direct = loss_fn()
    assert torch.equal(plain, direct)


def test_fast_svi_trains_with_fused_adam(module_local):
    guide = AutoFlowGuide(model, flow="planar", num_flows=2)
    svi = FastSVI(model, guide, lr=0.05)
    losses = [svi.step() for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert svi.optimizer.defaults.get("fused") in (True, None)
