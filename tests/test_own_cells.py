"""A study holds only its own cells (mitoseg/core/membership.py): a copy made by hand, a cell copied in from
another study and a cell trained with other settings are listed once and never counted or ranked, by
the analysis, `status` and the confirmation planner alike; a study left with its confirmation cells
alone is analysed from them."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mitoseg.core import grid as G
from mitoseg.core.membership import study_membership
from mitoseg.core.paths import REPORT_MD, SUMMARY_CSV_NAME, StudyPaths
from mitoseg.core.results import load_results, save_results
from mitoseg.analysis.summary import build_summary
from tests.fixtures_results import add_confirmation, make_study

REPO = Path(__file__).resolve().parents[1]
GRID = dict(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3], batch_sizes=[8], seeds=[1])


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def analyze(study):
    return run(REPO / "analyze_hyperparameter_results.py", "--study-dir", study, "--no-figures")


def with_config(study: Path, name: str, **changes):
    """Give the cell's results the resolved config its grid gives, changed by `changes`."""
    grid = G.load_study_grid(study)
    cell = next(c for c in G.study_cells(study, grid) if c.name == name)
    path = StudyPaths(study).exp(name).results_json
    record = load_results(path)
    record["config"] = {**cell.train_config(grid).to_dict(), **changes}
    save_results(path, record)


@pytest.fixture
def study(tmp_path):
    study = make_study(tmp_path / "study", **GRID)
    for cell in G.cells(G.load_study_grid(study)):
        with_config(study, cell.name)
    return study


def cell_names(study):
    return [c.name for c in G.cells(G.load_study_grid(study))]


def test_a_copy_made_by_hand_is_listed_once_and_not_counted(study):
    first = cell_names(study)[0]
    shutil.copytree(study / first, study / f"{first} (copy)")
    proc = analyze(study)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(f"{first} (copy) (a duplicate of {first})") == 1
    md = (study / REPORT_MD).read_text()
    assert "2 of 2 cells are in (2 ok)" in md
    assert "3 of 2" not in md
    csv = (study / SUMMARY_CSV_NAME).read_text()
    assert "(copy)" not in csv


def test_a_cell_renamed_by_hand_is_not_called_a_duplicate_of_a_folder_that_is_gone(study):
    first = cell_names(study)[0]
    (study / first).rename(study / f"{first} (copy)")
    proc = analyze(study)
    assert proc.returncode == 0, proc.stderr
    assert f"{first} (copy) (a duplicate of {first})" not in proc.stdout
    assert f"a renamed copy of {first}, whose own folder is missing: {first} counts as not run" in proc.stdout
    assert "1 of 2 cells are in (1 ok); 1 missing" in (study / REPORT_MD).read_text()


def test_a_cell_copied_in_from_another_study_is_foreign_everywhere(study, tmp_path):
    other = make_study(tmp_path / "other", **GRID)
    first, second = cell_names(study)
    with_config(other, second, epochs=99)
    shutil.rmtree(study / second)
    shutil.copytree(other / second, study / second)
    members = study_membership(study, G.load_study_grid(study))
    assert list(members.foreign) == [second] and "epochs" in members.foreign[second]
    df, inventory = build_summary(study)
    assert df.set_index("experiment_id").loc[second, "status"] == "missing"
    assert list(inventory.foreign) == [second]
    proc = analyze(study)
    assert proc.returncode == 0, proc.stderr
    assert "trained with other settings: epochs" in proc.stdout
    assert "1 of 2 cells are in (1 ok); 1 missing" in (study / REPORT_MD).read_text()
    status = run(REPO / "run_study.py", "status", "--study-dir", study)
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.split()[1:2] == [second])
    assert " foreign " in row and "finished" not in row


def test_a_cell_trained_on_other_data_is_foreign(study):
    names = cell_names(study)
    for name, digest in zip(names, ("aaaa", "bbbb")):
        path = StudyPaths(study).exp(name).results_json
        record = load_results(path)
        record["data"] = {"data_fingerprint": {"files": 2, "sha256": digest}}
        save_results(path, record)
    members = study_membership(study, G.load_study_grid(study))
    assert len(members.foreign) == 1 and "other data" in next(iter(members.foreign.values()))


def test_a_study_left_with_its_confirmation_cells_is_analysed_from_them(tmp_path):
    study = make_study(tmp_path / "study", **GRID)
    add_confirmation(study, 1, val_fn=lambda c: 0.72, test_fn=lambda c: 0.70)
    for name in cell_names(study):
        shutil.rmtree(study / name)
    proc = analyze(study)
    assert proc.returncode == 0, proc.stderr
    md = (study / REPORT_MD).read_text()
    assert "No cell finished successfully" not in md
    assert "soft validation Jaccard" not in proc.stdout
    assert "0 of 2 grid cells are in" in md and "confirmation stage: 2 of 2 cells are in (2 ok)" in md
    summary = json.loads((study / "analysis_summary.json").read_text())
    assert summary["metric"]["column"] != "best_val_jaccard"


def test_local_lists_a_copy_once_and_trains_nothing_for_it(study):
    first = cell_names(study)[0]
    shutil.copytree(study / first, study / f"{first} (copy)")
    proc = run(REPO / "run_study.py", "local", "--study-dir", study, "--no-analysis")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(f"{first} (copy) (a duplicate of {first})") == 1
    assert "2 cell(s) selected, 2 already finished, 0 to run" in proc.stdout


def test_a_cell_of_an_edited_grid_is_no_copy():
    from mitoseg.core.identity import copy_of
    cells = ["exp_00_UNet_lr0.001_bs8"]
    assert copy_of("exp_00_UNet_lr0.001_bs8 (copy)", None, cells) == cells[0]
    assert copy_of("exp_00_UNet_lr0.001_bs8_seed5", None, cells) is None
    assert copy_of("exp_07_other", {"experiment_id": cells[0]}, cells) == cells[0]
