"""Data-parallel scaling of ``nfvi vae --strategy ddp``: 1 vs 2 processes (gloo, CPU) on the MNIST IAF VAE.

Each run is ``nfvi vae --strategy ddp --devices P`` with the architecture of Henrion & Welleck (40
latents, MLPs 784-300-300, IAF K = 2), the same global batch (``--batch-size``, split over the
processes), the same seed and the first ``--num-train`` training images for ``--epochs`` epochs
(a subprocess per run; Lightning's launcher starts the other processes).  Measured from the run's
per-epoch history: samples per second (training images / training seconds, validation excluded
where Lightning lets it be: the epoch time includes the validation pass of 1000 images), and the
time to reach a fixed validation -ELBO (``--target``).  The communication per step is stated from
the parameter count: DDP all-reduces every gradient once per step, ``n_params x 4`` bytes of
float32; a ring all-reduce sends and receives ``2 (P - 1) / P`` times that per process.

Usage::

    python benchmarks/ddp_scaling.py                      # 1 and 2 processes (a few minutes)
    python benchmarks/ddp_scaling.py --devices 1 2 1 2    # twice each, interleaved: the spread is the noise
    python benchmarks/ddp_scaling.py --devices 1 2 4 --num-train 20000 --epochs 3
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from report import write_report  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--num-train", type=int, default=5000)
    p.add_argument("--num-valid", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=100, help="global batch")
    p.add_argument("--flow", default="iaf")
    p.add_argument("--num-flows", type=int, default=2)
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--latent-dim", type=int, default=40)
    p.add_argument("--target", type=float, default=None,
                   help="validation -ELBO whose first crossing is timed (default: the worst final one, rounded up)")
    p.add_argument("--out", default=str(ROOT / "results"))
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def count_parameters(args):
    """Trained parameters of the model and guide (what DDP all-reduces every step)."""
    import pyro
    import torch

    from pyro_nfvi.targets import VAEModel, vae_guide

    with pyro.settings.context(module_local_params=True):
        hidden = (args.hidden, args.hidden)
        model = VAEModel(args.latent_dim, hidden)
        guide = vae_guide(model, args.flow, args.num_flows, torch.zeros(2, 784), hidden=hidden)
        return sum(p.numel() for m in (model, guide) for p in m.parameters() if p.requires_grad)


def run_one(args, devices, folder):
    argv = [sys.executable, "-m", "pyro_nfvi.cli", "vae", "--strategy", "ddp", "--devices", str(devices),
            "--flow", args.flow, "--num-flows", str(args.num_flows), "--num-train", str(args.num_train),
            "--num-valid", str(args.num_valid), "--num-test", "100", "--batch-size", str(args.batch_size),
            "--epochs", str(args.epochs), "--hidden", str(args.hidden), "--latent-dim", str(args.latent_dim),
            "--iwae-k", "0", "--warmup", "0", "--patience", str(args.epochs), "--seed", "0", "--quiet",
            "--out", str(folder)]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((Path(folder) / "results.json").read_text())
    history = results["history"]
    seconds = sum(h["seconds"] for h in history)
    return {"devices": devices, "batch_per_process": results["batch_per_process"], "steps": results["steps"],
            "train_seconds": seconds, "samples_per_second": args.num_train * len(history) / seconds,
            "epoch_seconds": [h["seconds"] for h in history], "final_valid_elbo": history[-1]["valid"],
            "ranks_identical": results["ranks_identical"], "wall_seconds_with_startup": wall,
            "valid_per_epoch": [h["valid"] for h in history]}


def main(args):
    n_params = count_parameters(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, devices in enumerate(args.devices):  # a repeated count measures the machine's noise
            row = run_one(args, devices, Path(tmp) / f"run{i}_d{devices}")
            bytes_per_step = n_params * 4
            row.update({"n_params": n_params, "allreduce_bytes": bytes_per_step,
                        "ring_bytes_per_process": 2 * (devices - 1) / devices * bytes_per_step})
            rows.append(row)
            print(json.dumps(row), flush=True)
    target = args.target if args.target is not None else float(math.ceil(max(r["final_valid_elbo"] for r in rows)))
    for r in rows:  # time to the first epoch whose validation -ELBO is <= target
        elapsed, r["seconds_to_target"] = 0.0, None
        for seconds, valid in zip(r["epoch_seconds"], r["valid_per_epoch"]):
            elapsed += seconds
            if valid <= target:
                r["seconds_to_target"] = elapsed
                break
        r["target"] = target
    base = rows[0]["samples_per_second"]
    command = " ".join(["python benchmarks/ddp_scaling.py"] + args.argv)
    table = ["| processes | batch / process | steps | samples / s | speed-up | time to valid -ELBO <= "
             f"{target:g} (s) | final valid -ELBO | ranks identical | wall with start-up (s) | "
             "all-reduce per step | ring traffic per process per step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reached = "not reached" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        table.append(f"| {r['devices']} | {r['batch_per_process']} | {r['steps']} | {r['samples_per_second']:.0f} | "
                     f"{r['samples_per_second'] / base:.2f} | {reached} | {r['final_valid_elbo']:.2f} | "
                     f"{r['ranks_identical']} | {r['wall_seconds_with_startup']:.0f} | "
                     f"{r['allreduce_bytes'] / 2**20:.2f} MiB | {r['ring_bytes_per_process'] / 2**20:.2f} MiB |")
    intro = (f"`nfvi vae --strategy ddp --devices P` (gloo, CPU, 1 torch thread per process) on the MNIST "
             f"{args.flow.upper()} K={args.num_flows} VAE (40 latents, MLPs 784-{args.hidden}-{args.hidden}), "
             f"{args.num_train} training images, {args.epochs} epochs, global batch {args.batch_size}, the same seed. "
             f"Samples / s: training images over the summed epoch times (each epoch includes a validation pass "
             f"over {args.num_valid} images, split over the processes). The model and guide have {n_params:,} "
             f"trained parameters, so DDP all-reduces {n_params * 4 / 2**20:.2f} MiB of float32 gradients per step; "
             "a ring all-reduce moves 2 (P - 1) / P times that in and out of each process "
             "(P = 2: once the gradient size; P -> infinity: twice). **This machine has 2 CPU cores shared "
             "with other jobs**: 2 processes on it measure DDP's overhead (start-up, gloo all-reduce, the "
             "per-process Pyro tracing that does not shrink with the batch) more than a speed-up; "
             "on separate cores or machines the compute per process halves while the traffic per step stays the above.")
    return write_report(args.out, "ddp_scaling", command, rows, "Lightning DDP scaling of nfvi vae (1 vs 2 processes)",
                        intro, table)


if __name__ == "__main__":
    main(parse_args())
