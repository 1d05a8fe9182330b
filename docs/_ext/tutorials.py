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
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

try:  # the parser is only needed inside Sphinx; a run (``python tutorials.py ...``) needs neither
    from myst_parser.parsers.sphinx_ import MystParser
    from sphinx.util import logging
except ImportError:  # pragma: no cover
    MystParser, logging = object, None

__all__ = ["Cell", "TutorialParser", "execute", "run_script", "split_cells", "start_runs", "to_markdown", "setup"]

logger = logging.getLogger(__name__) if logging else None

#: Seconds a tutorial may run before its build fails.
TIMEOUT = 600

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

    def to_dict(self):
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data):
        cell = cls(data["text"], data["code"], data["line"])
        cell.output, cell.figures = data["output"], data["figures"]
        return cell


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


def run_script(path):
    """Run the tutorial at ``path`` in this process; return its JSON-able result."""
    with open(path, encoding="utf-8") as file:
        intro, cells = split_cells(file.read())
    cpu = time.process_time()
    seconds, error = execute(cells, path)
    return {"intro": intro, "cells": [cell.to_dict() for cell in cells], "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu, "error": error}


def run_in_subprocess(path):
    """Run the tutorial at ``path`` in a fresh Python process (one torch thread); return its result."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(entry for entry in sys.path if entry))
    with tempfile.TemporaryDirectory(prefix="nfvi-tutorial-run-") as folder:
        result_path = os.path.join(folder, "result.json")
        try:
            process = subprocess.run([sys.executable, os.path.abspath(__file__), path, result_path],
                                     env=env, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return {"error": f"it ran for more than {TIMEOUT} s"}
        if not os.path.exists(result_path):
            return {"error": f"its process exited with status {process.returncode}:\n{process.stderr[-4000:]}"}
        with open(result_path, encoding="utf-8") as file:
            return json.load(file)


def start_runs(app, env, added, changed, removed):
    """``env-get-outdated``: start every tutorial's run now, and have Sphinx re-read them all."""
    docnames = sorted(name for name in env.found_docs
                      if name.startswith("tutorials/") and str(env.doc2path(name)).endswith(".py"))
    pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
    app.tutorial_runs = {name: pool.submit(run_in_subprocess, str(env.doc2path(name))) for name in docnames}
    pool.shutdown(wait=False)
    return docnames


class TutorialParser(MystParser):
    """Parse a ``docs/tutorials/*.py`` script by running it and rendering the result as MyST."""

    supported = ("tutorial",)

    def parse(self, inputstring, document):
        path = document.current_source
        script = os.path.basename(path)
        env = document.settings.env
        future = getattr(env.app, "tutorial_runs", {}).get(env.docname)
        result = future.result() if future is not None else run_script(path)
        intro, _ = split_cells(inputstring)
        cells = [Cell.from_dict(cell) for cell in result.get("cells", [])]
        seconds, error = result.get("seconds", 0.0), result.get("error")
        if error is not None:
            logger.error("tutorial %s failed: %s", script, error, location=env.docname, type="tutorial")
        else:
            logger.info("tutorial %s ran in %.1f s (%.1f s of CPU)", script, seconds,
                        result.get("cpu_seconds", float("nan")))
        super().parse(to_markdown(intro, cells, script, seconds), document)


def setup(app):
    app.add_source_suffix(".py", "tutorial")
    app.add_source_parser(TutorialParser)
    app.connect("env-get-outdated", start_runs)
    return {"parallel_read_safe": False, "parallel_write_safe": True}


def main(argv):
    """``python tutorials.py SCRIPT RESULT.json``: run one tutorial, write its result."""
    import torch

    torch.set_num_threads(1)
    script, result_path = argv
    result = run_script(script)
    with open(result_path, "w", encoding="utf-8") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main(sys.argv[1:])
