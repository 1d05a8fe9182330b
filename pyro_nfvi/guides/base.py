"""What the two flow guides share: argument checks, setup, state and the Monte Carlo summaries.

A flow guide sets itself up exactly as Pyro's autoguides do: at its first call, with the model's
real arguments.  Given ``model_args`` (and/or ``model_kwargs``) it sets up at once with those
instead, which is what makes :class:`~pyro.infer.JitTrace_ELBO`, an optimizer built before the
first step, and ``load_state_dict`` into a fresh guide work.  It never calls the model with
arguments it guessed: ``AutoFlowGuide(model)`` for ``def model(data=None)`` waits for the data.
"""
import json

import torch

from ..transforms.stack import FAMILIES
from ..validation import check_choice, check_int
from .state import GuideState

__all__ = ["FlowGuide", "check_flow_family", "jsonable"]


def check_flow_family(family, argument="flow"):
    """Return ``family`` if it names a flow family or ``"none"``, else raise a ``ValueError``.

    Example:
        >>> check_flow_family("iaf")
        'iaf'
    """
    return check_choice(argument, family, sorted(FAMILIES) + ["none"])


def jsonable(value):
    """``value`` as plain JSON data (tuples become lists, anything else its ``repr``).

    Example:
        >>> jsonable({"hidden": (32, 32), "stable": True})
        {'hidden': [32, 32], 'stable': True}
    """
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


class FlowGuide(GuideState):
    """Mixin of :class:`~pyro_nfvi.guides.AutoFlowGuide` and :class:`~pyro_nfvi.guides.AmortizedFlowGuide`.

    A subclass implements ``_setup_prototype(*args, **kwargs)``, which builds the parameters and
    sets ``self._fingerprint_fields``, and calls :meth:`_init_flow_guide` at the end of its
    constructor.
    """

    def _init_flow_guide(self, name, model_args, model_kwargs, num_mc_samples):
        if name is not None:
            if not isinstance(name, str) or not name or "$$$" in name:
                raise ValueError(f"name must be a non-empty str without '$$$', got {name!r}")
            self._pyro_name = name
        if model_args is not None and not isinstance(model_args, (tuple, list)):
            raise TypeError(f"model_args must be a tuple of the model's arguments, got {type(model_args).__name__}")
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
        self.num_mc_samples = check_int("num_mc_samples", num_mc_samples)
        self.mc_seed = 0
        self._init_state()
        if model_args is not None or model_kwargs is not None:
            self._setup_prototype(*(model_args or ()), **(model_kwargs or {}))

    @property
    def is_set_up(self):
        """Whether the guide has traced the model and built its parameters."""
        return self.__dict__.get("_fingerprint_fields") is not None

    def _ensure_setup(self, args, kwargs):
        """Set up from the call's arguments if needed, then exchange state with the param store."""
        if not self.is_set_up:
            self._setup_prototype(*args, **kwargs)
        self._sync_state()

    def _cached_draws(self, key, draw, keep=None):
        """``draw()`` under the fixed seed ``mc_seed``, cached until ``key`` or a parameter changes.

        Parameters are compared by value with a copy taken when the draws were made: optimizers
        that write through ``.data`` (Pyro's ``ClippedAdam``) leave no trace in version counters.
        ``keep`` holds the objects whose ``id`` is in ``key`` alive, so that no other object can take it.
        """
        key = (self.num_mc_samples, self.mc_seed, key)
        params = [p.detach() for p in self.parameters()]
        cache = self.__dict__.get("_draws_cache")
        if (
            cache is not None
            and cache[0] == key
            and len(cache[2]) == len(params)
            and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(cache[2], params))
        ):
            return cache[1]
        device = next(self.parameters()).device
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.mc_seed)
            draws = draw()
        self.__dict__["_draws_cache"] = (key, draws, [p.clone() for p in params], keep)
        return draws

    @staticmethod
    def _check_quantiles(quantiles, like):
        q = torch.as_tensor(quantiles, dtype=like.dtype, device=like.device).reshape(-1)
        if q.numel() == 0 or bool(((q <= 0) | (q >= 1)).any()):
            raise ValueError(f"quantiles must lie strictly between 0 and 1, got {q.tolist()}")
        return q

    def __getstate__(self):
        state = dict(super().__getstate__())
        for key in ("_draws_cache", "_written_fingerprint", "_entry_cache", "_model_call", "_user_model"):
            state.pop(key, None)
        return state
