"""The package's layers import one way: transforms -> nn -> guides -> objectives, evaluation -> recipe -> diagnostics, cli, lightning.

Every ``import``/``from ... import`` statement of every module (also the ones inside functions,
i.e. lazy imports) and every ``importlib.import_module("...")`` with a literal name is read with
:mod:`ast`, relative imports are resolved, and a layer may not import a layer above it.
"""
import ast
import pathlib

import pytest

PACKAGE = "pyro_nfvi"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

#: layer -> the layers it must not import (directly or lazily).
FORBIDDEN = {
    "transforms": ["nn", "guides", "objectives", "evaluation", "recipe", "diagnostics", "cli", "lightning"],
    "nn": ["guides", "objectives", "evaluation", "recipe", "diagnostics", "cli", "lightning"],
    "guides": ["objectives", "evaluation", "recipe", "diagnostics", "cli", "lightning"],
    "objectives": ["recipe", "diagnostics", "cli", "lightning"],
    "evaluation": ["recipe", "diagnostics", "cli", "lightning"],
    "recipe": ["diagnostics", "cli", "lightning"],
    "diagnostics": ["cli", "lightning"],
    # lightning is a top layer like cli (an optional extra): nothing below it may import it; cli
    # may (lazily), for a future `nfvi vae --strategy ddp`
}
#: (layer, forbidden layer) pairs violated today in files owned elsewhere: xfail(strict=True) each.
KNOWN_VIOLATIONS = {}


def imported_modules(source, module):
    """``[(lineno, absolute module name)]`` imported by ``source``, the code of module ``module``.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule); relative imports
    are resolved against ``module``'s package (a package's own module is ``<package>.__init__``).
    """
    package = module.split(".")[:-1]
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _module_name(path):
    """``pyro_nfvi/a/b.py -> pyro_nfvi.a.b`` (``pyro_nfvi/a/__init__.py -> pyro_nfvi.a.__init__``)."""
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)


def _files(layer):
    directory = ROOT / layer
    if directory.is_dir():
        return sorted(directory.rglob("*.py"))
    return [ROOT / f"{layer}.py"]


def violations(layer, forbidden):
    """``["file:line imports module"]`` for every import of layer ``forbidden`` by layer ``layer``."""
    target = f"{PACKAGE}.{forbidden}"
    out = []
    for path in _files(layer):
        for lineno, name in imported_modules(path.read_text(), _module_name(path)):
            if name == target or name.startswith(target + "."):
                out.append(f"{path.relative_to(ROOT.parent)}:{lineno} imports {name}")
    return sorted(set(out))


def _cases():
    cases = []
    for layer, above in FORBIDDEN.items():
        for forbidden in above:
            marks = ()
            if (layer, forbidden) in KNOWN_VIOLATIONS:
                marks = pytest.mark.xfail(strict=True, reason=KNOWN_VIOLATIONS[(layer, forbidden)])
            cases.append(pytest.param(layer, forbidden, marks=marks, id=f"{layer}-not-{forbidden}"))
    return cases


def test_every_layer_exists():
    for layer in FORBIDDEN:
        assert _files(layer) and all(p.is_file() for p in _files(layer)), layer


@pytest.mark.parametrize("layer, forbidden", _cases())
def test_layer_does_not_import_the_layers_above(layer, forbidden):
    found = violations(layer, forbidden)
    assert not found, "\n".join(found)


def test_evaluation_never_imports_diagnostics():
    """The cycle this file guards against: evaluation's PSIS numerics used to live in diagnostics."""
    found = violations("evaluation", "diagnostics")
    assert not found, "\n".join(found)


def test_the_scanner_sees_lazy_relative_and_string_imports():
    source = (
        "import pyro_nfvi.nn as nn\n"
        "from . import traces\n"
        "def f():\n"
        "    from ..diagnostics.arviz import psislw\n"
        "    from .. import cli\n"
        "    import importlib\n"
        "    importlib.import_module('pyro_nfvi.guides')\n"
    )
    names = {name for _, name in imported_modules(source, "pyro_nfvi.evaluation.iwae")}
    assert {
        "pyro_nfvi.nn",
        "pyro_nfvi.evaluation",
        "pyro_nfvi.evaluation.traces",
        "pyro_nfvi.diagnostics.arviz",
        "pyro_nfvi.diagnostics.arviz.psislw",
        "pyro_nfvi",
        "pyro_nfvi.cli",
        "importlib",
        "pyro_nfvi.guides",
    } == names
    # in a package's __init__, "." is the package itself
    init = {name for _, name in imported_modules("from .arviz import loo\n", "pyro_nfvi.diagnostics.__init__")}
    assert init == {"pyro_nfvi.diagnostics.arviz", "pyro_nfvi.diagnostics.arviz.loo"}
