"""The confirmation stage without training: the plan (selection, fresh seeds, indices after the grid),
resume/skip through the same runner and element code as the grid, scheduler submission, the stage
column, and the schema-2 per-slice test scores (schema 1 still loads)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mitoseg.study import confirm as C
from mitoseg.core import grid as G
from mitoseg.core.paths import StudyPaths
from mitoseg.cell import inference, metrics
from mitoseg.study import runner as R
from mitoseg.study import status_view as study_status
from mitoseg.study.submit import NO_ANALYSIS_ENV
from mitoseg.core.results import ResultsError, empty_record, load_results, save_results
from mitoseg.analysis.summary import build_summary
from tests.fixtures_results import add_confirmation, make_study, record_for
from tests.test_runner import _fake_trainer

REPO = Path(__file__).resolve().parent.parent
GRID = dict(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3, 5e-3], batch_sizes=[8, 16], seeds=[1, 2])


def quiet(_):
    pass


def _val(cell):
    """Validation winners: UNet lr 5e-3 bs 16, Attention_UNet lr 1e-3 bs 8 (seed noise 0.001)."""
    best = {"UNet": (5e-3, 16), "Attention_UNet": (1e-3, 8)}[cell.architecture]
    second = (cell.learning_rate, cell.batch_size) == (5e-3, 8)
    return (0.85 if (cell.learning_rate, cell.batch_size) == best else 0.80 if second else 0.70) + 0.001 * cell.seed


def _study(tmp_path, **kw):
    return make_study(tmp_path / "s", history=False, test=True, iou_fn=_val, test_fn=lambda c: 0.9 - _val(c) + 0.5,
                      **dict(GRID, **kw))


def test_plan_selects_on_validation_with_fresh_seeds_after_the_grid(tmp_path):
    study = _study(tmp_path)
    # a hand-run cell with seed 7 lives in the study too: 7 counts as used
    hand = G.Cell(0, "UNet", 1e-3, 8, 7)
    (study / "exp_UNet_lr0.001_bs8_seed7").mkdir()
    save_results(study / "exp_UNet_lr0.001_bs8_seed7" / "exp_UNet_lr0.001_bs8_seed7_results.json",
                 dict(record_for(hand, iou=0.5), experiment_id="exp_UNet_lr0.001_bs8_seed7", task_index=None))
    plan = C.plan_confirmation(study, 3, log=quiet)
    assert [(c["architecture"], c["learning_rate"], c["batch_size"]) for c in plan["configs"]] == [
        ("UNet", 5e-3, 16), ("Attention_UNet", 1e-3, 8)]
    assert plan["seeds"] == [8, 9, 10] and plan["selected_on"] == "validation"
    cells = G.confirm_cells(study)
    grid = G.load_study_grid(study)
    assert [c.index for c in cells] == list(range(grid.size, grid.size + 6))
    assert cells[0].name == f"exp_{grid.size:02d}_UNet_lr0.005_bs16_seed8"
    assert all(c.stage == "confirm" for c in cells)
    assert G.study_cell_at(study, grid, grid.size + 5) == cells[-1]
    assert G.study_cell_at(study, grid, 3) == G.cells(grid)[3]
    with pytest.raises(ValueError, match=r"outside the grid \(0\.\.15, 16 cells, confirmation cells 16\.\.21\)"):
        G.study_cell_at(study, grid, 22)
    # the same command again: the same plan; more seeds: fresh ones appended; other --top / fewer: refused
    assert C.plan_confirmation(study, 3, log=quiet) == plan
    more = C.plan_confirmation(study, 4, log=quiet)
    assert more["seeds"] == [8, 9, 10, 11] and len(more["cells"]) == 8
    assert [c["index"] for c in more["cells"][:6]] == [c.index for c in cells]     # old indices keep their cells
    with pytest.raises(ValueError, match="--top 1"):
        C.plan_confirmation(study, 4, top=2, log=quiet)
    with pytest.raises(ValueError, match="already plans 4 seeds"):
        C.plan_confirmation(study, 2, log=quiet)


def test_top_k_and_incomplete_grid(tmp_path):
    names = [c.name for c in G.cells(G.GridConfig(**GRID))]
    study = make_study(tmp_path / "s", history=False, iou_fn=_val, special={names[0]: "missing", names[1]: "failed"},
                       **GRID)
    with pytest.raises(ValueError, match="2 of 16 grid cells are not finished"):
        C.plan_confirmation(study, 2, log=quiet)
    plan = C.plan_confirmation(study, 2, top=2, allow_incomplete=True, log=quiet)
    assert [(c["architecture"], c["rank"]) for c in plan["configs"]] == [
        ("UNet", 1), ("UNet", 2), ("Attention_UNet", 1), ("Attention_UNet", 2)]
    assert plan["configs"][1]["learning_rate"] == 5e-3 and plan["configs"][1]["batch_size"] == 8
    assert len(plan["cells"]) == 8 and plan["seeds"] == [3, 4]


def test_local_runner_resumes_and_skips_confirmation_cells(tmp_path, monkeypatch):
    study = _study(tmp_path)
    plan = add_confirmation(study, 2, val_fn=lambda c: 0.8, test_fn=lambda c: 0.8,
                            special={"exp_17_UNet_lr0.005_bs16_seed4": "failed", "exp_18_Attention_UNet_lr0.001_bs8_seed3":
                                     "missing"})
    assert plan["seeds"] == [3, 4]
    grid = G.load_study_grid(study)
    _fake_trainer(tmp_path, -1, monkeypatch)
    rows = R.run_local(study, grid, G.confirm_cells(study), jobs=2, log=quiet)
    assert sorted(int(x) for x in (study / "calls.txt").read_text().split()) == [17, 18]
    assert rows[16]["note"] == "finished earlier, skipped" and rows[19]["note"] == "finished earlier, skipped"
    assert rows[17]["state"] == "ok" and rows[18]["state"] == "ok"     # the fake trainer wrote their results
    (study / "calls.txt").unlink()
    R.run_local(study, grid, G.confirm_cells(study), jobs=1, log=quiet)   # everything finished: nothing runs
    assert not (study / "calls.txt").exists()
    status = study_status.status_rows(study, grid)
    assert len(status) == 20 and status[18]["cell"].stage == "confirm"


def test_element_runs_a_confirmation_index(tmp_path, monkeypatch):
    study = _study(tmp_path)
    C.plan_confirmation(study, 2, log=quiet)
    fake = _fake_trainer(tmp_path, -1, monkeypatch)
    env = {"STUDY_DIR": str(study), "PATH": os.environ["PATH"], NO_ANALYSIS_ENV: "1", **fake}
    logs = []
    assert R.run_element(19, tmp_path, environ=env, log=logs.append) == 0
    assert (study / "calls.txt").read_text().split() == ["19"]
    assert R.run_element(20, tmp_path, environ=env, log=logs.append) == 2
    assert "outside the grid" in logs[-1] and "confirmation cells 16..19" in logs[-1]


def _run_study(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(REPO / "run_study.py"), *args], capture_output=True, text=True,
                          cwd=str(REPO), env=env, timeout=300)


def test_confirm_submission_sets_the_confirmation_range(tmp_path):
    study = _study(tmp_path)
    for sched, flag in (("slurm", "--array=16-21"), ("pbs", "-J 16-21"), ("torque", "-t 16-21")):
        r = _run_study("confirm", "--study-dir", str(study), "--seeds", "3", "--scheduler", sched, "--dry-run",
                       "--", "--qos=x")
        assert r.returncode == 0, r.stdout + r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("array job ("))
        assert flag in line and "--qos=x" in line and f"STUDY_DIR={study}" in line
        assert "confirmation stage: 2 configuration(s) x 3 fresh seeds (3, 4, 5) x 1 fold of the data split = 6 cells" \
            in r.stdout
    # a dry run prints the plan and the submission and writes neither ("dry run: nothing created or submitted")
    assert "dry run: nothing created" in r.stdout and not StudyPaths(study).confirm_config.exists()
    r = _run_study("status", "--study-dir", str(study))
    assert "16 cells" in r.stdout and "missing" not in r.stdout, r.stdout


def test_a_local_dry_run_is_refused_before_anything_is_trained_or_planned(tmp_path):
    # --dry-run (pbs|slurm only) used to be ignored by the local scheduler: the dry run trained every cell
    study = _study(tmp_path)
    r = _run_study("confirm", "--study-dir", str(study), "--seeds", "1", "--dry-run")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: --dry-run")
    assert not StudyPaths(study).confirm_config.exists() and len(list(study.glob("exp_*"))) == 16


def test_a_plan_edited_to_a_grid_seed_is_refused(tmp_path):
    # it was reused as "1 fresh seeds (1)": the confirmation reran the grid's own selection runs
    study = _study(tmp_path)
    C.plan_confirmation(study, 1, log=quiet)
    path = StudyPaths(study).confirm_config
    plan = json.loads(path.read_text())
    plan["seeds"] = [1]
    for cell in plan["cells"]:
        cell["name"], cell["seed"] = cell["name"].replace(f"seed{cell['seed']}", "seed1"), 1
    path.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="its seeds 1 are seeds of the grid"):
        C.plan_confirmation(study, 1, log=quiet)


def test_summary_marks_the_stage(tmp_path):
    study = _study(tmp_path)
    add_confirmation(study, 2, val_fn=lambda c: 0.8, test_fn=lambda c: 0.8)
    df, inv = build_summary(study)
    assert inv.expected == 16 and inv.confirm_expected == 4
    assert list(df["stage"]) == ["grid"] * 16 + ["confirm"] * 4
    slices = json.loads(df.iloc[-1]["test_slice_iou"])
    assert len(slices) == 4 and np.mean(list(slices.values())) == pytest.approx(0.8)


# --- schema 2 per-slice scores, schema 1 still read ---------------------------------------------------
def test_schema_1_results_still_load_and_analyse(tmp_path):
    study = make_study(tmp_path / "old", history=False, test=True, **dict(GRID, seeds=[1]))
    for path in study.glob("exp_*/*_results.json"):
        rec = json.loads(path.read_text())
        rec["schema_version"] = 1
        rec["test"].pop("slices")
        path.write_text(json.dumps(rec))
    assert load_results(next(study.glob("exp_*/*_results.json")))["schema_version"] == 1
    df, _ = build_summary(study)
    assert (df["status"] == "ok").all() and df["test_slice_iou"].isna().all()
    plan = C.plan_confirmation(study, 2, log=quiet)
    assert len(plan["cells"]) == 4


@pytest.mark.parametrize("slices, message", [
    ("x", "test.slices has type str"),
    ([{"name": "a", "iou": "0.5", "dice": 0.5}], "test.slices[0] must be an object"),
    ([{"iou": 0.5, "dice": 0.5}], "test.slices[0]"),
])
def test_bad_slices_are_refused(tmp_path, slices, message):
    rec = record_for(G.Cell(0, "UNet", 1e-3, 8, 1), iou=0.8)
    rec["test"] = {"iou": 0.8, "slices": slices}
    with pytest.raises(ResultsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        save_results(tmp_path / "r.json", rec)
    (tmp_path / "r.json").write_text(json.dumps(rec))
    with pytest.raises(ResultsError):
        load_results(tmp_path / "r.json")


class Threshold:
    def predict(self, x, batch_size=8, verbose=0):
        return np.asarray(x[..., :1], np.float32)


def test_evaluate_volume_records_every_slice_with_its_name():
    rng = np.random.default_rng(0)
    images = rng.random((3, 40, 40), dtype=np.float32)
    masks = (rng.random((3, 40, 40)) > 0.6).astype(np.uint8)
    masks[2] = 0
    images[2] = 0.1          # empty truth, empty prediction: IoU 1 by the metrics' rule
    names = ["a.tif[z=0]", "a.tif[z=1]", "a.tif[z=2]"]
    res = inference.evaluate_volume(Threshold(), images, masks, inference.Tiling(16), slice_names=names)
    assert [s["name"] for s in res["slices"]] == names
    for s, m, im in zip(res["slices"], masks, images):
        assert s["iou"] == pytest.approx(metrics.foreground_iou(m, im))
        assert s["dice"] == pytest.approx(metrics.foreground_dice(m, im))
    assert res["slices"][2]["iou"] == 1.0
    assert [s["name"] for s in inference.evaluate_volume(Threshold(), images, masks, inference.Tiling(16))["slices"]] == \
        ["z=0", "z=1", "z=2"]
    rec = empty_record(experiment_id="x", status="ok", architecture="UNet", learning_rate=1e-3, batch_size=8, seed=1,
                       started_at="t", finished_at="t", test=res)
    save_results(Path("/tmp") / f"slices_{os.getpid()}.json", rec)   # schema 2 accepts what evaluate_volume wrote
    os.unlink(Path("/tmp") / f"slices_{os.getpid()}.json")
