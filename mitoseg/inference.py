"""Whole-slice prediction with overlapping tiles and smooth blending, optionally with 8-fold TTA.

Patches at the edge of a tile see less context, so tiles overlap by half a patch and each tile's
probabilities are weighted by a window that falls towards the tile's border (plus a small floor so
the image border, covered by one tile only, keeps its weight).
"""
from __future__ import annotations

import numpy as np

from . import metrics


def _starts(size: int, patch: int, stride: int) -> list[int]:
    if size < patch:
        raise ValueError(f"slice side {size} is smaller than the patch size {patch}")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def blend_window(patch: int) -> np.ndarray:
    ramp = np.hanning(patch + 2)[1:-1]
    return (np.outer(ramp, ramp) + 1e-3).astype(np.float32)


def _dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0..7) flip/rotation of (..., H, W, C) patches."""
    y = np.rot90(x, k % 4, axes=(-3, -2))
    return np.flip(y, axis=-2) if k >= 4 else y


def _undo_dihedral(x: np.ndarray, k: int) -> np.ndarray:
    y = np.flip(x, axis=-2) if k >= 4 else x
    return np.rot90(y, -(k % 4), axes=(-3, -2))


def predict_slices(model, images: np.ndarray, patch_size: int, batch_size: int = 8, overlap: float = 0.5,
                   tta: bool = False, channels: int = 1) -> np.ndarray:
    """Probabilities (z, y, x) float32 for grey slices (z, y, x) in [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    z, h, w = images.shape
    stride = max(1, int(round(patch_size * (1 - overlap))))
    ys, xs = _starts(h, patch_size, stride), _starts(w, patch_size, stride)
    window = blend_window(patch_size)
    out = np.zeros((z, h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    for y in ys:
        for x in xs:
            weight[y:y + patch_size, x:x + patch_size] += window
    transforms = range(8) if tta else range(1)
    for zi in range(z):
        tiles = np.stack([images[zi, y:y + patch_size, x:x + patch_size] for y in ys for x in xs])[..., None]
        if channels == 3:
            tiles = np.repeat(tiles, 3, axis=-1)
        probs = np.zeros(tiles.shape[:3] + (1,), np.float32)
        for k in transforms:
            pred = model.predict(_dihedral(tiles, k), batch_size=batch_size, verbose=0)
            probs += _undo_dihedral(np.asarray(pred, np.float32), k)
        probs /= len(transforms)
        i = 0
        for y in ys:
            for x in xs:
                out[zi, y:y + patch_size, x:x + patch_size] += probs[i, ..., 0] * window
                i += 1
    return out / weight[None]


def evaluate_volume(model, images, masks, patch_size, threshold=0.5, val_threshold=None, tta=False,
                    batch_size=8, channels=1) -> dict:
    """Scores of whole-slice tiled prediction: the `test` field of the results JSON."""
    probs = predict_slices(model, images, patch_size, batch_size=batch_size, tta=tta, channels=channels)
    scores = metrics.score_all(masks, probs, threshold)
    base = metrics.trivial_baselines(masks)
    result = {
        "iou": scores["iou"], "dice": scores["dice"], "precision": scores["precision"],
        "recall": scores["recall"], "soft_jaccard": scores["soft_jaccard"],
        "predicted_foreground_fraction": scores["predicted_foreground_fraction"],
        "val_threshold": val_threshold,
        "iou_at_val_threshold": (metrics.foreground_iou(masks, probs, val_threshold)
                                 if val_threshold is not None else None),
        "all_foreground_jaccard": base["all_foreground_jaccard"],
        "foreground_fraction": base["foreground_fraction"],
        "n_slices": int(np.asarray(images).shape[0]) if np.asarray(images).ndim == 3 else 1,
        "tta": bool(tta), "threshold": threshold,
    }
    return result
