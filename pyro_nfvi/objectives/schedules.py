"""Annealing schedules ``t -> beta_t`` for :class:`~pyro_nfvi.objectives.AnnealedELBO`.

A schedule is any plain callable mapping the step counter ``t = 0, 1, 2, ...`` (the number of
completed ``svi.step`` calls) to an inverse temperature ``beta_t >= 0``.  The presets here are
ordinary functions (or factories returning closures); there is no registry.
"""
__all__ = ["rezende_mohamed", "linear_warmup", "constant"]


def rezende_mohamed(t):
    r"""The annealing schedule of Rezende & Mohamed (2015): :math:`\beta_t = \min(1, 0.01 + t/10^4)`.

    Used with ``mode="free_energy"``, where :math:`\beta_t` multiplies the model's log joint
    (their eq. 20).

    Reference: Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, sec. 6.

    Args:
        t (int): number of completed optimisation steps.

    Returns:
        float: :math:`\beta_t`.

    Example:
        >>> rezende_mohamed(0), rezende_mohamed(4950), rezende_mohamed(10 ** 5)
        (0.01, 0.5, 1.0)
    """
    if t < 0:
        raise ValueError(f"rezende_mohamed: step t must be >= 0, got {t}")
    return min(1.0, 0.01 + t / 1e4)


def linear_warmup(warmup_steps, start=0.0, end=1.0):
    r"""Linear ramp :math:`\beta_t = \text{start} + (\text{end} - \text{start}) \min(1, t / T)`.

    The usual KL warm-up of Bowman et al. (2016) and Sønderby et al. (2016): ``beta`` rises
    linearly from ``start`` to ``end`` over ``T = warmup_steps`` steps and then stays at ``end``.

    Args:
        warmup_steps (int): length ``T`` of the ramp, ``>= 1``.
        start (float): value at ``t = 0``.
        end (float): value from ``t = T`` on.

    Returns:
        callable: the schedule ``t -> beta_t``.

    Example:
        >>> s = linear_warmup(100)
        >>> s(0), s(25), s(100), s(1000)
        (0.0, 0.25, 1.0, 1.0)
    """
    warmup_steps = int(warmup_steps)
    if warmup_steps < 1:
        raise ValueError(f"linear_warmup: warmup_steps must be >= 1, got {warmup_steps}")
    start, end = float(start), float(end)

    def schedule(t):
        if t < 0:
            raise ValueError(f"linear_warmup: step t must be >= 0, got {t}")
        return start + (end - start) * min(1.0, t / warmup_steps)

    schedule.__name__ = f"linear_warmup({warmup_steps})"
    return schedule


def constant(beta):
    r"""The constant schedule :math:`\beta_t = \beta` (e.g. a fixed tempering of the posterior).

    Args:
        beta (float): the constant value, ``>= 0``.

    Returns:
        callable: the schedule ``t -> beta``.

    Example:
        >>> constant(0.5)(123)
        0.5
    """
    beta = float(beta)
    if beta < 0:
        raise ValueError(f"constant: beta must be >= 0, got {beta}")

    def schedule(t):
        return beta

    schedule.__name__ = f"constant({beta})"
    return schedule
