"""SVIModule on PyTorch Lightning: one process, two processes over gloo (DDP), checkpoints, guard.

The 2-process DDP test trains the MNIST IAF VAE through ``nfvi vae --strategy ddp`` (which subclasses
SVIModule) against a one-process run; ``tests/lightning_ddp_script.py`` still runs its tiny VAE on
1 or N processes by hand (``python tests/lightning_ddp_script.py OUT DEVICES STEPS``).
"""
import importlib
import json
import os
import pathlib
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip("lightning")

from pyro_nfvi.guides import AmortizedFlowGuide, AutoFlowGuide  # noqa: E402
from pyro_nfvi.lightning import SVIModule  # noqa: E402
from pyro_nfvi.objectives import IW_ELBO, STL_ELBO, AnnealedELBO, linear_warmup  # noqa: E402

pytestmark = pytest.mark.lightning

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lightning_ddp_script import N, VAE, data  # noqa: E402


@pytest.fixture(autouse=True)
def _module_local_params():
    with pyro.settings.context(module_local_params=True):
        yield


class Losses(lightning.Callback):
    """Records the loss of every training step."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        value = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(value))


def trainer(max_steps, *callbacks, max_epochs=None):
    return lightning.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=max_epochs,
                             enable_progress_bar=False,
                             logger=False, enable_checkpointing=False, enable_model_summary=False,
                             callbacks=list(callbacks))


def vae_module(loss=None, seed=0, **kwargs):
    pyro.set_rng_seed(seed)
    x = data()
    model = VAE()
    guide = AmortizedFlowGuide(model, plate="data", flow="iaf", num_flows=1, encoder_hidden=(16,),
                               model_args=(x[:4], torch.arange(4)))
    loader = DataLoader(TensorDataset(x, torch.arange(N)), batch_size=16, shuffle=False)
    return SVIModule(model, guide, loss=loss, lr=0.01, **kwargs), loader


class Regression(torch.nn.Module):
    """Bayesian linear regression; the likelihood's plate is subsampled and scaled to ``n``."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, x, y, idx):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 2.0).to_event(1))
        with pyro.plate("data", size=self.n, subsample=idx):
            pyro.sample("y", dist.Normal((x * w.unsqueeze(-2)).sum(-1), 0.5), obs=y)


def regression_module(guide_kind, loss):
    n = 32
    x = torch.randn(n, 2)
    y = x @ torch.tensor([1.0, -1.0]) + 0.5 * torch.randn(n)
    model = Regression(n)
    if guide_kind == "auto":
        guide = AutoFlowGuide(model, flow="iaf", num_flows=1, model_args=(x[:8], y[:8], torch.arange(8)))
        loader = DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=8)
    else:
        # a VAE-like local latent per data point: the amortized guide on the subsampled plate
        model = VAE(n)
        xb = torch.bernoulli(torch.full((n, 20), 0.3))
        guide = AmortizedFlowGuide(model, plate="data", flow="iaf", num_flows=1, encoder_hidden=(8,),
                                   model_args=(xb[:8], torch.arange(8)))
        loader = DataLoader(TensorDataset(xb, torch.arange(n)), batch_size=8)
    return SVIModule(model, guide, loss=loss, lr=0.01), loader


def test_single_process_training_decreases_the_loss():
    module, loader = vae_module()
    record = Losses()
    trainer(60, record).fit(module, loader)
    first, last = sum(record.losses[:8]) / 8, sum(record.losses[-8:]) / 8
    assert len(record.losses) == 60
    assert last < first - 20, (first, last)


@pytest.mark.parametrize("guide_kind", ["auto", "amortized"])
@pytest.mark.parametrize("objective", ["trace", "annealed", "stl", "iw"])
def test_every_guide_and_objective(guide_kind, objective):
    loss = {
        "trace": lambda: Trace_ELBO(),
        "annealed": lambda: AnnealedELBO(schedule=linear_warmup(10)),
        "stl": lambda: STL_ELBO(),
        "iw": lambda: IW_ELBO(num_particles=3),
    }[objective]()
    module, loader = regression_module(guide_kind, loss)
    before = [p.detach().clone() for p in module.trained_parameters()]
    t = trainer(3)
    t.fit(module, loader)
    assert t.global_step == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, module.trained_parameters()))
    assert torch.isfinite(t.callback_metrics["loss"]) and torch.isfinite(t.callback_metrics["grad_norm"])
    if objective == "annealed":
        assert loss.t == 3
        assert float(t.callback_metrics["beta"]) == pytest.approx(linear_warmup(10)(2))


def test_dict_batch_becomes_keyword_arguments():
    module, _ = regression_module("auto", Trace_ELBO())
    n = 32
    x, y = torch.randn(n, 2), torch.randn(n)

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"x": x[i], "y": y[i], "idx": torch.tensor(i)}

    t = trainer(2)
    t.fit(module, DataLoader(Dicts(), batch_size=8))
    assert t.global_step == 2


def test_the_guard_skips_a_non_finite_step():
    module, _ = vae_module()
    x = data()[:16]
    x[:] = float("nan")  # one epoch of one batch with a NaN likelihood
    loader = DataLoader(TensorDataset(x, torch.arange(16)), batch_size=16, shuffle=False)
    before = {k: v.detach().clone() for k, v in module.elbo.named_parameters()}
    with pytest.warns(RuntimeWarning, match="skipped"):
        t = trainer(-1, max_epochs=1)
        with pyro.validation_enabled(False):
            t.fit(module, loader)
    assert module.guard.skipped == 1
    assert all(torch.equal(before[k], v) for k, v in module.elbo.named_parameters())
    assert not t.optimizers[0].state  # Adam never stepped: no moments
    assert float(t.callback_metrics["skipped"]) == 1.0
    assert t.global_step == 0  # Lightning counts applied optimizer steps only


def test_the_guard_raises_after_max_skips():
    module, _ = vae_module(max_skips=2)
    x = data()
    x[:] = float("nan")
    loader = DataLoader(TensorDataset(x, torch.arange(N)), batch_size=16, shuffle=False)
    with pytest.raises(FloatingPointError, match="2 consecutive steps"), pyro.validation_enabled(False):
        with pytest.warns(RuntimeWarning):
            trainer(5).fit(module, loader)


def test_checkpoint_resumes_exactly(tmp_path):
    schedule = linear_warmup(40)
    # one batch per epoch: Lightning restarts a DataLoader's epoch on resume, so the data order is
    # the same whatever the interruption point
    loader = DataLoader(TensorDataset(data(), torch.arange(N)), batch_size=N, shuffle=False)
    # uninterrupted: 16 steps
    full, _ = vae_module(loss=AnnealedELBO(schedule=schedule, mode="kl_warmup"))
    record_full = Losses()
    trainer(16, record_full).fit(full, loader)
    # interrupted after 8 steps, saved, rebuilt (another seed), resumed
    first, _ = vae_module(loss=AnnealedELBO(schedule=schedule, mode="kl_warmup"))
    t = trainer(8)
    t.fit(first, loader)
    path = tmp_path / "run.ckpt"
    t.save_checkpoint(path)
    resumed, _ = vae_module(loss=AnnealedELBO(schedule=schedule, mode="kl_warmup"), seed=99)
    record = Losses()
    t2 = trainer(16, record)
    t2.fit(resumed, loader, ckpt_path=path)
    assert t.global_step == 8 and t2.global_step == 16
    assert resumed.objective.t == full.objective.t == 16
    assert record.losses == record_full.losses[8:]
    for (k, a), (_, b) in zip(full.elbo.state_dict().items(), resumed.elbo.state_dict().items()):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, k
    sa, sb = full.optimizers().optimizer.state_dict(), resumed.optimizers().optimizer.state_dict()
    for i in sa["state"]:
        for key in sa["state"][i]:
            assert torch.equal(torch.as_tensor(sa["state"][i][key]), torch.as_tensor(sb["state"][i][key]))


def test_needs_module_local_params():
    with pyro.settings.context(module_local_params=False):
        model = VAE()
        guide = AmortizedFlowGuide(model, plate="data", num_flows=1, encoder_hidden=(4,),
                                   model_args=(data()[:4], torch.arange(4)))
        with pytest.raises(RuntimeError, match="module_local_params=True"):
            SVIModule(model, guide)


def test_needs_a_set_up_guide():
    model = VAE()
    guide = AmortizedFlowGuide(model, plate="data", num_flows=1, encoder_hidden=(4,))
    with pytest.raises(ValueError, match="model_args"):
        SVIModule(model, guide)


def test_import_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.delitem(sys.modules, "pyro_nfvi.lightning")
    with pytest.raises(ImportError, match=r"pip install pyro_nfvi\[lightning\]"):
        importlib.import_module("pyro_nfvi.lightning")


def test_the_core_never_imports_lightning():
    code = ("import sys, pyro_nfvi, pyro_nfvi.guides, pyro_nfvi.objectives, pyro_nfvi.recipe, pyro_nfvi.cli; "
            "print('lightning' in sys.modules)")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_nfvi_vae_ddp_two_processes_match_one_process(tmp_path):
    """``nfvi vae`` on MNIST with an IAF guide: 2 CPU processes over gloo (DDP) vs one process, the same
    seed, data and global batch of 20, 300 steps; the final ELBO agrees within Monte Carlo tolerance
    and both ranks end with identical parameters."""
    from pyro_nfvi.cli import main

    common = ["vae", "--flow", "iaf", "--num-flows", "2", "--num-train", "2000", "--num-valid", "200",
              "--num-test", "100", "--batch-size", "20", "--epochs", "3", "--hidden", "32", "--latent-dim", "4",
              "--iwae-k", "0", "--warmup", "0", "--lr", "3e-3", "--seed", "0", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "single")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(HERE.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-m", "pyro_nfvi.cli"] + common
                          + ["--out", str(tmp_path / "ddp"), "--strategy", "ddp", "--devices", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("single", "ddp"))
    assert (two["strategy"], two["world_size"], two["batch_per_process"], two["steps"]) == ("ddp", 2, 10, 300)
    assert two["ranks_identical"] is True and two["max_param_diff"] == 0.0
    assert (tmp_path / "ddp" / "last.ckpt").exists() and (tmp_path / "ddp" / "best.ckpt").exists()
    for key in ("train_elbo", "valid_elbo"):  # -ELBO after training: mean and standard error over the images
        (m1, s1), (m2, s2) = one[key], two[key]
        tolerance = 4 * (s1 ** 2 + s2 ** 2) ** 0.5 + 0.02 * abs(m1)  # + 2% for the different training noise
        assert abs(m1 - m2) < tolerance, (key, one[key], two[key], tolerance)
    assert two["history"][-1]["valid"] < two["history"][0]["valid"]  # it trained
