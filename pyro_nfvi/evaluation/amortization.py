r"""Amortization gap of an amortized guide (Cremer, Li & Duvenaud 2018).

For each data point :math:`x_i` the inference gap :math:`\log p(x_i) - \mathcal L[q_\phi(z \mid x_i)]`
splits into the *approximation gap* :math:`\log p(x_i) - \mathcal L[q^*_i]` (the best member
:math:`q^*_i` of the variational family) and the *amortization gap*
:math:`\mathcal L[q^*_i] - \mathcal L[q_\phi(z \mid x_i)]` (the encoder's failure to output
:math:`q^*_i`).  :func:`amortization_gap` estimates :math:`q^*_i` by refining, per data point and
with the same flow family, the local variational parameters that the encoder outputs.
"""
import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from ..validation import check_int, check_positive
from .model_kwargs import check_model_kwargs
from .traces import find_plate, reduce_log_prob, resolve_plate, site_log_prob

__all__ = ["MAX_LR", "AmortizationGap", "amortization_gap"]

#: Largest accepted refinement learning rate: Adam moves each parameter by about ``lr`` per step.
MAX_LR = 1.0

_CONTRACT = ("encode", "local_posterior", "unpack_local", "local_sites")


@dataclass
class AmortizationGap:
    """Per-data-point results of :func:`amortization_gap` (tensors of shape ``(B,)``, in nats).

    Attributes:
        log_px: IWAE estimate of :math:`\\log p(x_i)` (under the refined local posterior).
        amortized_elbo: ELBO of the encoder's local posterior :math:`q_\\phi(z \\mid x_i)`.
        refined_elbo: ELBO of the refined local posterior (estimate of :math:`q^*_i`).

    Example:
        >>> r = AmortizationGap(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-10.5]))
        >>> r.approximation_gap.item(), r.amortization_gap.item(), r.inference_gap.item()
        (0.5, 1.5, 2.0)
    """

    log_px: torch.Tensor
    amortized_elbo: torch.Tensor
    refined_elbo: torch.Tensor

    @property
    def approximation_gap(self):
        """``log_px - refined_elbo``: what the variational family itself cannot represent."""
        return self.log_px - self.refined_elbo

    @property
    def amortization_gap(self):
        """``refined_elbo - amortized_elbo``: what the encoder loses by amortizing."""
        return self.refined_elbo - self.amortized_elbo

    @property
    def inference_gap(self):
        """``log_px - amortized_elbo``: the sum of the two gaps."""
        return self.log_px - self.amortized_elbo


def _tree_map(fn, tree):
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return type(tree)((k, _tree_map(fn, v)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(fn, v) for v in tree)
    return tree


def _tree_leaves(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _tree_leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in _tree_leaves(v)]
    return []


class _LocalJoint:
    """``log p(x_i, z_i | globals)`` per draw and data point, by conditioning the model."""

    def __init__(self, model, guide, args, kwargs, plate, global_values):
        self.model, self.guide, self.args, self.kwargs, self.plate = model, guide, args, kwargs, plate
        with torch.no_grad(), poutine.block():
            model_trace = poutine.trace(model).get_trace(*args, **kwargs)
        model_trace = prune_subsample_sites(model_trace)
        frame = find_plate(model_trace, plate)
        if frame is None:
            raise ValueError(f"amortization_gap: the model has no plate named '{plate}'")
        if frame.dim != -1:
            raise ValueError(f"amortization_gap: the data plate '{plate}' must be at dim=-1, got dim={frame.dim}")
        if frame.full_size is not None and frame.full_size != frame.size:
            raise ValueError(f"amortization_gap: the data plate '{plate}' must not be subsampled")
        local = set(guide.local_sites)
        latent = [
            name
            for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
        ]
        missing = local - set(latent)
        if missing:
            raise ValueError(f"amortization_gap: guide.local_sites {sorted(missing)} are not latent sites of the model")
        global_values = dict(global_values or {})
        unset = [name for name in latent if name not in local and name not in global_values]
        if unset:  # global latents: hold them at one draw from the guide
            if not callable(guide):
                raise TypeError(f"amortization_gap: global sites {unset} need a callable guide or global_values=")
            with torch.no_grad(), poutine.block():
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            for name in unset:
                if name not in guide_trace.nodes:
                    raise ValueError(f"amortization_gap: global site '{name}' is not sampled by the guide")
                global_values[name] = guide_trace.nodes[name]["value"].detach()
        self.global_values = global_values
        self.depth = 0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                self.depth = max([self.depth, len(site["fn"].batch_shape)] + [
                    -f.dim for f in site["cond_indep_stack"] if f.vectorized
                ])

    def __call__(self, z):
        """``(S, B)`` log joint of the local draws ``z`` of shape ``(S, B, D)``."""
        num = z.shape[0]
        zz = z.reshape((num,) + (1,) * (self.depth - 1) + z.shape[1:])
        data = dict(self.global_values)
        data.update(self.guide.unpack_local(zz))

        def vectorized(*a, **k):
            with pyro.plate("_num_samples", num, dim=-(self.depth + 1)):
                return self.model(*a, **k)

        trace = poutine.trace(poutine.condition(vectorized, data=data)).get_trace(*self.args, **self.kwargs)
        trace = prune_subsample_sites(trace)
        total = 0.0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("_deterministic"):
                continue
            if name in self.global_values:
                continue  # globals are held fixed: their prior is a constant, dropped
            if not site["is_observed"]:
                raise ValueError(f"amortization_gap: latent site '{name}' is neither local nor fixed")
            total = total + reduce_log_prob(site, site_log_prob(site), self.depth, self.plate)
        return total


def _estimates(joint, q, num_samples, chunk_size):
    """``(ELBO, IWAE)`` per data point of the local posterior ``q`` with ``num_samples`` draws."""
    elbo, lse = 0.0, None
    for start in range(0, num_samples, chunk_size):
        n = min(chunk_size, num_samples - start)
        z = q.sample((n,))
        log_q = q.log_prob(z)  # scored right after sampling: a flow's cached forward pass, no inverse
        lw = joint(z) - log_q
        elbo = elbo + lw.sum(0)
        chunk = torch.logsumexp(lw, 0)
        lse = chunk if lse is None else torch.logaddexp(lse, chunk)
    return elbo / num_samples, lse - math.log(num_samples)


def _diverged(step, steps, lr, cause):
    return ValueError(
        f"amortization_gap: the refinement diverged at step {step + 1} of steps={steps} with lr={lr!r} "
        f"({cause}); lower lr (Adam on the encoder's raw outputs: 0.001 to 0.1 is typical)"
    )


def amortization_gap(
    model,
    guide,
    *args,
    steps=300,
    lr=0.01,
    particles=8,
    num_samples=1000,
    chunk_size=250,
    plate=None,
    global_values=None,
    **kwargs,
):
    r"""Split the inference gap of an amortized guide into approximation and amortization gaps.

    Starting from the encoder's output ``guide.encode(*args, **kwargs)``, copies of the local
    variational parameters (every tensor of that pytree) become free leaves and are optimised with
    Adam for ``steps`` steps to maximise each data point's ELBO
    :math:`\mathbb E_{q_i}[\log p(x_i, z_i) - \log q_i(z_i)]` (reparameterised, ``particles``
    draws per step) -- the same flow family, now one posterior per point (Cremer et al. 2018).
    The model's per-point log joint comes from ``poutine.condition`` + ``poutine.trace`` of the model
    with the local sites fixed to ``guide.unpack_local(z)``.  Global latents, if the model has any,
    are held fixed at one draw from the guide (or at ``global_values``) and their prior is dropped,
    so all three numbers are then conditional on those globals.  Model and encoder parameters are not
    changed (gradients are taken w.r.t. the free leaves only).

    The guide must implement the amortized contract of ``pyro_nfvi.guides.AmortizedFlowGuide``:
    ``encode(*args, **kwargs) -> pytree`` of ``(B, ...)`` tensors, ``local_posterior(encoded)`` (a
    distribution with batch ``(B,)``, event ``(D,)``, differentiable ``rsample``/``log_prob``),
    ``local_sites`` and ``unpack_local(z)`` mapping a ``(..., B, D)`` draw to constrained site values.
    The data plate (``plate=`` or ``guide.plate``) must be at ``dim=-1``.

    Args:
        model, guide: the model and the amortized guide.
        *args: model/guide arguments holding the few data points ``x`` to analyse.
        **kwargs: the model/guide keyword arguments (one that is neither an option below nor one
            of the model's raises ``TypeError`` naming both lists).
        steps (int): Adam steps of the refinement (``>= 0``).
        lr (float): Adam learning rate (``0 < lr <= MAX_LR = 1``); a refinement that diverges (a non-finite ELBO or
            an invalid distribution parameter) raises ``ValueError`` naming ``lr``.
        particles (int): draws per refinement step.
        num_samples (int): draws for the final ELBO and IWAE estimates.
        chunk_size (int): draws per vectorized evaluation.
        plate (str): name of the data plate (default ``guide.plate``).
        global_values (dict): optional values at which to fix global latent sites.

    Returns:
        AmortizationGap: ``log_px`` (IWAE with ``num_samples`` draws from the refined posterior),
        ``amortized_elbo`` and ``refined_elbo``, each ``(B,)``.

    Reference: Cremer, Li & Duvenaud, *Inference Suboptimality in Variational Autoencoders*, ICML 2018.

    Example:
        >>> import pyro.distributions as dist
        >>> class Guide:  # exact posterior of z ~ N(0,1), x ~ N(z,1), with a biased "encoder"
        ...     plate, local_sites = "data", ("z",)
        ...     def encode(self, x):
        ...         return {"loc": x[:, None] / 4, "log_scale": torch.full((len(x), 1), -0.35)}
        ...     def local_posterior(self, e):
        ...         return dist.Normal(e["loc"], e["log_scale"].exp()).to_event(1)
        ...     def unpack_local(self, z):
        ...         return {"z": z[..., 0]}
        >>> def model(x):
        ...     with pyro.plate("data", len(x)):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> r = amortization_gap(model, Guide(), torch.tensor([2.0, -2.0]), steps=200, lr=0.05)
        >>> bool((r.amortization_gap > 0.05).all()), tuple(r.log_px.shape)
        (True, (2,))
    """
    missing = [name for name in _CONTRACT if not hasattr(guide, name)]
    if missing:
        raise TypeError(
            f"amortization_gap needs an amortized guide with encode/local_posterior/unpack_local/local_sites "
            f"(e.g. pyro_nfvi.guides.AmortizedFlowGuide); {type(guide).__name__} lacks {missing}"
        )
    check_model_kwargs(amortization_gap, model, kwargs)
    check_int("steps", steps, minimum=0)
    if check_positive("lr", lr) > MAX_LR:
        raise ValueError(
            f"lr must be <= {MAX_LR} (each Adam step moves every refined parameter by about lr, and they "
            f"are of order 1), got {lr!r}"
        )
    check_int("particles", particles)
    check_int("num_samples", num_samples)
    check_int("chunk_size", chunk_size)
    plate = resolve_plate(guide, plate)
    if plate is None:
        raise ValueError("amortization_gap: give plate= (the data plate) or a guide with a .plate attribute")
    joint = _LocalJoint(model, guide, args, kwargs, plate, global_values)

    with torch.no_grad():
        encoded = guide.encode(*args, **kwargs)
    refined = _tree_map(
        lambda t: t.detach().clone().requires_grad_(True) if t.is_floating_point() else t, encoded
    )
    leaves = [t for t in _tree_leaves(refined) if t.requires_grad]
    if not leaves:
        raise ValueError("amortization_gap: guide.encode returned no floating-point tensors to refine")
    if steps:
        optim = torch.optim.Adam(leaves, lr=lr)
        for step in range(steps):
            try:
                q = guide.local_posterior(refined)
                z = q.rsample((particles,))
                log_q = q.log_prob(z)
                loss = -(joint(z) - log_q).mean(0).sum()
            except ValueError as error:  # e.g. a scale driven to 0 fails the distribution's validation
                if step == 0:
                    raise  # nothing was updated yet: not a divergence
                raise _diverged(step, steps, lr, str(error).splitlines()[0].rstrip(":")) from error
            if not torch.isfinite(loss):
                raise _diverged(step, steps, lr, f"the negative ELBO is {loss.item()}")
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            for leaf, grad in zip(leaves, grads):
                leaf.grad = grad
            optim.step()

    with torch.no_grad():
        amortized_elbo, _ = _estimates(joint, guide.local_posterior(encoded), num_samples, chunk_size)
        refined_elbo, log_px = _estimates(joint, guide.local_posterior(refined), num_samples, chunk_size)
    return AmortizationGap(log_px=log_px, amortized_elbo=amortized_elbo, refined_elbo=refined_elbo)
