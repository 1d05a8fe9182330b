"""The MNIST benchmark's guide keeps the configuration its table was made with."""
import pytest
import torch

from pyro_nfvi import AmortizedFlowGuide
from pyro_nfvi.targets import VAEModel, vae_guide


@pytest.mark.parametrize("flow", ["none", "sylvester"])
def test_vae_guide_keeps_the_unscaled_head_of_the_table(flow):
    model = VAEModel(z_dim=4, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    guide = vae_guide(model, flow, 2, x, hidden=(8,))
    assert guide.head_output_scale == "none" and guide.head.scale_output == 1.0
    assert "head_output_scale" not in guide.fingerprint  # the table's checkpoints load into it
    default = AmortizedFlowGuide(model, plate="data", flow=flow, num_flows=2, encoder_hidden=(8,), model_args=(x,))
    assert default.head.scale_output == pytest.approx(8 ** -0.5)
    with pytest.raises(ValueError, match="head_output_scale"):
        guide.load_state_dict(default.state_dict())
