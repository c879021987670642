"""Keep TensorFlow's start-up chatter out of the logs, and nothing else; also the one place that
sets TensorFlow's own C++ log level (`LOG_LEVEL_VAR`): `install(level)`, called by every process that
imports TensorFlow (a cell, predict.py, models.py, the pre-flight trial) before it does.

TensorFlow 2.21 logs through absl before `TF_CPP_MIN_LOG_LEVEL` takes effect, so every process
that imports it prints, on the C-level stderr, even with TF_CPP_MIN_LOG_LEVEL=3:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU ...

(the first three twice: two libraries each hold a copy of absl). None of them can be switched off
by a setting (TF_ENABLE_ONEDNN_OPTS=0 would also switch oneDNN off). `install()` therefore
captures the C-level stderr while `tensorflow` is imported - wherever that first happens - and
writes back every captured line that is not one of the KNOWN_NOISE patterns, so real warnings
and errors still appear, in order. MITOSEG_TF_STARTUP_LOG=1 turns the capture off.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

KNOWN_NOISE = [re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"\bport\.cc:\d+\] oneDNN custom operations are on\.",
    r"\bcudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"\bcpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$",
    r"\bUnable to register (cuDNN|cuFFT|cuBLAS) factory: Attempting to register factory for plugin",
    r"\bcomputation_placer\.cc:\d+\] computation placer already registered",
    r"^.*TF-TRT Warning: Could not find TensorRT$",
)]
ENV_OFF = "MITOSEG_TF_STARTUP_LOG"
# TensorFlow's own C++ log level, for the lines that come after the start-up. A default only: a level
# already in the environment wins (the user's, or run_tests.sh's 3). At CELL_LOG_LEVEL a cell's log
# drops TensorFlow's C++ INFO and WARNING lines and keeps its C++ errors; at 3 those errors are dropped
# too (Python exceptions and tracebacks are not TensorFlow's C++ log and always reach the log). The
# pre-flight trial drops them as well: its failures are reported as rows, one line each.
LOG_LEVEL_VAR = "TF_CPP_MIN_LOG_LEVEL"
CELL_LOG_LEVEL = "2"
TRIAL_LOG_LEVEL = "3"


def is_noise(line: str) -> bool:
    return any(p.search(line) for p in KNOWN_NOISE)


def filter_noise(text: str) -> str:
    """`text` without the lines of KNOWN_NOISE (blank lines kept as they were)."""
    return "".join(ln for ln in text.splitlines(keepends=True) if not is_noise(ln.rstrip("\n")))


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        with _captured_stderr():
            self.inner.exec_module(module)

    def __getattr__(self, name):   # get_resource_reader, is_package, ... of the real loader
        return getattr(self.inner, name)


class _captured_stderr:
    """File descriptor 2 into a temporary file for the duration; then the non-noise lines back."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.tmp = tempfile.TemporaryFile()
        os.dup2(self.tmp.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        self.tmp.seek(0)
        kept = filter_noise(self.tmp.read().decode("utf-8", "replace"))
        self.tmp.close()
        if kept:
            os.write(2, kept.encode())
        return False


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        remove()   # one shot, and the real finders below do the finding
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietFinder()


def install(level: str = CELL_LOG_LEVEL) -> None:
    """Quiet the first `import tensorflow` of this process (directly or through keras), and set TensorFlow's
    C++ log level to `level` unless the environment already sets one (it is read when TensorFlow loads)."""
    os.environ.setdefault(LOG_LEVEL_VAR, level)
    if "tensorflow" in sys.modules or os.environ.get(ENV_OFF) == "1" or _FINDER in sys.meta_path:
        return
    sys.meta_path.insert(0, _FINDER)


def remove() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
