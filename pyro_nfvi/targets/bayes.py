"""Classic Bayesian models with their data, for testing guides on models users actually fit.

* :func:`eight_schools` -- Rubin's eight schools (Gelman et al., *Bayesian Data Analysis*, 5.5),
  centered or non-centered; ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``.
* :func:`funnel` -- Neal's funnel (Neal 2003, *Slice sampling*), ``v ~ N(0, 3)``,
  ``x_i | v ~ N(0, exp(v / 2))``.
* :func:`hierarchical_logistic` -- a non-centered hierarchical logistic regression on simulated groups.
* :func:`collinear_regression` -- a linear regression on a design with condition number above 1e3.
* :func:`ar_series` -- an AR(K) time series model, likelihood conditional on the first K values.
* :func:`simplex_corr` -- a Dirichlet-multinomial simplex site next to an ``LKJCholesky`` site.

:data:`MODELS` maps the benchmark names (``"eight_schools_noncentered"``, ``"eight_schools_centered"``,
``"funnel"``, ``"hierarchical_logistic"``, ``"collinear_regression"``, ``"ar5"``, ``"simplex_corr"``)
to zero-argument callables returning ``(model, args)``; :mod:`pyro_nfvi.targets.reference` loads
their NUTS reference draws.  Simulated data use a local ``torch.Generator`` seeded by ``seed``,
never the global random state.

Each returns ``(model, args)``: call ``model(*args)``.  The models are written in Pyro's usual style
(``def model(sigma, y=None)``) and take their data as arguments.

Example:
    >>> import pyro
    >>> model, args = eight_schools()
    >>> trace = pyro.poutine.trace(model).get_trace(*args)
    >>> trace.nodes["theta_trans"]["value"].shape
    torch.Size([8])
"""
import functools

import pyro
import pyro.distributions as dist
import torch

from ..validation import check_int

__all__ = [
    "EIGHT_SCHOOLS_SIGMA",
    "EIGHT_SCHOOLS_Y",
    "MODELS",
    "ar_series",
    "collinear_regression",
    "eight_schools",
    "funnel",
    "hierarchical_logistic",
    "simplex_corr",
]

#: Rubin's data: estimated treatment effects and their standard errors.
EIGHT_SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
EIGHT_SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(centered=False):
    """Rubin's eight schools, ``(model, (sigma, y))``.

    Args:
        centered (bool): sample ``theta ~ N(mu, tau)`` directly (the hard geometry) instead of
            ``theta_trans ~ N(0, 1)``, ``theta = mu + tau * theta_trans``.
    """

    def model(sigma, y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", sigma.shape[0]):
            if centered:
                theta = pyro.sample("theta", dist.Normal(mu, tau))
            else:
                theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
                theta = mu + tau * theta_trans
            pyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    return model, (EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y)


def funnel(dim=10):
    """Neal's funnel in ``dim`` dimensions (``v`` and ``dim - 1`` coordinates ``x``), ``(model, ())``."""

    def model():
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        pyro.sample("x", dist.Normal(torch.zeros(dim - 1), torch.exp(v / 2)[..., None]).to_event(1))

    return model, ()


def hierarchical_logistic(num_groups=50, seed=0):
    """A hierarchical logistic regression on simulated grouped data, ``(model, (x, group, y))``.

    Gelman & Hill (2007), *Data Analysis Using Regression and Multilevel/Hierarchical Models*, ch. 14:
    ``num_groups`` groups of 15 observations with 3 standard-normal predictors; group intercepts
    ``alpha_g ~ N(mu_alpha, sigma_alpha)``, written non-centered (``alpha_raw ~ N(0, 1)``,
    ``alpha = mu_alpha + sigma_alpha * alpha_raw``) so that NUTS needs no reparameterisation;
    ``mu_alpha ~ N(0, 2)``, ``sigma_alpha ~ HalfNormal(1)``, global slopes ``beta ~ N(0, 1)``
    (event of size 3) and ``y ~ Bernoulli(logits=alpha[group] + x @ beta)``.  The data are drawn
    from the model with ``mu_alpha = -0.5``, ``sigma_alpha = 1``, ``beta = (1, -0.5, 0.25)``.

    Args:
        num_groups (int): the number of groups (the model has ``num_groups + 5`` latent dimensions).
        seed (int): the seed of the simulated data (a local ``torch.Generator``).

    Example:
        >>> import pyro
        >>> model, (x, group, y) = hierarchical_logistic(num_groups=4)
        >>> x.shape, group.shape, y.shape
        (torch.Size([60, 3]), torch.Size([60]), torch.Size([60]))
        >>> pyro.poutine.trace(model).get_trace(x, group, y).nodes["alpha_raw"]["value"].shape
        torch.Size([4])
    """
    check_int("num_groups", num_groups)
    check_int("seed", seed, minimum=0)
    gen = torch.Generator().manual_seed(seed)
    per_group, num_predictors = 15, 3
    group = torch.arange(num_groups).repeat_interleave(per_group)
    x = torch.randn(group.shape[0], num_predictors, generator=gen)
    alpha = -0.5 + torch.randn(num_groups, generator=gen)
    logits = alpha[group] + x @ torch.tensor([1.0, -0.5, 0.25])
    y = torch.bernoulli(torch.sigmoid(logits), generator=gen)

    def model(x, group, y=None):
        mu_alpha = pyro.sample("mu_alpha", dist.Normal(0.0, 2.0))
        sigma_alpha = pyro.sample("sigma_alpha", dist.HalfNormal(1.0))
        beta = pyro.sample("beta", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
        with pyro.plate("groups", num_groups):
            alpha_raw = pyro.sample("alpha_raw", dist.Normal(0.0, 1.0))
        alpha = mu_alpha + sigma_alpha * alpha_raw
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Bernoulli(logits=alpha[..., group] + (x * beta).sum(-1)), obs=y)

    return model, (x, group, y)


def collinear_regression(num_predictors=25, seed=0):
    """A linear regression on a strongly collinear design, ``(model, (x, y))``.

    The ill-conditioned regression of Belsley, Kuh & Welsch (1980), *Regression Diagnostics*, ch. 3:
    100 observations whose ``num_predictors`` columns are mixtures of 3 latent factors plus noise of
    scale 0.005 (``x = z @ w + 0.005 * e``), so the posterior of ``beta`` is sharp along a few
    directions and prior-dominated along the others.  The condition number of ``x`` is 2251 with
    the defaults (above 1e3 for every ``num_predictors >= 20``).  ``beta ~ N(0, 1)`` (event of size
    ``num_predictors``), ``sigma ~ HalfNormal(1)``, ``y ~ N(x @ beta, sigma)``; the data come from
    ``beta_j ~ N(0, 1)`` and ``sigma = 0.5``.

    Args:
        num_predictors (int): the number of columns of ``x``.
        seed (int): the seed of the simulated data (a local ``torch.Generator``).

    Example:
        >>> model, (x, y) = collinear_regression()
        >>> x.shape, y.shape
        (torch.Size([100, 25]), torch.Size([100]))
        >>> bool(torch.linalg.cond(x) > 1e3)
        True
    """
    check_int("num_predictors", num_predictors)
    check_int("seed", seed, minimum=0)
    gen = torch.Generator().manual_seed(seed)
    num_obs, num_factors = 100, 3
    z = torch.randn(num_obs, num_factors, generator=gen)
    w = torch.randn(num_factors, num_predictors, generator=gen)
    x = z @ w + 0.005 * torch.randn(num_obs, num_predictors, generator=gen)
    beta = torch.randn(num_predictors, generator=gen)
    y = x @ beta + 0.5 * torch.randn(num_obs, generator=gen)

    def model(x, y=None):
        beta = pyro.sample("beta", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal((x * beta).sum(-1), sigma), obs=y)

    return model, (x, y)


def ar_series(order=5, length=200, seed=0):
    """An autoregressive AR(``order``) model of a simulated series, ``(model, (lags, y))``.

    Box & Jenkins (1976), *Time Series Analysis*, ch. 3, with the likelihood conditional on the first
    ``order`` values: ``y_t ~ N(c + sum_k phi_k y_{t-k}, sigma)`` for ``t >= order``, vectorised
    over time through the matrix ``lags`` (row ``t - order`` holds ``y_{t-1}, ..., y_{t-order}``);
    ``phi ~ N(0, 0.5)`` (event of size ``order``), ``c ~ N(0, 1)``, ``sigma ~ HalfNormal(1)``.  The
    series is drawn (after a burn-in of 100) from the stationary AR with
    ``phi = (0.5, -0.2, 0.15, -0.1, 0.05)`` (truncated or padded with zeros to ``order``), ``c = 0.3``
    and ``sigma = 1``; the moduli of its companion matrix's eigenvalues are below 0.6.

    Args:
        order (int): the number of lags ``K``.
        length (int): the length of the series (``length - order`` observations), more than ``order``.
        seed (int): the seed of the simulated data (a local ``torch.Generator``).

    Example:
        >>> model, (lags, y) = ar_series()
        >>> lags.shape, y.shape
        (torch.Size([195, 5]), torch.Size([195]))
        >>> bool((lags[1:, 0] == y[:-1]).all())
        True
    """
    check_int("order", order)
    check_int("length", length, minimum=order + 1)
    check_int("seed", seed, minimum=0)
    gen = torch.Generator().manual_seed(seed)
    phi = torch.zeros(order)
    known = torch.tensor([0.5, -0.2, 0.15, -0.1, 0.05])[:order]
    phi[: known.shape[0]] = known
    burn = 100
    noise = torch.randn(burn + length, generator=gen)
    series = torch.zeros(burn + length)
    for t in range(order, burn + length):
        series[t] = 0.3 + (phi * series[t - order:t].flip(0)).sum() + noise[t]
    series = series[burn:]
    lags = series.unfold(0, order, 1)[:-1].flip(-1)
    y = series[order:]

    def model(lags, y=None):
        phi = pyro.sample("phi", dist.Normal(torch.zeros(lags.shape[-1]), 0.5).to_event(1))
        c = pyro.sample("c", dist.Normal(0.0, 1.0))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", lags.shape[0]):
            pyro.sample("obs", dist.Normal(c + (lags * phi).sum(-1), sigma), obs=y)

    return model, (lags, y)


def simplex_corr(seed=0):
    """A model with a simplex site and a correlation-Cholesky site, ``(model, (counts, x))``.

    Two independent parts, each the textbook conjugate-free case of its constraint: 10 rows of
    multinomial counts (20 trials each) over 4 categories, ``w ~ Dirichlet(1, 1, 1, 1)``,
    ``counts ~ Multinomial(20, w)``; and 50 points in 3 dimensions, ``loc ~ N(0, 2)``,
    ``scale ~ HalfNormal(2)`` (events of size 3), ``L ~ LKJCholesky(3, 2)`` (Lewandowski, Kurowicka &
    Joe 2009, *Generating random correlation matrices based on vines and extended onion method*),
    ``x ~ MultivariateNormal(loc, scale_tril=diag(scale) @ L)``.  12 unconstrained dimensions
    (3 + 3 + 3 + 3), unimodal.  The data come from ``w = (0.1, 0.2, 0.3, 0.4)``,
    ``loc = (1, -1, 0.5)``, ``scale = (1, 2, 0.5)`` and correlations 0.6, -0.3, 0.2.

    Args:
        seed (int): the seed of the simulated data (a local ``torch.Generator``).

    Example:
        >>> import pyro
        >>> model, (counts, x) = simplex_corr()
        >>> counts.shape, x.shape
        (torch.Size([10, 4]), torch.Size([50, 3]))
        >>> pyro.poutine.trace(model).get_trace(counts, x).nodes["L"]["value"].shape
        torch.Size([3, 3])
    """
    check_int("seed", seed, minimum=0)
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    rows, trials = 10, 20
    draws = torch.multinomial(w.expand(rows, 4), trials, replacement=True, generator=gen)
    counts = torch.zeros(rows, 4).scatter_add_(1, draws, torch.ones(rows, trials))
    corr = torch.tensor([[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]])
    tril = torch.tensor([1.0, 2.0, 0.5]).unsqueeze(-1) * torch.linalg.cholesky(corr)
    x = torch.tensor([1.0, -1.0, 0.5]) + torch.randn(50, 3, generator=gen) @ tril.T

    def model(counts, x=None):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(counts.shape[-1])))
        with pyro.plate("rows", counts.shape[0]):
            pyro.sample("counts", dist.Multinomial(trials, w), obs=counts)
        loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 2.0).to_event(1))
        scale = pyro.sample("scale", dist.HalfNormal(2.0 * torch.ones(3)).to_event(1))
        L = pyro.sample("L", dist.LKJCholesky(3, 2.0))
        with pyro.plate("points", 50):
            pyro.sample("x", dist.MultivariateNormal(loc, scale_tril=scale.unsqueeze(-1) * L), obs=x)

    return model, (counts, x)


#: Every benchmark model by name: a zero-argument callable returning ``(model, args)``.
MODELS = {
    "eight_schools_noncentered": functools.partial(eight_schools, centered=False),
    "eight_schools_centered": functools.partial(eight_schools, centered=True),
    "funnel": funnel,
    "hierarchical_logistic": hierarchical_logistic,
    "collinear_regression": collinear_regression,
    "ar5": functools.partial(ar_series, order=5),
    "simplex_corr": simplex_corr,
}
