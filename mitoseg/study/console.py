"""What the runners print about cells: one row dict per cell (the local runner's progress lines and
its results table), the results table, and the duration / score formats every console table uses
(mitoseg/study/status_view.py and mitoseg/study/verify.py too).

Standard library only: an array element runs it with the *host* Python.
"""
from __future__ import annotations

from typing import Optional

from mitoseg.core.status import DONE_STATUSES


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_score(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def cell_row(cell, state: str, record: dict, note: str, seconds: Optional[float] = None,
             code: Optional[int] = None) -> dict:
    """A cell's row: its state, a note, the scores of its results record ({} when none), the
    seconds it ran here and train_one.py's exit code (None when it did not run here)."""
    return dict(cell=cell, state=state, note=note, iou=record.get("best_val_iou"),
                baseline=record.get("all_foreground_jaccard"), epochs=record.get("epochs_run"),
                seconds=seconds, code=code)


def results_table(rows: dict) -> str:
    """{index: row} as the table `run_study.py local` prints at the end."""
    head = f"{'idx':>3}  {'cell':<44} {'status':<11} {'val IoU':>7} {'all-fg':>6} {'epochs':>6} {'time':>8}  note"
    lines = [head, "-" * len(head)]
    for idx in sorted(rows):
        r = rows[idx]
        lines.append(f"{idx:>3}  {r['cell'].name:<44} {r['state']:<11} {fmt_score(r['iou']):>7} "
                     f"{fmt_score(r['baseline']):>6} {str(r['epochs'] if r['epochs'] is not None else '-'):>6} "
                     f"{fmt_duration(r['seconds']):>8}  {r['note']}")
    return "\n".join(lines)


def progress_line(done: int, total: int, row: dict, elapsed: float, eta: float) -> str:
    """The local runner's line for a cell that just ended; the note only when it did not finish."""
    note = row["note"] if row["state"] not in DONE_STATUSES and row["note"] else ""
    return (f"[{done}/{total}] {row['cell'].name}: {row['state']}  best_val_iou {fmt_score(row['iou'])} "
            f"(all-foreground {fmt_score(row['baseline'])})  "
            f"cell {fmt_duration(row['seconds'])}  elapsed {fmt_duration(elapsed)}  "
            f"ETA {fmt_duration(eta)}" + (f"  [{note}]" if note else ""))
