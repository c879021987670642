"""One runner per cell: an exclusive `flock` on `<exp_dir>/.cell.lock`, held while a process trains the cell.

Concurrent runners on one study (two `run_study.py local`, array elements, a local run beside a cluster
array) never train the same cell at once: the second one finds the lock held and moves on. The kernel
releases the lock when its process ends in any way (SIGKILL and node loss included: on NFS the lock is
released when the server drops the client's state), so a killed runner cannot leave a cell stuck. The
file itself stays (it is never unlinked: removing a lock file races with a process opening it); it
holds the holder's pid, host and start time, for the message the second runner prints.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Optional

from mitoseg.core.paths import ExperimentPaths



class CellLock:
    """An acquired lock; `release()` (or the end of the process) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def try_lock(exp_dir) -> tuple[Optional[CellLock], str]:
    """(lock, "") when this process now holds the cell, or (None, who holds it) when another one does.
    OSError for a folder that cannot be written (the caller reports it like any other write error)."""
    path = ExperimentPaths(Path(exp_dir)).lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() if err.errno in (
            errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else ""
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return None, holder or "a process that has not written its name yet"
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
    return CellLock(path, fd), ""
