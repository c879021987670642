"""One exp_ folder -> the cell's state and record: `read_cell(exp_dir)`, the one reader every consumer
uses (the local runner, array elements, `status`, the summary and so the analysis, confirm, predict,
export, the study checks).

One lookup rule (`ExperimentPaths.find_results_json`): the results file named after the folder, else
the folder's first *_results.json (a folder renamed by hand keeps its files' names). One word per
state (mitoseg/core/status.py): the record's status (ok / diverged / failed / interrupted), UNREADABLE
for a file that `load_results` refuses, STARTED for a folder without a results file, MISSING for no
folder. STARTED is never printed: the files alone cannot tell whether a process is still training
the cell, so `status` decides RUNNING or STALLED by the clock and `local` (whose process has ended)
says STALLED; the report reads results, not progress, and says MISSING for every cell without one.

Standard library only (`run_study.py status` and the array elements run it on the host Python).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mitoseg.core.paths import ExperimentPaths
from mitoseg.core.results import ResultsError, load_results
from mitoseg.core.status import MISSING, STARTED, UNREADABLE, is_done


@dataclass(frozen=True)
class CellState:
    state: str                 # a results status, UNREADABLE, STARTED or MISSING
    record: Optional[dict]     # the loaded results record (None unless the state is a results status)
    path: Path                 # the results file read, or the one a finished cell would have
    error: str = ""            # why an UNREADABLE file was refused (one line)

    @property
    def finished(self) -> bool:
        return is_done(self.state)


def read_cell(exp_dir) -> CellState:
    """The state and record of the cell whose folder is `exp_dir` (see the module docstring)."""
    paths = ExperimentPaths(Path(exp_dir))
    path = paths.find_results_json()
    if not path.exists():
        return CellState(STARTED if paths.exp_dir.is_dir() else MISSING, None, path)
    try:
        record = load_results(path)
    except ResultsError as err:
        return CellState(UNREADABLE, None, path, str(err).replace("\n", " "))
    return CellState(record["status"], record, path)
