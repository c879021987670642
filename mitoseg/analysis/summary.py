"""Study folder -> one summary row per cell (`hyperparameter_summary.csv`), and CSV -> checked DataFrame.

`build_summary(study_dir)` turns a study's results files into the rows the analysis reads. Every
expected cell of the study's grid gets a row: finished cells with their status (ok / diverged / failed /
interrupted), a results file that `load_results` refuses as "unreadable" (with the error), and a
cell without a results file as "missing" (not started, still running, or killed). Only the study's own
cells are read (mitoseg.core.membership): a foreign folder is listed, never a row.

`load_summary(csv)` is how the analysis reads a summary -- its own or a user-edited one, or the
original study's CSV with only soft scores. It reads it as hand-edited input (mitoseg.analysis.summary_checks),
checks the required columns, coerces types and recomputes `success` and `degenerate` from the numbers
(rule in `mitoseg.core.scores`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from mitoseg.core.cell_state import read_cell
from mitoseg.core.scores import degenerate_reason, finite_number
from mitoseg.core.config import TrainConfig
from mitoseg.core.grid import STAGES, load_study_grid
from mitoseg.core.membership import study_membership
from mitoseg.core.io_utils import atomic_write_text
from mitoseg.core.paths import StudyPaths, parse_cell_name
from mitoseg.core.status import FAILED, MISSING, OK, STARTED, UNREADABLE
from mitoseg.analysis.summary_checks import CsvProblem, keep_hand_edits, read_checked, record_written

# Columns of hyperparameter_summary.csv, in order. Field names as in mitoseg.core.results.RESULT_FIELDS
# where one exists; test_* come from the results' `test` dict.
SUMMARY_COLUMNS = [
    "experiment_id", "architecture", "learning_rate", "batch_size", "seed", "success", "status", "error",
    "epochs_run", "epochs_to_best", "best_val_jaccard", "best_val_iou", "best_val_dice",
    "final_val_loss", "final_train_loss", "overfitting_gap", "val_loss_stability", "training_time_s",
    "foreground_fraction", "all_foreground_jaccard", "val_predicted_foreground_fraction",
    "degenerate", "degenerate_reason", "test_iou", "test_dice", "test_all_foreground_jaccard",
    "task_index", "exp_dir", "stage", "test_slice_iou", "fold", "test_slice_counts", "threshold",
]
# stage: "grid" (selection) or "confirm" (fresh-seed reruns of the selected configurations; a
# hand-made CSV without the column is all grid). test_slice_iou: {slice name: IoU} as JSON text
# (schema 2 results; empty for older ones), for comparisons paired on test slices. fold: the data
# split's fold (0 when the CSV has no such column). test_slice_counts: [[slice name, tp, fp, fn], ...]
# in stack order as JSON text (schema 3 results; empty for older ones), for pooled IoU on resamples.
# threshold: the run's probability -> mask threshold (config.threshold; TrainConfig's default for a
# record without it), which every thresholded score (IoU, Dice) of the row used.
NUMERIC_COLUMNS = [
    "learning_rate", "batch_size", "seed", "epochs_run", "epochs_to_best", "best_val_jaccard", "best_val_iou",
    "best_val_dice", "final_val_loss", "final_train_loss", "overfitting_gap", "val_loss_stability",
    "training_time_s", "foreground_fraction", "all_foreground_jaccard", "val_predicted_foreground_fraction",
    "test_iou", "test_dice", "test_all_foreground_jaccard", "task_index", "threshold",
]
INTEGER_COLUMNS = ["batch_size", "seed", "epochs_run", "epochs_to_best", "task_index", "fold"]
REQUIRED_COLUMNS = ["architecture", "learning_rate", "batch_size"]
SCORE_COLUMNS = ["test_iou", "best_val_iou", "best_val_jaccard"]  # at least one must be present

class SummaryError(ValueError):
    """Bad input for the analysis (no study, no cells, CSV without required columns); one line."""


@dataclass
class StudyInventory:
    """What the study folder holds compared with what its grid expects."""
    expected: int                      # cells the grid expects (or rows found without a grid)
    counts: dict = field(default_factory=dict)   # status -> number of rows
    foreign: dict = field(default_factory=dict)  # exp_ folder -> why it is not one of the study's cells
    confirm_expected: int = 0                    # cells of the confirmation stage (confirm_config.json)
    foreign_note: Optional[str] = None           # the one line listing the foreign folders


def _num(value):
    number = finite_number(value)
    return np.nan if number is None else number


def record_to_row(record: dict, exp_dir: str) -> dict:
    """One summary row from a validated results record."""
    row = {col: np.nan for col in SUMMARY_COLUMNS}
    for col in SUMMARY_COLUMNS:
        if col in record and col not in ("exp_dir",):
            row[col] = record[col]
    test = record.get("test") if isinstance(record.get("test"), dict) else {}
    row["test_iou"] = _num(test.get("iou"))
    row["test_dice"] = _num(test.get("dice"))
    row["test_all_foreground_jaccard"] = _num(test.get("all_foreground_jaccard"))
    slices = test.get("slices")
    row["test_slice_iou"] = json.dumps({s["name"]: s["iou"] for s in slices}) if slices else None
    with_counts = slices and all(all(k in s for k in ("tp", "fp", "fn")) for s in slices)
    row["test_slice_counts"] = json.dumps([[s["name"], s["tp"], s["fp"], s["fn"]] for s in slices]) if with_counts else None
    row["fold"] = int((record.get("config") or {}).get("fold", 0))
    row["threshold"] = (record.get("config") or {}).get("threshold", TrainConfig.threshold)
    row["stage"] = "grid"
    row["success"] = record["status"] == OK
    row["degenerate"] = bool(record.get("degenerate"))
    row["exp_dir"] = exp_dir
    for col in NUMERIC_COLUMNS:
        row[col] = _num(row[col])
    return row


def _placeholder_row(name: str, status: str, error: str, cell=None) -> dict:
    row = {col: np.nan for col in SUMMARY_COLUMNS}
    info = parse_cell_name(name)
    if cell is not None:
        info = dict(architecture=cell.architecture, learning_rate=cell.learning_rate,
                    batch_size=cell.batch_size, seed=cell.seed, task_index=cell.index, fold=cell.fold)
    info.setdefault("fold", 0)
    row.update(info)
    row.update(experiment_id=name, status=status, error=error, success=False, degenerate=False, exp_dir=name,
               stage=getattr(cell, "stage", "grid"))
    return row


_NO_RESULT = {STARTED: "folder exists, no results file yet (still running, or killed)",
              MISSING: "no folder (not started yet)"}


def _read_cell(study_dir: Path, name: str, cell=None) -> dict:
    """The cell's summary row, read by the one reader (mitoseg/core/cell_state.py); the report reads results, not
    progress, so every cell without a result is MISSING."""
    read = read_cell(StudyPaths(study_dir).exp(name).exp_dir)
    if read.state in _NO_RESULT:
        return _placeholder_row(name, MISSING, _NO_RESULT[read.state], cell)
    if read.state == UNREADABLE:
        return _placeholder_row(name, UNREADABLE, read.error, cell)
    return record_to_row(read.record, name)


def build_summary(study_dir) -> tuple[pd.DataFrame, StudyInventory]:
    """Read every cell of a study folder into a summary DataFrame (columns SUMMARY_COLUMNS). With a
    grid, only the study's own cells are read (mitoseg.core.membership); a foreign folder is listed in the
    inventory, and a study cell whose folder is foreign is a missing row."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise SummaryError(f"study folder {study_dir} does not exist")
    if not StudyPaths(study_dir).grid_config.exists():
        rows = [_read_cell(study_dir, exp_dir.name) for exp_dir in StudyPaths(study_dir).exp_dirs()]
        if not rows:
            raise SummaryError(f"{study_dir}: no cells at all (no {StudyPaths(study_dir).grid_config.name} "
                               "and no exp_* folders)")
        df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        return df, StudyInventory(len(rows), df["status"].value_counts().to_dict())
    try:
        members = study_membership(study_dir, load_study_grid(study_dir))
    except ValueError as err:
        raise SummaryError(str(err)) from None
    rows = []
    for cell in members.cells.values():
        why = members.foreign.get(cell.name)
        row = _placeholder_row(cell.name, MISSING, f"its folder is not this cell's ({why})", cell) if why \
            else _read_cell(study_dir, cell.name, cell)
        row["stage"] = cell.stage
        rows.append(row)
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    inventory = StudyInventory(int((df["stage"] == "grid").sum()), df["status"].value_counts().to_dict(),
                               dict(members.foreign), int((df["stage"] == "confirm").sum()), members.note())
    return df, inventory


def study_summary(study_dir) -> tuple[pd.DataFrame, pd.DataFrame, StudyInventory]:
    """THE summary of a study folder, the same for the analysis, the confirmation stage and predict.py:
    (the rows as read, what the summary CSV holds; those rows checked by normalize_summary, what every
    statistic is computed on; the inventory)."""
    rows, inventory = build_summary(study_dir)
    return rows, normalize_summary(rows, str(study_dir)), inventory


def write_summary_csv(df: pd.DataFrame, path, say: Optional[Callable[[str], None]] = None) -> Path:
    """Write the summary CSV; a file there that the analysis did not write is kept first (summary_checks)."""
    path = Path(path)
    cols = [c for c in SUMMARY_COLUMNS if c in df.columns] + [c for c in df.columns if c not in SUMMARY_COLUMNS]
    out = df[cols].copy()
    for col in INTEGER_COLUMNS:
        if col in out.columns:
            values = pd.to_numeric(out[col], errors="coerce")
            if (values.dropna() == values.dropna().round()).all():
                out[col] = values.round().astype("Int64")
    text = out.to_csv(index=False)
    keep_hand_edits(path, text, say or print)
    atomic_write_text(path, text)
    record_written(path, text)
    return path


def _to_bool(series: pd.Series) -> pd.Series:
    def conv(v):
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, float, np.integer, np.floating)):
            return bool(v) if not (isinstance(v, float) and math.isnan(v)) else False
        return str(v).strip().lower() in ("true", "1", "yes", "y", "t")
    return series.map(conv).astype(bool)


def normalize_summary(df: pd.DataFrame, source: str = "summary") -> pd.DataFrame:
    """Check and coerce a summary table; recompute success and degenerate from the numbers.

    Required: architecture, learning_rate, batch_size and one score column (test_iou, best_val_iou or
    best_val_jaccard). Without `status`, a row is "ok" when `success` says so (or, without `success`,
    when it has a score). `degenerate` is recomputed with mitoseg.core.scores.degenerate_reason from
    best_val_iou / all_foreground_jaccard / val_predicted_foreground_fraction when those columns exist;
    otherwise the CSV's own `degenerate` column is kept (False when absent), and without any validation
    IoU the rule also runs on test IoU (_decide_degenerate).
    """
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SummaryError(f"{source}: required columns missing: {', '.join(missing)}")
    if not any(c in df.columns for c in SCORE_COLUMNS):
        raise SummaryError(f"{source}: no score column (need one of {', '.join(SCORE_COLUMNS)})")
    if len(df) == 0:
        raise SummaryError(f"{source}: no cells at all (the table has no rows)")
    for col in SUMMARY_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    for col in NUMERIC_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
        df.loc[~np.isfinite(df[col]), col] = np.nan
    df["architecture"] = df["architecture"].astype(object).where(df["architecture"].notna(), "unknown").astype(str)
    score_cols = [c for c in SCORE_COLUMNS if df[c].notna().any()]
    status = df["status"].astype(object)
    if status.isna().all():
        if "success" in df.columns and df["success"].notna().any():
            status = np.where(_to_bool(df["success"]), OK, FAILED)
        else:
            has_score = df[score_cols].notna().any(axis=1) if score_cols else pd.Series(False, index=df.index)
            status = np.where(has_score, OK, FAILED)
        status = pd.Series(status, index=df.index, dtype=object)
    df["status"] = status.where(pd.Series(status).notna(), MISSING).astype(str).str.strip()
    df["success"] = df["status"] == OK
    for col in ("error", "degenerate_reason", "experiment_id", "exp_dir", "test_slice_iou", "test_slice_counts"):
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    df["stage"] = _stages(df["stage"], source)
    df["fold"] = _folds(df["fold"], source)
    no_id = df["experiment_id"].isna()
    df.loc[no_id, "experiment_id"] = [
        f"{a}_lr{lr:g}_bs{int(bs) if bs == bs else 'NA'}" if lr == lr else f"{a}_row{i}"
        for i, (a, lr, bs) in enumerate(zip(df.loc[no_id, "architecture"], df.loc[no_id, "learning_rate"],
                                            df.loc[no_id, "batch_size"]))]
    return _decide_degenerate(df)


def _decide_degenerate(df: pd.DataFrame) -> pd.DataFrame:
    """THE degenerate flag of every summary row (mitoseg.core.scores.degenerate_reason on the row's numbers; the
    analysis, the confirmation stage and predict.py all read it from here). Only an ok run can be
    degenerate. With validation IoU and its all-foreground baseline: the rule on them (and the predicted
    foreground fraction). Without: the CSV's own flag; and for a summary without any validation IoU, whose
    headline is test IoU (mitoseg.analysis.stats.choose_metric), also the rule on test IoU and its baseline."""
    if df["best_val_iou"].notna().any() and df["all_foreground_jaccard"].notna().any():
        reasons = [degenerate_reason(i, b, f) if ok else None for ok, i, b, f in zip(
            df["success"], df["best_val_iou"], df["all_foreground_jaccard"], df["val_predicted_foreground_fraction"])]
        df["degenerate_reason"] = reasons
        df["degenerate"] = [r is not None for r in reasons]
        return df
    csv_degenerate = _to_bool(df["degenerate"]) if df["degenerate"].notna().any() else pd.Series(False, index=df.index)
    df["degenerate"] = csv_degenerate & df["success"]
    if df["best_val_iou"].isna().all() and df["test_iou"].notna().any():
        reasons = [degenerate_reason(s, b, None) if ok else None
                   for ok, s, b in zip(df["success"], df["test_iou"], df["test_all_foreground_jaccard"])]
        df["degenerate"] = [bool(r) or bool(v) for r, v in zip(reasons, df["degenerate"])]
        df["degenerate_reason"] = [r or v for r, v in zip(reasons, df["degenerate_reason"])]
    return df


def _stages(column: pd.Series, source: str) -> pd.Series:
    """The stage column: grid / confirm (any case); empty or absent = grid; anything else refused."""
    stage = column.astype(object).where(column.notna(), "grid").astype(str).str.strip().str.lower()
    stage = stage.replace("", "grid")
    bad = sorted(set(stage) - set(STAGES))
    if bad:
        raise SummaryError(f"{source}: column stage holds {', '.join(repr(b) for b in bad[:3])}; "
                           f"use {' or '.join(STAGES)}")
    return stage


def _folds(column: pd.Series, source: str) -> pd.Series:
    """The fold column as integers: empty or absent = fold 0; anything but an integer >= 0 refused."""
    text = column.astype(object).where(column.notna(), "0").astype(str).str.strip().replace("", "0")
    fold = pd.to_numeric(text, errors="coerce")
    bad = sorted(set(text[~(fold.notna() & (fold >= 0) & (fold == fold.round()))]))
    if bad:
        raise SummaryError(f"{source}: column fold holds {', '.join(repr(b) for b in bad[:3])}; "
                           "use integers >= 0 (0 when the data split has no folds)")
    return fold.astype(int)


def load_summary(path, say: Optional[Callable[[str], None]] = None) -> pd.DataFrame:
    """A summary CSV, checked as hand-edited input (mitoseg/analysis/summary_checks.py; `say` gets its notes)."""
    path = Path(path)
    if path.is_dir():
        raise SummaryError(f"summary file {path} is a folder, not a CSV file (a study folder is given with --study-dir)")
    if not path.is_file():
        raise SummaryError(f"summary file {path} does not exist")
    notes = []
    try:
        df = read_checked(path, REQUIRED_COLUMNS, NUMERIC_COLUMNS, notes.append)
    except CsvProblem as err:
        raise SummaryError(f"{path}: {err}") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SummaryError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    if notes and say is not None:
        say(f"  note: {path.name}: " + "; ".join(notes))
    return normalize_summary(df, str(path))
