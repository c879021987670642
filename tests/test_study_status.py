"""`run_study.py status` on a fake study folder: every state, the running cells' epoch and latest
val IoU, and the ETA worked out by hand from the epoch times written into the histories."""
import os
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mitoseg.core import grid as G
from mitoseg.study import status_view as S
from mitoseg.core.results import save_results
from tests.fixtures_results import record_for

REPO = Path(__file__).resolve().parents[1]
NOW = time.time()


def write_history(exp_dir: Path, name: str, ious, epoch_s: float):
    lines = ["epoch,loss,val_loss,val_iou,time_s"]
    lines += [f"{i + 1},0.1,0.2,{iou},{epoch_s}" for i, iou in enumerate(ious)]
    (exp_dir / f"{name}_history.csv").write_text("\n".join(lines) + "\n")
    (exp_dir / "training_log.txt").write_text("epoch lines\n")


def age(exp_dir: Path, seconds: float):
    """Make every file of the cell `seconds` old."""
    for path in exp_dir.rglob("*"):
        os.utime(path, (NOW - seconds, NOW - seconds))


@pytest.fixture
def study(tmp_path):
    """8 cells, 10 epochs each: 0 finished, 1 failed, 2 running (epoch 3), 3 stalled (epoch 2, silent
    for 2 h), 4 interrupted, 5 interrupted and being rerun (epoch 6), 6 and 7 missing."""
    grid = G.GridConfig(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3, 5e-3], batch_sizes=[8, 16],
                        fixed={"epochs": 10})
    study = tmp_path / "study"
    G.init_study(study, grid)
    cells = G.cells(grid)
    def exp(i):
        path = study / cells[i].name
        path.mkdir()
        return path
    rec = record_for(cells[0], status="ok", iou=0.8, epochs=10)
    rec.update(training_time_s=100.0, total_time_s=130.0)    # 30 s of start-up and test
    save_results(exp(0) / f"{cells[0].name}_results.json", rec)
    write_history(study / cells[0].name, cells[0].name, [0.5] * 10, 10.0)
    age(study / cells[0].name, 3600)
    save_results(exp(1) / f"{cells[1].name}_results.json", record_for(cells[1], status="failed"))
    age(study / cells[1].name, 3600)
    write_history(exp(2), cells[2].name, [0.3, 0.5, 0.62], 20.0)
    write_history(exp(3), cells[3].name, [0.2, 0.4], 30.0)
    age(study / cells[3].name, 2 * 3600)
    rec = record_for(cells[4], status="failed")
    rec.update(status="interrupted", error="stopped by SIGTERM", epochs_run=4)
    save_results(exp(4) / f"{cells[4].name}_results.json", rec)
    write_history(study / cells[4].name, cells[4].name, [0.1, 0.2, 0.3, 0.4], 40.0)
    age(study / cells[4].name, 3600)
    rec = record_for(cells[5], status="failed")
    rec.update(status="interrupted", error="stopped by SIGTERM", epochs_run=5)
    save_results(exp(5) / f"{cells[5].name}_results.json", rec)
    age(study / cells[5].name, 3600)
    write_history(study / cells[5].name, cells[5].name, [0.1, 0.2, 0.3, 0.4, 0.5, 0.55], 50.0)  # written now
    return study, grid


def test_states_epochs_and_latest_iou(study):
    path, grid = study
    rows = S.status_rows(path, grid, now=NOW)
    assert [r["state"] for r in rows] == ["finished", "failed", "running", "stalled", "interrupted", "running",
                                          "missing", "missing"]
    assert rows[2]["epoch"] == 3 and rows[2]["latest_iou"] == pytest.approx(0.62)
    assert rows[5]["epoch"] == 6 and rows[5]["latest_iou"] == pytest.approx(0.55) and "rerun" in rows[5]["note"]
    assert "no file written for 2h00m" in rows[3]["note"]
    assert rows[0]["best_iou"] == pytest.approx(0.8)


def test_eta_from_the_measured_epoch_times(study):
    path, grid = study
    rows = S.status_rows(path, grid, now=NOW)
    eta, parallel = S.eta_seconds(rows)
    assert parallel == 2   # cells 2 and 5 are running
    # cells: 1 failed UNet lr1e-3 bs16 (no epochs of its own -> UNet bs16 cells: cell 3's 30 s), 10 epochs;
    # 2 running 7 x 20 s; 3 stalled 8 x 30 s; 4 interrupted 6 x 40 s; 5 running 4 x 50 s;
    # 6, 7 missing Attention_UNet lr5e-3 bs8/bs16 -> Attention_UNet cells of that batch size (4: 40 s; 5: 50 s).
    # Every unfinished cell also pays the finished cell's 30 s overhead.
    expected = (10 * 30 + 7 * 20 + 8 * 30 + 6 * 40 + 4 * 50 + 10 * 40 + 10 * 50 + 7 * 30) / 2
    assert eta == pytest.approx(expected)


def test_status_command_prints_the_table_and_eta(study):
    path, _ = study
    proc = subprocess.run([sys.executable, str(REPO / "run_study.py"), "status", "--study-dir", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr   # a cell failed
    out = proc.stdout
    line = next(ln for ln in out.splitlines() if "exp_02_" in ln)
    assert "running" in line and "3/10" in line and "0.620" in line
    assert "8 cells: 1 failed, 1 finished, 1 interrupted, 2 missing, 2 running, 1 stalled" in out
    assert "ETA: " in out and "2 cell(s) at a time" in out


def test_status_json_gives_the_same_states_and_exit_code(study):
    path, _ = study
    proc = subprocess.run([sys.executable, str(REPO / "run_study.py"), "status", "--study-dir", str(path), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["counts"] == {"failed": 1, "finished": 1, "interrupted": 1, "missing": 2, "running": 2, "stalled": 1}
    cell = next(c for c in doc["cells"] if c["name"].startswith("exp_02_"))
    assert cell["state"] == "running" and cell["epoch"] == 3 and cell["latest_val_iou"] == pytest.approx(0.62)
    assert doc["cells_at_a_time"] == 2 and doc["eta_s"] > 0 and set(doc["code"]) == {"version", "git_commit", "git_dirty"}


def test_status_exits_0_when_no_cell_failed(tmp_path):
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8])
    G.init_study(tmp_path, grid)
    assert S.show(tmp_path, log=lambda _: None) == 0


def test_an_empty_study_has_no_eta_yet(tmp_path):
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8])
    G.init_study(tmp_path, grid)
    text = S.render(S.status_rows(tmp_path, grid))
    assert "1 cells: 1 missing" in text and "ETA: unknown" in text
