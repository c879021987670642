#!/usr/bin/env python
"""GPU measurements for the study, one command: training images/s and peak GPU memory per
architecture at the cluster default (256x256 patches, width 64, depth 5) for float32, mixed
precision (mixed_float16, float32 output) and XLA (jit_compile) at batch sizes 8/16/32; the
largest batch that fits; and the throughput of K = 1, 2, 4 training processes sharing one GPU.

    python bench/bench_gpu.py                          # everything (GPU: about an hour on an A40, estimated)
    python bench/bench_gpu.py --arch UNet --k 1,2      # a part
    python bench/bench_gpu.py --tiny                   # the tiny size even on a GPU

Without a GPU it runs the same code at a tiny size (patch 32, width 4, depth 3) on the CPU and
says so in its first line; those figures say nothing about a GPU (tests/test_bench_gpu.py runs it).

How: every (architecture, mode) is one child process (`--worker measure`) that trains the cell's
own compiled model (training.build_compiled_model: Adam + clipping, focal loss, the cell's
metrics) on one fixed random batch repeated (compute only; bench_throughput.py shows the input
pipeline keeps up), times --steps steps after --warmup untimed ones at each batch size, reads the
allocator's peak (tf.config.experimental.get_memory_info, reset per batch size; on CPU the
process's peak RSS, which only grows), then doubles the batch from twice the largest measured
one (64) until it runs out of memory or passes --max-batch: the largest batch that fits is the
last size that trained (8 x a power of two with the default sizes). Each
result is printed as it is measured, so a child killed by an out-of-memory crash still leaves the
batches it did. Sharing: K children (float32, batch 16, TF_FORCE_GPU_ALLOW_GROWTH=true so none
takes the whole GPU) start together, wait for each other after warm-up, and time their steps;
the aggregate is all their images over the span from the first start to the last end.
Results: printed, and appended to bench/results/bench_gpu_<date>.md (or --results-dir).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, Report, load, maxrss_mb  # noqa: E402

ARCHS = ("UNet", "Attention_UNet", "Attention_ResUNet")
MODES = ("float32", "mixed_float16", "xla")
FULL = dict(patch=256, width=64, depth=5, max_batch=1024)
TINY = dict(patch=32, width=4, depth=3, max_batch=64)
SHARE_BATCH = 16


# --- child processes -------------------------------------------------------------------------------
def _emit(**values) -> None:
    print("BENCH " + json.dumps(values), flush=True)


def _tf():
    from mitoseg.cell import quiet_tf
    quiet_tf.install()
    import tensorflow as tf
    return tf


def worker_probe(args) -> int:
    tf = _tf()
    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    _emit(gpus=names, tensorflow=tf.__version__)
    return 0


def _model_and_batch(args, batch, mode):
    import keras
    import numpy as np

    from mitoseg.core.config import TrainConfig
    from mitoseg.cell.keras_setup import build_compiled_model
    keras.utils.set_random_seed(1)
    config = TrainConfig(architecture=args.arch, patch_size=args.patch, base_filters=args.width, depth=args.depth,
                         batch_size=batch, mixed_precision=mode == "mixed_float16", jit_compile=mode == "xla")
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    model = build_compiled_model(config)
    rng = np.random.default_rng(0)
    x = rng.random((batch, args.patch, args.patch, 1), dtype=np.float32)
    y = (rng.random((batch, args.patch, args.patch, 1)) < 0.1).astype(np.float32)
    return model, x, y


def _timed_fit(model, x, y, warmup, steps):
    """(seconds of the timed steps) after `warmup` untimed ones, one fixed batch repeated."""
    import keras
    import tensorflow as tf
    marks = []

    class Marks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append(time.perf_counter())
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[Marks()], verbose=0)
    return marks[-1] - marks[warmup - 1]


def _peak_memory(tf, gpu: bool):
    if gpu:
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 30, "GB GPU peak"
    return maxrss_mb() / 1024, "GB process peak RSS"


def _one_batch(args, tf, gpu, batch, steps):
    """True when `batch` trained; emits its result (or its out-of-memory)."""
    import gc

    import keras
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    try:
        model, x, y = _model_and_batch(args, batch, args.mode)
        seconds = _timed_fit(model, x, y, args.warmup, steps)
    except tf.errors.ResourceExhaustedError as err:
        _emit(kind="measure", batch=batch, oom=True, error=str(err).strip().splitlines()[0][:200])
        return False
    finally:
        keras.backend.clear_session()
        gc.collect()
    peak, what = _peak_memory(tf, gpu)
    _emit(kind="measure", batch=batch, oom=False, images_s=batch * steps / seconds, peak_gb=peak, memory=what)
    return True


def worker_measure(args) -> int:
    tf = _tf()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    fits = [b for b in args.batch_sizes if _one_batch(args, tf, gpu, b, args.steps)]
    batch, capped = 2 * max(args.batch_sizes), False
    if len(fits) == len(args.batch_sizes):   # all measured sizes fit: double until one does not
        while True:
            if batch > args.max_batch:
                capped = True
                break
            if not _one_batch(args, tf, gpu, batch, 2):
                break
            fits.append(batch)
            batch *= 2
    _emit(kind="largest", largest=max(fits) if fits else None, capped=capped)
    return 0


def worker_share(args) -> int:
    """One of K processes sharing the device: warm up, wait for the others, time the steps."""
    _tf()
    model, x, y = _model_and_batch(args, args.batch, "float32")
    _timed_fit(model, x, y, 1, args.warmup)   # warm-up (tracing) before the barrier
    Path(args.barrier, f"ready_{os.getpid()}").touch()
    deadline = time.time() + 600
    while len(list(Path(args.barrier).glob("ready_*"))) < args.k and time.time() < deadline:
        time.sleep(0.05)
    import tensorflow as tf
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    start = time.time()   # wall clock: the parent compares the spans of the K processes
    model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)   # traced already: steps only
    end = time.time()
    _emit(kind="share", start=start, end=end, images=args.batch * args.steps,
          images_s=args.batch * args.steps / (end - start))
    return 0


# --- the parent --------------------------------------------------------------------------------------
def _child_cmd(args, worker, *extra):
    return [sys.executable, os.path.abspath(__file__), "--worker", worker, "--patch", str(args.patch),
            "--width", str(args.width), "--depth", str(args.depth), "--steps", str(args.steps),
            "--warmup", str(args.warmup), *extra]


def _results(stdout: str) -> list[dict]:
    return [json.loads(ln[6:]) for ln in stdout.splitlines() if ln.startswith("BENCH ")]


def run_child(cmd, env=None, timeout=None) -> tuple[list[dict], str]:
    """(BENCH results, the last line of stderr when it failed, else '')."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), env=env, timeout=timeout)
    tail = "" if proc.returncode == 0 else f"exit {proc.returncode}: " + \
        ((proc.stderr.strip().splitlines() or ["no output"])[-1])[:200]
    return _results(proc.stdout), tail


def measure(args, rep, gpu):
    speed, largest = [], []
    for arch in args.arch:
        for mode in args.modes:
            cmd = _child_cmd(args, "measure", "--arch", arch, "--mode", mode, "--max-batch", str(args.max_batch),
                             "--batch-sizes", ",".join(map(str, args.batch_sizes)))
            results, failure = run_child(cmd)
            for r in (r for r in results if r["kind"] == "measure" and r["batch"] in args.batch_sizes):
                speed.append([arch, mode, r["batch"], "out of memory" if r["oom"] else f"{r['images_s']:.1f}",
                              "-" if r["oom"] else f"{r['peak_gb']:.2f}"])
            last = next((r for r in results if r["kind"] == "largest"), None)
            done = [r["batch"] for r in results if r["kind"] == "measure" and not r["oom"]]
            if last is None:   # the child died (e.g. a hard out-of-memory crash): what it did before counts
                text = f"{max(done)} (then the process died: {failure})" if done else f"none ({failure})"
            elif last["largest"] is None:
                text = "none of the measured sizes"
            else:
                cap = f" (stopped at the --max-batch cap {args.max_batch})" if last["capped"] else ""
                text = str(last["largest"]) + cap
            largest.append([arch, mode, text])
            print(f"  {arch} {mode}: done ({load()})", flush=True)
    what = "GB GPU peak (allocator)" if gpu else "GB process peak RSS (CPU; grows, never reset)"
    rep.add("Training throughput, one fixed batch repeated (compute only):")
    rep.add()
    rep.table(["architecture", "mode", "batch", "images/s", what], speed)
    rep.add(f"Largest batch that trains (doubling from {2 * max(args.batch_sizes)} after the measured sizes, "
            f"up to {args.max_batch}):")
    rep.add()
    rep.table(["architecture", "mode", "largest batch"], largest)


def share(args, rep, gpu):
    rows = []
    env = {**os.environ, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    for arch in args.arch:
        single = None
        for k in args.k:
            with tempfile.TemporaryDirectory(prefix="bench_gpu_barrier_") as barrier:
                cmd = _child_cmd(args, "share", "--arch", arch, "--batch", str(SHARE_BATCH), "--k", str(k),
                                 "--barrier", barrier)
                procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          cwd=str(REPO), env=env) for _ in range(k)]
                outs = [p.communicate() for p in procs]
            results = [r for out, _ in outs for r in _results(out) if r["kind"] == "share"]
            if len(results) < k:
                errs = [(err.strip().splitlines() or ["no output"])[-1][:160]
                        for (_, err), p in zip(outs, procs) if p.returncode]
                rows.append([arch, k, "failed", "-", "; ".join(errs) or "no result"])
                continue
            span = max(r["end"] for r in results) - min(r["start"] for r in results)
            total = sum(r["images"] for r in results) / span
            single = total if k == 1 else single
            rows.append([arch, k, f"{total:.1f}", f"{statistics.fmean(r['images_s'] for r in results):.1f}",
                         f"{total / single:.2f}x" if single else "-"])
        print(f"  {arch} sharing: done ({load()})", flush=True)
    rep.add(f"K processes training at once on {'one GPU' if gpu else 'the CPU'} (float32, batch {SHARE_BATCH}):")
    rep.add()
    rep.table(["architecture", "K", "aggregate images/s", "mean images/s per process", "vs K=1"], rows)


def _int_list(text):
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", choices=ARCHS, help="default: all three")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)} (default all)")
    ap.add_argument("--batch-sizes", type=_int_list, default=[8, 16, 32])
    ap.add_argument("--k", type=_int_list, default=[1, 2, 4], help="processes sharing the device (default 1,2,4)")
    ap.add_argument("--steps", type=int, help="timed steps (default 20 on a GPU, 3 tiny)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing; default 2)")
    ap.add_argument("--tiny", action="store_true", help="the tiny size even on a GPU")
    ap.add_argument("--max-batch", type=int, help="largest batch tried (default 1024; tiny 64)")
    ap.add_argument("--results-dir", help="where the Markdown is appended (default bench/results/)")
    for name in ("--worker", "--mode", "--patch", "--width", "--depth", "--batch", "--barrier"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        for name in ("patch", "width", "depth", "batch", "max_batch"):
            if getattr(args, name) is not None:
                setattr(args, name, int(getattr(args, name)))
        args.arch = args.arch[0] if args.arch else None
        args.k = args.k[0]
        return {"probe": worker_probe, "measure": worker_measure, "share": worker_share}[args.worker](args)
    args.arch = args.arch or list(ARCHS)
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        print(f"error: --modes: unknown {', '.join(bad)}; choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    probe, failure = run_child([sys.executable, os.path.abspath(__file__), "--worker", "probe"])
    if not probe:
        print(f"error: cannot start TensorFlow ({failure})", file=sys.stderr)
        return 1
    gpus = probe[0]["gpus"]
    size = TINY if (args.tiny or not gpus) else FULL
    args.patch, args.width, args.depth = size["patch"], size["width"], size["depth"]
    args.max_batch = args.max_batch or size["max_batch"]
    args.steps = args.steps or (20 if size is FULL else 3)
    where = f"GPU: {', '.join(gpus)}" if gpus else "NO GPU: the same code at a tiny size on the CPU; not GPU figures"
    first = (f"{where}; patch {args.patch}x{args.patch}, width {args.width}, depth {args.depth}, "
             f"TensorFlow {probe[0]['tensorflow']}, {args.steps} timed steps after {args.warmup} untimed")
    rep = Report("bench_gpu", "GPU throughput, memory, largest batch, sharing" + ("" if gpus else " (CPU, tiny)"))
    if args.results_dir:
        rep.path = Path(args.results_dir) / rep.path.name
    print(first, flush=True)
    rep.lines.insert(1, first)
    if args.modes and args.batch_sizes:
        measure(args, rep, bool(gpus))
    if args.k:
        share(args, rep, bool(gpus))
    rep.path.parent.mkdir(parents=True, exist_ok=True)
    rep.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
