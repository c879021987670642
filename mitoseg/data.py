"""Input data for mitochondria segmentation: read and validate the training (and test) data.

Owns reading TIFF/PNG files as (z, y, x) stacks, pairing images with masks, the checks of what was
read, and the `Volume` the data become (`load_dataset`). Which files a folder's data are (the two
layouts, `dataset_files`, `source_files`) is mitoseg/layout.py; grey values are scaled by
mitoseg/scaling.py. Plain numpy (no TensorFlow), so it can be imported and tested cheaply.

Every problem with the input is raised as a `DataError` (mitoseg.input_error) whose message is one
line naming the file (or folder) and the problem, because these messages end up in scheduler logs
where a traceback from deep inside tifffile tells a user nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .input_error import DataError, data_error, one_line
from .layout import detect_layout, list_images, natural_key
from .scaling import apply_scaling, common_scaling, image_scaling, scale_mask



@dataclass
class Volume:
    """A stack of slices with matching binary masks."""

    images: np.ndarray  # (z, y, x) float32 in [0, 1]
    masks: np.ndarray  # (z, y, x) uint8 in {0, 1}
    slice_names: list[str]  # one per slice: file stem (folders) or "training.tif[z=5]" (stacks)
    source: str  # human-readable origin (paths)
    scaling: Optional[dict] = None  # how the grey values became `images` (`image_scaling`); None: unknown
    # The validation block (indices into this volume) when a fold split decided it together with a test
    # block cut from the same stack (cell_data.hold_out_test_slices); None: patches.split_slices decides.
    val_slices: Optional[list] = None

    @property
    def foreground_fraction(self) -> float:
        return float(self.masks.mean()) if self.masks.size else 0.0


# ----------------------------------------------------------------------------- reading
def _to_zyx(a: np.ndarray, path, colour: bool, what: str = "image") -> np.ndarray:
    """Normalise a decoded image to (z, y, x): colour -> grey, drop leading singleton axes.

    A colour *mask* is never averaged into grey (a red-on-black label would become {0, 85}): one whose
    channels are equal is read from its first channel, any other is refused with a line saying so."""
    if colour and what == "mask":
        channels = a[..., :1] if a.shape[-1] == 2 else a[..., :3]
        if not (channels == channels[..., :1]).all():
            raise data_error(path, "mask is a colour image (its colour channels differ); save masks as "
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
        raise data_error(path, f"unsupported image shape {a.shape} (expected 2D image or 3D z-stack)")
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
        raise data_error(path, f"cannot read TIFF ({reason})")
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
        raise data_error(path, f"cannot read TIFF ({one_line(exc) or type(exc).__name__})") from exc
    finally:
        tiff_logger.setLevel(old_level)
    if not parts:
        raise data_error(path, "cannot read TIFF (no image data)")
    if len(parts) == 1:
        return parts[0][0]
    first = parts[0][0]
    for a, _ in parts[1:]:
        if a.shape[1:] != first.shape[1:] or a.dtype != first.dtype:
            shapes = ", ".join(f"{b.shape[1]}x{b.shape[2]} {b.dtype}" for b, _ in parts[:4])
            raise data_error(path, f"TIFF holds {len(parts)} series of different slice shapes or types ({shapes}"
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
        raise data_error(path, f"cannot read PNG ({one_line(exc) or type(exc).__name__})") from exc
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
        raise data_error(image_path, f"shape {raw_img.shape} does not match mask {mask_path} "
                                     f"shape {raw_mask.shape}")
    scaling = _stack_scaling(raw_img, image_path, reference, reference_name)
    return Volume(images=apply_scaling(raw_img, scaling), masks=scale_mask(raw_mask, mask_path),
                  slice_names=[f"{image_path.name}[z={z}]" for z in range(raw_img.shape[0])],
                  source=f"{image_path} + {mask_path}", scaling={**scaling, "file": str(image_path)})


def load_folder_pairs(images_dir, masks_dir, reference: Optional[dict] = None,
                      reference_name: str = "the training images") -> Volume:
    """Load 2D slices from two folders, pairing image and mask by file stem.

    Pairing by stem (never by listing order) matters: os.listdir order is filesystem-dependent,
    and an off-by-one pairing produces a model that trains fine on wrong labels. The slices are
    scaled together, as one stack (a dim slice must not be read at another bit depth than the rest),
    so every file must share one dtype.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    imgs, masks = list_images(images_dir), list_images(masks_dir)
    no_mask, no_img = sorted(set(imgs) - set(masks)), sorted(set(masks) - set(imgs))
    if no_mask or no_img:
        def few(names):
            return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") or "none"

        raise data_error(images_dir, f"unpaired files vs {masks_dir}: {len(no_mask)} images without "
                                     f"mask ({few(no_mask)}); {len(no_img)} masks without image "
                                     f"({few(no_img)})")
    stems = sorted(imgs, key=natural_key)
    image_slices, mask_slices, first = [], [], None
    for stem in stems:
        img, mask = _read_image(imgs[stem]), _read_image(masks[stem], what="mask")
        for p, a in ((imgs[stem], img), (masks[stem], mask)):
            if a.shape[0] != 1:
                raise data_error(p, f"expected a single 2D image, found {a.shape[0]} slices")
        if img.shape != mask.shape:
            raise data_error(imgs[stem], f"shape {img.shape[1]}x{img.shape[2]} does not match mask "
                                         f"{masks[stem]} shape {mask.shape[1]}x{mask.shape[2]}")
        if first is None:
            first = (imgs[stem], img.shape)
        elif img.shape != first[1]:
            raise data_error(imgs[stem], f"shape {img.shape[1]}x{img.shape[2]} differs from "
                                         f"{first[0].name} ({first[1][1]}x{first[1][2]}); "
                                         "all slices must share one shape")
        elif img.dtype != image_slices[0].dtype:
            raise data_error(imgs[stem], f"dtype {img.dtype} differs from {first[0].name} ({image_slices[0].dtype}); "
                                         "all slices must share one type (they are scaled as one stack)")
        image_scaling(img, imgs[stem])   # NaN, negative or unusual values: name the file
        image_slices.append(img[0])
        mask_slices.append(scale_mask(mask[0], masks[stem]))
    raw = np.stack(image_slices)
    scaling = _stack_scaling(raw, images_dir, reference, reference_name)
    return Volume(images=apply_scaling(raw, scaling), masks=np.stack(mask_slices),
                  slice_names=stems, source=f"{images_dir} + {masks_dir}",
                  scaling={**scaling, "file": str(images_dir)})


def _load_optional_pair(data_dir: Path, image, mask, loader, what, reference=None):
    """Load a pair if both exist; None if neither; DataError if only one (likely a mistake)."""
    if image is None and mask is None:
        return None
    if image is None or mask is None:
        have, missing = (image, what[1]) if mask is None else (mask, what[0])
        raise data_error(data_dir, f"found {Path(have).name} but not its partner {missing}")
    if reference is None:
        return loader(image, mask)
    return loader(image, mask, reference.scaling, Path(reference.scaling["file"]).name)


def _check_slices(train: Volume, where) -> None:
    if len(train.images) < 2:
        raise data_error(where, f"{len(train.images)} slice; training needs at least 2 whole slices "
                                "(training and validation are separate slices)")


def load_dataset(data_dir):
    """Auto-detect the layout of data_dir and return (train Volume, test Volume or None)."""
    data_dir = Path(data_dir)
    kind, train_pair, test_pair = detect_layout(data_dir)
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
        raise data_error(train_pair[1], "masks contain no foreground pixels")
    return train, test
