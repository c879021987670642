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

    @property
    def foreground_fraction(self) -> float:
        return float(self.masks.mean()) if self.masks.size else 0.0


# ----------------------------------------------------------------------------- scaling
def scale_image(array, path="<array>") -> np.ndarray:
    """Image of any common dtype -> float32 in [0, 1]; `path` only names the file in errors.

    uint8 /255, uint16 /65535, bool -> 0/1, float already in [0, 1] kept as is, other integer
    or float data min-max scaled (constant -> 0). NaN/inf or non-numeric data -> DataError.
    """
    a = np.asarray(array)
    if a.size == 0:
        raise _fail(path, f"image is empty (shape {a.shape})")
    if a.dtype == bool:
        return a.astype(np.float32)
    # Fixed ranges for uint8/uint16 keep brightness comparable between files; min-max scaling
    # would stretch a dim slice and a bright slice to the same contrast.
    if a.dtype in (np.uint8, np.uint16):
        return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    is_float = np.issubdtype(a.dtype, np.floating)
    if not (is_float or np.issubdtype(a.dtype, np.integer)):
        raise _fail(path, f"unsupported image dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise _fail(path, "image contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if is_float and lo >= 0.0 and hi <= 1.0:
        return a.astype(np.float32)  # already a [0, 1] image: keep absolute intensities
    if hi == lo:
        return np.zeros(a.shape, np.float32)
    # Halving first is exact and stops hi - lo overflowing for extreme float64 values.
    out = (a / 2 - lo / 2) / (hi / 2 - lo / 2)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


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
def _to_zyx(a: np.ndarray, path, colour: bool) -> np.ndarray:
    """Normalise a decoded image to (z, y, x): colour -> grey, drop leading singleton axes."""
    if colour:
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


def read_tiff(path) -> np.ndarray:
    """Read a TIFF as (z, y, x); a 2D image becomes (1, y, x); colour becomes grey."""
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
            series = tif.series[0]
            a, axes = np.asarray(series.asarray()), series.axes
    except Exception as exc:  # tifffile raises many types on corrupt input; all mean "bad file"
        raise _fail(path, f"cannot read TIFF ({_one_line(exc) or type(exc).__name__})") from exc
    finally:
        tiff_logger.setLevel(old_level)
    # Colour if the file says so (samples axis last), or if the last axis is 3/4 wide while the
    # two before it are image-sized: no real z-stack is 3 pixels wide, many RGB exports are.
    looks_rgb = a.ndim >= 3 and a.shape[-1] in (3, 4) and min(a.shape[-3:-1]) > 4
    return _to_zyx(a, path, colour=axes.endswith("S") or looks_rgb)


def _read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() != ".png":
        return read_tiff(path)
    import imageio.v3 as iio

    try:
        a = np.asarray(iio.imread(path))
    except Exception as exc:
        raise _fail(path, f"cannot read PNG ({_one_line(exc) or type(exc).__name__})") from exc
    return _to_zyx(a, path, colour=a.ndim == 3)  # a 2D PNG is never a stack: 3D means channels


# ----------------------------------------------------------------------------- loading
def load_stack_pair(image_path, mask_path) -> Volume:
    """Load an EPFL-style image stack and its ground-truth stack."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    raw_img, raw_mask = read_tiff(image_path), read_tiff(mask_path)
    if raw_img.shape != raw_mask.shape:
        raise _fail(image_path, f"shape {raw_img.shape} does not match mask {mask_path} "
                                f"shape {raw_mask.shape}")
    return Volume(images=scale_image(raw_img, image_path), masks=scale_mask(raw_mask, mask_path),
                  slice_names=[f"{image_path.name}[z={z}]" for z in range(raw_img.shape[0])],
                  source=f"{image_path} + {mask_path}")


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


def load_folder_pairs(images_dir, masks_dir) -> Volume:
    """Load 2D slices from two folders, pairing image and mask by file stem.

    Pairing by stem (never by listing order) matters: os.listdir order is filesystem-dependent,
    and an off-by-one pairing produces a model that trains fine on wrong labels.
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
        img, mask = _read_image(imgs[stem]), _read_image(masks[stem])
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
        image_slices.append(scale_image(img[0], imgs[stem]))
        mask_slices.append(scale_mask(mask[0], masks[stem]))
    return Volume(images=np.stack(image_slices), masks=np.stack(mask_slices),
                  slice_names=stems, source=f"{images_dir} + {masks_dir}")


def _find_file(folder: Path, stem: str):
    """Case-insensitive lookup of <stem>.tif / <stem>.tiff in folder (None if absent)."""
    for suffix in (".tif", ".tiff"):
        for p in folder.iterdir():
            if p.is_file() and p.name.lower() == stem + suffix:
                return p
    return None


def _load_optional_pair(data_dir: Path, image, mask, loader, what):
    """Load a pair if both exist; None if neither; DataError if only one (likely a mistake)."""
    if image is None and mask is None:
        return None
    if image is None or mask is None:
        have, missing = (image, what[1]) if mask is None else (mask, what[0])
        raise _fail(data_dir, f"found {Path(have).name} but not its partner {missing}")
    return loader(image, mask)


def load_dataset(data_dir):
    """Auto-detect the layout of data_dir and return (train Volume, test Volume or None)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise _fail(data_dir, f"data folder not found ({_EXPECTED_LAYOUT})")
    sub = lambda name: data_dir / name if (data_dir / name).is_dir() else None
    stack = (_find_file(data_dir, "training"), _find_file(data_dir, "training_groundtruth"))
    folders = (sub("images"), sub("masks"))
    if any(stack):  # stacks take precedence: they are the canonical EPFL/Lucchi format
        train = _load_optional_pair(data_dir, *stack, load_stack_pair,
                                    ("training.tif", "training_groundtruth.tif"))
        test = _load_optional_pair(data_dir, _find_file(data_dir, "testing"),
                                   _find_file(data_dir, "testing_groundtruth"), load_stack_pair,
                                   ("testing.tif", "testing_groundtruth.tif"))
        mask_name = stack[1]
    elif any(folders):
        train = _load_optional_pair(data_dir, *folders, load_folder_pairs, ("images/", "masks/"))
        test = _load_optional_pair(data_dir, sub("test_images"), sub("test_masks"),
                                   load_folder_pairs, ("test_images/", "test_masks/"))
        mask_name = folders[1]
    else:
        raise _fail(data_dir, f"no recognised dataset layout; {_EXPECTED_LAYOUT}")
    if not train.masks.any():
        # An all-background mask trains a model that predicts background everywhere and still
        # reports ~100% pixel accuracy; stop here instead.
        raise _fail(mask_name, "masks contain no foreground pixels")
    return train, test


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
