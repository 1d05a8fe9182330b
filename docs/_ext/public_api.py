"""The ``public-api`` directive: a subpackage's reference page, generated from its ``__all__``.

``.. public-api:: pyro_nfvi.guides`` renders the module docstring, then every name of
``pyro_nfvi.guides.__all__`` in that order: classes with ``autoclass``, functions with
``autofunction``, and constants as ``py:data`` with the ``#:`` comment of the module that defines
them (``autodata`` cannot find it for a name re-exported by a package).  The page therefore
documents exactly the public API, under the names users import.
"""
import importlib
import inspect
import sys

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

__all__ = ["PublicAPI", "data_comment", "setup", "shows_value"]

#: Scalar types whose value (alone, or in a tuple or a dict) is shown next to a constant's name.
SCALARS = (bool, int, float, str, type(None))


def shows_value(value):
    """Return whether the repr of ``value`` is short and meaningful: a scalar, or a tuple or dict of them."""
    if isinstance(value, dict):
        return all(isinstance(item, SCALARS) for item in [*value, *value.values()])
    if isinstance(value, tuple):
        return all(isinstance(item, SCALARS) for item in value)
    return isinstance(value, SCALARS)


def data_comment(package, name, value):
    """Return the ``#:`` comment lines documenting ``value`` in the submodule of ``package`` that defines ``name``."""
    prefix = package.__name__ + "."
    for module_name, module in sorted(sys.modules.items()):
        if module is None or not (module_name == package.__name__ or module_name.startswith(prefix)):
            continue
        if getattr(module, name, None) is not value:
            continue
        try:
            docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except Exception:  # a compiled or generated module: no source to read
            continue
        if ("", name) in docs:
            return [line for line in docs[("", name)] if line.strip()]
    return []


class PublicAPI(SphinxDirective):
    """Document a module and every name in its ``__all__``."""

    required_arguments = 1
    option_spec = {"aliases-of": directives.unchanged_required}

    def run(self):
        module_name = self.arguments[0]
        module = importlib.import_module(module_name)
        if not hasattr(module, "__all__"):
            raise self.error(f"public-api: {module_name} has no __all__ to document")
        if "aliases-of" in self.options:
            return self.aliases(module, self.options["aliases-of"].split())
        lines = [f".. automodule:: {module_name}", "   :no-members:", ""]
        for name in module.__all__:
            value = getattr(module, name)
            full = f"{module_name}.{name}"
            if inspect.isclass(value):
                lines += [f".. autoclass:: {full}", "   :members:", ""]
            elif inspect.ismodule(value):
                lines += [f".. py:data:: {name}", "", f"   The module :mod:`{value.__name__}`.", ""]
            elif inspect.isfunction(value) or inspect.isbuiltin(value):
                lines += [f".. autofunction:: {full}", ""]
            else:
                lines += [f".. py:data:: {name}"]
                if shows_value(value):
                    lines += [f"   :value: {value!r}"]
                lines += [""] + ["   " + line for line in data_comment(module, name, value)] + [""]
        return self.parse(lines, module_name)

    def aliases(self, module, homes):
        """Short entries for names re-exported by ``module``, each pointing to its page in ``homes``.

        So that ``pyro_nfvi.fit`` resolves as well as ``pyro_nfvi.recipe.fit``.
        """
        lines = [f".. py:module:: {module.__name__}", "   :no-index:", "", f".. py:currentmodule:: {module.__name__}", ""]
        for name in module.__all__:
            value = getattr(module, name)
            home = next((h for h in homes if getattr(importlib.import_module(h), name, None) is value), None)
            if inspect.ismodule(value):
                continue  # a subpackage: its own page
            if home is None:
                lines += [f".. py:data:: {name}", f"   :value: {value!r}", ""]
                lines += ["   " + line for line in data_comment(module, name, value)] + [""]
                continue
            role = "class" if inspect.isclass(value) else "function" if callable(value) else "data"
            short = {"class": "class", "function": "func", "data": "data"}[role]
            lines += [f".. py:{role}:: {name}", "   :no-contents-entry:", "",
                      f"   The same object as :{short}:`{home}.{name}`.", ""]
        return self.parse(lines, module.__name__)

    def parse(self, lines, module_name):
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=f"<public-api {module_name}>"), container)
        return container.children


def setup(app):
    app.add_directive("public-api", PublicAPI)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
