"""No traceback for an ordinary slip: Ctrl-C on `run_study.py local`, `status | head`, an --output_dir that is
a file, a full disk during the analysis, impossible model sizes, and all-failed studies explained."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import analyze_hyperparameter_results as cli
from mitoseg.core import grid as G
from mitoseg.core import io_utils
from mitoseg.report import figures as plots
from mitoseg.report.write import run_analysis
from mitoseg.core.paths import FIG_HEATMAPS, REPORT_MD, SUMMARY_CSV_NAME
from mitoseg.core.status import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED
from tests.fixtures_results import make_study

REPO = Path(__file__).resolve().parents[1]
GRID = dict(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3, 1e-2], batch_sizes=[8], seeds=[1])


def run(script, *args, **kw):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env, **kw)


def one_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path / "study", **GRID)


def test_ctrl_c_on_a_local_run_is_one_line_and_the_cell_resumable(tmp_path):
    grid = tmp_path / "grid.json"
    G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[4],
                 fixed=dict(epochs=50, patch_size=64, base_filters=4, depth=3, synthetic_slices=16,
                            synthetic_size=128)).save(grid)
    study = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, str(REPO / "run_study.py"), "local", "--study-dir", str(study),
                             "--grid-config", str(grid), "--no-analysis"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as from a terminal even when pytest itself runs in the background (which ignores SIGINT)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not list(study.glob("exp_*/*_history.csv")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)   # what Ctrl-C sends: the whole foreground group
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == EXIT_INTERRUPTED, out + err
    assert "Traceback" not in out + err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "interrupted (Ctrl-C): cells that were training are recorded as interrupted; the same command resumes them"]
    record = json.loads(next(study.glob("exp_*/*_results.json")).read_text())
    assert record["status"] == "interrupted"


def test_status_into_a_closed_pipe_ends_quietly(study):
    proc = subprocess.Popen([sys.executable, str(REPO / "run_study.py"), "status", "--study-dir", str(study)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # `| head` that has already gone
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""


def test_an_output_dir_that_is_a_file_is_one_line(study, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    proc = run("analyze_hyperparameter_results.py", "--study-dir", study, "--output_dir", target, "--no-figures")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "--output-dir" in one_error_line(proc.stderr) and "is a file, not a folder" in proc.stderr
    proc = run("analyze_hyperparameter_results.py", "--study-dir", target, "--no-figures")
    assert proc.returncode == EXIT_BAD_INPUT   # the flag the user gave is named, not --output-dir
    assert one_error_line(proc.stderr) == f"error: --study-dir {target} is a file, not a folder; name a folder"


def test_a_full_disk_during_the_analysis_is_one_line(study, monkeypatch, capsys):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(io_utils.os, "replace", full)
    assert cli.main(["--study-dir", str(study), "--no-figures"]) == EXIT_FAILED
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and SUMMARY_CSV_NAME in line


def test_a_figure_that_failed_leaves_no_stale_png(study, monkeypatch):
    stale = study / FIG_HEATMAPS
    stale.write_bytes(b"an old study's figure")
    def fails(res, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(plots, "plot_heatmaps", fails)
    out = run_analysis(study_dir=study, log=lambda _: None)
    assert "figure failed" in out["figures"][FIG_HEATMAPS] and not stale.exists()


@pytest.mark.parametrize("flags, words", [(["--depth", "0"], ["--depth", "positive"]),
                                          (["--base-filters", "0"], ["--base-filters", "positive"]),
                                          (["--patch-size", "100", "--depth", "4"], ["divisible", "8"])])
def test_impossible_model_sizes_are_one_line(flags, words):
    proc = run("models.py", *flags)
    assert proc.returncode == EXIT_BAD_INPUT
    line = one_error_line(proc.stderr)
    assert all(w in line for w in words), line


def test_all_failed_rows_are_explained_by_their_status(study, tmp_path):
    assert run("analyze_hyperparameter_results.py", "--study-dir", study, "--no-figures").returncode == 0
    df = pd.read_csv(study / SUMMARY_CSV_NAME)
    df["status"] = "failed"
    path = tmp_path / "failed.csv"
    df.to_csv(path, index=False)
    proc = run("analyze_hyperparameter_results.py", "--summary_file", path, "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert "no grid cell finished successfully (4 failed)" in proc.stdout and "soft" not in proc.stdout
    assert "ranked: 4 failed.**" in (tmp_path / REPORT_MD).read_text()


def test_a_flag_written_with_equals_and_tilde_means_the_home_folder(study, tmp_path):
    # `--output-dir=~/x` reaches the program unexpanded (the shell expands ~ only at a word's start): it wrote
    # into a folder named "~" in the current one, and --study-dir=~/... was "not a study folder"
    home = tmp_path / "home"
    (home / "studies").mkdir(parents=True)
    study.rename(home / "studies" / "s")
    env = {**os.environ, "HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}

    def from_tmp(script, *args):
        return subprocess.run([sys.executable, str(REPO / script), *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env=env)
    proc = from_tmp("analyze_hyperparameter_results.py", "--study-dir=~/studies/s", "--output-dir=~/out", "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert (home / "out" / REPORT_MD).is_file() and not (tmp_path / "~").exists()
    proc = from_tmp("run_study.py", "status", "--study-dir=~/studies/s")
    assert "4 cells" in proc.stdout, proc.stdout + proc.stderr


def test_a_study_or_output_folder_that_is_a_file_names_its_flag(tmp_path):
    # was `error: [Errno 17] File exists: '...'`, naming no flag
    target = tmp_path / "a_file"
    target.write_text("x")
    for flag in ("--study-dir", "--output-dir"):
        proc = run("run_study.py", "local", "--demo", flag, target, "--no-analysis")
        assert proc.returncode == EXIT_BAD_INPUT
        assert one_error_line(proc.stderr) == f"error: {flag} {target} is a file, not a folder; name a folder"
    assert target.read_text() == "x"
