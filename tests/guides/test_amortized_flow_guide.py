"""Tests of :class:`pyro_nfvi.guides.AmortizedFlowGuide`: local latents in a (subsampled) plate."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO
from torch import nn

from pyro_nfvi import AmortizedFlowGuide
from pyro_nfvi.guides import FastSVI

FAMILIES = ["planar", "radial", "householder", "iaf", "sylvester", "coupling", "none"]
N = 200


def _data():
    g = torch.Generator().manual_seed(1)
    z = 2.0 + 1.5 * torch.randn(N, generator=g)
    return torch.stack([z + 0.5 * torch.randn(N, generator=g), -z + 0.5 * torch.randn(N, generator=g)], -1)


Y = _data()


def hierarchical(y, subsample_size=20):
    """Global mu, tau; per data point a positive scale and a 2-d latent, in a subsampled plate."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", y.shape[0], subsample_size=subsample_size) as idx:
        s = pyro.sample("s", dist.LogNormal(-1.0, 0.3))
        z = pyro.sample("z", dist.Normal(mu.unsqueeze(-1), tau.unsqueeze(-1)).expand(mu.shape + (1,)).to_event(1))
        loc = torch.cat([z, -z], -1)
        pyro.sample("y", dist.Normal(loc, s.unsqueeze(-1)).to_event(1), obs=y[idx])


def test_hierarchical_elbo_improves_steadily():
    guide = AmortizedFlowGuide(hierarchical, plate="data", flow="planar", num_flows=4, encoder_hidden=(32,),
                               model_args=(Y,))
    assert guide.local_sites == ["s", "z"] and guide.local_dim == 2 and guide.plate == "data"
    assert guide.global_guide is not None and guide.global_guide.latent_dim == 2
    svi = SVI(hierarchical, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO(num_particles=4, vectorize_particles=True))
    losses = [svi.step(Y) for _ in range(150)]
    windows = [sum(losses[i : i + 50]) / 50 for i in (0, 50, 100)]
    assert windows[2] < windows[0] - 100 and windows[1] < windows[0], windows
    median = guide.median(Y)
    assert abs(float(median["mu"]) - 2.0) < 0.6
    assert median["z"].shape == (N, 1) and median["s"].shape == (N,)


@pytest.mark.parametrize("elbo", ["vectorized", "jit"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains(family, elbo):
    guide = AmortizedFlowGuide(hierarchical, plate="data", flow=family, num_flows=2, encoder_hidden=(8,),
                               model_args=(Y,))
    loss = Trace_ELBO(num_particles=5, vectorize_particles=True) if elbo == "vectorized" else JitTrace_ELBO()
    svi = SVI(hierarchical, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    losses = [svi.step(Y) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    values = guide(Y)
    assert values["z"].shape == (20, 1) and bool((values["s"] > 0).all())


@pytest.mark.parametrize("family", ["planar", "iaf"])
def test_jit_loss_equals_trace_loss(family):
    guide = AmortizedFlowGuide(hierarchical, plate="data", flow=family, num_flows=2, encoder_hidden=(8,),
                               model_args=(Y,))
    svi = SVI(hierarchical, guide, pyro.optim.Adam({"lr": 0.01}), JitTrace_ELBO())
    svi.step(Y)
    jit = JitTrace_ELBO()
    jit.loss(hierarchical, guide, Y)  # compile
    pyro.set_rng_seed(3)
    a = jit.loss(hierarchical, guide, Y)
    pyro.set_rng_seed(3)
    b = Trace_ELBO().loss(hierarchical, guide, Y)
    assert math.isclose(a, b, rel_tol=1e-5)


def test_fast_path_and_varying_minibatches():
    """Minibatches passed as data (no subsampling in the model); module-local params; one optimizer."""
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(torch.stack([z, -z], -1), 0.5).to_event(1), obs=y)

    with pyro.settings.context(module_local_params=True):
        guide = AmortizedFlowGuide(model, plate="data", flow="planar", num_flows=2, encoder_hidden=(16,),
                                   model_args=(Y[:10],))
        svi = FastSVI(model, guide, Trace_ELBO(num_particles=3, vectorize_particles=True), lr=0.02)
        losses = []
        for step in range(150):
            size = 10 + (step % 3) * 5
            batch = Y[torch.randperm(N)[:size]]
            losses.append(svi.step(batch) / size)
            assert guide(batch)["z"].shape == (size,)
        assert sum(losses[-30:]) < sum(losses[:30])
        params = {id(p) for p in svi.parameters()}
        assert all(id(p) in params for p in guide.parameters())


def test_inner_plate_and_plate_dim():
    """The data plate at dim -2 with local sites inside an inner plate: shapes and particles."""
    def model(x):
        feat = pyro.plate("feat", 3, dim=-1)
        with feat:
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0], dim=-2):
            with feat:
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z * w, 1.0), obs=x)

    x = torch.randn(7, 3)
    guide = AmortizedFlowGuide(model, plate="data", flow="iaf", num_flows=2, encoder_hidden=(8,), model_args=(x,))
    assert guide.local_dim == 3 and guide.input_dim == 3
    assert guide(x)["z"].shape == (7, 3) and guide(x)["w"].shape == (3,)
    for particles in (1, 4):
        loss = Trace_ELBO(num_particles=particles, vectorize_particles=True).loss(model, guide, x)
        assert math.isfinite(loss)


def test_encoder_input_and_encoder_overrides():
    transform_calls = []

    def features(y):
        transform_calls.append(1)
        return torch.cat([y, y**2], -1)

    trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    guide = AmortizedFlowGuide(hierarchical, plate="data", flow="radial", num_flows=2, encoder_input=features,
                               encoder=trunk, model_args=(Y,))
    assert guide.input_dim == 4 and guide.hidden_dim == 6 and guide.encoder is trunk
    n = len(transform_calls)
    values = guide(Y)
    assert len(transform_calls) == n + 1 and values["z"].shape == (20, 1)
    assert math.isfinite(Trace_ELBO().loss(hierarchical, guide, Y))


def test_evaluation_contract():
    """encode / local_posterior / unpack_local as the evaluation module uses them."""
    guide = AmortizedFlowGuide(hierarchical, plate="data", flow="planar", num_flows=3, encoder_hidden=(8,),
                               model_args=(Y,))
    encoded = guide.encode(Y)
    assert encoded["loc"].shape == encoded["scale_raw"].shape == (N, 2)
    assert len(encoded["flow"]) == 3 and encoded["flow"][0]["u"].shape == (N, 2)
    free = {"loc": encoded["loc"].detach().requires_grad_(), "scale_raw": encoded["scale_raw"].detach(),
            "flow": [{k: v.detach().requires_grad_() for k, v in raw.items()} for raw in encoded["flow"]]}
    q = guide.local_posterior(free)
    assert q.batch_shape == (N,) and q.event_shape == (2,)
    z = q.rsample((5,))
    assert z.shape == (5, N, 2)
    values, log_det = guide.unpack_local(z, log_det=True)
    assert values["s"].shape == (5, N) and values["z"].shape == (5, N, 1) and log_det.shape == (5, N)
    # s = exp(z_0): log|det| of the map to the supports is z_0
    assert torch.allclose(log_det, z[..., 0])
    q.log_prob(z).sum().backward()
    assert free["loc"].grad is not None and free["flow"][0]["u"].grad is not None
    with pytest.raises(ValueError, match=r"\(\.\.\., N, 2\)"):
        guide.unpack_local(torch.zeros(3, 5))


def test_amortized_flow_changes_per_data_point():
    guide = AmortizedFlowGuide(hierarchical, plate="data", flow="planar", num_flows=2, encoder_hidden=(8,),
                               model_args=(Y,))
    svi = SVI(hierarchical, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(30):
        svi.step(Y)
    u = guide.encode(Y)["flow"][0]["u"]
    assert u.std(0).max() > 1e-4  # per-point flow parameters, not one global flow


@pytest.mark.parametrize("family", ["iaf", "planar"])
def test_checkpoint_round_trips(family, tmp_path):
    opts = {"permutation": "random"} if family == "iaf" else {}
    kwargs = dict(plate="data", flow=family, num_flows=2, encoder_hidden=(8,), model_args=(Y,), **opts)
    guide = AmortizedFlowGuide(hierarchical, **kwargs)
    svi = SVI(hierarchical, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(5):
        svi.step(Y)
    path = str(tmp_path / "store.pt")
    pyro.get_param_store().save(path)
    pyro.set_rng_seed(11)
    expected = guide(Y)
    state = guide.state_dict()

    pyro.set_rng_seed(99)
    fresh = AmortizedFlowGuide(hierarchical, **kwargs)
    fresh.load_state_dict(state)
    pyro.set_rng_seed(11)
    got = fresh(Y)
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    pyro.clear_param_store()
    pyro.set_rng_seed(98)
    fresh = AmortizedFlowGuide(hierarchical, **kwargs)
    pyro.get_param_store().load(path)
    pyro.set_rng_seed(11)
    got = fresh(Y)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_predictive_shapes():
    guide = AmortizedFlowGuide(hierarchical, plate="data", flow="planar", num_flows=2, encoder_hidden=(8,),
                               model_args=(Y,))
    samples = Predictive(hierarchical, guide=guide, num_samples=4)(Y)
    assert samples["z"].shape == (4, 20, 1) and samples["s"].shape == (4, 20) and samples["mu"].shape[0] == 4


def test_lazy_setup():
    guide = AmortizedFlowGuide(hierarchical, plate="data", flow="planar", num_flows=2, encoder_hidden=(8,))
    assert guide.local_sites is None
    assert math.isfinite(Trace_ELBO().loss(hierarchical, guide, Y))
    assert guide.local_sites == ["s", "z"]


def test_errors():
    with pytest.raises(ValueError, match=r"no plate named 'points'.*\['data'\]"):
        AmortizedFlowGuide(hierarchical, plate="points", model_args=(Y,))
    with pytest.raises(ValueError, match="unknown flow"):
        AmortizedFlowGuide(hierarchical, flow="nope", model_args=(Y,))

    def transformed(y):
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=(y[:, 0] - 1.0) * 3.0)

    with pytest.raises(ValueError, match="'y'.*encoder_input"):
        AmortizedFlowGuide(transformed, model_args=(Y,))

    def no_local(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[:, 0])

    with pytest.raises(ValueError, match="AutoFlowGuide"):
        AmortizedFlowGuide(no_local, model_args=(Y,))


def test_create_plates_supplies_the_data_plate():
    indices = torch.arange(0, N, 10)

    def create_plates(y, subsample_size=20):
        return pyro.plate("data", y.shape[0], subsample=indices)

    guide = AmortizedFlowGuide(hierarchical, plate="data", flow="planar", num_flows=2, encoder_hidden=(8,),
                               encoder_input=lambda y, subsample_size=20: y, create_plates=create_plates,
                               model_args=(Y,))
    trace = pyro.poutine.trace(guide).get_trace(Y)
    assert torch.equal(trace.nodes["data"]["value"], indices)
    # the encoder saw exactly the subsampled rows
    expected = guide.local_posterior(guide._encode(Y[indices]))
    z = trace.nodes[f"_{guide._pyro_name}_local_latent"]["value"]
    assert torch.allclose(trace.nodes[f"_{guide._pyro_name}_local_latent"]["fn"].log_prob(z), expected.log_prob(z))
    assert math.isfinite(Trace_ELBO().loss(hierarchical, guide, Y))


def test_category_ids_are_refused_as_encoder_input():
    """Pyro's LDA: the observed words are category ids; reading them as numbers would be meaningless."""
    words = torch.randint(0, 50, (30, 8))

    def lda_like(data):
        with pyro.plate("docs", data.shape[0]):
            topic = pyro.sample("topic", dist.Dirichlet(torch.ones(4)))
            probs = (topic @ torch.softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(0)), -1))
            with pyro.plate("words", data.shape[1], dim=-2):
                pyro.sample("w", dist.Categorical(probs.unsqueeze(-3)).expand([data.shape[1], data.shape[0]]),
                            obs=data.T)

    with pytest.raises(ValueError, match="category ids.*encoder_input"):
        AmortizedFlowGuide(lda_like, plate="docs", model_args=(words,))
    guide = AmortizedFlowGuide(lda_like, plate="docs", encoder_hidden=(8,), model_args=(words,),
                               encoder_input=lambda data: nn.functional.one_hot(data, 50).sum(1).float())
    assert guide.local_sites == ["topic"] and guide.input_dim == 50
