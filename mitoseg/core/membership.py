"""Which exp_ folders of a study are its own cells: `study_membership(study_dir, grid)`.

A study holds one folder per cell of its grid and confirmation plan. Anything else found there -- a
copy made by hand (`exp_01_... (copy)`), a cell copied in from another study, a folder whose name is a
cell's but whose results were trained with other settings or data -- is *foreign*: every reader of
the study (the summary, hence the analysis, confirm and predict; `status`) lists it once and never
counts or ranks it. A study cell whose folder is foreign counts as not run.

What "the same cell" means is mitoseg/core/identity.py's: the recorded resolved config against the one
the grid gives (records without a config, hand-made ones, are compared on architecture, learning
rate, batch size and seed alone). Data: the data fingerprints recorded by the study's cells must
agree; a cell whose fingerprint differs from the one most of them recorded was trained on other data.

Standard library only (`run_study.py status` runs it on the host Python).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mitoseg.core import grid as G
from mitoseg.core.identity import config_differences, copy_of, data_fingerprint
from mitoseg.core.cell_state import read_cell
from mitoseg.core.paths import StudyPaths


@dataclass
class Membership:
    cells: dict                                    # cell name -> Cell (grid + confirmation plan)
    foreign: dict = field(default_factory=dict)    # exp_ folder name -> why it is not counted

    def note(self, limit: int = 5) -> Optional[str]:
        """The one line that lists the foreign folders (None without any)."""
        if not self.foreign:
            return None
        items = [f"{name} ({why})" for name, why in sorted(self.foreign.items())]
        more = f"; and {len(items) - limit} more" if len(items) > limit else ""
        return (f"{len(items)} exp_ folder(s) are not this study's cells and are not counted: "
                + "; ".join(items[:limit]) + more)


def _settings_differences(record: dict, cell: G.Cell, grid: G.GridConfig) -> list[str]:
    if record.get("config"):
        return config_differences(record["config"], cell.train_config(grid).to_dict(), limit=2)
    wanted = dict(architecture=cell.architecture, learning_rate=cell.learning_rate, batch_size=cell.batch_size,
                  seed=cell.seed)
    return [f"{k} {wanted[k]!r} -> {record.get(k)!r}" for k in wanted
            if record.get(k) is not None and record.get(k) != wanted[k]]


def _fingerprint(record: dict) -> Optional[str]:
    fp = (record.get("data") or {}).get("data_fingerprint")
    return fp.get("sha256") if isinstance(fp, dict) else None


def _reference_print(prints: dict, grid: G.GridConfig) -> str:
    """The study's data when its cells disagree: the data as it is now if some cell recorded it, else
    the fingerprint most cells recorded."""
    data_dir = grid.fixed.get("data_dir")
    try:
        now = (data_fingerprint(data_dir) or {}).get("sha256") if data_dir and Path(data_dir).is_dir() else None
    except (OSError, ValueError):
        now = None
    return now if now in prints.values() else Counter(prints.values()).most_common(1)[0][0]


def _copy_note(study_dir: Path, copy: Optional[str]) -> str:
    if copy is None:
        return "no cell of this study"
    if StudyPaths(study_dir).exp(copy).exp_dir.is_dir():
        return f"a duplicate of {copy}"
    # renamed by hand: the cell's own folder is gone, so the cell counts as not run (and a rerun retrains it)
    return (f"a renamed copy of {copy}, whose own folder is missing: {copy} counts as not run; "
            "rename it back to count it")


def study_membership(study_dir, grid: G.GridConfig) -> Membership:
    """Sort the study's exp_ folders into its cells and the foreign ones (see the module docstring)."""
    study_dir = Path(study_dir)
    cells = {cell.name: cell for cell in G.study_cells(study_dir, grid)}
    out = Membership(cells)
    prints = {}
    for exp_dir in StudyPaths(study_dir).exp_dirs():
        name = exp_dir.name
        record = read_cell(exp_dir).record   # None when unreadable: the summary reports it
        if name not in cells:
            copy = copy_of(name, record, cells)
            out.foreign[name] = _copy_note(study_dir, copy)
            continue
        if record is None:
            continue
        diffs = _settings_differences(record, cells[name], grid)
        if diffs:
            out.foreign[name] = f"trained with other settings: {', '.join(diffs)}"
        elif _fingerprint(record):
            prints[name] = _fingerprint(record)
    if len(set(prints.values())) > 1:
        common = _reference_print(prints, grid)
        for name, value in prints.items():
            if value != common:
                out.foreign[name] = f"trained on other data (fingerprint {value}, the study's {common})"
    return out
