"""The documentation site builds without a warning, documents the whole public API and runs every tutorial.

The build is ``make docs``'s: ``sphinx-build -W --keep-going -n`` (warnings are errors, every
cross-reference must resolve), once per test session, into a temporary folder; it executes the
tutorial scripts of ``docs/tutorials``.  It needs the ``docs`` extra (``pip install -e .[docs]``).
"""
import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyro_nfvi

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: The modules with a page in the API reference (docs/api/<name>.rst).
API_MODULES = ("transforms", "nn", "guides", "objectives", "evaluation", "recipe", "diagnostics",
               "targets", "datasets", "lightning", "cli")
#: Modules documented on their parent's page (``public-api`` sections of docs/api/targets.rst and cli.rst).
NESTED_API_MODULES = ("targets.bayes", "targets.reference", "cli.demo", "cli.arguments")
#: Modules of the package that are not part of the public API.
INTERNAL_MODULES = ("validation", "version")


def sphinx_build(source, output, *extra):
    """Run ``sphinx-build -W --keep-going -n -b html`` as ``make docs`` does; return the process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
               *extra, str(source), str(output)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site (the html folder); the build must succeed with no warning."""
    pytest.importorskip("sphinx", reason="the docs build needs the docs extra: pip install -e .[docs]")
    output = tmp_path_factory.mktemp("docs") / "html"
    process = sphinx_build(DOCS, output, "-d", str(output.parent / "doctrees"))
    assert process.returncode == 0, (
        "the documentation build failed (run `make docs` to see it):\n" + process.stderr[-6000:]
    )
    return output


def inventory_names(site):
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    names = {}
    for role, entries in inventory.items():
        if role.startswith("py:"):
            names.update({name: role for name in entries})
    return names


def test_every_module_of_the_package_is_documented_or_internal():
    modules = {info.name for info in pkgutil.iter_modules(pyro_nfvi.__path__)}
    assert modules == set(API_MODULES) | set(INTERNAL_MODULES), (
        "a new module of pyro_nfvi needs a page in docs/api/ (and an entry in API_MODULES), "
        "or an entry in INTERNAL_MODULES"
    )
    for name in API_MODULES:
        assert (DOCS / "api" / f"{name}.rst").read_text().count(f"public-api:: pyro_nfvi.{name}\n") == 1


def test_every_public_name_is_in_the_api_reference(site):
    documented = inventory_names(site)
    missing = []
    for name in API_MODULES + NESTED_API_MODULES:
        module = importlib.import_module(f"pyro_nfvi.{name}")
        missing += [f"pyro_nfvi.{name}.{item}" for item in module.__all__
                    if f"pyro_nfvi.{name}.{item}" not in documented]
    # the top-level names are re-exports: each must be documented under some public path
    for item in pyro_nfvi.__all__:
        value = getattr(pyro_nfvi, item)
        paths = [f"{module}.{item}" for module in ["pyro_nfvi"] + [f"pyro_nfvi.{m}" for m in API_MODULES]
                 if getattr(sys.modules.get(module), item, None) is value]
        if not any(path in documented for path in paths) and f"pyro_nfvi.{item}" not in documented:
            missing.append(f"pyro_nfvi.{item}")
    assert not missing, f"public names missing from the API reference: {missing}"


def test_every_tutorial_is_built_and_executed(site):
    scripts = sorted(path.stem for path in (DOCS / "tutorials").glob("*.py"))
    assert len(scripts) >= 6
    toctree = (DOCS / "tutorials" / "index.md").read_text()
    index = (site / "tutorials" / "index.html").read_text()
    for stem in scripts:
        assert f"\n{stem}\n" in toctree, f"docs/tutorials/{stem}.py is not in the toctree of docs/tutorials/index.md"
        assert f'href="{stem}.html"' in index, f"the tutorials page does not link to {stem}"
        page = (site / "tutorials" / f"{stem}.html").read_text()
        assert f"docs/tutorials/{stem}.py" in page and "executed when the documentation was" in page


def test_a_failing_tutorial_fails_the_build(tmp_path):
    pytest.importorskip("myst_parser", reason="the docs build needs the docs extra: pip install -e .[docs]")
    source = tmp_path / "src"
    (source / "tutorials").mkdir(parents=True)
    (source / "conf.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(DOCS / "_ext")!r})
        extensions = ["myst_parser", "tutorials"]
        exclude_patterns = ["conf.py"]
    """))
    (source / "index.md").write_text("# Test\n\n```{toctree}\ntutorials/good\ntutorials/bad\n```\n")
    (source / "tutorials" / "good.py").write_text('"""# Good"""\n# %%\n# Some text.\nprint(6 * 7)\n')
    (source / "tutorials" / "bad.py").write_text('"""# Bad"""\nx = 1\n# %%\nraise RuntimeError("broken tutorial")\n')
    process = sphinx_build(source, tmp_path / "html")
    assert process.returncode != 0
    assert "tutorial bad.py failed" in process.stderr and "broken tutorial" in process.stderr
    assert "good.py failed" not in process.stderr
    assert "42" in (tmp_path / "html" / "tutorials" / "good.html").read_text()
