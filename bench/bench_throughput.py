#!/usr/bin/env python
"""Training throughput (images/s) and peak memory per architecture: the input pipeline train_one.py
uses (training.make_train_dataset over the study cache's memory maps) versus the same model fed
from in-memory numpy arrays (model.fit(x, y)). Target: pipeline >= 95 % of in-memory.

    python bench/bench_throughput.py                       # small CPU setting: patch 64, width 16, depth 4, batch 8
    python bench/bench_throughput.py --cluster-step        # + a few steps at the cluster default (256, width 64, depth 5, batch 8)
    python bench/bench_throughput.py --arch UNet --steps 20 --rounds 2

Data: the real subset's patches (via mitoseg.data.cache, built once in a temporary folder). One child
process per architecture (so peak RSS is per architecture), run one after the other. Inside a child
the two feeds alternate for --rounds rounds of --steps timed steps (the first 3 batches of every
fit call are not timed) so a change of machine load hits both; the median round is reported.
A third feed, one fixed batch repeated (no input work at all), gives the compute-only ceiling.
Peak RSS: after the first pipeline round (pipeline only), and at the end (all feeds).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REAL_DATA, REPO, Report, load, maxrss_mb  # noqa: E402

WARMUP = 3
ARCHS = ("UNet", "Attention_UNet", "Attention_ResUNet")


def _config(args, arch):
    from mitoseg.core.config import TrainConfig
    return TrainConfig(architecture=arch, data_dir=args.data_dir, patch_size=args.patch, base_filters=args.width,
                       depth=args.depth, batch_size=args.batch, seed=1)


def _arrays(args, arch):
    from mitoseg.cell import inputs as cell_data
    config = _config(args, arch)
    train, _ = cell_data.load_cell_data(config, cache_dir=args.cache_dir)
    return config, cell_data.prepare_arrays(train, config, cache_dir=args.cache_dir)


def _model(config):
    import keras

    from mitoseg.cell.keras_setup import build_compiled_model
    keras.utils.set_random_seed(config.seed)
    return build_compiled_model(config)   # the model and compile settings of a real cell


class _Timer:
    """Keras callback: wall time of batches WARMUP.. of one fit call."""

    def __new__(cls):
        import keras

        class T(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.marks = []

            def on_train_batch_end(self, batch, logs=None):
                self.marks.append(time.perf_counter())
        return T()


def child(args) -> int:
    config, arrays = _arrays(args, args.arch)
    import numpy as np

    from mitoseg.cell.keras_setup import make_train_dataset
    model = _model(config)
    x, y = arrays["x_train"], arrays["y_train"]
    x_mem, y_mem = None, None
    steps = args.steps + WARMUP
    rates = {"pipeline": [], "in-memory": [], "one fixed batch": []}
    out = {"arch": args.arch, "params": int(model.count_params()), "n_train": int(len(x))}
    t_first = time.perf_counter()
    for r in range(args.rounds):
        for feed in ("pipeline", "in-memory", "one fixed batch"):
            timer = _Timer()
            if feed == "pipeline":
                ds = make_train_dataset(x, y, config).repeat()
                model.fit(ds, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
            elif feed == "one fixed batch":  # no input work at all: the compute-only ceiling
                import tensorflow as tf
                batch = (np.array(x[:config.batch_size]), np.array(y[:config.batch_size]))
                model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1, steps_per_epoch=steps,
                          callbacks=[timer], verbose=0)
            else:
                if x_mem is None:
                    x_mem, y_mem = np.array(x), np.array(y)   # the arrays a non-cached cell holds
                model.fit(x_mem, y_mem, batch_size=config.batch_size, epochs=1, steps_per_epoch=steps,
                          shuffle=True, callbacks=[timer], verbose=0)
            if r == 0 and feed == "pipeline":
                out["first_fit_s"] = time.perf_counter() - t_first
                out["maxrss_pipeline_mb"] = maxrss_mb()
            m = timer.marks
            rates[feed].append(config.batch_size * (len(m) - WARMUP) / (m[-1] - m[WARMUP - 1]))
    out["maxrss_end_mb"] = maxrss_mb()
    out["rates"] = rates
    out["load"] = load()
    print("BENCH " + json.dumps(out), flush=True)
    return 0


def child_cluster_step(args) -> int:
    """A few steps at the cluster default through the train_one.py pipeline: s/step on this CPU."""
    config, arrays = _arrays(args, args.arch)
    from mitoseg.cell.keras_setup import make_train_dataset
    t = time.perf_counter()
    model = _model(config)
    build_s = time.perf_counter() - t
    timer = _Timer()
    t = time.perf_counter()
    model.fit(make_train_dataset(arrays["x_train"], arrays["y_train"], config).repeat(), epochs=1,
              steps_per_epoch=args.steps, callbacks=[timer], verbose=0)
    m = [t] + timer.marks
    out = {"arch": args.arch, "params": int(model.count_params()), "build_s": build_s,
           "first_step_s": m[1] - m[0], "step_s": [b - a for a, b in zip(m[1:], m[2:])],
           "maxrss_mb": maxrss_mb(), "load": load()}
    print("BENCH " + json.dumps(out), flush=True)
    return 0


def run_child(args, arch, extra) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--arch", arch, "--cache-dir", args.cache_dir,
           "--data-dir", args.data_dir, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO),
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH ")]
    if proc.returncode or not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"child failed: {' '.join(cmd)}")
    return json.loads(lines[-1][6:])


def data_path_memory(args, rep) -> None:
    """tracemalloc peak (numpy buffers) of loading + patching: without the cache vs a cache hit."""
    from mitoseg.cell import inputs as cell_data
    config = _config(args, "UNet")
    rows = []
    for label, cdir in (("no cache", None), ("cache hit", args.cache_dir)):
        tracemalloc.start()
        t = time.perf_counter()
        train, _ = cell_data.load_cell_data(config, cache_dir=cdir)
        arrays = cell_data.prepare_arrays(train, config, cache_dir=cdir)
        dt = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        rows.append([label, f"{dt:.2f}", f"{peak:.0f}", f"{len(arrays['x_train'])}", load()])
        del train, arrays
    rep.add(f"Data path (load + patch {args.patch}x{args.patch}, real subset), numpy-heap peak by tracemalloc:")
    rep.add()
    rep.table(["data path", "time (s)", "peak heap (MB)", "train patches", "load average"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", choices=ARCHS, help="default: all three")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cluster-step", action="store_true", help="also time steps at 256 / width 64 / depth 5 / batch 8")
    ap.add_argument("--cluster-steps", type=int, default=3)
    ap.add_argument("--data-dir", default=REAL_DATA)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=("small", "cluster"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.arch = args.arch[0]
        return child(args) if args.child == "small" else child_cluster_step(args)

    archs = args.arch or list(ARCHS)
    work = tempfile.mkdtemp(prefix="bench_throughput_")
    args.cache_dir = os.path.join(work, ".cache")
    rep = Report("bench_throughput", "training throughput and peak memory")
    try:
        sys.path.insert(0, str(REPO))
        from mitoseg.cell import inputs as cell_data
        t = time.perf_counter()
        cell_data.prepare_arrays(cell_data.load_cell_data(_config(args, "UNet"), cache_dir=args.cache_dir)[0],
                                _config(args, "UNet"), cache_dir=args.cache_dir)
        rep.add(f"Cache built for patch {args.patch} in {time.perf_counter() - t:.1f}s ({load()})")
        rep.add()
        data_path_memory(args, rep)
        small = ["--child", "small", "--patch", str(args.patch), "--width", str(args.width), "--depth",
                 str(args.depth), "--batch", str(args.batch), "--steps", str(args.steps), "--rounds", str(args.rounds)]
        rows = []
        for arch in archs:
            res = run_child(args, arch, small)
            pipe, mem = statistics.median(res["rates"]["pipeline"]), statistics.median(res["rates"]["in-memory"])
            fixed = statistics.median(res["rates"]["one fixed batch"])
            rows.append([arch, f"{res['params']:,}", f"{pipe:.1f}", f"{mem:.1f}", f"{pipe / mem:.0%}",
                         f"{fixed:.1f} ({pipe / fixed:.0%})",
                         " / ".join(f"{a:.0f}:{b:.0f}:{c:.0f}" for a, b, c in zip(*res["rates"].values())),
                         f"{res['maxrss_pipeline_mb']:.0f}", f"{res['maxrss_end_mb']:.0f}", res["load"]])
            print(rows[-1], flush=True)
        rep.add(f"Small CPU setting: patch {args.patch}, width {args.width}, depth {args.depth}, batch {args.batch}; "
                f"{args.rounds} rounds x {args.steps} timed steps per feed, real-subset patches.")
        rep.add()
        rep.table(["architecture", "parameters", "pipeline img/s (median)", "in-memory img/s (median)",
                   "pipeline / in-memory", "one fixed batch img/s (pipeline share)",
                   "rounds pipeline:in-memory:fixed img/s", "peak RSS pipeline only (MB)",
                   "peak RSS both feeds (MB)", "load average at end"], rows)
        if args.cluster_step:
            big = ["--child", "cluster", "--patch", "256", "--width", "64", "--depth", "5", "--batch", "8",
                   "--steps", str(args.cluster_steps)]
            crow = []  # the first child builds the patch-256 cache entry (not timed), the others read it
            for arch in archs:
                res = run_child(args, arch, big)
                later = res["step_s"]
                crow.append([arch, f"{res['params']:,}", f"{res['first_step_s']:.1f}",
                             f"{statistics.mean(later):.2f}" if later else "-",
                             f"{8 / statistics.mean(later):.2f}" if later else "-",
                             f"{res['maxrss_mb']:.0f}", res["load"]])
                print(crow[-1], flush=True)
            rep.add("Cluster default (patch 256, width 64, depth 5, batch 8) on this CPU, train_one.py pipeline:")
            rep.add()
            rep.table(["architecture", "parameters", "first step incl. tracing (s)", "later steps (s/step)",
                       "img/s", "peak RSS (MB)", "load average at end"], crow)
        rep.save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
