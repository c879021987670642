"""TensorBoard event files of one cell: per-epoch curves and its hyperparameters (HParams plugin).

`tensorboard --logdir STUDY` then shows every cell as one run (`exp_.../tensorboard`) with its
curves, and the HParams dashboard lists every cell with its hyperparameters and final metrics.

What is written, into `ExperimentPaths.tensorboard_dir`:
- per epoch, at step = the 1-based epoch number: the scalars named in EPOCH_TAGS, taken from the
  row the validation callback just appended to the cell's history (so they equal the history CSV);
- once per run: the cell's hyperparameters (`hparams`, trial id = the exp_ folder name);
- at the end of training: the best epoch's validation scores under `final/` (the grid selects on
  validation IoU; held-out test scores stay in the results JSON).

Resume without duplicated steps: a rerun deletes the cell's old event files and writes the history
of every epoch it keeps (the same rows as the history CSV) into a new file, then goes on epoch by
epoch. A repeated epoch (a run killed after its history row but before its Keras backup) thus
appears once, with the values of the run that finished it. Replayed points carry the wall time of
the rerun; use the step axis.

TensorFlow's `tf.summary` writes the events; `tensorboard` (a requirement) provides the HParams API.
Logging problems never fail a cell: one warning line, then the cell trains without TensorBoard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from mitoseg.core.scores import finite
from mitoseg.core.errors import error_line

EVENT_FILE_PREFIX = "events.out.tfevents."
# history column -> TensorBoard tag
EPOCH_TAGS = {"loss": "loss", "val_loss": "val_loss", "val_iou": "val_iou", "val_dice": "val_dice",
              "learning_rate": "learning_rate", "time_s": "epoch_time_s"}
# training-state key (best_scores[...] for the scores) -> tag written at the end of training
FINAL_TAGS = {"iou": "final/best_val_iou", "dice": "final/best_val_dice",
              "precision": "final/best_val_precision", "recall": "final/best_val_recall"}
# TrainConfig fields shown as hyperparameters: the grid axes first, then fixed settings worth comparing
HPARAM_FIELDS = ("architecture", "learning_rate", "batch_size", "seed", "epochs", "patch_size", "base_filters",
                 "depth", "augment", "head", "mixed_precision", "jit_compile", "data_dir")


def hparams_of(config) -> dict:
    """{name: bool/int/float/str} for the HParams plugin (None is not allowed there)."""
    out = {}
    for name in HPARAM_FIELDS:
        value = getattr(config, name)
        if name == "data_dir" and value is None:
            value = "synthetic"
        out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class CellBoard:
    """The event files of one cell. `start` (re)writes the kept history, `epoch` adds one row."""

    def __init__(self, log_dir, trial_id: str, hparams: dict, warn=print):
        self.log_dir, self.trial_id, self.hparams, self.warn = Path(log_dir), trial_id, hparams, warn
        self.writer = None
        self.written: set = set()
        self.disabled = False

    def _guard(self, what, fn, *args) -> None:
        if self.disabled:
            return
        try:
            fn(*args)
        except Exception as err:  # never fail training for its dashboard
            self.disabled = True
            self.warn(f"warning: TensorBoard logging stopped for this cell ({what}: {error_line(err)}); "
                      "training goes on")

    def start(self, kept_rows: list) -> None:
        self._guard("start", self._start, kept_rows)

    def _start(self, kept_rows: list) -> None:
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob(EVENT_FILE_PREFIX + "*"):
            old.unlink()
        self.writer = tf.summary.create_file_writer(str(self.log_dir))
        with self.writer.as_default():
            hp.hparams(self.hparams, trial_id=self.trial_id)
        for row in kept_rows:
            self._epoch(row)

    def epoch(self, row: dict) -> None:
        self._guard("epoch", self._epoch, row)

    def _epoch(self, row: dict) -> None:
        import tensorflow as tf
        step = int(row["epoch"])
        if self.writer is None or step in self.written:
            return
        with self.writer.as_default(step=step):
            for column, tag in EPOCH_TAGS.items():
                value = row.get(column)
                if finite(value):
                    tf.summary.scalar(tag, float(value))
        self.writer.flush()
        self.written.add(step)

    def final(self, best_scores: Optional[dict], best_epoch: Optional[int], step: int) -> None:
        self._guard("final", self._final, best_scores, best_epoch, step)

    def _final(self, best_scores, best_epoch, step) -> None:
        import tensorflow as tf
        if self.writer is None or not best_scores:
            return
        with self.writer.as_default(step=max(1, int(step))):
            for key, tag in FINAL_TAGS.items():
                if best_scores.get(key) is not None:
                    tf.summary.scalar(tag, float(best_scores[key]))
            if best_epoch is not None:
                tf.summary.scalar("final/best_epoch", float(best_epoch))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self._guard("close", self.writer.close)
            self.writer = None


def tensorboard_callbacks(config, paths, state, warn=print) -> list:
    """[a Keras callback writing this cell's events], or [] when `config.tensorboard` is off.
    `state` is the training state the validation callback keeps (its `history` rows, best scores);
    this callback must come after that one in the callback list."""
    if not getattr(config, "tensorboard", True):
        return []
    import keras
    board = CellBoard(paths.tensorboard_dir, paths.name, hparams_of(config), warn)

    class _TensorBoardLog(keras.callbacks.Callback):
        started = False

        def _start(self, first_epoch: int):
            # The rows before the epoch Keras resumes at are final; a row at or after it is redone.
            board.start([r for r in state["history"] if r["epoch"] <= first_epoch])
            self.started = True

        def on_epoch_begin(self, epoch, logs=None):
            if not self.started:
                self._start(epoch)

        def on_epoch_end(self, epoch, logs=None):
            rows = state["history"]
            if rows and rows[-1]["epoch"] == epoch + 1:   # absent for a cut-short or diverged epoch
                board.epoch(rows[-1])

        def on_train_end(self, logs=None):
            if not self.started:
                self._start(len(state["history"]))
            board.final(state.get("best_scores"), state.get("best_epoch"), len(state["history"]))
            board.close()

    return [_TensorBoardLog()]
