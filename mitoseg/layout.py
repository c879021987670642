"""The two on-disk dataset layouts, found without reading a pixel: which files a data folder's
training (and test) data are, and their fingerprint. Standard library only, so the login node's
checks (a finished cell's data fingerprint, `run_study.py submit`) need no numpy; mitoseg.data reads
the files.

* EPFL/Lucchi stacks: ``training.tif`` + ``training_groundtruth.tif`` (z, y, x), optionally
  ``testing.tif`` + ``testing_groundtruth.tif`` (.tif or .tiff, any case);
* folders of 2D slices: ``images/`` + ``masks/`` paired by file stem, optionally
  ``test_images/`` + ``test_masks/``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .input_error import DataError, data_error

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
EXPECTED_LAYOUT = ("expected training.tif + training_groundtruth.tif (or .tiff), "
                   "or images/ + masks/ folders")


def natural_key(stem: str):
    # "slice_2" before "slice_10": slices are ordered by z, and split_slices relies on that order.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def list_images(folder: Path) -> dict:
    if not folder.is_dir():
        raise data_error(folder, "folder not found")
    by_stem = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in by_stem:
                raise data_error(folder, f"two files share the stem '{p.stem}' "
                                         f"({by_stem[p.stem].name}, {p.name})")
            by_stem[p.stem] = p
    if not by_stem:
        raise data_error(folder, f"no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return by_stem


def find_file(folder: Path, stem: str):
    """Case-insensitive lookup of <stem>.tif / <stem>.tiff in folder (None if absent)."""
    for suffix in (".tif", ".tiff"):
        for p in folder.iterdir():
            if p.is_file() and p.name.lower() == stem + suffix:
                return p
    return None


def detect_layout(data_dir: Path):
    """("stack" | "folders", (train image, train mask), (test image, test mask)) as `load_dataset` reads
    them (entries None when absent): the one home of the layout rules."""
    if data_dir.is_file():
        raise data_error(data_dir, f"is a file, not a data folder; give the folder that holds it ({EXPECTED_LAYOUT})")
    if not data_dir.is_dir():
        raise data_error(data_dir, f"data folder not found ({EXPECTED_LAYOUT})")
    sub = lambda name: data_dir / name if (data_dir / name).is_dir() else None
    stack = (find_file(data_dir, "training"), find_file(data_dir, "training_groundtruth"))
    if any(stack):  # stacks take precedence: they are the canonical EPFL/Lucchi format
        return "stack", stack, (find_file(data_dir, "testing"), find_file(data_dir, "testing_groundtruth"))
    folders = (sub("images"), sub("masks"))
    if any(folders):
        return "folders", folders, (sub("test_images"), sub("test_masks"))
    raise data_error(data_dir, f"no recognised dataset layout; {EXPECTED_LAYOUT}")


def dataset_files(data_dir) -> list[Path]:
    """Every file `load_dataset(data_dir)` reads (through symlinked files and folders alike)."""
    kind, train, test = detect_layout(Path(data_dir))
    files = []
    for part in (*train, *test):
        if part is not None:
            files += [part] if kind == "stack" else [part / name for name in
                                                     sorted(p.name for p in list_images(part).values())]
    return files


def source_files(data_dir) -> list[dict]:
    """Fingerprint of what `load_dataset(data_dir)` reads: each file (path as read, the file it
    resolves to through symlinked files or folders, size, mtime_ns), in reading order. A folder whose
    layout cannot be read gives [] (loading it then raises its DataError)."""
    try:
        files = dataset_files(data_dir)
    except DataError:
        return []
    found = []
    for path in files:
        st = path.stat()   # follows symlinks: the file that is read
        found.append({"path": str(path), "real": os.path.realpath(path), "size": st.st_size,
                      "mtime_ns": st.st_mtime_ns})
    return found
