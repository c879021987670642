#!/usr/bin/env python
"""Train each architecture on the real EM subset within a wall-time budget; score held-out slices.

    python bench/bench_real_data.py                         # all three, 15 min each
    python bench/bench_real_data.py --archs UNet --budget-min 15 --tta

Split (whole slices, never patches): a block of `--test-fraction` of the slices at the START of the
stack is the held-out test volume (as `train_one.py --test-fraction`), a block of `--val-fraction`
of the rest at the END is validation (model selection, threshold), the slices between train.

Recipe = the study's fixed settings (binary focal loss gamma 2, Adam with clipnorm 1.0, plain
1x1 conv + sigmoid head, BatchNorm momentum 0.9, flips/rot90 augmentation, best model chosen by
validation thresholded IoU) with three changes that only make sense under a wall-clock budget:
  * the budget: a Keras callback stops training when `--budget-min` of wall time is spent
    (training plus the per-epoch validation; the final test evaluation is timed separately);
  * each "epoch" is `--steps-per-epoch` batches of random crops (+ flips/rot90) from the training
    slices instead of one pass over fixed non-overlapping tiles: more distinct samples per step;
  * learning rate: cosine decay over the budget (lr(t) = lr0 * (0.5 + 0.5 cos(pi t / budget)),
    t = elapsed wall time), the time-based version of the usual fixed-epoch cosine schedule.
Test: the best (by val IoU) weights are copied into the same architecture built for
`--eval-tile` tiles (fully convolutional, so the weights fit), whole test slices are predicted with
overlapping Hann-blended tiles (mitoseg.cell.inference.evaluate_volume), optionally with 8-fold TTA,
and scored at threshold 0.5 and at the threshold chosen on validation.

Prints one line per architecture: held-out IoU beside the all-foreground baseline, and writes a
Markdown record (--record) with every figure, the command and the machine load.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "lucchi_pp_subset"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now().strftime('%H:%M:%S')} load {load()}] {msg}", flush=True)


def random_crops(images, masks, n, patch, rng, augment=True):
    """n random (patch x patch) crops of (z, y, x) slices, with the same flip/rot90 on image and mask."""
    z, h, w = images.shape
    zs = rng.integers(0, z, n)
    ys = rng.integers(0, h - patch + 1, n)
    xs = rng.integers(0, w - patch + 1, n)
    x = np.empty((n, patch, patch), np.float32)
    y = np.empty((n, patch, patch), np.float32)
    for i in range(n):
        a = images[zs[i], ys[i]:ys[i] + patch, xs[i]:xs[i] + patch]
        b = masks[zs[i], ys[i]:ys[i] + patch, xs[i]:xs[i] + patch]
        if augment:
            k = int(rng.integers(4))
            a, b = np.rot90(a, k), np.rot90(b, k)
            if rng.integers(2):
                a, b = a[:, ::-1], b[:, ::-1]
        x[i], y[i] = a, b
    return x[..., None], y[..., None]


def train_one_arch(arch, args, train_imgs, train_masks, val_imgs, val_masks, test_imgs, test_masks):
    import keras
    from focal_loss import BinaryFocalLoss

    from mitoseg.cell import metrics
    from mitoseg.data.patches import tile_patches
    from mitoseg.cell.inference import Tiling, evaluate_volume
    from mitoseg.cell.models import build_model

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    p = args.patch_size
    kw = dict(base_filters=args.base_filters, depth=args.depth, bn_momentum=0.9, head="plain")
    model = build_model(arch, (p, p, 1), **kw)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=args.lr, clipnorm=1.0),
                  loss=BinaryFocalLoss(gamma=2.0))
    x_val = tile_patches(val_imgs, p)[..., None]
    y_val = tile_patches(val_masks, p)[..., None].astype(np.float32)
    budget_s = args.budget_min * 60.0
    t0 = time.time()
    state = {"best_iou": -1.0, "best_epoch": None, "best_weights": None, "epochs": 0, "steps": 0,
             "history": []}

    class Budget(keras.callbacks.Callback):
        """Stop when the wall-time budget is spent; anneal the learning rate over the budget."""

        def on_train_batch_begin(self, batch, logs=None):
            frac = min(1.0, (time.time() - t0) / budget_s)
            if args.schedule == "cosine":
                self.model.optimizer.learning_rate.assign(args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac))))

        def on_train_batch_end(self, batch, logs=None):
            state["steps"] += 1
            if time.time() - t0 >= budget_s:
                self.model.stop_training = True

    budget_cb = Budget()
    log(f"{arch}: {model.count_params():,} parameters; {len(train_imgs)} train slices, val tiles {len(x_val)}; "
        f"budget {args.budget_min} min")
    epoch = 0
    while time.time() - t0 < budget_s and epoch < args.max_epochs:
        epoch += 1
        te = time.time()
        xb, yb = random_crops(train_imgs, train_masks, args.steps_per_epoch * args.batch_size, p, rng, args.augment)
        hist = model.fit(xb, yb, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
                         callbacks=[budget_cb])
        loss = float(hist.history["loss"][-1])
        if not math.isfinite(loss):
            log(f"{arch}: loss became {loss} in epoch {epoch}; stopping")
            break
        probs = np.asarray(model.predict(x_val, batch_size=max(8, args.batch_size), verbose=0), np.float32)
        s = metrics.score_all(y_val, probs, 0.5)
        improved = s["iou"] > state["best_iou"]
        if improved:
            state.update(best_iou=s["iou"], best_epoch=epoch, best_weights=model.get_weights())
        lr = float(model.optimizer.learning_rate.numpy())
        state["history"].append({"epoch": epoch, "loss": loss, "val_iou": s["iou"], "lr": lr,
                                 "elapsed_s": time.time() - t0})
        log(f"{arch} epoch {epoch:>3}  loss {loss:.4f}  val_iou {s['iou']:.4f}  pred_fg "
            f"{s['predicted_foreground_fraction']:.3f}  lr {lr:.1e}  {time.time() - te:.0f}s  "
            f"elapsed {(time.time() - t0) / 60:.1f} min" + ("  *best" if improved else ""))
        state["epochs"] = epoch
    train_s = time.time() - t0
    model.set_weights(state["best_weights"])
    val_probs = np.asarray(model.predict(x_val, batch_size=8, verbose=0), np.float32)
    val_thr, val_iou_thr = metrics.best_threshold(y_val, val_probs)

    e = args.eval_tile
    infer = build_model(arch, (e, e, 1), **kw)
    infer.set_weights(model.get_weights())
    if args.save_models:
        out = Path(args.save_models)
        out.mkdir(parents=True, exist_ok=True)
        from mitoseg.core.io_utils import atomic_save
        atomic_save(out / f"{arch}_best.keras", lambda tmp: infer.save(tmp))
    results = {}
    for tta in ([False, True] if args.tta else [False]):
        te = time.time()
        r = evaluate_volume(infer, test_imgs, test_masks, Tiling(e, 0.5, tta=tta, batch_size=4), val_threshold=val_thr)
        r["eval_s"] = time.time() - te
        r["load_after"] = load()
        results["tta" if tta else "plain"] = r
        log(f"{arch} held-out test ({r['n_slices']} slices{', TTA x8' if tta else ''}): IoU {r['iou']:.4f} "
            f"(at val threshold {val_thr:.2f}: {r['iou_at_val_threshold']:.4f})  Dice {r['dice']:.4f}  "
            f"all-foreground baseline {r['all_foreground_jaccard']:.4f}  [{r['eval_s']:.0f}s]")
    return {"arch": arch, "params": int(model.count_params()), "epochs": state["epochs"],
            "steps": state["steps"], "best_epoch": state["best_epoch"], "best_val_iou": state["best_iou"],
            "val_threshold": val_thr, "val_iou_at_threshold": val_iou_thr, "train_s": train_s,
            "history": state["history"], "test": results}


def write_record(path: Path, args, command, split, rows, started_load, finished_load):
    lines = [f"# Real-data benchmark, {_dt.date.today().isoformat()}", "",
             f"Command: `{command}`", "",
             f"Data: `{args.data_dir}` ({split}).",
             f"Machine: {os.cpu_count()} CPU cores shared with other users; load average (1/5/15 min) "
             f"{started_load} at start, {finished_load} at the end. No GPU.",
             f"Recipe: base width {args.base_filters}, depth {args.depth}, {args.patch_size}x{args.patch_size} random "
             f"crops, batch {args.batch_size}, {args.steps_per_epoch} steps/epoch, Adam lr {args.lr:g} "
             f"({args.schedule} over the budget), clipnorm 1.0, focal loss gamma 2, plain head, BN momentum 0.9, "
             f"augment {'on' if args.augment else 'off'}; test tiles {args.eval_tile} (50 % overlap, Hann blending).",
             "",
             "| architecture | params | budget (min) | train wall (min) | epochs (steps) | best val IoU | val thr "
             "| test IoU @0.5 | test IoU @val thr | test Dice | TTA IoU @0.5 | all-foreground IoU | load after test |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test"]["plain"]
        tta = r["test"].get("tta")
        lines.append(
            f"| {r['arch']} | {r['params']:,} | {args.budget_min:g} | {r['train_s'] / 60:.1f} | {r['epochs']} ({r['steps']}) "
            f"| {r['best_val_iou']:.4f} | {r['val_threshold']:.2f} | **{t['iou']:.4f}** | {t['iou_at_val_threshold']:.4f} "
            f"| {t['dice']:.4f} | {tta['iou'] if tta else float('nan'):.4f} | {t['all_foreground_jaccard']:.4f} "
            f"| {t['load_after']} |")
    lines += ["", "Per-epoch validation IoU (elapsed minutes):", ""]
    for r in rows:
        lines.append(f"- {r['arch']}: " + ", ".join(f"{h['val_iou']:.3f} ({h['elapsed_s'] / 60:.1f})" for h in r["history"]))
    lines += ["", "Raw figures:", "", "```json", json.dumps(rows, indent=1, default=float)[:20000], "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    from mitoseg.core.io_utils import atomic_write_text
    atomic_write_text(path, "\n".join(lines))


def conv_macs(model) -> int:
    """Forward multiply-accumulates of every Conv2D: H_out * W_out * k_h * k_w * C_in * C_out, and of
    every Conv2DTranspose (the attention gates'): H_in * W_in * k_h * k_w * C_in * C_out."""
    import keras
    total = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            grid = layer.input if isinstance(layer, keras.layers.Conv2DTranspose) else layer.output
            _, h, w, _ = grid.shape
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * layer.input.shape[-1] * layer.output.shape[-1]
    return int(total)


def count_flops(args) -> int:
    """Print parameters and forward GMAC per patch (training step ~ 6 FLOP per MAC) and exit."""
    from mitoseg.cell.models import build_model
    for arch in args.archs:
        m = build_model(arch, (args.patch_size, args.patch_size, 1), base_filters=args.base_filters, depth=args.depth)
        macs = conv_macs(m)
        print(f"{arch}: width {args.base_filters}, depth {args.depth}, {args.patch_size}x{args.patch_size}: "
              f"{m.count_params():,} parameters, forward {macs / 1e9:.2f} GMAC/patch, "
              f"training ~{6 * macs / 1e9:.1f} GFLOP/patch")
    return 0


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="EPFL-layout data (default ../shared/data/lucchi_pp_subset)")
    p.add_argument("--archs", nargs="+", default=["UNet", "Attention_UNet", "Attention_ResUNet"])
    p.add_argument("--budget-min", type=float, default=15.0, help="wall-time training budget per model (default 15)")
    p.add_argument("--max-epochs", type=int, default=10_000)
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--patch-size", type=int, default=128, help="training crop side (default 128)")
    p.add_argument("--eval-tile", type=int, default=256, help="tile side for whole-slice test prediction")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps-per-epoch", type=int, default=40)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--tta", action="store_true", help="also score with 8-fold flip/rotation TTA (8x slower test)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save-models", default=None, help="folder for <arch>_best.keras (for predict.py)")
    p.add_argument("--count-flops", action="store_true", help="only print parameters and conv MACs per patch")
    p.add_argument("--record", default=str(ROOT / "bench" / "results" / f"real_data_{_dt.date.today().isoformat()}.md"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.count_flops:
        return count_flops(args)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + list(argv if argv is not None else sys.argv[1:]))
    from mitoseg.data import stacks as data
    from mitoseg.cell.inputs import hold_out_test_slices
    from mitoseg.core.errors import DataError
    from mitoseg.data.patches import split_slices
    try:
        volume, test = data.load_dataset(args.data_dir)
        if test is None:
            volume, test = hold_out_test_slices(volume, args.test_fraction)
        tr, va = split_slices(len(volume.images), args.val_fraction, "end")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    split = (f"test = {test.source} ({len(test.images)} slices), val = slices {va[0]}..{va[-1]} of the rest, "
             f"train = {len(tr)} slices")
    started_load = load()
    log(f"command: {command}")
    log(f"split: {split}")
    rows = []
    for arch in args.archs:
        rows.append(train_one_arch(arch, args, volume.images[tr], volume.masks[tr], volume.images[va],
                                   volume.masks[va], test.images, test.masks))
        write_record(Path(args.record), args, command, split, rows, started_load, load())
    print("\nheld-out foreground IoU (threshold 0.5) vs the all-foreground baseline:")
    for r in rows:
        t = r["test"]["plain"]
        extra = f", TTA {r['test']['tta']['iou']:.4f}" if "tta" in r["test"] else ""
        print(f"  {r['arch']:<18} IoU {t['iou']:.4f} (val-threshold {t['iou_at_val_threshold']:.4f}{extra})  "
              f"baseline {t['all_foreground_jaccard']:.4f}  epochs {r['epochs']}  train {r['train_s'] / 60:.1f} min")
    print(f"record: {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
