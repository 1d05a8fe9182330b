"""What the MNIST flow-VAE table of ``benchmarks/mnist_vae.py`` costs: seconds per step, per epoch, per row.

For each (family, K) the full architecture (40 latents, MLPs 784-300-300, IAF etc. amortized by
``AmortizedFlowGuide``) takes ``--steps`` timed training steps of batch 100 (after 3 untimed ones),
one validation pass over ``--valid`` images and the IWAE bound (k = 1000) on ``--iwae-images`` test
images, on ``--threads`` torch threads.  Extrapolated: seconds per epoch (500 steps), hours per row
(``--epochs`` epochs with a validation pass each, the final -ELBO passes and the IWAE bound on the
10,000 test images), and the sum over the rows.  Early stopping can only shorten a row.

Usage::

    python benchmarks/mnist_vae_cost.py                                 # every row of the table
    python benchmarks/mnist_vae_cost.py --rows none:0 iaf:2 planar:2
"""
import argparse
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_nfvi.datasets import load_binarized_mnist
from pyro_nfvi.guides import FastSVI
from pyro_nfvi.objectives import AnnealedELBO
from pyro_nfvi.targets.vae import VAEModel, iwae_nll, negative_elbo, vae_guide

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from mnist_vae import PRIORITY  # noqa: E402
from report import write_report  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", metavar="FAMILY:K", default=None, help="default: every row of mnist_vae.py")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--valid", type=int, default=1000)
    p.add_argument("--iwae-images", type=int, default=10)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results"))
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def measure(family, k, data, args):
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(0)
        model = VAEModel()
        guide = vae_guide(model, family, k, data.train[:100])
        svi = FastSVI(model, guide, AnnealedELBO(mode="kl_warmup", warmup_steps=5000), lr=1e-3)
        for i in range(3):
            svi.step(data.train[i * 100 : (i + 1) * 100])
        start = time.perf_counter()
        for i in range(args.steps):
            svi.step(data.train[i * 100 : (i + 1) * 100])
        step = (time.perf_counter() - start) / args.steps
        start = time.perf_counter()
        negative_elbo(model, guide, data.valid[: args.valid])
        valid = (time.perf_counter() - start) * 10000 / args.valid
        start = time.perf_counter()
        iwae_nll(model, guide, data.test[: args.iwae_images], num_samples=1000, batch_size=args.iwae_images)
        iwae = (time.perf_counter() - start) * 10000 / args.iwae_images
    epoch = 500 * step
    # epochs x (epoch + validation) + final -ELBO on train (5 x valid), valid, test + IWAE on test
    row_hours = (args.epochs * (epoch + valid) + 7 * valid + iwae) / 3600
    return {"family": family, "K": k, "seconds_per_step": step, "seconds_per_epoch": epoch,
            "seconds_valid_pass": valid, "seconds_iwae_test": iwae, "hours_per_row": row_hours}


def main(args):
    torch.set_num_threads(args.threads)
    data = load_binarized_mnist()
    wanted = PRIORITY if args.rows is None else [
        (f, int(k or 0)) for f, _, k in (text.partition(":") for text in args.rows)]
    rows = []
    for family, k in wanted:
        rows.append(measure(family, k, data, args))
        print(rows[-1], flush=True)
    total = sum(r["hours_per_row"] for r in rows)
    table = ["| family | K | s / step | s / epoch | s / validation pass | s / IWAE k=1000 on test | h / row |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['family']} | {r['K']} | {r['seconds_per_step']:.3f} | {r['seconds_per_epoch']:.1f} | "
              f"{r['seconds_valid_pass']:.1f} | {r['seconds_iwae_test']:.0f} | {r['hours_per_row']:.2f} |" for r in rows]
    table += ["", f"Total for these {len(rows)} rows: **{total:.1f} hours** of {args.threads} thread(s), "
              "at the machine's load during the measurement (compare the idle-machine figures in the README); the k = 5000 IWAE pass of the best model adds about 5x its "
              "k = 1000 pass."]
    intro = (f"Timed: {args.steps} training steps (batch 100, after 3 untimed), a validation pass over {args.valid} "
             f"images and the IWAE bound (k = 1000) on {args.iwae_images} test images per row, extrapolated to "
             f"{args.epochs} epochs of 500 steps, a validation pass per epoch, the final passes and the IWAE bound "
             "on the 10,000 test images. The cores are shared with other jobs: the timings are noisy "
             "(the same configuration can take 2-4x longer when the machine is loaded).")
    command = " ".join(["python benchmarks/mnist_vae_cost.py"] + args.argv)
    return write_report(args.out, "mnist_vae_cost", command, rows, "Cost of the MNIST flow-VAE table", intro, table)


if __name__ == "__main__":
    main(parse_args())
