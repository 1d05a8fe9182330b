"""Write the intersphinx inventories that ``make docs`` reads, so the build needs no network.

Usage (from the repository root, after upgrading torch, Pyro, ArviZ, NumPy or Lightning)::

    python docs/inventories/make_inventories.py

For each project this walks the public names of the *installed* package (``__all__`` where the
module has one, else the names without a leading underscore) and writes ``docs/inventories/<project>.inv``
in Sphinx's inventory format version 2 (a four-line plain-text header, then zlib-compressed lines
``name domain:role priority uri dispname``; see ``sphinx.util.inventory``).  The URIs are those of
each project's published documentation, relative to the base URL given in ``docs/conf.py``'s
``intersphinx_mapping`` (e.g. ``generated/torch.nn.Module.html#torch.nn.Module`` under
https://pytorch.org/docs/stable/).  Every public name is listed both under the path users write
(``pyro.infer.SVI``) and under its defining module (``pyro.infer.svi.SVI``), as the real
inventories of these projects resolve both spellings.
"""
import argparse
import builtins
import importlib
import inspect
import os
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def public_names(module):
    """Return the public names of ``module``: its ``__all__``, else the names without ``_``."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in dir(module) if not name.startswith("_")]
    return sorted(set(names))


def role_of(obj):
    """Return the Sphinx Python-domain role of ``obj``."""
    if inspect.ismodule(obj):
        return "py:module"
    if inspect.isclass(obj):
        return "py:exception" if issubclass(obj, BaseException) else "py:class"
    if callable(obj):
        return "py:function"
    return "py:data"


def canonical_name(obj):
    """Return ``module.qualname`` where ``obj`` is defined, or None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    return f"{module}.{qualname}"


class Inventory:
    """The entries of one project's inventory: ``name -> (role, uri)``."""

    def __init__(self, project, version):
        self.project = project
        self.version = version
        self.entries = {}

    def add(self, name, role, uri):
        self.entries.setdefault((name, role), uri)

    def add_members(self, cls, name, uri_of, methods=True):
        """Add the public methods and attributes of class ``cls`` documented as ``name``."""
        for member, value in vars(cls).items():
            if member.startswith("_") or not methods:
                continue
            role = "py:method" if callable(value) else "py:attribute"
            full = f"{name}.{member}"
            self.add(full, role, uri_of(full))

    def write(self, path):
        header = (
            "# Sphinx inventory version 2\n"
            f"# Project: {self.project}\n"
            f"# Version: {self.version}\n"
            "# The remainder of this file is compressed using zlib.\n"
        ).encode()
        lines = []
        for (name, role), uri in sorted(self.entries.items()):
            if uri.endswith("#" + name):
                uri = uri[: -len(name)] + "$"  # the format's abbreviation for "anchor = name"
            lines.append(f"{name} {role} 1 {uri} -\n")
        with open(path, "wb") as file:
            file.write(header + zlib.compress("".join(lines).encode(), 9))
        return len(lines)


def python_inventory():
    inv = Inventory("Python", f"{sys.version_info.major}.{sys.version_info.minor}")
    for name in dir(builtins):
        if name.startswith("_"):
            continue
        obj = getattr(builtins, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            inv.add(name, "py:exception", f"library/exceptions.html#{name}")
        elif inspect.isclass(obj) or callable(obj):
            inv.add(name, role_of(obj), f"library/functions.html#{name}")
        else:
            inv.add(name, "py:data", f"library/constants.html#{name}")
    for module_name in ("argparse", "collections.abc", "contextlib", "dataclasses", "json", "math",
                        "os", "os.path", "pathlib", "time", "typing"):
        module = importlib.import_module(module_name)
        page = f"library/{module_name}.html"
        inv.add(module_name, "py:module", f"{page}#module-{module_name}")
        # the standard library documents more than its __all__ lists (os.PathLike is not in os.__all__)
        names = set(public_names(module)) | {name for name in dir(module) if not name.startswith("_")}
        for name in sorted(names):
            obj = getattr(module, name, None)
            if obj is None or inspect.ismodule(obj):
                continue
            inv.add(f"{module_name}.{name}", role_of(obj), f"{page}#{module_name}.{name}")
    for term in ("callable", "sequence", "iterable", "mapping", "path-like object", "file object",
                 "context manager", "generator"):
        inv.add(term, "std:term", "glossary.html#term-" + term.replace(" ", "-"))
    return inv


def numpy_inventory():
    import numpy

    inv = Inventory("NumPy", numpy.__version__)
    for name in public_names(numpy):
        obj = getattr(numpy, name, None)
        if obj is None or inspect.ismodule(obj):
            continue
        inv.add(f"numpy.{name}", role_of(obj), f"reference/generated/numpy.{name}.html#numpy.{name}")
    for term in ("array_like", "array", "dtype", "shape"):
        inv.add(term, "std:term", f"glossary.html#term-{term.replace('_', '-')}")
    return inv


def torch_inventory():
    import torch
    import torch.distributions
    import torch.nn
    import torch.nn.functional
    import torch.optim
    import torch.utils.data

    inv = Inventory("PyTorch", torch.__version__.split("+")[0])

    def generated(name):
        return f"generated/{name}.html#{name}"

    for name in public_names(torch):
        obj = getattr(torch, name, None)
        if obj is None or inspect.ismodule(obj):
            continue
        inv.add(f"torch.{name}", role_of(obj), generated(f"torch.{name}"))
    for name in ("Tensor", "dtype", "device", "Size", "Generator"):
        page = {"Tensor": "tensors.html", "dtype": "tensor_attributes.html",
                "device": "tensor_attributes.html", "Size": "size.html"}.get(name)
        uri_of = (lambda full, page=page: f"{page}#{full}") if page else generated
        inv.entries.pop((f"torch.{name}", "py:class"), None)
        inv.add(f"torch.{name}", "py:class", uri_of(f"torch.{name}"))
        if name == "Tensor":
            inv.add_members(torch.Tensor, "torch.Tensor", uri_of)
    for package in ("torch.nn", "torch.nn.functional", "torch.optim", "torch.optim.lr_scheduler"):
        module = importlib.import_module(package)
        inv.add(package, "py:module", f"{package.split('.')[1] if package.count('.') == 1 else package}.html#module-{package}")
        for name in public_names(module):
            obj = getattr(module, name, None)
            if obj is None or inspect.ismodule(obj):
                continue
            full = f"{package}.{name}"
            inv.add(full, role_of(obj), generated(full))
            if inspect.isclass(obj) and package == "torch.nn" and name == "Module":
                inv.add_members(obj, full, lambda member: f"generated/{full}.html#{member}")
    for name in public_names(torch.utils.data):
        obj = getattr(torch.utils.data, name, None)
        if obj is not None and not inspect.ismodule(obj):
            inv.add(f"torch.utils.data.{name}", role_of(obj), f"data.html#torch.utils.data.{name}")
    for package in ("torch.distributions", "torch.distributions.transforms",
                    "torch.distributions.constraints"):
        module = importlib.import_module(package)
        inv.add(package, "py:module", f"distributions.html#module-{package}")
        for name in public_names(module):
            obj = getattr(module, name, None)
            if obj is None or inspect.ismodule(obj):
                continue
            canonical = canonical_name(obj) if inspect.isclass(obj) else None
            anchor = canonical or f"{package}.{name}"
            for full in {f"{package}.{name}", anchor}:
                inv.add(full, role_of(obj), f"distributions.html#{anchor}")
    return inv


#: Where Pyro documents each of its subpackages (https://docs.pyro.ai/en/stable/<page>).
PYRO_PAGES = (
    ("pyro.infer.autoguide", "infer.autoguide.html"),
    ("pyro.infer.mcmc", "mcmc.html"),
    ("pyro.infer.reparam", "infer.reparam.html"),
    ("pyro.infer", "inference_algos.html"),
    ("pyro.optim", "optimization.html"),
    ("pyro.nn", "nn.html"),
    ("pyro.distributions", "distributions.html"),
    ("pyro.poutine", "poutine.html"),
    ("pyro.ops", "ops.html"),
    ("pyro.contrib", "contrib.html"),
    ("pyro", "primitives.html"),
)


def pyro_page(name):
    for prefix, page in PYRO_PAGES:
        if name == prefix or name.startswith(prefix + "."):
            return page
    raise ValueError(name)


def pyro_inventory():
    import pyro

    inv = Inventory("Pyro", pyro.__version__)
    packages = ("pyro", "pyro.infer", "pyro.infer.autoguide", "pyro.infer.autoguide.initialization",
                "pyro.infer.mcmc", "pyro.optim", "pyro.optim.clipped_adam", "pyro.nn", "pyro.distributions",
                "pyro.distributions.transforms", "pyro.distributions.constraints", "pyro.poutine")
    for package in packages:
        module = importlib.import_module(package)
        inv.add(package, "py:module", f"{pyro_page(package)}#module-{package}")
        for name in public_names(module):
            obj = getattr(module, name, None)
            if obj is None or inspect.ismodule(obj):
                continue
            canonical = canonical_name(obj)
            if canonical is None or not canonical.startswith("pyro."):
                canonical = f"{package}.{name}"
            page = pyro_page(canonical)
            for full in {f"{package}.{name}", canonical}:
                inv.add(full, role_of(obj), f"{page}#{canonical}")
            if inspect.isclass(obj) and package in ("pyro.infer", "pyro.infer.autoguide"):
                inv.add_members(obj, f"{package}.{name}", lambda member, c=canonical, p=page:
                                f"{p}#{c}.{member.rsplit('.', 1)[1]}")
    return inv


def arviz_inventory():
    import arviz

    inv = Inventory("ArviZ", arviz.__version__)
    for name in public_names(arviz):
        obj = getattr(arviz, name, None)
        if obj is None or inspect.ismodule(obj):
            continue
        inv.add(f"arviz.{name}", role_of(obj), f"api/generated/arviz.{name}.html#arviz.{name}")
    return inv


def lightning_inventory():
    import lightning

    inv = Inventory("PyTorch Lightning", lightning.__version__)
    # Lightning documents its classes under their lightning.pytorch.<subpackage> paths.
    documented = {
        "LightningModule": "lightning.pytorch.core.LightningModule",
        "LightningDataModule": "lightning.pytorch.core.LightningDataModule",
        "Trainer": "lightning.pytorch.trainer.trainer.Trainer",
        "Callback": "lightning.pytorch.callbacks.Callback",
    }
    for name, path in documented.items():
        uri = f"api/{path}.html#{path}"
        for full in (f"lightning.{name}", f"lightning.pytorch.{name}", path):
            inv.add(full, "py:class", uri)
    import lightning.pytorch.callbacks as callbacks
    import lightning.pytorch.strategies as strategies

    for module in (callbacks, strategies):
        for name in public_names(module):
            path = f"{module.__name__}.{name}"
            if inspect.isclass(getattr(module, name, None)):
                inv.add(path, "py:class", f"api/{path}.html#{path}")
    return inv


PROJECTS = {
    "python": python_inventory,
    "numpy": numpy_inventory,
    "torch": torch_inventory,
    "pyro": pyro_inventory,
    "arviz": arviz_inventory,
    "lightning": lightning_inventory,
}


def main(args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("projects", nargs="*", metavar="PROJECT",
                        help=f"inventories to write, among {', '.join(sorted(PROJECTS))} (default: all)")
    parser.add_argument("--output", default=HERE, help="folder to write <project>.inv into")
    args = parser.parse_args(args)
    unknown = sorted(set(args.projects) - set(PROJECTS))
    if unknown:
        parser.error(f"unknown project(s) {', '.join(unknown)}; choose among {', '.join(sorted(PROJECTS))}")
    for project in args.projects or sorted(PROJECTS):
        inv = PROJECTS[project]()
        count = inv.write(os.path.join(args.output, f"{project}.inv"))
        print(f"{project}.inv: {count} entries ({inv.project} {inv.version})")


if __name__ == "__main__":
    main()
