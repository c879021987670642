"""Training arrays from a volume: whole slices split into train/validation, slices cut into patches.

Owns the split rule (`split_slices`: validation is one contiguous block of whole slices) and the
tiling (`tile_patches`: non-overlapping square patches). Plain numpy; bad arguments are `DataError`.
"""
from __future__ import annotations

import numpy as np

from .input_error import data_error


def split_slices(n_slices, val_fraction=0.1, val_position="end"):
    """Split slice indices into (train_idx, val_idx) with validation as ONE contiguous block.

    Adjacent EM slices are near-duplicates, so a random patch/slice split leaks training data
    into validation and inflates the score; a contiguous block only touches training at its ends.
    """
    if not isinstance(n_slices, (int, np.integer)) or n_slices < 2:
        raise data_error("split_slices", f"need at least 2 slices to split, got {n_slices}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise data_error("split_slices", f"val_fraction must be in (0, 1), got {val_fraction}")
    n = int(n_slices)
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    starts = {"start": 0, "middle": (n - n_val) // 2, "end": n - n_val}
    if val_position not in starts:
        raise data_error("split_slices", f"val_position must be one of {sorted(starts)}, "
                                         f"got {val_position!r}")
    val = np.arange(starts[val_position], starts[val_position] + n_val)
    train = np.setdiff1d(np.arange(n), val)
    return train.astype(np.int64), val.astype(np.int64)


def tile_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """(rows, columns) of the tiles `tile_patches` cuts from one slice."""
    return height // patch_size, width // patch_size


def tile_patches(volume_array, patch_size, source="tile_patches") -> np.ndarray:
    """(z, y, x) -> (n, p, p) non-overlapping tiles in z, row, column order; edges dropped.

    `source` (e.g. Volume.source) names the data in error messages.
    """
    a = np.asarray(volume_array)
    p = int(patch_size)
    if a.ndim != 3:
        raise data_error(source, f"expected a (z, y, x) array, got shape {a.shape}")
    if p < 1:
        raise data_error(source, f"patch size must be >= 1, got {patch_size}")
    z, h, w = a.shape
    if h < p or w < p:
        raise data_error(source, f"slice of {h}x{w} is smaller than the patch size {p}")
    ny, nx = tile_grid(h, w, p)
    tiles = a[:, : ny * p, : nx * p].reshape(z, ny, p, nx, p).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(tiles.reshape(z * ny * nx, p, p))
