"""What a flow guide saves: its parameters plus a configuration fingerprint, and nothing else.

Every buffer of a flow guide (IAF orders, MADE masks, permutations) is a pure function of its
configuration, so the guide's *parameters* are its whole state, with one exception: buffers that
are a function of the *data*, fixed at setup (the input statistics of an amortized guide's
encoder, :class:`~pyro_nfvi.guides.encoder_input.InputStandardizer`), are state too.  Their module
names them in ``state_buffers``; they travel in ``state_dict`` (persistent buffers) and in the
param store (where no optimizer touches them: no ``pyro.param`` statement reads them), and a load
copies them back, so a guide set up on other data reproduces the saved one exactly.

The **fingerprint** is a JSON description of the configuration (guide class, flow family, number of layers, flow options, the
latent sites and their shapes, the package version) that travels with the parameters, so that a
state saved from one configuration is refused by a guide of another, with an error that names
both.  There are three ways to save and load a guide, and all of them are exact:

* ``guide.state_dict()`` / ``guide.load_state_dict(sd)``: the fingerprint is the module's extra
  state (``get_extra_state``), and ``load_state_dict`` checks it before it copies anything.
* ``torch.save(guide)`` / ``torch.load(path, weights_only=False)``: the whole module.
* Pyro's param store (``pyro.get_param_store().save/load``), as for any ``PyroModule``: at each
  call the guide puts its parameters in the store under the names ``PyroModule`` gives them, and
  the fingerprint under ``"<guide name>._fingerprint"``.  When the store holds a state the guide
  did not put there (after ``load``), the guide checks the fingerprint and copies the values into
  its own parameters, at its next call or at its next ``state_dict()``, whichever comes first.

**Two guides of one name.**  The store has one entry per name; Pyro's own autoguides of the same
name silently share it.  Here a name belongs to the guide that last wrote it: a new guide starts
from its own initial values (it takes over entries that another guide in memory wrote, and that
were not loaded from disk), and a guide whose entries were since overwritten by another live guide
of the same name raises at its next call (give the guides distinct names with ``name=...``)
instead of quietly taking the other's values.  A load is told apart from a write by the
fingerprint tensor itself: the package keeps a weak table of the fingerprint tensors its guides
wrote in this process; a state loaded from disk is a new tensor, absent from that table.

**``module_local_params=True``.**  Then Pyro does not use its global store; the guide never writes
to it, and if the store holds a loaded state for the guide's name it raises instead of ignoring it
(restore with ``load_state_dict`` there).

Reference: Bingham et al., *Pyro: Deep Universal Probabilistic Programming*, JMLR 2019 (the param
store and ``PyroModule``).
"""
import json
import warnings
import weakref

import pyro
import torch
from pyro.nn.module import PyroModule
from pyro.params.param_store import param_with_module_name

from ..version import __version__

__all__ = ["GuideState", "fingerprint_diff"]

#: id(fingerprint tensor) -> (weakref to it, weakref to the guide that wrote it into the store), for
#: the fingerprints written in this process: any other fingerprint in the store was loaded.
_WRITES = {}
_IGNORED = ("version",)


def fingerprint_diff(saved, current):
    """The entries in which two fingerprints (dicts) differ, ignoring the package version.

    Example:
        >>> fingerprint_diff({"flow": "iaf", "num_flows": 2}, {"flow": "iaf", "num_flows": 3})
        {'num_flows': (2, 3)}
    """
    keys = sorted((set(saved) | set(current)) - set(_IGNORED))
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}


def _encode(fp):
    return torch.tensor(list(json.dumps(fp, sort_keys=True).encode()), dtype=torch.float32)


def _decode(tensor):
    try:
        return json.loads(bytes(int(v) for v in tensor.tolist()).decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"the param store holds an unreadable guide fingerprint ({e})") from None


def _module_local():
    return bool(pyro.settings.get("module_local_params"))


def _stored(store, name):
    # the public item access; for the real constraint the store returns the very tensor it holds
    return store[name] if name in store else None


def _mismatch_message(name, saved, current):
    diff = fingerprint_diff(saved, current)
    lines = "; ".join(f"{k}: saved {a!r}, this guide {b!r}" for k, (a, b) in diff.items())
    return (
        f"the saved state of guide {name!r} comes from another configuration ({lines}); build the guide "
        "with the saved configuration, or give this guide another name"
    )


def _entries(module, fullname):
    """``(store name, owner module, attribute)`` of every parameter, named as ``PyroModule`` names
    them in the param store (``pyro.module`` naming inside plain ``nn.Module`` children), and of the
    buffers that a plain child module names in its ``state_buffers`` (data-derived state, such as
    the encoder's input statistics)."""
    out = [(f"{fullname}.{n}", module, n) for n, p in module._parameters.items() if p is not None]
    for child_name, child in module._modules.items():
        if child is None:
            continue
        cname = f"{fullname}.{child_name}"
        if isinstance(child, PyroModule):
            out += _entries(child, cname)
            continue
        for mod_name, mod in child.named_modules():
            names = [n for n, p in mod._parameters.items() if p is not None]
            names += [n for n in getattr(mod, "state_buffers", ()) if mod._buffers.get(n) is not None]
            for n in names:
                out.append((param_with_module_name(cname, f"{mod_name}.{n}" if mod_name else n), mod, n))
    return out


def _tensor(owner, attr):
    """The parameter, or the state buffer, ``attr`` of ``owner``."""
    return owner._parameters[attr] if attr in owner._parameters else owner._buffers[attr]


class GuideState:
    """Mixin for the flow guides (``PyroModule`` s): the fingerprint and the param-store exchange.

    A guide calls :meth:`_init_state` in its constructor, sets ``self._fingerprint_fields`` (a
    JSON-able dict) when it is set up, and calls :meth:`_sync_state` at the start of every call.
    """

    def _init_state(self):
        self._claimed = False
        self._nested = False  # True for a guide inside another flow guide: the outer one syncs
        self._entry_cache = None
        self.register_state_dict_pre_hook(_state_dict_pre_hook)
        self.register_load_state_dict_pre_hook(_load_state_dict_pre_hook)

    def __setstate__(self, state):
        super().__setstate__(state)
        # a copy (torch.load, copy.deepcopy) is a guide of its own
        self._claimed = False
        self._entry_cache = None
        self.__dict__.pop("_written_fingerprint", None)

    # -- the fingerprint ------------------------------------------------------------------------------
    @property
    def fingerprint(self):
        """The configuration of the set-up guide as a dict (``None`` before setup)."""
        fields = self.__dict__.get("_fingerprint_fields")
        if fields is None:
            return None
        return dict(fields, version=__version__)

    def get_extra_state(self):
        fp = self.fingerprint
        return json.dumps(fp, sort_keys=True) if fp is not None else None

    def set_extra_state(self, state):
        pass  # checked before anything is copied, in _load_state_dict_pre_hook

    # -- the param store ------------------------------------------------------------------------------
    def _store_names(self):
        if self._entry_cache is None or self._entry_cache[0] != self._pyro_name:
            self._entry_cache = (self._pyro_name, _entries(self, self._pyro_name))
        return self._entry_cache[1]

    def _fingerprint_name(self):
        return f"{self._pyro_name}._fingerprint"

    def _stored_fingerprint(self):
        """``(tensor, dict)`` of the fingerprint entry under this guide's name, or ``(None, None)``."""
        tensor = _stored(pyro.get_param_store(), self._fingerprint_name())
        return (None, None) if tensor is None else (tensor, _decode(tensor))

    @staticmethod
    def _writer(tensor):
        """``(written here, writer)``: whether a guide of this process wrote the fingerprint ``tensor``
        into the store (else it was loaded), and that guide if it is still alive."""
        entry = _WRITES.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return False, None
        return True, entry[1]()

    def _adopt(self, fp):
        """Copy a loaded state (checked against the fingerprint) from the store into the parameters."""
        if fingerprint_diff(fp, self.fingerprint):
            raise ValueError(_mismatch_message(self._pyro_name, fp, self.fingerprint))
        store = pyro.get_param_store()
        for name, owner, attr in self._store_names():
            value = _stored(store, name)
            if value is None:
                raise ValueError(
                    f"the param store holds a state of guide {self._pyro_name!r} without the entry {name!r}; "
                    "it was saved by another version or edited: load it into a guide of that version"
                )
            tensor = _tensor(owner, attr)
            if value is tensor:
                continue
            if value.shape != tensor.shape:
                raise ValueError(
                    f"the param store holds {name!r} with shape {tuple(value.shape)} but guide "
                    f"{self._pyro_name!r} has shape {tuple(tensor.shape)}"
                )
            with torch.no_grad():
                tensor.copy_(value.detach())

    def _pull(self):
        """Adopt a state loaded into the store since this guide last wrote it; True if there is one."""
        tensor, fp = self._stored_fingerprint()
        if tensor is None or tensor is self.__dict__.get("_written_fingerprint"):
            return False
        written_here, writer = self._writer(tensor)
        if written_here:
            if writer is not None and writer is not self and self._claimed:
                raise RuntimeError(
                    f"another live guide named {self._pyro_name!r} has since written its own parameters to "
                    "Pyro's param store under this name; give each guide its own name (name=...), or call "
                    "pyro.clear_param_store() and keep one guide"
                )
            if writer is not None and writer is not self:
                warnings.warn(
                    f"this guide takes over the param-store entries of another live guide named {self._pyro_name!r}, "
                    "which will raise if it is called again; give each guide its own name (name=...)",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return False  # entries of a guide not loaded from disk: this guide takes the name over
        self._adopt(fp)
        return True

    def _push(self):
        store = pyro.get_param_store()
        for name, owner, attr in self._store_names():
            tensor = _tensor(owner, attr)
            if _stored(store, name) is not tensor:
                if not tensor.is_contiguous():  # the store keeps a contiguous copy of anything else
                    tensor.data = tensor.data.contiguous()
                store[name] = tensor  # constraint real: the store keeps this very tensor
                if attr not in owner._parameters:
                    tensor.requires_grad_(False)  # the store marks it; a state buffer takes no gradient
        store[self._fingerprint_name()] = _encode(self.fingerprint)
        written = _stored(store, self._fingerprint_name())
        key = id(written)
        _WRITES[key] = (weakref.ref(written, lambda _, key=key: _WRITES.pop(key, None)), weakref.ref(self))
        self.__dict__["_written_fingerprint"] = written
        self._claimed = True

    def __call__(self, *args, **kwargs):
        if _module_local() and not self._nested and self.__dict__.get("_fingerprint_fields"):
            tensor = _stored(pyro.get_param_store(), self._fingerprint_name())
            if tensor is not None and tensor is not self.__dict__.get("_written_fingerprint"):
                if not self._writer(tensor)[0]:
                    raise RuntimeError(
                        f"Pyro's param store holds a saved state of guide {self._pyro_name!r}, but with "
                        "pyro.settings.set(module_local_params=True) the store is not used; restore the "
                        "guide with guide.load_state_dict(...) instead, or call pyro.clear_param_store()"
                    )
        return super().__call__(*args, **kwargs)

    def _sync_state(self):
        """At the start of a call: adopt a loaded state, then put the parameters in the store."""
        if self._nested or self.__dict__.get("_fingerprint_fields") is None:
            return
        if _module_local():
            return  # checked in __call__, before PyroModule swaps in the module's own parameters
        tensor = _stored(pyro.get_param_store(), self._fingerprint_name())
        if tensor is not None and tensor is self.__dict__.get("_written_fingerprint"):
            return  # the common case: the store holds what this guide wrote
        self._pull()
        self._push()


def _state_dict_pre_hook(module, prefix, keep_vars):
    # a state loaded into the param store reaches state_dict() without waiting for the next call
    if (
        not module._nested
        and module.__dict__.get("_fingerprint_fields") is not None
        and not _module_local()
    ):
        module._pull()


def _load_state_dict_pre_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
    key = prefix + "_extra_state"
    if module.__dict__.get("_fingerprint_fields") is None:
        raise RuntimeError(
            f"{type(module).__name__} is not set up yet, so it has no parameters to load into: build it with "
            "model_args=(...) (and model_kwargs) or call it once with the model's arguments first"
        )
    if key not in state_dict or state_dict[key] is None:
        if strict:
            raise ValueError(
                f"the state_dict has no fingerprint ({key!r}); it was not saved from a {type(module).__name__}"
            )
        return
    saved = json.loads(state_dict[key])
    if fingerprint_diff(saved, module.fingerprint):
        raise ValueError(_mismatch_message(module._pyro_name, saved, module.fingerprint))
