"""NUTS reference posteriors of the benchmark models, written as fixtures of ``pyro_nfvi.targets.reference``.

For every model of :data:`pyro_nfvi.targets.bayes.MODELS` (``--models``, default all): ``--chains``
chains of Pyro's ``NUTS`` (``jit_compile=True``), run one after the other (each ``MCMC`` with one
chain and seed ``--seed + chain``), ``--warmup`` adaptation and ``--samples`` kept iterations each;
split R-hat (rank-normalised) and bulk/tail ESS of every scalar component with ArviZ (components
that are constant, like the unit diagonal entry of an ``LKJCholesky`` factor, are skipped); then
``<out>/<model>.npz`` with at most ``--max-draws`` thinned constrained draws per site (``float32``)
and the run's metadata (see :mod:`pyro_nfvi.targets.reference`), among which NUTS's wall time
(including the JIT compilation, ~1-2 s per chain).  Per-model settings are in ``SETTINGS``.

Two models take their reference from elsewhere, and still record their own NUTS run:

* ``collinear_regression``: exact draws (``sigma`` from its tabulated marginal posterior, then
  ``beta | sigma`` Gaussian), since NUTS crawls through this ill-conditioned posterior during warmup;
* ``funnel``: exact draws (``v ~ N(0, 3)``, ``x | v ~ N(0, exp(v / 2))``, numpy ``default_rng``);
* ``eight_schools_centered``: NUTS on the centered model diverges; the posterior of
  ``(mu, tau, theta)`` is the same as the non-centered model's with
  ``theta = mu + tau * theta_trans``, so its draws come from a non-centered NUTS run with twice
  ``--samples``, transformed.

Their own NUTS runs (divergences, wall time) use ``--secondary`` warmup and kept iterations per chain
(default 500) and ``max_tree_depth=8``, to bound their cost.

A report goes to ``<results>/nuts_reference.{json,md}`` (``--report-only`` rebuilds it from the
fixtures in ``--out``, e.g. after running the models in separate processes).

Usage::

    python benchmarks/nuts_reference.py                      # every model, 4 chains x (1000 + 1000)
    python benchmarks/nuts_reference.py --models ar5 --chains 2 --warmup 50 --samples 50 \\
        --out /tmp/ref --results /tmp/ref                    # a smoke run
"""
import argparse
import json
import math
import time
from pathlib import Path

import arviz as az
import numpy as np
import pyro
from pyro.infer import MCMC, NUTS

from pyro_nfvi.targets.bayes import MODELS
from pyro_nfvi.targets.reference import REFERENCE_DIR, load_reference, save_reference
from report import write_report

ROOT = Path(__file__).resolve().parent.parent

#: Per-model NUTS options (defaults: ``target_accept_prob=0.9``, diagonal mass matrix).
SETTINGS = {
    "eight_schools_noncentered": {"target_accept_prob": 0.9},
    "eight_schools_centered": {"target_accept_prob": 0.95, "max_tree_depth": 8},
    "funnel": {"target_accept_prob": 0.95, "max_tree_depth": 8},
    "hierarchical_logistic": {"target_accept_prob": 0.9},
    "collinear_regression": {"target_accept_prob": 0.9, "full_mass": True, "max_tree_depth": 8},
    "ar5": {"target_accept_prob": 0.9},
    "simplex_corr": {"target_accept_prob": 0.9},
}


#: Process CPU seconds of the last NUTS run of each model (recorded next to the wall time).
CPU_SECONDS = {}


def run_nuts(name, chains, warmup, samples, seed):
    """``({site: array (chain, draw, ...)}, divergences, seconds)`` of NUTS on model ``name``.

    ``seconds`` is the wall time; this process's CPU time goes to ``CPU_SECONDS[name]`` (the robust
    number on a busy machine, where wall time includes waiting for a core).
    """
    model, args = MODELS[name]()
    options = SETTINGS.get(name, {"target_accept_prob": 0.9})
    per_chain, divergences = [], 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for chain in range(chains):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed + chain)
        kernel = NUTS(model, jit_compile=True, ignore_jit_warnings=True, **options)
        mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
        mcmc.run(*args)
        per_chain.append({site: value.detach().numpy() for site, value in mcmc.get_samples().items()})
        divergences += sum(len(v) for v in mcmc.diagnostics()["divergences"].values())
    seconds = time.perf_counter() - start
    CPU_SECONDS[name] = time.process_time() - cpu_start
    draws = {site: np.stack([c[site] for c in per_chain]) for site in per_chain[0]}
    return draws, divergences, seconds


def diagnose(draws):
    """Split R-hat max and bulk/tail ESS min over every non-constant scalar component of ``draws``."""
    posterior = {}
    for site, value in draws.items():
        flat = value.reshape(value.shape[:2] + (-1,))
        keep = flat.std(axis=(0, 1)) > 0
        for j in np.flatnonzero(keep):
            posterior[f"{site}[{j}]"] = flat[:, :, j].astype(np.float64)
    idata = az.from_dict(posterior=posterior)
    rhat = az.rhat(idata, method="rank")
    bulk = az.ess(idata, method="bulk")
    tail = az.ess(idata, method="tail")
    return {
        "rhat_max": float(max(rhat[k].item() for k in posterior)),
        "ess_bulk_min": float(min(bulk[k].item() for k in posterior)),
        "ess_tail_min": float(min(tail[k].item() for k in posterior)),
    }


def thin(draws, max_draws):
    """Chains concatenated, every ``k``-th draw kept so that at most ``max_draws`` remain; ``(draws, k)``."""
    total = next(iter(draws.values())).shape[0] * next(iter(draws.values())).shape[1]
    step = max(1, math.ceil(total / max_draws))
    return {site: v.reshape((-1,) + v.shape[2:])[::step] for site, v in draws.items()}, step


def nuts_info(name, args, draws, divergences, seconds, warmup=None, samples=None):
    return {"chains": args.chains, "warmup": warmup or args.warmup, "samples": samples or args.samples,
            "seed": args.seed,
            "jit_compile": True, **SETTINGS.get(name, {"target_accept_prob": 0.9}),
            "divergences": divergences, "seconds": seconds, "cpu_seconds": CPU_SECONDS.get(name),
            **diagnose(draws)}


def exact_collinear(x, y, chains, samples, seed, grid=20000):
    """Exact posterior draws of ``collinear_regression``, as ``{site: array (chains, samples, ...)}``.

    ``beta ~ N(0, I)`` integrates out: ``y | sigma ~ N(0, x x^T + sigma^2 I)``, so ``sigma``'s marginal
    posterior (times its ``HalfNormal(1)`` prior) is tabulated on ``grid`` points of ``(0, 3]`` and
    sampled by inverse CDF (linear within a cell); then ``beta | sigma, y ~ N(A^-1 x^T y / sigma^2, A^-1)``
    with ``A = x^T x / sigma^2 + I``, through the eigendecomposition of ``x^T x``.
    """
    rng = np.random.default_rng(seed)
    n = chains * samples
    d, u = np.linalg.eigh(x @ x.T)
    uy2 = (u.T @ y) ** 2
    s = np.linspace(3.0 / grid, 3.0, grid)
    var = d[None, :] + s[:, None] ** 2
    logp = -0.5 * s ** 2 - 0.5 * np.log(var).sum(-1) - 0.5 * (uy2[None, :] / var).sum(-1)
    density = np.exp(logp - logp.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(s))])
    sigma = np.interp(rng.uniform(0, cdf[-1], n), cdf, s)
    e, v = np.linalg.eigh(x.T @ x)
    prec = e[None, :] / sigma[:, None] ** 2 + 1.0
    mean_rot = (v.T @ (x.T @ y))[None, :] / sigma[:, None] ** 2 / prec
    beta = (mean_rot + rng.standard_normal(prec.shape) / np.sqrt(prec)) @ v.T
    return {"beta": beta.reshape(chains, samples, -1), "sigma": sigma.reshape(chains, samples)}


def reference(name, args):
    """``(draws (chain, draw, ...), info)`` of model ``name``."""
    if name == "eight_schools_centered":
        nc, nc_div, nc_sec = run_nuts("eight_schools_noncentered", args.chains, args.warmup, 2 * args.samples,
                                      args.seed)
        draws = {"mu": nc["mu"], "tau": nc["tau"],
                 "theta": nc["mu"][..., None] + nc["tau"][..., None] * nc["theta_trans"]}
        info = {"source": "NUTS on eight_schools_noncentered (twice the samples), theta = mu + tau * theta_trans",
                "source_nuts": nuts_info("eight_schools_noncentered", args, nc, nc_div, nc_sec,
                                                samples=2 * args.samples)}
        own = run_nuts(name, args.chains, args.secondary, args.secondary, args.seed)
        info["nuts"] = nuts_info(name, args, *own, warmup=args.secondary, samples=args.secondary)
        return draws, info
    if name == "funnel":
        model, _ = MODELS[name]()
        dim = pyro.poutine.trace(model).get_trace().nodes["x"]["value"].shape[-1]
        rng = np.random.default_rng(args.seed)
        n = args.chains * args.samples
        v = 3.0 * rng.standard_normal(n)
        x = np.exp(v / 2)[:, None] * rng.standard_normal((n, dim))
        draws = {"v": v.reshape(args.chains, args.samples), "x": x.reshape(args.chains, args.samples, dim)}
        own = run_nuts(name, args.chains, args.secondary, args.secondary, args.seed)
        info = {"source": "exact", "nuts": nuts_info(name, args, *own, warmup=args.secondary, samples=args.secondary)}
        return draws, info
    if name == "collinear_regression":
        _, (x, y) = MODELS[name]()
        draws = exact_collinear(x.double().numpy(), y.double().numpy(), args.chains, args.samples, args.seed)
        own = run_nuts(name, args.chains, args.secondary, args.secondary, args.seed)
        info = {"source": "exact: sigma by inverse CDF of its marginal posterior on a grid, then beta | sigma "
                          "Gaussian (conjugate)",
                "nuts": nuts_info(name, args, *own, warmup=args.secondary, samples=args.secondary)}
        return draws, info
    draws, divergences, seconds = run_nuts(name, args.chains, args.warmup, args.samples, args.seed)
    return draws, {"source": "nuts", "nuts": nuts_info(name, args, draws, divergences, seconds)}


def report_row(path):
    """The report's row of the fixture at ``path``."""
    info = load_reference(path).info
    nuts = info["nuts"]
    return {"model": info["model"], "source": info["source"], "rhat_max": info["rhat_max"],
            "ess_bulk_min": info["ess_bulk_min"], "ess_tail_min": info["ess_tail_min"],
            "num_draws": info["num_draws"], "nuts_chains": nuts["chains"], "nuts_warmup": nuts["warmup"],
            "nuts_samples": nuts["samples"], "nuts_rhat_max": nuts["rhat_max"],
            "nuts_ess_bulk_min": nuts["ess_bulk_min"], "nuts_divergences": nuts["divergences"],
            "nuts_seconds": nuts["seconds"], "nuts_cpu_seconds": nuts.get("cpu_seconds"), "bytes": Path(path).stat().st_size,
            "settings": SETTINGS.get(info["model"], {}), "command": info.get("command")}


def main(args):
    names = args.models or list(MODELS)
    command = (f"python benchmarks/nuts_reference.py --chains {args.chains} --warmup {args.warmup} "
               f"--samples {args.samples} --secondary {args.secondary} --max-draws {args.max_draws} --seed {args.seed}"
               + (" --models " + " ".join(names) if args.models else "") + (" --report-only" if args.report_only else ""))
    rows = []
    for name in names:
        path = Path(args.out) / f"{name}.npz"
        if not args.report_only:
            draws, info = reference(name, args)
            info.update(diagnose(draws))
            kept, step = thin(draws, args.max_draws)
            info.update(model=name, num_draws=int(next(iter(kept.values())).shape[0]), thin=step,
                        command=command.replace(" --models " + " ".join(names), f" --models {name}"))
            save_reference(path, kept, info)
        row = report_row(path)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if row["rhat_max"] >= 1.01:
            print(f"WARNING: {name}: R-hat {row['rhat_max']:.4f} >= 1.01", flush=True)
    made_by = [f"{r['model']}: `{r['command']}`" for r in rows if r.get("command")]
    intro = ("Reference draws (source; split R-hat max, bulk and tail ESS min over the non-constant scalar "
             "components of the reference draws) and the NUTS run on each model itself (chains x (warmup + "
             "samples), R-hat max, bulk ESS min, divergences, wall seconds of all chains, JIT included)."
             + (" Fixtures made by their own command: " + "; ".join(made_by) + "." if made_by else ""))
    table = ["| model | source | R-hat max | ESS bulk min | ESS tail min | NUTS chains x (warmup + samples) "
             "| NUTS R-hat max | NUTS ESS bulk min | NUTS divergences | NUTS seconds | NUTS CPU seconds | draws kept "
             "| fixture KB |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpu = "-" if r["nuts_cpu_seconds"] is None else f"{r['nuts_cpu_seconds']:.1f}"
        table.append(f"| {r['model']} | {r['source'].split(',')[0].split(':')[0]} | {r['rhat_max']:.4f} "
                     f"| {r['ess_bulk_min']:.0f} | {r['ess_tail_min']:.0f} "
                     f"| {r['nuts_chains']} x ({r['nuts_warmup']} + {r['nuts_samples']}) "
                     f"| {r['nuts_rhat_max']:.4f} | {r['nuts_ess_bulk_min']:.0f} | {r['nuts_divergences']} "
                     f"| {r['nuts_seconds']:.1f} | {cpu} | {r['num_draws']} | {r['bytes'] / 1024:.0f} |")
    return write_report(args.results, "nuts_reference", command, rows, "NUTS reference posteriors", intro, table)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="only these models (default: all)")
    parser.add_argument("--chains", type=int, default=4, help="NUTS chains, run one after the other")
    parser.add_argument("--warmup", type=int, default=1000, help="adaptation iterations per chain")
    parser.add_argument("--samples", type=int, default=1000, help="kept iterations per chain")
    parser.add_argument("--seed", type=int, default=0, help="seed of chain 0 (chain c uses seed + c)")
    parser.add_argument("--secondary", type=int, default=500,
                        help="warmup and kept iterations of a model's own NUTS run when its reference comes from "
                             "elsewhere (funnel, eight_schools_centered, collinear_regression)")
    parser.add_argument("--max-draws", type=int, default=2000, help="draws kept per site after thinning")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the fixtures already in --out, running nothing")
    parser.add_argument("--out", default=str(REFERENCE_DIR), help="fixture folder (default: the package's)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
