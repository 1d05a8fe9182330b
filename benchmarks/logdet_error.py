"""Measure each flow family's log-det error against autograd ``jacobian`` + ``slogdet``.

For every family and variant, owned and amortized, at random (non-initial) parameters, the script
computes ``max |log|det J| - slogdet(jacobian)|`` over dims 1, 2, 3, 10 and a few samples, in float64
(module and reference in float64) and in float32 (module cast to float32, reference in float64 from
the same parameters).  It also records the float64 inverse round-trip error.  Writes
``logdet_error.json`` and ``logdet_error.md`` to ``--out`` (default ``benchmarks/results``).

Run::

    python benchmarks/logdet_error.py
"""
import argparse
import copy
import datetime
import json
import pathlib
import platform
import sys

import torch
from torch.autograd.functional import jacobian

from pyro_nfvi.transforms import AffineCoupling, Householder, IAF, Planar, Radial, Sylvester, flow

VARIANTS = {
    "planar": lambda d, c: Planar(d, context_dim=c),
    "radial": lambda d, c: Radial(d, context_dim=c),
    "householder": lambda d, c: Householder(d, context_dim=c),
    "iaf (affine)": lambda d, c: IAF(d, context_dim=c),
    "iaf (gated)": lambda d, c: IAF(d, context_dim=c, stable=True),
    "sylvester (orthogonal)": lambda d, c: Sylvester(d, context_dim=c, kind="orthogonal"),
    "sylvester (householder)": lambda d, c: Sylvester(d, context_dim=c, kind="householder"),
    "sylvester (triangular)": lambda d, c: Sylvester(d, context_dim=c, kind="triangular"),
    "coupling (affine)": lambda d, c: AffineCoupling(d, context_dim=c, form="affine"),
    "coupling (additive)": lambda d, c: AffineCoupling(d, context_dim=c, form="additive"),
    "planar stack K=8 (fused)": lambda d, c: flow("planar", d, 8, context_dim=c),
}
CONTEXT = 3


def randomize_(module, scale=0.5):
    """Add noise to every parameter (hypernet heads too), scaled by 1/sqrt(fan-in) for matrices."""
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[-1] if p.dim() >= 2 else 1
            p.add_(torch.randn_like(p) * scale / fan_in**0.5)


def _bound(module, context):
    return module.condition(context) if context is not None else module


def _errors(factory, dim, amortized, num_samples=4):
    torch.manual_seed(dim * 7 + amortized)
    m64 = factory(dim, CONTEXT if amortized else 0).double()
    randomize_(m64)
    m32 = copy.deepcopy(m64).float()
    ctx = torch.randn(num_samples, CONTEXT, dtype=torch.float64) if amortized else None
    x = torch.randn(num_samples, dim, dtype=torch.float64) * 1.5
    t64, t32 = _bound(m64, ctx), _bound(m32, None if ctx is None else ctx.float())
    ld64 = t64.forward_and_log_det(x)[1].detach()
    ld32 = t32.forward_and_log_det(x.float())[1].detach().double()
    err64 = err32 = 0.0
    for i in range(num_samples):
        ti = _bound(m64, None if ctx is None else ctx[i])
        ref = torch.linalg.slogdet(jacobian(lambda z: ti.forward_and_log_det(z)[0], x[i]))[1]
        err64 = max(err64, float((ld64[i] - ref).abs()))
        err32 = max(err32, float((ld32[i] - ref).abs()))
    y = t64(x)
    inv = float((t64.inv(y.clone()) - x).abs().max())
    return err64, err32, inv


def _cpu_model():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(args):
    rows = []
    for name, factory in VARIANTS.items():
        for amortized in (False, True):
            e64 = e32 = inv = 0.0
            for dim in args.dims:
                a, b, c = _errors(factory, dim, amortized)
                e64, e32, inv = max(e64, a), max(e32, b), max(inv, c)
            rows.append({"family": name, "amortized": amortized, "logdet_err_float64": e64,
                         "logdet_err_float32": e32, "inverse_err_float64": inv})
            print(f"{name:28s} {'amortized' if amortized else 'owned':9s} "
                  f"f64 {e64:.1e}  f32 {e32:.1e}  inv {inv:.1e}", flush=True)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{_cpu_model()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "dims": args.dims,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logdet_error.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Log-det error against autograd jacobian + slogdet (random parameters)",
        "",
        f"`{meta['command']}` on {meta['date']}, {meta['machine']}, torch {meta['torch']}; dims {args.dims}.",
        "float32: the module cast to float32, compared with the float64 reference.",
        "",
        "| family | parameters | max log-det error, float64 | max log-det error, float32 | inverse round trip, float64 |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['family']} | {'amortized' if r['amortized'] else 'owned'} | "
                     f"{r['logdet_err_float64']:.1e} | {r['logdet_err_float32']:.1e} | {r['inverse_err_float64']:.1e} |")
    (out / "logdet_error.md").write_text("\n".join(lines) + "\n")
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 2, 3, 10])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
