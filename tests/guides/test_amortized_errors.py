"""AmortizedFlowGuide's errors name the real cause: a missing plate, an encoder_input of the wrong
length, a call without the observed data."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive

from pyro_nfvi import AmortizedFlowGuide

X, Y = torch.randn(10), torch.randn(10)


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        mu = pyro.sample("mu", dist.Normal(w * x, 1.0))
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture(autouse=True)
def _clean():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def test_a_plate_the_model_lacks_is_named_with_the_models_plates():
    with pytest.raises(ValueError, match=r"the model has no plate named 'nope'; its plates are \['data'\]"):
        AmortizedFlowGuide(model, plate="nope", model_args=(X, Y))


def test_an_encoder_input_of_the_wrong_length_names_the_plate_not_a_site():
    with pytest.raises(ValueError, match=r"encoder_input returned 7 rows, but plate 'data' holds 10 data points") as info:
        AmortizedFlowGuide(model, plate="data", encoder_input=lambda x, y=None: torch.randn(7, 2), model_args=(X, Y))
    assert "'obs'" not in str(info.value)


@pytest.mark.parametrize("call_args, got", [((X,), "is missing"), ((X, None), "is None")], ids=["no y", "y=None"])
def test_predictive_without_the_observations_says_the_guide_needs_them(call_args, got):
    guide = AmortizedFlowGuide(model, plate="data", num_flows=2, model_args=(X, Y))
    with pytest.raises(ValueError, match=rf"site 'obs' from the model's argument 1, which {got} in this call; an "
                                         "amortized guide needs the observed data"):
        Predictive(model, guide=guide, num_samples=3)(*call_args)
    assert Predictive(model, guide=guide, num_samples=3)(X, Y)["obs"].shape == (3, 10)


def test_observations_that_do_not_vary_along_the_plate_are_named_with_their_shape():
    """Pyro's VAE example fed packed images (98 bytes for 784 pixels): ``x.reshape(-1, 784)`` then has
    fewer rows than the plate; the guide's error names the site and its shape."""

    def vae_like(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            probs = torch.sigmoid(z.sum(-1, keepdim=True)).expand(x.shape[0], 4)
            pyro.sample("obs", dist.Bernoulli(probs).to_event(1), obs=x.reshape(-1, 4))

    packed = (torch.rand(8, 2) < 0.5).float()  # 8 "images" of 2 packed values for 4 pixels: 4 rows of 4
    with pytest.raises(ValueError, match=r"no observed site inside plate 'data' varies along it \(size 8 at dim -1\): "
                                         r"site 'obs' has value shape \(4, 4\) \(event dims 1\)"):
        AmortizedFlowGuide(vae_like, plate="data", model_args=(packed,))
