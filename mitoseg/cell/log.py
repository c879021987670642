"""A training cell's log: its one-line messages, and the copy of stdout/stderr into the cell's
training_log.txt (ExperimentPaths.log) while it trains. Standard library only."""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import sys
from pathlib import Path

STAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


def log(message: str) -> None:
    """One line of the cell's log. An `error: ...` line goes to stderr as it is (one line a script
    or `grep ^error:` can take whole); every other line to stdout after a time stamp (when an
    epoch ended, how long a step took, in the log itself)."""
    if message.startswith("error:"):
        print(message, file=sys.stderr, flush=True)
    else:
        print(f"{_dt.datetime.now().strftime(STAMP_FORMAT)} {message}", flush=True)


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
