"""Training arrays from a volume: whole slices split into train/validation, slices cut into patches.

Owns the split rule (`fold_split`, `split_slices`: validation, and a held-out test block, are contiguous
blocks of whole slices that a fold moves along the stack) and the
tiling (`tile_patches`: non-overlapping square patches). Plain numpy; bad arguments are `DataError`.
"""
from __future__ import annotations

import numpy as np

from mitoseg.core.errors import data_error


def _block_size(n: int, fraction: float) -> int:
    return min(max(int(round(n * fraction)), 1), n - 1)


def _fold0_blocks(n: int, val_fraction, val_position, test_fraction, source) -> dict:
    """{kind: (start, length)} of the held-out blocks of fold 0 (today's split): the test block (only
    with test_fraction > 0) at the start of the stack, the validation block at val_position of the rest."""
    blocks, offset, rest = {}, 0, n
    if test_fraction > 0:
        blocks["test"] = (0, _block_size(n, test_fraction))
        offset, rest = blocks["test"][1], n - blocks["test"][1]
        if rest < 2:
            raise data_error(source, f"{n} slices leave {rest} after the test block; need at least 2")
    n_val = _block_size(rest, val_fraction)
    starts = {"start": 0, "middle": (rest - n_val) // 2, "end": rest - n_val}
    if val_position not in starts:
        raise data_error(source, f"val_position must be one of {sorted(starts)}, got {val_position!r}")
    blocks["val"] = (offset + starts[val_position], n_val)
    return blocks


def _fold_shifts(n: int, blocks: dict, n_folds: int, budget: int = 20000) -> "list[int] | None":
    """Cyclic shifts of fold 0's blocks, one per fold: for fold k the shift nearest to k/K of the stack at
    which no block is cut by the stack's end and no block overlaps another fold's block of its kind
    (a depth-first search in that order, given up after `budget` steps). None when none is found."""
    fits = [s for s in range(n) if all((a + s) % n + length <= n for a, length in blocks.values())]

    def apart(s, t):
        return all(abs((a + s) % n - (a + t) % n) >= length for a, length in blocks.values())

    steps = [budget]

    def search(chosen):
        k = len(chosen)
        if k == n_folds:
            return chosen
        for s in sorted(fits, key=lambda s: (abs(s * n_folds - k * n), s)):
            steps[0] -= 1
            if steps[0] < 0:
                return None
            if all(apart(s, t) for t in chosen):
                found = search(chosen + [s])
                if found:
                    return found
        return None
    return search([0])


def fold_split(n_slices, val_fraction=0.1, val_position="end", test_fraction=0.0, fold=0, n_folds=1,
               source="split_slices"):
    """(train_idx, val_idx, test_idx) of fold `fold` of `n_folds` over a stack of n_slices slices.

    Validation (and, with test_fraction > 0, the held-out test block) are contiguous blocks of whole
    slices: adjacent EM slices are near-duplicates, so a random split leaks training data into them.
    Fold 0 is the plain split (test block at the start, validation at val_position of the rest); fold
    k moves both blocks together by about k/K of the stack (cyclically, never cutting a block at the
    stack's end), so within a fold they never overlap, and no two folds share a validation (or test)
    slice. A K whose blocks cannot be placed so is refused (DataError naming `source`)."""
    if not isinstance(n_slices, (int, np.integer)) or n_slices < 2:
        raise data_error(source, f"need at least 2 slices to split, got {n_slices}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise data_error(source, f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0 <= fold < n_folds:
        raise data_error(source, f"fold must be in 0 .. {n_folds - 1}, got {fold}")
    n = int(n_slices)
    blocks = _fold0_blocks(n, val_fraction, val_position, test_fraction, source)
    shifts = _fold_shifts(n, blocks, n_folds)
    if shifts is None:
        fit = 1
        while fit + 1 < n_folds and _fold_shifts(n, blocks, fit + 1) is not None:
            fit += 1
        sizes = " and ".join(f"{length} {kind}" for kind, (_, length) in sorted(blocks.items()))
        raise data_error(source, f"{n} slices cannot hold {n_folds} folds whose blocks ({sizes} slices) do "
                                         f"not overlap; at most {fit} fit (fewer folds, or a smaller fraction)")
    picked = {kind: np.arange(a, a + length) + shifts[fold] for kind, (a, length) in blocks.items()}
    picked = {kind: (idx % n).astype(np.int64) for kind, idx in picked.items()}
    test = picked.get("test", np.array([], np.int64))
    train = np.setdiff1d(np.arange(n), np.concatenate([picked["val"], test]))
    return train.astype(np.int64), np.sort(picked["val"]), np.sort(test)


def split_slices(n_slices, val_fraction=0.1, val_position="end", fold=0, n_folds=1, source="split_slices"):
    """Split slice indices into (train_idx, val_idx) with validation as ONE contiguous block (fold 0:
    at val_position; other folds: see `fold_split`)."""
    train, val, _ = fold_split(n_slices, val_fraction, val_position, 0.0, fold, n_folds, source)
    return train, val


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
