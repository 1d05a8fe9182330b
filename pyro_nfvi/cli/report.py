"""The written report of an ``nfvi`` command: tables (markdown and terminal text), the machine, the command line.

A command builds :class:`Table` objects, prints ``table.text()`` and writes ``table.markdown()`` into
its ``summary.md`` together with :func:`command_line` and :func:`machine_description`, so that a
report says how, where and when its numbers were made.

Example:
    >>> table = Table(["guide", "k-hat"], [["AutoNormal", "0.93"], ["flow", "0.61"]])
    >>> print(table.markdown())
    | guide | k-hat |
    | --- | --- |
    | AutoNormal | 0.93 |
    | flow | 0.61 |
    >>> print(table.text())
    guide       k-hat
    ----------  -----
    AutoNormal  0.93
    flow        0.61
"""
import os
import platform
import shlex
from dataclasses import dataclass, field

__all__ = ["Table", "command_line", "machine_description"]


@dataclass
class Table:
    """A table of strings: ``header`` (column names) and ``rows`` (lists of cells, as many as the header)."""

    header: list
    rows: list = field(default_factory=list)

    def __post_init__(self):
        self.header = [str(h) for h in self.header]
        self.rows = [[str(c) for c in row] for row in self.rows]
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"a row has {len(row)} cells for {len(self.header)} columns: {row}")

    def markdown(self):
        """The table in GitHub markdown (``|`` in a cell is escaped)."""
        lines = [self.header, ["---"] * len(self.header)] + self.rows
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines)

    def text(self):
        """The table as aligned plain-text columns, for the terminal."""
        widths = [max(len(line[j]) for line in [self.header] + self.rows) for j in range(len(self.header))]
        lines = [self.header, ["-" * w for w in widths]] + self.rows
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def command_line(prog, argv):
    """The command as a user would type it again, e.g. ``nfvi demo --out runs/demo``.

    Example:
        >>> command_line("nfvi", ["demo", "--out", "my runs"])
        "nfvi demo --out 'my runs'"
    """
    return shlex.join([prog] + [str(a) for a in argv])


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description():
    """One line: CPU model and cores, OS, Python, and the versions of torch (with its thread count), Pyro and ArviZ.

    Example:
        >>> "torch" in machine_description() and "pyro" in machine_description()
        True
    """
    import arviz
    import pyro
    import torch

    threads = torch.get_num_threads()
    return (
        f"{_cpu_model()}, {os.cpu_count()} cores; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({threads} thread{'s' if threads != 1 else ''}), "
        f"pyro {pyro.__version__}, arviz {arviz.__version__}"
    )
