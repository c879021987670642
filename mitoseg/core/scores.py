"""The degenerate-model rule: one definition shared by the training code and the analysis.

A model "did not learn" when its thresholded foreground IoU is not clearly above what predicting
foreground everywhere would score, or when it predicts (almost) no / (almost) all pixels as
foreground. "Clearly above" means by a margin of max(0.05, half the baseline), but never more than
half the way from the baseline to a perfect 1.0: on data where the all-foreground IoU is 0.07, a
model needs IoU >= 0.12; where it is 0.30, IoU >= 0.45; where it is 0.83 (foreground 83 %, e.g. an
inverted mask), IoU >= 0.915 (not 1.245, a bar no model reaches). The cap only acts above a
baseline of 0.5. "Almost all pixels" is judged only where the true foreground is below that
fraction itself; where it is not, predicting nearly everything is right and the IoU rule decides.

    degenerate_reason(iou, all_foreground_iou, predicted_foreground_fraction) -> str | None

returns a one-line reason, or None when the model is not degenerate. The analysis recomputes the
rule from summary CSV columns with `predicted_foreground_fraction=None` allowed (a CSV may lack it):
only a missing IoU or a missing baseline gives "no score".
"""
from __future__ import annotations

import math
from typing import Optional

MIN_MARGIN = 0.05            # absolute IoU margin over the all-foreground baseline
RELATIVE_MARGIN = 0.5        # ... or this fraction of the baseline, whichever is larger (at most (1 - baseline) / 2)
MIN_FOREGROUND_FRACTION = 0.001
MAX_FOREGROUND_FRACTION = 0.95


def finite_number(value) -> Optional[float]:
    """THE finite-number test of the project's scores: `value` as a float when it is a finite number (a
    numpy scalar, a bool as 0/1, a numeric string), else None (None, NaN, inf, anything float() refuses)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def finite(value) -> bool:
    """finite_number as a yes/no."""
    return finite_number(value) is not None


def _missing(value) -> bool:
    return finite_number(value) is None


def required_iou(all_foreground_iou: float) -> float:
    """The IoU a model must reach to count as having learned something."""
    base = float(all_foreground_iou)
    return base + min(max(MIN_MARGIN, RELATIVE_MARGIN * base), (1.0 - base) / 2)


def degenerate_reason(iou, all_foreground_iou, predicted_foreground_fraction=None) -> Optional[str]:
    """One-line reason why a model is degenerate, or None if it is not.

    `predicted_foreground_fraction` may be None (unknown); then only the IoU rule applies.
    A None/NaN `iou` or `all_foreground_iou` gives "no score".
    """
    if _missing(iou) or _missing(all_foreground_iou):
        return "no score"
    iou, base = float(iou), float(all_foreground_iou)
    if iou < required_iou(base):
        return f"IoU {iou:.2f} is not clearly above the all-foreground baseline {base:.2f}"
    if not _missing(predicted_foreground_fraction):
        frac = float(predicted_foreground_fraction)
        if frac < MIN_FOREGROUND_FRACTION:
            return "predicts (almost) no foreground"
        if frac > MAX_FOREGROUND_FRACTION and base < MAX_FOREGROUND_FRACTION:
            return "predicts (almost) everything as foreground"
    return None
