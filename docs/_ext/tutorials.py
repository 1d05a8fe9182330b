"""Executed tutorials: every ``docs/tutorials/*.py`` script is a page, run at each build.

A tutorial is a plain Python script (``python docs/tutorials/swap_guide.py`` runs it) split into
cells by lines ``# %%``.  Its module docstring is the page's introduction (MyST markdown, starting
with the ``# Title``); in each cell, the leading comment lines are markdown text and the rest is
code.  The parser runs the cells in order in one namespace, in a temporary working directory, and
the page shows each cell's text, its code, what it printed and the matplotlib figures it left open
(embedded as PNG data).  A tutorial that raises fails the build (an error, so ``-W`` stops it) with
the cell and the traceback; the script is therefore tested on every ``make docs``.

Tutorials are sources like any page, so Sphinx itself reports one that no toctree lists.
"""
import ast
import base64
import contextlib
import io
import os
import tempfile
import time
import traceback

from myst_parser.parsers.sphinx_ import MystParser
from sphinx.util import logging

__all__ = ["Cell", "TutorialParser", "execute", "split_cells", "to_markdown", "setup"]

logger = logging.getLogger(__name__)

#: The line that starts a new cell.
CELL_MARKER = "# %%"


class Cell:
    """One cell of a tutorial: its markdown text, its code and, once run, its output and figures."""

    def __init__(self, text, code, line):
        self.text = text
        self.code = code
        self.line = line
        self.output = ""
        self.figures = []


def split_cells(source):
    """Split a tutorial's source into its docstring (markdown) and its :class:`Cell` list."""
    module = ast.parse(source)
    intro = ast.get_docstring(module, clean=True) or ""
    lines = source.splitlines()
    start = module.body[0].end_lineno if intro else 0
    cells, block, block_line = [], [], start + 1
    for number, line in enumerate(lines[start:], start + 1):
        if line.strip() == CELL_MARKER or line.startswith(CELL_MARKER + " "):
            cells.append((block_line, block))
            block, block_line = [], number + 1
        else:
            block.append(line)
    cells.append((block_line, block))
    result = []
    for line, block in cells:
        text = []
        while block and (block[0].startswith("# ") or block[0].strip() == "#"):
            text.append(block.pop(0)[2:])
        code = "\n".join(block).strip("\n")
        if text or code:
            result.append(Cell("\n".join(text), code, line + len(text)))
    return intro, result


def execute(cells, path):
    """Run ``cells`` in order in one namespace; fill in their output and figures.

    Returns ``(seconds, error)``: ``error`` is None, or a message naming the cell's line and the
    traceback.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyro

    pyro.clear_param_store()
    namespace = {"__name__": "__main__", "__file__": path}
    start = time.perf_counter()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="nfvi-tutorial-") as folder:
        os.chdir(folder)
        try:
            for cell in cells:
                if not cell.code:
                    continue
                stdout = io.StringIO()
                try:
                    code = compile(cell.code + "\n", f"{path}:{cell.line}", "exec")
                    with contextlib.redirect_stdout(stdout):
                        exec(code, namespace)
                except BaseException:  # noqa: B036 - a tutorial's failure fails the build
                    return time.perf_counter() - start, (
                        f"the cell at line {cell.line} raised:\n{traceback.format_exc()}"
                    )
                finally:
                    cell.output = stdout.getvalue()
                for number in plt.get_fignums():
                    buffer = io.BytesIO()
                    plt.figure(number).savefig(buffer, format="png", dpi=80, bbox_inches="tight")
                    cell.figures.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
                plt.close("all")
        finally:
            os.chdir(cwd)
            plt.close("all")
            pyro.clear_param_store()
    return time.perf_counter() - start, None


def to_markdown(intro, cells, script, seconds):
    """Return the MyST page of an executed tutorial."""
    parts = [intro, ""]
    for cell in cells:
        if cell.text:
            parts += [cell.text, ""]
        if cell.code:
            parts += ["```python", cell.code, "```", ""]
        if cell.output.strip():
            parts += ["```text", cell.output.rstrip("\n"), "```", ""]
        for figure in cell.figures:
            parts += [f"![figure](data:image/png;base64,{figure})", ""]
    parts += [
        "---",
        "",
        f"This page is the script `docs/tutorials/{script}`, executed when the documentation was "
        f"built ({seconds:.1f} s on the build machine); run it with `python docs/tutorials/{script}`.",
        "",
    ]
    return "\n".join(parts)


class TutorialParser(MystParser):
    """Parse a ``docs/tutorials/*.py`` script by running it and rendering the result as MyST."""

    supported = ("tutorial",)

    def parse(self, inputstring, document):
        path = document.current_source
        script = os.path.basename(path)
        intro, cells = split_cells(inputstring)
        seconds, error = execute(cells, path)
        if error is not None:
            logger.error("tutorial %s failed: %s", script, error, location=path, type="tutorial")
        else:
            logger.info("tutorial %s ran in %.1f s", script, seconds)
        super().parse(to_markdown(intro, cells, script, seconds), document)


def setup(app):
    app.add_source_suffix(".py", "tutorial")
    app.add_source_parser(TutorialParser)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
