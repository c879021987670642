"""The resume backup of a cell: weights and optimizer state at the end of each finished epoch, so a
cell stopped by its walltime (SIGTERM) or killed (node failure) continues from its last finished epoch.

Public Keras API only, the same from Keras 3.3 to 3.15: `model.save_weights` (a `.weights.h5` file
holds the optimizer's variables too once the optimizer is built), `model.load_weights` and
`fit(initial_epoch=...)`. Keras' own `BackupAndRestore` is not used: its arguments changed between
those versions and it resumes through a private attribute.

Layout: `backup/epoch_NNNN/` holds `model.weights.h5` and `meta.json` ({"epoch": N}). Each checkpoint
is written into a temporary folder and renamed into place, so a kill mid-write leaves either the
whole checkpoint or none; the two newest are kept, and `restore` falls back to the older one when the
newest cannot be read.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

WEIGHTS_NAME = "model.weights.h5"
META_NAME = "meta.json"
KEEP = 2
_CHECKPOINT_RE = re.compile(r"^epoch_(\d{4,})$")


def checkpoints(backup_dir: Path) -> list[Path]:
    """Complete checkpoint folders, newest first."""
    if not Path(backup_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(backup_dir).iterdir()
             if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(model, backup_dir: Path, epoch: int) -> Path:
    """Write the checkpoint of finished epoch `epoch` (1-based) atomically; drop all but the newest KEEP."""
    backup_dir = Path(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    final = backup_dir / f"epoch_{epoch:04d}"
    tmp = backup_dir / f".epoch_{epoch:04d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.save_weights(str(tmp / WEIGHTS_NAME))
        (tmp / META_NAME).write_text(json.dumps({"epoch": int(epoch)}) + "\n")
        shutil.rmtree(final, ignore_errors=True)   # a repeated epoch (after a kill) replaces its checkpoint
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints(backup_dir)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_epoch(checkpoint: Path) -> int:
    epoch = json.loads((checkpoint / META_NAME).read_text())["epoch"]
    if not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"bad epoch {epoch!r}")
    return epoch


def restore(model, backup_dir: Path, log: Callable[[str], None] = print) -> int:
    """Load the newest readable checkpoint into `model` (built and compiled, optimizer built).
    Returns the number of finished epochs it holds, 0 when there is no backup.

    Raises RuntimeError (one line, naming the folder) when checkpoints exist but none can be read;
    the folder is removed first, so the next run starts the cell afresh instead of failing forever."""
    found = checkpoints(backup_dir)
    first_error: Optional[BaseException] = None
    for i, checkpoint in enumerate(found):
        try:
            epoch = _read_epoch(checkpoint)
            model.load_weights(str(checkpoint / WEIGHTS_NAME))
        except Exception as err:   # torn JSON, truncated HDF5, wrong shapes: try the older one
            first_error = first_error or err
            continue
        if i > 0:
            log(f"warning: {backup_dir}: latest backup unreadable ({type(first_error).__name__}); "
                "resumed from the previous one")
        return epoch
    if first_error is None:
        return 0
    shutil.rmtree(backup_dir, ignore_errors=True)
    raise RuntimeError(f"{backup_dir}: unreadable resume backup ({type(first_error).__name__}: "
                       f"{str(first_error).strip()[:200]}); removed it, rerun the cell to start it afresh")


def make_callback(backup_dir: Path, is_partial_epoch: Callable[[], bool]):
    """A Keras callback that saves a checkpoint at the end of every *finished* epoch. Keras calls
    on_epoch_end even after a mid-epoch stop (SIGTERM); such an epoch must not be saved as finished,
    or the rerun would skip the rest of it."""
    import keras

    class _ResumeBackup(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if not is_partial_epoch():
                save_checkpoint(self.model, backup_dir, epoch + 1)

    return _ResumeBackup()

