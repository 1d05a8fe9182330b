"""Peak-memory check of :func:`pyro_nfvi.evaluation.iwae_log_likelihood` on a VAE-sized model.

A Bernoulli VAE on binarized MNIST (784-200-200-50 encoder and 50-200-200-784 decoder, random
weights -- memory does not depend on training), one test batch of ``B = 100`` images, ``k`` importance
samples in chunks of ``chunk_size``.  Each configuration runs in a fresh process; the number
reported is the peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus the RSS
just before the call (after imports, model construction and data loading).  Not a test; run::

    cd /work/main && OMP_NUM_THREADS=1 .venv/bin/python tests/evaluation/measure_iwae_memory.py
"""
import json
import pathlib
import resource
import subprocess
import sys
import time

__all__ = ["measure"]

CONFIGS = [(500, 50), (5000, 50), (5000, 100), (5000, 250)]


def _rss_mib():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(k, chunk_size, batch=100):
    """Run one IWAE evaluation and return ``{"k", "chunk_size", "batch", "peak_mib", "seconds"}``."""
    import numpy as np
    import pyro
    import pyro.distributions as dist
    import torch
    from torch import nn

    from pyro_nfvi.evaluation import iwae_log_likelihood

    torch.manual_seed(0)
    data = np.load(pathlib.Path(__file__).parents[2] / "pyro_nfvi" / "datasets" / "data" / "binarized_mnist.npz")
    x = torch.as_tensor(np.unpackbits(data["test"][:batch], axis=1), dtype=torch.float32)
    decoder = nn.Sequential(nn.Linear(50, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 784))
    encoder = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 100))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([50]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc, log_scale = encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    guide.plate = "data"
    before = _rss_mib()
    start = time.perf_counter()
    est = iwae_log_likelihood(model, guide, x, num_samples=k, chunk_size=chunk_size)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    assert est.shape == (batch,) and torch.isfinite(est).all()
    peak_mib = round(peak - before, 1)
    return {"k": k, "chunk_size": chunk_size, "batch": batch, "peak_mib": peak_mib, "seconds": round(seconds, 2)}


def main():
    """Measure every configuration in :data:`CONFIGS`, each in its own process."""
    for k, chunk in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, str(k), str(chunk)], capture_output=True, text=True, check=True
        ).stdout.strip().splitlines()[-1]
        print(out, flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]))))
    else:
        main()
