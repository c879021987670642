"""Image files as (z, y, x) grey values, read by what each file declares: the one reader of training,
test and predict.py inputs (`read_image`, `read_tiff`).

A file says how its numbers are meant; reading the numbers alone reads some files as something else
(issue 21: an inverted test stack scored IoU 0.001 where its pixels scored 0.70; a white mask whose
label was in the alpha channel read as all foreground; the two channels of a hyperstack read as two
slices). What is declared, and what becomes of it:

* TIFF axes (tifffile's series axes: ImageJ hyperstack and OME metadata, planar configuration): Y and
  X are the slice, C (channels) and S (samples per pixel) are a pixel's values, every other axis is
  z. A file with two stacking axes longer than 1 (a time series of z-stacks) is refused.
* photometric interpretation: MINISBLACK as stored; MINISWHITE images are inverted (max - value,
  max = 2**BitsPerSample - 1) to the grey a viewer shows, MINISWHITE *masks* keep their stored labels
  (ImageJ binary masks and tifffile's boolean masks are MINISWHITE with 255/True = foreground); RGB
  images become the mean of R, G, B; palette images go through their colour map (a colour, not grey,
  map is refused); CMYK, YCbCr, CIELab, ... are refused.
* extra samples (ExtraSamples, PNG LA/RGBA): alpha is opacity, not intensity; a mask whose colour
  channels are constant while its alpha varies has its label in the alpha channel and is read from
  there. Unspecified extra samples and C channels are read only when they equal the first channel.
* masks are never averaged: a colour mask, a mask whose alpha contradicts its colour, or a palette
  mask whose indices and colours disagree is refused (see `_mask_plane`, `_palette_mask`).

Every conversion appends one note (file, what was done) to `notes`; `summarise_notes` makes them the
log lines (one per kind of conversion, not one per file). Problems are `input_error.DataError`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mitoseg.core.errors import DataError, data_error, one_line

MINISWHITE, MINISBLACK, RGB, PALETTE = 0, 1, 2, 3
ALPHA_EXTRASAMPLES = (1, 2)   # TIFF ExtraSamples: associated and unassociated alpha
CHANNEL_AXES = "CS"           # tifffile: C = channels (ImageJ/OME), S = samples of a pixel


@dataclass
class Planes:
    """A decoded file: (z, y, x, k) values and what the k values of a pixel are."""

    array: np.ndarray
    colour: int = 1                         # leading values that are colour: 1 (grey or palette index) or 3 (RGB)
    alpha: bool = False                     # the value after the colour ones is alpha (opacity)
    palette: Optional[np.ndarray] = None    # (n, 3) colours of the palette indices, on the scale `palette_max`
    palette_max: float = 255.0
    miniswhite_max: Optional[float] = None  # MINISWHITE: the largest value (shown black; 0 is shown white)
    channels: str = "samples"               # what the further values are called in messages


# ----------------------------------------------------------------------------- grey values
def _constant(a: np.ndarray) -> bool:
    return a.size == 0 or bool(a.min() == a.max())


def _extra_values(p: Planes, path, what, notes) -> None:
    """Unspecified extra samples / C channels: read only when each equals the first channel."""
    first, extra = p.array[..., :1], p.array[..., p.colour + p.alpha:]
    if extra.shape[-1] == 0:
        return
    n = p.colour + p.alpha + extra.shape[-1]
    if not (extra == first).all():
        raise data_error(path, f"{what} holds {n} {p.channels} per pixel that differ; save the one channel to "
                               "segment as a single-channel greyscale file")
    notes.append((path, f"{n} identical {p.channels} per pixel: read the first"))


def _palette_mask(p: Planes, path, notes) -> np.ndarray:
    """A palette mask by its indices (what label tools write) when they are 0/1 or 0/255, unless they are
    drawn in grey with the foreground darker (black on white: indices and colours disagree, refused); by
    its colours when only those are black/white; otherwise left to `scale_mask` (refused with its values)."""
    idx = p.array[..., 0]
    used = np.unique(idx)
    grey = p.palette.astype(np.float64).mean(axis=1) / p.palette_max * 255
    is_grey = bool((p.palette[used] == p.palette[used][:, :1]).all())
    if set(used.tolist()) <= {0, 1} or set(used.tolist()) <= {0, 255}:
        if len(used) == 2 and is_grey and grey[used[1]] < grey[used[0]]:   # black label on white: which is it?
            raise data_error(path, f"palette mask: index {used[1]} (foreground) is drawn darker than index {used[0]} "
                                   "(background): indices and colours disagree; save the mask as greyscale 0/255")
        return idx
    if is_grey and set(np.round(grey[used]).tolist()) <= {0.0, 255.0}:
        notes.append((path, f"palette mask read by its colours (black/white), not its indices {used[:4].tolist()}"))
        return (np.round(grey[idx]) == 255).astype(np.uint8)
    return idx


def _mask_plane(p: Planes, path, notes) -> np.ndarray:
    """The label plane of a mask: its (equal) colour channels, or its alpha channel when the colour is
    constant and the alpha is not; refused when colour channels differ or colour and alpha disagree."""
    if p.palette is not None:
        return _palette_mask(p, path, notes)
    colour = p.array[..., :p.colour]
    if not (colour == colour[..., :1]).all():
        raise data_error(path, "mask is a colour image (its colour channels differ); save masks as "
                               "single-channel greyscale 0/255 or 0/1")
    grey = colour[..., 0]
    if p.miniswhite_max is not None:
        notes.append((path, "MINISWHITE mask (shown inverted in viewers): labels read as stored, 255/1 = foreground"))
    if not p.alpha:
        return grey
    alpha = p.array[..., p.colour]
    if _constant(alpha):
        return grey
    if _constant(grey):
        notes.append((path, "label read from the alpha channel (the grey/colour channels are constant)"))
        return alpha
    if ((grey > grey.min()) == (alpha > alpha.min())).all():
        return grey
    raise data_error(path, "mask holds one label in its grey/colour channels and another in its alpha channel; "
                           "save the label as one greyscale channel")


def _invert(grey: np.ndarray, largest: float, path) -> np.ndarray:
    if grey.dtype == bool:
        return ~grey
    if np.issubdtype(grey.dtype, np.unsignedinteger) and (grey.size == 0 or grey.max() <= largest):
        return (grey.dtype.type(largest) - grey).astype(grey.dtype)
    if np.issubdtype(grey.dtype, np.floating) and grey.size and grey.min() >= 0 and grey.max() <= 1:
        return (1 - grey).astype(grey.dtype)
    raise data_error(path, f"MINISWHITE image of {grey.dtype} values above its declared maximum ({largest:g}; "
                           "1 for floats): cannot invert them to grey values; save it as MINISBLACK (0 = black)")


def _palette_image(p: Planes, path, notes) -> np.ndarray:
    colours = p.palette
    if not (colours == colours[:, :1]).all():
        raise data_error(path, "image is a palette (indexed-colour) image with a colour map that is not grey: its "
                               "indices are not grey values; save it as a greyscale image")
    idx = p.array[..., 0]
    grey = colours[:, 0].astype(np.float64) / p.palette_max * (255 if idx.dtype == np.uint8 else 65535)
    lut = np.round(grey).astype(idx.dtype if idx.dtype in (np.uint8, np.uint16) else np.uint16)
    if np.array_equal(lut[: int(idx.max()) + 1], np.arange(int(idx.max()) + 1)):
        return idx
    notes.append((path, "palette image: read through its grey colour map"))
    return lut[idx]


def _image_plane(p: Planes, path, notes) -> np.ndarray:
    """Grey values as a viewer shows them (see the module docstring)."""
    if p.palette is not None:
        return _palette_image(p, path, notes)
    colour = p.array[..., :p.colour]
    if (colour == colour[..., :1]).all():
        grey = colour[..., 0]
    else:
        notes.append((path, "RGB image: grey = mean of R, G, B"))
        mean = colour.astype(np.float64).mean(axis=-1)
        grey = mean.round().astype(colour.dtype) if np.issubdtype(colour.dtype, np.integer) else mean
    if p.alpha and not _constant(p.array[..., p.colour]):
        if _constant(grey):
            raise data_error(path, "image is constant in its grey/colour channels and varies only in its alpha "
                                   "(opacity) channel; save the image itself as greyscale")
        notes.append((path, "alpha (opacity) channel ignored: it is not intensity"))
    if p.miniswhite_max is not None:
        grey = _invert(grey, p.miniswhite_max, path)
        notes.append((path, f"MINISWHITE (0 = white): inverted, value -> {p.miniswhite_max:g} - value, "
                            "to the grey a viewer shows"))
    return grey


def planes_to_zyx(p: Planes, path, what: str, notes: list) -> np.ndarray:
    """(z, y, x) grey values (images) or labels (masks) of decoded planes; DataError when not safe."""
    _extra_values(p, path, what, notes)
    a = _mask_plane(p, path, notes) if what == "mask" else _image_plane(p, path, notes)
    if a.ndim != 3 or a.size == 0:
        raise data_error(path, f"unsupported image shape {a.shape} (expected 2D image or 3D z-stack)")
    return a


# ----------------------------------------------------------------------------- TIFF
def _zyxk(a: np.ndarray, axes: str, path) -> tuple[np.ndarray, str]:
    """(z, y, x, k) of an array with tifffile axes; the channel axes' letters. Refuses two stacking axes."""
    if "Y" not in axes or "X" not in axes:
        raise data_error(path, f"unsupported image shape {a.shape} (axes {axes}: no Y and X)")
    stack = [i for i, ax in enumerate(axes) if ax not in "YX" + CHANNEL_AXES]
    chan = [i for i, ax in enumerate(axes) if ax in CHANNEL_AXES]
    if sum(a.shape[i] > 1 for i in stack) > 1 or sum(a.shape[i] > 1 for i in chan) > 1:
        raise data_error(path, f"unsupported image shape {a.shape} (axes {axes}; expected 2D image or 3D z-stack "
                               "of one channel)")
    b = a.transpose(stack + [axes.index("Y"), axes.index("X")] + chan)
    y, x = a.shape[axes.index("Y")], a.shape[axes.index("X")]
    return b.reshape(-1, y, x, int(np.prod([a.shape[i] for i in chan], dtype=np.int64))), \
        "".join(axes[i] for i in chan if a.shape[i] > 1)


def _declared_axes(series, a: np.ndarray) -> str:
    """The series' axes as in its array; an undeclared (tifffile 'Q'/'I') stack whose slices are 3 or 4 pixels
    wide while image-sized otherwise is an RGB(A) export without its samples tag: no real z-stack is 3 pixels wide."""
    axes = series.axes
    if set(axes) <= set("QIYX"):   # no axis declared (tifffile may put Q between Y and X of tiny shapes)
        axes = "Q" * (a.ndim - 2) + "YX"
    if (axes.endswith("YX") and "S" not in axes and a.ndim >= 3 and a.shape[-1] in (3, 4)
            and min(a.shape[-3:-1]) > 4 and axes[-3] in "QI"):
        return axes[:-3] + "YXS"
    return axes


def _series_planes(series, path, notes) -> Planes:
    page = series.keyframe
    photometric = int(page.photometric)
    if photometric not in (MINISWHITE, MINISBLACK, PALETTE, RGB):
        name = getattr(page.photometric, "name", str(photometric))
        raise data_error(path, f"photometric interpretation {name} is not supported; save the image as greyscale "
                               "(or RGB)")
    a = np.asarray(series.asarray())
    axes = _declared_axes(series, a)
    arr, chan = _zyxk(a, axes, path)
    k = arr.shape[-1]
    if axes.endswith("YXS") and "S" not in series.axes:
        notes.append((path, f"read as colour: its last axis is {k} pixels wide"))
        colour, alpha = 3, k == 4
    else:
        extras = tuple(int(e) for e in (page.extrasamples or ()))
        colour = 3 if photometric == RGB else 1
        alpha = chan == "S" and k > colour and bool(extras) and extras[0] in ALPHA_EXTRASAMPLES
    if k < colour:
        raise data_error(path, f"RGB image with {k} samples per pixel")
    if colour == 3 and int(page.planarconfig) == 2 and not (arr[..., :3] == arr[..., :1]).all():
        raise data_error(path, f"declares RGB in {k} separate planes that differ (tifffile writes a {k}-slice "
                               "array so unless told otherwise): is it a colour image or a z-stack? Save a z-stack "
                               "with photometric='minisblack', a colour image as contiguous RGB")
    palette, palette_max = None, 65535.0
    if photometric == PALETTE:
        palette = np.asarray(page.colormap).T
        palette_max = 65535.0 if palette.max() > 255 else 255.0   # some writers store 8-bit colour maps
    miniswhite_max = float(2 ** int(page.bitspersample) - 1) if photometric == MINISWHITE else None
    return Planes(arr, colour=colour, alpha=alpha, palette=palette, palette_max=palette_max,
                  miniswhite_max=miniswhite_max,
                  channels=f"channels (axes {series.axes})" if chan == "C" else "samples")


def read_tiff(path, what: str = "image", notes: Optional[list] = None) -> np.ndarray:
    """Read a TIFF as (z, y, x) by what it declares (module docstring); a 2D image becomes (1, y, x).

    A TIFF written in several series (e.g. appended chunks) is read whole, its series one after the
    other along z, when they share one slice shape and dtype; otherwise it is refused: reading only
    the first series would silently drop the rest."""
    import tifffile  # local: keeps `import mitoseg.data.stacks` cheap

    path = Path(path)
    notes = [] if notes is None else notes
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
            parts = [planes_to_zyx(_series_planes(series, path, notes), path, what, notes) for series in tif.series]
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types on corrupt input; all mean "bad file"
        raise data_error(path, f"cannot read TIFF ({one_line(exc) or type(exc).__name__})") from exc
    finally:
        tiff_logger.setLevel(old_level)
    return _join_series(parts, path)


def _join_series(parts: list, path) -> np.ndarray:
    if not parts:
        raise data_error(path, "cannot read TIFF (no image data)")
    first = parts[0]
    for a in parts[1:]:
        if a.shape[1:] != first.shape[1:] or a.dtype != first.dtype:
            shapes = ", ".join(f"{b.shape[1]}x{b.shape[2]} {b.dtype}" for b in parts[:4])
            raise data_error(path, f"TIFF holds {len(parts)} series of different slice shapes or types ({shapes}"
                                   f"{', ...' if len(parts) > 4 else ''}); save it as one stack")
    return first if len(parts) == 1 else np.concatenate(parts)


# ----------------------------------------------------------------------------- PNG
_PNG_KINDS = {"1": (1, False), "L": (1, False), "I;16": (1, False), "I;16B": (1, False), "I": (1, False),
              "F": (1, False), "LA": (1, True), "La": (1, True), "RGB": (3, False), "RGBA": (3, True),
              "RGBa": (3, True), "P": (1, False)}


def _png_planes(path: Path) -> Planes:
    from PIL import Image
    with Image.open(path) as im:
        if im.mode == "PA":
            im = im.convert("RGBA")
        if im.mode not in _PNG_KINDS:
            raise data_error(path, f"PNG colour mode {im.mode} is not supported; save the image as greyscale (or RGB)")
        colour, alpha = _PNG_KINDS[im.mode]
        a = np.asarray(im)
        palette = None
        if im.mode == "P":
            palette = np.asarray(im.getpalette() or [], np.uint8).reshape(-1, 3)
            palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
    if a.ndim == 2:
        a = a[..., None]
    return Planes(a[None], colour=colour, alpha=alpha, palette=palette)


def read_png(path, what: str = "image", notes: Optional[list] = None) -> np.ndarray:
    """A PNG as (1, y, x) by its colour mode (L, LA, RGB, RGBA, P: see the module docstring)."""
    path = Path(path)
    notes = [] if notes is None else notes
    try:
        return planes_to_zyx(_png_planes(path), path, what, notes)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many types on corrupt input; all mean "bad file"
        raise data_error(path, f"cannot read PNG ({one_line(exc) or type(exc).__name__})") from exc


def read_image(path, what: str = "image", notes: Optional[list] = None) -> np.ndarray:
    """(z, y, x) of a TIFF or PNG file, read by what it declares; `notes` collects what was converted."""
    path = Path(path)
    return (read_png if path.suffix.lower() == ".png" else read_tiff)(path, what, notes)


def summarise_notes(notes: list) -> list[str]:
    """One line per kind of conversion: 'FILE: what' for one file, 'FOLDER/ (N files, e.g. NAME): what'."""
    by_text: dict = {}
    for path, text in notes:
        by_text.setdefault(text, [])
        if path not in by_text[text]:
            by_text[text].append(path)
    lines = []
    for text, paths in by_text.items():
        if len(paths) == 1:
            lines.append(f"{paths[0]}: {text}")
        else:
            lines.append(f"{Path(paths[0]).parent}/ ({len(paths)} files, e.g. {Path(paths[0]).name}): {text}")
    return lines
