#!/usr/bin/env python
"""End-to-end wall time of the demo study: `python run_study.py local --demo` (its grid, its
confirmation stage with folds, the analysis and the report, on the built-in synthetic data), in a
temporary root that is deleted afterwards; with --baseline, first the same command in another checkout
(e.g. the previous version, `git archive main | tar -x -C /tmp/base`), then this one, and the ratio.

    python bench/bench_demo.py                              # this checkout, run_study.py's own --jobs
    python bench/bench_demo.py --baseline /tmp/base         # side by side: baseline, then this; the ratio
    python bench/bench_demo.py --jobs 1 --keep

Prints per run the wall time and the CPU time (user+sys, less sensitive to other load than the wall
time) with the load average at its start and end (the machine may be shared:
compare runs side by side, as a ratio), the cells finished, the median per-cell training and total
times from the results JSONs, the report's sections and each architecture's mean test IoU against the
all-foreground baseline (a demo that is fast but learned nothing is no demo).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, Report, load  # noqa: E402


def run_demo(repo: Path, jobs, keep: bool) -> dict:
    """Run the demo of the checkout `repo` with this interpreter; its figures."""
    root = tempfile.mkdtemp(prefix="bench_demo_")
    cmd = [sys.executable, "run_study.py", "local", "--demo", "--output-dir", root] + (["--jobs", str(jobs)] if jobs else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONDONTWRITEBYTECODE": "1"}
    out = {"repo": str(repo), "cmd": " ".join(cmd[1:]), "load_start": load()}
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        proc = subprocess.Popen(cmd, cwd=str(repo), stdout=so, stderr=se, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)   # its CPU time with every process it waited for
        wall = time.perf_counter() - t
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    out.update(wall=wall, cpu=usage.ru_utime + usage.ru_stime, load_end=load(),
               code=os.waitstatus_to_exitcode(status), tail=" | ".join(stdout.strip().splitlines()[-2:]),
               stderr=stderr[-500:])
    try:
        records = [json.loads(p.read_text()) for p in Path(root).rglob("exp_*_results.json")]
        out["cells"] = f"{sum(r.get('status') in ('ok', 'diverged') for r in records)}/{len(records)}"
        out["train_s"] = statistics.median([r["training_time_s"] for r in records if r.get("training_time_s")] or [0])
        out["total_s"] = statistics.median([r["total_time_s"] for r in records if r.get("total_time_s")] or [0])
        grid = next(Path(root).rglob("grid_config.json"), None)
        out["test"] = _test_iou(records, len(_grid_cells(grid)) if grid else 0)
        report = next(Path(root).rglob("hyperparameter_report.md"), None)
        out["sections"] = re.findall(r"^## (.+)$", report.read_text(), re.M) if report else []
    finally:
        if keep:
            print(f"study kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return out


def _grid_cells(path: Path) -> list:
    from mitoseg.core.grid import GridConfig, cells
    return cells(GridConfig.from_dict(json.loads(path.read_text())))


def _test_iou(records: list, grid_size: int) -> str:
    """Mean test IoU per architecture of the confirmation runs (their indices follow the grid's; all runs if
    there are none) vs the all-foreground baseline."""
    runs = [r for r in records if r.get("task_index", -1) >= grid_size and r.get("test")] \
        or [r for r in records if r.get("test")]
    by_arch: dict = {}
    for r in runs:
        by_arch.setdefault(r["architecture"], []).append(r["test"])
    return "; ".join(f"{a} {statistics.mean(t['iou'] for t in ts):.3f} (all-foreground "
                     f"{statistics.mean(t['all_foreground_jaccard'] for t in ts):.3f}, n={len(ts)})"
                     for a, ts in sorted(by_arch.items()))


def describe(rep: Report, name: str, r: dict) -> None:
    rep.add(f"**{name}** (`{r['cmd']}` in {r['repo']}) exit {r['code']}: wall **{r['wall']:.0f} s** "
            f"({r['wall'] / 60:.1f} min), CPU (user+sys of it and its children) {r['cpu']:.0f} s; "
            f"{r.get('cells')} cells finished; {r['load_start']} at start, "
            f"{r['load_end']} at end; per cell median: total {r.get('total_s', 0):.1f} s, training "
            f"{r.get('train_s', 0):.1f} s")
    rep.add(f"  test IoU: {r.get('test')}")
    rep.add(f"  report sections: {', '.join(r.get('sections') or ['(no report)'])}")
    if r["code"]:
        rep.add("  stderr tail: " + r["stderr"].replace("\n", " | "))
    rep.add(f"  last lines: {r['tail']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", help="passed to run_study.py of both runs (default: its own)")
    ap.add_argument("--baseline", type=Path, help="another checkout whose demo runs first, for the ratio")
    ap.add_argument("--keep", action="store_true", help="keep the study folders")
    args = ap.parse_args(argv)
    rep = Report("bench_demo", "end-to-end demo study" + (", side by side with a baseline" if args.baseline else ""))
    runs = {}
    if args.baseline:
        runs["baseline"] = run_demo(args.baseline.resolve(), args.jobs, args.keep)
        describe(rep, "baseline", runs["baseline"])
    runs["this checkout"] = run_demo(REPO, args.jobs, args.keep)
    describe(rep, "this checkout", runs["this checkout"])
    if args.baseline:
        new, old = runs["this checkout"], runs["baseline"]
        rep.add(f"ratio this / baseline: wall **{new['wall'] / old['wall']:.2f}** ({new['wall']:.0f} s / "
                f"{old['wall']:.0f} s), CPU {new['cpu'] / old['cpu']:.2f} ({new['cpu']:.0f} s / {old['cpu']:.0f} s)")
    rep.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
