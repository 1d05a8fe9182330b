"""Reference posterior draws of the benchmark models (:data:`~pyro_nfvi.targets.bayes.MODELS`).

One ``.npz`` file per model in :data:`REFERENCE_DIR` (shipped with the package), written by
``benchmarks/nuts_reference.py``: per latent site, at most 2000 thinned constrained draws
(``float32``, shape ``(num_draws,) + site shape``), and under the key ``"__info__"`` a JSON string
with how they were made -- ``source`` (``"nuts"``, ``"exact"`` or a sentence), the split R-hat max
and bulk/tail ESS min of the reference draws (``rhat_max``, ``ess_bulk_min``, ``ess_tail_min``) and,
under ``nuts``, the NUTS run on the model itself: its settings, ``divergences`` and wall time
``seconds``.

Example:
    >>> ref = load_reference("eight_schools_noncentered")
    >>> sorted(ref.draws), ref.draws["theta_trans"].shape[1:]
    (['mu', 'tau', 'theta_trans'], torch.Size([8]))
    >>> ref.info["rhat_max"] < 1.01
    True
"""
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["REFERENCE_DIR", "Reference", "load_reference", "reference_path", "save_reference"]

#: The folder of the shipped fixtures (package data, ``pyro_nfvi/targets/reference``).
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"

_INFO_KEY = "__info__"


class Reference(NamedTuple):
    """Reference draws ``{site: tensor (num_draws, *site shape)}`` and their ``info`` dict."""

    draws: dict
    info: dict


def reference_path(name):
    """The path of the fixture of model ``name`` in :data:`REFERENCE_DIR`."""
    return REFERENCE_DIR / f"{name}.npz"


def save_reference(path, draws, info):
    """Write ``draws`` (``{site: array}``, stored as ``float32``) and ``info`` (JSON-able) to ``path``.

    Args:
        path (str or Path): the ``.npz`` file to write (its folder is created if needed).
        draws (dict): site name -> array of draws, first dimension the draws.
        info (dict): the metadata, stored as a JSON string.
    """
    if _INFO_KEY in draws:
        raise ValueError(f"draws must not have a site named {_INFO_KEY!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {site: np.asarray(value, dtype=np.float32) for site, value in draws.items()}
    np.savez_compressed(path, **arrays, **{_INFO_KEY: np.array(json.dumps(info))})


def load_reference(name_or_path):
    """Load a fixture: a model name of :data:`~pyro_nfvi.targets.bayes.MODELS` or a ``.npz`` path.

    Args:
        name_or_path (str or Path): e.g. ``"funnel"``, or the path of a file :func:`save_reference` wrote.

    Returns:
        Reference: ``draws`` (``{site: float32 tensor}``) and ``info`` (dict).
    """
    path = Path(name_or_path)
    if path.suffix != ".npz":
        path = reference_path(str(name_or_path))
        if not path.exists():
            known = sorted(p.stem for p in REFERENCE_DIR.glob("*.npz"))
            raise ValueError(f"unknown name_or_path={str(name_or_path)!r}; expected a .npz path or one of {known}")
    with np.load(path, allow_pickle=False) as data:
        info = json.loads(str(data[_INFO_KEY]))
        draws = {site: torch.from_numpy(data[site].copy()) for site in data.files if site != _INFO_KEY}
    return Reference(draws, info)
