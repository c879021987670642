"""Shared fixtures."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures_train import (TINY_CELL_ARGS, TINY_CELL_NAME, TINY_STUDY_GRID, TinyCell, run_script,
                                  run_train_one)


@pytest.fixture(scope="session")
def oldest_python() -> str:
    """The interpreter of the oldest supported stack (run_tests.sh builds .venv-oldest/ and sets
    $MITOSEG_OLDEST_PYTHON). Under CI its absence is a failure, elsewhere a skip with the reason."""
    path = os.environ.get("MITOSEG_OLDEST_PYTHON") or str(Path(__file__).resolve().parents[1] / ".venv-oldest/bin/python")
    if not os.access(path, os.X_OK):
        message = f"no oldest-stack Python at {path}: run `bash run_tests.sh` (it builds .venv-oldest/)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_cell(tmp_path_factory) -> TinyCell:
    """A synthetic-data Attention_UNet cell trained for 2 epochs (deterministic ops) by a real
    train_one.py process: its results JSON, history, log, model and TensorBoard events. Built once
    per session, on first use (a run costs ~10 s of this 2-core machine, more under load); read-only:
    a test that changes the folder copies it first (shutil.copytree)."""
    out = tmp_path_factory.mktemp("tiny_cell")
    proc = run_train_one([*TINY_CELL_ARGS, "--out-dir", str(out)])
    return TinyCell(out=out, exp=out / TINY_CELL_NAME, proc=proc)


@pytest.fixture(scope="session")
def tiny_confirmed_study(tmp_path_factory):
    """(folder, process) of `run_study.py local --confirm-seeds 2` on TINY_STUDY_GRID: one grid cell, two
    confirmation runs with their models, the analysis (with the ensemble's score). Built once per session
    on first use; read-only: call `copy_tiny_study(tiny_confirmed_study, dest)` for a study to change."""
    root = tmp_path_factory.mktemp("tiny_confirmed_study")
    (root / "grid.json").write_text(json.dumps(TINY_STUDY_GRID))
    proc = run_script("run_study.py", "local", "--grid-config", "grid.json", "--study-dir", "study",
                      "--confirm-seeds", "2", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "study", proc


def copy_tiny_study(tiny_confirmed_study, dest: Path) -> Path:
    """A copy of the shared tiny study at dest/study (its files name their own folder relatively)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_confirmed_study[0], dest / "study")
    return dest / "study"

