"""`run_study.py local --jobs auto`: how many cells train at once on this machine, from its cores and
from the peak memory of a cell as the pre-flight trial measured it in the study's own training
environment, at the study's own settings.

The trial (mitoseg/cell/preflight.py, the one `verify` runs) builds, steps, saves and predicts every
architecture of the grid in one process at the largest batch; its peak resident memory is what one
worker holds. It is recorded in the study (`preflight.json`, with the settings and the training
environment it ran with) and reused only when those are the same; otherwise it is measured again.
Standard library only at import (the study layer); the trial itself runs in its own process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

from mitoseg.core import grid as G
from mitoseg.core.paths import StudyPaths

MEMORY_HEADROOM = 0.8   # the share of the available memory the cells may take: the rest for the system
# A worker trains several cells in one process and holds more than the trial's few steps: in the demo a
# worker peaked at 1.16 GiB where the trial of its three architectures peaked at 1.02 GiB (x1.14); one
# cell alone at 0.83-0.99 GiB (bench/results/jobs_auto_memory_2026-12-05.md).
WORKER_MARGIN = 1.25


def trial_key(grid: G.GridConfig, python: list) -> dict:
    """What the trial's memory depends on, as it runs it (preflight.trial: the grid's fixed settings and
    architectures at its largest batch) and where (the command prefix of the training environment)."""
    return {"python": list(python), "architectures": list(grid.architectures),
            "batch_size": int(max(grid.batch_sizes)), "fixed": grid.fixed}


def measured_peak(study_dir, grid: G.GridConfig, python: list, log: Callable[[str], None]) -> tuple[int, str]:
    """(peak resident bytes of the trial process, where the figure comes from): the study's recorded trial
    when it ran with these settings and this environment, else a new trial, recorded. ValueError (one
    line) when the trial cannot run or an architecture's step fails: nothing would train."""
    from mitoseg.study.verify import run_trial
    path = StudyPaths(study_dir).preflight
    key = trial_key(grid, python)
    record = _read(path)
    if record and record.get("key") == key:
        try:
            return _peak(record["result"]), _source(record["result"], f"the pre-flight trial (recorded in {path})")
        except (KeyError, TypeError, ValueError, AttributeError):
            pass   # a record damaged or edited by hand: measured again
    log(f"jobs auto: measuring a cell's memory with the pre-flight trial (one step of each of "
        f"{', '.join(grid.architectures)} at batch {key['batch_size']}) ...")
    result, where = run_trial(grid, launch=(python, " ".join(python)))
    failed = _failure(result, where)
    if failed:
        raise ValueError(f"jobs auto: the pre-flight trial failed: {failed}; see `run_study.py verify` for "
                         "every check, or give --jobs N")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, indent=1) + "\n")
    os.replace(tmp, path)   # whole or not at all: a rerun reads either the old record or this one
    return _peak(result), _source(result, f"the pre-flight trial (just measured, recorded in {path})")


def _read(path: Path) -> Optional[dict]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None   # none yet, or unreadable: measured again
    return record if isinstance(record, dict) and isinstance(record.get("result"), dict) else None


def _failure(result: Optional[dict], where: str) -> Optional[str]:
    """One line naming what failed in the trial, or None."""
    if result is None:
        return where
    if result.get("error"):
        return result["error"]
    bad = [f"{arch}: {t.get('error')}" for arch, t in result["architectures"].items() if not t.get("ok")]
    return "; ".join(bad) or None


def _source(result: dict, where: str) -> str:
    """Where the figure comes from; on a GPU also that the cells share it and its memory is not divided."""
    gpus = result.get("gpus") or []
    if not gpus:
        return where
    gpu_peak = max(int(t["memory"]["bytes"]) for t in result["architectures"].values())
    return (f"{where}; the cells share {', '.join(gpus)}: its memory (trial peak {gpu_peak / 2**30:.2f} GiB) is "
            "not counted here")


def _peak(result: dict) -> int:
    """The trial process' peak resident memory: the last architecture's figure is the process' peak so far."""
    return max(int(t["host_rss_bytes"]) for t in result["architectures"].values())


def auto_jobs(peak: int, source: str, cores: Optional[int] = None,
              available: Optional[int] = None) -> tuple[int, str]:
    """(cells at once, the one line saying why): one per core, as many as MEMORY_HEADROOM of the available
    memory holds at the measured `peak` x WORKER_MARGIN each, at least 1."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    available = available if available is not None else available_memory()
    per_cell = peak * WORKER_MARGIN
    measured = f"{per_cell / 2**30:.2f} GiB per cell = {WORKER_MARGIN:g} x the {peak / 2**30:.2f} GiB peak of {source}"
    if available is None:
        return cores, f"jobs auto: {cores} ({cores} cores; available memory unknown, not considered; {measured})"
    by_memory = max(1, int(available * MEMORY_HEADROOM // per_cell))
    jobs = max(1, min(cores, by_memory))
    return jobs, (f"jobs auto: {jobs} (the smaller of {cores} cores and {by_memory} cells in memory: "
                  f"{MEMORY_HEADROOM * 100:.0f} % of {available / 2**30:.1f} GiB available / {measured})")


def available_memory() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
