"""The two on-disk dataset layouts, found without reading a pixel: which files a data folder's
training (and test) data are, and their fingerprint. Standard library only, so the login node's
checks (a finished cell's data fingerprint, `run_study.py submit`) need no numpy; mitoseg.data.stacks reads
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

from mitoseg.core.errors import DataError, data_error

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
# Images in a format that is not read: refused, not skipped (a skipped slice is training data silently lost).
UNREAD_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".jp2")
EXPECTED_LAYOUT = ("expected training.tif + training_groundtruth.tif (or .tiff), "
                   "or images/ + masks/ folders")
STACK_STEMS = ("training", "training_groundtruth", "testing", "testing_groundtruth")
FOLDER_NAMES = ("images", "masks", "test_images", "test_masks")


def natural_key(stem: str):
    # "slice_2" before "slice_10": slices are ordered by z, and split_slices relies on that order.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def _check_entry(path: Path, kind: str = "file") -> Path:
    """`path` itself, or one line saying why it cannot be read: a dangling symbolic link is named as
    such (not as a missing file), a folder where a file belongs (or the reverse) as what it is."""
    if path.is_symlink() and not path.exists():
        raise data_error(path, f"is a dangling symbolic link (its target {os.readlink(path)} does not exist)")
    if kind == "file" and not path.is_file():
        raise data_error(path, "is not a file")
    if kind == "folder" and not path.is_dir():
        raise data_error(path, "is not a folder")
    return path


def list_images(folder: Path) -> dict:
    if not folder.is_dir():
        raise data_error(folder, "folder not found")
    by_stem = {}
    for p in folder.iterdir():
        if p.suffix.lower() in UNREAD_IMAGE_SUFFIXES and not p.name.startswith("."):
            raise data_error(p, f"{p.suffix} images are not read (only {', '.join(IMAGE_SUFFIXES)}): save it as one of "
                                f"those, or move it out of {folder.name}/ (it would be left out unseen)")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_dir():
            _check_entry(p)
            if p.stem in by_stem:
                raise data_error(folder, f"two files share the stem '{p.stem}' "
                                         f"({by_stem[p.stem].name}, {p.name})")
            by_stem[p.stem] = p
    if not by_stem:
        raise data_error(folder, f"no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return by_stem


def find_file(folder: Path, stem: str):
    """Case-insensitive lookup of <stem>.tif / <stem>.tiff in folder (None if absent). Two candidates
    (training.tif beside training.tiff or Training.tif) are refused, naming both: reading one of them
    silently could train on the older file."""
    found = sorted(p for p in folder.iterdir() if p.name.lower() in (stem + ".tif", stem + ".tiff"))
    if len(found) > 1:
        raise data_error(folder, f"two candidates for {stem}.tif: {found[0].name} and {found[1].name}; "
                                 "keep one (move or rename the other)")
    return _check_entry(found[0]) if found else None


def _find_folder(data_dir: Path, name: str):
    path = data_dir / name
    return _check_entry(path, "folder") if path.is_dir() or path.is_symlink() else None


def detect_layout(data_dir: Path):
    """("stack" | "folders", (train image, train mask), (test image, test mask)) as `load_dataset` reads
    them (entries None when absent): the one home of the layout rules. A folder holding both layouts
    (e.g. training.tif and images/) is refused, naming both: one of them would be ignored."""
    if data_dir.is_file():
        raise data_error(data_dir, f"is a file, not a data folder; give the folder that holds it ({EXPECTED_LAYOUT})")
    if not data_dir.is_dir():
        raise data_error(data_dir, f"data folder not found ({EXPECTED_LAYOUT})")
    stack = [find_file(data_dir, stem) for stem in STACK_STEMS]
    folders = [_find_folder(data_dir, name) for name in FOLDER_NAMES]
    if any(stack) and any(folders):
        one, other = next(p for p in stack if p), next(p for p in folders if p)
        raise data_error(data_dir, f"holds two data layouts: {one.name} (stacks) and {other.name}/ (folders of "
                                   "slices); keep one (move the other out of this folder)")
    if any(stack[:2]):  # the canonical EPFL/Lucchi format
        return "stack", tuple(stack[:2]), tuple(stack[2:])
    if any(folders[:2]):
        return "folders", tuple(folders[:2]), tuple(folders[2:])
    if any(stack) or any(folders):
        found = next(p for p in [*stack, *folders] if p)
        raise data_error(data_dir, f"holds test data ({found.name}) but no training data; {EXPECTED_LAYOUT}")
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
