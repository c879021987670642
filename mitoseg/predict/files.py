"""The files of a prediction: input stacks read as training reads them and put on the model's scale,
ground-truth masks, the TIFF written (atomically), and the refusal of an output that is an input."""
from __future__ import annotations

import sys
from pathlib import Path

from mitoseg.predict.model import PredictError


def check_outputs(outputs: dict, inputs: dict, overwrite: bool) -> None:
    """Refuse, before anything is computed, an output that is one of the command's inputs, two outputs
    naming one file, a folder, or an existing file without --overwrite. `outputs`/`inputs`: {flag: path}."""
    from mitoseg.core.io_utils import same_file
    seen: dict = {}
    for flag, path in outputs.items():
        for in_flag, in_path in inputs.items():
            if in_path is not None and same_file(path, in_path):
                raise PredictError(f"{flag} {path} is the same file as {in_flag} {in_path}: refusing to overwrite an input")
        for other_flag, other in seen.items():
            if same_file(path, other):
                raise PredictError(f"{flag} {path} and {other_flag} {other} name the same file")
        seen[flag] = path
        if Path(path).is_dir():
            raise PredictError(f"{flag} {path} is a folder, not a file")
        if Path(path).exists() and not overwrite:
            raise PredictError(f"{flag} {path} already exists; add --overwrite to replace it")



def read_image_noted(path, what):
    """(z, y, x) of a file read as training reads its files (mitoseg.data.image_files: by what the file declares),
    with one line per conversion it needed."""
    from mitoseg.data.image_files import read_image, summarise_notes
    notes: list = []
    raw = read_image(path, what, notes)
    for line in summarise_notes(notes):
        print(f"reading: {line}")
    return raw



def read_stack(path, reference=None, reference_name="the model's training images"):
    """Model input of a TIFF stack: on the scale of `reference` (the model's recorded training scaling;
    refused when it cannot be), else by its own values. Returns (images, scaling)."""
    from mitoseg.core.errors import DataError
    from mitoseg.data.scaling import apply_scaling, common_scaling, image_scaling
    try:
        raw = read_image_noted(path, "image")
        scaling = (image_scaling(raw, str(path)) if reference is None
                   else common_scaling(raw, reference, str(path), reference_name))
        return apply_scaling(raw, scaling), scaling
    except DataError as err:
        raise PredictError(str(err)) from None



def read_mask_stack(path):
    """{0, 1} masks of a ground-truth TIFF; a warning line when they are more foreground than background."""
    from mitoseg.data.stacks import inverted_mask_warning
    from mitoseg.core.errors import DataError
    from mitoseg.data.scaling import scale_mask
    try:
        masks = scale_mask(read_image_noted(path, "mask"), str(path))
    except DataError as err:
        raise PredictError(str(err)) from None
    warning = inverted_mask_warning(masks, path)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return masks



def write_tiff(path, array):
    import tifffile

    from mitoseg.core.io_utils import atomic_save
    path = Path(path)
    try:
        # minisblack: tifffile would declare a 3- or 4-slice stack RGB(A) planes (read back as refused)
        atomic_save(path, lambda tmp: tifffile.imwrite(tmp, array, photometric="minisblack"))
    except OSError as err:
        raise PredictError(f"{path}: cannot write ({err.strerror or err})") from None
