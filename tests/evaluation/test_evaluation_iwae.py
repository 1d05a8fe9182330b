"""Tests of pyro_nfvi.evaluation: IWAE log-likelihood against analytic evidence, and PSIS k-hat."""
import math

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from pyro_nfvi.evaluation import iwae_log_likelihood, log_importance_weights, max_plate_nesting, psis_khat

D, P = 2, 3
W = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.6, -1.0]], dtype=torch.float64)
BIAS = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
SIGMA = 0.7
XS = torch.tensor(
    [[0.5, -1.0, 1.2], [2.0, 0.3, -0.7], [-1.5, 0.9, 0.1], [0.0, 0.0, 0.0], [1.1, 1.4, -2.0]], dtype=torch.float64
)


def local_model(x):
    """z_i ~ N(0, I_2), x_i ~ N(W z_i + b, 0.7^2 I_3) for each row of x."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([D]).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + BIAS, SIGMA).to_event(1), obs=x)


def global_model(x):
    """z ~ N(0, I_2) shared, x_i ~ N(W z + b, 0.7^2 I_3)."""
    z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([D]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z @ W.T + BIAS, SIGMA).to_event(1), obs=x)


def local_posterior(x):
    prec = torch.eye(D, dtype=x.dtype) + W.T @ W / SIGMA**2
    cov = torch.linalg.inv(prec)
    return (x - BIAS) @ W @ cov.T / SIGMA**2, cov


def global_posterior(x):
    prec = torch.eye(D, dtype=x.dtype) + x.shape[0] * W.T @ W / SIGMA**2
    cov = torch.linalg.inv(prec)
    return cov @ W.T @ (x - BIAS).sum(0) / SIGMA**2, cov


def local_evidence(x):
    return dist.MultivariateNormal(BIAS, W @ W.T + SIGMA**2 * torch.eye(P, dtype=x.dtype)).log_prob(x)


def global_evidence(x):
    n = x.shape[0]
    cov = torch.kron(torch.ones(n, n, dtype=x.dtype), W @ W.T) + SIGMA**2 * torch.eye(n * P, dtype=x.dtype)
    return dist.MultivariateNormal(BIAS.repeat(n), cov).log_prob(x.reshape(-1))


class AmortizedGaussianGuide:
    """Hand-written amortized guide q(z_i | x_i) = N(mu_i + shift, diag or full cov), plate 'data'."""

    plate = "data"

    def __init__(self, shift=0.0, inflate=None):
        self.shift, self.inflate = shift, inflate

    def __call__(self, x):
        mu, cov = local_posterior(x)
        with pyro.plate("data", x.shape[0]):
            if self.inflate is None:  # the exact posterior
                pyro.sample("z", dist.MultivariateNormal(mu, cov))
            else:  # deliberately poor: shifted, inflated, mean-field
                pyro.sample("z", dist.Normal(mu + self.shift, self.inflate * cov.diagonal().sqrt()).to_event(1))


@pytest.fixture(autouse=True)
def _clean():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_max_plate_nesting():
    assert max_plate_nesting(local_model, AmortizedGaussianGuide(), (XS,)) == 1


def test_iwae_exact_amortized_guide_is_exact_per_point():
    pyro.set_rng_seed(0)
    guide = AmortizedGaussianGuide()
    lw = log_importance_weights(local_model, guide, XS, num_samples=20)
    assert lw.shape == (20, 5)  # per data point, found from guide.plate
    est = iwae_log_likelihood(local_model, guide, XS, num_samples=64, chunk_size=16)
    assert est.shape == (5,)
    assert torch.allclose(est, local_evidence(XS), atol=1e-6)  # exact posterior: zero-variance weights
    joint = iwae_log_likelihood(local_model, guide, XS, num_samples=8, plate=False)
    joint_guide = lambda x: guide(x)  # noqa: E731  (no .plate attribute -> joint estimate)
    joint2 = iwae_log_likelihood(local_model, joint_guide, XS, num_samples=8)
    assert joint.shape == () and torch.allclose(joint, local_evidence(XS).sum(), atol=1e-6)
    assert torch.allclose(joint2, joint, atol=1e-6)


def test_iwae_poor_amortized_guide_within_monte_carlo_error():
    guide = AmortizedGaussianGuide(shift=0.4, inflate=1.6)
    exact = local_evidence(XS)
    pyro.set_rng_seed(1)
    lw = log_importance_weights(local_model, guide, XS, num_samples=4000)
    assert (exact - lw.mean(0) > 0.3).all()  # the ELBO is far below: the guide is poor
    k = 20000
    w = (lw - lw.max(0).values).exp()
    se = w.std(0) / (w.mean(0) * math.sqrt(k))  # delta-method standard error of the IWAE estimate
    pyro.set_rng_seed(2)
    est = iwae_log_likelihood(local_model, guide, XS, num_samples=k, chunk_size=5000)
    assert ((est - exact).abs() < 4 * se + 1e-3).all(), (est - exact, se)


def test_iwae_global_guides():
    x = XS[:4]
    mu, cov = global_posterior(x)
    exact = global_evidence(x)
    exact_guide = lambda x: pyro.sample("z", dist.MultivariateNormal(mu, cov))  # noqa: E731
    pyro.set_rng_seed(3)
    est = iwae_log_likelihood(global_model, exact_guide, x, num_samples=100, chunk_size=30)
    assert est.shape == () and torch.isclose(est, exact, atol=1e-6)

    for auto, k, tol in ((AutoMultivariateNormal, 2000, 0.03), (AutoNormal, 20000, 0.05)):
        pyro.clear_param_store()
        pyro.set_rng_seed(4)
        guide = auto(global_model)
        elbo = Trace_ELBO(num_particles=8, vectorize_particles=True)
        svi = SVI(global_model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        for _ in range(400):
            svi.step(x)
        est = iwae_log_likelihood(global_model, guide, x, num_samples=k, chunk_size=5000)
        assert abs(est.item() - exact.item()) < tol, (auto.__name__, est, exact)
        elbo = log_importance_weights(global_model, guide, x, num_samples=2000).mean()
        assert elbo < est  # the IWAE bound improves on the ELBO


def test_chunks_accumulate_exactly():
    guide = AmortizedGaussianGuide(shift=0.3, inflate=1.5)
    pyro.set_rng_seed(5)
    lw = log_importance_weights(local_model, guide, XS, num_samples=50, chunk_size=7)
    pyro.set_rng_seed(5)
    est = iwae_log_likelihood(local_model, guide, XS, num_samples=50, chunk_size=7)
    assert torch.allclose(est, torch.logsumexp(lw, 0) - math.log(50), atol=1e-10)


def test_bad_inputs_raise_clear_errors():
    guide = lambda x: pyro.sample("z", dist.Normal(x.new_zeros(D), 1.0).to_event(1))  # noqa: E731
    with pytest.raises(ValueError, match="outside the data plate 'data'"):
        iwae_log_likelihood(global_model, guide, XS, num_samples=4, plate="data")

    def subsampled(x):
        with pyro.plate("data", x.shape[0], subsample_size=2):
            pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))

    with pytest.raises(ValueError, match="subsampled"):
        iwae_log_likelihood(subsampled, subsampled, XS, num_samples=4)
    with pytest.raises(ValueError, match="not sampled by the guide"):
        iwae_log_likelihood(local_model, lambda x: None, XS, num_samples=4)
    with pytest.raises(ValueError, match="num_samples"):
        iwae_log_likelihood(local_model, AmortizedGaussianGuide(), XS, num_samples=0)
    with pytest.raises(TypeError, match="plate"):
        psis_khat(local_model, AmortizedGaussianGuide(), XS, plate=3)


@pytest.mark.parametrize("sigma, low, high", [(0.5, 0.5, 0.9), (0.95, 0.0, 0.25)])
def test_psis_khat_calibration(sigma, low, high):
    """Target N(0, 1), proposal N(0, sigma^2): the true Pareto shape is 1 - sigma^2."""
    model = lambda: pyro.sample("x", dist.Normal(0.0, 1.0))  # noqa: E731
    guide = lambda: pyro.sample("x", dist.Normal(0.0, sigma))  # noqa: E731
    pyro.set_rng_seed(0)
    khat = psis_khat(model, guide, num_samples=10000)
    assert khat.shape == () and low < khat.item() < high, khat


def test_psis_khat_per_data_point():
    pyro.set_rng_seed(6)
    good = psis_khat(local_model, AmortizedGaussianGuide(shift=0.05, inflate=1.3), XS, num_samples=4000)
    bad = psis_khat(local_model, AmortizedGaussianGuide(shift=0.0, inflate=0.3), XS, num_samples=4000)
    assert good.shape == bad.shape == (5,)
    # over-dispersed proposal: light-tailed weights; under-dispersed (scale x0.3): k ~ 1 - 0.09
    assert (good < 0.5).all() and (bad > 0.5).all() and bad.mean() > 0.7, (good, bad)


@pytest.mark.parametrize("num_samples", [1, 5, 20, 20.0])
def test_psis_khat_needs_enough_draws_for_the_tail_fit(num_samples):
    guide = AmortizedGaussianGuide(shift=0.05, inflate=1.3)
    with pytest.raises(ValueError, match=r"num_samples must be an integer >= 21 for a Pareto k-hat"):
        psis_khat(local_model, guide, XS, num_samples=num_samples)
    pyro.set_rng_seed(7)
    khat = psis_khat(local_model, guide, XS, num_samples=21)  # the fewest that fit: finite k-hat
    assert khat.shape == (5,) and torch.isfinite(khat).all()


def test_psis_khat_draws_in_chunks():
    """The guide is traced ``chunk_size`` draws at a time (by default too), and the chunks add up exactly."""
    sizes = []  # draws per vectorized trace of the guide

    class RecordingGuide:
        plate = "data"

        def __call__(self, x):
            mu, cov = local_posterior(x)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(mu + 0.1, 1.4 * cov.diagonal().sqrt()).to_event(1))
            if z.dim() == 3:  # (draws, B, D); the first, unvectorized call only finds the plates
                sizes.append(z.shape[0])

    pyro.set_rng_seed(8)
    khat = psis_khat(local_model, RecordingGuide(), XS, num_samples=250)
    assert sizes == [100, 100, 50]  # default chunk_size=100
    sizes.clear()
    pyro.set_rng_seed(8)
    chunked = psis_khat(local_model, RecordingGuide(), XS, num_samples=250, chunk_size=30)
    assert sizes == [30] * 8 + [10]
    pyro.set_rng_seed(8)
    lw = log_importance_weights(local_model, RecordingGuide(), XS, num_samples=250, chunk_size=30)
    expected = torch.as_tensor(az.psislw(lw.T.double().numpy())[1])
    assert torch.equal(chunked, expected)  # same draws, same k-hat as arviz on the full weights
    assert khat.shape == chunked.shape == (5,) and not torch.equal(khat, chunked)  # other draws


def test_keyword_typos_are_not_passed_to_the_model():
    guide = AmortizedGaussianGuide()
    for fn in (iwae_log_likelihood, log_importance_weights, psis_khat):
        match = r"unexpected keyword argument 'num_sample' \(did you mean 'num_samples'\?\)"
        with pytest.raises(TypeError, match=match):
            fn(local_model, guide, XS, num_sample=50)
