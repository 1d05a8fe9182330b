"""Sphinx configuration of the pyro_nfvi documentation (``make docs``)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the package of this checkout, not an installed copy
sys.path.insert(0, os.path.join(HERE, "_ext"))

from pyro_nfvi import __version__  # noqa: E402

project = "pyro_nfvi"
author = "the pyro_nfvi authors"
copyright = "2026, the pyro_nfvi authors"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "myst_parser",
    "args_kwargs",
    "public_api",
    "tutorials",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "inventories", "_ext", "conf.py"]
root_doc = "index"

html_theme = "furo"
html_title = f"pyro_nfvi {release}"

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# The docstrings are Google style.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # dataclass fields: "Attributes:" sections, not a second description
# Argument types are cross-referenced; these are the plain-language spellings the docstrings use.
napoleon_preprocess_types = True
napoleon_type_aliases = {
    "callable": ":term:`callable`",
    "sequence": ":term:`sequence`",
    "iterable": ":term:`iterable`",
    "path-like": ":term:`path-like <path-like object>`",
    "array-like": ":term:`array-like <numpy:array_like>`",
    "array_like": ":term:`numpy:array_like`",
    "Tensor": "torch.Tensor",
    "nn.Module": "torch.nn.Module",
    "list[int]": ":class:`list` of :class:`int`",
    "Path": "pathlib.Path",
    "AutoFlowGuide": "pyro_nfvi.guides.AutoFlowGuide",
    "AmortizedFlowGuide": "pyro_nfvi.guides.AmortizedFlowGuide",
    "AnnealedELBO": "pyro_nfvi.objectives.AnnealedELBO",
}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_inherit_docstrings = False  # an undocumented forward() would show torch's docstring
autodoc_default_options = {"undoc-members": True}

# Every cross-reference must resolve (``make docs`` runs with -n -W). The build has no network:
# the inventories of the projects we link to are shipped in docs/inventories/ and regenerated from
# the installed packages by docs/inventories/make_inventories.py.
nitpicky = True


def _inventory(name):
    return os.path.join(HERE, "inventories", f"{name}.inv")


intersphinx_mapping = {
    "python": ("https://docs.python.org/3", _inventory("python")),
    "numpy": ("https://numpy.org/doc/stable", _inventory("numpy")),
    "torch": ("https://pytorch.org/docs/stable", _inventory("torch")),
    "pyro": ("https://docs.pyro.ai/en/stable", _inventory("pyro")),
    "arviz": ("https://python.arviz.org/en/stable", _inventory("arviz")),
    "lightning": ("https://lightning.ai/docs/pytorch/stable", _inventory("lightning")),
}
intersphinx_timeout = 1

nitpick_ignore = [
    # The guard that FastSVI, fit() and the checkpoints take is built by them; the class is not
    # exported (pyro_nfvi.guides.guard is internal), so an argument typed with it cannot link.
    ("py:class", "NonFiniteGuard"),
]

