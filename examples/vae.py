"""Flow VAE on the shipped binarized MNIST (Rezende & Mohamed 2015, section 6.2).

The model and guide are the package's (:mod:`pyro_nfvi.targets.vae`, used by ``nfvi vae`` and
``benchmarks/mnist_vae.py``): a decoder ``z -> h -> h -> 784`` with a Bernoulli likelihood inside
``pyro.plate("data")``, and :class:`pyro_nfvi.AmortizedFlowGuide`, whose encoder ``784 -> h -> h``
outputs the Gaussian base and every flow parameter per image.  ``--flow none`` is the plain
Gaussian VAE.  This script shows the three training loops (Pyro's ``SVI``, ``JitTrace_ELBO``, and
the fast path); ``nfvi vae`` adds checkpoints, early stopping and the IWAE evaluation.

Usage::

    python examples/vae.py --flow planar --num-flows 8 --epochs 10
    python examples/vae.py --fast            # ELBOModule + one torch optimizer (module_local_params)
    python examples/vae.py --jit             # JitTrace_ELBO through the standard SVI

Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015;
Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014.
"""
import argparse
import time

import pyro
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO

from pyro_nfvi.datasets import load_binarized_mnist
from pyro_nfvi.guides import FastSVI
from pyro_nfvi.targets.vae import VAEModel, vae_guide

__all__ = ["main", "make_parser"]


def make_parser():
    """The command-line options of :func:`main`."""
    p = argparse.ArgumentParser(description="Flow VAE on binarized MNIST with pyro_nfvi")
    p.add_argument("--flow", default="planar", help="planar|radial|householder|iaf|sylvester|coupling|none")
    p.add_argument("--num-flows", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--latent-dim", type=int, default=40)
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--num-train", type=int, default=50000, help="number of training images used")
    p.add_argument("--num-test", type=int, default=10000, help="number of test images evaluated")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit", action="store_true", help="JitTrace_ELBO through pyro's SVI")
    p.add_argument("--fast", action="store_true", help="ELBOModule + one torch optimizer, module_local_params")
    return p


def _evaluate(model, guide, data, batch_size):
    """Average ELBO per image (one particle per image)."""
    elbo, total = Trace_ELBO(), 0.0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            total += elbo.loss(model, guide, data[i : i + batch_size])
    return -total / len(data)


def main(args):
    """Train the flow VAE; print and return ``{"train_elbo": ..., "test_elbo": ..., "seconds": ...}``."""
    if args.jit and args.fast:
        raise ValueError("--jit and --fast do not combine: JitTrace_ELBO needs Pyro's global param store")
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    train = load_binarized_mnist("train")[: args.num_train]
    test = load_binarized_mnist("test")[: args.num_test]
    batch = min(args.batch_size, len(train))
    with pyro.settings.context(module_local_params=bool(args.fast)):
        model = VAEModel(args.latent_dim, (args.hidden, args.hidden))
        guide = vae_guide(model, args.flow, args.num_flows, train[:batch], hidden=(args.hidden, args.hidden))
        if args.fast:
            svi = FastSVI(model, guide, Trace_ELBO(), lr=args.lr)
        else:
            svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), JitTrace_ELBO() if args.jit else Trace_ELBO())
        start = time.time()
        train_elbo = float("nan")
        for epoch in range(args.epochs):
            order = torch.randperm(len(train))
            total, seen = 0.0, 0
            for i in range(0, len(train) - batch + 1, batch):  # full batches only (one JIT shape)
                x = train[order[i : i + batch]]
                total += svi.step(x)
                seen += len(x)
            train_elbo = -total / max(seen, 1)
            print(f"epoch {epoch:3d}  train ELBO {train_elbo:10.3f}  ({time.time() - start:.1f} s)")
        seconds = time.time() - start
        test_elbo = _evaluate(model, guide, test, batch)
    print(f"flow={args.flow} K={args.num_flows}: train ELBO {train_elbo:.3f}, test ELBO {test_elbo:.3f}")
    return {"train_elbo": train_elbo, "test_elbo": test_elbo, "seconds": seconds}


if __name__ == "__main__":
    main(make_parser().parse_args())
