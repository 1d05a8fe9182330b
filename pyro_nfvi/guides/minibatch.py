"""Catch a minibatch given to a global guide: warn when the observed data change between calls.

A global guide (:class:`~pyro_nfvi.guides.AutoFlowGuide`) learns one posterior for the data it is
trained on.  Given a different minibatch at each step as a model argument, without a plate that
says it is subsampled, it silently trains one posterior per *batch position* (and the ELBO is not
scaled to the full data).  :class:`MinibatchCheck` remembers the tensors that held the observed
values at setup and warns once when later calls pass different ones twice (one new data set is
how a fitted guide is evaluated, e.g. :class:`~pyro.infer.Predictive` on test data; a second one
means a stream of minibatches).  It compares identity
and shape (a changed shape is certainly another batch); only when a tensor of the same shape is a
different object are the contents compared, once per new tensor.
"""
import warnings

import torch
from pyro import poutine

__all__ = ["MinibatchCheck", "MinibatchWarning"]


class MinibatchWarning(UserWarning):
    """The observed data of a global guide changed between calls without a subsampled plate."""


def _subsampled(trace):
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in site["cond_indep_stack"]:
            full = getattr(frame, "full_size", None)
            if frame.size is not None and full is not None and full != frame.size:
                return True
    return False


def _tensors(args, kwargs):
    return [(("arg", i), a) for i, a in enumerate(args) if torch.is_tensor(a)] + [
        (("kwarg", k), a) for k, a in kwargs.items() if torch.is_tensor(a)
    ]


class MinibatchCheck:
    """Remembers the model arguments holding observed values; warns once if later calls change them twice.

    Args:
        model (callable): the model; traced once here (blocked, without gradients), since a guide's
            prototype trace hides the observed sites and the plates.
        args (tuple), kwargs (dict): the model arguments of the first call.
        guide_name (str): for the message.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.randn(10)
        >>> check = MinibatchCheck(model, (y,), {}, "AutoFlowGuide")
        >>> check((y,), {})
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     check((y[:5],), {})  # one new data set: evaluation, no warning
        ...     check((y[5:],), {})  # another one: minibatches
        >>> "subsample" in str(seen[0].message)
        True
    """

    def __init__(self, model, args, kwargs, guide_name):
        self.guide_name = guide_name
        with torch.random.fork_rng(devices=[]), poutine.block(), torch.no_grad():  # leaves the RNG as it was
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        self.active = not _subsampled(trace)
        observed = [
            site["value"] for site in trace.nodes.values()
            if site["type"] == "sample" and site["is_observed"] and torch.is_tensor(site["value"])
        ]
        ptrs = {v.data_ptr() for v in observed if v.numel()}
        tensors = _tensors(args, kwargs)
        held = [(key, a) for key, a in tensors if a.numel() and a.data_ptr() in ptrs]
        # observed values computed from the arguments (not views of them), or hidden from the
        # prototype trace (AutoGuide hides observed sites): watch every tensor argument
        self.watched = dict(held or tensors)
        self.active = self.active and bool(self.watched)
        self.changes = 0

    def __call__(self, args, kwargs):
        """Compare this call's arguments with the remembered ones; warn (once) if they changed."""
        if not self.active:
            return
        current = dict(_tensors(args, kwargs))
        for key, old in self.watched.items():
            new = current.get(key)
            if new is None or new is old:
                continue
            if new.shape != old.shape:
                changed = f"shape {tuple(old.shape)} -> {tuple(new.shape)}"
            elif new.dtype == old.dtype and new.device == old.device and torch.equal(new, old):
                self.watched[key] = new  # the same values in a new tensor: compare with this one next
                continue
            else:
                changed = "other values of the same shape"
            self.watched[key] = new
            self.changes += 1
            if self.changes < 2:
                # one new data set is how a guide is evaluated (Predictive on test data); a second
                # one is a stream of minibatches
                continue
            self.active = False  # warn once
            where = f"argument {key[1]}" if key[0] == "arg" else f"keyword argument {key[1]!r}"
            warnings.warn(
                f"{self.guide_name}: the observed data changed between calls ({where}: {changed}) but "
                "no plate of the model is subsampled, so this global guide fits one posterior per "
                "batch position, not the posterior of the data set. For minibatches, declare them "
                "with a subsampled plate, pyro.plate(name, size=N, subsample=idx) (with "
                "AmortizedFlowGuide for local latents), or pass the full data at every step. "
                "(Ignore this if you are evaluating the guide on new data.)",
                MinibatchWarning,
                stacklevel=4,
            )
            return
