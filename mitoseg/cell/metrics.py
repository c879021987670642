"""Segmentation scores as plain numpy functions, plus the few Keras pieces training needs.

Foreground = mitochondrion = 1. Every thresholded score treats `prob >= threshold` as foreground.
Scores are global over all pixels passed in (one confusion matrix), not a mean of per-image scores.

Rule for empty masks: when ground truth and prediction are both empty (nothing to find, nothing
found) IoU, Dice, precision and recall are 1.0; when only one is empty they are 0.0 (precision
with no predicted pixels is 1.0 only when there was nothing to find).

Why two Jaccards: the thresholded foreground IoU is the headline (it is what the literature
reports, about 0.87 for a 2D U-Net on this EM volume). The soft Jaccard (probabilities, +1
smoothing, the original study's `jacard_coef`) is kept only for comparison: focal loss keeps
probabilities away from 0 and 1, so a model with thresholded IoU 0.69 measured a soft Jaccard of
0.20 on the real data, and a constant all-foreground model scores about the foreground fraction.
"""
from __future__ import annotations

import numpy as np


def _confusion(y_true, y_pred_binary):
    t = np.asarray(y_true).astype(bool).ravel()
    p = np.asarray(y_pred_binary).astype(bool).ravel()
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: truth has {t.size} pixels, prediction {p.size}")
    tp = int(np.count_nonzero(t & p))
    fp = int(np.count_nonzero(~t & p))
    fn = int(np.count_nonzero(t & ~p))
    return tp, fp, fn


def confusion_counts(y_true, prob, threshold: float = 0.5) -> tuple[int, int, int]:
    """(tp, fp, fn) pixel counts of the thresholded prediction: iou_from_counts / dice_from_counts of
    them are foreground_iou / foreground_dice, and counts add up over slices (pooled scores)."""
    return _confusion(y_true, binarize(prob, threshold))


def binarize(prob, threshold: float = 0.5) -> np.ndarray:
    return np.asarray(prob) >= threshold


def iou_from_counts(tp: int, fp: int, fn: int) -> float:
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def foreground_iou(y_true, prob, threshold: float = 0.5) -> float:
    """Thresholded foreground Jaccard (IoU). Both empty -> 1.0."""
    return iou_from_counts(*_confusion(y_true, binarize(prob, threshold)))


def foreground_dice(y_true, prob, threshold: float = 0.5) -> float:
    return dice_from_counts(*_confusion(y_true, binarize(prob, threshold)))


def precision_recall(y_true, prob, threshold: float = 0.5) -> tuple[float, float]:
    tp, fp, fn = _confusion(y_true, binarize(prob, threshold))
    precision = 1.0 if tp + fp == 0 and fn == 0 else (0.0 if tp + fp == 0 else tp / (tp + fp))
    recall = 1.0 if tp + fn == 0 else tp / (tp + fn)
    return precision, recall


def soft_jaccard(y_true, prob, smooth: float = 1.0) -> float:
    """The original study's jacard_coef: (sum(t*p) + 1) / (sum(t) + sum(p) - sum(t*p) + 1)."""
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    inter = float(np.dot(t, p))
    return (inter + smooth) / (t.sum() + p.sum() - inter + smooth)


def focal_loss(y_true, prob, gamma: float = 2.0, eps: float = 1e-7) -> float:
    """Mean binary focal loss (Lin et al. 2017, no alpha): -(1-p_t)^gamma * log(p_t)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1 - eps)
    p_t = np.where(t > 0.5, p, 1 - p)
    return float(np.mean(-((1 - p_t) ** gamma) * np.log(p_t)))


def trivial_baselines(y_true) -> dict:
    """Scores of the two constant models on a mask set: what a model must clearly beat."""
    t = np.asarray(y_true).astype(bool)
    ones = np.ones(t.shape, dtype=bool)
    zeros = np.zeros(t.shape, dtype=bool)
    return {
        "foreground_fraction": float(t.mean()) if t.size else 0.0,
        "all_foreground_jaccard": foreground_iou(t, ones),
        "all_foreground_dice": foreground_dice(t, ones),
        "all_background_jaccard": foreground_iou(t, zeros),
    }


def score_all(y_true, prob, threshold: float = 0.5) -> dict:
    """Every score of one prediction, as a dict of floats."""
    tp, fp, fn = _confusion(y_true, binarize(prob, threshold))
    precision, recall = precision_recall(y_true, prob, threshold)
    n = np.asarray(y_true).size
    return {
        "iou": iou_from_counts(tp, fp, fn),
        "dice": dice_from_counts(tp, fp, fn),
        "precision": precision,
        "recall": recall,
        "soft_jaccard": soft_jaccard(y_true, prob),
        "predicted_foreground_fraction": (tp + fp) / n if n else 0.0,
    }


def best_threshold(y_true, prob, candidates=None) -> tuple[float, float]:
    """Threshold with the highest IoU (chosen on validation, never on test)."""
    candidates = np.round(np.arange(0.1, 0.91, 0.05), 2) if candidates is None else candidates
    scores = [(foreground_iou(y_true, prob, float(c)), float(c)) for c in candidates]
    best_iou, best_thr = max(scores)
    return best_thr, best_iou


# --- Keras ---------------------------------------------------------------------------------------
def keras_soft_jaccard(y_true, y_pred):
    """Soft Jaccard per batch, as the original `jacard_coef` (training-time display only)."""
    from keras import ops
    y_true = ops.cast(ops.reshape(y_true, (-1,)), "float32")
    y_pred = ops.cast(ops.reshape(y_pred, (-1,)), "float32")
    inter = ops.sum(y_true * y_pred)
    return (inter + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) - inter + 1.0)


keras_soft_jaccard.__name__ = "jaccard"


def keras_binary_iou(threshold: float = 0.5):
    """Thresholded foreground IoU accumulated over an epoch (one confusion matrix)."""
    import keras
    return keras.metrics.BinaryIoU(target_class_ids=[1], threshold=threshold, name="iou")
