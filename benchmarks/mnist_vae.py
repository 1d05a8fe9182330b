"""Henrion & Welleck's Table 1, rerun: flow VAEs on binarized MNIST, every family at K = 2 and 10.

Every run is ``nfvi vae`` (the same code: :func:`pyro_nfvi.targets.train_vae` and
:func:`pyro_nfvi.targets.evaluate_vae`) with the architecture of Henrion & Welleck (40 latents,
encoder and decoder MLPs 784-300-300, ELU, batch 100, Adam) and the same budget for every family:
``--epochs`` epochs (100), learning rate ``lr / (1 + epoch / 100)``, KL warm-up over the first 10
epochs, early stopping after 20 epochs without a better validation -ELBO (the best epoch is kept).
Each finished run appends one row to ``<out>/mnist_vae.json`` (family, K, epochs used, train /
valid / test -ELBO, test IWAE NLL with k = 1000, seconds per epoch, wall time, machine, torch
version, date, the per-epoch history); ``<out>/mnist_vae.md`` is rewritten after every row beside
Henrion & Welleck's Table 1, with the learning curves (``mnist_vae_curves.png``, every run on one
plot) and samples and reconstructions of the best model (``mnist_vae_samples.png``).  When every
run is finished, the best model (lowest validation -ELBO) gets the IWAE NLL with k = 5000.

Runs are long (about 15-20 s per epoch on one core for most families at K = 2, measured; the
orthogonal Sylvester flow about 140 s): each run checkpoints every epoch under ``--runs``
(``benchmarks/runs/<family>_K<k>/``, not committed) and rerunning the same command resumes the
unfinished run and skips the finished rows, so the table fills across several sittings.  A run
still in progress is listed in the markdown as partial, with its epochs done.

Usage::

    python benchmarks/mnist_vae.py                          # the whole table, in priority order (days)
    python benchmarks/mnist_vae.py --runs-only none:0 iaf:2  # some rows
    python benchmarks/mnist_vae.py --report-only            # rewrite the markdown from what exists
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from pyro_nfvi.cli import main as nfvi
from pyro_nfvi.cli.arguments import json_object
from pyro_nfvi.cli.vae import RESULTS
from pyro_nfvi.datasets import load_binarized_mnist
from pyro_nfvi.targets.vae_plots import plot_learning_curves, plot_samples_and_reconstructions

ROOT = Path(__file__).resolve().parent
#: The runs in priority order (family, K): the lead's order, then the rest of K = 2, then K = 10, then K = 1.
PRIORITY = [("none", 0), ("iaf", 2), ("sylvester", 2), ("planar", 2), ("householder", 2), ("radial", 2),
            ("coupling", 2), ("iaf", 10), ("householder", 10), ("planar", 10), ("radial", 10), ("coupling", 10),
            ("sylvester", 10), ("iaf", 1), ("householder", 1), ("planar", 1), ("radial", 1), ("coupling", 1),
            ("sylvester", 1)]
#: Henrion & Welleck's Table 1 (train, valid, test free energy, nats), by (family, K).
HW_TABLE = {("none", 0): (88.3, 95.6, 94.8),
            ("planar", 1): (90.7, 97.4, 96.6), ("planar", 2): (91.7, 97.9, 97.1), ("planar", 10): (99.9, 104.5, 103.5),
            ("iaf", 1): (87.8, 94.7, 94.0), ("iaf", 2): (87.5, 94.2, 93.5), ("iaf", 10): (88.9, 94.2, 93.6),
            ("householder", 1): (89.1, 95.9, 95.1), ("householder", 2): (89.6, 96.0, 95.2),
            ("householder", 10): (90.3, 96.0, 95.3)}
HW_NAMES = {"none": "VAE", "planar": "unconstrained planar (residual)", "iaf": "IAF", "householder": "Householder"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-only", nargs="+", metavar="FAMILY:K", default=None,
                   help="run only these rows (e.g. none:0 iaf:2); default: all, in priority order")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--iwae-k", type=int, default=1000)
    p.add_argument("--best-iwae-k", type=int, default=5000, help="IWAE draws for the best model (0: skip)")
    p.add_argument("--flow-opts", type=json_object, default=None, metavar="JSON",
                   help="options of every flow layer, e.g. '{\"stable\": true}' (its runs go to folders named after them)")
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--latent-dim", type=int, default=40)
    p.add_argument("--num-train", type=int, default=None, help="first N training images (smoke tests only)")
    p.add_argument("--num-valid", type=int, default=None)
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the cores are shared)")
    p.add_argument("--out", default=str(ROOT / "results"), help="folder of mnist_vae.{json,md} and the PNGs")
    p.add_argument("--runs", default=str(ROOT / "runs"), help="folder of the per-run checkpoints (not committed)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the markdown and the figures")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _rows_wanted(args):
    if args.runs_only is None:
        return list(PRIORITY)
    wanted = []
    for text in args.runs_only:
        family, _, k = text.partition(":")
        wanted.append((family, int(k or 0) if family != "none" else 0))
    return wanted


def _flow_opts(args, family):
    """The ``--flow-opts`` of a row (``None`` for the plain VAE, which has no flow layers)."""
    return args.flow_opts if family != "none" else None


def _run_name(family, k, flow_opts=None):
    """The run's checkpoint folder: ``iaf_K2``, or ``coupling_K2_stable-true`` with flow options."""
    suffix = "".join(f"_{key}-{json.dumps(value)}" for key, value in sorted((flow_opts or {}).items()))
    return f"{family}_K{k}" + "".join(c if c.isalnum() or c in "_-." else "-" for c in suffix)


def _cli_args(args, family, k, folder):
    argv = ["vae", "--flow", family, "--num-flows", str(k), "--epochs", str(args.epochs),
            "--patience", str(args.patience), "--warmup", str(args.warmup), "--lr", str(args.lr),
            "--iwae-k", str(args.iwae_k), "--hidden", str(args.hidden), "--latent-dim", str(args.latent_dim),
            "--out", str(folder), "--resume"]
    if _flow_opts(args, family):
        argv += ["--flow-opts", json.dumps(args.flow_opts)]
    for option in ("num_train", "num_valid", "num_test"):
        if getattr(args, option) is not None:
            argv += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    if args.quiet:
        argv.append("--quiet")
    return argv


def _family_label(family, flow_opts):
    """The table's family column: ``sylvester``, or ``sylvester (num_ortho=8)`` for a row with layer options."""
    if not flow_opts:
        return family
    return f"{family} ({', '.join(f'{key}={json.dumps(value)}' for key, value in sorted(flow_opts.items()))})"


def _load(path):
    return json.loads(Path(path).read_text()) if Path(path).exists() else {"rows": []}


def _partial_history(folder):
    """The history of an unfinished run, from its last checkpoint (``None`` if it has none)."""
    last = Path(folder) / "last.pt"
    if not last.exists():
        return None
    saved = torch.load(last, map_location="cpu", weights_only=True)
    return (saved.get("extra") or {}).get("history")


def _fmt(pair):
    return "" if pair is None else f"{pair[0]:.2f}"


def _targets(rows):
    """The issue's targets, checked on the complete rows (test -ELBO)."""
    vae = rows.get(("none", 0))
    flows = {key: r for key, r in rows.items() if key[0] != "none" and not r.get("error")}
    if vae is None or not flows:
        return ["Targets (every flow at least as good as the VAE; iaf and sylvester >= 1 nat better; the best "
                "flow below H&W's best, 93.5, on test -ELBO): not checkable yet (needs the VAE and flow rows).", ""]
    base = vae["test_elbo"][0]
    out = [f"Targets, on the complete rows (test -ELBO; our VAE: {base:.2f}):"]
    for (family, k), r in sorted(flows.items()):
        gain = base - r["test_elbo"][0]
        need = 1.0 if family in ("iaf", "sylvester") else 0.0
        out.append(f"- {family} K={k}: {gain:+.2f} nats vs the VAE ({'met' if gain >= need else 'missed'}; "
                   f"target >= {need:g})")
    best = min(flows.values(), key=lambda r: r["test_elbo"][0])
    verdict = "met" if best["test_elbo"][0] < 93.5 else f"missed by {best['test_elbo'][0] - 93.5:.2f} nats"
    out += [f"- best flow {best['flow']} K={best['num_flows']}: {best['test_elbo'][0]:.2f} vs H&W's 93.5 ({verdict})", ""]
    return out


def write_report(args, report):
    """Rewrite ``mnist_vae.md`` and the learning curves from the finished rows and the partial runs."""
    out = Path(args.out)
    rows = {(r["flow"], r["num_flows"]): r for r in report["rows"]}
    lines = ["# Henrion & Welleck's Table 1, rerun: flow VAEs on binarized MNIST", "",
             f"Command: `{report['command']}`; machine: {report.get('machine', '?')}; "
             f"date of the last row: {report.get('date', '?')}.", "",
             f"Architecture of Henrion & Welleck ({args.latent_dim} latents, encoder and decoder MLPs "
             f"784-{args.hidden}-{args.hidden}, ELU, Bernoulli likelihood, batch 100, Adam), every flow amortized by `AmortizedFlowGuide` "
             "(`none`: the plain VAE). Same budget for every row: "
             f"{args.epochs} epochs, lr {args.lr:g} / (1 + epoch / 100), KL warm-up over {args.warmup} epochs, "
             f"early stopping after {args.patience} epochs without a better validation -ELBO (best epoch kept). "
             f"-ELBO in nats per image, one draw per image (standard errors in the JSON: about 0.1 on train, "
             f"0.25 on valid and test); IWAE NLL "
             f"with k = {args.iwae_k} on the test set. H&W: their Table 1 (train / valid / test free energy; "
             "2000 epochs, lr 2e-4 / (1 + t/100), batch normalization). Lower is better.", "",
             "| family | K | status | epochs used (best) | train -ELBO | valid -ELBO | test -ELBO | test IWAE NLL | "
             "s / epoch | wall (h) | H&W train / valid / test |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    histories = {}
    # every row of the table, whichever rows this sitting trains (--runs-only)
    reported = list(PRIORITY) + [r for r in _rows_wanted(args) if r not in PRIORITY]
    for family, k in reported:
        hw = HW_TABLE.get((family, k))
        hw_text = " / ".join(f"{v:.1f}" for v in hw) if hw else "--"
        row = rows.get((family, k))
        label = f"{family} K={k}" if family != "none" else "none (VAE)"
        if row is not None:
            histories[label] = row["history"]
            status = "complete" + (" (early stop)" if row["stopped_early"] else "")
            if row.get("error"):
                status = f"failed: {row['error']}"
            wall = (row["train_seconds"] + row.get("eval_seconds", 0.0)) / 3600
            iwae = _fmt(row.get("test_iwae"))
            if row.get("test_iwae_best"):
                iwae += f" (k={row['test_iwae_best']['k']}: {row['test_iwae_best']['value'][0]:.2f})"
            lines.append(f"| {_family_label(family, (row.get('settings') or {}).get('flow_opts'))} | {k} | {status} | "
                         f"{row['epochs_done']} ({row.get('best_epoch', '?')}) | "
                         f"{_fmt(row.get('train_elbo'))} | {_fmt(row.get('valid_elbo'))} | {_fmt(row.get('test_elbo'))} | "
                         f"{iwae} | {row['seconds_per_epoch']:.1f} | {wall:.2f} | {hw_text} |")
            continue
        history = _partial_history(Path(args.runs) / _run_name(family, k, _flow_opts(args, family)))
        if history:
            histories[label + " (partial)"] = history
            best = min(history, key=lambda h: h["valid"])
            seconds = sum(h["seconds"] for h in history)
            lines.append(f"| {_family_label(family, _flow_opts(args, family))} | {k} | **partial**: "
                         f"{len(history)}/{args.epochs} epochs | {len(history)} "
                         f"({best['epoch']}) | {history[-1]['train']:.2f} (last) | {best['valid']:.2f} (best) | | | "
                         f"{seconds / len(history):.1f} | {seconds / 3600:.2f} | {hw_text} |")
        else:
            lines.append(f"| {family} | {k} | not started | | | | | | | | {hw_text} |")
    for (family, k), hw in HW_TABLE.items():  # H&W rows outside the requested set, for reference
        if (family, k) not in reported:
            lines.append(f"| {family} | {k} | not requested | | | | | | | | {' / '.join(f'{v:.1f}' for v in hw)} |")
    lines += ["", "Complete rows: the three -ELBO columns are evaluated after training with the kept (best "
              "validation) parameters. Partial rows: the last epoch's training loss and the best validation "
              "-ELBO so far.", ""]
    lines += _targets(rows)
    notes = [f"- {r['flow']} K={r['num_flows']}: {r['note']}" for r in report["rows"] if r.get("note")]
    notes += [f"- superseded, {r['flow']} K={r['num_flows']} (test -ELBO {_fmt(r.get('test_elbo'))}): {r['note']}"
              for r in report.get("superseded", [])]
    if notes:
        lines += ["Notes on rows (a row rerun after a change of the guide's defaults keeps the old one in the JSON's "
                  "`superseded`):"] + notes + [""]
    if histories:
        plot_learning_curves(histories, str(out / "mnist_vae_curves.png"),
                             title="flow VAEs on binarized MNIST (benchmarks/mnist_vae.py)")
        lines.append("Learning curves: `mnist_vae_curves.png`.")
    finished = [r for r in report["rows"] if not r.get("error")]
    if finished:
        best = min(finished, key=lambda r: r["valid_elbo"][0])
        lines.append(f"Best finished model (lowest valid -ELBO): {best['flow']} K={best['num_flows']}; samples and "
                     "reconstructions: `mnist_vae_samples.png`.")
    (out / "mnist_vae.md").write_text("\n".join(lines) + "\n")


def _best_model_figures(args, report, splits):
    """Samples and reconstructions of the best finished model; its IWAE with ``--best-iwae-k`` when all rows are done."""
    from pyro_nfvi.guides import load_checkpoint
    from pyro_nfvi.targets import VAEModel, iwae_nll, vae_guide

    finished = [r for r in report["rows"] if not r.get("error")]
    if not finished:
        return
    best = min(finished, key=lambda r: r["valid_elbo"][0])
    flow_opts = (best.get("settings") or {}).get("flow_opts")
    folder = Path(args.runs) / _run_name(best["flow"], best["num_flows"], flow_opts)
    if not (folder / "best.pt").exists():
        return
    import pyro

    with pyro.settings.context(module_local_params=True):
        hidden = (args.hidden, args.hidden)
        model = VAEModel(args.latent_dim, hidden)
        guide = vae_guide(model, best["flow"], best["num_flows"], splits["train"][:100], hidden=hidden, flow_opts=flow_opts)
        load_checkpoint(folder / "best.pt", guide=guide, model=model, restore_rng=False)
        plot_samples_and_reconstructions(model, guide, splits["test"], str(Path(args.out) / "mnist_vae_samples.png"),
                                         title=f"{best['flow']} K={best['num_flows']}: test images, reconstructions, samples")
        done = {(r["flow"], r["num_flows"]) for r in finished}
        all_done = all(row in done for row in _rows_wanted(args))  # optional rows beyond them may be finished too
        if all_done and args.best_iwae_k and not best.get("test_iwae_best"):
            # hours at k = 5000: the finished batches are kept beside the run and a later sitting resumes
            partial = folder / f"iwae_best_k{args.best_iwae_k}.pt"
            resumed = partial.exists()
            start = time.perf_counter()
            value = iwae_nll(model, guide, splits["test"], num_samples=args.best_iwae_k, checkpoint=partial, seed=0)
            best["test_iwae_best"] = {"k": args.best_iwae_k, "value": list(value), "resumed": resumed,
                                      "seconds": time.perf_counter() - start}


def main(args):
    torch.set_num_threads(args.threads)
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    path = out / "mnist_vae.json"
    report = _load(path)
    # the command that fills the table (a --report-only rewrite names the run it reports on)
    report["command"] = "python benchmarks/mnist_vae.py " + shlex.join([a for a in args.argv if a != "--report-only"])
    data = load_binarized_mnist()
    splits = {"train": data.train[: args.num_train], "valid": data.valid[: args.num_valid],
              "test": data.test[: args.num_test]}
    if not args.report_only:
        for family, k in _rows_wanted(args):
            if any((r["flow"], r["num_flows"]) == (family, k) for r in report["rows"]):
                continue  # finished in an earlier sitting
            folder = runs / _run_name(family, k, _flow_opts(args, family))
            folder.mkdir(exist_ok=True)
            if not args.quiet:
                print(f"== {family} K={k} -> {folder}", flush=True)
            code = nfvi(_cli_args(args, family, k, folder))
            if code == 0:
                row = json.loads((folder / RESULTS).read_text())
            else:  # diverged: the row says so, the table goes on
                row = {"flow": family, "num_flows": k, "error": f"nfvi vae exited with status {code}",
                       "epochs_done": len(_partial_history(folder) or []), "stopped_early": False,
                       "train_seconds": 0.0, "seconds_per_epoch": float("nan"), "history": []}
            report["rows"].append(row)
            report["machine"], report["date"] = row.get("machine"), row.get("date")
            path.write_text(json.dumps(report, indent=1))
            _best_model_figures(args, report, splits)
            path.write_text(json.dumps(report, indent=1))
            write_report(args, report)
    _best_model_figures(args, report, splits)
    path.write_text(json.dumps(report, indent=1))
    write_report(args, report)
    return report


if __name__ == "__main__":
    main(parse_args())
