"""--cells-per-gpu K on the CPU: array element i trains cells i*K..i*K+K-1 at once with the real
train_one.py; every cell is trained once, every result is written, a failing cell does not stop its
sibling, and a rerun of the element skips what finished and redoes only the failed cell."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mitoseg.core import paths as P
from mitoseg.core import grid as G
from mitoseg.study import multi_cell as M
from mitoseg.study import runner as R
from mitoseg.core.results import load_results

REPO = Path(__file__).resolve().parents[1]
TINY = dict(epochs=1, patch_size=32, base_filters=4, depth=3, synthetic_slices=10, synthetic_size=64)


def test_element_cells_and_array_size():
    assert M.array_size(36, 1) == 36 and M.array_size(36, 4) == 9 and M.array_size(5, 2) == 3
    assert [M.element_cells(i, 2, 5) for i in range(3)] == [[0, 1], [2, 3], [4]]
    covered = [c for i in range(M.array_size(37, 4)) for c in M.element_cells(i, 4, 37)]
    assert covered == list(range(37))   # every cell exactly once
    with pytest.raises(ValueError, match="outside the array of 3 elements"):
        M.element_cells(3, 2, 5)
    assert M.cells_per_gpu(None, {"CELLS_PER_GPU": "4"}) == 4 and M.cells_per_gpu(None, {}) == 1
    with pytest.raises(ValueError, match="positive integer"):
        M.cells_per_gpu("0", {})


def test_submit_sets_the_array_range_and_k(tmp_path):
    cfg = tmp_path / "g.json"
    G.GridConfig(architectures=["UNet"], learning_rates=[1e-3, 5e-3, 1e-4], batch_sizes=[8, 16]).save(cfg)
    proc = subprocess.run([sys.executable, str(REPO / "run_study.py"), "submit", "--scheduler", "slurm",
                           "--grid-config", str(cfg), "--root", str(tmp_path), "--cells-per-gpu", "4", "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("array job ("))
    assert "--array=0-1" in line and "CELLS_PER_GPU=4" in line   # 6 cells, 4 per element: 2 elements


def _log_headers(study, cell):
    log = P.experiment_paths(study, cell.name).log
    return log.read_text().count(f"=== {cell.name} (") if log.exists() else 0


def test_two_cells_per_element_with_a_failure_and_a_rerun(tmp_path):
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3, 2e-3, 5e-3], batch_sizes=[4], fixed=dict(TINY))
    study = tmp_path / "study"
    G.init_study(study, grid)
    cells = G.cells(grid)
    blocker = study / cells[1].name
    blocker.write_text("a file where cell 1's folder must go: its train_one.py fails")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "STUDY_DIR": str(study), "CELLS_PER_GPU": "2"}
    logs = []
    codes = [R.run_element(i, tmp_path, environ=env, log=logs.append) for i in range(M.array_size(3, 2))]
    assert codes == [1, 0], logs               # element 0: cell 1 failed, cell 0 did not care
    assert load_results(P.experiment_paths(study, cells[0].name).results_json)["status"] == "ok"
    assert load_results(P.experiment_paths(study, cells[2].name).results_json)["status"] == "ok"
    assert "cells of this element: 0: exit 0, 1: exit 1" in logs
    assert R.run_element(2, tmp_path, environ=env, log=logs.append) == 2 and "outside the array" in logs[-1]
    blocker.unlink()
    assert R.run_element(0, tmp_path, environ=env, log=logs.append) == 0   # the rerun: cell 0 skipped, 1 trained
    for cell in cells:
        assert load_results(P.experiment_paths(study, cell.name).results_json)["status"] == "ok"
        assert _log_headers(study, cell) == 1, cell.name   # every cell trained exactly once
