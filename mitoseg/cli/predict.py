"""Predict mitochondria with a trained model, or draw overlays of a study's best models.

Probability or mask stack for any input stack:
    python predict.py --model runs/exp_UNet_lr0.001_bs16_seed42/exp_UNet_lr0.001_bs16_seed42_model.keras \\
                      --input stack.tif --output probs.tif [--tta]
    python predict.py --model M.keras --input stack.tif --output mask.tif --mask [--threshold 0.5]
  (add --ground-truth gt.tif --overlay view.png for a picture and scores of that stack)

Overlays of each architecture's best model in a study (best = the configuration with the highest
mean validation IoU over its grid runs that count, mitoseg.analysis.stats.select_configs, and its best
run by validation IoU; test scores never choose):
    python predict.py --study-dir studies/study_X --overlays [--data-dir DATA] [--n-slices 3]
  -> studies/study_X/overlays/overlay_<arch>.png: per slice, the image, the ground truth, the
     prediction, and an error map (green = hit, red = false positive, blue = missed).
  Slices shown: the cell's held-out test slices when it had any, else its validation slices; the
  data come from the cell's recorded config (--data-dir overrides the data folder).

Outputs never replace an input of the command (--input, --ground-truth, --model; also through
symlinks or hard links); an existing output file is replaced only with --overwrite.
Input grey values are scaled like the model's training images (the scaling its cell recorded in the
results JSON or bundle.json beside the model); an input that cannot be put on that scale is refused. A model without a
recorded scaling gets the input scaled by its own values (mitoseg.data.scaling.image_scaling), with a line saying so.
Tiles: the model's own input side (--patch-size overrides for fully convolutional models),
overlapping by half a tile, Hann-blended. Outputs are written atomically.
Exit codes: 0 ok, 2 bad input (missing/unreadable model or TIFF, nothing to draw).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mitoseg.cell import quiet_tf  # standard library only
from mitoseg.cli.args import OneLineParser, add_flag, add_version, missing_extra  # standard library only
from mitoseg.core.paths import BUNDLE_JSON, ExperimentPaths, StudyPaths, overlay_name  # standard library only
from mitoseg.predict.best_runs import best_per_architecture, overlay_slices
from mitoseg.predict.bundle import ensemble_probabilities, load_bundle
from mitoseg.predict.files import check_outputs, read_mask_stack, read_stack, write_tiff
from mitoseg.predict.model import (PredictError, check_model_file, load_trained_model, predict_stack, recorded_scaling,
                                   resolve_tiling)
from mitoseg.core.status import EXIT_BAD_INPUT, EXIT_OK

quiet_tf.install()  # TensorFlow's start-up lines stay out of the logs; real warnings pass


def run_overlays(args) -> int:
    import numpy as np

    from mitoseg.report.overlay_figure import draw_overlay
    best = best_per_architecture(args.study_dir)
    out_dir = Path(args.out_dir) if args.out_dir else StudyPaths(args.study_dir).overlays
    models = {arch: exp_dir / (rec.get("files") or {}).get("model", ExperimentPaths(exp_dir).model().name)
              for arch, (rec, exp_dir, _) in best.items()}
    check_outputs({f"overlay ({arch})": out_dir / overlay_name(arch) for arch in best},
                  {f"model of {arch}": path for arch, path in models.items()}, args.overwrite)
    for arch, (rec, exp_dir, criterion) in best.items():
        model_path = models[arch]
        model = load_trained_model(model_path)
        patch, channels = resolve_tiling(model, args.patch_size)
        images, masks, labels, which = overlay_slices(rec, args.data_dir)
        n = min(args.n_slices, len(images))
        pick = np.unique(np.linspace(0, len(images) - 1, n).round().astype(int))
        probs = predict_stack(model, images[pick], patch, channels, tta=args.tta, batch_size=args.batch_size,
                              quiet=True)
        title = (f"{arch}: best cell {rec['experiment_id']} (val IoU {rec['best_val_iou']:.3f}); "
                 f"{which} slices{', TTA x8' if args.tta else ''}")
        path = out_dir / overlay_name(arch)
        try:
            draw_overlay(path, images[pick], masks[pick], probs, args.threshold, title, [labels[i] for i in pick])
        except OSError as err:
            raise PredictError(f"{path}: cannot write ({err.strerror or err})") from None
        print(f"{arch}: {rec['experiment_id']} (selected on {criterion}; this run {rec['best_val_iou']:.4f}) -> {path}")
    return EXIT_OK


def run_predict(args) -> int:
    import numpy as np
    if not (0 < args.threshold < 1):
        raise PredictError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.overlay and not args.ground_truth:
        raise PredictError("--overlay needs --ground-truth (the overlay shows image, ground truth and prediction)")
    if Path(args.output).suffix.lower() not in (".tif", ".tiff"):
        raise PredictError(f"{args.output}: output must be a .tif/.tiff file")
    if args.overlay and Path(args.overlay).suffix.lower() != ".png":
        raise PredictError(f"{args.overlay}: --overlay must be a .png file")
    outputs = {"--output": args.output, **({"--overlay": args.overlay} if args.overlay else {})}
    check_outputs(outputs, {"--input": args.input, "--ground-truth": args.ground_truth, "--model": args.model},
                  args.overwrite)
    check_model_file(args.model)
    reference, where = recorded_scaling(args.model)
    images, scaling = read_stack(args.input, reference)
    from mitoseg.data.scaling import describe_scaling
    print(f"input scaling: {describe_scaling(scaling)}; "
          + (f"the model was trained on {describe_scaling(reference)} ({where.name})" if reference else
             f"scaled by its own values: {where}"))
    masks = read_mask_stack(args.ground_truth) if args.ground_truth else None
    if masks is not None and masks.shape != images.shape:
        raise PredictError(f"{args.ground_truth}: shape {masks.shape} does not match the input {images.shape}")
    model = load_trained_model(args.model)
    patch, channels = resolve_tiling(model, args.patch_size)
    probs = predict_stack(model, images, patch, channels, tta=args.tta, batch_size=args.batch_size,
                          overlap=args.overlap, quiet=args.quiet, source=args.input)
    out = (probs >= args.threshold).astype(np.uint8) * 255 if args.mask else probs.astype(np.float32)
    write_tiff(args.output, out)
    kind = f"uint8 0/255 mask (p >= {args.threshold:g})" if args.mask else "float32 probabilities"
    print(f"wrote {args.output}: {out.shape[0]} x {out.shape[1]} x {out.shape[2]} {kind}; tiles {patch}, "
          f"TTA {'on' if args.tta else 'off'}")
    if masks is not None:
        from mitoseg.cell import metrics
        s = metrics.score_all(masks, probs, args.threshold)
        base = metrics.trivial_baselines(masks)
        print(f"vs {args.ground_truth}: IoU {s['iou']:.4f}  Dice {s['dice']:.4f}  precision {s['precision']:.4f}  "
              f"recall {s['recall']:.4f}  (all-foreground IoU {base['all_foreground_jaccard']:.4f})")
        if args.overlay:
            from mitoseg.report.overlay_figure import draw_overlay
            n = min(args.n_slices, len(images))
            pick = np.unique(np.linspace(0, len(images) - 1, n).round().astype(int))
            draw_overlay(args.overlay, images[pick], masks[pick], probs[pick], args.threshold,
                         f"{Path(args.model).name} on {Path(args.input).name}", [f"z={i}" for i in pick])
            print(f"wrote {args.overlay}")
    return EXIT_OK


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
    if not 0 < threshold < 1:   # named where it came from: the flag, or the bundle's manifest
        where = "--threshold" if args.threshold is not None else f"{Path(args.bundle) / BUNDLE_JSON}: threshold"
        raise PredictError(f"{where} must be in (0, 1), got {threshold}")
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
        from mitoseg.cell import metrics
        s = metrics.score_all(masks, probs, threshold)
        print(f"vs {args.ground_truth}: IoU {s['iou']:.4f}  Dice {s['dice']:.4f}  precision {s['precision']:.4f}  "
              f"recall {s['recall']:.4f}", file=sys.stdout)
    return EXIT_OK


def build_parser():
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(p)
    one = p.add_argument_group("one model on one stack")
    one.add_argument("--model", help="trained model (.keras or .hdf5)")
    one.add_argument("--bundle", help="instead of --model: a bundle folder of run_study.py export; the mean "
                     "probability of its models (mitoseg/predict/bundle.py)")
    one.add_argument("--input", help="image stack (TIFF; a 2D TIFF is one slice)")
    one.add_argument("--output", help="output TIFF: float32 probabilities, or with --mask uint8 0/255")
    one.add_argument("--mask", action="store_true", help="write a 0/255 mask instead of probabilities")
    one.add_argument("--ground-truth", help="mask stack of --input: print IoU/Dice against it")
    one.add_argument("--overlay", help="with --ground-truth: also write an overlay PNG of a few slices")
    st = p.add_argument_group("overlays of a study's best models")
    st.add_argument("--study-dir", help="study folder with exp_*/ cells")
    st.add_argument("--overlays", action="store_true", help="write overlay_<arch>.png per architecture")
    st.add_argument("--data-dir", help="data folder (default: the one recorded in the cell's config)")
    add_flag(st, "--output-dir", "--out-dir", dest="out_dir", help="overlay folder (default STUDY_DIR/overlays)")
    c = p.add_argument_group("common")
    c.add_argument("--threshold", type=float, help="probability -> mask threshold (default 0.5; --bundle: its own)")
    c.add_argument("--tta", action="store_true", help="8-fold flip/rotation test-time augmentation (8x slower)")
    c.add_argument("--patch-size", type=int, help="tile side (default: the model's input side, else 256)")
    c.add_argument("--overlap", type=float, default=0.5, help="tile overlap fraction (default 0.5)")
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--n-slices", type=int, default=3, help="slices per overlay (default 3)")
    c.add_argument("--quiet", action="store_true", help="no per-slice progress")
    c.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (never an input of the same command)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.n_slices < 1:
            raise PredictError(f"--n-slices must be positive, got {args.n_slices}")
        if args.patch_size is not None and args.patch_size < 1:
            raise PredictError(f"--patch-size must be positive, got {args.patch_size}")
        if not 0 <= args.overlap < 1:
            raise PredictError(f"--overlap must be in [0, 1), got {args.overlap}")
        if args.batch_size < 1:
            raise PredictError(f"--batch-size must be positive, got {args.batch_size}")
        if args.bundle:
            return run_bundle(args)
        args.threshold = 0.5 if args.threshold is None else args.threshold
        if args.study_dir or args.overlays:
            if not (args.study_dir and args.overlays):
                raise PredictError("study mode needs both --study-dir and --overlays")
            if args.model or args.input or args.output:
                raise PredictError("--model/--input/--output cannot be combined with --study-dir")
            return run_overlays(args)
        missing = [f"--{n}" for n in ("model", "input", "output") if not getattr(args, n)]
        if missing:
            raise PredictError(f"missing {', '.join(missing)} (or use --study-dir DIR --overlays)")
        return run_predict(args)
    except PredictError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError as err:   # --overlays also needs the [analysis] packages
        print(missing_extra(err, "all" if args.overlays else "train"), file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
