"""Whole-slice prediction with overlapping tiles and smooth blending, optionally with 8-fold TTA.

Patches at the edge of a tile see less context, so tiles overlap by half a patch and each tile's
probabilities are weighted by a window that falls towards the tile's border (plus a small floor so
the image border, covered by one tile only, keeps its weight).

The blend is a weighted mean: out = sum(window * tile_prob) / sum(window) over the tiles covering
a pixel, so a model that returns its input reproduces the image exactly, seams included (tested).
TTA averages the 8 dihedral transforms (4 rotations x optional flip), each undone before blending.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mitoseg.cell import metrics


@dataclass(frozen=True)
class Tiling:
    """How `evaluate_volume` predicts and scores whole slices: tiles of `patch_size` overlapping by
    `overlap`, `batch_size` tiles per predict call, grey values repeated to `channels`, optional 8-fold
    TTA, foreground at probability >= `threshold`. A cell's: Tiling(config.patch_size, config.threshold,
    config.test_tta, config.batch_size, config.input_channels)."""
    patch_size: int
    threshold: float = 0.5
    tta: bool = False
    batch_size: int = 8
    channels: int = 1
    overlap: float = 0.5


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


def model_patch_size(model, default: int = 256) -> int:
    """Tile side a model accepts: its fixed input side, or `default` for a fully convolutional
    (None x None) input. Non-square fixed inputs are refused."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        shape = shape[0]
    if not shape or len(shape) != 4:
        return int(default)
    h, w = shape[1], shape[2]
    if h is None and w is None:
        return int(default)
    if h != w:
        raise ValueError(f"model input {h}x{w} is not square; tiled prediction needs square tiles")
    return int(h)


def model_channels(model, default: int = 1) -> int:
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        shape = shape[0]
    return int(shape[-1]) if shape and len(shape) == 4 and shape[-1] else int(default)


def predict_slices(model, images: np.ndarray, patch_size: int, batch_size: int = 8, overlap: float = 0.5,
                   tta: bool = False, channels: int = 1, progress=None) -> np.ndarray:
    """Probabilities (z, y, x) float32 for grey slices (z, y, x) (or one (y, x) slice) in [0, 1].

    `model` is anything with `.predict(x, batch_size=, verbose=)` mapping (n, p, p, channels) to
    (n, p, p, 1) (or (n, p, p)). `overlap` in [0, 1): fraction of a tile shared with its neighbour.
    `progress(done, total)` is called after each slice when given.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"expected slices (z, y, x) or one slice (y, x), got shape {images.shape}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    patch_size = int(patch_size)
    if patch_size < 1:
        raise ValueError(f"patch size must be >= 1, got {patch_size}")
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
            pred = np.asarray(model.predict(_dihedral(tiles, k), batch_size=batch_size, verbose=0), np.float32)
            if pred.ndim == 3:
                pred = pred[..., None]
            if pred.shape[:3] != tiles.shape[:3]:
                raise ValueError(f"model returned shape {pred.shape} for tiles {tiles.shape}")
            probs += _undo_dihedral(pred[..., :1], k)
        probs /= len(transforms)
        i = 0
        for y in ys:
            for x in xs:
                out[zi, y:y + patch_size, x:x + patch_size] += probs[i, ..., 0] * window
                i += 1
        if progress is not None:
            progress(zi + 1, z)
    return out / weight[None]


def mean_probabilities(probabilities) -> np.ndarray:
    """The mean of an ensemble's probability maps (an iterable: one model's map in memory at a time).
    The one averaging of predict.py --bundle and the analysis' ensemble score."""
    total, n = None, 0
    for probs in probabilities:
        probs = np.asarray(probs, dtype=np.float64)
        total = probs if total is None else total + probs
        n += 1
    if n == 0:
        raise ValueError("an ensemble needs at least one member")
    return total / n


def slice_scores(masks, probs, threshold=0.5, slice_names=None) -> list:
    """[{name, iou, dice, tp, fp, fn}] for every slice: the `test.slices` of the results JSON, so two
    models scored on the same slices can be compared slice by slice, and pooled IoU (sum tp over sum
    tp + fp + fn) recomputed on any resample of slices. Names default to "z=<index>"."""
    masks, probs = np.asarray(masks), np.asarray(probs)
    if masks.ndim == 2:
        masks, probs = masks[None], probs[None]
    names = [f"z={z}" for z in range(len(masks))] if slice_names is None else [str(n) for n in slice_names]
    if len(names) != len(masks):
        raise ValueError(f"{len(names)} slice names for {len(masks)} slices")
    out = []
    for name, m, p in zip(names, masks, probs):
        tp, fp, fn = metrics.confusion_counts(m, p, threshold)
        out.append({"name": name, "iou": metrics.iou_from_counts(tp, fp, fn), "dice": metrics.dice_from_counts(tp, fp, fn),
                    "tp": tp, "fp": fp, "fn": fn})
    return out


def evaluate_volume(model, images, masks, tiling: Tiling, val_threshold=None, slice_names=None,
                    return_probs=False):
    """Scores of whole-slice tiled prediction (`tiling`): the `test` field of the results JSON, with the
    per-slice IoU and Dice in `slices` (named by `slice_names`, default z=<index>).

    `val_threshold` must come from validation data (never from these masks). With
    `return_probs=True` returns (scores, probabilities) instead of the scores alone."""
    if np.asarray(images).shape != np.asarray(masks).shape:
        raise ValueError(f"images {np.asarray(images).shape} and masks {np.asarray(masks).shape} differ in shape")
    patch_size, threshold, tta, overlap = tiling.patch_size, tiling.threshold, tiling.tta, tiling.overlap
    probs = predict_slices(model, images, patch_size, batch_size=tiling.batch_size, tta=tta,
                           channels=tiling.channels, overlap=overlap)
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
        "patch_size": int(patch_size), "overlap": float(overlap),
        "slices": slice_scores(masks, probs, threshold, slice_names),
    }
    return (result, probs) if return_probs else result
