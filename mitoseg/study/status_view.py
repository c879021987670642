"""`run_study.py status`: where a study stands, read from its exp_ folders alone (any scheduler,
no scheduler query): per cell running / finished / failed / interrupted / stalled / missing, the
epoch and latest validation IoU of running cells, and an ETA from the measured epoch times.

How a state is decided (standard library only: this runs with the host Python):
- a readable results JSON with status ok/diverged: finished; failed / interrupted: as recorded,
  unless a file of the cell was written more than RERUN_MARGIN_S after that JSON (a rerun is on);
- otherwise (no JSON, or a rerun on): running when a file of the cell was written within the stall
  limit - 3 expected epoch times + STALL_GRACE_S, or NO_EPOCH_STALL_S while no epoch time is known -
  else stalled (killed without a trace, or very slow); no exp_ folder at all: missing.

ETA: every unfinished cell (running, stalled, interrupted, failed, missing) is assumed to run its
remaining epochs up to the configured maximum (early stopping only shortens it), at the mean epoch
time measured for cells of its architecture and batch size (else its architecture, else the whole
study), plus the mean start-up/test overhead of the finished cells, spread over as many cells at a
time as are running now (at least one).
"""
from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Optional

from mitoseg.core import grid as G
from mitoseg.core.paths import StudyPaths
from mitoseg.core.results import retry_exhausted
from mitoseg.study.site import resolved_retry_budget
from mitoseg.core.cell_state import read_cell
from mitoseg.study.console import fmt_duration, fmt_score
from mitoseg.core.membership import study_membership
from mitoseg.core.status import (DONE_STATUSES, EXIT_FAILED, EXIT_OK, FAILED, FINISHED, FOREIGN, INTERRUPTED, MISSING,
                                 RUNNING, STALLED, UNREADABLE)
from mitoseg.study.open import open_study
from mitoseg.core.version import version_info

RERUN_MARGIN_S = 30.0
STALL_GRACE_S = 15 * 60.0
NO_EPOCH_STALL_S = 2 * 3600.0


def read_history(path: Path) -> list[dict]:
    """Rows of a history CSV as {column: float or None}; [] when absent or unreadable."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return []
    out = []
    for row in rows:
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value)
            except (TypeError, ValueError):
                parsed[key] = None
        if parsed.get("epoch") is not None:
            out.append(parsed)
    return out


def last_write(exp_dir: Path) -> Optional[float]:
    """Newest modification time of any file of the cell (log, history, state, backup, events)."""
    newest = None
    for path in exp_dir.rglob("*"):
        try:
            if path.is_file():
                mtime = path.stat().st_mtime
                newest = mtime if newest is None or mtime > newest else newest
        except OSError:
            continue
    return newest


def scan_cell(study_dir: Path, cell: G.Cell, epochs_max: int, budget: int) -> dict:
    paths = StudyPaths(study_dir).exp(cell.name)
    row = dict(cell=cell, state=MISSING, epoch=0, epochs_max=epochs_max, latest_iou=None, best_iou=None,
               epoch_times=[], overhead_s=None, last_write=None, note="", attempts=None, kept=False, budget=budget)
    if not paths.exp_dir.is_dir():
        return row
    history = read_history(paths.history_csv)
    row["epoch"] = int(history[-1]["epoch"]) if history else 0
    row["epoch_times"] = [r["time_s"] for r in history if r.get("time_s") is not None]
    ious = [r["val_iou"] for r in history if r.get("val_iou") is not None]
    row["latest_iou"] = ious[-1] if ious else None
    row["best_iou"] = max(ious) if ious else None
    row["last_write"] = last_write(paths.exp_dir)
    read = read_cell(paths.exp_dir)
    record = read.record
    if read.state == UNREADABLE:
        row["note"] = f"unreadable results ({read.error})"[:120]
    if record is not None:
        row["attempts"] = record["attempts"]
        row["kept"] = retry_exhausted(record, budget=budget)   # a resubmission skips it: no part of the ETA
        json_time = read.path.stat().st_mtime
        rerun = record["status"] not in DONE_STATUSES and (row["last_write"] or 0) > json_time + RERUN_MARGIN_S
        if not rerun:
            row["state"] = FINISHED if record["status"] in DONE_STATUSES else record["status"]
            row["best_iou"] = record.get("best_val_iou")
            row["epoch"] = record.get("epochs_run") or row["epoch"]
            if record["status"] in DONE_STATUSES:
                row["note"] = record["status"] + (" (degenerate)" if record.get("degenerate") else "")
                if record.get("total_time_s") is not None and record.get("training_time_s") is not None:
                    row["overhead_s"] = max(0.0, record["total_time_s"] - record["training_time_s"])
            else:
                row["note"] = _attempts_note(record, budget) + (record.get("error") or "")
            return row
        row["note"] = f"rerun of a {record['status']} cell"
    row["state"] = RUNNING   # STARTED (or unreadable, or a rerun on): RUNNING or STALLED by the clock in `status_rows`
    return row


def _attempts_note(record: dict, budget: int) -> str:
    """How often a failed cell was tried, and whether a resubmission retries it."""
    if record["status"] != FAILED:
        return ""
    kept = " (not retried without --retry-failed)" if retry_exhausted(record, budget=budget) else ""
    return f"attempt {record['attempts']}/{budget}{kept}: "


def expected_epoch_s(row: dict, rows: list[dict]) -> Optional[float]:
    if row["epoch_times"]:
        return statistics.fmean(row["epoch_times"])
    cell = row["cell"]
    for same in (lambda c: c.architecture == cell.architecture and c.batch_size == cell.batch_size,
                 lambda c: c.architecture == cell.architecture, lambda c: True):
        times = [t for r in rows if same(r["cell"]) for t in r["epoch_times"]]
        if times:
            return statistics.fmean(times)
    return None


def status_rows(study_dir, grid: G.GridConfig, now: Optional[float] = None, members=None) -> list[dict]:
    study_dir = Path(study_dir)
    now = time.time() if now is None else now
    members = members or study_membership(study_dir, grid)
    budget, _ = resolved_retry_budget(study_dir)
    rows = [scan_cell(study_dir, cell, cell.train_config(grid).epochs, budget) for cell in members.cells.values()]
    for row in rows:
        why = members.foreign.get(row["cell"].name)
        if why:   # another cell's results in this cell's folder: not run, as far as this study is concerned
            row.update(state=FOREIGN, epoch=0, best_iou=None, overhead_s=None, epoch_times=[], note=why)
    for row in rows:
        row["epoch_s"] = expected_epoch_s(row, rows)
        if row["state"] == RUNNING:
            limit = NO_EPOCH_STALL_S if row["epoch_s"] is None else 3 * row["epoch_s"] + STALL_GRACE_S
            if row["last_write"] is None or now - row["last_write"] > limit:
                row["state"] = STALLED
                row["note"] = (row["note"] + "; " if row["note"] else "") + "no file written for " + \
                    fmt_duration(None if row["last_write"] is None else now - row["last_write"]) + ": killed? rerun it"
    return rows


def eta_seconds(rows: list[dict]) -> tuple[Optional[float], int]:
    """(seconds until every unfinished cell is done, or None when no epoch was measured yet; cells at a time)."""
    overheads = [r["overhead_s"] for r in rows if r["overhead_s"] is not None]
    overhead = statistics.fmean(overheads) if overheads else 0.0
    todo = [r for r in rows if r["state"] != FINISHED and not r["kept"]]
    if not todo:
        return 0.0, 0
    parallel = max(1, sum(r["state"] == RUNNING for r in rows))
    total = 0.0
    for r in todo:
        if r["epoch_s"] is None:
            return None, parallel
        done = r["epoch"] if r["state"] in (RUNNING, STALLED, INTERRUPTED) else 0   # foreign: from scratch
        total += max(0, r["epochs_max"] - done) * r["epoch_s"] + overhead
    return total / parallel, parallel


def render(rows: list[dict], now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    head = (f"{'idx':>3}  {'cell':<44} {'state':<11} {'epoch':>7} {'val IoU':>7} {'best':>6} "
            f"{'s/epoch':>7} {'last write':>10}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        epoch = f"{r['epoch']}/{r['epochs_max']}" if r["state"] != MISSING else "-"
        latest = r["latest_iou"] if r["state"] in (RUNNING, STALLED) else None
        ago = "-" if r["last_write"] is None else fmt_duration(now - r["last_write"]) + " ago"
        lines.append(f"{r['cell'].index:>3}  {r['cell'].name:<44} {r['state']:<11} {epoch:>7} {fmt_score(latest):>7} "
                     f"{fmt_score(r['best_iou']):>6} {fmt_duration(r['epoch_s']):>7} {ago:>10}  {r['note']}")
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append("")
    lines.append(f"{len(rows)} cells: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    eta, parallel = eta_seconds(rows)
    kept = sum(r["kept"] for r in rows)
    if eta == 0.0 and not parallel:
        lines.append("every cell finished" + (f", except {kept} failed {rows[0]['budget']} times: a resubmission retries "
                                               "them only with --retry-failed" if kept else ""))
    elif eta is None:
        lines.append("ETA: unknown until a first epoch has been measured")
    else:
        lines.append(f"ETA: {fmt_duration(eta)} with {parallel} cell(s) at a time as now, if every unfinished cell "
                     "(failed and missing ones included, as a resubmission reruns them, unless out of retries) runs all its epochs at "
                     "the measured epoch times; early stopping makes it shorter")
    return "\n".join(lines)


def status_json(study_dir, rows: list[dict]) -> str:
    """`status --json`: the study, one object per cell (its state as in the table) and the ETA."""
    eta, parallel = eta_seconds(rows)
    cells = [dict(index=r["cell"].index, name=r["cell"].name, stage=r["cell"].stage, state=r["state"],
                  epoch=r["epoch"], epochs_max=r["epochs_max"], latest_val_iou=r["latest_iou"],
                  best_val_iou=r["best_iou"], epoch_s=r["epoch_s"], last_write=r["last_write"], note=r["note"],
                  attempts=r["attempts"])
             for r in rows]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return json.dumps(dict(study=str(Path(study_dir).resolve()), code=version_info(), cells=cells,
                           counts=counts, eta_s=eta, cells_at_a_time=parallel), indent=2)


def show(study_dir, log=print, as_json: bool = False) -> int:
    """Print the table (or the JSON). EXIT_FAILED when at least one cell failed (its results JSON
    records an error to look at), else EXIT_OK, also while cells are running, stalled, interrupted
    or missing: those are states of progress, which a resubmission resumes or reruns."""
    grid = open_study(study_dir, create=False, check_cells=False)   # shows foreign cells, never refuses them
    members = study_membership(study_dir, grid)
    rows = status_rows(study_dir, grid, members=members)
    log(status_json(study_dir, rows) if as_json else render(rows))
    if members.note() and not as_json:
        log("note: " + members.note())
    return EXIT_FAILED if any(r["state"] == FAILED for r in rows) else EXIT_OK
