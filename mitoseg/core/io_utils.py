"""Atomic file writes (a reader, or a rerun after a kill, sees the old file or the new one, never half)
and the same-file test that keeps an output from overwriting an input."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_save(path, save_fn) -> None:
    """Call save_fn(tmp_path) on a temporary file beside `path` (same suffix, so writers that pick
    the format from it still work), then rename it over `path`. The temporary name is unique per
    process and call, so concurrent writers never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.filename is None:   # e.g. a full disk: name the file being written
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise


def atomic_write_text(path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # results are meant to be shared, whatever the umask of the writer
    atomic_save(path, write)


def same_file(a, b) -> bool:
    """True when paths a and b name one file: the same path after resolving symlinks and '..', or (both
    existing) the same inode, which also catches hard links and case-insensitive file systems."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
