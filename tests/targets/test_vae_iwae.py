"""The IWAE pass of the MNIST benchmark: seeded per batch, resumable from its checkpoint, refusing other settings."""
import pytest
import torch

from pyro_nfvi.targets import VAEModel, iwae_nll, vae_guide


class Interrupted(Exception):
    pass


@pytest.fixture
def vae():
    torch.manual_seed(0)
    model = VAEModel(z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((10, 784), 0.4))
    return model, vae_guide(model, "planar", 2, x[:5], hidden=(8,)), x


def test_a_resumed_pass_gives_the_uninterrupted_values(vae, tmp_path):
    model, guide, x = vae
    whole = iwae_nll(model, guide, x, num_samples=16, batch_size=3, seed=5)
    assert whole != iwae_nll(model, guide, x, num_samples=16, batch_size=3, seed=6)  # the draws follow the seed
    path, seen = tmp_path / "iwae.pt", []

    def stop_after_two_batches(n):
        seen.append(n)
        if len(seen) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        iwae_nll(model, guide, x, num_samples=16, batch_size=3, seed=5, checkpoint=path, progress=stop_after_two_batches)
    assert len(torch.load(path, weights_only=True)["values"]) == 2  # both finished batches were kept
    counted = []
    resumed = iwae_nll(model, guide, x, num_samples=16, batch_size=3, seed=5, checkpoint=path, progress=counted.append)
    assert resumed == pytest.approx(whole, rel=1e-6)
    assert counted == [6, 3, 1]  # the 6 images read back, then the two batches left
    assert len(torch.load(path, weights_only=True)["values"]) == 4


def test_the_pass_restores_the_callers_rng(vae):
    model, guide, x = vae
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    iwae_nll(model, guide, x, num_samples=4, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("change, field", [({"num_samples": 8}, "num_samples"), ({"seed": 1}, "seed"),
                                           ({"batch_size": 4}, "batch_size"), ({"data": "flip"}, "data_sum")])
def test_a_checkpoint_of_other_settings_is_refused(vae, tmp_path, change, field):
    model, guide, x = vae
    path = tmp_path / "iwae.pt"
    settings = {"num_samples": 16, "batch_size": 3, "seed": 0, "checkpoint": path}
    iwae_nll(model, guide, x, **settings)
    other = dict(settings, **{k: v for k, v in change.items() if k != "data"})
    data = 1.0 - x if change.get("data") else x
    with pytest.raises(ValueError, match=f"iwae.pt holds a pass with other settings \\({field} differ"):
        iwae_nll(model, guide, data, **other)
