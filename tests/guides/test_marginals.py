"""``AutoFlowGuide(marginals="sinh_arcsinh")``: learned skew and tail weight of the base's marginals."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import init_to_value
from pyro.optim import ClippedAdam

from pyro_nfvi import AutoFlowGuide


def skewed():
    # a Gumbel has skewness 1.14: no Gaussian fits it, and an affine flow on one coordinate stays Gaussian
    pyro.sample("z", dist.Gumbel(torch.tensor([0.0]), torch.tensor([1.0])).to_event(1))


def two_sites():
    pyro.sample("a", dist.Normal(5.0, 1.0))
    pyro.sample("b", dist.Gumbel(-5.0, 2.0))


def _fit(marginals, flow, steps=800):
    """Fit in float64; return ``KL(q || p)`` (the target is normalised: KL = -ELBO) from 20,000 draws."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(skewed, flow=flow, num_flows=2, marginals=marginals, init_scale=1.0, model_args=())
    guide.double()
    optim = ClippedAdam({"lr": 0.03, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(skewed, guide, optim, Trace_ELBO(num_particles=16, vectorize_particles=True))
    for _ in range(steps):
        svi.step()
    with torch.no_grad():
        return Trace_ELBO(num_particles=20000, vectorize_particles=True).loss(skewed, guide), guide


@pytest.mark.parametrize("flow", ["none", "iaf"])
def test_sinh_arcsinh_marginals_fit_a_skewed_posterior(flow):
    gaussian_kl, _ = _fit("gaussian", flow)
    kl, guide = _fit("sinh_arcsinh", flow)
    assert gaussian_kl > 0.03  # the best Gaussian is visibly off
    assert kl < 0.3 * gaussian_kl
    draws = guide.get_posterior().sample((20000,)).squeeze(-1)
    skewness = (((draws - draws.mean()) / draws.std()) ** 3).mean()
    assert 0.8 < skewness < 1.5  # the Gumbel's is 1.14; a Gaussian's is 0


def test_identity_at_initialisation():
    init = init_to_value(values={"a": torch.tensor(4.0), "b": torch.tensor(-3.0)})
    plain = AutoFlowGuide(two_sites, flow="planar", num_flows=2, init_loc_fn=init, model_args=(), name="plain")
    skew = AutoFlowGuide(two_sites, flow="planar", num_flows=2, init_loc_fn=init, marginals="sinh_arcsinh",
                         model_args=(), name="skew")
    mine = dict(skew.named_parameters())
    with torch.no_grad():
        for name, value in plain.named_parameters():
            mine[name].copy_(value)
    value = torch.randn(7, 2)
    assert torch.allclose(plain.get_posterior().log_prob(value), skew.get_posterior().log_prob(value), atol=1e-5)


def test_skewed_marginals_give_monte_carlo_quantiles():
    guide = AutoFlowGuide(two_sites, flow="none", marginals="sinh_arcsinh", init_scale=1.0, model_args=())
    with torch.no_grad():
        guide.marginal_flow.skew.fill_(1.5)
    # skew > 0 moves mass into the left tail: the median lies below loc (the Gaussian's median)
    median = guide.median()
    assert float(median["a"]) < float(guide.loc.detach()[0]) - 0.5
    draws = guide.get_posterior().sample((20000,))
    assert abs(float(median["a"]) - float(draws[:, 0].median())) < 0.1


def test_marginals_are_part_of_the_configuration(tmp_path):
    skew = AutoFlowGuide(two_sites, flow="planar", num_flows=2, marginals="sinh_arcsinh", model_args=())
    svi = SVI(two_sites, skew, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(20):
        svi.step()
    assert float(skew.marginal_flow.skew.abs().max()) > 0  # trained with the rest
    pyro.get_param_store().save(tmp_path / "p.pt")
    expected = {k: float(v) for k, v in skew.median().items()}
    pyro.clear_param_store()
    again = AutoFlowGuide(two_sites, flow="planar", num_flows=2, marginals="sinh_arcsinh", model_args=())
    pyro.get_param_store().load(tmp_path / "p.pt")
    assert {k: float(v) for k, v in again.median().items()} == expected
    plain = AutoFlowGuide(two_sites, flow="planar", num_flows=2, model_args=(), name="plain")
    with pytest.raises(ValueError, match="marginals"):
        plain.load_state_dict(again.state_dict())


def test_bad_marginals_are_refused():
    with pytest.raises(ValueError, match="marginals"):
        AutoFlowGuide(two_sites, marginals="student_t")


def test_auto_marginals_skew_a_flow_but_not_the_gaussian_baseline():
    assert AutoFlowGuide(two_sites, flow="iaf", marginals="auto").marginals == "sinh_arcsinh"
    assert AutoFlowGuide(two_sites, flow="none", marginals="auto").marginals == "gaussian"
    assert AutoFlowGuide(two_sites, flow="none", marginals="sinh_arcsinh").marginals == "sinh_arcsinh"
    assert AutoFlowGuide(two_sites, flow="iaf", marginals="gaussian").marginals == "gaussian"
