"""Pyro idioms: the flow guides swapped into models written in Pyro's usual styles.

Each test trains our guide and Pyro's :class:`~pyro.infer.autoguide.AutoNormal` on the same model with
the same optimizer (``ClippedAdam``), learning rate, number of steps, seeds and initial location
(``init_to_median``), then compares

* the final loss, estimated with ``Trace_ELBO(num_particles=1000, vectorize_particles=True)`` (or
  ``TraceEnum_ELBO``) under a fixed seed: ours must be at most AutoNormal's plus ``TOL`` (calibrated
  below), and an *untrained* guide must be clearly above that bound, so the comparison can fail;
* the shapes of :class:`~pyro.infer.Predictive`'s output, which must equal those obtained with AutoNormal.

AutoNormal's results depend only on the idiom: each ``autonormal_<idiom>()`` computes them once.
"""
import functools
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoGuideList, AutoNormal, init_to_median
from pyro.nn import PyroModule, PyroSample
from pyro.ops.indexing import Vindex
from torch import nn

from pyro_nfvi import AmortizedFlowGuide, AutoFlowGuide

FAMILIES = ["planar", "iaf"]
NUM_FLOWS = 2
SEED = 3  # training seed (setup and SVI), the same for both guides
EVAL_SEED = 123  # seed of the final loss estimates
EVAL_PARTICLES = 1000
NUM_SAMPLES = 7  # Predictive draws
STEPS, LR, TRAIN_PARTICLES = 100, 0.1, 8
LR_DECAY = 0.1  # the learning rate falls ten-fold over training
# Tolerance of "ours <= AutoNormal + TOL", in nats, calibrated by measurement (torch 2.13 CPU):
# * the final estimates' standard error is <= 0.065 (8 evaluation seeds), negligible;
# * over training seeds 1 to 5 the largest excess of ours over AutoNormal was 0.28 (8-particle
#   training; usually < 0.1, and ours is often better: the factor's correlated posterior, the eight
#   schools' funnel for "iaf", and wherever AutoNormal has not converged in 100 steps), and 0.40 for
#   the PyroModule model, trained with one particle as in Pyro's tutorial, hence TOL_ONE_PARTICLE;
# * trained longer (400 steps, lr 0.05) the excess falls to <= 0.15 everywhere, so it is what is
#   left of the flow's extra parameters after a short run, not a worse optimum;
# * at SEED the untrained guides sit at least 8 nats above the bound.
TOL = 0.5


# -- helpers -----------------------------------------------------------------------------------------
def start(guide, *args):
    """Set the guide up (first call) under the seed ``SEED``, so both guides start from the same init."""
    pyro.set_rng_seed(SEED)
    guide(*args)
    return guide


def train(model, guide, *args, elbo=None, particles=None, steps=None, lr=None):
    """``steps`` SVI steps with ``ClippedAdam`` (lr decayed ten-fold) from the seed ``SEED``."""
    steps, lr = steps or STEPS, lr or LR
    particles = TRAIN_PARTICLES if particles is None else particles
    pyro.set_rng_seed(SEED + 1)
    if elbo is None:
        elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": LR_DECAY ** (1.0 / steps)})
    svi = SVI(model, guide, optim, elbo)
    for _ in range(steps):
        svi.step(*args)
    return guide


@torch.no_grad()
def final_loss(model, guide, *args, elbo_cls=Trace_ELBO, particles=None, **elbo_opts):
    """A low-noise estimate of ``-ELBO`` (vectorized particles) under the fixed seed ``EVAL_SEED``."""
    pyro.set_rng_seed(EVAL_SEED)
    elbo = elbo_cls(num_particles=particles or EVAL_PARTICLES, vectorize_particles=True, **elbo_opts)
    return float(elbo.loss(model, guide, *args))


@torch.no_grad()
def predictive_shapes(model, guide, *args, parallel=False, num_samples=NUM_SAMPLES):
    pyro.set_rng_seed(EVAL_SEED)
    out = Predictive(model, guide=guide, num_samples=num_samples, parallel=parallel)(*args)
    return {name: tuple(value.shape) for name, value in out.items()}


def autonormal_latent_dim(guide):
    """AutoNormal's number of unconstrained latent dimensions (its ``locs`` live on the real line)."""
    return sum(p.numel() for name, p in guide.named_parameters() if name.startswith("locs."))


def flow_guide(model, family, **kwargs):
    return AutoFlowGuide(model, flow=family, num_flows=NUM_FLOWS, init_loc_fn=init_to_median, **kwargs)


def autonormal(model):
    return AutoNormal(model, init_loc_fn=init_to_median)


def check_comparison(name, family, ours, base, untrained, tol):
    print(f"[{name}/{family}] ours={ours:.3f} autonormal={base:.3f} untrained={untrained:.3f} tol={tol}")
    assert math.isfinite(ours)
    assert ours <= base + tol, (name, family, ours, base, tol)
    # the bound is discriminating: an untrained guide fails it by a clear margin
    assert untrained > base + tol + 1.0, (name, family, untrained, base, tol)


# -- 1. def model(data=None) with obs=data -----------------------------------------------------------
DATA1 = 2.0 + 1.5 * torch.randn(20, generator=torch.Generator().manual_seed(1))


def data_none_model(data=None):
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    n = 20 if data is None else data.shape[0]
    with pyro.plate("data", n):
        return pyro.sample("obs", dist.Normal(loc, scale), obs=data)


@functools.lru_cache(maxsize=None)
def autonormal_baseline(model, *args):
    """AutoNormal trained at the shared settings: its final loss and its Predictive shapes (cached)."""
    guide = start(autonormal(model), *args)
    train(model, guide, *args)
    return {"loss": final_loss(model, guide, *args), "shapes": predictive_shapes(model, guide, *args)}


@functools.lru_cache(maxsize=None)
def autonormal_data_none():
    guide = start(autonormal(data_none_model), DATA1)
    train(data_none_model, guide, DATA1)
    return {
        "loss": final_loss(data_none_model, guide, DATA1),
        "latent_dim": autonormal_latent_dim(guide),
        "sites": sorted(guide(DATA1)),
        "shapes": predictive_shapes(data_none_model, guide),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_data_none_model(family):
    base = autonormal_data_none()
    guide = flow_guide(data_none_model, family)
    assert not guide.is_set_up  # sets up at its first call, with the data
    start(guide, DATA1)
    untrained = final_loss(data_none_model, guide, DATA1)
    assert guide.latent_dim == base["latent_dim"] == 2  # "obs" is observed, not latent
    assert sorted(guide(DATA1)) == base["sites"] == ["loc", "scale"]
    train(data_none_model, guide, DATA1)
    check_comparison("data_none", family, final_loss(data_none_model, guide, DATA1), base["loss"], untrained, TOL)
    # data=None: the model samples "obs" from the posterior predictive
    shapes = predictive_shapes(data_none_model, guide)
    assert shapes == base["shapes"] and shapes["obs"] == (NUM_SAMPLES, 20)


# -- 2. PyroModule with PyroSample priors (Bayesian linear regression) ------------------------------
def _regression_data():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.7 + torch.randn(30, generator=g)
    return x, y


X2, Y2 = _regression_data()


class BayesianRegression(PyroModule):
    """As in Pyro's Bayesian regression tutorial (with a positive ``sigma``)."""

    def __init__(self, in_features=3):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 5.0).expand([1]).to_event(1))
        self.sigma = PyroSample(dist.LogNormal(0.0, 1.0))

    def forward(self, x, y=None):
        sigma = self.sigma
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def regression_twin(x, y=None):
    """The same sites and densities as :class:`BayesianRegression`, written to broadcast over particles.

    ``nn.Linear`` cannot take a batch of weights, so the module cannot run under vectorized particles
    (as the tutorial says; it trains with one particle).  Its loss is estimated on this twin instead
    (``test_regression_twin_has_the_modules_density`` checks they agree).
    """
    w = pyro.sample("linear.weight", dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
    b = pyro.sample("linear.bias", dist.Normal(0.0, 5.0).expand([1]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    mean = (x * w[..., 0, :]).sum(-1) + b[..., 0]
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


TOL_ONE_PARTICLE = 1.0  # see TOL: this idiom trains with one particle


@functools.lru_cache(maxsize=None)
def autonormal_pyro_module():
    model = BayesianRegression()
    guide = start(autonormal(model), X2, Y2)
    train(model, guide, X2, Y2, particles=1)
    return {
        "loss": final_loss(regression_twin, guide, X2, Y2),
        "latent_dim": autonormal_latent_dim(guide),
        "shapes": predictive_shapes(model, guide, X2),
    }


def test_regression_twin_has_the_modules_density():
    model = BayesianRegression()
    guide = start(flow_guide(model, "planar"), X2, Y2)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        a = Trace_ELBO().loss(model, guide, X2, Y2)
        pyro.set_rng_seed(seed)
        b = Trace_ELBO().loss(regression_twin, guide, X2, Y2)
        assert math.isclose(a, b, rel_tol=1e-5), (a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_pyro_module_with_pyro_sample(family):
    base = autonormal_pyro_module()
    model = BayesianRegression()
    guide = start(flow_guide(model, family), X2, Y2)
    untrained = final_loss(regression_twin, guide, X2, Y2)
    assert guide.latent_dim == base["latent_dim"] == 5
    assert sorted(guide(X2, Y2)) == ["linear.bias", "linear.weight", "sigma"]
    train(model, guide, X2, Y2, particles=1)
    ours = final_loss(regression_twin, guide, X2, Y2)
    check_comparison("pyro_module", family, ours, base["loss"], untrained, TOL_ONE_PARTICLE)
    shapes = predictive_shapes(model, guide, X2)  # parallel=False: nn.Linear again
    assert shapes == base["shapes"] and shapes["obs"] == (NUM_SAMPLES, 30)


# -- 3. pyro.deterministic -----------------------------------------------------------------------------
X3 = torch.linspace(-2.0, 2.0, 30)
Y3 = 1.0 - 0.8 * X3 + 0.4 * torch.randn(30, generator=torch.Generator().manual_seed(3))


def deterministic_model(x, y=None):
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    noise = pyro.sample("noise", dist.HalfNormal(2.0))
    pyro.deterministic("slope_sq", b**2)
    with pyro.plate("data", x.shape[0]):
        mean = pyro.deterministic("mean", a + b * x)
        pyro.sample("obs", dist.Normal(mean, noise), obs=y)


@functools.lru_cache(maxsize=None)
def autonormal_deterministic():
    guide = start(autonormal(deterministic_model), X3, Y3)
    train(deterministic_model, guide, X3, Y3)
    return {
        "loss": final_loss(deterministic_model, guide, X3, Y3),
        "shapes": {p: predictive_shapes(deterministic_model, guide, X3, parallel=p) for p in (False, True)},
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_sites(family):
    base = autonormal_deterministic()
    guide = start(flow_guide(deterministic_model, family), X3, Y3)
    untrained = final_loss(deterministic_model, guide, X3, Y3)
    assert guide.latent_dim == 3  # deterministic sites are not latent
    train(deterministic_model, guide, X3, Y3)
    check_comparison("deterministic", family, final_loss(deterministic_model, guide, X3, Y3), base["loss"],
                     untrained, TOL)
    for parallel in (False, True):
        pyro.set_rng_seed(EVAL_SEED)
        out = Predictive(deterministic_model, guide=guide, num_samples=NUM_SAMPLES, parallel=parallel)(X3)
        shapes = {name: tuple(value.shape) for name, value in out.items()}
        assert shapes == base["shapes"][parallel], parallel
        assert {"mean", "slope_sq"} <= set(shapes)
        assert out["mean"].shape[0] == NUM_SAMPLES and out["mean"].shape[-1] == 30
        # the deterministic sites hold the functions of the drawn latents
        assert torch.allclose(out["slope_sq"].reshape(-1), (out["b"] ** 2).reshape(-1))
        expected = out["a"].reshape(-1, 1) + out["b"].reshape(-1, 1) * X3
        assert torch.allclose(out["mean"].reshape(NUM_SAMPLES, 30), expected)


# -- 4. pyro.factor ------------------------------------------------------------------------------------
FACTOR_SD = 0.1


def factor_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    # a soft constraint x_0 + x_1 ~= 1: the posterior is a correlated Gaussian
    pyro.factor("soft_sum", -0.5 * ((x.sum(-1) - 1.0) / FACTOR_SD) ** 2)


# log of the normaliser: Z = E_{x ~ N(0, I)}[exp(factor)] = sqrt(2 pi sd^2) N(1; 0, 2 + sd^2)
FACTOR_LOG_Z = 0.5 * math.log(2 * math.pi * FACTOR_SD**2) + float(
    dist.Normal(0.0, math.sqrt(2.0 + FACTOR_SD**2)).log_prob(torch.tensor(1.0))
)


def autonormal_factor():
    return autonormal_baseline(factor_model)


@pytest.mark.parametrize("family", FAMILIES)
def test_factor(family):
    base = autonormal_factor()
    guide = start(flow_guide(factor_model, family))
    untrained = final_loss(factor_model, guide)
    assert guide.latent_dim == 2  # a factor is not a latent
    train(factor_model, guide)
    ours = final_loss(factor_model, guide)
    check_comparison("factor", family, ours, base["loss"], untrained, TOL)
    # the factor is counted: the loss cannot beat -log Z (up to the estimate's noise)
    assert ours >= -FACTOR_LOG_Z - 0.05, (ours, -FACTOR_LOG_Z)
    assert base["loss"] >= -FACTOR_LOG_Z - 0.05
    assert predictive_shapes(factor_model, guide) == base["shapes"]


# -- 5. poutine.scale ----------------------------------------------------------------------------------
DATA5 = 3.0 + 0.8 * torch.randn(50, generator=torch.Generator().manual_seed(5))
LIKELIHOOD_SCALE = 0.2


def scaled_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", data.shape[0]), poutine.scale(scale=LIKELIHOOD_SCALE):
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)


def autonormal_scale():
    return autonormal_baseline(scaled_model, DATA5)


@pytest.mark.parametrize("family", FAMILIES)
def test_poutine_scale(family):
    base = autonormal_scale()
    guide = start(flow_guide(scaled_model, family), DATA5)
    untrained = final_loss(scaled_model, guide, DATA5)
    train(scaled_model, guide, DATA5)
    check_comparison("scale", family, final_loss(scaled_model, guide, DATA5), base["loss"], untrained, TOL)
    assert predictive_shapes(scaled_model, guide, DATA5) == base["shapes"]


# -- 6. enumerated discrete sites (TraceEnum_ELBO) -----------------------------------------------------
K6 = 2
DATA6 = torch.cat([-2.0 + 0.5 * torch.randn(10, generator=torch.Generator().manual_seed(6)),
                   2.5 + 0.5 * torch.randn(10, generator=torch.Generator().manual_seed(7))])


@config_enumerate
def gmm(data):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K6)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K6):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", data.shape[0]):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        # Vindex and the unsqueeze keep batch dims (particles, enumeration) apart from the data dim
        loc = Vindex(locs.unsqueeze(-2))[..., assignment]
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)


STEPS6 = 50  # TraceEnum_ELBO steps cost ~5x more


def enum_elbo():
    return TraceEnum_ELBO(num_particles=TRAIN_PARTICLES, vectorize_particles=True, max_plate_nesting=1)


@functools.lru_cache(maxsize=None)
def autonormal_enum():
    blocked = poutine.block(gmm, hide=["assignment"])
    guide = start(autonormal(blocked), DATA6)
    train(gmm, guide, DATA6, elbo=enum_elbo(), steps=STEPS6)
    return {
        "loss": final_loss(gmm, guide, DATA6, elbo_cls=TraceEnum_ELBO, max_plate_nesting=1),
        "latent_dim": autonormal_latent_dim(guide),
        "shapes": predictive_shapes(gmm, guide, DATA6),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_enumerated_mixture(family):
    base = autonormal_enum()
    guide = start(flow_guide(gmm, family), DATA6)  # on the model itself: the enumerated site is skipped
    untrained = final_loss(gmm, guide, DATA6, elbo_cls=TraceEnum_ELBO, max_plate_nesting=1)
    assert guide.latent_dim == base["latent_dim"] == (K6 - 1) + 1 + K6
    assert sorted(guide(DATA6)) == ["locs", "scale", "weights"]
    train(gmm, guide, DATA6, elbo=enum_elbo(), steps=STEPS6)
    ours = final_loss(gmm, guide, DATA6, elbo_cls=TraceEnum_ELBO, max_plate_nesting=1)
    check_comparison("enum", family, ours, base["loss"], untrained, TOL)
    assert predictive_shapes(gmm, guide, DATA6) == base["shapes"]


# -- 7. Predictive before and after training ------------------------------------------------------------
Y7 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA7 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", sigma.shape[0]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


@functools.lru_cache(maxsize=None)
def autonormal_predictive():
    guide = autonormal(eight_schools)
    before = {p: predictive_shapes(eight_schools, guide, SIGMA7, Y7, parallel=p) for p in (False, True)}
    train(eight_schools, guide, SIGMA7, Y7)
    after = {p: predictive_shapes(eight_schools, guide, SIGMA7, parallel=p) for p in (False, True)}
    return {"loss": final_loss(eight_schools, guide, SIGMA7, Y7), "before": before, "after": after}


@pytest.mark.parametrize("family", FAMILIES)
def test_predictive_before_and_after_training(family):
    base = autonormal_predictive()
    guide = flow_guide(eight_schools, family)
    assert not guide.is_set_up
    # the first Predictive call sets the guide up, with the data (so "obs" is observed, not latent)
    before = {p: predictive_shapes(eight_schools, guide, SIGMA7, Y7, parallel=p) for p in (False, True)}
    assert guide.is_set_up and guide.latent_dim == 2 + 8
    assert before == base["before"]
    for shapes in before.values():
        assert shapes["theta"] == (NUM_SAMPLES, 8)
    untrained = final_loss(eight_schools, guide, SIGMA7, Y7)
    train(eight_schools, guide, SIGMA7, Y7)
    check_comparison("predictive", family, final_loss(eight_schools, guide, SIGMA7, Y7), base["loss"], untrained, TOL)
    # after training: the posterior predictive of new observations (y=None)
    after = {p: predictive_shapes(eight_schools, guide, SIGMA7, parallel=p) for p in (False, True)}
    assert after == base["after"]
    for shapes in after.values():
        assert shapes["theta"] == shapes["obs"] == (NUM_SAMPLES, 8)


# -- 8. AutoGuideList with one of ours inside --------------------------------------------------------------
G8, R8 = 6, 5


def _grouped_data():
    g = torch.Generator().manual_seed(8)
    theta = 1.0 + 0.7 * torch.randn(G8, generator=g)
    return theta + 0.5 * torch.randn(R8, G8, generator=g)


Y8 = _grouped_data()


def grouped_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
    noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
    with pyro.plate("groups", G8, dim=-1):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        with pyro.plate("reps", R8, dim=-2):
            pyro.sample("obs", dist.Normal(theta, noise), obs=y)


FLOW_SITES8 = ["mu", "tau", "theta"]


def autonormal_guide_list():
    return autonormal_baseline(grouped_model, Y8)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_guide_list(family):
    base = autonormal_guide_list()
    guide = AutoGuideList(grouped_model)
    guide.append(flow_guide(poutine.block(grouped_model, expose=FLOW_SITES8), family))
    guide.append(autonormal(poutine.block(grouped_model, hide=FLOW_SITES8)))
    start(guide, Y8)
    untrained = final_loss(grouped_model, guide, Y8)
    assert guide[0].latent_dim == 2 + G8
    assert sorted(guide(Y8)) == ["mu", "noise", "tau", "theta"]
    train(grouped_model, guide, Y8)
    check_comparison("guide_list", family, final_loss(grouped_model, guide, Y8), base["loss"], untrained, TOL)
    assert predictive_shapes(grouped_model, guide, Y8) == base["shapes"]


# -- 9. AmortizedFlowGuide on local latents in a subsampled plate -------------------------------------------
N9, B9, SIGMA9 = 64, 16, 0.5
X9 = math.sqrt(1.0 + SIGMA9**2) * torch.randn(N9, 2, generator=torch.Generator().manual_seed(9))
# z_i ~ N(0, I_2), x_i | z_i ~ N(z_i, sigma^2 I_2): x_i ~ N(0, (1 + sigma^2) I_2)
LOG_EVIDENCE9 = float(dist.Normal(0.0, math.sqrt(1.0 + SIGMA9**2)).log_prob(X9).sum())


def local_model(x, subsample_size=B9):
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z, SIGMA9).to_event(1), obs=x[idx])


TOL_EVIDENCE = 2.5  # nats over 64 data points (~0.04 each); measured gaps 0.65-1.7 over seeds 1-5
LR9 = 0.05


def full_loss9(guide):
    """-ELBO of all N9 points: each chunk of B9 points is a whole plate (subsample_size == size), and the
    local posteriors are independent, so the chunks' losses add up."""
    return sum(final_loss(local_model, guide, chunk) for chunk in X9.split(B9))


@functools.lru_cache(maxsize=None)
def autonormal_amortized():
    guide = start(autonormal(local_model), X9, None)
    train(local_model, guide, X9, None, lr=LR9)  # every step sees all the data
    return {"loss": final_loss(local_model, guide, X9, None)}


@pytest.mark.parametrize("family", FAMILIES)
def test_amortized_subsampled_local_latents(family):
    base = autonormal_amortized()
    guide = AmortizedFlowGuide(local_model, plate="data", flow=family, num_flows=NUM_FLOWS, encoder_hidden=(16,))
    start(guide, X9)
    untrained = full_loss9(guide)
    assert guide.local_sites == ["z"] and guide.global_guide is None
    train(local_model, guide, X9, lr=LR9)
    ours = full_loss9(guide)
    print(f"[amortized/{family}] -log evidence={-LOG_EVIDENCE9:.3f}")
    # AutoNormal on the same model without subsampling, same settings (one loc and scale per data point)
    check_comparison("amortized", family, ours, base["loss"], untrained, TOL)
    # close to the exact evidence, which no ELBO beats (up to the estimate's noise)
    assert -LOG_EVIDENCE9 - 0.1 <= ours <= -LOG_EVIDENCE9 + TOL_EVIDENCE, (ours, -LOG_EVIDENCE9)
    shapes = predictive_shapes(local_model, guide, X9)
    assert shapes["z"] == (NUM_SAMPLES, B9, 2) and shapes["x"] == (NUM_SAMPLES, B9, 2)


# -- pyro.optim.ClippedAdam, then median / quantiles --------------------------------------------------------
@pytest.mark.parametrize("kind", ["auto", "amortized"])
def test_median_follows_clipped_adam_training(kind):
    """Pyro's ``ClippedAdam`` updates ``p.data`` in place; the median must follow the trained parameters."""
    if kind == "auto":
        model, args = data_none_model, (DATA1,)
        guide = start(flow_guide(model, "planar"), *args)

        def sample_median():  # the median of fresh posterior draws, through Predictive
            pyro.set_rng_seed(EVAL_SEED)
            draws = Predictive(model, guide=guide, num_samples=2000, parallel=True, return_sites=["loc"])(*args)
            return draws["loc"].median()

        def median():
            return guide.median(*args)["loc"]
    else:
        model, args = local_model, (X9,)
        guide = start(AmortizedFlowGuide(model, plate="data", flow="planar", num_flows=NUM_FLOWS,
                                         encoder_hidden=(16,)), *args)

        def sample_median():
            with torch.no_grad():
                return guide.local_posterior(guide.encode(*args)).sample((2000,)).median(0).values

        def median():
            return guide.median(*args)["z"]

    before = median()
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.1}), Trace_ELBO())
    pyro.set_rng_seed(SEED)
    for _ in range(30):
        svi.step(*args)
    expected = sample_median()
    moved, error = (expected - before).abs().mean(), (median() - expected).abs().mean()
    print(f"[clipped_adam/{kind}] moved={moved:.3f} error={error:.3f}")
    assert moved > 0.3  # training moved the posterior
    assert error < 0.05  # ... and the median follows it (Monte Carlo error ~0.02)
