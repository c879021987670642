"""The overlay figure of predict.py: per slice the image, the ground truth, the prediction and an error
map (green = hit, red = false positive, blue = missed), written atomically as a PNG. Matplotlib
(Agg backend) is imported only when a figure is drawn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mitoseg.cell import metrics
from mitoseg.core.io_utils import atomic_save


def error_map(mask, pred):
    """RGB: green = true positive, red = false positive, blue = false negative, black = true negative."""
    m, p = mask.astype(bool), pred.astype(bool)
    rgb = np.zeros(m.shape + (3,), np.float32)
    rgb[m & p] = (0.1, 0.85, 0.1)
    rgb[~m & p] = (0.95, 0.15, 0.15)
    rgb[m & ~p] = (0.2, 0.4, 1.0)
    return rgb


def draw_overlay(path, images, masks, probs, threshold, title, slice_labels):
    """One row per slice: image | ground truth | prediction | error map."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    h, w = images.shape[1:]
    fig, axes = plt.subplots(n, 4, figsize=(4 * 3.2, n * 3.2 * h / w + 0.8), squeeze=False)
    for i in range(n):
        pred = probs[i] >= threshold
        iou = metrics.foreground_iou(masks[i], pred, 0.5)
        panels = [(images[i], "gray", f"{slice_labels[i]}"), (masks[i], "gray", "ground truth"),
                  (pred, "gray", f"prediction (p >= {threshold:g})"),
                  (error_map(masks[i], pred), None, f"errors: IoU {iou:.3f}")]
        for ax, (arr, cmap, text) in zip(axes[i], panels):
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(text, fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save(Path(path), lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)
