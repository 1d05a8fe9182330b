"""AutoFlowGuide warns when minibatches are passed as model arguments without a subsampled plate."""
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nfvi.guides import AutoFlowGuide, FastSVI
from pyro_nfvi.guides.minibatch import MinibatchWarning


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


def subsampled_model(y, idx):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 100, subsample=idx):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y[idx])


def test_minibatches_without_a_subsampled_plate_warn_once():
    pyro.set_rng_seed(0)
    data = torch.randn(100)
    guide = AutoFlowGuide(model, flow="planar", num_flows=2)
    svi = FastSVI(model, guide, lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinibatchWarning)
        for _ in range(3):
            svi.step(data)  # the full data at every step: no warning
        svi.step(data.clone())  # the same values in a new tensor: no warning either
        svi.step(data.flip(0))  # one other data set: how a guide is evaluated, no warning
        svi.step(data.flip(0))
    with pytest.warns(MinibatchWarning, match=r"argument 0: other values.*subsample=.*AmortizedFlowGuide"):
        svi.step(data + 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinibatchWarning)
        svi.step(data[:10])  # once only
    other = AutoFlowGuide(model, flow="planar", num_flows=2)
    other(data[:20])
    other(data[20:40])
    with pytest.warns(MinibatchWarning, match=r"shape \(20,\) -> \(10,\)"):
        other(data[40:50])


def test_a_subsampled_plate_does_not_warn():
    pyro.set_rng_seed(0)
    data = torch.randn(100)
    guide = AutoFlowGuide(subsampled_model, flow="planar", num_flows=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinibatchWarning)
        for start in range(0, 40, 10):
            guide(data, torch.arange(start, start + 10))


def test_predictive_on_new_data_does_not_warn():
    pyro.set_rng_seed(0)
    x, y = torch.randn(50), torch.randn(50)

    def regression(x, y=None):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(b * x, 1.0), obs=y)

    guide = AutoFlowGuide(regression, flow="planar", num_flows=2)
    guide(x, y)
    x_new = torch.randn(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinibatchWarning)
        pyro.infer.Predictive(regression, guide=guide, num_samples=20)(x_new)
