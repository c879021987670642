#!/usr/bin/env python
"""Time from `train_one.py` start to its first training step, phase by phase, and the same as a
fraction of the whole cell; without the data cache, building it (first cell of a study) and
reading it (every later cell).

    python bench/bench_startup.py                   # real subset (1 epoch, extrapolated to 6) + demo cell
    python bench/bench_startup.py --skip-real       # only the demo-sized synthetic cell (6 epochs)
    python bench/bench_startup.py --cluster-default # also the real subset at the cluster defaults
                                                    # (256 patches, width 64, depth 5, bs 16, 30 epochs):
                                                    # start-up + 3 steps measured, the cell extrapolated

Each measurement is a fresh `train_one.py` process (run one after the other, never two at once).
The child runs train_one.main() unchanged except for timing wrappers around
cell_data.load_cell_data / prepare_arrays (as cell_data.prepare_cell_data calls them) / mitoseg.cell.models.build_model and a probe on the first training
batch; with a cache it passes cache_dir to the two data functions, which is what run_cell does in
grid mode once it forwards the study's cache folder.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

T0 = time.time()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REAL_DATA, REPO, Report, load  # noqa: E402

DEMO_MODEL = ["--patch-size", "64", "--base-filters", "16", "--depth", "4", "--batch-size", "8", "--arch", "UNet"]


def child(args) -> int:
    """Run train_one.main(argv) with timing probes; print one JSON line of event times."""
    events = {"python_start": float(os.environ.get("BENCH_SPAWN_TIME", T0)), "script_start": T0}
    sys.path.insert(0, str(REPO))
    from mitoseg.cli import train as train_one
    from mitoseg.cell import inputs as cell_data
    events["imported_train_one"] = time.time()
    load_cell_data, prepare_arrays = cell_data.load_cell_data, cell_data.prepare_arrays
    cache_dir = args.cache_dir

    def timed_load(config, run_cell_cache=None):   # the bench's --cache-dir stands in for the study's
        events["load_start"] = time.time()
        out = load_cell_data(config, cache_dir or run_cell_cache)
        events["load_end"] = time.time()
        return out

    def timed_prepare(volume, config, run_cell_cache=None):
        events["patch_start"] = time.time()
        out = prepare_arrays(volume, config, cache_dir or run_cell_cache)
        events["patch_end"] = time.time()
        return out
    cell_data.load_cell_data, cell_data.prepare_arrays = timed_load, timed_prepare   # as prepare_cell_data calls them

    import keras
    events["imported_keras"] = time.time()   # train_one imports it in the cell's set-up: counted as imports
    from mitoseg.cell import models
    build = models.build_model

    def timed_build(*a, **kw):
        events["build_start"] = time.time()
        m = build(*a, **kw)
        events["build_end"] = time.time()
        return m
    models.build_model = timed_build
    original = keras.callbacks.TerminateOnNaN.on_train_batch_end

    stop_after = int(os.environ.get("BENCH_STOP_AFTER_STEPS", "0"))

    def first_batch_end(self, batch, logs=None):
        now = time.time()
        events.setdefault("first_step_end", now)
        events.setdefault("step_ends", []).append(now)
        events["n_batches"] = events.get("n_batches", 0) + 1
        if stop_after and events["n_batches"] >= stop_after:   # a cluster-sized cell: enough measured
            events["end"] = now
            events["exit_code"] = None
            print("BENCH_EVENTS " + json.dumps(events), flush=True)
            sys.stderr.flush()
            os._exit(0)
        return original(self, batch, logs)
    keras.callbacks.TerminateOnNaN.on_train_batch_end = first_batch_end
    code = train_one.main(args.train_args)
    events["end"] = time.time()
    events["exit_code"] = code
    print("BENCH_EVENTS " + json.dumps(events), flush=True)
    return code


def run_child(train_args, cache_dir=None, stop_after_steps=0) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child"]
    if cache_dir:
        cmd += ["--cache-dir", str(cache_dir)]
    cmd += ["--", *train_args]
    env = {**os.environ, "BENCH_SPAWN_TIME": repr(time.time()), "TF_CPP_MIN_LOG_LEVEL": "3",
           "BENCH_STOP_AFTER_STEPS": str(stop_after_steps)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_EVENTS ")]
    if proc.returncode != 0 or not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(cmd)}")
    ev = json.loads(lines[-1][len("BENCH_EVENTS "):])
    ev["epoch_lines"] = [l for l in proc.stdout.splitlines() if l.lstrip().startswith("epoch ")]
    patches = re.search(r"train slices \d+ \((\d+) patches\)", proc.stdout)
    ev["n_train_patches"] = int(patches.group(1)) if patches else None
    ev["load"] = load()
    return ev


def epoch_seconds(line: str) -> float:
    """'epoch   1/6  loss ... lr 1.00e-03  12.3s  *best' -> 12.3"""
    for token in reversed(line.split()):
        if token.endswith("s") and token[:-1].replace(".", "", 1).isdigit():
            return float(token[:-1])
    raise ValueError(line)


def phases(ev: dict) -> dict:
    p = {"python + train_one import": ev["imported_train_one"] - ev["python_start"],
         "data load (decode/scale or cache open)": ev["load_end"] - ev["load_start"],
         "patching (or cache open)": ev["patch_end"] - ev["patch_start"],
         "TF/Keras import + setup": (ev["imported_keras"] - ev["imported_train_one"])
         + (ev["build_start"] - ev["patch_end"]),
         "model build + compile": ev["build_end"] - ev["build_start"],
         "fit start -> first step done (tracing)": ev["first_step_end"] - ev["build_end"]}
    p["total to first step"] = ev["first_step_end"] - ev["python_start"]
    return p


CLUSTER_STEPS = 3


def cluster_cell(rep: Report, data_dir: str, root: str) -> None:
    """The real subset at train_one.py's own defaults (the cluster cell), cache hit as in a grid.
    A full cell takes hours on 2 CPU cores, so the child stops after CLUSTER_STEPS steps and the cell
    is extrapolated as start-up + epochs x steps/epoch x (median of steps 2..N). Validation,
    test and saving are left out, which makes the cell look shorter and the fraction larger."""
    cache = os.path.join(root, "study", ".cache")
    base = ["--data-dir", data_dir]
    run_child([*base, "--epochs", "1", "--output-dir", os.path.join(root, "warm")], cache, stop_after_steps=1)
    ev = run_child([*base, "--output-dir", os.path.join(root, "out")], cache, stop_after_steps=CLUSTER_STEPS)
    from mitoseg.core.config import TrainConfig
    defaults = TrainConfig()
    ph = phases(ev)
    steps = [b - a for a, b in zip(ev["step_ends"], ev["step_ends"][1:])]
    step_s = sorted(steps)[len(steps) // 2]
    steps_per_epoch = -(-ev["n_train_patches"] // defaults.batch_size)
    cell = ph["total to first step"] + defaults.epochs * steps_per_epoch * step_s
    rep.add("### real subset, cluster-default cell (train_one.py defaults), cache hit")
    rep.add(f"train_one.py flags: `{' '.join(base)}` (patch {defaults.patch_size}, width {defaults.base_filters}, "
            f"depth {defaults.depth}, batch {defaults.batch_size}, {defaults.epochs} epochs); "
            f"stopped after {CLUSTER_STEPS} steps")
    rep.add()
    rows = [[name, f"{value:.2f}"] for name, value in ph.items()]
    rows.append(["training step (median of steps 2..)", f"{step_s:.1f} ({', '.join(f'{s:.1f}' for s in steps)})"])
    rows.append(["**fraction of the cell**", f"{ph['total to first step'] / cell:.2%} of ~{cell / 3600:.1f} h "
                 f"({defaults.epochs} epochs x {steps_per_epoch} steps x {step_s:.1f} s; validation not counted)"])
    rows.append(["load average at the end", ev["load"]])
    rep.table(["phase (s)", "cluster default"], rows)
    print(f"cluster default: {ph['total to first step']:.1f}s to first step, {step_s:.1f}s/step ({ev['load']})",
          flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("train_args", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default=REAL_DATA)
    ap.add_argument("--skip-real", action="store_true", help="only the synthetic demo cell")
    ap.add_argument("--skip-demo", action="store_true", help="only the real-subset cell")
    ap.add_argument("--demo-epochs", type=int, default=6, help="epochs of a demo cell (demo grid: 6)")
    ap.add_argument("--cluster-default", action="store_true",
                    help="also time a cluster-default cell on the real subset (start-up + 3 steps, ~5 min on CPU)")
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    rep = Report("bench_startup", "train_one.py start -> first training step")
    work = tempfile.mkdtemp(prefix="bench_startup_")
    try:
        cases = []
        if not args.skip_real:
            base = ["--data-dir", args.data_dir, "--epochs", "1", *DEMO_MODEL]
            cases.append(("real subset 33x768x1024, demo model, 1 epoch", base, os.path.join(work, "real")))
        if not args.skip_demo:
            base = ["--epochs", str(args.demo_epochs), "--synthetic-slices", "20", "--synthetic-size", "192",
                    *DEMO_MODEL]
            cases.append((f"demo cell (synthetic 20x192x192, {args.demo_epochs} epochs)", base,
                          os.path.join(work, "demo")))
        if args.cluster_default:
            cluster_cell(rep, args.data_dir, os.path.join(work, "cluster"))
        for title, base, root in cases:
            cache = os.path.join(root, "study", ".cache")
            runs = [("no cache (today)", None), ("cache: build (1st cell)", cache), ("cache: hit (later cells)", cache)]
            results = []
            for i, (label, cdir) in enumerate(runs):
                out = os.path.join(root, f"out{i}")
                ev = run_child([*base, "--output-dir", out], cdir)
                ph = phases(ev)
                epochs = [epoch_seconds(l) for l in ev["epoch_lines"]]
                results.append((label, ev, ph, epochs))
                print(f"{title} / {label}: {ph['total to first step']:.1f}s to first step, cell "
                      f"{ev['end'] - ev['python_start']:.1f}s ({ev['load']})", flush=True)
            rep.add(f"### {title}")
            rep.add(f"train_one.py flags: `{' '.join(base)}`")
            rep.add()
            header = ["phase (s)"] + [r[0] for r in results]
            rows = [[name] + [f"{r[2][name]:.2f}" for r in results] for name in results[0][2]]
            cell_rows = []
            for label, ev, ph, epochs in results:
                whole = ev["end"] - ev["python_start"]
                if "1 epoch" in title:  # extrapolate to the demo's 6 epochs from the measured epoch
                    est = whole + 5 * epochs[0]
                    cell_rows.append(f"{ph['total to first step'] / est:.1%} of a 6-epoch cell "
                                     f"(measured {whole:.0f}s for 1 epoch of {epochs[0]:.0f}s; 6 epochs ~{est:.0f}s)")
                else:
                    cell_rows.append(f"{ph['total to first step'] / whole:.1%} of the measured cell ({whole:.0f}s, "
                                     f"epochs {', '.join(f'{e:.1f}' for e in epochs)}s)")
            rows.append(["**fraction of the cell**"] + cell_rows)
            rows.append(["load average at the end"] + [r[1]["load"] for r in results])
            rep.table(header, rows)
        size = sum(f.stat().st_size for f in __import__("pathlib").Path(work).rglob("*.npy"))
        rep.add(f"Cache size on disk (all cases): {size / 1e6:.0f} MB")
        rep.save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
