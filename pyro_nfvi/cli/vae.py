"""``nfvi vae``: train the flow VAE of Henrion & Welleck on the shipped binarized MNIST and report its bounds."""
import datetime
import json
import os
import platform
import sys

from ..transforms import FAMILIES
from .arguments import check_output_folder, json_object, non_negative_int, positive_float, positive_int

__all__ = ["add_parser", "run", "check_args", "command_line", "load_splits", "write_results", "print_summary", "RESULTS",
           "CURVES"]

#: Files written in ``--out``.
RESULTS, CURVES = "results.json", "learning_curves.png"


def add_parser(subparsers):
    """Add the ``vae`` subcommand to ``subparsers`` and return its parser."""
    p = subparsers.add_parser(
        "vae",
        help="train a flow VAE on binarized MNIST (Henrion & Welleck) and report -ELBO and IWAE NLL",
        description=(
            "Train the VAE of Henrion & Welleck on the shipped binarized MNIST (40 latents, encoder and "
            "decoder MLPs with two hidden layers of 300 units, ELU, Bernoulli likelihood, batch 100, Adam) "
            "with the amortized flow guide AmortizedFlowGuide (--flow none: the plain VAE). The learning rate "
            "of epoch t is LR / (1 + t / LR_DECAY); the KL term is warmed up linearly over WARMUP epochs; "
            "training stops after PATIENCE epochs without a better validation -ELBO, and the best epoch "
            "is kept. A checkpoint is written to --out every epoch; --resume continues from it. At the end: "
            "train/valid/test -ELBO, the test IWAE NLL with --iwae-k draws, results.json and "
            "learning_curves.png in --out. --strategy ddp trains with PyTorch Lightning's DDP on --devices "
            "processes per node (gloo on CPU, NCCL on GPUs) and --num-nodes machines."
        ),
    )
    p.add_argument("--flow", choices=sorted(FAMILIES) + ["none"], default="iaf", help="flow family (default: iaf)")
    p.add_argument("--num-flows", type=non_negative_int, default=2, help="number of flow layers K (default: 2)")
    p.add_argument("--flow-opts", type=json_object, default=None, metavar="JSON",
                   help="options of every flow layer as a JSON object, e.g. '{\"stable\": true}' for the gated "
                        "coupling or IAF form (default: none)")
    p.add_argument("--epochs", type=positive_int, default=100, help="epoch budget (default: 100)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per step (default: 100)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="initial Adam learning rate (default: 0.001)")
    p.add_argument("--lr-decay", type=float, default=100.0,
                   help="tau of lr / (1 + epoch / tau), in epochs; 0: constant (default: 100)")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="KL warm-up epochs; 0: none (default: 10)")
    p.add_argument("--patience", type=positive_int, default=20,
                   help="stop after this many epochs without a better validation -ELBO (default: 20)")
    p.add_argument("--iwae-k", type=non_negative_int, default=1000,
                   help="draws per test image of the IWAE bound; 0: skip it (default: 1000)")
    p.add_argument("--latent-dim", type=positive_int, default=40, help="latent dimension (default: 40)")
    p.add_argument("--hidden", type=positive_int, default=300, help="width of the two hidden layers (default: 300)")
    p.add_argument("--num-train", type=positive_int, default=None, help="use the first N training images (default: all 50000)")
    p.add_argument("--num-valid", type=positive_int, default=None, help="use the first N validation images (default: all 10000)")
    p.add_argument("--num-test", type=positive_int, default=None, help="use the first N test images (default: all 10000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", metavar="FOLDER", default="nfvi_vae",
                   help="folder of the checkpoints, results.json and learning_curves.png (default: nfvi_vae)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run whose checkpoint is in --out (the same settings; --epochs may grow)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                   help="where to train; auto: cuda if available (default: cpu)")
    p.add_argument("--strategy", choices=["single", "ddp"], default="single",
                   help="single: one process; ddp: PyTorch Lightning DDP (needs pyro_nfvi[lightning]) (default: single)")
    p.add_argument("--devices", type=positive_int, default=1,
                   help="processes (CPU) or GPUs per node for --strategy ddp (default: 1)")
    p.add_argument("--num-nodes", type=positive_int, default=1, help="machines for --strategy ddp (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    p.set_defaults(run=run)
    return p


def check_args(args):
    """Refuse bad settings with a ``ValueError`` before any work; return the ``torch.device`` to use."""
    import torch

    if args.flow != "none" and args.num_flows < 1:
        raise ValueError(f"--num-flows must be >= 1 for --flow {args.flow} (use --flow none for the plain VAE)")
    if args.flow_opts:
        if args.flow == "none":
            raise ValueError("--flow-opts sets options of the flow layers; --flow none has none")
        if args.strategy == "ddp":
            raise ValueError("--flow-opts is not supported with --strategy ddp; use --strategy single")
        from ..transforms import flow as build_flow

        try:  # a layer built now, as the guide will build it (amortized), names a bad option before any work
            build_flow(args.flow, args.latent_dim, 1, context_dim=args.hidden, **args.flow_opts)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--flow-opts {json.dumps(args.flow_opts)} does not fit --flow {args.flow}: {err}") from None
    if args.lr_decay < 0:
        raise ValueError(f"--lr-decay must be >= 0 (0 keeps the learning rate constant), got {args.lr_decay:g}")
    if args.strategy == "single" and (args.devices > 1 or args.num_nodes > 1):
        raise ValueError("--devices and --num-nodes need --strategy ddp")
    if args.strategy == "ddp":
        try:
            import lightning  # noqa: F401
        except ImportError:
            raise ValueError("--strategy ddp needs PyTorch Lightning: pip install pyro_nfvi[lightning]") from None
    num_train = args.num_train or 50000
    if args.batch_size > num_train:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the {num_train} training images")
    if args.strategy == "ddp" and args.batch_size % (args.devices * args.num_nodes):
        raise ValueError(f"--batch-size {args.batch_size} (the global batch) must be a multiple of the "
                         f"{args.devices * args.num_nodes} processes (--devices x --num-nodes)")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    check_output_folder("--out", args.out)
    last = os.path.join(args.out, "last.pt" if args.strategy == "single" else "last.ckpt")
    if os.path.exists(last) and not args.resume:
        raise ValueError(f"--out {args.out} holds the checkpoint of a previous run ({last}); pass --resume to "
                         "continue it, or choose another --out")
    return torch.device(device)


def load_splits(args):
    """The train, valid and test images, cut to ``--num-train``/``--num-valid``/``--num-test``."""
    from ..datasets import load_binarized_mnist

    data = load_binarized_mnist()
    return {"train": data.train[: args.num_train], "valid": data.valid[: args.num_valid],
            "test": data.test[: args.num_test]}


def command_line(args):
    """The ``nfvi vae`` command that reproduces the run of ``args`` (every option that changes the result).

    Example:
        >>> from pyro_nfvi.cli import build_parser
        >>> command_line(build_parser().parse_args(["vae", "--flow", "none", "--epochs", "3"]))[:52]
        'nfvi vae --flow none --num-flows 2 --epochs 3 --batc'
    """
    words = ["nfvi vae"]
    for option in ("flow", "num_flows", "epochs", "batch_size", "lr", "lr_decay", "warmup", "patience", "iwae_k",
                   "latent_dim", "hidden", "num_train", "num_valid", "num_test", "seed", "out", "device", "strategy",
                   "devices", "num_nodes"):
        value = getattr(args, option)
        if value is not None:
            words.append(f"--{option.replace('_', '-')} {value:g}" if isinstance(value, float)
                         else f"--{option.replace('_', '-')} {value}")
    if getattr(args, "flow_opts", None):
        words.append(f"--flow-opts '{json.dumps(args.flow_opts)}'")
    return " ".join(words)


def write_results(args, history, evaluation, extra):
    """Write ``results.json`` and ``learning_curves.png`` in ``--out``; return the results dict."""
    import pyro
    import torch

    from ..targets.vae_plots import plot_learning_curves

    seconds = sum(h["seconds"] for h in history)
    results = {
        "command": command_line(args),
        "flow": args.flow, "num_flows": args.num_flows if args.flow != "none" else 0,
        "epochs_budget": args.epochs, "epochs_done": len(history),
        "train_seconds": seconds, "seconds_per_epoch": seconds / max(len(history), 1),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{torch.get_num_threads()} torch threads)",
        "torch": torch.__version__, "pyro": pyro.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra, **evaluation, "history": history,
    }
    with open(os.path.join(args.out, RESULTS), "w") as f:
        json.dump(results, f, indent=2)
    label = f"{args.flow} K={results['num_flows']}"
    plot_learning_curves({label: history}, os.path.join(args.out, CURVES), title=f"nfvi vae: {label}")
    return results


def print_summary(results):
    """Print the bounds of ``results`` (as written by :func:`write_results`)."""
    def fmt(key):
        mean, se = results[key]
        return f"{mean:9.3f} +- {se:.3f}"

    print(f"nfvi vae: {results['flow']} K={results['num_flows']}, {results['epochs_done']} epochs "
          f"(best {results['best_epoch']}), {results['seconds_per_epoch']:.1f} s/epoch")
    for split in ("train", "valid", "test"):
        print(f"{split:5s} -ELBO   : {fmt(f'{split}_elbo')}")
    if "test_iwae" in results:
        print(f"test IWAE NLL : {fmt('test_iwae')}  (k = {results['iwae_k']})")
    print(f"results      : {os.path.join(results['out'], RESULTS)}")


def run(args):
    """Run ``nfvi vae`` with parsed ``args``; return the exit code."""
    device = check_args(args)
    if args.strategy == "ddp":
        from .vae_ddp import run_ddp

        return run_ddp(args, device)
    from ..targets.vae_training import evaluate_vae, train_vae

    splits = load_splits(args)
    progress = not args.quiet and sys.stderr.isatty()
    if not args.quiet:
        print(f"nfvi vae: {args.flow} K={args.num_flows} on binarized MNIST ({len(splits['train'])} training images), "
              f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr:g}, warm-up {args.warmup}, "
              f"patience {args.patience}, {device}", flush=True)
    try:
        result = train_vae(
            splits["train"], splits["valid"], flow=args.flow, num_flows=args.num_flows, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay, warmup=args.warmup,
            patience=args.patience, seed=args.seed, z_dim=args.latent_dim, hidden=(args.hidden, args.hidden),
            flow_opts=args.flow_opts, folder=args.out, resume=args.resume, device=device, progress=progress,
            log=None if args.quiet else (lambda text: print(text, flush=True)),
        )
    except FloatingPointError as err:
        print(f"nfvi vae: error: {err}", file=sys.stderr)
        return 1
    evaluation = evaluate_vae(result.model, result.guide, splits, iwae_k=args.iwae_k, seed=args.seed,
                              progress=progress)
    results = write_results(args, result.history, evaluation, {
        "strategy": "single", "out": args.out, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "settings": result.settings,
    })
    if not args.quiet:
        print_summary(results)
    return 0
