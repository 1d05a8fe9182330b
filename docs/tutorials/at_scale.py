"""# Training at scale: FastSVI, checkpoints, Lightning

Three tools for long runs:

* {class}`~pyro_nfvi.guides.FastSVI`, the fast path: Pyro's `ELBOModule` with one fused torch
  optimizer over every parameter, and a guard that skips non-finite steps;
* checkpoints ({meth}`FastSVI.save <pyro_nfvi.guides.FastSVI.save>`,
  {func}`~pyro_nfvi.guides.save_checkpoint`) that hold everything a run needs, so a resumed run
  is identical to an uninterrupted one;
* {class}`~pyro_nfvi.lightning.SVIModule`, which hands the model and guide to PyTorch Lightning,
  for its trainers, callbacks and DDP across processes or machines.

The model is a Bayesian linear regression with a subsampled data plate, scaled to the full data
size, so every minibatch gives an unbiased estimate of the full-data ELBO.
"""
import os

import lightning
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch.utils.data import DataLoader, TensorDataset

from pyro_nfvi.guides import AutoFlowGuide, FastSVI
from pyro_nfvi.lightning import SVIModule

N, D, BATCH = 2000, 5, 100
generator = torch.Generator().manual_seed(0)
x = torch.randn(N, D, generator=generator)
w_true = torch.randn(D, generator=generator)
y = x @ w_true + 0.5 * torch.randn(N, generator=generator)


class Regression(torch.nn.Module):
    def forward(self, x, y, idx):
        w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", size=N, subsample=idx):  # scaled to the N data points
            pyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


def batch(step):
    idx = torch.randint(N, (BATCH,), generator=torch.Generator().manual_seed(step))
    return x[idx], y[idx], idx

# %%
# ## FastSVI
#
# Under `module_local_params=True` the guide's parameters are ordinary module parameters, not
# entries of Pyro's global param store; {class}`~pyro_nfvi.guides.FastSVI` steps them all with one
# optimizer.  `model_args=` sets the guide up at construction, so the optimizer exists at once.

def make_run(seed=0):
    pyro.set_rng_seed(seed)
    model = Regression()
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2, model_args=batch(0))
    return FastSVI(model, guide, Trace_ELBO(), lr=0.02)


with pyro.settings.context(module_local_params=True):
    svi = make_run()
    for step in range(300):
        loss = svi.step(*batch(step))
    print(f"after {svi.num_steps} steps: loss {loss:.1f}")
    print("posterior median of w:", svi.guide.median(*batch(0))["w"].numpy().round(2))
    print("true w:               ", w_true.numpy().round(2))

# %%
# ## Checkpoints and resume
#
# `save` writes the guide, the model's parameters, the optimizer state, the objective's step
# counter, the guard's counters, the step number and the RNG states, atomically (a crash during the
# write leaves the previous checkpoint intact).  A fresh run that loads it continues exactly: here
# 100 steps, a checkpoint, then 100 more in a new `FastSVI`, give the same parameters as 200 steps
# in one go.

with pyro.settings.context(module_local_params=True):
    straight = make_run()
    for step in range(200):
        straight.step(*batch(step))

    first = make_run()
    for step in range(100):
        first.step(*batch(step))
    first.save("run.pt")

    resumed = make_run(seed=123)  # a different seed: everything comes from the checkpoint
    info = resumed.load("run.pt")
    for step in range(info["step"], 200):
        resumed.step(*batch(step))

same = all(torch.equal(a, b) for a, b in zip(straight.guide.parameters(), resumed.guide.parameters()))
print(f"checkpoint at step {info['step']} ({os.path.getsize('run.pt')} bytes); resumed == uninterrupted: {same}")

# %%
# ## PyTorch Lightning
#
# {class}`~pyro_nfvi.lightning.SVIModule` is a `LightningModule`: each batch of the `DataLoader` is
# passed to the model as its arguments.  Lightning's checkpoints hold the same state as `save`, and
# `trainer.fit(..., ckpt_path=...)` resumes.

with pyro.settings.context(module_local_params=True):
    pyro.set_rng_seed(0)
    model = Regression()
    guide = AutoFlowGuide(model, flow="iaf", num_flows=2, model_args=batch(0))
    module = SVIModule(model, guide, lr=0.02)
    loader = DataLoader(TensorDataset(x, y, torch.arange(N)), batch_size=BATCH, shuffle=True)
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=".")
    trainer.fit(module, loader)
    print(f"Lightning: {trainer.global_step} steps, loss {float(trainer.callback_metrics['loss']):.1f}")
    print("posterior median of w:", guide.median(*batch(0))["w"].numpy().round(2))

# %%
# ## Many processes: DDP
#
# Nothing in the model or the guide changes.  Ask the trainer for more processes, and Lightning adds
# a `DistributedSampler`: each process sees its share of every global batch, and the gradients are
# averaged.  Because the plate is scaled to the full data size (`size=N, subsample=idx`), each
# process's ELBO is an unbiased estimate of the full-data ELBO and their average is the estimate
# of the global batch.  The test suite runs this with two processes over `gloo`
# (`tests/lightning_ddp_script.py`):
#
# ```python
# trainer = lightning.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2)
# trainer.fit(SVIModule(model, guide, lr=0.02), loader)   # batch_size is per process
# ```
#
# On GPUs, `accelerator="gpu", devices=4` (one process per device) or `num_nodes=` for several
# machines; the checkpoints written by rank 0 resume on any number of processes.
