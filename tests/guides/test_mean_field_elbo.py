"""TraceMeanField_ELBO counts the change-of-variables term of the flow guides (it equals Trace_ELBO).

Pyro's analytic KL for a ``Delta`` site is ``-log p(v)``; the guides' sites carry ``log q`` terms in
``Delta.log_density`` (the map to each support), which that KL dropped: on Pyro's sparse gamma
example the planar guide reached a training loss of -13,103 on count data.
"""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_nfvi import AmortizedFlowGuide, AutoFlowGuide

Y = torch.tensor([1.0, 3.0, 2.0, 5.0, 0.0, 4.0])


def global_model(y):
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Poisson(rate * w[..., 0] + 0.1), obs=y)


def local_model(y):
    with pyro.plate("data", len(y)):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        pyro.sample("obs", dist.Poisson(rate), obs=y)


def _both(model, guide, *args):
    out = []
    for elbo in (Trace_ELBO(num_particles=8, vectorize_particles=True),
                 TraceMeanField_ELBO(num_particles=8, vectorize_particles=True)):
        pyro.set_rng_seed(3)
        out.append(elbo.loss(model, guide, *args))
    return out


@pytest.mark.parametrize("family", ["planar", "iaf", "none"])
def test_mean_field_elbo_equals_trace_elbo_auto(family):
    guide = AutoFlowGuide(global_model, flow=family, num_flows=2, model_args=(Y,))
    trace, mean_field = _both(global_model, guide, Y)
    assert mean_field == pytest.approx(trace, rel=1e-5)


def test_mean_field_elbo_equals_trace_elbo_amortized():
    guide = AmortizedFlowGuide(local_model, plate="data", flow="planar", num_flows=2, encoder_hidden=(8,),
                               model_args=(Y,))
    trace, mean_field = _both(local_model, guide, Y)
    assert mean_field == pytest.approx(trace, rel=1e-5)
