"""Time one SVI step of pyro_nfvi's flow guides against pure PyTorch and Pyro's own flows.

Two tables, all rows in one process, median wall time per step after a warm-up (rows are timed in
interleaved rounds, so load changes on the machine hit every row alike):

* **A -- amortized VAE** (batch 100 of binarized MNIST, 784-300-300 MLP encoder and decoder, 40
  latents, planar K=8 with per-data-point flow parameters):
  (a) a hand-written pure-PyTorch ELBO step with the same networks and the same flow maths;
  (b) :class:`~pyro_nfvi.guides.AmortizedFlowGuide` through ``SVI`` with ``Trace_ELBO`` and with
  ``JitTrace_ELBO``, and through the documented fast path (``module_local_params``, ELBOModule and
  one ``torch.optim.Adam``);
  (c) a hand-written Pyro guide built from Pyro's own ``ConditionalPlanar`` (K=8, conditioned on the
  encoder's hidden layer) through ``SVI`` with ``Trace_ELBO``.
* **B -- small-dimension regime** (2-D target U1 of Rezende & Mohamed as a ``pyro.factor``, planar
  K=32, 100 vectorized particles): :class:`~pyro_nfvi.guides.AutoFlowGuide` through ``SVI`` and the
  fast path, Pyro's ``AutoNormalizingFlow(model, partial(iterated, 32, planar))`` through ``SVI``,
  and pure-PyTorch loops over the 32 layers (naive, and with the fused planar kernel).

Usage::

    python benchmarks/svi_step.py                 # full run, writes benchmarks/results/svi_step.{json,md}
    python benchmarks/svi_step.py --quick         # a few steps per row: a smoke test, not a measurement
    python benchmarks/svi_step.py --steps 300 --warmup 30 --out /tmp/bench

The thread count is torch's default (recorded in the output).
"""
import argparse
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalPlanar, conditional_planar, iterated, planar
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow
from pyro.nn import PyroModule
from torch import nn

from pyro_nfvi.targets import U1
from pyro_nfvi.transforms.fused import fused_planar, use_fused_planar
from pyro_nfvi.transforms.planar import planar_log_det, planar_uhat

from pyro_nfvi.guides import AmortizedFlowGuide, AutoFlowGuide, FastSVI

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "pyro_nfvi" / "datasets" / "data" / "binarized_mnist.npz"
LOG_2PI = math.log(2.0 * math.pi)

X_DIM, HIDDEN, Z_DIM, K_VAE, BATCH = 784, (300, 300), 40, 8, 100
K_SMALL, PARTICLES = 32, 100
LR = 1e-3
#: Options of every ``torch.optim.Adam`` (pure-PyTorch rows and the fast path); ``--fused-adam`` sets ``fused=True``.
ADAM_KW = {}
#: Extra measurements (e.g. torch.compile time) written into the report.
EXTRA = {}


# -- machinery -------------------------------------------------------------------------------------
def machine_info():
    """CPU model, core counts, thread count and library versions."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class Row:
    """One timed configuration: ``setup()`` returns a zero-argument step function.

    Every row has its own Pyro param store (``ParamStoreDict.scope``), so rows whose modules use the
    same parameter names (every model's ``decoder``) do not share or overwrite each other's weights.
    """

    def __init__(self, key, label, setup, local_params=False):
        self.key, self.label, self.setup_fn, self.local_params = key, label, setup, local_params
        self.store = {"params": {}, "constraints": {}}
        self.step = None
        self.times = []
        self.cpu_times = []
        self.error = None
        self.loss = None

    def _ctx(self):
        stack = contextlib.ExitStack()
        stack.enter_context(pyro.settings.context(module_local_params=self.local_params))
        stack.enter_context(pyro.get_param_store().scope(self.store))
        return stack

    def setup(self):
        try:
            with self._ctx():
                self.step = self.setup_fn()
        except Exception as exc:  # report the failure in the table, keep the other rows
            self.error = f"{type(exc).__name__}: {exc}"
            self.step = None

    def run(self, n, record):
        if self.step is None:
            return
        try:
            with self._ctx():
                for _ in range(n):
                    c0, t0 = time.process_time(), time.perf_counter()
                    loss = self.step()
                    t1, c1 = time.perf_counter(), time.process_time()
                    if record:
                        self.times.append(t1 - t0)
                        self.cpu_times.append(c1 - c0)
                self.loss = float(loss)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.step = None

    def result(self):
        out = {"key": self.key, "label": self.label, "steps": len(self.times)}
        if self.error:
            out["error"] = self.error
        if self.times:
            ts = sorted(self.times)
            out["median_ms"] = 1e3 * statistics.median(ts)
            out["p25_ms"] = 1e3 * ts[len(ts) // 4]
            out["p75_ms"] = 1e3 * ts[(3 * len(ts)) // 4]
            out["cpu_median_ms"] = 1e3 * statistics.median(self.cpu_times)
            out["last_loss"] = self.loss
        return out


def time_rows(rows, steps, warmup, rounds):
    """Warm every row up, then time ``steps`` steps per row in ``rounds`` interleaved rounds."""
    for row in rows:
        row.setup()
        row.run(warmup, record=False)
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for row in rows:
            gc.collect()
            row.run(per_round, record=True)
    return [row.result() for row in rows]


# -- table A: amortized VAE --------------------------------------------------------------------------
def mnist_batches(n_batches):
    """``n_batches`` batches of 100 binarized MNIST training images as float tensors."""
    a = np.load(DATA)["train"][: n_batches * BATCH]
    x = torch.from_numpy(np.unpackbits(a, axis=1)[:, :X_DIM].astype(np.float32))
    return list(x.split(BATCH))


def mlp(sizes, last_activation=True):
    """``Linear -> ELU`` blocks through ``sizes`` (ELU after the last block if asked).

    ELU is the default activation of AmortizedFlowGuide's encoder, so every row uses it.
    """
    layers = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(m, n))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


def cycle(batches):
    state = {"i": 0}

    def next_batch():
        x = batches[state["i"] % len(batches)]
        state["i"] += 1
        return x

    return next_batch


class PureVAE(nn.Module):
    """(a): the VAE with amortized planar flows in plain PyTorch, same maths as pyro_nfvi's Planar.

    Encoder ``784-300-300`` (ELU), a linear head for loc and softplus-scale, one linear head for
    every layer's per-point ``u, w, b``; unfused layer loop with :func:`planar_uhat` and
    :func:`planar_log_det`; decoder ``40-300-300-784``; Bernoulli likelihood; one Adam.
    """

    def __init__(self):
        super().__init__()
        self.encoder = mlp((X_DIM,) + HIDDEN)
        self.head = nn.Linear(HIDDEN[-1], 2 * Z_DIM)
        self.flow_head = nn.Linear(HIDDEN[-1], K_VAE * (2 * Z_DIM + 1))
        self.decoder = mlp((Z_DIM,) + HIDDEN + (X_DIM,), last_activation=False)

    def loss(self, x):
        h = self.encoder(x)
        loc, scale_raw = self.head(h).chunk(2, -1)
        scale = nn.functional.softplus(scale_raw)
        u, w, b = self.flow_head(h).reshape(-1, K_VAE, 2 * Z_DIM + 1).split([Z_DIM, Z_DIM, 1], -1)
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        log_q = (-0.5 * eps * eps - torch.log(scale)).sum(-1) - 0.5 * Z_DIM * LOG_2PI
        for k in range(K_VAE):
            uhat, wu = planar_uhat(u[:, k], w[:, k])
            a = (z * w[:, k]).sum(-1) + b[:, k, 0]
            z = z + uhat * torch.tanh(a).unsqueeze(-1)
            log_q = log_q - planar_log_det(a, wu)
        logits = self.decoder(z)
        log_prior = -0.5 * (z * z).sum(-1) - 0.5 * Z_DIM * LOG_2PI
        log_lik = -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        return -(log_prior + log_lik - log_q).sum()


def torch_step_fn(params, loss_fn):
    """A plain PyTorch training step: ``zero_grad``, ``loss_fn()``, ``backward``, Adam ``step``."""
    opt = torch.optim.Adam(params, lr=LR, **ADAM_KW)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def setup_pure_vae(batches):
    net, next_batch = PureVAE(), cycle(batches)
    return torch_step_fn(net.parameters(), lambda: net.loss(next_batch()))


class VAEModel(PyroModule):
    """The generative model shared by the Pyro rows (Pyro's VAE example, with ELU MLPs)."""

    def __init__(self):
        super().__init__()
        self.decoder = mlp((Z_DIM,) + HIDDEN + (X_DIM,), last_activation=False)

    def forward(self, x):
        # a plain nn.Module child of a PyroModule: SVI registers its parameters on access
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(1), obs=x)


class _LinearPlanarNet(nn.Module):
    """Hypernet for Pyro's ConditionalPlanar: a linear map from the encoder hidden to ``(b, u, w)``."""

    def __init__(self, hidden, dim):
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(hidden, 2 * dim + 1)
        with torch.no_grad():  # start at (nearly) the identity, like pyro_nfvi's hypernets
            self.linear.weight.mul_(0.01)

    def forward(self, h):
        b, u, w = self.linear(h).split([1, self.dim, self.dim], -1)
        return b, u, w


class PyroPlanarGuide(nn.Module):
    """(c): a hand-written guide from Pyro's own ``ConditionalPlanar`` layers, conditioned on ``h``.

    ``linear=False`` builds each layer with Pyro's helper ``conditional_planar(40, 300)``, whose
    hypernetwork is Pyro's default ``DenseNN(300, [400, 400])``; ``linear=True`` gives each layer a
    linear hypernetwork from ``h``, as pyro_nfvi's ``AmortizedFlowGuide`` has (like for like).
    """

    def __init__(self, linear=False):
        super().__init__()
        self.encoder = mlp((X_DIM,) + HIDDEN)
        self.head = nn.Linear(HIDDEN[-1], 2 * Z_DIM)
        if linear:
            flows = [ConditionalPlanar(_LinearPlanarNet(HIDDEN[-1], Z_DIM)) for _ in range(K_VAE)]
        else:
            flows = [conditional_planar(Z_DIM, HIDDEN[-1]) for _ in range(K_VAE)]
        self.flows = nn.ModuleList(flows)

    def forward(self, x):
        if not pyro.settings.get("module_local_params"):
            pyro.module("guide", self)
        h = self.encoder(x)
        loc, scale_raw = self.head(h).chunk(2, -1)
        base = dist.Normal(loc, nn.functional.softplus(scale_raw)).to_event(1)
        q = dist.TransformedDistribution(base, [f.condition(h) for f in self.flows])
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q)


def _args_fn(batches):
    """A function returning the model's positional arguments for the next step."""
    if batches is None:
        return lambda: ()
    next_batch = cycle(batches)
    return lambda: (next_batch(),)


def svi_step_fn(model, guide, elbo, batches):
    """Standard Pyro: ``SVI`` with ``pyro.optim.Adam`` (batches=None: a model without arguments)."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), elbo)
    args = _args_fn(batches)
    return lambda: svi.step(*args())


def fast_step_fn(model, guide, elbo, batches):
    """The documented fast path: :class:`pyro_nfvi.guides.FastSVI` (``module_local_params``,
    ELBOModule, one ``torch.optim.Adam`` with the same options as the pure-PyTorch rows)."""
    args = _args_fn(batches)
    svi = FastSVI(model, guide, loss=elbo, optimizer=partial(torch.optim.Adam, lr=LR, **ADAM_KW))
    return lambda: svi.step(*args())


def amortized_guide(model, x):
    return AmortizedFlowGuide(model, plate="data", flow="planar", num_flows=K_VAE, encoder_hidden=HIDDEN,
                              model_args=(x,))


def table_a_rows(batches):
    def ours(elbo_cls, fast=False):
        def setup():
            model = VAEModel()
            guide = amortized_guide(model, batches[0])
            return (fast_step_fn if fast else svi_step_fn)(model, guide, elbo_cls(), batches)
        return setup

    rows = [
        Row("a_pure_torch", "(a) pure PyTorch ELBO step", lambda: setup_pure_vae(batches)),
        Row("b_svi_trace", "(b) AmortizedFlowGuide, SVI + Trace_ELBO", ours(Trace_ELBO)),
        Row("b_svi_jit", "(b) AmortizedFlowGuide, SVI + JitTrace_ELBO", ours(JitTrace_ELBO)),
        Row("b_fast", "(b) AmortizedFlowGuide, fast path (ELBOModule + torch Adam)", ours(Trace_ELBO, True),
            local_params=True),
    ]

    def pyro_c(linear):
        def setup():
            return svi_step_fn(VAEModel(), PyroPlanarGuide(linear), Trace_ELBO(), batches)
        return setup

    rows += [
        Row("c_pyro_planar", "(c) Pyro conditional_planar(40, 300) guide (default DenseNN hypernets), SVI + Trace_ELBO",
            pyro_c(False)),
        Row("c_pyro_planar_linear", "(c-linear) Pyro ConditionalPlanar with linear hypernets, SVI + Trace_ELBO",
            pyro_c(True)),
    ]
    return rows


# -- table B: the small-dimension regime ---------------------------------------------------------------
def u1_model():
    """U1 of Rezende & Mohamed as a Pyro model: ``pyro.factor("U1", -U1(z))`` on a masked prior.

    :func:`pyro_nfvi.targets.energy_model` uses a flat ``ImproperUniform`` prior, which Pyro's
    ``AutoNormalizingFlow`` cannot initialise (``init_to_feasible`` samples the prior), so every row
    uses a standard normal prior masked out of the density: the same posterior, sampleable.
    """

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1).mask(False))
        pyro.factor("U1", -U1(z))

    return model


class PureSmallFlow(nn.Module):
    """Affine Gaussian base + K planar layers fitted to U1 in plain PyTorch (pyro_nfvi's maths)."""

    def __init__(self, fused):
        super().__init__()
        self.fused = fused
        self.loc = nn.Parameter(torch.zeros(2))
        self.log_scale = nn.Parameter(torch.full((2,), math.log(0.1)))
        self.u = nn.Parameter(torch.zeros(K_SMALL, 2))
        self.w = nn.Parameter(torch.randn(K_SMALL, 2) / math.sqrt(2.0))
        self.b = nn.Parameter(torch.zeros(K_SMALL))

    def loss(self):
        eps = torch.randn(PARTICLES, 2)
        z = self.loc + torch.exp(self.log_scale) * eps
        log_q = (-0.5 * eps * eps - self.log_scale).sum(-1) - LOG_2PI
        if self.fused:
            uhat, wu = planar_uhat(self.u, self.w)
            z, ld = fused_planar(z, uhat, self.w, self.b, wu)
            log_q = log_q - ld
        else:
            for k in range(K_SMALL):
                uhat, wu = planar_uhat(self.u[k], self.w[k])
                a = (z * self.w[k]).sum(-1) + self.b[k]
                z = z + uhat * torch.tanh(a).unsqueeze(-1)
                log_q = log_q - planar_log_det(a, wu)
        return (log_q + U1(z)).mean()


def setup_pure_small(fused, compiled=False):
    net = PureSmallFlow(fused)
    step = torch_step_fn(net.parameters(), torch.compile(net.loss) if compiled else net.loss)
    if compiled:  # the first call compiles (inductor, C++ via gcc); record how long it takes
        t0 = time.perf_counter()
        step()
        EXTRA["naive_loop_compile_s"] = time.perf_counter() - t0
    return step


def table_b_rows(compile_rows=False):
    elbo = partial(Trace_ELBO, num_particles=PARTICLES, vectorize_particles=True)
    rows = [
        Row("naive_loop", "naive pure-PyTorch loop over 32 planar layers", lambda: setup_pure_small(False)),
        Row("fused_torch", "pure PyTorch with the fused planar kernel", lambda: setup_pure_small(True)),
    ]
    if compile_rows:
        rows.append(Row("naive_loop_compiled", "naive pure-PyTorch loop, loss under torch.compile (experiment)",
                        lambda: setup_pure_small(False, compiled=True)))

    def ours(fast, fused=True):
        def setup():
            model = u1_model()
            guide = AutoFlowGuide(model, flow="planar", num_flows=K_SMALL)
            step = (fast_step_fn if fast else svi_step_fn)(model, guide, elbo(), None)

            def unfused_step():
                with use_fused_planar(False):
                    return step()
            return step if fused else unfused_step
        return setup

    rows += [
        Row("ours_svi", "AutoFlowGuide(planar, 32), SVI + Trace_ELBO", ours(False)),
        Row("ours_fast", "AutoFlowGuide(planar, 32), fast path", ours(True), local_params=True),
        Row("ours_fast_unfused", "AutoFlowGuide(planar, 32), fast path, fusion off", ours(True, False),
            local_params=True),
    ]

    def pyro_anf():
        model = u1_model()
        guide = AutoNormalizingFlow(model, partial(iterated, K_SMALL, planar))
        return svi_step_fn(model, guide, elbo(), None)

    rows.append(Row("pyro_anf_svi", "Pyro AutoNormalizingFlow(iterated(32, planar)), SVI + Trace_ELBO", pyro_anf))
    return rows


# -- report --------------------------------------------------------------------------------------------
def _ratio(results, num, den, key="median_ms"):
    if num is None or den is None:
        return None
    a, b = results.get(num, {}).get(key), results.get(den, {}).get(key)
    return None if a is None or b is None else a / b


def _best(results, keys):
    timed = [k for k in keys if "median_ms" in results.get(k, {})]
    return min(timed, key=lambda k: results[k]["median_ms"], default=None)


def targets(res_a, res_b):
    """The issue's targets as measured ratios of median wall times (and of CPU times, for reference)."""
    fastest = _best(res_a, ("b_svi_trace", "b_svi_jit", "b_fast"))
    ours_b = _best(res_b, ("ours_svi", "ours_fast"))
    rows = []

    def add(name, results, num, den, op, bound, informational=False):
        value = _ratio(results, num, den)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        rows.append({
            "target": f"{name}: {num} / {den}",
            "value": value,
            "cpu_value": _ratio(results, num, den, "cpu_median_ms"),
            "bound": f"{op} {bound}",
            "met": met,
            "informational": informational,
        })

    add("fastest path / (a)", res_a, fastest, "a_pure_torch", "<=", 1.3)
    add("standard SVI / (a)", res_a, "b_svi_trace", "a_pure_torch", "<=", 2.0)
    add("(c) / fastest path", res_a, "c_pyro_planar", fastest, ">=", 3.0)
    add("Pyro's flow / ours (table B)", res_b, "pyro_anf_svi", ours_b, ">=", 3.0)
    # informational (no target in the issue): like-for-like hypernets, and the standard SVI path
    add("(c-linear) / fastest path", res_a, "c_pyro_planar_linear", fastest, ">=", 3.0, True)
    add("Pyro's flow / ours through SVI", res_b, "pyro_anf_svi", "ours_svi", ">=", 3.0, True)
    return rows


def _table(results, title, ref):
    lines = [f"### {title}", "", "| row | median ms/step | p25-p75 ms | CPU ms/step | vs ref |", "|---|---:|---:|---:|---:|"]
    ref_ms = results.get(ref, {}).get("median_ms")
    for r in results.values():
        if "median_ms" in r:
            rel = f"{r['median_ms'] / ref_ms:.2f}x" if ref_ms else "-"
            lines.append(f"| {r['label']} | {r['median_ms']:.2f} | {r['p25_ms']:.2f}-{r['p75_ms']:.2f} | "
                         f"{r['cpu_median_ms']:.2f} | {rel} |")
        else:
            error = " ".join(r.get("error", "not run").split())[:200].replace("|", "/")
            lines.append(f"| {r['label']} | n/a | - | - | {error} |")
    return lines


def markdown(report):
    m = report["machine"]
    lines = [
        "# SVI step benchmark",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {m['cpu']}, {m['usable_cores']} usable cores, torch threads {m['torch_threads']}, "
        f"torch {m['torch']}, pyro {m['pyro']}, Python {m['python']}",
        f"- torch.optim.Adam options (pure PyTorch rows and fast path): {report['adam_options'] or 'defaults'}",
        f"- steps {report['steps']} per row after {report['warmup']} warm-up steps, {report['rounds']} interleaved "
        "rounds; median wall time per step; CPU ms = process CPU time per step, all threads (OpenMP "
        "spin-waits included)",
        "",
    ]
    lines += _table(report["table_a"], "A: amortized VAE (batch 100, 784-300-300, 40 latents, planar K=8)",
                    "a_pure_torch")
    lines += [""]
    lines += _table(report["table_b"], "B: U1, planar K=32, 100 vectorized particles", "naive_loop")
    for key, value in report.get("extra", {}).items():
        lines += ["", f"- {key}: {value:.1f}"]
    lines += ["", "### Targets (ratios of median wall times; CPU-time ratios alongside)", "",
              "| target | measured | CPU-time ratio | bound | met |", "|---|---:|---:|---:|---|"]
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        cpu = "n/a" if t["cpu_value"] is None else f"{t['cpu_value']:.2f}"
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO")
        if t.get("informational"):
            met += " (informational)"
        lines.append(f"| {t['target']} | {value} | {cpu} | {t['bound']} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per row (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per row first (default 20)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds (default 4)")
    parser.add_argument("--quick", action="store_true", help="tiny run (3 steps, 1 warm-up): a smoke test")
    parser.add_argument("--only", choices=["A", "B"], help="run one table only")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    parser.add_argument("--fused-adam", action="store_true",
                        help="torch.optim.Adam(fused=True) in the pure-PyTorch rows and the fast path")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--compile", action="store_true",
                        help="add an experimental row: the naive loop's loss under torch.compile")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # JitTrace_ELBO's shape checks
    logging.getLogger("pyro").setLevel(logging.WARNING)  # "Guessed max_plate_nesting" notes
    ADAM_KW.clear()
    if args.fused_adam:
        ADAM_KW["fused"] = True
    if args.quick:
        args.steps, args.warmup, args.rounds = 3, 1, 1
    if min(args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    pyro.set_rng_seed(0)
    batches = mnist_batches(2 if args.quick else 20)
    res_a = res_b = {}
    if args.only in (None, "A"):
        res_a = {r["key"]: r for r in time_rows(table_a_rows(batches), args.steps, args.warmup, args.rounds)}
    if args.only in (None, "B"):
        res_b = {r["key"]: r for r in time_rows(table_b_rows(args.compile), args.steps, args.warmup, args.rounds)}
    report = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "quick": args.quick,
        "adam_options": dict(ADAM_KW),
        "table_a": res_a,
        "table_b": res_b,
        "targets": targets(res_a, res_b),
        "extra": dict(EXTRA),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "svi_step.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (out / "svi_step.md").write_text(md)
    print(md)
    return report


if __name__ == "__main__":
    main()
