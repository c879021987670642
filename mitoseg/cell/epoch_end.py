"""The epoch-end validation of a training cell: one pass over the whole validation set, every score,
the best model, the history CSV, the state a rerun resumes from, and early stopping.

The training state (`new_train_state`: history, best epoch and scores, patience) is updated here
and written to `train_state.json` after each finished epoch; mitoseg/cell/run.py reads it back on resume.
The Keras callback class is built lazily (`validation_callback`) so importing this module does not
import Keras.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np

from mitoseg.cell import metrics
from mitoseg.cell.log import log
from mitoseg.core.io_utils import atomic_save, atomic_write_text

HISTORY_COLUMNS = ["epoch", "loss", "jaccard", "iou", "val_loss", "val_jaccard", "val_iou", "val_dice",
                   "val_precision", "val_recall", "val_predicted_foreground_fraction", "learning_rate", "time_s"]


def new_train_state() -> dict:
    """The epoch state of a cell that has not trained yet (see the module docstring; its file is
    ExperimentPaths.train_state)."""
    return {"history": [], "best_iou": None, "best_epoch": None, "best_scores": None, "wait": 0,
            "training_time_s": 0.0, "stopped_early": False}


def save_model(model, path: Path) -> None:
    atomic_save(path, lambda tmp: model.save(tmp))


def write_history(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in HISTORY_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _learning_rate(model) -> float:
    lr = model.optimizer.learning_rate
    return float(lr.numpy()) if hasattr(lr, "numpy") else float(lr)


def _history_row(epoch: int, logs: dict, val_loss: float, scores: dict, lr: float, seconds: float) -> dict:
    """One row of the history CSV for finished epoch `epoch` (1-based)."""
    return {"epoch": epoch, "loss": float(logs.get("loss", float("nan"))),
            "jaccard": float(logs.get("jaccard", float("nan"))), "iou": float(logs.get("iou", float("nan"))),
            "val_loss": val_loss, "val_jaccard": scores["soft_jaccard"], "val_iou": scores["iou"],
            "val_dice": scores["dice"], "val_precision": scores["precision"], "val_recall": scores["recall"],
            "val_predicted_foreground_fraction": scores["predicted_foreground_fraction"],
            "learning_rate": lr, "time_s": seconds}


def _add_epoch(state: dict, row: dict, scores: dict) -> bool:
    """Put the epoch's row into the state and update best and patience; True when it is the new best."""
    epoch = row["epoch"]
    # Idempotent per epoch: after a SIGKILL between this state write and the resume backup, the
    # rerun repeats this epoch; its row replaces the old one and nothing is counted twice.
    state["history"] = [r for r in state["history"] if r["epoch"] < epoch] + [row]
    state["training_time_s"] = float(sum(r["time_s"] for r in state["history"]))
    improved = state["best_iou"] is None or scores["iou"] > state["best_iou"]
    if improved:
        state.update(best_iou=scores["iou"], best_epoch=epoch, best_scores=scores, wait=0)
    else:
        state["wait"] = epoch - state["best_epoch"]
    return improved


def _log_epoch(row: dict, scores: dict, epochs: int, improved: bool) -> None:
    log(f"epoch {row['epoch']:>3}/{epochs}  loss {row['loss']:.4f}  val_loss {row['val_loss']:.4f}  "
        f"val_iou {scores['iou']:.4f}  val_soft_jaccard {scores['soft_jaccard']:.4f}  "
        f"pred_fg {scores['predicted_foreground_fraction']:.3f}  lr {row['learning_rate']:.2e}  "
        f"{row['time_s']:.1f}s" + ("  *best" if improved else ""))


def _should_stop_early(state: dict, patience: int) -> bool:
    if state["wait"] < patience:
        return False
    log(f"early stopping: no better val_iou for {state['wait']} epochs (best {state['best_iou']:.4f} "
        f"at epoch {state['best_epoch']})")
    state["stopped_early"] = True
    return True


def _make_validation_class():
    import keras

    class _Validation(keras.callbacks.Callback):
        """Once per epoch: predict the val patches once, compute val_loss and every score on the whole
        validation set (not a mean over batches), write them into `logs` for ReduceLROnPlateau, save the
        best model by thresholded IoU, stop early, rewrite the history CSV (whole, atomically) and persist
        the state needed to resume. Runs first in the callback list so the others see its values."""

        def __init__(self, x_val, y_val, config, paths, state):
            super().__init__()
            self.x_val, self.y_val, self.config, self.paths, self.state = x_val, y_val, config, paths, state
            self.epoch_start = None
            self.diverged_epoch = None
            self.interrupted = False
            self.partial_epoch = False   # training of this epoch stopped by a signal before its end
            self._epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch
            self.epoch_start = time.time()
            self.partial_epoch = False

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self._diverged(self._epoch + 1)
            if self.interrupted:
                self.model.stop_training = True
                self.partial_epoch = True

        def _diverged(self, epoch: int) -> None:
            self.diverged_epoch = self.diverged_epoch or epoch
            self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            if self.partial_epoch:
                # Keras calls on_epoch_end even after a mid-epoch stop: this epoch is NOT finished, so
                # neither the history nor the backup (mitoseg.cell.resume) may count it; the rerun repeats it.
                log(f"epoch {epoch + 1} stopped by a signal before its end: not recorded; the rerun repeats it")
                return
            probs = np.asarray(self.model.predict(self.x_val, batch_size=self.config.batch_size, verbose=0),
                               dtype=np.float32)
            if not np.all(np.isfinite(probs)) or not math.isfinite(float(logs.get("loss", 0.0))):
                self._diverged(epoch + 1)
                return
            val_loss = metrics.focal_loss(self.y_val, probs, self.config.focal_gamma)
            scores = metrics.score_all(self.y_val, probs, self.config.threshold)
            logs.update(val_loss=val_loss, val_iou=scores["iou"], val_jaccard=scores["soft_jaccard"])
            row = _history_row(epoch + 1, logs, val_loss, scores, _learning_rate(self.model),
                               time.time() - self.epoch_start)
            self._record(row, scores)

        def _record(self, row: dict, scores: dict) -> None:
            """Best model, history CSV, then the resume state: in this order, each file atomically."""
            improved = _add_epoch(self.state, row, scores)
            if improved:
                save_model(self.model, self.paths.model(self.config.save_format))
            write_history(self.paths.history_csv, self.state["history"])
            atomic_write_text(self.paths.train_state, json.dumps(self.state))
            _log_epoch(row, scores, self.config.epochs, improved)
            if _should_stop_early(self.state, self.config.early_stopping_patience):
                self.model.stop_training = True

    return _Validation


def validation_callback(x_val, y_val, config, paths, state):
    """The epoch-end validation callback of a cell (see the module docstring); `state` is updated in place."""
    return _make_validation_class()(x_val, y_val, config, paths, state)
