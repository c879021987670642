#!/usr/bin/env python
"""Whole-slice inference throughput (slices/s at 768x1024) with mitoseg/inference.predict_slices
(overlapping tiles, half-patch stride, Hann-window blending), on real-subset slices.

    python bench/bench_inference.py                    # UNet width 8: patch 64/depth 4 and patch 256/depth 5
    python bench/bench_inference.py --arch Attention_ResUNet --width 16 --slices 4 --tta

The model is freshly built (untrained: speed does not depend on the weights). The first slice is
a warm-up (graph tracing) and is not timed. "tiling+blending" runs predict_slices with a stand-in
model that returns zeros at no cost: what the tiling and blending themselves take.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REAL_DATA, Report, load, maxrss_mb  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _NoModel:
    @staticmethod
    def predict(x, batch_size=None, verbose=0):
        import numpy as np
        return np.zeros(x.shape[:3] + (1,), np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="UNet")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--setting", action="append", help="PATCH:DEPTH, repeatable (default 64:4 and 256:5)")
    ap.add_argument("--slices", type=int, default=3, help="timed slices (after one warm-up slice)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tta", action="store_true", help="8-fold test-time augmentation")
    ap.add_argument("--data-dir", default=REAL_DATA)
    args = ap.parse_args(argv)
    settings = [tuple(int(v) for v in s.split(":")) for s in (args.setting or ["64:4", "256:5"])]

    import numpy as np

    from mitoseg.data import stacks as data
    from mitoseg.cell.inference import _starts, predict_slices
    from mitoseg.cell.models import build_model

    volume, _ = data.load_dataset(args.data_dir)
    images = np.asarray(volume.images[: args.slices + 1])
    rep = Report("bench_inference", "whole-slice inference throughput")
    rows = []
    for patch, depth in settings:
        model = build_model(args.arch, (patch, patch, 1), base_filters=args.width, depth=depth)
        stride = patch // 2
        n_tiles = len(_starts(images.shape[1], patch, stride)) * len(_starts(images.shape[2], patch, stride))
        predict_slices(model, images[:1], patch, batch_size=args.batch, tta=args.tta)  # warm-up
        t = time.perf_counter()
        predict_slices(model, images[1:], patch, batch_size=args.batch, tta=args.tta)
        whole = time.perf_counter() - t
        t = time.perf_counter()  # the same call with a model that costs nothing: tiling + blending only
        predict_slices(_NoModel(), images[1:], patch, batch_size=args.batch, tta=args.tta)
        overhead = time.perf_counter() - t
        rows.append([f"{args.arch} w{args.width} d{depth}", f"{patch}", f"{n_tiles}", f"{model.count_params():,}",
                     f"{args.slices / whole:.3f}", f"{whole / args.slices:.2f}",
                     f"{overhead / args.slices:.3f}", f"{overhead / whole:.1%}", load()])
        print(rows[-1], flush=True)
    rep.add(f"{args.slices} timed real slices of {images.shape[1]}x{images.shape[2]} after 1 warm-up slice; "
            f"overlap 0.5, batch {args.batch}, TTA {'8-fold' if args.tta else 'off'}; peak RSS {maxrss_mb():.0f} MB.")
    rep.add()
    rep.table(["model", "patch", "tiles/slice", "parameters", "slices/s", "s/slice", "tiling+blending s/slice",
               "tiling+blending share", "load average at end"], rows)
    rep.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
