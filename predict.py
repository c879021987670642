#!/usr/bin/env python
"""Predict mitochondria with a trained model, or draw overlays of a study's best models.

Probability or mask stack for any input stack:
    python predict.py --model runs/exp_UNet_lr0.001_bs16_seed42/exp_UNet_lr0.001_bs16_seed42_model.keras \\
                      --input stack.tif --output probs.tif [--tta]
    python predict.py --model M.keras --input stack.tif --output mask.tif --mask [--threshold 0.5]
  (add --ground-truth gt.tif --overlay view.png for a picture and scores of that stack)

Overlays of each architecture's best model in a study (best = highest held-out test IoU when the
results have one, else highest best_val_iou; status ok only):
    python predict.py --study-dir studies/study_X --overlays [--data-dir DATA] [--n-slices 3]
  -> studies/study_X/overlays/overlay_<arch>.png: per slice, the image, the ground truth, the
     prediction, and an error map (green = hit, red = false positive, blue = missed).
  Slices shown: the cell's held-out test slices when it had any, else its validation slices; the
  data come from the cell's recorded config (--data-dir overrides the data folder).

Tiles: the model's own input side (--patch-size overrides for fully convolutional models),
overlapping by half a tile, Hann-blended. Outputs are written atomically.
Exit codes: 0 ok, 2 bad input (missing/unreadable model or TIFF, nothing to draw).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mitoseg import quiet_tf  # standard library only

quiet_tf.install()  # TensorFlow's start-up lines stay out of the logs; real warnings pass

EXIT_OK, EXIT_BAD_INPUT = 0, 2


class PredictError(Exception):
    """A one-line, user-facing error."""


def load_trained_model(path):
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: model file not found")
    from models import load_model
    try:
        return load_model(path)
    except Exception as err:  # keras raises many types for bad files
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PredictError(f"{path}: cannot load model ({text[:200]})") from None


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


def read_stack(path, what="input"):
    from mitoseg import data
    try:
        return data.scale_image(data.read_tiff(path), str(path))
    except data.DataError as err:
        raise PredictError(str(err)) from None


def read_mask_stack(path):
    from mitoseg import data
    try:
        return data.scale_mask(data.read_tiff(path), str(path))
    except data.DataError as err:
        raise PredictError(str(err)) from None


def write_tiff(path, array):
    import tifffile

    from mitoseg.io_utils import atomic_save
    path = Path(path)
    try:
        atomic_save(path, lambda tmp: tifffile.imwrite(tmp, array))
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


# --- overlays ----------------------------------------------------------------------------------------
def error_map(mask, pred):
    """RGB: green = true positive, red = false positive, blue = false negative, black = true negative."""
    import numpy as np
    m, p = mask.astype(bool), pred.astype(bool)
    rgb = np.zeros(m.shape + (3,), np.float32)
    rgb[m & p] = (0.1, 0.85, 0.1)
    rgb[~m & p] = (0.95, 0.15, 0.15)
    rgb[m & ~p] = (0.2, 0.4, 1.0)
    return rgb


def draw_overlay(path, images, masks, probs, threshold, title, slice_labels):
    """One row per slice: image | ground truth | prediction | error map."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mitoseg import metrics
    from mitoseg.io_utils import atomic_save
    n = len(images)
    h, w = images.shape[1:]
    fig, axes = plt.subplots(n, 4, figsize=(4 * 3.2, n * 3.2 * h / w + 0.8), squeeze=False)
    for i in range(n):
        pred = probs[i] >= threshold
        iou = metrics.foreground_iou(masks[i], pred, 0.5)
        panels = [(images[i], "gray", f"{slice_labels[i]}"), (masks[i], "gray", "ground truth"),
                  (pred, "gray", f"prediction (p >= {threshold:g})"),
                  (error_map(masks[i], pred), None, f"errors: IoU {iou:.3f}")]
        for ax, (arr, cmap, text) in zip(axes[i], panels):
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(text, fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save(Path(path), lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)


def best_per_architecture(study_dir):
    """{arch: (record, exp_dir)}; best = highest test IoU if any cell of that arch has one, else best_val_iou."""
    from mitoseg.results import ResultsError, load_results
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise PredictError(f"{study_dir}: study folder not found")
    by_arch: dict = {}
    skipped = []
    for path in sorted(study_dir.glob("exp_*/*_results.json")):
        try:
            rec = load_results(path)
        except ResultsError as err:
            skipped.append(str(err))
            continue
        if rec["status"] != "ok" or rec.get("degenerate"):
            continue
        by_arch.setdefault(rec["architecture"], []).append((rec, path.parent))
    for msg in skipped:
        print(f"warning: skipped {msg}", file=sys.stderr)
    best = {}
    for arch, items in sorted(by_arch.items()):
        with_test = [it for it in items if isinstance(it[0].get("test"), dict) and it[0]["test"].get("iou") is not None]
        if with_test:
            best[arch] = max(with_test, key=lambda it: it[0]["test"]["iou"]) + ("test iou",)
        else:
            scored = [it for it in items if it[0].get("best_val_iou") is not None]
            if scored:
                best[arch] = max(scored, key=lambda it: it[0]["best_val_iou"]) + ("best_val_iou",)
    if not best:
        raise PredictError(f"{study_dir}: no finished (status ok, not degenerate) cells with scores in exp_*/")
    return best


def overlay_slices(record, data_dir=None):
    """(images, masks, labels, which) of the slices to draw for one cell, rebuilt from its config."""
    from mitoseg.config import TrainConfig
    from mitoseg.data import DataError, split_slices
    from mitoseg.training import load_cell_data
    values = dict(record.get("config") or {})
    if data_dir is not None:
        values["data_dir"] = str(data_dir)
    try:
        config = TrainConfig.from_dict(values)
        train, test = load_cell_data(config)
    except (DataError, ValueError, TypeError) as err:
        raise PredictError(f"{record['experiment_id']}: cannot load its data ({err})") from None
    if test is not None:
        return test.images, test.masks, list(test.slice_names), "held-out test"
    _, val_idx = split_slices(len(train.images), config.val_fraction, config.val_position)
    return (train.images[val_idx], train.masks[val_idx], [train.slice_names[i] for i in val_idx], "validation")


def run_overlays(args) -> int:
    import numpy as np
    best = best_per_architecture(args.study_dir)
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.study_dir) / "overlays"
    for arch, (rec, exp_dir, criterion) in best.items():
        model_path = exp_dir / (rec.get("files") or {}).get("model", f"{exp_dir.name}_model.keras")
        model = load_trained_model(model_path)
        patch, channels = resolve_tiling(model, args.patch_size)
        images, masks, labels, which = overlay_slices(rec, args.data_dir)
        n = min(args.n_slices, len(images))
        pick = np.unique(np.linspace(0, len(images) - 1, n).round().astype(int))
        probs = predict_stack(model, images[pick], patch, channels, tta=args.tta, batch_size=args.batch_size,
                              quiet=True)
        score = rec["test"]["iou"] if criterion == "test iou" else rec["best_val_iou"]
        title = (f"{arch}: best cell {rec['experiment_id']} ({criterion} {score:.3f}); "
                 f"{which} slices{', TTA x8' if args.tta else ''}")
        path = out_dir / f"overlay_{arch}.png"
        try:
            draw_overlay(path, images[pick], masks[pick], probs, args.threshold, title, [labels[i] for i in pick])
        except OSError as err:
            raise PredictError(f"{path}: cannot write ({err.strerror or err})") from None
        print(f"{arch}: {rec['experiment_id']} ({criterion} {score:.4f}) -> {path}")
    return EXIT_OK


def run_predict(args) -> int:
    import numpy as np
    if not (0 < args.threshold < 1):
        raise PredictError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.overlay and not args.ground_truth:
        raise PredictError("--overlay needs --ground-truth (the overlay shows image, ground truth and prediction)")
    if Path(args.output).suffix.lower() not in (".tif", ".tiff"):
        raise PredictError(f"{args.output}: output must be a .tif/.tiff file")
    images = read_stack(args.input)
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
            n = min(args.n_slices, len(images))
            pick = np.unique(np.linspace(0, len(images) - 1, n).round().astype(int))
            draw_overlay(args.overlay, images[pick], masks[pick], probs[pick], args.threshold,
                         f"{Path(args.model).name} on {Path(args.input).name}", [f"z={i}" for i in pick])
            print(f"wrote {args.overlay}")
    return EXIT_OK


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    one = p.add_argument_group("one model on one stack")
    one.add_argument("--model", help="trained model (.keras or .hdf5)")
    one.add_argument("--input", help="image stack (TIFF; a 2D TIFF is one slice)")
    one.add_argument("--output", help="output TIFF: float32 probabilities, or with --mask uint8 0/255")
    one.add_argument("--mask", action="store_true", help="write a 0/255 mask instead of probabilities")
    one.add_argument("--ground-truth", help="mask stack of --input: print IoU/Dice against it")
    one.add_argument("--overlay", help="with --ground-truth: also write an overlay PNG of a few slices")
    st = p.add_argument_group("overlays of a study's best models")
    st.add_argument("--study-dir", help="study folder with exp_*/ cells")
    st.add_argument("--overlays", action="store_true", help="write overlay_<arch>.png per architecture")
    st.add_argument("--data-dir", help="data folder (default: the one recorded in the cell's config)")
    st.add_argument("--out-dir", help="overlay folder (default STUDY_DIR/overlays)")
    c = p.add_argument_group("common")
    c.add_argument("--threshold", type=float, default=0.5, help="probability -> mask threshold (default 0.5)")
    c.add_argument("--tta", action="store_true", help="8-fold flip/rotation test-time augmentation (8x slower)")
    c.add_argument("--patch-size", type=int, help="tile side (default: the model's input side, else 256)")
    c.add_argument("--overlap", type=float, default=0.5, help="tile overlap fraction (default 0.5)")
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--n-slices", type=int, default=3, help="slices per overlay (default 3)")
    c.add_argument("--quiet", action="store_true", help="no per-slice progress")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.n_slices < 1:
            raise PredictError(f"--n-slices must be positive, got {args.n_slices}")
        if args.patch_size is not None and args.patch_size < 1:
            raise PredictError(f"--patch-size must be positive, got {args.patch_size}")
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


if __name__ == "__main__":
    sys.exit(main())
