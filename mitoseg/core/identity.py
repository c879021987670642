"""A cell's identity: its resolved settings and the data it read. A finished cell counts as finished only
for the settings and data it was trained with.

* `config_differences`: what differs between a recorded resolved config and the one that would run now;
* `data_fingerprint`: a hash over every file the data loader reads (resolved through symlinks, size,
  mtime), recorded in the results JSON as `data.data_fingerprint`; the built-in synthetic data has none
  (it is fixed by the config's synthetic_* settings);
* `finished_cell_differences`: both of the above for one finished results record (train_one.py refuses
  to skip a finished cell that differs, and retrains it only with --force);
* `check_study`: every finished exp_ folder of a study against its grid_config.json (run before a local
  run or a submission: a hand-edited grid cannot mix cells of different settings in one comparison).

Standard library only (array elements and `run_study.py submit` run `check_study` on the host
Python; the fingerprint lists files with mitoseg.core.layout, which reads no pixel). Results written before these fields existed still load: a
record without a fingerprint is compared on its config alone.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional

from mitoseg.core import grid as G
from mitoseg.core.config import TrainConfig
from mitoseg.core.cell_state import read_cell
from mitoseg.core.layout import source_files
from mitoseg.core.paths import StudyPaths

_UNSET = "(unset)"


def config_differences(recorded: dict, current: dict, limit: int = 4) -> list[str]:
    """['epochs 1 -> 2', ...] for every setting that differs; fields the recorded config predates are
    compared with their default."""
    try:
        old = TrainConfig.from_dict(dict(recorded)).to_dict()
    except (TypeError, ValueError):
        old = dict(recorded)
    diffs = []
    for key in sorted(set(old) | set(current)):
        a, b = old.get(key, _UNSET), current.get(key, _UNSET)
        if a != b or type(a) is bool and type(b) is not bool or type(b) is bool and type(a) is not bool:
            diffs.append(f"{key} {a!r} -> {b!r}")
    return diffs[:limit] + ([f"{len(diffs) - limit} more"] if len(diffs) > limit else [])


def data_fingerprint(data_dir: Optional[str]) -> Optional[dict]:
    """{"files": n, "sha256": ...} over what the loader reads in data_dir; None for the synthetic data."""
    if data_dir is None:
        return None
    return files_fingerprint(source_files(data_dir))


def files_fingerprint(files: list[dict]) -> dict:
    """data_fingerprint of the files `layout.source_files` listed (a cell lists its data folder once)."""
    files = [{k: f[k] for k in ("real", "size", "mtime_ns")} for f in files]
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return {"files": len(files), "sha256": digest}


def fingerprint_difference(record: dict, current: Optional[dict]) -> Optional[str]:
    recorded = (record.get("data") or {}).get("data_fingerprint")
    if not isinstance(recorded, dict) or current is None or recorded == current:
        return None
    return (f"its data files changed since it finished ({recorded.get('files')} files, fingerprint "
            f"{recorded.get('sha256')} -> {current['files']} files, {current['sha256']})")


def finished_cell_differences(record: dict, config_dict: dict, fingerprint: Optional[dict]) -> list[str]:
    """What differs between a finished record and the config/data that would run now ([] = the same cell).
    A record with an empty config (hand-made) has no settings to compare."""
    diffs = config_differences(record["config"], config_dict) if record.get("config") else []
    data_diff = fingerprint_difference(record, fingerprint)
    return diffs + ([data_diff] if data_diff else [])


def copy_of(folder: str, record: Optional[dict], cell_names: Iterable[str]) -> Optional[str]:
    """The study cell that the folder `folder` is a copy of ("exp_01_... (copy)", or any folder whose results
    name another cell of the study), else None. A name that only extends a cell's with "_" (a cell of an
    edited grid, e.g. "..._seed5") is no copy."""
    names = set(cell_names)
    recorded = (record or {}).get("experiment_id")
    if recorded in names and recorded != folder:
        return recorded
    for name in sorted(names, key=len, reverse=True):
        rest = folder[len(name):]
        if folder.startswith(name) and rest and not rest.startswith("_"):
            return name
    return None


def check_study(study_dir, grid, retrain: Iterable[int] = (), fingerprint: Optional[dict] = None,
                check_data: bool = False) -> None:
    """ValueError (one line) for a relative data_dir in the study's grid, or for the first finished cell of
    the study that the grid no longer describes: an exp_ folder that is no cell of the grid, or a cell
    trained with other settings (or, with `check_data`, other data). Cells in `retrain` (--force) are exempt."""
    study_dir = Path(study_dir)
    by_name = {cell.name: cell for cell in G.study_cells(study_dir, grid)}   # grid + confirmation cells
    retrain = set(retrain)
    if check_data and fingerprint is None:
        fingerprint = data_fingerprint(grid.fixed.get("data_dir"))
    where = StudyPaths(study_dir).grid_config
    G.check_absolute_data_dir(grid, where)
    for exp_dir in StudyPaths(study_dir).exp_dirs():
        read = read_cell(exp_dir)   # unfinished or unreadable: rerun anyway
        if not read.finished:
            continue
        record, cell = read.record, by_name.get(exp_dir.name)
        if cell is None and copy_of(exp_dir.name, record, by_name):
            continue   # a copy of a cell ("exp_01_... (copy)"): listed as a duplicate, never run or counted
        if cell is None:
            raise ValueError(f"{where}: the finished cell {exp_dir.name} is no cell of this grid (was the grid "
                             "edited?); restore the grid, or start a new study")
        if cell.index in retrain:
            continue
        diffs = finished_cell_differences(record, cell.train_config(grid).to_dict(), fingerprint)
        if diffs:
            raise ValueError(f"{where}: the finished cell {cell.name} was trained with other settings or data "
                             f"({'; '.join(diffs)}); restore the grid, or retrain with --force")
