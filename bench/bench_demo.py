#!/usr/bin/env python
"""End-to-end wall time of the default demo study: `python run_study.py local --demo` (12 tiny grid
cells, then 9 confirmation cells - 3 fresh seeds x 3 winners - on the built-in synthetic data, and
the analysis), in a temporary root that is deleted afterwards.

    python bench/bench_demo.py                 # the default (run_study.py decides --jobs: 2 for --demo)
    python bench/bench_demo.py --jobs 1 --keep

Prints the wall time, the per-cell training and total times from the results JSONs, and the
share of each cell spent before/after training (total_time_s - training_time_s).
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
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, Report, load, maxrss_mb  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, help="passed to run_study.py (default: its own)")
    ap.add_argument("--keep", action="store_true", help="keep the study folder")
    args = ap.parse_args(argv)
    if not (REPO / "run_study.py").exists():
        print("run_study.py does not exist yet: nothing to measure")
        return 0
    root = tempfile.mkdtemp(prefix="bench_demo_")
    cmd = [sys.executable, "run_study.py", "local", "--demo", "--output-dir", root]
    if args.jobs:
        cmd += ["--jobs", str(args.jobs)]
    rep = Report("bench_demo", "end-to-end demo study")
    load_start = load()
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - t
    try:
        records = [json.loads(p.read_text()) for p in Path(root).rglob("exp_*_results.json")]
        ok = sum(r.get("status") in ("ok", "diverged") for r in records)
        train = [r["training_time_s"] for r in records if r.get("training_time_s")]
        total = [r["total_time_s"] for r in records if r.get("total_time_s")]
        rep.add(f"`{' '.join(cmd[1:])}` exit {proc.returncode}: wall time **{wall:.0f}s** "
                f"({wall / 60:.1f} min); {ok}/{len(records)} cells finished; {load_start} at start, "
                f"{load()} at end; peak RSS of a child {maxrss_mb(children=True):.0f} MB")
        if train and total:
            over = [tt - tr for tt, tr in zip(total, train)]
            rep.add(f"per cell: total {statistics.median(total):.1f}s median, training (epochs incl. "
                    f"validation) {statistics.median(train):.1f}s median, other (start-up, test, saving) "
                    f"{statistics.median(over):.1f}s median = {statistics.median(o / tt for o, tt in zip(over, total)):.0%}"
                    " of a cell's recorded time (excludes interpreter start before run_cell)")
        if proc.returncode:
            rep.add("stderr tail: " + proc.stderr[-500:].replace("\n", " | "))
        rep.add("last lines: " + " | ".join(proc.stdout.strip().splitlines()[-3:]))
        rep.save()
    finally:
        if args.keep:
            print(f"study kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
