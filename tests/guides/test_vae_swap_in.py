"""VAE swap-in check (Pyro's VAE example model with AmortizedFlowGuide) and the examples/vae.py script."""
import importlib.util
import math
import pathlib

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_nfvi import AmortizedFlowGuide
from pyro_nfvi.datasets import load_binarized_mnist

ROOT = pathlib.Path(__file__).resolve().parents[2]


# -- Pyro's VAE example (examples/vae/vae.py), model unchanged ---------------------------------------
class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, 784)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return self.sigmoid(self.fc21(hidden))


class VAE(nn.Module):
    def __init__(self, z_dim=50, hidden_dim=400):
        super().__init__()
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder.forward(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, 784))


def test_vae_swap_in_trains():
    data = load_binarized_mnist("train")[:600]
    train, held_out = data[:500].reshape(-1, 1, 28, 28), data[500:]  # images, as Pyro's example feeds them
    vae = VAE(z_dim=10, hidden_dim=100)
    guide = AmortizedFlowGuide(vae.model, plate="data", flow="planar", num_flows=4, encoder_hidden=(100,),
                               model_args=(train[:100],))
    assert guide.local_sites == ["latent"] and guide.input_dim == 784 and guide.global_guide is None
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def held_out_elbo():
        with torch.no_grad():
            return -Trace_ELBO(num_particles=3).loss(vae.model, guide, held_out) / len(held_out)

    before = held_out_elbo()
    losses = []
    for epoch in range(6):
        for i in range(0, 500, 100):
            losses.append(svi.step(train[i : i + 100]) / 100)
    after = held_out_elbo()
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 50
    assert after > before + 50, (before, after)


# -- the example script ------------------------------------------------------------------------------
def _load_example():
    spec = importlib.util.spec_from_file_location("pyro_nfvi_example_vae", ROOT / "examples" / "vae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flags", [["--flow", "planar"], ["--flow", "iaf", "--fast"], ["--flow", "radial", "--jit"],
                                   ["--flow", "none", "--fast"]])
def test_example_vae_smoke(flags, capsys):
    example = _load_example()
    args = example.make_parser().parse_args(
        ["--num-train", "200", "--num-test", "100", "--epochs", "2", "--batch-size", "50", "--hidden", "32",
         "--latent-dim", "4", "--num-flows", "2", "--lr", "3e-3"] + flags
    )
    result = example.main(args)
    assert math.isfinite(result["train_elbo"]) and math.isfinite(result["test_elbo"])
    assert -560 < result["test_elbo"] < -100
    assert "test ELBO" in capsys.readouterr().out
    assert not pyro.settings.get("module_local_params")  # the script restores the setting


def test_example_rejects_jit_with_fast():
    example = _load_example()
    with pytest.raises(ValueError, match="--jit and --fast"):
        example.main(example.make_parser().parse_args(["--jit", "--fast"]))
