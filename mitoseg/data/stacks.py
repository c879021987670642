"""Input data for mitochondria segmentation: read and validate the training (and test) data.

Owns pairing images with masks, the checks of what was read, and the `Volume` the data become
(`load_dataset`). Files are read as (z, y, x) by what they declare in mitoseg/data/image_files.py (what was
converted is recorded in the volume's scaling as `reading`); which files a folder's data are (the two
layouts, `dataset_files`, `source_files`) is mitoseg/core/layout.py; grey values are scaled by
mitoseg/data/scaling.py. Plain numpy (no TensorFlow), so it can be imported and tested cheaply.

Every problem with the input is raised as a `DataError` (mitoseg.core.errors) whose message is one
line naming the file (or folder) and the problem, because these messages end up in scheduler logs
where a traceback from deep inside tifffile tells a user nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mitoseg.data.image_files import read_image, read_tiff, summarise_notes
from mitoseg.core.errors import data_error
from mitoseg.core.layout import detect_layout, list_images, natural_key
from mitoseg.data.scaling import apply_scaling, common_scaling, image_scaling, scale_mask


INVERTED_MASK_FRACTION = 0.5   # more foreground than this: the mask is named as probably inverted


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


# ----------------------------------------------------------------------------- loading
def _recorded(scaling: dict, where, notes: list) -> dict:
    """The scaling a Volume records: where the images are, and what reading them converted (one line
    per kind of conversion, `summarise_notes`; logged by every cell, kept in the results JSON)."""
    reading = summarise_notes(notes)
    return {**scaling, "file": str(where), **({"reading": reading} if reading else {})}


def _stack_scaling(raw, path, reference, reference_name):
    if reference is None:
        return image_scaling(raw, path)
    return common_scaling(raw, reference, path, reference_name)


def load_stack_pair(image_path, mask_path, reference: Optional[dict] = None,
                    reference_name: str = "the training stack") -> Volume:
    """Load an EPFL-style image stack and its ground-truth stack. With `reference` (the training stack's
    scaling) the images are put on that scale or refused (`common_scaling`)."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    notes: list = []
    raw_img, raw_mask = read_tiff(image_path, notes=notes), read_tiff(mask_path, "mask", notes)
    if raw_img.shape != raw_mask.shape:
        raise data_error(image_path, f"shape {raw_img.shape} does not match mask {mask_path} "
                                     f"shape {raw_mask.shape}")
    scaling = _stack_scaling(raw_img, image_path, reference, reference_name)
    return Volume(images=apply_scaling(raw_img, scaling), masks=scale_mask(raw_mask, mask_path),
                  slice_names=[f"{image_path.name}[z={z}]" for z in range(raw_img.shape[0])],
                  source=f"{image_path} + {mask_path}", scaling=_recorded(scaling, image_path, notes))


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
    image_slices, mask_slices, first, notes = [], [], None, []
    for stem in stems:
        img, mask = read_image(imgs[stem], notes=notes), read_image(masks[stem], "mask", notes)
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
                  scaling=_recorded(scaling, images_dir, notes))


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


def inverted_mask_warning(masks, where) -> Optional[str]:
    """One line when more than half of the mask pixels are foreground: mitochondria are a minority of an
    EM slice, so such a mask is probably saved inverted (255 = background). A warning, not a refusal:
    the data may really be mostly foreground (checks.required_iou stays reachable there)."""
    fraction = float(np.mean(masks)) if np.size(masks) else 0.0
    if fraction <= INVERTED_MASK_FRACTION:
        return None
    return (f"{where}: {fraction:.0%} of the mask pixels are foreground (more than half): the mask is probably "
            "inverted (mitochondria must be 255 or 1, background 0)")


def mask_warnings(train: Volume, test: Optional[Volume]) -> list[str]:
    """The inverted-mask warnings of a cell's volumes (logged by the cell, kept as data.warnings)."""
    found = (inverted_mask_warning(v.masks, v.source) for v in (train, test) if v is not None)
    return [w for w in found if w]


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
    _check_both_classes(train, train_pair[1])
    if test is not None:   # a test volume of one class scores every model alike (IoU 0, or 1 for "all foreground")
        _check_both_classes(test, test_pair[1])
    return train, test


def _check_both_classes(volume: Volume, mask_path) -> None:
    if not volume.masks.any():
        # An all-background mask trains a model that predicts background everywhere and still
        # reports ~100% pixel accuracy; stop here instead.
        raise data_error(mask_path, "masks contain no foreground pixels")
    if volume.masks.all():
        # The mirror case: predicting foreground everywhere scores IoU 1, so no model could be told from one
        # that learned nothing (the cell would finish "ok" with a perfect score).
        raise data_error(mask_path, "masks contain no background pixels (every pixel is foreground: "
                                    "saved inverted? mitochondria must be 255 or 1, background 0)")
