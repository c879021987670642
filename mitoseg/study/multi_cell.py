"""K cells per array element (`--cells-per-gpu K`, $CELLS_PER_GPU): element i trains cells
i*K .. i*K+K-1 at the same time, as K train_one.py processes sharing the element's GPU.

The skip and resume rules stay where they are, in each train_one.py (a finished cell is skipped,
an interrupted one resumes, a failed one reruns), so an element rerun after a partial failure
trains only what is left. Failures are isolated: every cell is its own process with its own
exp_ folder; the element waits for all of them. Its exit code is 0 when every cell's was 0, else
the largest of them (mitoseg.core.status: EXIT_FAILED 1 ... EXIT_BUSY 4; killed by a signal counts as
EXIT_FAILED).
Standard library only: this runs with the host Python, before the container.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from typing import Callable

from mitoseg.core import env_vars as E
from mitoseg.study.launcher import signals_forwarded
from mitoseg.core.status import EXIT_FAILED, EXIT_OK

ENV = "CELLS_PER_GPU"


def cells_per_gpu(value=None, environ=None) -> int:
    """K from the flag, else $CELLS_PER_GPU, else 1. ValueError (one line) unless a positive integer."""
    raw = value if value is not None else E.read(ENV, environ) or 1
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"--cells-per-gpu / ${ENV} must be a positive integer, got {raw!r}") from None
    if k < 1:
        raise ValueError(f"--cells-per-gpu / ${ENV} must be a positive integer, got {raw!r}")
    return k


def array_size(n_cells: int, k: int) -> int:
    """Array elements needed for `n_cells` cells at K per element."""
    return -(-n_cells // k)


def element_cells(index: int, k: int, n_cells: int) -> list[int]:
    """The grid indices array element `index` trains."""
    if not 0 <= index < array_size(n_cells, k):
        raise ValueError(f"array index {index} is outside the array of {array_size(n_cells, k)} elements "
                         f"({n_cells} cells, {k} per element): use 0-{array_size(n_cells, k) - 1}")
    return list(range(index * k, min(n_cells, index * k + k)))


def _pump(proc, prefix: str, out) -> None:
    for line in proc.stdout:
        out.write(prefix + line)
        out.flush()


def run_cells(cmds: dict, env: dict, log: Callable[[str], None] = print, out=None) -> int:
    """Run {cell index: command} at once, their output line by line as '[cell N] ...'; SIGTERM /
    SIGINT / SIGUSR1 (as SIGTERM) reach every one. Returns the element's exit code (see above)."""
    out = out or sys.stdout
    env = {**env}
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")   # else the first process takes the whole GPU
    procs = {i: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 stdin=subprocess.DEVNULL) for i, cmd in cmds.items()}
    pumps = [threading.Thread(target=_pump, args=(p, f"[cell {i}] ", out), daemon=True) for i, p in procs.items()]
    for t in pumps:
        t.start()

    with signals_forwarded(procs.values()):
        codes = {i: p.wait() for i, p in procs.items()}
    for t in pumps:
        t.join(timeout=10)
    codes = {i: (EXIT_FAILED if c < 0 else c) for i, c in codes.items()}
    log("cells of this element: " + ", ".join(f"{i}: exit {c}" for i, c in sorted(codes.items())))
    return max(codes.values()) if any(codes.values()) else EXIT_OK
