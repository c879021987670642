"""The local runner's worker processes: `run_study.py local --jobs N` keeps N of them, each imports
TensorFlow once and trains cell after cell, instead of one fresh process per cell (the import and
Keras' start-up cost about 3-8 s of a demo cell's 20-25 s).

A cell in a worker runs exactly what a fresh `python -m mitoseg.cli.train --study-dir S --task-index
I` runs (the module is executed anew with that argv), with the process' stdout/stderr (fd 1 and 2,
so TensorFlow's C++ lines too) sent to the cell's own local log. What a cell could leave behind for
the next is reset before each cell: the Keras session (`clear_session`: graphs, layer-name counters,
the global seed generator), the mixed-precision policy (float32) and op determinism; the cell then
sets its own seed (mitoseg.cell.keras_setup.seed_and_policy) as in a fresh process. The cell lock, the log
and the results are the cell's own as before (mitoseg/cell/run.py).

A worker that dies during a cell (a crash, a kill, running out of memory) fails that cell only: the
pool reports the cell with the worker's exit status and starts a fresh worker for the next cell, so
nothing of a cell killed half-way reaches another. Array elements on a cluster keep one process per
cell (mitoseg/study/runner.py run_element, mitoseg/study/multi_cell.py).

The pool side is standard library only (the runner imports it); the worker side (`python -m
mitoseg.study.workers MODULE`) imports TensorFlow.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

from mitoseg.core.status import EXIT_FAILED

PR_SET_PDEATHSIG = 1   # linux/prctl.h


# --- the pool (the runner's side) -----------------------------------------------------------------
class _Worker:
    """One worker process and the cell it is training (None: idle)."""

    def __init__(self, module: str, env: dict, cwd: str, stderr_path, python: list):
        self.err = open(stderr_path, "ab")
        self.proc = subprocess.Popen([*python, "-m", __name__, module], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, env=env, cwd=cwd)
        self.cell, self.started, self.code = None, 0.0, None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        """The worker's control lines: one {"code": N} per finished cell."""
        for line in self.proc.stdout:
            try:
                self.code = int(json.loads(line)["code"])
            except (ValueError, KeyError, TypeError):
                continue

    def give(self, cell, argv: list, log_path) -> None:
        self.cell, self.started, self.code = cell, time.monotonic(), None
        self.proc.stdin.write((json.dumps({"argv": argv, "log": str(log_path)}) + "\n").encode())
        self.proc.stdin.flush()

    def ended(self) -> Optional[int]:
        """The exit code of its cell once finished; a dead worker's cell ends with the worker's status."""
        if self.cell is None:
            return None
        if self.code is not None:
            return self.code
        if self.proc.poll() is not None:
            self.reader.join(timeout=5)   # a code written just before the worker exited still counts
            return self.code if self.code is not None else self.proc.returncode or EXIT_FAILED
        return None

    def close(self, timeout: float = 60) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


class WorkerPool:
    """Up to `size` workers; `give` a cell to a free one (a worker is started when needed), `ended()`
    yields (cell, exit code, seconds, note) of the cells that finished since the last call. `python`: the
    command prefix that starts a worker's Python (a container's, mitoseg.study.runner.local_launcher)."""

    def __init__(self, size: int, module: str, env: dict, cwd: str, stderr_path, python: Optional[list] = None):
        self.size, self.module, self.env, self.cwd, self.stderr_path = max(1, size), module, env, cwd, stderr_path
        self.python = python or [sys.executable]
        self.workers: list[_Worker] = []

    @property
    def busy(self) -> int:
        return sum(w.cell is not None for w in self.workers)

    def has_room(self) -> bool:
        return self.busy < self.size

    def give(self, cell, argv: list, log_path) -> None:
        for gone in [w for w in self.workers if w.cell is None and w.proc.poll() is not None]:   # died idle
            gone.close()
            self.workers.remove(gone)
        free = [w for w in self.workers if w.cell is None]
        worker = free[0] if free else None
        if worker is None:
            worker = _Worker(self.module, self.env, self.cwd, self.stderr_path, self.python)
            self.workers.append(worker)
        worker.give(cell, argv, log_path)

    def ended(self) -> list[tuple]:
        out = []
        for worker in list(self.workers):
            code = worker.ended()
            if code is None:
                continue
            out.append((worker.cell, code, time.monotonic() - worker.started, self._note(worker)))
            worker.cell = None
            if worker.proc.poll() is not None:   # died with (or after) its cell: the next cell gets a fresh one
                worker.close()
                self.workers.remove(worker)
        return out

    @staticmethod
    def _note(worker: _Worker) -> str:
        status = worker.proc.poll()
        if status is None or worker.code is not None:
            return ""
        how = f"signal {-status}" if status < 0 else f"exit {status}"
        return f"its worker process died ({how}) during this cell; a fresh worker takes the next cell"

    def stop(self) -> None:
        """Ctrl-C: SIGTERM to every worker with a cell (the cell records `interrupted` and the worker ends)."""
        for w in self.workers:
            if w.cell is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        self.close()

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --- the worker (its own process) -----------------------------------------------------------------
def _preload() -> None:
    """Import what every cell needs, once (what the worker is for)."""
    from mitoseg.cell import quiet_tf
    quiet_tf.install()
    try:
        from mitoseg.cell import run as cell  # noqa: F401 - numpy and the cell's modules
        from mitoseg.cell.keras_setup import start_keras
        start_keras()
        import focal_loss  # noqa: F401
        from mitoseg.cell import models  # noqa: F401
    except ImportError:   # the cell reports it in its own log
        pass


def reset_between_cells() -> None:
    """Undo what a cell may have set process-wide, so the next starts as in a fresh process."""
    import gc
    if "keras" not in sys.modules:
        return
    import keras
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    try:   # TensorFlow has enable_op_determinism() but no public way back (2.16-2.21)
        from tensorflow.python.util import _pywrap_determinism
        _pywrap_determinism.enable(False)
    except (ImportError, AttributeError):   # op determinism is a study-wide setting: every cell sets it alike
        pass
    gc.collect()


def run_one(module: str, argv: list, log_path: str) -> int:
    """Run `python -m module *argv` in this process with fd 1/2 in `log_path` (appended); its exit code."""
    import runpy
    import traceback
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    old_argv, code = sys.argv, 0
    try:
        reset_between_cells()
        sys.argv = [module, *argv]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else EXIT_FAILED)
    except BaseException:  # noqa: BLE001 - a bug outside run_cell's own handling: this cell's failure
        traceback.print_exc()
        code = EXIT_FAILED
    finally:
        sys.argv = old_argv
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
    return code


def _end_with_parent() -> None:
    """Ask Linux for a SIGTERM when the process that started this worker dies (a killed `local`, a job's
    timeout): its cell then records `interrupted` and stops, instead of training on unseen for hours.
    Elsewhere, or started by a container runtime (whose death it does not see), nothing changes."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):   # no prctl: not Linux
        pass


def serve(module: str) -> int:
    """Read one JSON cell request a line from stdin, answer one JSON line a finished cell on stdout."""
    _end_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the pool, which sends SIGTERM to busy workers
    control = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)   # nothing but control lines may reach the pool's pipe
    os.close(devnull)
    _preload()
    for line in sys.stdin:
        request = json.loads(line)
        code = run_one(module, request["argv"], request["log"])
        control.write(json.dumps({"code": code}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
