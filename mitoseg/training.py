"""Train one grid cell: data -> model -> fit -> best model -> results JSON. `train_one.py` calls `run_cell`.

Order of work is chosen so bad input loses nothing: the config and the data are checked before the
exp_ folder is touched; every file is written atomically; the results JSON comes last, so its
presence with status ok means the cell is finished. A cell stopped by SIGTERM (walltime) keeps a
backup of its last finished epoch and records `interrupted`; the next run continues from there.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import io
import json
import math
import os
import platform
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import numpy as np

from . import metrics, resume
from .checks import degenerate_reason
from .config import TrainConfig
from .io_utils import atomic_save, atomic_write_text
from .paths import ExperimentPaths
from .results import ResultsError, empty_record, load_results, save_results
from .status import DONE_STATUSES

HISTORY_COLUMNS = ["epoch", "loss", "jaccard", "iou", "val_loss", "val_jaccard", "val_iou", "val_dice",
                   "val_precision", "val_recall", "val_predicted_foreground_fraction", "learning_rate", "time_s"]
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3
EXIT_BUSY = 4   # another process holds the cell's lock (mitoseg/celllock.py): nothing was done


def log(message: str) -> None:
    print(message, flush=True)


# --- data ------------------------------------------------------------------------------------------
def load_cell_data(config: TrainConfig, cache_dir=None):
    """(train Volume, test Volume or None). DataError on bad input, before anything is written.

    With `cache_dir` (a study's `StudyPaths.cache_dir`) the decoded volumes are
    cached there once per study and memory-mapped by later cells (see mitoseg/cache.py)."""
    from . import data
    from .synthetic import synthetic_volumes

    def load():
        if config.data_dir is None:
            return synthetic_volumes(config.synthetic_slices, config.synthetic_size)
        train, test = data.load_dataset(config.data_dir)
        if test is None and config.test_fraction > 0:
            train, test = hold_out_test_slices(train, config.test_fraction)
        return train, test

    if cache_dir is None:
        return load()
    from .cache import cached_volumes
    return cached_volumes(cache_dir, config, load, log=log)


def hold_out_test_slices(volume, test_fraction: float):
    """Split a contiguous block of whole slices off the start of the stack as the test volume."""
    from . import data
    from .patches import split_slices
    n = len(volume.images)
    if n < 3:
        raise data.DataError(f"{volume.source}: {n} slices are too few to hold out test slices")
    rest, test_idx = split_slices(n, test_fraction, "start")
    test = data.Volume(volume.images[test_idx], volume.masks[test_idx],
                       [volume.slice_names[i] for i in test_idx], f"{volume.source} slices {test_idx[0]}..{test_idx[-1]}",
                       volume.scaling)
    train = data.Volume(volume.images[rest], volume.masks[rest], [volume.slice_names[i] for i in rest],
                        f"{volume.source} slices {rest[0]}..{rest[-1]}", volume.scaling)
    return train, test


def prepare_arrays(train_volume, config: TrainConfig, cache_dir=None) -> dict:
    """Split whole slices, cut patches. Returns arrays (N, p, p, C) and the split's record.

    With `cache_dir` the arrays are cached once per study; the train arrays then come back as
    read-only memory maps (fed by `make_train_dataset` batch by batch), the val arrays in memory."""
    from .patches import split_slices, tile_patches

    def prepare():
        train_idx, val_idx = split_slices(len(train_volume.images), config.val_fraction, config.val_position)
        p = config.patch_size
        x_train = tile_patches(train_volume.images[train_idx], p)[..., None]
        y_train = tile_patches(train_volume.masks[train_idx], p)[..., None].astype(np.float32)
        x_val = tile_patches(train_volume.images[val_idx], p)[..., None]
        y_val = tile_patches(train_volume.masks[val_idx], p)[..., None].astype(np.float32)
        if config.input_channels == 3:
            x_train, x_val = np.repeat(x_train, 3, axis=-1), np.repeat(x_val, 3, axis=-1)
        split = {"source": train_volume.source, "n_slices": int(len(train_volume.images)),
                 "slice_shape": list(train_volume.images.shape[1:]),
                 "train_slices": [int(i) for i in train_idx], "val_slices": [int(i) for i in val_idx],
                 "val_slice_names": [train_volume.slice_names[i] for i in val_idx],
                 "n_train_patches": int(len(x_train)), "n_val_patches": int(len(x_val)),
                 "train_foreground_fraction": float(y_train.mean()), "scaling": train_volume.scaling}
        return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "split": split}

    if cache_dir is None:
        return prepare()
    from .cache import cached_arrays
    return cached_arrays(cache_dir, train_volume, config, prepare, log=log)


def make_train_dataset(x, y, config: TrainConfig):
    """tf.data: shuffle (seeded), batch, optional flips/rot90 on image and mask together, prefetch.

    Only indices are shuffled; each batch is gathered from `x`/`y` (numpy arrays or the cache's
    memory maps), so the arrays are never copied whole into TensorFlow. The batches are the same
    as shuffling the examples themselves (same seed, same buffer size)."""
    import tensorflow as tf
    n = len(x)
    dtypes = (tf.as_dtype(x.dtype), tf.as_dtype(y.dtype))

    def gather(idx):
        return np.asarray(x[idx]), np.asarray(y[idx])

    def load(idx):
        bx, by = tf.numpy_function(gather, [idx], dtypes, stateful=False)
        bx.set_shape((None,) + tuple(x.shape[1:]))
        by.set_shape((None,) + tuple(y.shape[1:]))
        return bx, by

    ds = tf.data.Dataset.range(n).shuffle(n, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if config.augment:  # per example, so every patch of a batch gets its own transform
        def augment(img, msk):
            both = tf.concat([img, msk], axis=-1)
            k = tf.random.uniform([], 0, 4, dtype=tf.int32)
            both = tf.image.rot90(both, k)
            both = tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.image.flip_left_right(both), lambda: both)
            return both[..., :-1], both[..., -1:]
        ds = ds.unbatch().map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(config.batch_size)
        # unbatch() makes the length unknown: Keras would then run into the end of the data and warn
        # "Your input ran out of data" every epoch. The batch count is unchanged, so state it.
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-n // config.batch_size)))
    return ds.prefetch(tf.data.AUTOTUNE)


def build_compiled_model(config: TrainConfig):
    """The cell's model, compiled as every cell trains it: Adam with gradient-norm clipping, binary
    focal loss, and the soft Jaccard and thresholded IoU shown per batch."""
    import keras
    from focal_loss import BinaryFocalLoss

    from models import build_model
    p = config.patch_size
    model = build_model(config.architecture, (p, p, config.input_channels), base_filters=config.base_filters,
                        depth=config.depth, dropout=config.dropout, batch_norm=config.batch_norm,
                        bn_momentum=config.bn_momentum, head=config.head,
                        attention_gate=config.attention_gate)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate, clipnorm=config.clipnorm),
                  loss=BinaryFocalLoss(gamma=config.focal_gamma),
                  metrics=[metrics.keras_soft_jaccard, metrics.keras_binary_iou(config.threshold)],
                  jit_compile=config.jit_compile)
    return model


def build_training_state(model, x_example, y_example) -> None:
    """Create every variable `fit` would create on its first step (optimizer slots, loss and metric
    trackers), eagerly on one example, then reset the metrics.

    Keras' TensorFlow trainer (without a distribution strategy) creates them inside the first trace
    of the train function; tf.function then traces the whole train step a second time because
    variables appeared. Building them first leaves one trace, about halving the time from `fit` to
    the first finished step of a demo cell (README, Speed; `bench/bench_startup.py`)."""
    x = np.asarray(x_example, dtype="float32")
    y = np.asarray(y_example, dtype="float32")
    y_pred = model(x, training=False)   # training=False: BatchNorm statistics stay untouched
    model.compute_loss(x=x, y=y, y_pred=y_pred)   # no `training=`: Keras 3.3 lacks it; its default ignores it
    model.compute_metrics(x, y, y_pred, sample_weight=None)
    model.optimizer.build(model.trainable_variables)
    model.reset_metrics()


# --- environment -----------------------------------------------------------------------------------
def environment_info() -> dict:
    import importlib.metadata as md
    versions = {}
    for pkg in ("tensorflow", "keras", "focal-loss", "numpy", "pandas", "scipy", "scikit-image", "tifffile"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        import tensorflow as tf
        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:  # pragma: no cover - reported, never fatal
        gpus = []
    return {"packages": versions, "python": platform.python_version(), "host": socket.gethostname(),
            "platform": platform.platform(), "device": ("GPU: " + ", ".join(gpus)) if gpus else "CPU",
            "cpu_count": os.cpu_count(),
            "scheduler_job_id": os.environ.get("PBS_JOBID") or os.environ.get("SLURM_JOB_ID")}


# --- the epoch-end validation: one pass, whole validation set, all scores -------------------------
def _make_callback_class():
    """The validation callback class, built lazily so importing this module does not import Keras."""
    import keras

    class _Validation(keras.callbacks.Callback):
        """Once per epoch: predict the val patches once, compute val_loss and every score on the whole
        validation set (not a mean over batches), write them into `logs` for ReduceLROnPlateau, save the
        best model by thresholded IoU, stop early, append the history CSV and persist the state needed
        to resume. Runs first in the callback list so the others see its values."""

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
                self.diverged_epoch = self.diverged_epoch or self._epoch + 1
                self.model.stop_training = True
            if self.interrupted:
                self.model.stop_training = True
                self.partial_epoch = True

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            if self.partial_epoch:
                # Keras calls on_epoch_end even after a mid-epoch stop: this epoch is NOT finished, so
                # neither the history nor the backup (mitoseg.resume) may count it; the rerun repeats it.
                log(f"epoch {epoch + 1} stopped by a signal before its end: not recorded; the rerun repeats it")
                return
            probs = self.model.predict(self.x_val, batch_size=self.config.batch_size, verbose=0)
            probs = np.asarray(probs, dtype=np.float32)
            if not np.all(np.isfinite(probs)) or not math.isfinite(float(logs.get("loss", 0.0))):
                self.diverged_epoch = self.diverged_epoch or epoch + 1
                self.model.stop_training = True
                return
            val_loss = metrics.focal_loss(self.y_val, probs, self.config.focal_gamma)
            scores = metrics.score_all(self.y_val, probs, self.config.threshold)
            lr = float(self.model.optimizer.learning_rate.numpy()) if hasattr(
                self.model.optimizer.learning_rate, "numpy") else float(self.model.optimizer.learning_rate)
            logs.update(val_loss=val_loss, val_iou=scores["iou"], val_jaccard=scores["soft_jaccard"])
            row = {"epoch": epoch + 1, "loss": float(logs.get("loss", float("nan"))),
                   "jaccard": float(logs.get("jaccard", float("nan"))), "iou": float(logs.get("iou", float("nan"))),
                   "val_loss": val_loss, "val_jaccard": scores["soft_jaccard"], "val_iou": scores["iou"],
                   "val_dice": scores["dice"], "val_precision": scores["precision"], "val_recall": scores["recall"],
                   "val_predicted_foreground_fraction": scores["predicted_foreground_fraction"],
                   "learning_rate": lr, "time_s": time.time() - self.epoch_start}
            st = self.state
            # Idempotent per epoch: after a SIGKILL between this state write and the resume backup, the
            # rerun repeats this epoch; its row replaces the old one and nothing is counted twice.
            st["history"] = [r for r in st["history"] if r["epoch"] < epoch + 1] + [row]
            st["training_time_s"] = float(sum(r["time_s"] for r in st["history"]))
            improved = st["best_iou"] is None or scores["iou"] > st["best_iou"]
            if improved:
                st.update(best_iou=scores["iou"], best_epoch=epoch + 1, best_scores=scores, wait=0)
                save_model(self.model, self.paths.model(self.config.save_format))
            else:
                st["wait"] = epoch + 1 - st["best_epoch"]
            write_history(self.paths.history_csv, st["history"])
            atomic_write_text(self.paths.train_state, json.dumps(st))
            log(f"epoch {epoch + 1:>3}/{self.config.epochs}  loss {row['loss']:.4f}  val_loss {val_loss:.4f}  "
                f"val_iou {scores['iou']:.4f}  val_soft_jaccard {scores['soft_jaccard']:.4f}  "
                f"pred_fg {scores['predicted_foreground_fraction']:.3f}  lr {lr:.2e}  {row['time_s']:.1f}s"
                + ("  *best" if improved else ""))
            if st["wait"] >= self.config.early_stopping_patience:
                log(f"early stopping: no better val_iou for {st['wait']} epochs (best {st['best_iou']:.4f} "
                    f"at epoch {st['best_epoch']})")
                st["stopped_early"] = True
                self.model.stop_training = True

    return _Validation


def save_model(model, path: Path) -> None:
    atomic_save(path, lambda tmp: model.save(tmp))


def write_history(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in HISTORY_COLUMNS})
    atomic_write_text(path, buf.getvalue())


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            try:
                s.write(text)
                s.flush()
            except (OSError, ValueError):
                pass
        return len(text)

    def flush(self):
        for s in self.streams:
            with contextlib.suppress(OSError, ValueError):
                s.flush()


@contextlib.contextmanager
def tee_output(log_path: Path):
    """Copy stdout/stderr into the cell's training_log.txt (appending: reruns keep earlier logs)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as handle:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, handle), _Tee(old_err, handle)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old_out, old_err


def existing_status(paths: ExperimentPaths) -> Optional[str]:
    """Status of a finished results JSON, or None when the cell has to (re)run."""
    if not paths.results_json.exists():
        return None
    try:
        return load_results(paths.results_json)["status"]
    except ResultsError as err:
        log(f"warning: {err}; the cell will be rerun")
        return None


def _check_patch_fits(volume, patch_size: int) -> None:
    """DataError naming the files when a slice is smaller than the patch (train or test volume), before
    training: tiling would otherwise fail with a message that names no file, or only after training."""
    from .data import DataError
    if volume is None:
        return
    h, w = volume.images.shape[1:]
    if h < patch_size or w < patch_size:
        raise DataError(f"{volume.source}: slices of {h}x{w} pixels are smaller than the patch size "
                        f"{patch_size}; use --patch-size {min(h, w)} or less")


# --- the cell --------------------------------------------------------------------------------------
def run_cell(config: TrainConfig, exp_dir, force: bool = False, cache_dir=None) -> tuple[dict | None, int]:
    """Train one cell into `exp_dir`. Returns (results record or None, exit code).
    `cache_dir` (grid mode: the study's) shares decoded stacks and patches between cells."""
    started = time.time()
    exp_dir = Path(exp_dir)
    paths = ExperimentPaths(exp_dir)
    try:
        config.validate()
    except ValueError as err:
        log(f"error: {err}")
        return None, EXIT_BAD_INPUT
    finished = _finished_cell(paths, config, force)
    if finished is not None:
        return finished

    from .data import DataError
    from .identity import data_fingerprint
    try:
        train_volume, test_volume = load_cell_data(config, cache_dir)
        for volume in (train_volume, test_volume):
            _check_patch_fits(volume, config.patch_size)
        arrays = prepare_arrays(train_volume, config, cache_dir)
        arrays["split"]["data_fingerprint"] = data_fingerprint(config.data_dir)
    except DataError as err:
        log(f"error: {err}")
        return None, EXIT_BAD_INPUT
    from .celllock import try_lock
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        with open(paths.log, "a"):
            pass
        lock, holder = try_lock(exp_dir)
    except OSError as err:
        log(f"error: {exp_dir}: cannot write the experiment folder ({err.strerror or err})")
        return None, EXIT_FAILED
    if lock is None:
        log(f"{paths.name}: another process is training this cell ({holder}); moving on")
        return None, EXIT_BUSY
    with lock:
        finished = _finished_cell(paths, config, force)   # it may have finished while we loaded the data
        if finished is not None:
            return finished
        return _run_locked(config, paths, arrays, test_volume, force, started)


def _finished_cell(paths: ExperimentPaths, config: TrainConfig, force: bool):
    """(record, exit code) when the cell is finished with the settings and data of `config` (skip it), or
    one refusal line when it finished with others (--force retrains it); None when it has to run."""
    from .identity import data_fingerprint, finished_cell_differences
    status = existing_status(paths)
    if status not in DONE_STATUSES or force:
        return None
    record = load_results(paths.results_json)
    differs = finished_cell_differences(record, config.to_dict(), data_fingerprint(config.data_dir))
    if differs:
        log(f"error: {paths.exp_dir}: finished (status {status}) with other settings or data "
            f"({'; '.join(differs)}); rerun with --force to retrain it")
        return None, EXIT_BAD_INPUT
    if (record.get("data") or {}).get("data_fingerprint") is None and config.data_dir is not None:
        log(f"{paths.name}: no data fingerprint recorded (older results): skipping on its settings alone")
    log(f"{paths.name}: already finished (status {status}); skipping (same settings and data). Use --force to retrain.")
    return record, EXIT_OK


def _run_locked(config, paths, arrays, test_volume, force, started):
    exp_dir = paths.exp_dir
    for stale in exp_dir.glob(".*.tmp*"):   # temporary files of a run SIGKILLed mid-write (io_utils names)
        with contextlib.suppress(OSError):
            if stale.is_file():
                stale.unlink()

    with tee_output(paths.log):
        return _train(config, paths, arrays, test_volume, force, started)


def _train(config, paths, arrays, test_volume, force, started) -> tuple[dict, int]:
    name = paths.name
    log(f"=== {name} ({_dt.datetime.now().isoformat(timespec='seconds')}) ===")
    log("config: " + json.dumps(config.to_dict(), sort_keys=True))
    split = arrays["split"]
    baselines = metrics.trivial_baselines(arrays["y_val"])
    log(f"data: {split['source']}; train slices {len(split['train_slices'])} ({split['n_train_patches']} patches), "
        f"val slices {split['val_slices'][0]}..{split['val_slices'][-1]} ({split['n_val_patches']} patches); "
        f"val foreground {baselines['foreground_fraction']:.3f}, all-foreground IoU {baselines['all_foreground_jaccard']:.3f}")
    from .scaling import log_scaling
    log_scaling(split.get("scaling"), test_volume.scaling if test_volume is not None else None, log)
    record = empty_record(
        experiment_id=name, status="failed", architecture=config.architecture,
        learning_rate=float(config.learning_rate), batch_size=int(config.batch_size), seed=int(config.seed),
        task_index=config.task_index, config=config.to_dict(), data=split,
        foreground_fraction=baselines["foreground_fraction"],
        all_foreground_jaccard=baselines["all_foreground_jaccard"],
        all_background_jaccard=baselines["all_background_jaccard"],
        started_at=_dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        files={"log": paths.log.name, "history": paths.history_csv.name,
               "model": paths.model(config.save_format).name},
    )
    state = {"history": [], "best_iou": None, "best_epoch": None, "best_scores": None, "wait": 0,
             "training_time_s": 0.0, "stopped_early": False}
    validation = None
    stop_signal = []   # signals received before the callbacks exist (e.g. during the TensorFlow import)

    def on_sigterm(signum, frame):  # walltime/preemption: finish the batch, keep the backup
        log(f"received signal {signum}: stopping after this batch; rerun the cell to resume")
        stop_signal.append(signum)
        if validation is not None:
            validation.interrupted = True
    try:
        previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (run_cell called from a thread): no walltime handling
        previous_handler = None
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        record["environment"] = environment_info()
        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            import tensorflow as tf
            tf.config.experimental.enable_op_determinism()
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        resuming = paths.backup_dir.exists() and paths.train_state.exists() and not force
        if force:
            # A forced rerun overwrites the model and history: drop the old results first, so a rerun
            # killed half-way can never leave an old "ok" JSON beside a new, unfinished model.
            with contextlib.suppress(FileNotFoundError):
                paths.results_json.unlink()
        if resuming:
            try:
                loaded = json.loads(paths.train_state.read_text())
                if not isinstance(loaded, dict) or not isinstance(loaded.get("history"), list):
                    raise ValueError("not a training state")
                state.update(loaded)
            except (OSError, ValueError) as err:
                log(f"warning: {paths.train_state} is unreadable ({err}); starting the cell afresh")
                resuming = False
        if not resuming:
            # Without a readable state the backup must not be restored either: fit would skip the
            # epochs it holds while our history starts empty, losing those epochs from the record.
            import shutil
            shutil.rmtree(paths.backup_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                paths.train_state.unlink()
        p = config.patch_size
        model = build_compiled_model(config)
        build_training_state(model, arrays["x_train"][:1], arrays["y_train"][:1])
        log(f"model: {config.architecture}, {model.count_params():,} parameters, "
            f"device {record['environment']['device']}")
        validation = _make_callback_class()(arrays["x_val"], arrays["y_val"], config, paths, state)
        validation.interrupted = bool(stop_signal)

        callbacks = [
            validation,
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.reduce_lr_factor,
                                              patience=config.reduce_lr_patience, min_lr=config.min_lr, verbose=0),
            keras.callbacks.TerminateOnNaN(),
            resume.make_callback(paths.backup_dir, lambda: validation.partial_epoch),
        ]
        dataset = make_train_dataset(arrays["x_train"], arrays["y_train"], config)
        from .tensorboard_log import tensorboard_callbacks   # [] when config.tensorboard is off
        callbacks += tensorboard_callbacks(config, paths, state, log)
        initial_epoch = 0
        if resuming:
            log(f"resuming from the backup in {paths.backup_dir} (best val_iou so far {state['best_iou']})")
            try:
                initial_epoch = resume.restore(model, paths.backup_dir, log)
            except RuntimeError:   # the backup is gone now; its state must go too
                paths.train_state.unlink(missing_ok=True)
                raise
        if state.get("stopped_early"):
            log("this cell already stopped early; finishing its results")
        elif not stop_signal:
            model.fit(dataset, epochs=config.epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                      verbose=0, shuffle=False)
        if stop_signal:
            record.update(status="interrupted", error="stopped by SIGTERM (walltime or preemption); rerun to resume")
            return _finish(record, state, config, paths, started), EXIT_INTERRUPTED
        if validation.diverged_epoch is not None:
            record.update(status="diverged", diverged_epoch=validation.diverged_epoch,
                          error=f"loss became NaN/inf in epoch {validation.diverged_epoch}")
            log(f"diverged in epoch {validation.diverged_epoch}")
        elif state["best_epoch"] is None:
            raise RuntimeError("training finished without a single validated epoch")
        else:
            record["status"] = "ok"
        if state["best_epoch"] is not None and test_volume is not None:
            from models import load_model
            from .inference import evaluate_volume
            best = load_model(paths.model(config.save_format))
            val_probs = np.asarray(best.predict(arrays["x_val"], batch_size=config.batch_size, verbose=0))
            val_thr, _ = metrics.best_threshold(arrays["y_val"], val_probs)
            record["test"] = evaluate_volume(best, test_volume.images, test_volume.masks, p, config.threshold,
                                             val_threshold=val_thr, tta=config.test_tta,
                                             batch_size=config.batch_size, channels=config.input_channels,
                                             slice_names=test_volume.slice_names)
            split["test_source"] = test_volume.source
            split["test_scaling"] = test_volume.scaling
            split["test_slice_names"] = list(test_volume.slice_names)
            log(f"held-out test ({record['test']['n_slices']} whole slices, tiled): IoU {record['test']['iou']:.4f} "
                f"Dice {record['test']['dice']:.4f} (all-foreground baseline {record['test']['all_foreground_jaccard']:.4f})")
        code = EXIT_OK if record["status"] in ("ok", "diverged") else EXIT_FAILED
        record = _finish(record, state, config, paths, started)
        if record["status"] in DONE_STATUSES:
            import shutil
            shutil.rmtree(paths.backup_dir, ignore_errors=True)
        return record, code
    except BaseException as err:  # OOM (ResourceExhaustedError) and everything else -> failed, recorded
        if isinstance(err, KeyboardInterrupt):
            record.update(status="interrupted", error="KeyboardInterrupt")
        else:
            kind = type(err).__name__
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            disk = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)
            if disk and not err.filename:   # Keras' save errors do not name the file: name the folder
                text += f" (writing into {paths.exp_dir})"
            record.update(status="failed", error=f"{kind}: {text}"[:500])
            if not disk:   # a full/read-only disk needs no traceback, just the one line below
                traceback.print_exc()
        try:
            _finish(record, state, config, paths, started)
        except Exception as save_err:  # e.g. disk full: say so; nothing reads as success
            log(f"error: could not write {paths.results_json}: {save_err}")
        log(f"{paths.name}: {record['status']}: {record['error']}")
        return record, (EXIT_INTERRUPTED if record["status"] == "interrupted" else EXIT_FAILED)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _finish(record: dict, state: dict, config: TrainConfig, paths: ExperimentPaths, started: float) -> dict:
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
    record["degenerate"] = reason is not None and record["status"] in ("ok", "interrupted")
    record["degenerate_reason"] = reason if record["degenerate"] else None
    save_results(paths.results_json, record)
    if record["status"] == "ok":
        flag = f"  DEGENERATE: {reason}" if record["degenerate"] else ""
        log(f"{paths.name}: best val_iou {record['best_val_iou']:.4f} at epoch {record['best_epoch']} "
            f"(all-foreground baseline {record['all_foreground_jaccard']:.4f}; soft Jaccard "
            f"{record['best_val_jaccard']:.4f}){flag}")
    log(f"results: {paths.results_json}")
    return record
