"""Tests of pyro_nfvi.objectives: schedules, the step counter and the weighted ELBO terms."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from torch.distributions import constraints

from pyro_nfvi.objectives import AnnealedELBO, constant, linear_warmup, rezende_mohamed

X = torch.tensor([0.3, -1.2, 2.0])


def model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)


def guide(x, reparam=True):
    loc = pyro.param("loc", torch.tensor([1.5, -0.1, 0.05]))
    scale = pyro.param("scale", torch.tensor([0.4, 0.9, 1.0]), constraint=constraints.positive)
    fn = dist.Normal(loc, scale)
    if not reparam:
        fn = fn.has_rsample_(False)
    pyro.sample("z", fn.to_event(1))


@pytest.fixture(autouse=True)
def _clean():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _terms(seed, x=X):
    """``(z, log q, log p(z), log p(x|z))`` computed by hand from one guide draw with ``seed``."""
    pyro.set_rng_seed(seed)
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"].detach()
    loc, scale = pyro.param("loc"), pyro.param("scale")
    lq = torch.distributions.Normal(loc, scale).log_prob(z)
    lpz = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    lpx = torch.distributions.Normal(z, 0.5).log_prob(x)
    return z, lq, lpz, lpx


def test_schedule_values():
    assert rezende_mohamed(0) == pytest.approx(0.01)
    assert rezende_mohamed(100) == pytest.approx(0.02)
    assert rezende_mohamed(4900) == pytest.approx(0.5)
    assert rezende_mohamed(9900) == 1.0 and rezende_mohamed(50000) == 1.0
    ramp = linear_warmup(200, start=0.1)
    assert [ramp(t) for t in (0, 100, 200, 400)] == pytest.approx([0.1, 0.55, 1.0, 1.0])
    assert constant(0.25)(10**6) == 0.25
    with pytest.raises(ValueError, match="warmup_steps"):
        linear_warmup(0)
    with pytest.raises(ValueError, match="t must be"):
        rezende_mohamed(-1)


def test_counter_advances_once_per_svi_step_only():
    elbo = AnnealedELBO(mode="free_energy")  # rezende_mohamed
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    assert elbo.t == 0 and elbo.beta == pytest.approx(0.01)
    for _ in range(5):
        svi.step(X)
    assert elbo.t == 5 and elbo.beta == pytest.approx(0.01 + 5e-4)
    svi.evaluate_loss(X)
    elbo.loss(model, guide, X)
    elbo.differentiable_loss(model, guide, X)
    module = elbo(model, guide)  # ELBOModule-style use
    assert isinstance(module, torch.nn.Module) and module(X).requires_grad
    assert elbo.t == 5
    elbo.advance(995)
    assert elbo.beta == pytest.approx(0.11)
    warm = AnnealedELBO(mode="kl_warmup", warmup_steps=10)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), warm)
    betas = []
    for _ in range(12):
        betas.append(warm.beta)
        svi.step(X)
    assert betas == pytest.approx([min(1.0, t / 10) for t in range(12)])
    assert AnnealedELBO(mode="free_bits", free_bits=0.5).beta == 1.0


@pytest.mark.parametrize("mode", ["free_energy", "kl_warmup"])
def test_annealed_loss_equals_hand_computed_terms(mode):
    beta = 0.3
    elbo = AnnealedELBO(schedule=constant(beta), mode=mode)
    pyro.set_rng_seed(1)
    loss = elbo.loss(model, guide, X)
    _, lq, lpz, lpx = _terms(1)
    if mode == "free_energy":  # log q - beta log p(x, z)
        expected = lq.sum() - beta * (lpz.sum() + lpx.sum())
    else:  # -log p(x|z) - beta (log p(z) - log q)
        expected = -lpx.sum() - beta * (lpz.sum() - lq.sum())
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    pyro.set_rng_seed(1)
    at_one = AnnealedELBO(schedule=constant(1.0), mode=mode).loss(model, guide, X)
    pyro.set_rng_seed(1)
    assert at_one == pytest.approx(Trace_ELBO().loss(model, guide, X), rel=1e-6)


@pytest.mark.parametrize("mode", ["free_energy", "kl_warmup"])
def test_annealed_gradients_equal_hand_computed(mode):
    beta = 0.4
    pyro.set_rng_seed(2)
    AnnealedELBO(schedule=constant(beta), mode=mode).loss_and_grads(model, guide, X)
    got = [p.grad.clone() for p in (pyro.param("loc").unconstrained(), pyro.param("scale").unconstrained())]
    z, *_ = _terms(2)
    loc_u = pyro.param("loc").unconstrained().detach().clone().requires_grad_()
    scale_u = pyro.param("scale").unconstrained().detach().clone().requires_grad_()
    scale = scale_u.exp()
    eps = (z - loc_u.detach()) / scale.detach()
    zz = loc_u + scale * eps
    lq = torch.distributions.Normal(loc_u, scale).log_prob(zz).sum()
    lpz = torch.distributions.Normal(0.0, 1.0).log_prob(zz).sum()
    lpx = torch.distributions.Normal(zz, 0.5).log_prob(X).sum()
    hand = lq - beta * (lpz + lpx) if mode == "free_energy" else -lpx - beta * (lpz - lq)
    expected = torch.autograd.grad(hand, [loc_u, scale_u])
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-6)


def test_score_function_gradient_matches_reparameterized():
    def plate_model(x):
        with pyro.plate("dims", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def plate_guide(x, reparam):
        loc = pyro.param("loc", torch.tensor([1.5, -0.1, 0.05]))
        fn = dist.Normal(loc, torch.tensor([0.4, 0.9, 1.0]))
        with pyro.plate("dims", 3):
            pyro.sample("z", fn if reparam else fn.has_rsample_(False))

    beta, n = 0.5, 20000
    grads, losses = [], []
    for reparam in (True, False):
        pyro.clear_param_store()
        elbo = AnnealedELBO(Trace_ELBO(num_particles=n, vectorize_particles=True), schedule=constant(beta))
        pyro.set_rng_seed(3)
        loss = elbo.differentiable_loss(plate_model, lambda x: plate_guide(x, reparam), X)
        losses.append(loss.item())
        grads.append(torch.autograd.grad(loss, [pyro.param("loc").unconstrained()])[0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # same draws, same value
    # exact gradient of E_q[log q - beta log p(x, z)] w.r.t. loc: beta (loc - 0) + beta (loc - x) / 0.25
    loc = pyro.param("loc").detach()
    exact = beta * loc + beta * (loc - X) / 0.25
    assert torch.allclose(grads[0], exact, atol=0.02), (grads[0], exact)
    assert torch.allclose(grads[1], exact, atol=0.25), (grads[1], exact)


def test_free_bits_per_dimension_floor_hand_computed():
    lam = 0.5
    elbo = AnnealedELBO(mode="free_bits", free_bits=lam)
    pyro.set_rng_seed(5)
    loss = elbo.loss(model, guide, X)
    _, lq, lpz, lpx = _terms(5)
    kl = lq - lpz  # per dimension: both guide and prior factorise
    expected = -lpx.sum() + torch.clamp(kl, min=lam).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert (kl > lam).any() and (kl < lam).any()  # the test exercises both branches of the max


def test_free_bits_averages_particles_before_the_floor():
    lam, n = 0.3, 3
    elbo = AnnealedELBO(Trace_ELBO(num_particles=n), mode="free_bits", free_bits=lam)
    pyro.set_rng_seed(5)
    loss = elbo.loss(model, guide, X)
    pyro.set_rng_seed(5)
    kls, recs = [], []
    for _ in range(n):
        z = poutine.trace(guide).get_trace(X).nodes["z"]["value"].detach()
        q = torch.distributions.Normal(pyro.param("loc"), pyro.param("scale"))
        kls.append(q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z))
        recs.append(torch.distributions.Normal(z, 0.5).log_prob(X).sum())
    expected = -torch.stack(recs).mean() + torch.clamp(torch.stack(kls).mean(0), min=lam).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-6)


def test_free_bits_with_subsampling_and_mask():
    n_full, idx = 10, torch.tensor([1, 4, 6, 9])
    data = torch.linspace(-1.0, 1.0, n_full * 2).reshape(n_full, 2)
    keep = torch.tensor([True, True, False, True])

    def local_model(x):
        with pyro.plate("data", n_full, subsample=idx), poutine.mask(mask=keep):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4, 2]).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x[idx])

    def local_guide(x):
        loc = pyro.param("lloc", 0.8 * data[idx])
        scale = pyro.param("lscale", torch.full((4, 2), 0.6), constraint=constraints.positive)
        with pyro.plate("data", n_full, subsample=idx), poutine.mask(mask=keep):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    lam = 0.5
    pyro.set_rng_seed(6)
    loss = AnnealedELBO(mode="free_bits", free_bits=lam).loss(local_model, local_guide, data)
    pyro.set_rng_seed(6)
    z = poutine.trace(local_guide).get_trace(data).nodes["z"]["value"].detach()
    s = n_full / len(idx)
    w = s * keep.to(z.dtype)[:, None]  # (4, 1) subsample scale times mask
    kl = dist.Normal(pyro.param("lloc"), pyro.param("lscale")).log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)
    rec = dist.Normal(z, 0.5).log_prob(data[idx])
    group_kl = (w * kl).sum(0)  # per latent dimension, summed over the minibatch
    floor = lam * w.sum()  # lambda times the effective number of data points, 7.5
    expected = -(w * rec).sum() + torch.maximum(group_kl, floor).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert (group_kl < floor).any() and (group_kl > floor).any()  # both branches of the max


def test_free_bits_non_factorised_guides_floor_the_site_or_joint_kl():
    lam = 2.0
    scale_tril = torch.tensor([[0.5, 0.0, 0.0], [0.2, 0.6, 0.0], [0.1, -0.1, 0.7]])

    def mvn_guide(x):
        loc = pyro.param("mloc", torch.tensor([1.0, 0.0, 0.5]))
        pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))

    pyro.set_rng_seed(7)
    loss = AnnealedELBO(mode="free_bits", free_bits=lam).loss(model, mvn_guide, X)
    pyro.set_rng_seed(7)
    z = poutine.trace(mvn_guide).get_trace(X).nodes["z"]["value"].detach()
    log_q = dist.MultivariateNormal(pyro.param("mloc"), scale_tril=scale_tril).log_prob(z)
    kl = log_q - dist.Normal(0.0, 1.0).log_prob(z).sum()
    rec = dist.Normal(z, 0.5).log_prob(X).sum()
    assert loss == pytest.approx((-rec + torch.clamp(kl, min=3 * lam)).item(), rel=1e-6)

    auto = AutoMultivariateNormal(model)
    auto(X)  # initialise
    pyro.set_rng_seed(8)
    loss = AnnealedELBO(mode="free_bits", free_bits=lam).loss(model, auto, X)
    pyro.set_rng_seed(8)
    gt = poutine.trace(auto).get_trace(X)
    gt.compute_log_prob()
    z = gt.nodes["z"]["value"].detach()
    log_q = sum(site["log_prob"].sum() for site in gt.nodes.values() if site["type"] == "sample")
    kl = log_q - dist.Normal(0.0, 1.0).log_prob(z).sum()
    rec = dist.Normal(z, 0.5).log_prob(X).sum()
    assert loss == pytest.approx((-rec + torch.clamp(kl, min=3 * lam)).item(), rel=1e-5)


@pytest.mark.parametrize("vectorize", [False, True])
def test_free_bits_inactive_floor_equals_trace_elbo(vectorize):
    def far_guide(x):  # KL of each dimension ~ 2 nats >> lambda
        pyro.sample("z", dist.Normal(torch.tensor([2.0, -2.0, 2.0]), 0.5).to_event(1))

    n = 8
    pyro.set_rng_seed(9)
    expected = Trace_ELBO(num_particles=n, vectorize_particles=vectorize).loss(model, far_guide, X)
    pyro.set_rng_seed(9)
    elbo = AnnealedELBO(Trace_ELBO(num_particles=n, vectorize_particles=vectorize), mode="free_bits", free_bits=0.01)
    assert elbo.loss(model, far_guide, X) == pytest.approx(expected, rel=1e-6)


def test_svi_training_with_autoguides_and_vectorized_particles():
    for mode, extra in (("kl_warmup", {"warmup_steps": 20}), ("free_bits", {"free_bits": 0.1})):
        pyro.clear_param_store()
        elbo = AnnealedELBO(Trace_ELBO(num_particles=4, vectorize_particles=True), mode=mode, **extra)
        svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), elbo)
        losses = [svi.step(X) for _ in range(30)]
        assert elbo.t == 30 and all(torch.isfinite(torch.tensor(losses)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        AnnealedELBO(mode="tempered")
    with pytest.raises(ValueError, match="warmup_steps"):
        AnnealedELBO(mode="kl_warmup")
    with pytest.raises(ValueError, match="free_bits"):
        AnnealedELBO(mode="free_bits")
    with pytest.raises(ValueError, match="schedule"):
        AnnealedELBO(mode="free_bits", free_bits=1.0, schedule=constant(1.0))
    with pytest.raises(TypeError, match="callable"):
        AnnealedELBO(schedule=0.5)
    with pytest.raises(TypeError, match="Trace_ELBO"):
        AnnealedELBO(TraceEnum_ELBO())
    with pytest.raises(ValueError, match="not reparameterised"):
        AnnealedELBO(mode="free_bits", free_bits=0.1).loss(model, lambda x: guide(x, False), X)
    with pytest.raises(ValueError, match="finite"):
        AnnealedELBO(schedule=lambda t: -1.0).beta
