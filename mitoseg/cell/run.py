"""One grid cell's life cycle: check -> data -> lock -> set-up -> resume -> fit -> test -> record.
`train_one.py` calls `run_cell`. Read top to bottom: `run_cell` checks the config, takes the cell's data
from one call (cell_data.prepare_cell_data) and locks the folder; from there one `CellRun` (config,
paths, data, record, epoch state, SIGTERM handler) is handed down: `_train` opens the record,
`_fit_and_record` builds (`_build`), fits, judges (`_judge`), tests (`_evaluate_test`) and writes the
results JSON (cell_record.finish_record).

Order of work is chosen so bad input loses nothing: the config and the data are checked before the
exp_ folder is touched; every file is written atomically (except the appended training_log.txt and
TensorBoard's event stream); the results JSON comes last, so its
presence with status ok means the cell is finished. A cell stopped by SIGTERM (walltime) keeps a
backup of its last finished epoch and records `interrupted`; the next run continues from there.
The Keras side (input pipeline, model, callbacks) is mitoseg/cell/keras_setup.py; the per-epoch work (validate,
history, best model, backup, early stop) is the callback of mitoseg/cell/epoch_end.py; the results record
is mitoseg/cell/record.py.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from mitoseg.cell import metrics, resume
from mitoseg.cell.epoch_end import new_train_state, validation_callback
from mitoseg.cell.inputs import CellData, prepare_cell_data
from mitoseg.cell.log import log, tee_output
from mitoseg.cell.record import finish_record, new_record, record_failure
from mitoseg.cell.lock import try_lock
from mitoseg.core.config import TrainConfig
from mitoseg.cell.environment import environment_info
from mitoseg.core.identity import data_fingerprint, finished_cell_differences
from mitoseg.core.errors import DataError
from mitoseg.core.paths import ExperimentPaths
from mitoseg.core.results import ResultsError, load_results, retry_budget, retry_exhausted
from mitoseg.data.scaling import log_scaling
from mitoseg.core.status import (DIVERGED, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK,
                                 INTERRUPTED, OK, is_done)


@dataclass
class CellRun:
    """One locked cell's run, handed down from step to step: what it trains (config, data), where it
    writes (paths), how it was started (force, start time), what it has so far (the results record,
    the epoch state that the validation callback keeps, the SIGTERM handler)."""
    config: TrainConfig
    paths: ExperimentPaths
    data: CellData
    force: bool
    started: float
    record: dict = field(default_factory=dict)
    state: dict = field(default_factory=new_train_state)
    stop: Optional["_StopSignal"] = None


def run_cell(config: TrainConfig, exp_dir, force: bool = False, cache_dir=None,
             retry_failed: bool = False, budget: Optional[int] = None) -> tuple[dict | None, int]:
    """Train one cell into `exp_dir`. Returns (results record or None, exit code).
    `cache_dir` (grid mode: the study's) shares decoded stacks and patches between cells. A cell that
    failed `budget` times (the caller resolves it with the site profile, mitoseg.study.site.resolved_retry_budget; None:
    mitoseg.core.results.retry_budget without one) is not retrained unless `retry_failed` (or `force`)."""
    started = time.time()
    exp_dir = Path(exp_dir)
    paths = ExperimentPaths(exp_dir)
    try:
        config.validate()
    except ValueError as err:
        log(f"error: {err}")
        return None, EXIT_BAD_INPUT
    finished = _finished_cell(paths, config, force, retry_failed, budget)
    if finished is not None:
        return finished

    try:
        cell_data = prepare_cell_data(config, cache_dir)
    except DataError as err:
        log(f"error: {err}")
        return None, EXIT_BAD_INPUT
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
        finished = _finished_cell(paths, config, force, retry_failed, budget)   # it may have finished while we loaded the data
        if finished is not None:
            return finished
        return _run_locked(CellRun(config, paths, cell_data, force, started))



def existing_record(paths: ExperimentPaths) -> Optional[dict]:
    """The cell's readable results JSON, or None when there is none (an unreadable one: said so). Found by
    the readers' one lookup rule (ExperimentPaths.find_results_json)."""
    path = paths.find_results_json()
    if not path.exists():
        return None
    try:
        return load_results(path)
    except ResultsError as err:
        log(f"warning: {err}; the cell will be rerun")
        return None


def existing_status(paths: ExperimentPaths) -> Optional[str]:
    """Status of a finished results JSON, or None when the cell has to (re)run."""
    record = existing_record(paths)
    return None if record is None else record["status"]


def _finished_cell(paths: ExperimentPaths, config: TrainConfig, force: bool, retry_failed: bool = False,
                   budget: Optional[int] = None):
    """(record, exit code) when the cell is finished with the settings and data of `config` (skip it), or
    one refusal line when it finished with others (--force retrains it), or failed its retry budget
    (--retry-failed retrains it); None when it has to run."""
    record = existing_record(paths)
    try:
        budget = retry_budget(paths.exp_dir.parent)[0] if budget is None else budget   # the study's, when in one
    except ValueError as err:
        log(f"error: {err}")
        return None, EXIT_BAD_INPUT
    if retry_exhausted(record, retry_failed or force, budget):
        log(f"{paths.name}: failed {record['attempts']} times (budget {budget}), last error: "
            f"{record.get('error')}; not retried. Pass --retry-failed to train it again.")
        return record, EXIT_FAILED
    status = None if record is None else record["status"]
    if not is_done(status) or force:
        return None
    differs = finished_cell_differences(record, config.to_dict(), data_fingerprint(config.data_dir))
    if differs:
        log(f"error: {paths.exp_dir}: finished (status {status}) with other settings or data "
            f"({'; '.join(differs)}); rerun with --force to retrain it")
        return None, EXIT_BAD_INPUT
    if (record.get("data") or {}).get("data_fingerprint") is None and config.data_dir is not None:
        log(f"{paths.name}: no data fingerprint recorded (older results): skipping on its settings alone")
    log(f"{paths.name}: already finished (status {status}); skipping (same settings and data). Use --force to retrain.")
    return record, EXIT_OK


def _run_locked(run: CellRun) -> tuple[dict, int]:
    for stale in run.paths.exp_dir.glob(".*.tmp*"):   # temporary files of a run SIGKILLed mid-write (io_utils names)
        with contextlib.suppress(OSError):
            if stale.is_file():
                stale.unlink()

    with tee_output(run.paths.log):
        return _train(run)


class _StopSignal:
    """The SIGTERM handler of a training cell (walltime/preemption): finish the batch, keep the backup."""

    def __init__(self):
        self.received = []    # signals received, also before the callbacks exist (e.g. during the TensorFlow import)
        self.validation = None

    def __call__(self, signum, frame):
        log(f"received signal {signum}: stopping after this batch; rerun the cell to resume")
        self.received.append(signum)
        if self.validation is not None:
            self.validation.interrupted = True


@contextlib.contextmanager
def _sigterm_handled():
    """A _StopSignal as the SIGTERM handler while the cell trains; the previous handler afterwards."""
    stop = _StopSignal()
    try:
        previous_handler = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (run_cell called from a thread): no walltime handling
        previous_handler = None
    try:
        yield stop
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _train(run: CellRun) -> tuple[dict, int]:
    """Train the locked cell; every outcome, an exception included, ends in a results JSON."""
    paths = run.paths
    baselines = _log_start(run)
    record = run.record = new_record(run.config, paths, run.data.split, baselines, run.started)
    previous = None if run.force else existing_record(paths)   # --force starts the count again
    record["attempts"] = 1 + (previous["attempts"] if previous is not None else 0)
    with _sigterm_handled() as stop:
        run.stop = stop
        try:
            return _fit_and_record(run)
        except BaseException as err:  # OOM (ResourceExhaustedError) and everything else -> failed, recorded
            record_failure(record, err, paths)
            try:
                finish_record(record, run.state, run.config, paths, run.started)
            except Exception as save_err:  # e.g. disk full: say so; nothing reads as success
                log(f"error: could not write {paths.results_json}: {save_err}")
            log(f"{paths.name}: {record['status']}: {record['error']}")
            return record, (EXIT_INTERRUPTED if record["status"] == INTERRUPTED else EXIT_FAILED)


def _log_start(run: CellRun) -> dict:
    """The cell's first log lines (name, config, data split, scalings); returns the trivial baselines."""
    config, split, test_volume = run.config, run.data.split, run.data.test_volume
    log(f"=== {run.paths.name} ({_dt.datetime.now().isoformat(timespec='seconds')}) ===")
    log("config: " + json.dumps(config.to_dict(), sort_keys=True))
    baselines = metrics.trivial_baselines(run.data.y_val)
    fold = f" (fold {config.fold} of {config.n_folds})" if config.n_folds > 1 else ""
    log(f"data{fold}: {split['source']}; train slices {len(split['train_slices'])} ({split['n_train_patches']} patches), "
        f"val slices {split['val_slices'][0]}..{split['val_slices'][-1]} ({split['n_val_patches']} patches); "
        f"val foreground {baselines['foreground_fraction']:.3f}, all-foreground IoU {baselines['all_foreground_jaccard']:.3f}")
    log_scaling(split.get("scaling"), test_volume.scaling if test_volume is not None else None, log)
    for warning in split.get("warnings") or ():
        log(f"warning: {warning}")
    return baselines


def _fit_and_record(run: CellRun) -> tuple[dict, int]:
    """Build (or resume), fit, judge, test and write the final record of the locked cell."""
    config, paths, record, state, stop = run.config, run.paths, run.record, run.state, run.stop
    model, validation, callbacks, dataset, initial_epoch = _build(run)
    if state.get("stopped_early"):
        log("this cell already stopped early; finishing its results")
    elif not stop.received:
        model.fit(dataset, epochs=config.epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                  verbose=0, shuffle=False)
    if stop.received:
        record.update(status=INTERRUPTED, error="stopped by SIGTERM (walltime or preemption); rerun to resume")
        return finish_record(record, state, config, paths, run.started), EXIT_INTERRUPTED
    _judge(record, state, validation.diverged_epoch)
    if state["best_epoch"] is not None and run.data.test_volume is not None:
        _evaluate_test(run)
    code = EXIT_OK if is_done(record["status"]) else EXIT_FAILED
    record = finish_record(record, state, config, paths, run.started)
    if is_done(record["status"]):
        shutil.rmtree(paths.backup_dir, ignore_errors=True)
    return record, code


def _build(run: CellRun):
    """Keras set-up of the locked cell: seed, resume or start afresh, the compiled model, the validation
    callback (the per-epoch work, mitoseg/cell/epoch_end.py) and the other callbacks, the train dataset.
    Returns (model, validation callback, callbacks, dataset, epoch to start from)."""
    from mitoseg.cell.tensorboard_log import tensorboard_callbacks  # [] when config.tensorboard is off
    from mitoseg.cell.keras_setup import (build_compiled_model, build_fit_variables, fit_callbacks, make_train_dataset,
                                          seed_and_policy, start_keras)
    config, paths, data, state, stop = run.config, run.paths, run.data, run.state, run.stop
    start_keras()
    run.record["environment"] = environment_info()
    seed_and_policy(config)
    resuming = _resume_or_start_afresh(paths, state, run.force)
    model = build_compiled_model(config)
    build_fit_variables(model, data.x_train[:1], data.y_train[:1])
    log(f"model: {config.architecture}, {model.count_params():,} parameters, "
        f"device {run.record['environment']['device']}")
    validation = stop.validation = validation_callback(data.x_val, data.y_val, config, paths, state)
    validation.interrupted = bool(stop.received)
    callbacks = fit_callbacks(validation, config, paths.backup_dir)
    dataset = make_train_dataset(data.x_train, data.y_train, config)
    callbacks += tensorboard_callbacks(config, paths, state, log)
    initial_epoch = _restore_backup(model, paths, state) if resuming else 0
    return model, validation, callbacks, dataset, initial_epoch


def _resume_or_start_afresh(paths: ExperimentPaths, state: dict, force: bool) -> bool:
    """True when the cell continues from its backup (the saved training state is loaded into `state`);
    otherwise the backup and the state are removed. --force also removes the old results JSON."""
    resuming = paths.backup_dir.exists() and paths.train_state.exists() and not force
    if force:
        # A forced rerun overwrites the model and history: drop the old results first, so a rerun
        # killed half-way can never leave an old "ok" JSON beside a new, unfinished model (every
        # *_results.json: the readers' lookup rule would take any of them for the cell's).
        for old in paths.results_files():
            old.unlink(missing_ok=True)
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
        shutil.rmtree(paths.backup_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            paths.train_state.unlink()
    return resuming


def _restore_backup(model, paths: ExperimentPaths, state: dict) -> int:
    """Load the backup into `model`; returns the epoch to continue from."""
    log(f"resuming from the backup in {paths.backup_dir} (best val_iou so far {state['best_iou']})")
    try:
        return resume.restore(model, paths.backup_dir, log)
    except RuntimeError:   # the backup is gone now; its state must go too
        paths.train_state.unlink(missing_ok=True)
        raise


def _judge(record: dict, state: dict, diverged_epoch: Optional[int]) -> None:
    """Status of a cell whose training ran to its end: diverged, ok, or an error without a validated epoch."""
    if diverged_epoch is not None:
        record.update(status=DIVERGED, diverged_epoch=diverged_epoch,
                      error=f"loss became NaN/inf in epoch {diverged_epoch}")
        log(f"diverged in epoch {diverged_epoch}")
    elif state["best_epoch"] is None:
        raise RuntimeError("training finished without a single validated epoch")
    else:
        record["status"] = OK


def _evaluate_test(run: CellRun) -> None:
    """Score the best model on the held-out test slices, tiled whole, at a threshold chosen on validation."""
    from mitoseg.cell.models import load_model
    from mitoseg.cell.inference import Tiling, evaluate_volume
    config, record, data, test_volume = run.config, run.record, run.data, run.data.test_volume
    best = load_model(run.paths.model(config.save_format))
    val_probs = np.asarray(best.predict(data.x_val, batch_size=config.batch_size, verbose=0))
    val_thr, _ = metrics.best_threshold(data.y_val, val_probs)
    tiling = Tiling(config.patch_size, config.threshold, config.test_tta, config.batch_size, config.input_channels)
    record["test"] = evaluate_volume(best, test_volume.images, test_volume.masks, tiling, val_threshold=val_thr,
                                     slice_names=test_volume.slice_names)
    split = data.split   # the record's "data"
    split["test_source"] = test_volume.source
    split["test_scaling"] = test_volume.scaling
    split["test_slice_names"] = list(test_volume.slice_names)
    log(f"held-out test ({record['test']['n_slices']} whole slices, tiled): IoU {record['test']['iou']:.4f} "
        f"Dice {record['test']['dice']:.4f} (all-foreground baseline {record['test']['all_foreground_jaccard']:.4f})")
