"""Grey levels and masks as model input: the one scaling rule for images and the mask check.

Owns how a stack's values become model input (`image_scaling` decides, `apply_scaling` applies,
`common_scaling` puts a second stack on the scale of a first, `describe_scaling`/`log_scaling` say what
was chosen) and how a mask becomes {0, 1} (`scale_mask`). Plain numpy; problems are `input_error.DataError`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mitoseg.core.errors import data_error


# How a stack's grey values become model input: ONE rule (`image_scaling`), decided by the values the
# stack actually uses, never by its container type alone; training, test and predict.py all use it.
#  * integers (and floats holding whole grey levels): the smallest common bit depth that holds the
#    stack's maximum, 8/10/12/14/16 bits, divided by 2**bits - 1. 8-bit data saved as uint16 (max <= 255)
#    is 8-bit data, not near-black 16-bit data; 12-bit camera data in uint16 is divided by 4095;
#  * floats already in [0, 1]: kept as they are; other floats (fractional values outside [0, 1]) and
#    negative values are refused: there is no safe way to guess their range;
#  * booleans: 0/1.
# The rule is decided once per stack (all slices of a folder together), logged, and recorded in the
# results JSON (data.scaling, data.test_scaling); a test stack or a predict.py input is put on the
# training stack's scale (`common_scaling`) or refused.
GREY_DEPTHS = (8, 10, 12, 14, 16)


def image_scaling(array, path="<array>") -> dict:
    """The scaling of a whole stack, from its values (see the rule above); DataError if there is none.

    Returns {"rule", "bits" (or None), "divisor", "dtype", "min", "max"}: model input = value / divisor."""
    a = np.asarray(array)
    if a.size == 0:
        raise data_error(path, f"image is empty (shape {a.shape})")
    if a.dtype == bool:
        return {"rule": "boolean 0/1", "bits": None, "divisor": 1.0, "dtype": "bool", "min": 0, "max": 1}
    is_float = np.issubdtype(a.dtype, np.floating)
    if not (is_float or np.issubdtype(a.dtype, np.integer)):
        raise data_error(path, f"unsupported image dtype {a.dtype}")
    if is_float and not np.isfinite(a).all():
        raise data_error(path, "image contains NaN or infinite values")
    lo, hi = a.min().item(), a.max().item()
    found = {"dtype": str(a.dtype), "min": lo, "max": hi}
    if is_float and lo >= 0 and hi <= 1:
        return {"rule": "floats in [0, 1], kept as they are", "bits": None, "divisor": 1.0, **found}
    if lo < 0:
        raise data_error(path, f"negative grey values ({a.dtype}, {lo:g}..{hi:g}); save the stack as unsigned "
                                "8/16-bit integers or as floats in [0, 1]")
    if is_float and not np.array_equal(a, np.floor(a)):
        raise data_error(path, f"float grey values {lo:g}..{hi:g} are neither in [0, 1] nor whole grey levels; "
                                "save the stack as 8/16-bit integers or as floats in [0, 1]")
    bits = next((b for b in GREY_DEPTHS if hi <= 2 ** b - 1), None)
    if bits is None:
        raise data_error(path, f"grey values up to {hi:g} need more than 16 bits; save the stack as 8/16-bit integers")
    return {"rule": f"{bits}-bit grey levels", "bits": bits, "divisor": float(2 ** bits - 1), **found}


def describe_scaling(scaling: dict) -> str:
    """One phrase for logs and errors, e.g. 'uint16 values 0..250: 8-bit grey levels, / 255'."""
    text = (f"{scaling.get('dtype')} values {scaling.get('min', '?')}..{scaling.get('max', '?')}: "
            f"{scaling.get('rule')}" + (f", / {scaling['divisor']:g}" if scaling.get("bits") is not None else ""))
    return text + (f" ({scaling['note']})" if scaling.get("note") else "")


def common_scaling(array, reference: dict, path="<array>", reference_name="the training stack") -> dict:
    """The scaling that puts `array` on the scale of `reference` (the training stack's, or the one a model
    was trained with), or DataError when it cannot be done safely.

    Same divisor: nothing to do. Floats already in [0, 1] are model input as they are. Integer data of the
    reference's type whose values fit the reference's range (a dim stack from the same camera) is scaled
    like the reference, with a note. Anything else (8-bit next to 12-bit data, values beyond the
    reference's range) is refused: one of them would be scaled wrongly."""
    own = image_scaling(array, path)
    if own["divisor"] == reference["divisor"] or own["bits"] is None:
        return own
    if (reference["bits"] is not None and own["dtype"] == reference["dtype"]
            and own["max"] <= reference["divisor"]):
        note = (f"by its values {own['bits']}-bit, scaled like {reference_name} "
                f"({reference['bits']}-bit) so both are on one scale")
        return {**own, "rule": reference["rule"], "bits": reference["bits"], "divisor": reference["divisor"],
                "note": note}
    raise data_error(path, f"{describe_scaling(own)} cannot share one scale with {reference_name} "
                            f"({describe_scaling(reference)}); save both with one bit depth")


def apply_scaling(array, scaling: dict) -> np.ndarray:
    """Model input (float32) of `array` under `scaling` (from `image_scaling`/`common_scaling` of it)."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.float32)
    return a.astype(np.float32) / np.float32(scaling["divisor"])


def _format_values(values, limit=6) -> str:
    floats = [float(v) for v in values[:limit]]
    shown = [str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f) for f in floats]
    more = f", ... ({len(values)} distinct)" if len(values) > limit else ""
    return "{" + ", ".join(shown) + more + "}"


def scale_mask(array, path="<array>") -> np.ndarray:
    """Binary mask {0,255} or {0,1} (or bool) -> uint8 {0,1}; anything else is a DataError.

    We refuse to threshold silently: a mask with other values is usually a label image or an
    interpolated/resized mask, and guessing would train on wrong labels without anyone noticing.
    """
    a = np.asarray(array)
    if a.size == 0:
        raise data_error(path, f"mask is empty (shape {a.shape})")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise data_error(path, f"unsupported mask dtype {a.dtype}")
    # bincount is much faster than np.unique on a 26M-voxel uint8 stack
    values = (np.flatnonzero(np.bincount(a.ravel(), minlength=256)) if a.dtype == np.uint8
              else np.unique(a))
    found = set(values.tolist())
    if found <= {0, 1}:
        return a.astype(np.uint8)
    if found <= {0, 255}:
        return (a == 255).astype(np.uint8)
    raise data_error(path, f"mask values {_format_values(values)} are not {{0, 255}} or {{0, 1}}")


def log_scaling(train_scaling: Optional[dict], test_scaling: Optional[dict], log) -> None:
    """The chosen scaling of the training (and test) images, one line each (README: Data layouts), after
    one line per conversion their files needed to be read as grey values (mitoseg/data/image_files.py)."""
    for what, scaling in (("training", train_scaling), ("test", test_scaling)):
        if scaling is not None:
            for line in scaling.get("reading") or ():
                log(f"reading ({what}): {line}")
            log(f"image scaling ({what}): {scaling.get('file', '?')}: {describe_scaling(scaling)}")
