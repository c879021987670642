"""Selections never widen by accident: empty or reversed --cells/--arch are refused, confirmation cells are
selectable, nothing is written before the whole command is checked, learning rates that would share a
folder are refused, grid-file paths are read against the file's folder, and environment variables that
contradict the command are refused or named. Real `run_study.py` processes; nothing is trained."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mitoseg.core import grid as G
from tests.fixtures_results import add_confirmation, make_study

REPO = Path(__file__).resolve().parents[1]
TINY = dict(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3, 5e-3], batch_sizes=[8],
            fixed=dict(epochs=1, patch_size=32, base_filters=4, depth=3))


def run_study(*args, cwd=REPO, env=None):
    clean = {k: v for k, v in os.environ.items() if k not in ("GRID_CONFIG", "DATA_DIR", "STUDY_DIR")}
    return subprocess.run([sys.executable, str(REPO / "run_study.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**clean, **(env or {})})


def error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, lines
    return errors[0]


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "grid.json"
    G.GridConfig(**TINY).save(path)
    return path


@pytest.mark.parametrize("flags, words", [
    (["--cells", ""], ["--cells ''", "selects no cell"]),
    (["--cells", " , "], ["selects no cell"]),
    (["--arch", ""], ["--arch ''"]),
    (["--cells", "3-1"], ["'3-1' is reversed", "1-3"]),
    (["--cells", "9"], ["'9' is outside", "0..3"]),
    (["--confirm-seeds", "-1"], ["--confirm-seeds must be at least 0"]),
])
def test_a_refused_selection_writes_nothing(tmp_path, grid_file, flags, words):
    study = tmp_path / "new_study"
    proc = run_study("local", "--study-dir", study, "--grid-config", grid_file, "--no-analysis", *flags)
    line = error_line(proc)
    assert all(w in line for w in words), line
    assert not study.exists()


def test_confirmation_cells_are_selectable_by_their_index(tmp_path):
    study = make_study(tmp_path / "study", architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3],
                       batch_sizes=[8], seeds=[1])
    add_confirmation(study, 1, val_fn=lambda c: 0.72, test_fn=lambda c: 0.70)
    listed = run_study("list", "--study-dir", study)
    assert "confirmation stage" in listed.stdout and "indices 2-3" in listed.stdout
    proc = run_study("local", "--study-dir", study, "--cells", "3", "--no-analysis")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 cell(s) selected, 1 already finished, 0 to run" in proc.stdout
    assert "exp_03_Attention_UNet_lr0.001_bs8_seed2" in proc.stdout


def test_learning_rates_that_share_a_folder_name_are_refused(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({**TINY, "learning_rates": [1e-3, 0.0010000001]}))
    line = error_line(run_study("list", "--grid-config", path))
    assert "0.001 and 0.0010000001 give the same folder name (lr0.001)" in line


def test_a_relative_data_dir_in_a_grid_file_is_read_against_the_files_folder(tmp_path):
    (tmp_path / "grids").mkdir()
    path = tmp_path / "grids" / "grid.json"
    path.write_text(json.dumps({**TINY, "fixed": {**TINY["fixed"], "data_dir": "../base"}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_study("list", "--grid-config", path, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    fixed = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("fixed: "))[7:])
    assert fixed["data_dir"] == str(tmp_path / "base")


@pytest.mark.parametrize("env, flags, words", [
    ({"DATA_DIR": "/some/data"}, ["--demo"], ["$DATA_DIR is set", "--demo"]),
    ({"GRID_CONFIG": "/some/grid.json"}, ["--demo"], ["$GRID_CONFIG is set", "--demo"]),
    ({"DATA_DIR": "/some/data"}, ["--data-dir", "/other/data"], ["--data-dir /other/data contradicts $DATA_DIR"]),
])
def test_an_environment_variable_contradicting_the_command_is_refused(tmp_path, env, flags, words):
    study = tmp_path / "s"
    line = error_line(run_study("local", "--study-dir", study, "--no-analysis", *flags, env=env))
    assert all(w in line for w in words), line
    assert not study.exists()


def test_an_environment_variable_that_is_used_is_named(tmp_path, grid_file):
    proc = run_study("list", "--size", env={"GRID_CONFIG": str(grid_file)})
    assert proc.returncode == 0 and proc.stdout.strip() == "4"
    assert f"--grid-config from $GRID_CONFIG: {grid_file}" in proc.stderr


def test_confirm_seeds_contradicting_the_studys_plan_are_refused_before_the_grid_trains(tmp_path):
    study = make_study(tmp_path / "study", architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3],
                       batch_sizes=[8], seeds=[1])
    add_confirmation(study, 2, val_fn=lambda c: 0.72, test_fn=lambda c: 0.70)
    (study / "exp_00_UNet_lr0.001_bs8").rename(study / "gone")   # a grid cell that would train first
    proc = run_study("local", "--study-dir", study, "--confirm-seeds", "1", "--no-analysis")
    assert "already plans 2 seeds" in error_line(proc)
    assert "to run" not in proc.stdout and not (study / "exp_00_UNet_lr0.001_bs8").exists()


def test_a_study_dir_variable_that_local_does_not_read_is_named(tmp_path, grid_file):
    proc = run_study("local", "--grid-config", grid_file, "--root", tmp_path, "--cells", "9",
                     env={"STUDY_DIR": str(tmp_path / "old")})
    assert f"$STUDY_DIR={tmp_path / 'old'} is not read by `local`" in proc.stdout
    assert "'9' is outside" in error_line(proc)


def test_a_refused_submission_writes_no_study(tmp_path, grid_file):
    proc = run_study("submit", "--scheduler", "slurm", "--root", tmp_path / "root", "--grid-config", grid_file,
                     "--cells-per-gpu", "0", "--dry-run")
    assert "cells-per-gpu" in error_line(proc).replace("CELLS_PER_GPU", "cells-per-gpu").lower()
    assert not (tmp_path / "root").exists()
