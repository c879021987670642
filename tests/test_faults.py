"""Fault injection (issue #6): walltime SIGTERM, SIGKILL mid-training and mid-write, many writers at
once, read-only and full output disks, divergence. Real `train_one.py` processes wherever the fault
is a process-level one; TensorFlow is never imported into the pytest process.

One module-scoped study runs two real cells side by side (same study folder, both creating it):
cell 0 is walltime-killed, resumed, SIGKILLed, mangled and resumed again; cell 1 diverges.
"""
from __future__ import annotations

import csv
import functools
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mitoseg.study import submit as S
from mitoseg.core import paths as P
from mitoseg.core import grid as G
from mitoseg.cell import resume
from mitoseg.core.results import ResultsError, empty_record, load_results, save_results
from mitoseg.analysis.summary import build_summary

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)

ROOT = Path(__file__).resolve().parents[1]
TOTAL_EPOCHS = 4
# 20 slices of 96^2 in 32^2 patches at batch 2: 81 steps, 2-5 s per epoch on a shared CPU, so a
# SIGTERM sent right after epoch 1 lands inside epoch 2's batches.
FIXED = dict(epochs=TOTAL_EPOCHS, patch_size=32, base_filters=4, depth=3, synthetic_slices=20,
             synthetic_size=96, early_stopping_patience=50, reduce_lr_patience=50)
# lr 1e30: Adam's step is ~lr regardless of the gradient, so the weights overflow in the first batch
# (NaN loss). lr 1e6 does NOT diverge with BatchNorm: the sigmoid saturates and the cell ends "ok"
# but flagged degenerate -- measured, and recorded in docs/faq.md.
GRID = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3, 1e30], batch_sizes=[2], fixed=FIXED)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
for _var in S.SCHEDULER_INDEX_VARIABLES:
    ENV.pop(_var, None)


def start(args, log_path: Path) -> subprocess.Popen:
    handle = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_one.py"), *args], cwd=ROOT, env=ENV,
                            stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    return proc


def history_epochs(path: Path) -> list[int]:
    try:
        with open(path, newline="") as fh:
            return [int(row["epoch"]) for row in csv.DictReader(fh)]
    except (OSError, ValueError, KeyError):
        return []


def wait_until(predicate, proc, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended (code {proc.returncode}) before {what}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def summary_snapshot(study: Path) -> list[tuple[str, str, bool]]:
    df, _ = build_summary(study)
    return list(zip(df["experiment_id"], df["status"], df["success"]))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Runs the whole fault sequence once; the tests below check its recorded evidence."""
    root = tmp_path_factory.mktemp("faults")
    study = root / "study"
    grid_file = root / "grid.json"
    GRID.save(grid_file)
    c0, c1 = G.cells(GRID)
    p0 = P.ExperimentPaths(study / c0.name)
    ev = {"study": study, "paths": p0, "div_paths": P.ExperimentPaths(study / c1.name), "snapshots": []}
    base = ["--study-dir", str(study), "--grid-config", str(grid_file)]

    # 1. Two array elements start at once into a study that does not exist yet; cell 1 diverges.
    run1 = start([*base, "--task-index", "0"], root / "run1.log")
    div = start([*base, "--task-index", "1"], root / "div.log")
    # 2. SIGTERM (walltime) once epoch 1 is in the history, i.e. during epoch 2. Meanwhile the
    #    analysis keeps reading the study while both cells write into it.
    last = [0.0]

    def epoch1_done():
        if time.time() - last[0] > 0.3 and (study / P.GRID_CONFIG_NAME).exists():
            ev["snapshots"].append(summary_snapshot(study))
            last[0] = time.time()
        return history_epochs(p0.history_csv) == [1]
    wait_until(epoch1_done, run1, 300, "epoch 1 of cell 0")
    time.sleep(0.3)
    run1.send_signal(signal.SIGTERM)
    ev["run1_code"] = run1.wait(timeout=120)
    ev["run1_log"] = (root / "run1.log").read_text()
    ev["run1_record"] = load_results(p0.results_json)
    ev["run1_history"] = history_epochs(p0.history_csv)
    saved = resume.checkpoints(p0.backup_dir)
    ev["run1_backup"] = sorted(f.name for f in saved[0].iterdir()) if saved else []
    ev["run1_backup_epoch"] = json.loads((saved[0] / resume.META_NAME).read_text())["epoch"] if saved else None

    # 3. Resume, then SIGKILL (node failure) as soon as it has logged one epoch: no results write.
    run2 = start(base + ["--task-index", "0"], root / "run2.log")
    wait_until(lambda: re.search(r"^[\d-]+ [\d:]+ epoch +\d+/", (root / "run2.log").read_text(), re.M), run2, 300,
               "a resumed epoch")
    run2.send_signal(signal.SIGKILL)
    ev["run2_code"] = run2.wait(timeout=60)
    ev["run2_log"] = (root / "run2.log").read_text()
    ev["run2_history"] = history_epochs(p0.history_csv)
    ev["after_kill_text"] = p0.results_json.read_text()
    ev["div_code"] = div.wait(timeout=300)
    ev["div_log"] = (root / "div.log").read_text()

    # 4. SIGKILL in the middle of writing the results: a truncated JSON (claiming "ok") in place, and
    #    the writer's temporary file left behind.
    fake_ok = dict(ev["run1_record"], status="ok", error=None)
    text = json.dumps(fake_ok, indent=2)
    p0.results_json.write_text(text[: len(text) // 2])
    leftover = p0.exp_dir / f".{p0.results_json.name}.k1ll3d.tmp"
    leftover.write_text(text)
    ev["truncated_summary"] = summary_snapshot(study)
    from mitoseg.cell.run import existing_status
    ev["truncated_existing_status"] = existing_status(p0)

    # 5. The rerun must resume (never skip the cell as finished) and finish the cell.
    run3 = start(base + ["--task-index", "0"], root / "run3.log")
    ev["run3_code"] = run3.wait(timeout=300)
    ev["run3_log"] = (root / "run3.log").read_text()
    ev["final_record"] = load_results(p0.results_json)
    ev["final_history"] = history_epochs(p0.history_csv)
    ev["final_summary"] = summary_snapshot(study)
    ev["training_log"] = p0.log.read_text()
    return ev


# --- walltime: SIGTERM mid-epoch ---------------------------------------------------------------------
def test_sigterm_records_interrupted_and_keeps_backup(study):
    assert study["run1_code"] == 3, study["run1_log"][-3000:]
    rec = study["run1_record"]
    assert rec["status"] == "interrupted" and "SIGTERM" in rec["error"]
    assert "received signal 15" in study["run1_log"]
    # Epoch 2 was cut short: neither the history nor the backup may count it (Keras still calls
    # on_epoch_end after a mid-epoch stop; before the fix both recorded epoch 2 as finished).
    assert study["run1_history"] == list(range(1, rec["epochs_run"] + 1))
    # SIGTERM came 0.3 s into epoch 2 (an epoch takes seconds): only epoch 1 is finished. Without the
    # fix the cut-short epoch 2 was recorded (epochs_run 2, backup epoch 2) and its rest never trained.
    assert rec["epochs_run"] == 1
    assert study["run1_backup"] == sorted([resume.WEIGHTS_NAME, resume.META_NAME])
    assert study["run1_backup_epoch"] == rec["epochs_run"]
    assert "not recorded; the rerun repeats it" in study["run1_log"]


def test_resume_restores_epoch_counter_and_history_is_continuous(study):
    interrupted_at = study["run1_record"]["epochs_run"]
    assert "resuming from the backup" in study["run2_log"]
    # fit(initial_epoch=...) from the backup: the first epoch the resumed process trains is the
    # one after the last completed epoch (not epoch 1 again).
    unstamped = [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", ln) for ln in study["run2_log"].splitlines()]
    first = next(line for line in unstamped if line.startswith("epoch "))
    assert first.startswith(f"epoch {interrupted_at + 1:>3}/{TOTAL_EPOCHS}"), first
    assert study["final_history"] == list(range(1, TOTAL_EPOCHS + 1))   # nothing repeated or lost


def test_sigkill_mid_training_leaves_nothing_that_reads_as_success(study):
    assert study["run2_code"] == -signal.SIGKILL
    assert json.loads(study["after_kill_text"])["status"] == "interrupted"   # the old record, untouched
    assert study["run2_history"] == list(range(1, len(study["run2_history"]) + 1))


def test_truncated_results_and_leftover_tmp_never_read_as_success(study):
    assert study["truncated_existing_status"] is None
    row = [r for r in study["truncated_summary"] if r[0] == study["paths"].name][0]
    assert row[1] == "unreadable" and not row[2]
    assert "already finished" not in study["run3_log"]
    assert "the cell will be rerun" in study["run3_log"]


def test_rerun_after_kills_finishes_the_cell(study):
    assert study["run3_code"] == 0, study["run3_log"][-3000:]
    rec = study["final_record"]
    assert rec["status"] == "ok" and rec["error"] is None
    assert rec["epochs_run"] == TOTAL_EPOCHS and 1 <= rec["best_epoch"] <= TOTAL_EPOCHS
    assert rec["test"] is not None and 0 <= rec["test"]["iou"] <= 1
    assert "resuming from the backup" in study["run3_log"]
    assert not study["paths"].backup_dir.exists()        # finished cells drop their resume state
    # The appended training_log.txt tells the whole story of the cell.
    log = study["training_log"]
    assert log.count("resuming from the backup") == 2 and "received signal 15" in log


def test_tensorboard_curve_of_the_resumed_cell_has_every_epoch_once(study):
    """After SIGTERM, resume, SIGKILL and the final rerun, TensorBoard shows one curve: epochs 1..4,
    each once, with the values of the final history CSV (read in a child: no TensorFlow here)."""
    code = ("import json, sys\n"
            "from tests.test_tensorboard_log import raw_steps, read_board\n"
            "scalars, hparams, _ = read_board(sys.argv[1])\n"
            "print(json.dumps({'val_iou': scalars['val_iou'], 'raw': raw_steps(sys.argv[1]), 'hp': hparams}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(study["paths"].tensorboard_dir)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    board = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(study["paths"].history_csv, newline="") as fh:
        history = [(int(r["epoch"]), float(r["val_iou"])) for r in csv.DictReader(fh)]
    assert [step for step, _ in board["val_iou"]] == list(range(1, TOTAL_EPOCHS + 1))
    assert [v for _, v in board["val_iou"]] == pytest.approx([v for _, v in history], abs=1e-6)
    pairs = [tuple(p) for p in board["raw"]]
    assert len(pairs) == len(set(pairs)), "a step was written twice"
    assert board["hp"]["architecture"] == "UNet" and board["hp"]["batch_size"] == 2


def test_sigterm_before_training_starts_is_recorded_interrupted(tmp_path):
    """Walltime can hit while TensorFlow is still being imported: the handler is installed first thing
    in the cell, so this too ends as `interrupted` (exit 3) with nothing trained, never as a crash."""
    log = tmp_path / "early.log"
    proc = start([*TINY_ARGS, "--out-dir", str(tmp_path)], log)
    wait_until(lambda: "config: " in log.read_text(), proc, 120, "the cell to start")
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 3, log.read_text()[-3000:]
    rec = load_results(next(tmp_path.glob("exp_*/*_results.json")))
    assert rec["status"] == "interrupted" and rec["epochs_run"] == 0
    assert "received signal 15" in log.read_text()


# --- divergence ----------------------------------------------------------------------------------------
def test_divergence_is_recorded_with_its_epoch_and_counted(study):
    assert study["div_code"] == 0, study["div_log"][-3000:]     # documented: 0 = finished (ok or diverged)
    rec = load_results(study["div_paths"].results_json)
    assert rec["status"] == "diverged" and rec["diverged_epoch"] == 1
    assert "NaN" in rec["error"]
    statuses = dict((name, status) for name, status, _ in study["final_summary"])
    assert statuses == {study["paths"].name: "ok", study["div_paths"].name: "diverged"}
    # The analysis script counts it (and does not count it as a success).
    out = study["study"].parent / "analysis"
    proc = subprocess.run([sys.executable, str(ROOT / "analyze_hyperparameter_results.py"), "--study-dir",
                           str(study["study"]), "--output_dir", str(out), "--no-figures"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cells = json.loads((out / "analysis_summary.json").read_text())["cells"]
    assert cells["by_status"] == {"ok": 1, "diverged": 1} and cells["successful"] == 1
    assert cells["finished"] == 2


# --- many writers at once ------------------------------------------------------------------------------
def test_concurrent_cells_and_reader_never_see_partial_results(study):
    # Two real cells created the same study at once: one grid config, intact.
    assert G.load_study_grid(study["study"]).to_dict() == GRID.to_dict()
    assert study["snapshots"], "the analysis never ran while the cells were training"
    for snap in study["snapshots"]:
        for name, status, success in snap:
            assert status in ("missing", "interrupted", "diverged", "ok", "failed"), (name, status)
            assert status != "unreadable"
    # Temporary files of the SIGKILLed run (and the injected one) were removed by the rerun.
    assert [p.name for p in study["study"].rglob("*.tmp*")] == []


def _writer(path, n, marker_sizes):
    for i in range(n):
        size = marker_sizes[i % len(marker_sizes)]
        rec = empty_record(experiment_id=Path(path).parent.name, status="ok", architecture="UNet",
                           learning_rate=1e-3, batch_size=8, seed=i, started_at="s", finished_at="f",
                           error="x" * size)
        save_results(path, rec)


def _reader(path, deadline, queue):
    """Reads in a loop; reports (complete reads, first problems, number of PARTIAL reads)."""
    seen, bad, partial = 0, [], 0
    while time.time() < deadline:
        try:
            rec = load_results(path)
        except ResultsError as err:
            partial += "not valid JSON" in str(err) or "cannot read" in str(err)
            if len(bad) < 3 or "not valid JSON" in str(err):
                bad = (bad + [str(err)])[-3:]
            continue
        if rec["error"] is None or set(rec["error"]) != {"x"}:
            bad.append(f"odd content {rec['error']!r:.40}")
            partial += 1
        seen += 1
    queue.put((seen, bad, partial))


def _plain_writer(path, deadline):
    while time.time() < deadline:
        Path(path).write_text(json.dumps({"schema_version": 1, "pad": "y" * 200_000}))


def test_atomic_replace_vs_readers_and_many_writers(tmp_path):
    """8 processes each rewrite their own exp_ folder's results 40 times (sizes 10 B..300 kB) while 3
    reader processes load one of them in a loop: every read is complete."""
    ctx = mp.get_context("fork")
    paths = []
    for i in range(8):
        exp = tmp_path / f"exp_{i:02d}_UNet_lr0.001_bs8"
        exp.mkdir()
        paths.append(exp / f"{exp.name}_results.json")
    _writer(paths[0], 1, [10])
    writers = [ctx.Process(target=_writer, args=(str(p), 40, [10, 300_000, 5_000])) for p in paths]
    queue = ctx.Queue()
    deadline = time.time() + 4
    readers = [ctx.Process(target=_reader, args=(str(paths[0]), deadline, queue)) for _ in range(3)]
    for p in writers + readers:
        p.start()
    results = [queue.get(timeout=60) for _ in readers]
    for p in writers + readers:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(n_partial == 0 and not bad for _, bad, n_partial in results), results
    assert sum(seen for seen, _, _ in results) > 50
    for p in paths:
        assert load_results(p)["status"] == "ok"
    assert not [f for f in tmp_path.rglob("*") if ".tmp" in f.name]   # no temp files left (io_utils names)
    df, inventory = build_summary(tmp_path)
    assert inventory.counts == {"ok": 8}

    # Control: the same readers against a plain (non-atomic) writer DO see partial files, so the
    # check above would have caught a non-atomic results write.
    plain = tmp_path / "plain" / "exp_x_results.json"
    plain.parent.mkdir()
    plain.write_text("{}")
    deadline = time.time() + 3
    w = ctx.Process(target=_plain_writer, args=(str(plain), deadline))
    r = ctx.Process(target=_reader, args=(str(plain), deadline, queue))
    w.start(), r.start()
    _, examples, n_partial = queue.get(timeout=60)
    w.join(), r.join()
    assert n_partial > 0 and any("not valid JSON" in e for e in examples), examples


# --- read-only and full output disks ---------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


CHECK = ("import json, sys, pathlib; from mitoseg.core.results import load_results, ResultsError\n"
         "found = {}\n"
         "for p in pathlib.Path(sys.argv[1]).rglob('*_results.json'):\n"
         "    try: found[p.name] = load_results(p)['status']\n"
         "    except ResultsError as e: found[p.name] = 'unreadable'\n"
         "print('CHECK ' + json.dumps(found))\n")
TINY_ARGS = ["--arch", "UNet", "--lr", "1e-3", "--batch-size", "4", "--epochs", "2", "--patch-size", "32",
             "--base-filters", "4", "--depth", "3", "--synthetic-slices", "10", "--synthetic-size", "64"]


def _in_private_mount(tmp_path, mount_opts, train_args):
    """Mount a tmpfs (in a private mount namespace: nothing leaks to the host), run train_one.py into
    it, then list what a reader finds there."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    q = lambda s: "'" + str(s).replace("'", "'\\''") + "'"
    script = (f"mount -t tmpfs -o {mount_opts} tmpfs {q(mnt)} || exit 97\n"
              f"{q(sys.executable)} {q(ROOT / 'train_one.py')} {' '.join(q(a) for a in train_args)}\n"
              f"echo EXIT $?\n"
              f"{q(sys.executable)} -c {q(CHECK)} {q(mnt)}\n")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script.replace("MNT", str(mnt))], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 97, proc.stderr
    code = int(next(l for l in proc.stdout.splitlines() if l.startswith("EXIT "))[5:])
    found = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("CHECK "))[6:])
    return code, proc.stdout, proc.stderr, found


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (root); in-process fallback below")
def test_read_only_output_disk_is_one_clear_error(tmp_path):
    code, out, err, found = _in_private_mount(tmp_path, "ro", [*TINY_ARGS, "--out-dir", "MNT/runs"])
    assert code != 0 and found == {}
    errors = [l for l in (out + err).splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "Read-only file system" in errors[0]
    assert str(tmp_path / "mnt" / "runs") in errors[0]
    # Grid mode: creating the study folder (from the --grid-config given) already fails, with the path in the line.
    (tmp_path / "g").mkdir()
    from mitoseg.core import grid as G
    G.demo_grid().save(tmp_path / "grid.json")
    code, out, err, found = _in_private_mount(tmp_path / "g", "ro", ["--study-dir", "MNT/study", "--task-index", "0",
                                                                     "--grid-config", str(tmp_path / "grid.json")])
    errors = [l for l in (out + err).splitlines() if l.startswith("error:")]
    assert code == 2 and found == {} and len(errors) == 1 and "Read-only file system" in errors[0]
    assert "study" in errors[0]


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (root); in-process fallback below")
def test_full_output_disk_is_recorded_as_failed_never_success(tmp_path):
    # 64 kB: the log, history and state fit, the model (250 kB) at the end of epoch 1 does not.
    code, out, err, found = _in_private_mount(tmp_path, "size=64k", [*TINY_ARGS, "--epochs", "1", "--out-dir", "MNT"])
    assert code == 1, out[-3000:] + err[-3000:]
    assert all(status in ("failed", "unreadable") for status in found.values()), found
    last = [l for l in out.splitlines() if l.strip() and not l.startswith(("EXIT", "CHECK"))][-1]
    assert "No space left on device" in last and ": failed:" in last, last
    assert str(tmp_path / "mnt") in last and "Traceback" not in out + err   # names the folder, no traceback


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (root); in-process fallback below")
def test_output_disk_full_before_the_cell_starts(tmp_path):
    # nr_inodes=1: not even the exp_ folder can be created; caught before TensorFlow is imported.
    code, out, err, found = _in_private_mount(tmp_path, "nr_inodes=1", [*TINY_ARGS, "--out-dir", "MNT"])
    errors = [l for l in (out + err).splitlines() if l.startswith("error:")]
    assert code == 1 and found == {} and len(errors) == 1, out + err
    assert "No space left on device" in errors[0] and str(tmp_path / "mnt") in errors[0]


@pytest.mark.skipif(_can_mount(), reason="the real tmpfs tests above ran")
def test_full_output_disk_fallback_enospc_on_every_atomic_write(tmp_path):
    """Without mount privileges: os.replace raises ENOSPC in the training process (every atomic write
    -- history, state, model, results -- ends in os.replace)."""
    wrapper = ("import errno, os, runpy, sys\n"
               "def full(src, dst, *a, **k):\n"
               "    raise OSError(errno.ENOSPC, 'No space left on device', str(dst))\n"
               "os.replace = full\n"
               f"sys.argv = ['train_one.py'] + sys.argv[1:]\n"
               f"runpy.run_path({str(ROOT / 'train_one.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, *TINY_ARGS, "--out-dir", str(tmp_path)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(tmp_path.rglob("*_results.json"))
    assert "No space left on device" in proc.stdout.strip().splitlines()[-1]


# --- the resume backup itself (mitoseg.cell.resume: weights + optimizer state per finished epoch) ----------
BACKUP_SCRIPT = r'''
import json, sys
from pathlib import Path
import numpy as np, keras
from mitoseg.cell import resume
backup = Path(sys.argv[1]) / "backup"
x, y = np.random.default_rng(0).normal(size=(32, 4)).astype("float32"), np.zeros((32, 1), "float32")
out = {}
partial = [False]

def model_():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model

def fit(epochs):
    model = model_()
    start = resume.restore(model, backup)
    seen = []
    log = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, l: seen.append(e + 1))
    model.fit(x, y, epochs=epochs, initial_epoch=start, batch_size=8, verbose=0,
              callbacks=[log, resume.make_callback(backup, lambda: partial[0])])
    return seen, model

def newest():
    found = resume.checkpoints(backup)
    return json.loads((found[0] / resume.META_NAME).read_text())["epoch"] if found else None

out["fresh"] = fit(3)[0]
out["meta_fresh"] = newest()
seen, m5 = fit(5)
out["resumed"], out["meta_resumed"] = seen, newest()            # epochs 4, 5 only
reloaded = model_(); resume.restore(reloaded, backup)           # weights AND optimizer state come back
out["same_weights"] = all(np.array_equal(a, b) for a, b in zip(m5.get_weights(), reloaded.get_weights()))
out["same_optimizer"] = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                            zip(m5.optimizer.variables, reloaded.optimizer.variables))
out["iterations"] = int(np.asarray(reloaded.optimizer.iterations))
partial[0] = True
out["partial"] = fit(7)[0]; out["meta_partial"] = newest()   # cut-short epochs never saved
partial[0] = False
out["kept"] = [p.name for p in resume.checkpoints(backup)]
(resume.checkpoints(backup)[0] / resume.META_NAME).write_text('{"epo')     # torn newest checkpoint
out["torn"] = fit(7)[0]; out["meta_torn"] = newest()          # falls back to the previous one (epoch 4)
for p in resume.checkpoints(backup):
    (p / resume.WEIGHTS_NAME).write_bytes(b"garbage")
try:
    fit(9)
    out["both_torn"] = "no error"
except RuntimeError as err:
    out["both_torn"] = str(err)
out["backup_left"] = backup.exists()
print("RESULT " + json.dumps(out))
'''


def test_backup_restores_epoch_counter_skips_partial_epochs_and_survives_torn_checkpoints(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BACKUP_SCRIPT, str(tmp_path)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert out["fresh"] == [1, 2, 3] and out["meta_fresh"] == 3
    assert out["resumed"] == [4, 5] and out["meta_resumed"] == 5
    assert out["same_weights"] and out["same_optimizer"] and out["iterations"] == 5 * 4   # 4 steps/epoch
    assert out["partial"] == [6, 7] and out["meta_partial"] == 5
    assert out["kept"] == ["epoch_0005", "epoch_0004"]
    assert out["torn"] == [5, 6, 7] and out["meta_torn"] == 7
    assert "latest backup unreadable (JSONDecodeError); resumed from the previous one" in proc.stdout
    assert "unreadable resume backup (" in out["both_torn"] and "start it afresh" in out["both_torn"]
    assert not out["backup_left"]


def test_leftover_temp_files_alone_are_not_results(tmp_path):
    """SIGKILL after the temporary file was written but before os.replace: only the temp files exist."""
    from mitoseg.cell.run import existing_status
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[4])
    G.init_study(tmp_path, grid)
    paths = P.ExperimentPaths(tmp_path / G.cells(grid)[0].name)
    paths.exp_dir.mkdir()
    rec = empty_record(experiment_id=paths.name, status="ok", architecture="UNet", learning_rate=1e-3,
                       batch_size=4, seed=42, started_at="s", finished_at="f")
    (paths.exp_dir / f".{paths.results_json.name}.a1b2c3.tmp").write_text(json.dumps(rec))
    (paths.exp_dir / f".{paths.name}_model.tmp123.keras").write_bytes(b"PK\x03\x04half")
    assert existing_status(paths) is None
    df, inventory = build_summary(tmp_path)
    assert list(df["status"]) == ["missing"] and not df["success"].any()
