"""Checkpoints that lose nothing: save a training run and resume it bit for bit.

A checkpoint (:func:`save_checkpoint`) holds everything a run's next step depends on:

* the guide's ``state_dict`` (its parameters and state buffers, with the configuration
  fingerprint of ``pyro_nfvi.guides.state`` as extra state), and the fingerprint again as a
  plain dict so that a checkpoint of another configuration is refused before anything is copied;
* the model's ``state_dict`` if the model is an ``nn.Module``;
* Pyro's param store (``get_state()``) when ``module_local_params`` is off, for ``pyro.param``
  statements and ``pyro.optim`` users;
* the optimizer: a torch optimizer's ``state_dict()`` or a Pyro optimizer's ``get_state()``;
* the objective's step counter (any loss with ``advance()`` and an integer ``t``, such as
  :class:`~pyro_nfvi.objectives.AnnealedELBO`; or one with ``get_state()``/``set_state()``);
* the counters of a ``pyro_nfvi.guides.guard.NonFiniteGuard``, the step number, and
  user data (``extra``: plain containers of numbers, strings and tensors);
* the Python ``random``, NumPy and torch (CPU, and CUDA where initialised) RNG states.

Writes are atomic: the checkpoint goes to a temporary file in the same folder, is flushed and
``fsync``-ed, then ``os.replace``-d over ``path`` (and the folder is ``fsync``-ed), so a run killed
at any moment leaves either the previous checkpoint or the new one, never a torn file.  A writer
killed between the two steps leaves its temporary file behind; the next successful save of the
same ``path`` removes such leftovers (``.<name>.*.tmp`` beside it).

Loads use ``torch.load(..., weights_only=True)``: every entry is a tensor or a plain container.
The one exception is Pyro's param store, whose constraints are objects; they are unpickled with
only the constraint classes of ``torch.distributions.constraints`` and
``pyro.distributions.constraints`` allowed (``torch.serialization.safe_globals``), so the load
stays restricted.  A constraint of another class (a user-defined one) cannot be loaded this way and
raises a clear error.

Reference: Bingham et al., *Pyro: Deep Universal Probabilistic Programming*, JMLR 2019 (the param
store, ``PyroOptim.get_state``).
"""
import glob
import json
import os
import random
import tempfile

import numpy as np
import pyro
import torch

from .state import fingerprint_diff

__all__ = ["CHECKPOINT_FORMAT", "atomic_save", "save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state"]

#: Written into every checkpoint; a file without it was not written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = "pyro_nfvi.checkpoint/1"


# -- RNG states as tensors and plain containers (loadable with weights_only=True) -------------------
def get_rng_state():
    """The Python ``random``, NumPy and torch RNG states as tensors and plain containers.

    Example:
        >>> state = get_rng_state()
        >>> a = (random.random(), np.random.rand(), torch.rand(1))
        >>> set_rng_state(state)
        >>> (random.random(), np.random.rand(), torch.rand(1)) == a
        True
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore RNG states from :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- components ---------------------------------------------------------------------------------------
def _optimizer_state(optimizer):
    if optimizer is None:
        return None
    if isinstance(optimizer, torch.optim.Optimizer):
        return {"kind": "torch", "state": optimizer.state_dict()}
    if callable(getattr(optimizer, "get_state", None)) and callable(getattr(optimizer, "set_state", None)):
        return {"kind": "pyro", "state": optimizer.get_state()}
    raise TypeError(
        f"optimizer must be a torch.optim.Optimizer or a pyro.optim optimizer (get_state/set_state), "
        f"got {type(optimizer).__name__}"
    )


def _objective_state(objective):
    if objective is None:
        return None
    if callable(getattr(objective, "get_state", None)) and callable(getattr(objective, "set_state", None)):
        return {"kind": "state", "state": objective.get_state()}
    if isinstance(getattr(objective, "t", None), int):
        return {"kind": "t", "t": objective.t}
    return None  # an objective without a step counter has nothing to save


def _guard_state(guard):
    if guard is None:
        return None
    return {k: getattr(guard, k) for k in ("step", "skipped", "consecutive")}


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened; os.replace is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, *, guide, model=None, optimizer=None, objective=None, guard=None, step=0, extra=None):
    """Write a checkpoint of a training run to ``path``, atomically.

    Args:
        path (str or os.PathLike): the checkpoint file; its folder must exist.
        guide (nn.Module): a set-up flow guide (or any ``nn.Module`` guide).
        model (callable): the model; its ``state_dict`` is saved if it is an ``nn.Module``.
        optimizer: a ``torch.optim.Optimizer`` (e.g. ``FastSVI.optimizer``) or a ``pyro.optim``
            optimizer, or ``None``.
        objective: the loss; its step counter is saved (duck typed: ``get_state``/``set_state``, or
            an integer ``t`` as :class:`~pyro_nfvi.objectives.AnnealedELBO` has).
        guard (NonFiniteGuard): a guard whose counters are saved.
        step (int): the number of completed steps.
        extra (dict): user data (plain containers of numbers, strings and tensors), returned by
            :func:`load_checkpoint`, e.g. a learning-rate scheduler's ``state_dict()``.

    Example:
        >>> import os, tempfile
        >>> import pyro.distributions as dist
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=())
        >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
        >>> save_checkpoint(path, guide=guide, step=7)
        >>> load_checkpoint(path, guide=guide)["step"]
        7
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    fingerprint = getattr(guide, "fingerprint", None)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "guide": guide.state_dict(),
        "model": model.state_dict() if isinstance(model, torch.nn.Module) else None,
        "param_store": None if pyro.settings.get("module_local_params") else pyro.get_param_store().get_state(),
        "optimizer": _optimizer_state(optimizer),
        "objective": _objective_state(objective),
        "guard": _guard_state(guard),
        "rng": get_rng_state(),
        "extra": extra,
    }
    atomic_save(payload, path)


def atomic_save(payload, path):
    """``torch.save(payload, path)``, atomically: a temporary file beside ``path``, ``fsync``, ``os.replace``.

    A writer killed at any moment leaves the previous file or the new one, never a torn file;
    the temporary files of earlier writers killed before their ``os.replace`` are removed.

    Args:
        payload: anything ``torch.save`` takes.
        path (str or os.PathLike): the file; its folder must exist.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "values.pt")
        >>> atomic_save({"done": torch.arange(3)}, path)
        >>> torch.load(path, weights_only=True)["done"].tolist(), os.listdir(os.path.dirname(path))
        ([0, 1, 2], ['values.pt'])
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint {path}: the folder {folder} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(os.path.basename(path))}.*.tmp")):
        try:  # the temporary file of an earlier writer that was killed before its os.replace
            os.unlink(stale)
        except OSError:
            pass


def _constraint_classes():
    from pyro.distributions import constraints as pyro_constraints
    from torch.distributions import constraints as torch_constraints

    classes = set()
    for module in (torch_constraints, pyro_constraints):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, torch_constraints.Constraint):
                classes.add(value)
            elif isinstance(value, torch_constraints.Constraint):
                classes.add(type(value))
    return sorted(classes, key=lambda c: (c.__module__, c.__qualname__))


def _read(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; train without resuming to create it")
    try:
        with torch.serialization.safe_globals(_constraint_classes()):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file; torch's own message follows
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "it was not written by save_checkpoint or is damaged: delete it and start again"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyro_nfvi checkpoint (no format {CHECKPOINT_FORMAT!r})")
    return payload


def _check_fingerprint(path, saved, guide):
    current = getattr(guide, "fingerprint", None)
    if saved is None and current is None:
        return
    if current is None:
        raise RuntimeError(
            f"{type(guide).__name__} is not set up yet, so checkpoint {path} cannot be loaded into it: build it "
            "with model_args=(...) (and model_kwargs) or call it once with the model's arguments first"
        )
    if saved is None:
        raise ValueError(f"checkpoint {path} holds no guide fingerprint; it was not saved from a flow guide")
    diff = fingerprint_diff(saved, current)
    if diff:
        lines = "; ".join(f"{k}: saved {a!r}, this guide {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"checkpoint {path} was saved from another model or guide configuration ({lines}); build the "
            "model and guide with the saved configuration to resume, or start afresh (delete the checkpoint "
            "or write to another path)"
        )


def load_checkpoint(path, *, guide, model=None, optimizer=None, objective=None, guard=None, restore_rng=True):
    """Restore a checkpoint written by :func:`save_checkpoint`; return what it holds.

    The guide's configuration fingerprint is checked first: a checkpoint of another model, flow
    family, number of layers or size is refused with a ``ValueError`` naming what differs, before
    anything is copied.  Load into freshly built objects (the same configuration as when saving); a
    ``pyro.optim`` optimizer must not have taken a step yet (it applies the saved state to each
    parameter when it first sees it).

    Args:
        path (str or os.PathLike): the checkpoint file.
        guide (nn.Module): the guide, set up (e.g. built with ``model_args``).
        model (callable): the model; its ``state_dict`` is loaded if it is an ``nn.Module``.
        optimizer: the optimizer to restore (``torch.optim.Optimizer`` or ``pyro.optim``), or ``None``.
        objective: the loss whose step counter to restore, or ``None``.
        guard (NonFiniteGuard): a guard whose counters to restore, or ``None``.
        restore_rng (bool): restore the Python, NumPy and torch RNG states (default).

    Returns:
        dict: ``{"step": int, "extra": dict or None, "fingerprint": dict or None}``.

    Example:
        >>> import os, tempfile
        >>> import pyro.distributions as dist
        >>> from pyro_nfvi.guides import AutoFlowGuide
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=())
        >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
        >>> save_checkpoint(path, guide=guide, step=3, extra={"note": "hi"})
        >>> other = AutoFlowGuide(model, flow="planar", num_flows=3, model_args=())
        >>> load_checkpoint(path, guide=other)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: checkpoint ... was saved from another model or guide configuration (num_flows: saved 2, this guide 3); ...
    """
    payload = _read(path)
    saved_fp = json.loads(payload["fingerprint"])
    _check_fingerprint(os.fspath(path), saved_fp, guide)
    if payload["model"] is not None and not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"checkpoint {os.fspath(path)} holds the parameters of an nn.Module model: pass model=<the model>"
        )
    if payload["param_store"] is not None:
        pyro.get_param_store().set_state(payload["param_store"])
    try:
        if payload["model"] is not None:
            model.load_state_dict(payload["model"])
        guide.load_state_dict(payload["guide"])
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"checkpoint {os.fspath(path)} does not fit this model and guide ({e}); build them with the saved "
            "configuration, or start afresh"
        ) from e
    if optimizer is not None:
        saved = payload["optimizer"]
        if saved is None:
            raise ValueError(f"checkpoint {os.fspath(path)} holds no optimizer state; load it with optimizer=None")
        kind = _optimizer_state(optimizer)["kind"]
        if kind != saved["kind"]:
            raise ValueError(
                f"checkpoint {os.fspath(path)} holds the state of a {saved['kind']} optimizer, not of a {kind} one"
            )
        if kind == "torch":
            optimizer.load_state_dict(saved["state"])
        else:
            optimizer.set_state(saved["state"])
    saved = payload["objective"]
    if objective is not None and saved is not None:
        if saved["kind"] == "state":
            objective.set_state(saved["state"])
        else:
            objective.t = saved["t"]
    if guard is not None and payload["guard"] is not None:
        for key, value in payload["guard"].items():
            setattr(guard, key, value)
    if restore_rng:
        set_rng_state(payload["rng"])
    return {"step": payload["step"], "extra": payload["extra"], "fingerprint": saved_fp}
