"""Build the NUTS reference for the corrected-LOO test (``collinear_loo_nuts.json``).

A Bayesian linear regression with five nearly collinear predictors (pairwise correlation 0.98),
``n = 25`` points, ``beta ~ N(0, 0.5^2 I)``, ``sigma ~ HalfNormal(2)``.  Mean-field VI (AutoNormal)
misses the strong posterior correlations of ``beta``; ``az.loo`` on its raw draws is then off by
several elpd units, while the importance-corrected LOO of :func:`pyro_nfvi.diagnostics.loo` is not.

Regenerate (about two minutes on one core)::

    cd /work/main && OMP_NUM_THREADS=1 .venv/bin/python tests/diagnostics/make_nuts_reference.py [data_seed [out.json]]

The test imports :func:`model` and reads the data from the JSON file, so both use the same numbers.
"""
import json
import pathlib
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import torch

__all__ = ["DATA_SEED", "FIXTURE", "make_data", "model"]

DATA_SEED = 0
N, P, RHO, TAU, SIGMA_SCALE = 25, 5, 0.98, 0.5, 2.0
FIXTURE = pathlib.Path(__file__).with_name("data") / "collinear_loo_nuts.json"


def make_data(seed=DATA_SEED):
    """``(X, y)`` as float64 numpy arrays: equicorrelated Gaussian predictors, unit noise."""
    rng = np.random.default_rng(seed)
    cov = np.full((P, P), RHO)
    np.fill_diagonal(cov, 1.0)
    # the Cholesky factor is unique; the default SVD is not (four equal eigenvalues), and which basis of
    # that eigenspace LAPACK returns changed between numpy builds, and with it the data
    X = rng.multivariate_normal(np.zeros(P), cov, size=N, method="cholesky")
    beta = TAU * rng.normal(size=P)
    y = X @ beta + rng.normal(size=N)
    return X, y


def model(X, y):
    """``beta ~ N(0, 0.5^2 I_5)``, ``sigma ~ HalfNormal(2)``, ``y_i ~ N(x_i . beta, sigma^2)`` (vectorizable).

    Example:
        >>> X, y = (torch.as_tensor(a) for a in make_data())
        >>> trace = pyro.poutine.trace(model).get_trace(X, y)
        >>> tuple(trace.nodes["y"]["value"].shape)
        (25,)
    """
    beta = pyro.sample("beta", dist.Normal(X.new_zeros(()), TAU).expand([X.shape[-1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(X.new_tensor(SIGMA_SCALE)))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * beta).sum(-1), sigma), obs=y)


def main(data_seed=DATA_SEED, out=FIXTURE, chains=2, warmup=800, samples=2000):
    """Run NUTS (``chains`` sequential chains) and write the reference elpd_loo to ``out``."""
    import arviz as az
    from pyro.infer import MCMC, NUTS

    X_np, y_np = make_data(data_seed)
    X, y = torch.as_tensor(X_np), torch.as_tensor(y_np)
    draws = {"beta": [], "sigma": []}
    for chain in range(chains):
        pyro.set_rng_seed(100 + chain)
        mcmc = MCMC(NUTS(model), num_samples=samples, warmup_steps=warmup, disable_progbar=True)
        mcmc.run(X, y)
        for name, value in mcmc.get_samples().items():
            draws[name].append(value.numpy())
    beta, sigma = np.stack(draws["beta"]), np.stack(draws["sigma"])
    mean = np.einsum("csp,np->csn", beta, X_np)
    loglik = -0.5 * ((y_np - mean) / sigma[..., None]) ** 2 - np.log(sigma[..., None]) - 0.5 * np.log(2 * np.pi)
    idata = az.from_dict(posterior={"beta": beta, "sigma": sigma}, log_likelihood={"y": loglik})
    res = az.loo(idata, pointwise=True)
    summary = az.summary(idata)
    result = {
        "description": "NUTS reference of test_diagnostics_arviz.py (corrected LOO vs NUTS)",
        "data_seed": data_seed,
        "n": N, "p": P, "rho": RHO, "tau": TAU, "sigma_prior_scale": SIGMA_SCALE,
        "X": X_np.tolist(),
        "y": y_np.tolist(),
        "nuts": {
            "chains": chains, "warmup": warmup, "samples_per_chain": samples, "seeds": [100 + c for c in range(chains)]
        },
        "elpd_loo": float(res.elpd_loo),
        "se": float(res.se),
        "p_loo": float(res.p_loo),
        "max_pareto_k": float(res.pareto_k.max()),
        "max_r_hat": float(summary["r_hat"].max()),
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "versions": {"pyro": pyro.__version__, "torch": torch.__version__, "arviz": az.__version__},
    }
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"elpd_loo {result['elpd_loo']:.3f} (se {result['se']:.2f}, p_loo {result['p_loo']:.2f}), "
          f"max k {result['max_pareto_k']:.2f}, max r_hat {result['max_r_hat']:.3f} -> {out}")
    return result


if __name__ == "__main__":
    # usage: make_nuts_reference.py [data_seed [output.json]]  (defaults: the shipped fixture)
    main(int(sys.argv[1]) if len(sys.argv) > 1 else DATA_SEED, sys.argv[2] if len(sys.argv) > 2 else FIXTURE)
