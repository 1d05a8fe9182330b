"""Classic Bayesian models with their data, for testing guides on models users actually fit.

* :func:`eight_schools` -- Rubin's eight schools (Gelman et al., *Bayesian Data Analysis*, 5.5),
  centered or non-centered; ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``.
* :func:`funnel` -- Neal's funnel (Neal 2003, *Slice sampling*), ``v ~ N(0, 3)``,
  ``x_i | v ~ N(0, exp(v / 2))``.

Each returns ``(model, args)``: call ``model(*args)``.  The models are written in Pyro's usual style
(``def model(sigma, y=None)``) and take their data as arguments.

Example:
    >>> import pyro
    >>> model, args = eight_schools()
    >>> trace = pyro.poutine.trace(model).get_trace(*args)
    >>> trace.nodes["theta_trans"]["value"].shape
    torch.Size([8])
"""
import pyro
import pyro.distributions as dist
import torch

__all__ = ["EIGHT_SCHOOLS_SIGMA", "EIGHT_SCHOOLS_Y", "eight_schools", "funnel"]

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
        pyro.sample("x", dist.Normal(torch.zeros(dim - 1), torch.exp(v / 2)).to_event(1))

    return model, ()
