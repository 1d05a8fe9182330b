"""What every benchmark script writes: a JSON report and a markdown table, with command, machine and date."""
import datetime
import json
import platform
from pathlib import Path

import pyro
import torch

__all__ = ["machine", "write_report"]


def machine():
    """The CPU model, torch's thread count and the library versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, pyro {pyro.__version__}"


def write_report(out, name, command, rows, title, intro, table):
    """Write ``<out>/<name>.json`` (command, machine, date, rows) and ``<out>/<name>.md``; return the report.

    Args:
        out (str or Path): the output folder (created if needed).
        name (str): the file stem.
        command (str): the command that produced the report.
        rows (list of dict): the measurements.
        title (str): the markdown title.
        intro (str): a paragraph saying what the table holds.
        table (list of str): the markdown table's lines (header, separator, rows).
    """
    report = {"command": command, "machine": machine(), "date": datetime.date.today().isoformat(), "rows": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    lines = [f"# {title}", "", f"Command: `{command}`; machine: {report['machine']}; date: {report['date']}.", "",
             intro, ""] + list(table)
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    return report
