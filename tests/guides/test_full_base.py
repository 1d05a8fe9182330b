"""``AutoFlowGuide(base="full")``: a lower-triangular affine base recovers a correlated Gaussian posterior."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_nfvi import AutoFlowGuide

COV = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.float64)
MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def model():
    pyro.sample("z", dist.MultivariateNormal(MEAN, COV))


def _fit(base, flow):
    """Fit in float64; return ``KL(q || p)``, estimated with 10,000 draws (the target is normalised)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, flow=flow, num_flows=2, base=base, model_args=())
    guide.double()
    svi = SVI(model, guide, ClippedAdam({"lr": 0.05, "lrd": 0.1 ** (1 / 600)}), Trace_ELBO(num_particles=8, vectorize_particles=True))
    for _ in range(600):
        svi.step()
    with torch.no_grad():
        return Trace_ELBO(num_particles=10000, vectorize_particles=True).loss(model, guide)


@pytest.mark.parametrize("flow", ["none", "planar"])
def test_full_base_recovers_a_correlated_posterior(flow):
    # the best diagonal Gaussian is KL = (sum_i log Lambda_ii + log det Sigma) / 2 away (Lambda = Sigma^-1)
    mean_field_kl = 0.5 * (torch.linalg.inv(COV).diagonal().log().sum() + torch.logdet(COV)).item()
    assert mean_field_kl > 0.5
    assert _fit("full", flow) < 0.05
    assert _fit("diagonal", flow) > 0.5 * mean_field_kl


def test_full_base_reports_marginal_scales():
    pyro.clear_param_store()
    guide = AutoFlowGuide(model, flow="none", base="full", model_args=())
    with torch.no_grad():
        guide.scale_tril_raw.copy_(torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [0.0, 0, 0]], dtype=torch.float64))
    scale = torch.nn.functional.softplus(guide.scale_raw.detach())
    q = guide.quantiles([0.8413447])["z"][0] - guide.median()["z"]
    expected = torch.stack([scale[0], (9.0 + scale[1] ** 2).sqrt(), scale[2]])
    assert torch.allclose(q.detach(), expected, rtol=1e-4)
    assert guide._fingerprint_fields["base"] == "full"


def test_base_is_part_of_the_configuration():
    pyro.clear_param_store()
    full = AutoFlowGuide(model, flow="planar", num_flows=2, base="full", model_args=())
    diagonal = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=(), name="other")
    with pytest.raises(ValueError, match="base: saved 'full', this guide 'diagonal'"):
        diagonal.load_state_dict(full.state_dict())


def test_bad_base_is_refused():
    with pytest.raises(ValueError, match="base"):
        AutoFlowGuide(model, base="cholesky")
