"""Train the tiny VAE of ``tests/test_lightning.py`` with Lightning on ``devices`` CPU processes.

``python lightning_ddp_script.py OUT DEVICES STEPS``: same seed, same data, the same *global* batch
(16) whatever the number of processes; each process saves its ELBO module's ``state_dict`` to
``OUT/rank<r>.pt``, and process 0 writes the final full-data loss (mean and standard error over
repeated estimates) to ``OUT/elbo.pt``.  With ``DEVICES > 1`` Lightning's DDP launcher re-executes
this script once per extra process (gloo on CPU).
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from pyro_nfvi.guides import AmortizedFlowGuide  # noqa: E402
from pyro_nfvi.lightning import SVIModule  # noqa: E402

N, D, Z, GLOBAL_BATCH = 64, 20, 2, 16


class VAE(torch.nn.Module):
    """A tiny Bernoulli VAE whose data plate is subsampled and scaled to the full data size."""

    def __init__(self, n=N):
        super().__init__()
        self.n = n
        self.decoder = torch.nn.Sequential(torch.nn.Linear(Z, 16), torch.nn.Tanh(), torch.nn.Linear(16, D))

    def forward(self, x, idx):
        with pyro.plate("data", size=self.n, subsample=idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), Z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.sigmoid(2.0 * torch.randn(D, generator=g))
    return torch.bernoulli(probs.expand(N, D), generator=g)


def main(out, devices, steps):
    torch.set_num_threads(1)
    pyro.settings.set(module_local_params=True)
    lightning.seed_everything(0, verbose=False)
    x = data()
    model = VAE()
    guide = AmortizedFlowGuide(model, plate="data", flow="iaf", num_flows=1, encoder_hidden=(16,),
                               model_args=(x[:4], torch.arange(4)))
    module = SVIModule(model, guide, lr=0.01)
    loader = DataLoader(TensorDataset(x, torch.arange(N)), batch_size=GLOBAL_BATCH // devices, shuffle=False)
    trainer = lightning.Trainer(
        strategy="ddp" if devices > 1 else "auto", accelerator="cpu", devices=devices, max_steps=steps,
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False,
    )
    trainer.fit(module, loader)
    torch.save({k: v.detach().clone() for k, v in module.elbo.state_dict().items() if torch.is_tensor(v)},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))
    if trainer.global_rank == 0:
        pyro.set_rng_seed(123)
        losses = torch.tensor([module.evaluate_loss(x, torch.arange(N)) for _ in range(200)])
        torch.save({"mean": losses.mean().item(), "se": (losses.std() / 200 ** 0.5).item(),
                    "steps": trainer.global_step}, os.path.join(out, "elbo.pt"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
