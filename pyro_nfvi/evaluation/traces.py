"""Vectorized importance-sampling traces shared by evaluation and diagnostics.

One call of :func:`vectorized_traces` runs the guide once inside an outer
``pyro.plate("_num_samples", S, dim=-(max_plate_nesting + 1))`` and replays the model against it,
so every draw, its guide density and its model density come from the same trace: values scored
under the guide are exactly the ones it sampled (a flow guide needs no inverse).
:func:`site_log_prob` and :func:`reduce_log_prob` turn a site's log density into a ``(S,)`` tensor
(one number per draw) or a ``(S, B)`` tensor (one per draw and data point of a named plate).
"""
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

__all__ = [
    "MODEL_ERRORS",
    "SAMPLE_PLATE",
    "find_plate",
    "log_weights_from_traces",
    "max_plate_nesting",
    "reduce_log_prob",
    "resolve_plate",
    "site_log_prob",
    "vectorized_traces",
]

#: Name of the outer plate that vectorizes the importance samples.
SAMPLE_PLATE = "_num_samples"
#: What a model that does not broadcast over a batch of draws raises (torch's shape errors, Pyro's
#: shape and validation checks); :func:`vectorized_traces` explains them when one draw runs.
MODEL_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


def _sample_sites(trace):
    return [site for site in trace.nodes.values() if site["type"] == "sample"]


def _probe(model, guide, args, kwargs):
    """One unvectorized (guide, replayed model) pair of traces, outside any outer handler."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def max_plate_nesting(model, guide, args=(), kwargs=None):
    """The number of batch dims the (guide, model) pair uses: the deepest plate or batch shape.

    Runs the guide and the replayed model once (this also initialises lazily built guides such as
    ``AutoNormal`` outside any outer plate).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> max_plate_nesting(model, model)
        1
    """
    model_trace, guide_trace = _probe(model, guide, args, kwargs or {})
    depth = 0
    for trace in (model_trace, guide_trace):
        for site in _sample_sites(trace):
            depth = max(depth, len(site["fn"].batch_shape))
            for frame in site["cond_indep_stack"]:
                if frame.vectorized:
                    depth = max(depth, -frame.dim)
    return depth


def find_plate(trace, name):
    """The ``CondIndepStackFrame`` of the plate ``name`` in ``trace`` (``None`` if absent).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> find_plate(poutine.trace(model).get_trace(), "data").size
        3
    """
    for site in _sample_sites(trace):
        for frame in site["cond_indep_stack"]:
            if frame.name == name:
                return frame
    return None


def resolve_plate(guide, plate):
    """The data-plate name: ``plate`` if given, else ``guide.plate`` (amortized guides), else ``None``.

    ``plate=False`` forces ``None`` (joint estimates) even for a guide with a ``.plate``.

    Example:
        >>> class G:
        ...     plate = "data"
        >>> resolve_plate(G(), None), resolve_plate(G(), "obs"), resolve_plate(G(), False)
        ('data', 'obs', None)
    """
    if plate is False:
        return None
    if plate is None:
        plate = getattr(guide, "plate", None)
    if plate is not None and not isinstance(plate, str):
        raise TypeError(f"plate must be the name of a pyro.plate (str), got {type(plate).__name__}")
    return plate


def _runs_on_one_draw(model, guide, args, kwargs):
    """Whether ``model`` runs when replayed against one draw of ``guide``, without a sample plate."""
    try:
        _probe(model, guide, args, kwargs)
    except MODEL_ERRORS:
        return False
    return True


def vectorized_traces(model, guide, num_samples, depth, args=(), kwargs=None):
    """``(model_trace, guide_trace)`` of ``num_samples`` vectorized draws from ``guide``.

    The guide runs inside ``pyro.plate(SAMPLE_PLATE, num_samples, dim=-(depth + 1))`` and the model
    is replayed against it; subsample sites are pruned and log densities are computed (with the
    sites' scale and mask).  Raises ``ValueError`` if the model fails on the batch of draws (it does
    not broadcast over a leading dimension: the message says what to change), if a plate is
    subsampled or if a latent model site is not sampled by the guide (the importance weight would be
    wrong).

    Example:
        >>> import pyro.distributions as dist
        >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> mt, gt = vectorized_traces(model, model, 5, 0)
        >>> tuple(mt.nodes["z"]["log_prob"].shape)
        (5,)
    """
    kwargs = kwargs or {}

    def vectorize(fn):
        def wrapped(*a, **k):
            with pyro.plate(SAMPLE_PLATE, num_samples, dim=-(depth + 1)):
                return fn(*a, **k)

        return wrapped

    guide_trace = poutine.trace(vectorize(guide)).get_trace(*args, **kwargs)
    try:
        model_trace = poutine.trace(poutine.replay(vectorize(model), trace=guide_trace)).get_trace(*args, **kwargs)
    except MODEL_ERRORS as err:
        if not _runs_on_one_draw(model, guide, args, kwargs):
            raise  # not a matter of batching: the model's own error, as it is
        raise ValueError(
            f"the model failed on {num_samples} guide draws at once (in pyro.plate({SAMPLE_PLATE!r}, dim="
            f"{-(depth + 1)})): {str(err).splitlines()[0]}. Importance-weighted evaluation (PSIS k-hat, importance "
            "weights, corrected moments, IWAE) runs the model once on a batch of draws, so its tensor operations "
            "must broadcast over leading batch dimensions: torch.mm, torch.diag and fixed-size .view do not (use "
            "@ / torch.matmul, .diag_embed(), .reshape(*x.shape[:-1], ...)), and a latent site with a vector "
            "event needs .to_event(1)"
        ) from err
    model_trace = prune_subsample_sites(model_trace)
    guide_trace = prune_subsample_sites(guide_trace)
    for trace in (model_trace, guide_trace):
        for site in _sample_sites(trace):
            for frame in site["cond_indep_stack"]:
                if frame.full_size is not None and frame.full_size != frame.size:
                    raise ValueError(
                        f"site '{site['name']}' is in plate '{frame.name}' subsampled to {frame.size} of "
                        f"{frame.full_size}; importance-weighted evaluation needs the full plate"
                    )
    for site in _sample_sites(model_trace):
        if not site["is_observed"] and site["name"] not in guide_trace.nodes:
            raise ValueError(
                f"latent model site '{site['name']}' is not sampled by the guide; the importance "
                "weights need a guide that covers every latent site"
            )
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def site_log_prob(site, scaled=True):
    """The batch log density of a traced ``site`` (with its mask, and its scale if ``scaled``).

    Example:
        >>> import pyro.distributions as dist
        >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
        >>> round(site_log_prob(poutine.trace(model).get_trace().nodes["z"]).item(), 4)
        -0.9189
    """
    if "log_prob" in site and scaled:
        return site["log_prob"]
    lp = site["fn"].log_prob(site["value"])
    return scale_and_mask(lp, site["scale"] if scaled else 1.0, site["mask"])


def reduce_log_prob(site, lp, depth, plate=None):
    """Reduce a site's batch log density to ``(S,)``, or ``(S, B)`` keeping the data plate ``plate``.

    ``lp`` has batch shape ``(S, b_1, ..., b_depth)`` (the sample dim at ``-(depth + 1)``).  Every
    other dim is summed.  With ``plate``, a site outside that plate raises ``ValueError``: its term
    is shared by all data points, so the per-point estimate does not separate.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("data", 3, dim=-1):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> mt, _ = vectorized_traces(model, model, 5, 1)
        >>> site = mt.nodes["z"]
        >>> tuple(reduce_log_prob(site, site["log_prob"], 1, "data").shape)
        (5, 3)
    """
    n = depth + 1
    if lp.dim() > n:
        raise ValueError(
            f"site '{site['name']}': log_prob has {lp.dim()} batch dims, more than the {n} expected "
            f"(max_plate_nesting={depth} plus the sample plate)"
        )
    lp = lp.reshape((1,) * (n - lp.dim()) + lp.shape)
    if plate is None:
        return lp.reshape(lp.shape[0], -1).sum(-1)
    frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
    if frame is None:
        raise ValueError(
            f"site '{site['name']}' lies outside the data plate '{plate}': its log density is shared by "
            "all data points, so per-data-point estimates do not separate (use plate=False for the joint "
            "estimate, or a guide whose latent sites are all local)"
        )
    lp = lp.movedim(frame.dim, 1)
    return lp.reshape(lp.shape[0], lp.shape[1], -1).sum(-1)


def log_weights_from_traces(model_trace, guide_trace, depth, plate=None):
    r"""Log importance weights :math:`\log p(x, z_s) - \log q(z_s)` of the vectorized draws.

    Returns a ``(S,)`` tensor, or ``(S, B)`` per data point of ``plate``.  Sites with identically
    zero density (``pyro.deterministic``) are skipped.

    Example:
        >>> import pyro.distributions as dist
        >>> model = lambda: pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> log_weights_from_traces(*vectorized_traces(model, model, 4, 0), 0).abs().max().item()
        0.0
    """
    total = 0.0
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for site in _sample_sites(trace):
            if site["infer"].get("_deterministic"):
                continue
            term = reduce_log_prob(site, site_log_prob(site), depth, plate)
            total = total + sign * term
    if not isinstance(total, torch.Tensor):
        raise ValueError("the model and guide have no sample sites")
    return total
