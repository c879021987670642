"""The pre-flight trial: proves, inside the training environment the cells will use, that one step of
every architecture of the study trains, saves, reloads and predicts, and measures how long it takes.

`run_study.py verify` runs `python -m mitoseg.cell.preflight GRID_JSON` through the same launcher as the
array elements (so inside the container when $TF_CONTAINER is set) and reads the one JSON line it
prints last. Per architecture of the grid, at the study's own settings (patch size, width, depth,
data): build and compile the cell's model, one optimizer step at the grid's largest batch size on
real patches of the study's data (the built-in synthetic data when it has none), save the model in
the study's format and load it back, predict one tile. Any exception is recorded as that
architecture's one-line error; the host side turns it into a FAIL row.

Timing: two steps through `fit` at the largest and at the smallest batch size; the first step
includes tracing (start-up), the second is the steady seconds per step; one validation
batch gives the prediction cost. The host side (`mitoseg.study.verify.estimate_cell_seconds`) turns these
into an estimate per cell.
"""
from __future__ import annotations

import dataclasses
import json
import math
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from mitoseg.cell import quiet_tf
from mitoseg.cell.environment import PACKAGES, package_version
from mitoseg.core.errors import error_line


def package_versions() -> dict:
    """{import name: {"ok": True, "version": v} or {"ok": False, "error": one line}} for every package
    of mitoseg.cell.environment.PACKAGES, each imported here (the study's own environment)."""
    import importlib
    found = {}
    for mod, dist in PACKAGES.items():
        try:
            importlib.import_module(mod)
            found[mod] = {"ok": True, "version": package_version(dist)}
        except Exception as err:  # noqa: BLE001 - reported as a FAIL row
            found[mod] = {"ok": False, "error": error_line(err)}
    return found


def _log(message: str) -> None:
    print(f"[pre-flight] {message}", file=sys.stderr, flush=True)


def _peak_rss() -> int:
    """This process' peak resident memory in bytes so far (Linux reports kB): after the trial of every
    architecture, the peak of one process that built, trained and predicted each, as a worker does."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _peak_memory(gpus: list) -> dict:
    """Peak GPU memory of the first GPU since the last reset, else this process' peak RSS."""
    if gpus:
        import tensorflow as tf
        return {"kind": "GPU", "bytes": int(tf.config.experimental.get_memory_info("GPU:0")["peak"])}
    return {"kind": "RSS", "bytes": _peak_rss()}


def _arrays(config):
    from mitoseg.cell.inputs import load_cell_data, prepare_arrays
    train_volume, _ = load_cell_data(config)
    return prepare_arrays(train_volume, config)


def _batch(x, y, batch_size: int):
    """`batch_size` patches (repeated when the data has fewer) as float32 arrays."""
    idx = np.arange(batch_size) % len(x)
    return np.asarray(x[idx], dtype="float32"), np.asarray(y[idx], dtype="float32")


def _timed_steps(model, x, y, batch_size: int, n: int = 2) -> tuple[float, float]:
    """`n` optimizer steps through `fit`, as a cell trains: (seconds of the first step, which traces,
    fastest later step: the least disturbed by other load). Raises when the loss is not finite."""
    import keras
    xb, yb = _batch(x, y, batch_size * n)
    times, start = [], [0.0]
    timer = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: start.__setitem__(0, time.perf_counter()),
        on_train_batch_end=lambda batch, logs: times.append(time.perf_counter() - start[0]))
    history = model.fit(xb, yb, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    loss = history.history["loss"][-1]
    if not math.isfinite(float(loss)):
        raise FloatingPointError(f"loss {loss} after {n} optimizer steps at batch {batch_size}")
    return times[0], min(times[1:])


def trial_architecture(config, arrays, min_batch_size: int, gpus: list) -> dict:
    """One architecture's trial (see the module docstring). Raises on any failure."""
    import keras

    from mitoseg.cell.models import load_model
    from mitoseg.cell.keras_setup import build_compiled_model, build_fit_variables
    if gpus:
        import tensorflow as tf
        tf.config.experimental.reset_memory_stats("GPU:0")
    keras.utils.set_random_seed(config.seed)
    t0 = time.perf_counter()
    model = build_compiled_model(config)
    build_fit_variables(model, arrays["x_train"][:1], arrays["y_train"][:1])
    build_s = time.perf_counter() - t0
    first, step = _timed_steps(model, arrays["x_train"], arrays["y_train"], config.batch_size)
    steps = {config.batch_size: step}
    if min_batch_size != config.batch_size:   # per-image cost is highest at the smallest batch
        steps[min_batch_size] = _timed_steps(model, arrays["x_train"], arrays["y_train"], min_batch_size)[1]
    xv = np.asarray(arrays["x_val"][: config.batch_size], dtype="float32")
    model.predict(xv, batch_size=config.batch_size, verbose=0)   # traces predict
    t2 = time.perf_counter()
    model.predict(xv, batch_size=config.batch_size, verbose=0)
    predict_per_patch = (time.perf_counter() - t2) / len(xv)   # the per-epoch validation pass
    with tempfile.TemporaryDirectory(prefix="mitoseg_preflight_") as tmp:
        path = Path(tmp) / f"trial.{'hdf5' if config.save_format == 'hdf5' else 'keras'}"
        model.save(path)
        tile = load_model(path).predict(xv[:1], verbose=0)
    want = (1, *arrays["y_val"].shape[1:])
    if tile.shape != want or not np.all(np.isfinite(tile)):
        raise ValueError(f"the reloaded model predicted shape {tile.shape} (want {want}) or non-finite values")
    return {"ok": True, "params": int(model.count_params()), "batch_size": config.batch_size,
            "startup_s": build_s + first, "step_s": {str(k): v for k, v in steps.items()},
            "predict_per_patch_s": predict_per_patch,
            "n_train_patches": int(len(arrays["x_train"])), "n_val_patches": int(len(arrays["x_val"])),
            "memory": _peak_memory(gpus), "host_rss_bytes": _peak_rss()}


def trial(grid_dict: dict) -> dict:
    """Every architecture of the grid; never raises (errors are recorded)."""
    out: dict = {"python": sys.version.split()[0], "executable": sys.executable, "gpus": [],
                 "architectures": {}, "error": None}
    out["packages"] = package_versions()
    try:
        import tensorflow as tf

        from mitoseg.core.grid import GridConfig
        tf.get_logger().setLevel("ERROR")   # the trial retraces on purpose (new models, two batch sizes)
        out["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
        from mitoseg.core.config import TrainConfig
        grid = GridConfig.from_dict(grid_dict)
        cfg = TrainConfig.from_dict({**grid.fixed, "architecture": grid.architectures[0],
                                     "learning_rate": float(max(grid.learning_rates)),
                                     "batch_size": int(max(grid.batch_sizes)), "seed": int(grid.seeds[0])})
        _log(f"loading the study's data ({cfg.data_dir or 'built-in synthetic'})")
        arrays = _arrays(cfg)
    except BaseException as err:  # noqa: BLE001 - reported, e.g. TensorFlow cannot load
        out["error"] = error_line(err)
        traceback.print_exc()
        return out
    for arch in grid.architectures:
        _log(f"{arch}: build, one step at batch {cfg.batch_size}, save, reload, predict")
        try:
            out["architectures"][arch] = trial_architecture(dataclasses.replace(cfg, architecture=arch), arrays,
                                                            min(grid.batch_sizes), out["gpus"])
        except BaseException as err:  # noqa: BLE001 - every failure is that architecture's FAIL row
            traceback.print_exc()
            out["architectures"][arch] = {"ok": False, "error": error_line(err)}
    return out


if __name__ == "__main__":
    quiet_tf.install(quiet_tf.TRIAL_LOG_LEVEL)   # start-up lines out of the check's output; real warnings pass
    print(json.dumps(trial(json.loads(sys.argv[1]))), flush=True)
