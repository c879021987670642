"""One cell's data: its train and test volumes (read, or synthesised, through the study cache), the
held-out test slices, the train/val patch arrays with the split's record, and the checks that the
patch and the batch fit. `prepare_cell_data` hands a cell all of it as one `CellData`. Numpy only
(no TensorFlow), so predict.py and the pre-flight can rebuild a cell's data cheaply; the stacks
themselves are read by mitoseg.data.stacks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from mitoseg.data import stacks as data
from mitoseg.data.cache import cached_arrays, cached_volumes, config_sources
from mitoseg.cell.log import log
from mitoseg.core.config import TrainConfig
from mitoseg.core.identity import files_fingerprint
from mitoseg.core.errors import DataError
from mitoseg.data.patches import fold_split, split_slices, tile_patches
from mitoseg.data.synthetic import synthetic_volumes


@dataclass
class CellData:
    """What one cell trains, validates and tests on, checked and prepared: the train/val patch arrays
    (the train ones memory maps when cached), the held-out test volume (None without one) and `split`,
    the record's "data" field (the cell adds the test volume's source to it once it has tested)."""
    train_volume: data.Volume
    test_volume: Optional[data.Volume]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    split: dict


def prepare_cell_data(config: TrainConfig, cache_dir=None) -> CellData:
    """The cell's data in one call, every check done: DataError on bad input, before the cell writes
    anything. `cache_dir` as for `load_cell_data`. The data folder is listed once (layout.source_files),
    for both cache entries' check and the recorded fingerprint."""
    sources = config_sources(config)
    train_volume, test_volume = load_cell_data(config, cache_dir, sources)
    for volume in (train_volume, test_volume):
        check_patch_fits(volume, config.patch_size)
    arrays = prepare_arrays(train_volume, config, cache_dir, sources)
    split = arrays["split"]
    split["data_fingerprint"] = files_fingerprint(sources) if config.data_dir is not None else None
    split["warnings"] = data.mask_warnings(train_volume, test_volume)
    check_batch_fits(split, config.batch_size)
    return CellData(train_volume, test_volume, arrays["x_train"], arrays["y_train"], arrays["x_val"],
                    arrays["y_val"], split)


def load_cell_data(config: TrainConfig, cache_dir=None, sources=None):
    """(train Volume, test Volume or None). DataError on bad input, before anything is written.

    With `cache_dir` (a study's `StudyPaths.cache_dir`) the decoded volumes are
    cached there once per study and memory-mapped by later cells (see mitoseg/data/cache.py); `sources`
    (cache.config_sources(config)) is listed here when not given."""
    def load():
        if config.data_dir is None:
            return synthetic_volumes(config.synthetic_slices, config.synthetic_size)
        train, test = data.load_dataset(config.data_dir)
        if test is None and config.test_fraction > 0:
            train, test = hold_out_test_slices(train, config)
        return train, test

    if cache_dir is None:
        return load()
    return cached_volumes(cache_dir, config, load, config_sources(config) if sources is None else sources, log=log)


def hold_out_test_slices(volume, config: TrainConfig):
    """Cut the fold's contiguous test block off the stack (fold 0: its start) as the test volume; the
    rest, in stack order, keeps the fold's validation block in `val_slices` (patches.fold_split)."""
    n = len(volume.images)
    if n < 3:
        raise DataError(f"{volume.source}: {n} slices are too few to hold out test slices")
    train_idx, val_idx, test_idx = fold_split(n, config.val_fraction, config.val_position, config.test_fraction,
                                              config.fold, config.n_folds, volume.source)
    rest = np.union1d(train_idx, val_idx)
    test = data.Volume(volume.images[test_idx], volume.masks[test_idx], [volume.slice_names[i] for i in test_idx],
                       f"{volume.source} slices {_ranges(test_idx)}", volume.scaling)
    train = data.Volume(volume.images[rest], volume.masks[rest], [volume.slice_names[i] for i in rest],
                        f"{volume.source} slices {_ranges(rest)}", volume.scaling,
                        val_slices=[int(i) for i in np.searchsorted(rest, val_idx)])
    return train, test


def _ranges(indices) -> str:
    """'0..9, 14..23': sorted slice indices as runs of consecutive ones."""
    runs, start = [], indices[0]
    for prev, cur in zip(indices[:-1], indices[1:]):
        if cur != prev + 1:
            runs.append((start, prev))
            start = cur
    runs.append((start, indices[-1]))
    return ", ".join(f"{a}..{b}" for a, b in runs)


def prepare_arrays(train_volume, config: TrainConfig, cache_dir=None, sources=None) -> dict:
    """Split whole slices, cut patches. Returns arrays (N, p, p, C) and the split's record.

    With `cache_dir` the arrays are cached once per study (`sources` as for load_cell_data); the train arrays then come back as
    read-only memory maps (fed by `training.make_train_dataset` batch by batch), the val arrays in memory."""
    def prepare():
        train_idx, val_idx = train_val_slices(train_volume, config)
        p = config.patch_size
        x_train = tile_patches(train_volume.images[train_idx], p)[..., None]
        y_train = tile_patches(train_volume.masks[train_idx], p)[..., None].astype(np.float32)
        x_val = tile_patches(train_volume.images[val_idx], p)[..., None]
        y_val = tile_patches(train_volume.masks[val_idx], p)[..., None].astype(np.float32)
        if config.input_channels == 3:
            x_train, x_val = np.repeat(x_train, 3, axis=-1), np.repeat(x_val, 3, axis=-1)
        split = {"source": train_volume.source, "n_slices": int(len(train_volume.images)),
                 "slice_shape": list(train_volume.images.shape[1:]),
                 "train_slices": [int(i) for i in train_idx], "val_slices": [int(i) for i in val_idx],
                 "val_slice_names": [train_volume.slice_names[i] for i in val_idx],
                 "n_train_patches": int(len(x_train)), "n_val_patches": int(len(x_val)),
                 "train_foreground_fraction": float(y_train.mean()), "scaling": train_volume.scaling,
                 "fold": config.fold, "n_folds": config.n_folds}
        return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "split": split}

    if cache_dir is None:
        return prepare()
    return cached_arrays(cache_dir, train_volume, config, prepare,
                         config_sources(config) if sources is None else sources, log=log)


def train_val_slices(train_volume, config: TrainConfig):
    """(train_idx, val_idx) into train_volume: the fold's validation block (decided with the held-out test
    block when there is one) and every other slice."""
    n = len(train_volume.images)
    if train_volume.val_slices is None:
        return split_slices(n, config.val_fraction, config.val_position, config.fold, config.n_folds,
                            train_volume.source)
    val = np.asarray(train_volume.val_slices, np.int64)
    return np.setdiff1d(np.arange(n), val).astype(np.int64), val


def check_patch_fits(volume, patch_size: int) -> None:
    """DataError naming the files when a slice is smaller than the patch (train or test volume), before
    training: tiling would otherwise fail with a message that names no file, or only after training."""
    if volume is None:
        return
    h, w = volume.images.shape[1:]
    if h < patch_size or w < patch_size:
        raise DataError(f"{volume.source}: slices of {h}x{w} pixels are smaller than the patch size "
                             f"{patch_size}; use --patch-size {min(h, w)} or less")


def check_batch_fits(split: dict, batch_size: int) -> None:
    """DataError when the batch is larger than the training patches, before anything is written: every
    epoch would be one partial batch while the cell records the larger batch size."""
    n = split["n_train_patches"]
    if batch_size > n:
        raise DataError(f"{split['source']}: batch size {batch_size} is larger than its {n} training patches; "
                        f"use a batch size of {n} or less (or a smaller patch size, or more slices)")
