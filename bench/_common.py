"""Shared helpers of the bench/ scripts: load average, peak memory, the results Markdown file.

Every figure is printed and appended to bench/results/<name>_<date>.md with the command that
produced it and the 1-minute load average next to it (the machines these ran on were shared).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
REAL_DATA = "/work/shared/data/lucchi_pp_subset"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load() -> str:
    """'1.23/1.10/0.95' (1, 5, 15 min) and the CPU count, to print beside every timing."""
    a, b, c = os.getloadavg()
    return f"load {a:.2f}/{b:.2f}/{c:.2f} on {os.cpu_count()} CPUs"


def maxrss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its waited-for children) in MB."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return ru.ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


class Report:
    """Collects Markdown lines; `save()` appends them to bench/results/<name>_<date>.md."""

    def __init__(self, name: str, title: str):
        self.path = RESULTS / f"{name}_{_dt.date.today().isoformat()}.md"
        self.lines = [f"## {title} ({_dt.datetime.now().isoformat(timespec='seconds')})", "",
                      f"Command: `{command()}`  ", f"Host: {platform.node()}, {platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} CPUs, Python {platform.python_version()}; {load()} at start", ""]

    def add(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def table(self, header: list[str], rows: list[list]) -> None:
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(str(c) for c in row) + " |")
        self.add()

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write("\n".join(self.lines) + "\n\n")
        print(f"results appended to {self.path}", flush=True)
        return self.path
