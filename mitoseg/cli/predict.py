"""Predict mitochondria with a trained model, or draw overlays of a study's best models.

Probability or mask stack for any input stack:
    python predict.py --model runs/exp_UNet_lr0.001_bs16_seed42/exp_UNet_lr0.001_bs16_seed42_model.keras \\
                      --input stack.tif --output probs.tif [--tta]
    python predict.py --model M.keras --input stack.tif --output mask.tif --mask [--threshold 0.5]
  (add --ground-truth gt.tif --overlay view.png for a picture and scores of that stack)

Overlays of each architecture's best model in a study (best = the configuration with the highest
mean validation IoU over its grid runs that count, mitoseg.stats.select_configs, and its best
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
recorded scaling gets the input scaled by its own values (mitoseg.scaling.image_scaling), with a line saying so.
Tiles: the model's own input side (--patch-size overrides for fully convolutional models),
overlapping by half a tile, Hann-blended. Outputs are written atomically.
Exit codes: 0 ok, 2 bad input (missing/unreadable model or TIFF, nothing to draw).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mitoseg import quiet_tf  # standard library only
from mitoseg.cli_args import OneLineParser, add_flag, add_version, missing_extra  # standard library only
from mitoseg.paths import ExperimentPaths, StudyPaths, overlay_name  # standard library only
from mitoseg.status import EXIT_BAD_INPUT, EXIT_OK, UNREADABLE

quiet_tf.install()  # TensorFlow's start-up lines stay out of the logs; real warnings pass


class PredictError(Exception):
    """A one-line, user-facing error."""


MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_model_file(path) -> None:
    """One line naming the file when it cannot be a saved Keras model (before Keras says "File not found"
    about a file that exists): a .keras model is a zip archive, a .h5/.hdf5 one an HDF5 file."""
    import zipfile
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: model file not found" if not path.exists() else f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise PredictError(f"{path}: not a model file (expected {', '.join(MODEL_SUFFIXES)})")
    try:
        if suffix == ".keras" and not zipfile.is_zipfile(path):
            raise PredictError(f"{path}: not a Keras model (a .keras model is a zip archive; this file is not one)")
        if suffix != ".keras":
            with open(path, "rb") as handle:
                if handle.read(8) != _HDF5_SIGNATURE:
                    raise PredictError(f"{path}: not a Keras model (a {suffix} model is an HDF5 file; this file is not one)")
    except OSError as err:
        raise PredictError(f"{path}: cannot read ({err.strerror or err})") from None


def load_trained_model(path):
    path = Path(path)
    check_model_file(path)
    from mitoseg.input_error import first_line
    from mitoseg.models import load_model
    try:
        return load_model(path)
    except Exception as err:  # keras raises many types for bad files
        text = first_line(err) or type(err).__name__
        raise PredictError(f"{path}: cannot load model ({text[:200]})") from None


def check_outputs(outputs: dict, inputs: dict, overwrite: bool) -> None:
    """Refuse, before anything is computed, an output that is one of the command's inputs, two outputs
    naming one file, a folder, or an existing file without --overwrite. `outputs`/`inputs`: {flag: path}."""
    from mitoseg.io_utils import same_file
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


def resolve_tiling(model, patch_size=None):
    """(tile side, channels) for a model; a fixed-input model only accepts its own side."""
    from mitoseg.inference import model_channels, model_patch_size
    try:
        native = model_patch_size(model, default=0)
    except ValueError as err:
        raise PredictError(str(err)) from None
    if patch_size is None:
        patch = native or 256
    elif native and patch_size != native:
        raise PredictError(f"--patch-size {patch_size} does not fit the model, whose input is {native}x{native}")
    else:
        patch = patch_size
    return patch, model_channels(model)


def recorded_scaling(model_path):
    """(scaling, results JSON path) the model's cell recorded for its training images, or (None, reason):
    the results JSON beside the model whose `files.model` names it (README: Predict with a trained model)."""
    from mitoseg.results import ResultsError, load_results
    model_path = Path(model_path)
    for path in ExperimentPaths(model_path.parent).results_files():
        try:
            record = load_results(path)
        except ResultsError:
            continue
        if (record.get("files") or {}).get("model") == model_path.name:
            scaling = (record.get("data") or {}).get("scaling")
            if isinstance(scaling, dict) and isinstance(scaling.get("divisor"), (int, float)):
                return scaling, path
            return None, f"{path.name} records no image scaling (written before scalings were recorded)"
    from mitoseg.cli.predict_bundle import bundle_scaling   # a model copied into an exported bundle
    return bundle_scaling(model_path) or (None, f"no results JSON of this model in {model_path.parent}")


def _read(path, what):
    """(z, y, x) of a file read as training reads its files (mitoseg.image_files: by what the file declares),
    with one line per conversion it needed."""
    from mitoseg.image_files import read_image, summarise_notes
    notes: list = []
    raw = read_image(path, what, notes)
    for line in summarise_notes(notes):
        print(f"reading: {line}")
    return raw


def read_stack(path, reference=None, reference_name="the model's training images"):
    """Model input of a TIFF stack: on the scale of `reference` (the model's recorded training scaling;
    refused when it cannot be), else by its own values. Returns (images, scaling)."""
    from mitoseg.input_error import DataError
    from mitoseg.scaling import apply_scaling, common_scaling, image_scaling
    try:
        raw = _read(path, "image")
        scaling = (image_scaling(raw, str(path)) if reference is None
                   else common_scaling(raw, reference, str(path), reference_name))
        return apply_scaling(raw, scaling), scaling
    except DataError as err:
        raise PredictError(str(err)) from None


def read_mask_stack(path):
    """{0, 1} masks of a ground-truth TIFF; a warning line when they are more foreground than background."""
    from mitoseg.data import inverted_mask_warning
    from mitoseg.input_error import DataError
    from mitoseg.scaling import scale_mask
    try:
        masks = scale_mask(_read(path, "mask"), str(path))
    except DataError as err:
        raise PredictError(str(err)) from None
    warning = inverted_mask_warning(masks, path)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return masks


def write_tiff(path, array):
    import tifffile

    from mitoseg.io_utils import atomic_save
    path = Path(path)
    try:
        # minisblack: tifffile would declare a 3- or 4-slice stack RGB(A) planes (read back as refused)
        atomic_save(path, lambda tmp: tifffile.imwrite(tmp, array, photometric="minisblack"))
    except OSError as err:
        raise PredictError(f"{path}: cannot write ({err.strerror or err})") from None


def predict_stack(model, images, patch, channels, tta=False, batch_size=8, overlap=0.5, quiet=False):
    from mitoseg.inference import predict_slices
    progress = None if quiet else (lambda d, t: print(f"  slice {d}/{t}", file=sys.stderr, flush=True))
    try:
        return predict_slices(model, images, patch, batch_size=batch_size, overlap=overlap, tta=tta,
                              channels=channels, progress=progress)
    except ValueError as err:
        raise PredictError(str(err)) from None


# --- overlays of a study's best models ---------------------------------------------------------------
def best_per_architecture(study_dir):
    """{arch: (record, exp_dir, criterion)}: each architecture's selected configuration (the one rule,
    mitoseg.stats.select_configs: highest mean validation IoU over its grid runs that count) and
    its best run by validation IoU. Test scores never choose."""
    from mitoseg.cell_state import read_cell
    from mitoseg.stats import select_configs
    from mitoseg.summary import SummaryError, build_summary, normalize_summary
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise PredictError(f"{study_dir}: study folder not found")
    try:
        df, _ = build_summary(study_dir)
        df = normalize_summary(df, str(study_dir))
    except SummaryError as err:
        raise PredictError(f"no finished cells to draw: {err}") from None
    for _, row in df[df["status"] == UNREADABLE].iterrows():
        print(f"warning: skipped {row['error']}", file=sys.stderr)
    best = {}
    for _, sel in select_configs(df).iterrows():
        if sel["degenerate"]:
            continue
        exp_dir = study_dir / str(sel["best_run_dir"])
        read = read_cell(exp_dir)
        if read.record is None:   # the summary read it a moment ago: the file changed since
            raise PredictError(f"{exp_dir}: cannot read its results ({read.error or 'no results file'})")
        rec = read.record
        criterion = f"val IoU, mean of {sel['n_runs']} run(s) {sel['val_iou_mean']:.4f}"
        best[sel["architecture"]] = (rec, exp_dir, criterion)
    if not best:
        raise PredictError(f"{study_dir}: no finished (status ok, not degenerate) cells with scores in exp_*/")
    return best


def overlay_slices(record, data_dir=None):
    """(images, masks, labels, which) of the slices to draw for one cell, rebuilt from its config."""
    from mitoseg.cell_data import load_cell_data
    from mitoseg.config import TrainConfig
    from mitoseg.input_error import DataError
    from mitoseg.patches import split_slices
    from mitoseg.scaling import describe_scaling
    values = dict(record.get("config") or {})
    if data_dir is not None:
        values["data_dir"] = str(data_dir)
    try:
        config = TrainConfig.from_dict(values)
        train, test = load_cell_data(config)
    except (DataError, ValueError, TypeError) as err:
        raise PredictError(f"{record['experiment_id']}: cannot load its data ({err})") from None
    recorded = (record.get("data") or {}).get("scaling")
    if isinstance(recorded, dict) and train.scaling and recorded.get("divisor") != train.scaling["divisor"]:
        raise PredictError(f"{record['experiment_id']}: its data are now scaled as {describe_scaling(train.scaling)}, "
                           f"but the model was trained on {describe_scaling(recorded)}")
    if test is not None:
        return test.images, test.masks, list(test.slice_names), "held-out test"
    _, val_idx = split_slices(len(train.images), config.val_fraction, config.val_position, config.fold, config.n_folds)
    return (train.images[val_idx], train.masks[val_idx], [train.slice_names[i] for i in val_idx], "validation")


def run_overlays(args) -> int:
    import numpy as np

    from mitoseg.overlay_figure import draw_overlay
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
    from mitoseg.scaling import describe_scaling
    print(f"input scaling: {describe_scaling(scaling)}; "
          + (f"the model was trained on {describe_scaling(reference)} ({where.name})" if reference else
             f"scaled by its own values: {where}"))
    masks = read_mask_stack(args.ground_truth) if args.ground_truth else None
    if masks is not None and masks.shape != images.shape:
        raise PredictError(f"{args.ground_truth}: shape {masks.shape} does not match the input {images.shape}")
    model = load_trained_model(args.model)
    patch, channels = resolve_tiling(model, args.patch_size)
    probs = predict_stack(model, images, patch, channels, tta=args.tta, batch_size=args.batch_size,
                          overlap=args.overlap, quiet=args.quiet)
    out = (probs >= args.threshold).astype(np.uint8) * 255 if args.mask else probs.astype(np.float32)
    write_tiff(args.output, out)
    kind = f"uint8 0/255 mask (p >= {args.threshold:g})" if args.mask else "float32 probabilities"
    print(f"wrote {args.output}: {out.shape[0]} x {out.shape[1]} x {out.shape[2]} {kind}; tiles {patch}, "
          f"TTA {'on' if args.tta else 'off'}")
    if masks is not None:
        from mitoseg import metrics
        s = metrics.score_all(masks, probs, args.threshold)
        base = metrics.trivial_baselines(masks)
        print(f"vs {args.ground_truth}: IoU {s['iou']:.4f}  Dice {s['dice']:.4f}  precision {s['precision']:.4f}  "
              f"recall {s['recall']:.4f}  (all-foreground IoU {base['all_foreground_jaccard']:.4f})")
        if args.overlay:
            from mitoseg.overlay_figure import draw_overlay
            n = min(args.n_slices, len(images))
            pick = np.unique(np.linspace(0, len(images) - 1, n).round().astype(int))
            draw_overlay(args.overlay, images[pick], masks[pick], probs[pick], args.threshold,
                         f"{Path(args.model).name} on {Path(args.input).name}", [f"z={i}" for i in pick])
            print(f"wrote {args.overlay}")
    return EXIT_OK


def build_parser():
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(p)
    one = p.add_argument_group("one model on one stack")
    one.add_argument("--model", help="trained model (.keras or .hdf5)")
    one.add_argument("--bundle", help="instead of --model: a bundle folder of run_study.py export; the mean "
                     "probability of its models (mitoseg/cli/predict_bundle.py)")
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
            from mitoseg.cli.predict_bundle import run_bundle
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
