"""A bundle (run_study.py export) as prediction reads it: its manifest and member models checked, each
member's input on its own recorded scale, the mean probability of the members.

Each member sees the input on its own recorded training scale (bundle.json, not a results JSON beside
the model: the bundle is self-contained); the tiles are each model's own input side, as for --model.
--mask thresholds the mean at the bundle's threshold unless --threshold is given.
"""
from __future__ import annotations

import json
from pathlib import Path

from mitoseg.core.paths import BUNDLE_JSON
from mitoseg.predict.files import read_image_noted
from mitoseg.predict.model import PredictError, check_model_file, load_trained_model, predict_stack, resolve_tiling


def load_bundle(folder) -> tuple[dict, list[Path]]:
    """(manifest, member model paths) of one architecture's bundle folder, checked."""
    folder = Path(folder)
    path = folder / BUNDLE_JSON
    if not path.is_file():
        inner = sorted(p.parent.name for p in folder.glob(f"*/{BUNDLE_JSON}")) if folder.is_dir() else []
        raise PredictError(f"--bundle {folder}: no {BUNDLE_JSON}" + (
            f"; it holds one bundle per architecture: pass one of {', '.join(str(folder / a) for a in inner)}"
            if inner else " (make one with run_study.py export)"))
    try:
        manifest = json.loads(path.read_text())
        models = [folder / m["model"] for m in manifest["members"]]
        float(manifest["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PredictError(f"{path}: not a readable bundle manifest ({type(err).__name__}: {err})") from None
    if not models:
        raise PredictError(f"{path}: lists no member model")
    for model in models:
        check_model_file(model)
    return manifest, models


def bundle_scaling(model_path):
    """(scaling, bundle.json path) when `model_path` is a member of the bundle beside it, else None."""
    path = Path(model_path).parent / BUNDLE_JSON
    try:
        members = json.loads(path.read_text())["members"]
        scaling = next(m["scaling"] for m in members if m["model"] == Path(model_path).name)
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
    return (scaling, path) if isinstance(scaling, dict) else None


def scaled_input(raw, member: dict, where: str):
    """The input on the member's training scale (refused when it cannot be put on it)."""
    from mitoseg.core.errors import DataError
    from mitoseg.data.scaling import apply_scaling, common_scaling, image_scaling
    reference = member.get("scaling")
    try:
        scaling = (image_scaling(raw, where) if reference is None
                   else common_scaling(raw, reference, where, f"the training images of {member['cell']}"))
    except DataError as err:
        raise PredictError(str(err)) from None
    if reference is None:
        print(f"{member['cell']}: no recorded scaling: the input is scaled by its own values")
    return apply_scaling(raw, scaling)


def ensemble_probabilities(args, manifest: dict, models: list):
    from mitoseg.cell.inference import mean_probabilities
    from mitoseg.core.errors import DataError
    try:
        raw = read_image_noted(args.input, "image")
    except DataError as err:
        raise PredictError(str(err)) from None

    def member_probabilities():
        for member, path in zip(manifest["members"], models):
            images = scaled_input(raw, member, str(args.input))
            model = load_trained_model(path)
            patch, channels = resolve_tiling(model, args.patch_size)
            yield predict_stack(model, images, patch, channels, tta=args.tta, batch_size=args.batch_size,
                                overlap=args.overlap, quiet=args.quiet, source=args.input)
            print(f"member {member['cell']}: tiles {patch}", flush=True)

    return mean_probabilities(member_probabilities())
