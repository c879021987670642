"""The retry budget: a cell failed RETRY_BUDGET times is not retrained by a resubmission (local runner,
train_one.py of an array element) until --retry-failed; `attempts` is in the results and in status."""
import json

import pytest

from mitoseg.core import grid as G
from mitoseg.study import runner as R
from mitoseg.study import status_view as SS
from mitoseg.core.paths import experiment_paths
from mitoseg.core.results import RETRY_BUDGET, load_results, save_results
from mitoseg.study.submit import RETRY_ENV
from tests.fixtures_results import make_study, record_for


def _study(tmp_path, attempts):
    """A 2-cell study: cell 0 ok, cell 1 failed `attempts` times."""
    study = make_study(tmp_path / "s", architectures=("UNet",), learning_rates=(1e-3,), batch_sizes=(8, 16),
                       seeds=(1,), history=False)
    cells = G.cells(G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8, 16], seeds=[1]))
    rec = record_for(cells[1], status="failed")
    rec["attempts"] = attempts
    save_results(experiment_paths(study, cells[1].name).results_json, rec)
    return study, cells, None


def test_older_results_without_attempts_read_as_one(tmp_path):
    study, cells, _ = _study(tmp_path, 1)
    path = experiment_paths(study, cells[1].name).results_json
    data = json.loads(path.read_text())
    del data["attempts"]
    path.write_text(json.dumps(data))
    assert load_results(path)["attempts"] == 1


def test_runner_skips_a_cell_that_used_its_budget(tmp_path, monkeypatch):
    monkeypatch.delenv(RETRY_ENV, raising=False)
    study, cells, _ = _study(tmp_path, RETRY_BUDGET)
    rows, todo = R._skip_finished(study, cells, force=False)
    assert todo == [] and set(rows) == {0, 1}
    lines = []
    assert set(R.run_local(study, G.load_study_grid(study), cells, log=lines.append)) == {0, 1}   # nothing started
    assert "1 already finished, 1 failed 2 times and not retried (--retry-failed), 0 to run" in lines[0]
    assert rows[1]["state"] == "failed" and "--retry-failed" in rows[1]["note"]
    monkeypatch.setenv(RETRY_ENV, "1")   # what `run_study.py local --retry-failed` sets
    rows, todo = R._skip_finished(study, cells, force=False)
    assert [c.index for c in todo] == [1]
    monkeypatch.delenv(RETRY_ENV)
    assert [c.index for c in R._skip_finished(study, cells, force=True)[1]] == [0, 1]


def test_runner_retries_a_cell_below_its_budget(tmp_path, monkeypatch):
    monkeypatch.delenv(RETRY_ENV, raising=False)
    study, cells, _ = _study(tmp_path, RETRY_BUDGET - 1)
    assert [c.index for c in R._skip_finished(study, cells, force=False)[1]] == [1]


@pytest.mark.oldest   # the cell module (training code) in the oldest stack
def test_train_one_gate(tmp_path):
    """The check train_one.py (every array element) runs before loading any data."""
    from mitoseg.cell.run import _finished_cell
    from mitoseg.core.config import TrainConfig
    from mitoseg.core.paths import ExperimentPaths
    from mitoseg.core.status import EXIT_FAILED
    study, cells, _ = _study(tmp_path, RETRY_BUDGET)
    paths = ExperimentPaths(experiment_paths(study, cells[1].name).exp_dir)
    config = TrainConfig()
    record, code = _finished_cell(paths, config, force=False)
    assert code == EXIT_FAILED and record["attempts"] == RETRY_BUDGET
    assert _finished_cell(paths, config, force=False, retry_failed=True) is None
    assert _finished_cell(paths, config, force=True) is None


def test_status_shows_attempts(tmp_path):
    study, cells, _ = _study(tmp_path, RETRY_BUDGET)
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8, 16], seeds=[1])
    rows = SS.status_rows(study, grid)
    assert rows[1]["attempts"] == RETRY_BUDGET
    assert f"attempt {RETRY_BUDGET}/{RETRY_BUDGET} (not retried without --retry-failed)" in rows[1]["note"]
    assert f"attempt {RETRY_BUDGET}/{RETRY_BUDGET}" in SS.render(rows)
    assert "every cell finished, except 1 failed 2 times" in SS.render(rows)
    cells_json = json.loads(SS.status_json(study, rows))["cells"]
    assert [c["attempts"] for c in cells_json] == [1, RETRY_BUDGET]
    assert SS.eta_seconds(rows)[0] == 0.0   # the kept cell is not part of what remains


@pytest.mark.oldest
def test_each_failed_run_adds_an_attempt(tmp_path, monkeypatch):
    """_train records attempts = previous + 1 (a --force run starts at 1); training itself is replaced by an
    exception, which is how an OOM reaches the record."""
    import time
    from mitoseg.cell import run as C
    from mitoseg.cell.inputs import CellData
    from mitoseg.core.config import TrainConfig
    from mitoseg.core.paths import ExperimentPaths

    def boom(*a, **k):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(C, "_fit_and_record", boom)
    monkeypatch.setattr(C, "_log_start", lambda *a: dict(foreground_fraction=0.1, all_foreground_jaccard=0.1,
                                                          all_background_jaccard=0.0))
    paths = ExperimentPaths(tmp_path / "exp_00_UNet_lr0.001_bs8")
    paths.exp_dir.mkdir()
    config = TrainConfig()
    seen = []
    for force in (False, False, True):
        data = CellData(None, None, None, None, None, None, split={})
        record, _ = C._train(C.CellRun(config, paths, data, force, time.time()))
        seen.append((record["status"], load_results(paths.results_json)["attempts"]))
    assert seen == [("failed", 1), ("failed", 2), ("failed", 1)]


def test_submit_passes_retry_failed_to_the_elements(tmp_path):
    """The array's exported variables carry the choice (an empty value: the login shell's does not leak)."""
    from mitoseg.study.submit import submit_study
    study, _, _ = _study(tmp_path, RETRY_BUDGET)
    grid = G.load_study_grid(study)
    import re
    for retry, value in ((False, ""), (True, "1")):
        lines = []
        submit_study(study, grid, "slurm", [], log=lines.append, dry_run=True, retry_failed=retry)
        array = next(line for line in lines if line.startswith("array job"))
        assert re.search(rf"[ ,]{RETRY_ENV}={value}[ ,]", array), array


def _set_grid_budget(study, budget):
    from mitoseg.core.paths import StudyPaths
    path = StudyPaths(study).grid_config
    path.write_text(json.dumps({**json.loads(path.read_text()), "retry_budget": budget}))


def test_the_budget_is_a_setting_with_stated_precedence(tmp_path, monkeypatch):
    """$MITOSEG_RETRY_BUDGET > the grid's retry_budget > the site profile's > 2."""
    from mitoseg.core.results import RETRY_BUDGET_ENV
    from mitoseg.study.site import resolved_retry_budget as retry_budget
    monkeypatch.delenv(RETRY_BUDGET_ENV, raising=False)
    monkeypatch.delenv("MITOSEG_SITE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no_config"))
    monkeypatch.chdir(tmp_path)
    study, cells, _ = _study(tmp_path, 2)
    assert retry_budget(study) == (2, "default")
    (tmp_path / "site.json").write_text(json.dumps({"retry_budget": 4}))
    monkeypatch.setenv("MITOSEG_SITE", str(tmp_path / "site.json"))
    assert retry_budget(study) == (4, f"site profile {tmp_path / 'site.json'}")
    _set_grid_budget(study, 3)
    assert retry_budget(study) == (3, "the grid's retry_budget")
    monkeypatch.setenv(RETRY_BUDGET_ENV, "5")
    assert retry_budget(study) == (5, f"${RETRY_BUDGET_ENV}")
    monkeypatch.setenv(RETRY_BUDGET_ENV, "0")
    with pytest.raises(ValueError, match=r"\$MITOSEG_RETRY_BUDGET must be an integer >= 1, got '0'"):
        retry_budget(study)


@pytest.mark.parametrize("bad", [0, -1, "2", 2.0, True])
def test_a_bad_budget_is_refused_in_grid_and_site(tmp_path, bad):
    from mitoseg.study.site import SiteError, read_profile
    with pytest.raises(G.GridError) as err:
        G.GridConfig.from_dict({"architectures": ["UNet"], "retry_budget": bad})
    assert any("retry_budget must be an integer >= 1" in p for p in err.value.problems)
    (tmp_path / "site.json").write_text(json.dumps({"retry_budget": bad}))
    with pytest.raises(SiteError, match="key 'retry_budget' must be an integer >= 1"):
        read_profile(tmp_path / "site.json")
    with pytest.raises(G.GridError, match="unknown grid key 'retry_budgets'"):
        G.GridConfig.from_dict({"retry_budgets": 3})


def test_a_grid_budget_reaches_runner_status_and_submit(tmp_path, monkeypatch):
    import re
    from mitoseg.core.results import RETRY_BUDGET_ENV
    from mitoseg.study.submit import submit_study
    monkeypatch.delenv(RETRY_ENV, raising=False)
    monkeypatch.delenv(RETRY_BUDGET_ENV, raising=False)
    monkeypatch.delenv("MITOSEG_SITE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no_config"))
    study, cells, _ = _study(tmp_path, 2)
    _set_grid_budget(study, 3)
    assert [c.index for c in R._skip_finished(study, cells, force=False)[1]] == [1]   # 2 of 3 failures: retried
    grid = G.load_study_grid(study)
    rows = SS.status_rows(study, grid)
    assert "attempt 2/3: " in rows[1]["note"] and not rows[1]["kept"]
    lines = []
    submit_study(study, grid, "slurm", [], log=lines.append, dry_run=True)
    array = next(line for line in lines if line.startswith("array job"))
    assert re.search(rf"[ ,]{RETRY_BUDGET_ENV}=3[ ,]", array), array
    assert "  retry budget: 3 (from the grid's retry_budget): a cell failed 3 times is not retrained without --retry-failed" in lines
    assert "retry_budget" not in G.GridConfig(architectures=["UNet"]).to_dict()   # unset: grid files unchanged
