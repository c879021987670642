"""Input data for mitochondria segmentation: read, validate, scale, tile, split, synthesise.

Everything here is plain numpy (no TensorFlow) so it can be imported and tested cheaply on a
login node. Two on-disk layouts are understood (see `load_dataset`):

* EPFL/Lucchi stacks: ``training.tif`` + ``training_groundtruth.tif`` (z, y, x), optionally
  ``testing.tif`` + ``testing_groundtruth.tif``;
* folders of 2D slices: ``images/`` + ``masks/`` paired by file stem, optionally
  ``test_images/`` + ``test_masks/``.

Every problem with the input is raised as `DataError` whose message is one line naming the
file (or folder) and the problem, because these messages end up in scheduler logs where a
traceback from deep inside tifffile tells a user nothing.
"""
from __future__ import annotations

import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
_EXPECTED_LAYOUT = ("expected training.tif + training_groundtruth.tif (or .tiff), "
                    "or images/ + masks/ folders")
_TEST_SEED_OFFSET = 10_000  # synthetic test stack must not share a seed with any small train seed


class DataError(ValueError):
    """Bad input. str(err) is ONE line naming the file and the problem, e.g.
    "training_groundtruth.tif: mask values {0, 3, 255} are not {0, 255} or {0, 1}"."""


def _one_line(text, limit=200) -> str:
    """Collapse a (library) message to one short line, so DataError stays one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(where, problem) -> DataError:
    return DataError(_one_line(f"{where}: {problem}", limit=400))


@dataclass
class Volume:
    """A stack of slices with matching binary masks."""

    images: np.ndarray  # (z, y, x) float32 in [0, 1]
    masks: np.ndarray  # (z, y, x) uint8 in {0, 1}
    slice_names: list[str]  # one per slice: file stem (folders) or "training.tif[z=5]" (stacks)
    source: str  # human-readable origin (paths)
    scaling: Optional[dict] = None  # how the grey values became `images` (`image_scaling`); None: unknown

    @property
    def foreground_fraction(self) -> float:
        return float(self.masks.mean()) if self.masks.size else 0.0


# ----------------------------------------------------------------------------- scaling
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
        raise _fail(path, f"image is empty (shape {a.shape})")
    if a.dtype == bool:
        return {"rule": "boolean 0/1", "bits": None, "divisor": 1.0, "dtype": "bool", "min": 0, "max": 1}
    is_float = np.issubdtype(a.dtype, np.floating)
    if not (is_float or np.issubdtype(a.dtype, np.integer)):
        raise _fail(path, f"unsupported image dtype {a.dtype}")
    if is_float and not np.isfinite(a).all():
        raise _fail(path, "image contains NaN or infinite values")
    lo, hi = a.min().item(), a.max().item()
    found = {"dtype": str(a.dtype), "min": lo, "max": hi}
    if is_float and lo >= 0 and hi <= 1:
        return {"rule": "floats in [0, 1], kept as they are", "bits": None, "divisor": 1.0, **found}
    if lo < 0:
        raise _fail(path, f"negative grey values ({a.dtype}, {lo:g}..{hi:g}); save the stack as unsigned "
                          "8/16-bit integers or as floats in [0, 1]")
    if is_float and not np.array_equal(a, np.floor(a)):
        raise _fail(path, f"float grey values {lo:g}..{hi:g} are neither in [0, 1] nor whole grey levels; "
                          "save the stack as 8/16-bit integers or as floats in [0, 1]")
    bits = next((b for b in GREY_DEPTHS if hi <= 2 ** b - 1), None)
    if bits is None:
        raise _fail(path, f"grey values up to {hi:g} need more than 16 bits; save the stack as 8/16-bit integers")
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
    raise _fail(path, f"{describe_scaling(own)} cannot share one scale with {reference_name} "
                      f"({describe_scaling(reference)}); save both with one bit depth")


def apply_scaling(array, scaling: dict) -> np.ndarray:
    """Model input (float32) of `array` under `scaling` (from `image_scaling`/`common_scaling` of it)."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.astype(np.float32)
    return a.astype(np.float32) / np.float32(scaling["divisor"])


def scale_image(array, path="<array>") -> np.ndarray:
    """Image of any common dtype -> float32 in [0, 1] by its own values (`image_scaling`); `path` only
    names the file in errors. NaN/inf, negative or non-numeric data -> DataError."""
    return apply_scaling(array, image_scaling(array, path))


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
        raise _fail(path, f"mask is empty (shape {a.shape})")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise _fail(path, f"unsupported mask dtype {a.dtype}")
    # bincount is much faster than np.unique on a 26M-voxel uint8 stack
    values = (np.flatnonzero(np.bincount(a.ravel(), minlength=256)) if a.dtype == np.uint8
              else np.unique(a))
    found = set(values.tolist())
    if found <= {0, 1}:
        return a.astype(np.uint8)
    if found <= {0, 255}:
        return (a == 255).astype(np.uint8)
    raise _fail(path, f"mask values {_format_values(values)} are not {{0, 255}} or {{0, 1}}")


# ----------------------------------------------------------------------------- reading
def _to_zyx(a: np.ndarray, path, colour: bool, what: str = "image") -> np.ndarray:
    """Normalise a decoded image to (z, y, x): colour -> grey, drop leading singleton axes.

    A colour *mask* is never averaged into grey (a red-on-black label would become {0, 85}): one whose
    channels are equal is read from its first channel, any other is refused with a line saying so."""
    if colour and what == "mask":
        channels = a[..., :1] if a.shape[-1] == 2 else a[..., :3]
        if not (channels == channels[..., :1]).all():
            raise _fail(path, "mask is a colour image (its colour channels differ); save masks as "
                              "single-channel greyscale 0/255 or 0/1")
        a = channels[..., 0]
    elif colour:
        # Grey = mean of the colour channels. Alpha (4th channel, or 2nd of grey+alpha) is
        # opacity, not intensity, so it is left out of the mean.
        channels = a[..., :1] if a.shape[-1] == 2 else a[..., :3]
        grey = channels.astype(np.float64).mean(axis=-1)
        a = grey.round().astype(a.dtype) if np.issubdtype(a.dtype, np.integer) else grey
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[np.newaxis]
    if a.ndim != 3 or a.size == 0:
        raise _fail(path, f"unsupported image shape {a.shape} (expected 2D image or 3D z-stack)")
    return a


def _series_to_zyx(series, path, what) -> np.ndarray:
    a, axes = np.asarray(series.asarray()), series.axes
    # Colour if the file says so (samples axis last), or if the last axis is 3/4 wide while the
    # two before it are image-sized: no real z-stack is 3 pixels wide, many RGB exports are.
    looks_rgb = a.ndim >= 3 and a.shape[-1] in (3, 4) and min(a.shape[-3:-1]) > 4
    return _to_zyx(a, path, colour=axes.endswith("S") or looks_rgb, what=what)


def read_tiff(path, what: str = "image") -> np.ndarray:
    """Read a TIFF as (z, y, x); a 2D image becomes (1, y, x); colour becomes grey (see `_to_zyx`).

    A TIFF written in several series (e.g. appended chunks) is read whole, its series one after the
    other along z, when they share one slice shape and dtype; otherwise it is refused: reading only
    the first series would silently drop the rest."""
    import tifffile  # local: keeps `import mitoseg.data` cheap

    path = Path(path)
    if not path.is_file():
        reason = "not a file" if path.exists() else "file not found"
        raise _fail(path, f"cannot read TIFF ({reason})")
    # tifffile also *logs* warnings about a corrupt file ("invalid page offset ..."), which would be
    # a second, unexplained line next to our one-line DataError: silence them while reading.
    tiff_logger = logging.getLogger("tifffile")
    old_level = tiff_logger.level
    tiff_logger.setLevel(logging.CRITICAL)
    try:
        with tifffile.TiffFile(path) as tif:
            parts = [(_series_to_zyx(series, path, what), series) for series in tif.series]
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types on corrupt input; all mean "bad file"
        raise _fail(path, f"cannot read TIFF ({_one_line(exc) or type(exc).__name__})") from exc
    finally:
        tiff_logger.setLevel(old_level)
    if not parts:
        raise _fail(path, "cannot read TIFF (no image data)")
    if len(parts) == 1:
        return parts[0][0]
    first = parts[0][0]
    for a, _ in parts[1:]:
        if a.shape[1:] != first.shape[1:] or a.dtype != first.dtype:
            shapes = ", ".join(f"{b.shape[1]}x{b.shape[2]} {b.dtype}" for b, _ in parts[:4])
            raise _fail(path, f"TIFF holds {len(parts)} series of different slice shapes or types ({shapes}"
                              f"{', ...' if len(parts) > 4 else ''}); save it as one stack")
    return np.concatenate([a for a, _ in parts])


def _read_png_mask(path: Path):
    """A palette (indexed-colour) PNG mask as its palette indices (what label tools write), else None."""
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im) if im.mode == "P" else None


def _read_image(path: Path, what: str = "image") -> np.ndarray:
    if path.suffix.lower() != ".png":
        return read_tiff(path, what)
    import imageio.v3 as iio

    try:
        palette = _read_png_mask(path) if what == "mask" else None
        a = np.asarray(iio.imread(path)) if palette is None else palette
    except Exception as exc:
        raise _fail(path, f"cannot read PNG ({_one_line(exc) or type(exc).__name__})") from exc
    if palette is not None:
        return _to_zyx(a, path, colour=False)
    return _to_zyx(a, path, colour=a.ndim == 3, what=what)  # a 2D PNG is never a stack: 3D means channels


# ----------------------------------------------------------------------------- loading
def _stack_scaling(raw, path, reference, reference_name):
    if reference is None:
        return image_scaling(raw, path)
    return common_scaling(raw, reference, path, reference_name)


def load_stack_pair(image_path, mask_path, reference: Optional[dict] = None,
                    reference_name: str = "the training stack") -> Volume:
    """Load an EPFL-style image stack and its ground-truth stack. With `reference` (the training stack's
    scaling) the images are put on that scale or refused (`common_scaling`)."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    raw_img, raw_mask = read_tiff(image_path), read_tiff(mask_path, what="mask")
    if raw_img.shape != raw_mask.shape:
        raise _fail(image_path, f"shape {raw_img.shape} does not match mask {mask_path} "
                                f"shape {raw_mask.shape}")
    scaling = _stack_scaling(raw_img, image_path, reference, reference_name)
    return Volume(images=apply_scaling(raw_img, scaling), masks=scale_mask(raw_mask, mask_path),
                  slice_names=[f"{image_path.name}[z={z}]" for z in range(raw_img.shape[0])],
                  source=f"{image_path} + {mask_path}", scaling={**scaling, "file": str(image_path)})


def _natural_key(stem: str):
    # "slice_2" before "slice_10": slices are ordered by z, and split_slices relies on that order.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def _list_images(folder: Path) -> dict:
    if not folder.is_dir():
        raise _fail(folder, "folder not found")
    by_stem = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in by_stem:
                raise _fail(folder, f"two files share the stem '{p.stem}' "
                                    f"({by_stem[p.stem].name}, {p.name})")
            by_stem[p.stem] = p
    if not by_stem:
        raise _fail(folder, f"no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return by_stem


def load_folder_pairs(images_dir, masks_dir, reference: Optional[dict] = None,
                      reference_name: str = "the training images") -> Volume:
    """Load 2D slices from two folders, pairing image and mask by file stem.

    Pairing by stem (never by listing order) matters: os.listdir order is filesystem-dependent,
    and an off-by-one pairing produces a model that trains fine on wrong labels. The slices are
    scaled together, as one stack (a dim slice must not be read at another bit depth than the rest),
    so every file must share one dtype.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    imgs, masks = _list_images(images_dir), _list_images(masks_dir)
    no_mask, no_img = sorted(set(imgs) - set(masks)), sorted(set(masks) - set(imgs))
    if no_mask or no_img:
        def few(names):
            return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") or "none"

        raise _fail(images_dir, f"unpaired files vs {masks_dir}: {len(no_mask)} images without "
                                f"mask ({few(no_mask)}); {len(no_img)} masks without image "
                                f"({few(no_img)})")
    stems = sorted(imgs, key=_natural_key)
    image_slices, mask_slices, first = [], [], None
    for stem in stems:
        img, mask = _read_image(imgs[stem]), _read_image(masks[stem], what="mask")
        for p, a in ((imgs[stem], img), (masks[stem], mask)):
            if a.shape[0] != 1:
                raise _fail(p, f"expected a single 2D image, found {a.shape[0]} slices")
        if img.shape != mask.shape:
            raise _fail(imgs[stem], f"shape {img.shape[1]}x{img.shape[2]} does not match mask "
                                    f"{masks[stem]} shape {mask.shape[1]}x{mask.shape[2]}")
        if first is None:
            first = (imgs[stem], img.shape)
        elif img.shape != first[1]:
            raise _fail(imgs[stem], f"shape {img.shape[1]}x{img.shape[2]} differs from "
                                    f"{first[0].name} ({first[1][1]}x{first[1][2]}); "
                                    "all slices must share one shape")
        elif img.dtype != image_slices[0].dtype:
            raise _fail(imgs[stem], f"dtype {img.dtype} differs from {first[0].name} ({image_slices[0].dtype}); "
                                    "all slices must share one type (they are scaled as one stack)")
        image_scaling(img, imgs[stem])   # NaN, negative or unusual values: name the file
        image_slices.append(img[0])
        mask_slices.append(scale_mask(mask[0], masks[stem]))
    raw = np.stack(image_slices)
    scaling = _stack_scaling(raw, images_dir, reference, reference_name)
    return Volume(images=apply_scaling(raw, scaling), masks=np.stack(mask_slices),
                  slice_names=stems, source=f"{images_dir} + {masks_dir}",
                  scaling={**scaling, "file": str(images_dir)})


def _find_file(folder: Path, stem: str):
    """Case-insensitive lookup of <stem>.tif / <stem>.tiff in folder (None if absent)."""
    for suffix in (".tif", ".tiff"):
        for p in folder.iterdir():
            if p.is_file() and p.name.lower() == stem + suffix:
                return p
    return None


def _load_optional_pair(data_dir: Path, image, mask, loader, what, reference=None):
    """Load a pair if both exist; None if neither; DataError if only one (likely a mistake)."""
    if image is None and mask is None:
        return None
    if image is None or mask is None:
        have, missing = (image, what[1]) if mask is None else (mask, what[0])
        raise _fail(data_dir, f"found {Path(have).name} but not its partner {missing}")
    if reference is None:
        return loader(image, mask)
    return loader(image, mask, reference.scaling, Path(reference.scaling["file"]).name)


def _check_slices(train: Volume, where) -> None:
    if len(train.images) < 2:
        raise _fail(where, f"{len(train.images)} slice; training needs at least 2 whole slices "
                           "(training and validation are separate slices)")


def _layout(data_dir: Path):
    """("stack" | "folders", (train image, train mask), (test image, test mask)) as `load_dataset` reads
    them (entries None when absent): the one home of the layout rules (also used by `dataset_files`)."""
    if data_dir.is_file():
        raise _fail(data_dir, f"is a file, not a data folder; give the folder that holds it ({_EXPECTED_LAYOUT})")
    if not data_dir.is_dir():
        raise _fail(data_dir, f"data folder not found ({_EXPECTED_LAYOUT})")
    sub = lambda name: data_dir / name if (data_dir / name).is_dir() else None
    stack = (_find_file(data_dir, "training"), _find_file(data_dir, "training_groundtruth"))
    if any(stack):  # stacks take precedence: they are the canonical EPFL/Lucchi format
        return "stack", stack, (_find_file(data_dir, "testing"), _find_file(data_dir, "testing_groundtruth"))
    folders = (sub("images"), sub("masks"))
    if any(folders):
        return "folders", folders, (sub("test_images"), sub("test_masks"))
    raise _fail(data_dir, f"no recognised dataset layout; {_EXPECTED_LAYOUT}")


def dataset_files(data_dir) -> list[Path]:
    """Every file `load_dataset(data_dir)` reads (through symlinked files and folders alike)."""
    kind, train, test = _layout(Path(data_dir))
    files = []
    for part in (*train, *test):
        if part is not None:
            files += [part] if kind == "stack" else [part / name for name in
                                                     sorted(p.name for p in _list_images(part).values())]
    return files


def load_dataset(data_dir):
    """Auto-detect the layout of data_dir and return (train Volume, test Volume or None)."""
    data_dir = Path(data_dir)
    kind, train_pair, test_pair = _layout(data_dir)
    if kind == "stack":
        train = _load_optional_pair(data_dir, *train_pair, load_stack_pair,
                                    ("training.tif", "training_groundtruth.tif"))
        _check_slices(train, train_pair[0])
        test = _load_optional_pair(data_dir, *test_pair, load_stack_pair,
                                   ("testing.tif", "testing_groundtruth.tif"), reference=train)
    else:
        train = _load_optional_pair(data_dir, *train_pair, load_folder_pairs, ("images/", "masks/"))
        _check_slices(train, train_pair[0])
        test = _load_optional_pair(data_dir, *test_pair, load_folder_pairs,
                                   ("test_images/", "test_masks/"), reference=train)
    if not train.masks.any():
        # An all-background mask trains a model that predicts background everywhere and still
        # reports ~100% pixel accuracy; stop here instead.
        raise _fail(train_pair[1], "masks contain no foreground pixels")
    return train, test


def log_scaling(train_scaling: Optional[dict], test_scaling: Optional[dict], log) -> None:
    """The chosen scaling of the training (and test) images, one line each (README: Data layouts)."""
    for what, scaling in (("training", train_scaling), ("test", test_scaling)):
        if scaling is not None:
            log(f"image scaling ({what}): {scaling.get('file', '?')}: {describe_scaling(scaling)}")


# ----------------------------------------------------------------------------- splitting & patches
def split_slices(n_slices, val_fraction=0.1, val_position="end"):
    """Split slice indices into (train_idx, val_idx) with validation as ONE contiguous block.

    Adjacent EM slices are near-duplicates, so a random patch/slice split leaks training data
    into validation and inflates the score; a contiguous block only touches training at its ends.
    """
    if not isinstance(n_slices, (int, np.integer)) or n_slices < 2:
        raise _fail("split_slices", f"need at least 2 slices to split, got {n_slices}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise _fail("split_slices", f"val_fraction must be in (0, 1), got {val_fraction}")
    n = int(n_slices)
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    starts = {"start": 0, "middle": (n - n_val) // 2, "end": n - n_val}
    if val_position not in starts:
        raise _fail("split_slices", f"val_position must be one of {sorted(starts)}, "
                                    f"got {val_position!r}")
    val = np.arange(starts[val_position], starts[val_position] + n_val)
    train = np.setdiff1d(np.arange(n), val)
    return train.astype(np.int64), val.astype(np.int64)


def tile_patches(volume_array, patch_size, source="tile_patches") -> np.ndarray:
    """(z, y, x) -> (n, p, p) non-overlapping tiles in z, row, column order; edges dropped.

    `source` (e.g. Volume.source) names the data in error messages.
    """
    a = np.asarray(volume_array)
    p = int(patch_size)
    if a.ndim != 3:
        raise _fail(source, f"expected a (z, y, x) array, got shape {a.shape}")
    if p < 1:
        raise _fail(source, f"patch size must be >= 1, got {patch_size}")
    z, h, w = a.shape
    if h < p or w < p:
        raise _fail(source, f"slice of {h}x{w} is smaller than the patch size {p}")
    ny, nx = h // p, w // p
    tiles = a[:, : ny * p, : nx * p].reshape(z, ny, p, nx, p).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(tiles.reshape(z * ny * nx, p, p))


def augment_pair(image, mask, rng):
    """Apply the same random flip(s) and 90-degree rotation to an image and its mask."""
    k = int(rng.integers(4))
    flip_lr, flip_ud = bool(rng.integers(2)), bool(rng.integers(2))

    def transform(a):
        a = np.fliplr(a) if flip_lr else a
        a = np.flipud(a) if flip_ud else a
        return np.ascontiguousarray(np.rot90(a, k, axes=(0, 1)))

    return transform(np.asarray(image)), transform(np.asarray(mask))


# ----------------------------------------------------------------------------- synthetic EM
def _smooth_field(rng, shape, cell, z_cell=4.0):
    """Smooth random field (zero mean, unit std): coarse noise spread by separable Gaussian bumps.

    Three small matrix products replace a wide 3D blur or spline zoom (~100x cheaper); the
    coarse z spacing makes the texture drift slowly between slices, like a real z-stack.
    """
    def bumps(n, spacing):  # (n, m) weights of m coarse nodes (with margin) at n fine positions
        nodes = np.arange(-2, n / spacing + 3) * spacing
        w = np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None, :]) / spacing) ** 2)
        # Unit L2 norm per row => every voxel of the field has exactly unit variance.
        return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)

    mz, my, mx = bumps(shape[0], z_cell), bumps(shape[1], cell), bumps(shape[2], cell)
    coarse = rng.standard_normal((mz.shape[1], my.shape[1], mx.shape[1]), dtype=np.float32)
    f = np.einsum("zi,ijk->zjk", mz, coarse)
    f = np.einsum("yj,zjk->zyk", my, f)
    return np.einsum("xk,zyk->zyx", mx, f, optimize=True)


def make_synthetic_em(n_slices=12, height=256, width=256, seed=0, foreground_target=0.08):
    """EM-like stack with exact mitochondria masks: returns (images uint8, masks uint8 {0,255}).

    Mitochondria are dark elongated ellipses with a darker outline and striped cristae. Dark
    membrane lines and round vesicles are distractors (not in the mask), so a global intensity
    threshold cannot reproduce the mask but shape/texture (what a U-Net sees) can. Each object
    is a 3D body drifting a little from slice to slice, so neighbouring slices are similar.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    shape = (int(n_slices), int(height), int(width))
    z_idx = np.arange(shape[0])
    img = 0.62 + 0.07 * _smooth_field(rng, shape, 24) + 0.05 * _smooth_field(rng, shape, 4)
    # Membranes: thin dark lines along the zero level set of a smooth field (curved, branching).
    membrane = _smooth_field(rng, shape, 40)
    img -= 0.30 * np.exp(-((membrane / 0.06) ** 2))

    def paint(zi, cy, cx, a, b, theta, values_fn):
        """Evaluate an ellipse in its bounding box; values_fn(u, v, r) -> (inside, value)."""
        ext = int(np.ceil(max(a, b))) + 2
        y0, y1 = max(int(cy) - ext, 0), min(int(cy) + ext + 1, shape[1])
        x0, x1 = max(int(cx) - ext, 0), min(int(cx) + ext + 1, shape[2])
        if y0 >= y1 or x0 >= x1:
            return None
        yy, xx = np.mgrid[y0:y1, x0:x1]
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        inside, value = values_fn(u, v, np.sqrt((u / a) ** 2 + (v / b) ** 2))
        region = img[zi, y0:y1, x0:x1]
        region[inside] = value[inside]
        return (slice(y0, y1), slice(x0, x1)), inside

    def track():
        """Centre path of a 3D body: random start, slow linear drift plus jitter (pixels)."""
        start = rng.uniform(0, 1, 2) * shape[1:]
        drift = rng.normal(0, 0.8, 2)
        jitter = np.cumsum(rng.normal(0, 0.3, (shape[0], 2)), axis=0)
        return start + drift * (z_idx - shape[0] / 2)[:, None] + jitter

    # Vesicles: small dark discs (distractors) with a slightly lighter core.
    n_vesicles = int(rng.poisson(35 * shape[1] * shape[2] / 256**2))
    for _ in range(n_vesicles):
        centres, radius = track(), rng.uniform(2.5, 5.0)
        shade = rng.uniform(0.22, 0.34)
        for zi in z_idx:
            paint(zi, *centres[zi], radius, radius, 0.0,
                  lambda u, v, r: (r <= 1, shade + 0.08 * (r < 0.5)))

    # Mitochondria: add 3D bodies until the union mask reaches the target foreground fraction.
    masks = np.zeros(shape, np.uint8)
    area, area_goal = 0, foreground_target * masks.size
    for _ in range(500):  # bounded: a tiny image may never reach the target
        if area >= area_goal:
            break
        a0, b0 = rng.uniform(12, 30), rng.uniform(6, 11)
        theta0, z_c, z_r = rng.uniform(0, np.pi), rng.uniform(-2, shape[0] + 2), rng.uniform(8, 30)
        centres = track()
        period, phase = rng.uniform(4.0, 6.0), rng.uniform(0, 2 * np.pi)
        base = rng.uniform(0.38, 0.46)  # interior grey: darker than cytoplasm, lighter than rim
        for zi in z_idx:
            scale = 1 - ((zi - z_c) / z_r) ** 2  # cross-section of an ellipsoid along z
            if scale < 0.3:
                continue
            a, b = a0 * np.sqrt(scale), b0 * np.sqrt(scale)
            theta = theta0 + 0.02 * (zi - z_c)

            def mito(u, v, r, b=b):
                rim = r > 1 - 2.0 / b  # ~2 px dark double membrane
                cristae = base + 0.09 * np.cos(2 * np.pi * u / period + phase)
                return r <= 1, np.where(rim, 0.24, cristae)

            painted = paint(zi, *centres[zi], a, b, theta, mito)
            if painted is not None:
                region = masks[zi][painted[0]]
                area += int(np.count_nonzero(painted[1] & (region == 0)))
                region[painted[1]] = 1

    img = gaussian_filter(img, sigma=(0, 0.7, 0.7))  # microscope blur: soft, not pixel-hard edges
    img += np.float32(0.05) * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), masks * np.uint8(255)


def synthetic_volumes(n_slices: int, size: int) -> tuple[Volume, Volume]:
    """The built-in synthetic training volume (seed 1234) and its 4-slice test volume (seed 4321)."""
    def volume(n, seed, name, source):
        images, masks = make_synthetic_em(n, size, size, seed=seed)
        scaling = {**image_scaling(images, name), "file": name}
        return Volume(apply_scaling(images, scaling), scale_mask(masks, name),
                      [f"{name}[z={z}]" for z in range(n)], source, scaling)

    return (volume(n_slices, 1234, "synthetic", f"built-in synthetic EM ({n_slices} x {size}^2, seed 1234)"),
            volume(4, 4321, "synthetic_test", "built-in synthetic EM test (seed 4321)"))


def _atomic_imwrite(path: Path, array: np.ndarray) -> None:
    """Write a TIFF via a temporary file + os.replace, so readers never see a half-written file
    (several array jobs may create the same synthetic dataset at once)."""
    import tifffile

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tifffile.imwrite(tmp, array, photometric="minisblack")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_synthetic_dataset(out_dir, n_slices=12, height=256, width=256, seed=0,
                            with_test=True, layout="stack") -> Path:
    """Write a synthetic dataset in either layout that `load_dataset` understands."""
    if layout not in ("stack", "folders"):
        raise _fail(out_dir, f"unknown layout {layout!r}; expected 'stack' or 'folders'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [("training", seed)] + ([("testing", seed + _TEST_SEED_OFFSET)] if with_test else [])
    for name, part_seed in parts:
        images, masks = make_synthetic_em(n_slices, height, width, seed=part_seed)
        if layout == "stack":
            _atomic_imwrite(out_dir / f"{name}.tif", images)
            _atomic_imwrite(out_dir / f"{name}_groundtruth.tif", masks)
            continue
        prefix = "" if name == "training" else "test_"
        for sub, stack in ((f"{prefix}images", images), (f"{prefix}masks", masks)):
            (out_dir / sub).mkdir(exist_ok=True)
            for z, slice_ in enumerate(stack):
                _atomic_imwrite(out_dir / sub / f"slice_{z:03d}.tif", slice_)
    return out_dir
