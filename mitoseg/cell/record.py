"""The results record of one training cell: the record a cell starts with (status failed until it
proves otherwise), the failure record of an exception, and the final scores written into the results
JSON. The results JSON is the last file a cell writes: its presence with a finished status means the
cell is done (mitoseg/core/status.py).
"""
from __future__ import annotations

import datetime as _dt
import errno
import time
import traceback

import numpy as np

from mitoseg.cell.log import log
from mitoseg.core.scores import degenerate_reason
from mitoseg.core.config import TrainConfig
from mitoseg.core.errors import error_line
from mitoseg.core.paths import ExperimentPaths
from mitoseg.core.results import empty_record, save_results
from mitoseg.core.status import FAILED, INTERRUPTED, OK

# errno values of a full or read-only disk: one line names the folder, no traceback
_DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)


def new_record(config: TrainConfig, paths: ExperimentPaths, split: dict, baselines: dict, started: float) -> dict:
    """The cell's record before training: settings, data split (the same dict: the test evaluation adds
    to it), trivial baselines and file names; status failed until the cell finishes."""
    return empty_record(
        experiment_id=paths.name, status=FAILED, architecture=config.architecture,
        learning_rate=float(config.learning_rate), batch_size=int(config.batch_size), seed=int(config.seed),
        task_index=config.task_index, config=config.to_dict(), data=split,
        foreground_fraction=baselines["foreground_fraction"],
        all_foreground_jaccard=baselines["all_foreground_jaccard"],
        all_background_jaccard=baselines["all_background_jaccard"],
        started_at=_dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        files={"log": paths.log.name, "history": paths.history_csv.name,
               "model": paths.model(config.save_format).name},
    )


def record_failure(record: dict, err: BaseException, paths: ExperimentPaths) -> None:
    """Status and one-line error of a cell stopped by `err` (Ctrl-C: interrupted; anything else, OOM
    included: failed). The traceback goes to the log, except for a full or read-only disk."""
    if isinstance(err, KeyboardInterrupt):
        record.update(status=INTERRUPTED, error="KeyboardInterrupt")
        return
    text = error_line(err, limit=500)
    disk = isinstance(err, OSError) and err.errno in _DISK_ERRNOS
    if disk and not err.filename:   # Keras' save errors do not name the file: name the folder
        text = f"{text} (writing into {paths.exp_dir})"[:500]
    record.update(status=FAILED, error=text)
    if not disk:   # a full/read-only disk needs no traceback, just the one line the caller logs
        traceback.print_exc()


def finish_record(record: dict, state: dict, config: TrainConfig, paths: ExperimentPaths, started: float) -> dict:
    """Fill the score fields from the training state and write the results JSON (last, atomically)."""
    history = state["history"]
    best = state.get("best_scores") or {}
    val_losses = [r["val_loss"] for r in history[-10:]]
    final = history[-1] if history else {}
    record.update(
        epochs_run=len(history), best_epoch=state["best_epoch"], epochs_to_best=state["best_epoch"],
        best_val_iou=best.get("iou"), best_val_dice=best.get("dice"), best_val_precision=best.get("precision"),
        best_val_recall=best.get("recall"), best_val_jaccard=best.get("soft_jaccard"),
        val_predicted_foreground_fraction=best.get("predicted_foreground_fraction"),
        final_val_loss=final.get("val_loss"), final_train_loss=final.get("loss"),
        overfitting_gap=(final["val_loss"] - final["loss"]) if final else None,
        val_loss_stability=float(np.std(val_losses, ddof=1)) if len(val_losses) >= 2 else None,
        training_time_s=state["training_time_s"], total_time_s=time.time() - started,
        finished_at=_dt.datetime.now().isoformat(timespec="seconds"),
    )
    reason = degenerate_reason(record["best_val_iou"], record["all_foreground_jaccard"],
                               record["val_predicted_foreground_fraction"])
    record["degenerate"] = reason is not None and record["status"] in (OK, INTERRUPTED)
    record["degenerate_reason"] = reason if record["degenerate"] else None
    save_results(paths.results_json, record)
    if record["status"] == OK:
        flag = f"  DEGENERATE: {reason}" if record["degenerate"] else ""
        log(f"{paths.name}: best val_iou {record['best_val_iou']:.4f} at epoch {record['best_epoch']} "
            f"(all-foreground baseline {record['all_foreground_jaccard']:.4f}; soft Jaccard "
            f"{record['best_val_jaccard']:.4f}){flag}")
    log(f"results: {paths.results_json}")
    return record
