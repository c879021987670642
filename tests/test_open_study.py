"""One study opener (mitoseg.study.open.open_study) and one exp_-folder reader (mitoseg.core.cell_state.read_cell):
every entry point refuses a folder that is no study with the same one line, train_one.py never creates a
study from a grid it was not given, and every state of a cell folder has one word. No training here."""
import subprocess
import sys
from pathlib import Path

import pytest

from mitoseg.core import grid as G
from mitoseg.study import runner as R
from mitoseg.core.cell_state import read_cell
from mitoseg.core.results import save_results
from mitoseg.core.status import MISSING, OK, STALLED, STARTED, UNREADABLE
from mitoseg.study.open import open_study
from tests.fixtures_results import record_for

REPO = Path(__file__).resolve().parents[1]
GRID = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8, 16], fixed={"epochs": 1})


def run(script, *args, env=None):
    import os
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def no_study_line(folder: Path) -> str:
    return f"error: {folder / 'grid_config.json'}: no grid config; is {folder} a study folder?"


@pytest.mark.parametrize("script,args", [
    ("run_study.py", ["status", "--study-dir"]),
    ("run_study.py", ["confirm", "--seeds", "2", "--study-dir"]),
    ("train_one.py", ["--task-index", "0", "--study-dir"]),
])
def test_a_folder_without_a_grid_is_the_same_one_line_everywhere(tmp_path, script, args):
    proc = run(script, *args, str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]
    assert lines == [no_study_line(tmp_path)]
    assert not (tmp_path / "grid_config.json").exists()   # nothing created, least of all the 36-cell default grid


def test_train_one_creates_a_study_only_from_the_grid_it_was_given(tmp_path):
    grid_file = tmp_path / "grid.json"
    GRID.save(grid_file)
    study = tmp_path / "study"
    proc = run("train_one.py", "--study-dir", str(study), "--task-index", "5", "--grid-config", str(grid_file))
    assert proc.returncode == 2 and "outside the grid (0..1, 2 cells" in proc.stderr   # the given grid, not 36 cells
    assert G.load_study_grid(study).to_dict() == GRID.to_dict()


def test_open_study_checks_what_each_entry_point_names(tmp_path):
    study = tmp_path / "study"
    with pytest.raises(ValueError, match="no grid config"):
        open_study(study, GRID, create=False)
    assert open_study(study, GRID, create=True).to_dict() == GRID.to_dict()
    other = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8], fixed={"epochs": 1})
    assert open_study(study, other, create=True).size == 2   # an existing grid always wins
    with pytest.raises(ValueError, match="differs from the existing study"):
        open_study(study, other, "--grid-config other.json", create=True)
    cell = G.cells(GRID)[0]
    (study / cell.name).mkdir()
    rec = record_for(cell, status="ok")
    rec["config"] = {**cell.train_config(GRID).to_dict(), "epochs": 7}
    save_results(study / cell.name / f"{cell.name}_results.json", rec)
    with pytest.raises(ValueError, match="trained with other settings"):
        open_study(study, create=False)
    assert open_study(study, create=False, check_cells=False).size == 2   # status: shows it, never refuses
    assert open_study(study, create=False, retrain=[cell.index]).size == 2   # --force retrains it


def test_read_cell_has_one_word_per_state(tmp_path):
    cell = G.cells(GRID)[0]
    folder = tmp_path / cell.name
    assert read_cell(folder).state == MISSING
    folder.mkdir()
    assert read_cell(folder).state == STARTED and read_cell(folder).record is None
    (folder / f"{cell.name}_results.json").write_text("{not json")
    read = read_cell(folder)
    assert read.state == UNREADABLE and "not valid JSON" in read.error and not read.finished
    save_results(folder / f"{cell.name}_results.json", record_for(cell, status="ok"))
    read = read_cell(folder)
    assert read.state == OK and read.finished and read.record["status"] == OK


def test_a_renamed_folder_is_read_by_the_same_rule(tmp_path):
    cell = G.cells(GRID)[0]
    folder = tmp_path / "exp_renamed_by_hand"
    folder.mkdir()
    save_results(folder / f"{cell.name}_results.json", record_for(cell, status="ok"))
    assert read_cell(folder).state == OK and read_cell(folder).path.name == f"{cell.name}_results.json"


def test_local_says_stalled_for_a_cell_whose_process_ended_without_a_record(tmp_path):
    G.init_study(tmp_path, GRID)
    cell = G.cells(GRID)[0]
    (tmp_path / "local_logs").mkdir()
    (tmp_path / cell.name).mkdir()
    assert R._ended_row(tmp_path, cell, 0, 1.0)["state"] == STALLED
