"""`predict.py --bundle BUNDLE`: the mean probability of a bundle's member models (run_study.py export).

Each member sees the input on its own recorded training scale (bundle.json, not a results JSON beside
the model: the bundle is self-contained); the tiles are each model's own input side, as for --model.
--mask thresholds the mean at the bundle's threshold unless --threshold is given.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mitoseg.cli.predict import (PredictError, _read, check_model_file, check_outputs, load_trained_model,
                                 predict_stack, read_mask_stack, resolve_tiling, write_tiff)
from mitoseg.paths import BUNDLE_JSON
from mitoseg.status import EXIT_OK


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
    from mitoseg.input_error import DataError
    from mitoseg.scaling import apply_scaling, common_scaling, image_scaling
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
    from mitoseg.inference import mean_probabilities
    from mitoseg.input_error import DataError
    try:
        raw = _read(args.input, "image")
    except DataError as err:
        raise PredictError(str(err)) from None

    def member_probabilities():
        for member, path in zip(manifest["members"], models):
            images = scaled_input(raw, member, str(args.input))
            model = load_trained_model(path)
            patch, channels = resolve_tiling(model, args.patch_size)
            yield predict_stack(model, images, patch, channels, tta=args.tta, batch_size=args.batch_size,
                                overlap=args.overlap, quiet=args.quiet)
            print(f"member {member['cell']}: tiles {patch}", flush=True)

    return mean_probabilities(member_probabilities())


def run_bundle(args) -> int:
    import numpy as np
    given = [flag for flag in ("model", "overlay", "study_dir", "overlays") if getattr(args, flag)]
    if given:
        raise PredictError(f"--bundle cannot be combined with --{given[0].replace('_', '-')}")
    missing = [f"--{n}" for n in ("input", "output") if not getattr(args, n)]
    if missing:
        raise PredictError(f"--bundle needs {' and '.join(missing)}")
    if Path(args.output).suffix.lower() not in (".tif", ".tiff"):
        raise PredictError(f"{args.output}: output must be a .tif/.tiff file")
    manifest, models = load_bundle(args.bundle)
    threshold = float(manifest["threshold"]) if args.threshold is None else args.threshold
    if not 0 < threshold < 1:
        raise PredictError(f"--threshold must be in (0, 1), got {threshold}")
    inputs = {"--input": args.input, "--ground-truth": args.ground_truth,
              **{f"--bundle member {p.name}": p for p in models}}
    check_outputs({"--output": args.output}, inputs, args.overwrite)
    masks = read_mask_stack(args.ground_truth) if args.ground_truth else None
    print(f"bundle {args.bundle}: {manifest['architecture']}, {len(models)} member(s) ({manifest.get('source')}); "
          f"threshold {threshold:.3f}" + (" (--threshold)" if args.threshold is not None else " (the bundle's)"))
    probs = ensemble_probabilities(args, manifest, models)
    if masks is not None and masks.shape != probs.shape:
        raise PredictError(f"{args.ground_truth}: shape {masks.shape} does not match the input {probs.shape}")
    out = (probs >= threshold).astype(np.uint8) * 255 if args.mask else probs.astype(np.float32)
    write_tiff(args.output, out)
    kind = f"uint8 0/255 mask (mean p >= {threshold:.3f})" if args.mask else "float32 mean probabilities"
    print(f"wrote {args.output}: {out.shape[0]} x {out.shape[1]} x {out.shape[2]} {kind} of {len(models)} "
          f"model(s); TTA {'on' if args.tta else 'off'}")
    if masks is not None:
        from mitoseg import metrics
        s = metrics.score_all(masks, probs, threshold)
        print(f"vs {args.ground_truth}: IoU {s['iou']:.4f}  Dice {s['dice']:.4f}  precision {s['precision']:.4f}  "
              f"recall {s['recall']:.4f}", file=sys.stdout)
    return EXIT_OK
