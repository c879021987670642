"""The analysis scores the ensemble of each architecture's confirmation runs (mitoseg/predict/ensemble.py).

Real processes: a tiny study with a confirmation stage of 2 seeds (run_study.py local), then the analysis
(analyze_hyperparameter_results.py); the ensemble's test IoU must equal the IoU of the mean of the members'
probabilities computed here, a re-run must reuse it, and a model moved away must give the line that says
why there is no number. The study is a copy of the session's `tiny_confirmed_study` (tests/conftest.py),
which tests/test_bundle_predict.py exports too."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mitoseg.core import grid as G
from mitoseg.core.paths import REPORT_MD, SUMMARY_CSV_NAME, SUMMARY_JSON, experiment_paths
from mitoseg.core.results import load_results, save_results
from tests.fixtures_results import add_confirmation, make_study
from tests.conftest import copy_tiny_study
from tests.fixtures_train import run_script

REPO = Path(__file__).resolve().parents[1]
run = run_script


def analyse(root):
    r = run("analyze_hyperparameter_results.py", "--study-dir", "study", "--no-figures", cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((root / "study" / SUMMARY_JSON).read_text())
    return r.stdout, summary["ensemble"], (root / "study" / REPORT_MD).read_text()


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_confirmed_study):
    root = tmp_path_factory.mktemp("ensemble_study")
    copy_tiny_study(tiny_confirmed_study, root)
    # `local` ended with the analysis: the ensemble was scored there, later analyses reuse it
    out = tiny_confirmed_study[1].stdout
    assert "scoring the ensemble of UNet's 2 confirmation runs" in out, out
    return root


def iou(masks, probs, threshold):
    pred, truth = probs >= threshold, masks > 0
    return (pred & truth).sum() / (pred | truth).sum()


@pytest.mark.oldest
def test_the_ensemble_is_the_iou_of_the_members_mean_probability(study):
    from mitoseg.cell.inference import predict_slices
    from mitoseg.cell.inputs import load_cell_data
    from mitoseg.cell.models import load_model
    from mitoseg.core.config import TrainConfig
    log, ens, report = analyse(study)
    assert ens["reason"] is None and len(ens["architectures"]) == 1
    arm = ens["architectures"][0]
    assert arm["reason"] is None and [m["cell"] for m in arm["members"]] == [
        "exp_01_UNet_lr0.001_bs8_seed2", "exp_02_UNet_lr0.001_bs8_seed3"]
    probs, own = [], []
    for member in arm["members"]:
        paths = experiment_paths(study / "study", member["cell"])
        record = load_results(paths.results_json)
        config = record["config"]
        _, test = load_cell_data(TrainConfig.from_dict(config))
        assert list(test.slice_names) == record["data"]["test_slice_names"]
        model = load_model(paths.exp_dir / record["files"]["model"])
        p = predict_slices(model, test.images, config["patch_size"], batch_size=config["batch_size"])
        assert iou(test.masks, p, config["threshold"]) == pytest.approx(record["test"]["iou"], abs=1e-4)
        probs.append(p)
        own.append(record["test"]["iou"])
    assert not np.allclose(probs[0], probs[1], atol=1e-4)   # two different models: the mean is not trivial
    expected = iou(test.masks, np.mean(probs, axis=0), 0.5)
    assert arm["ensemble_iou"] == pytest.approx(expected, abs=1e-4)
    assert arm["single_iou_mean"] == pytest.approx(np.mean(own))
    assert arm["covers"].startswith("one ensemble of all members") and len(arm["groups"]) == 1
    assert f"UNet: ensemble of 2 runs: test IoU {arm['ensemble_iou']:.3f} vs single runs {np.mean(own):.3f}" in report
    assert "ensemble of UNet: members unchanged, the earlier result is kept" in log


@pytest.mark.oldest
def test_a_rerun_reuses_the_score_and_a_missing_model_is_said(study):
    _, first, _ = analyse(study)
    log, again, _ = analyse(study)
    assert "ensemble of UNet: members unchanged" in log and "scoring" not in log and again == first
    member = first["architectures"][0]["members"][1]
    model, away = study / "study" / member["model"], study / "moved_away.keras"
    shutil.move(model, away)
    try:
        log, ens, report = analyse(study)
    finally:
        shutil.move(away, model)
    reason = f"the model of {member['cell']} is missing (study/{member['model']})"
    assert ens["architectures"][0]["reason"] == reason and "scoring" not in log
    assert f"not part of the comparison above): not scored: UNet: {reason}." in report


def test_failed_and_diverged_runs_are_left_out_and_named(tmp_path, monkeypatch):
    """Without TensorFlow the reason is said; the runs that are not members are named either way."""
    from mitoseg.predict import ensemble as E
    from mitoseg.report.write import run_analysis
    study = make_study(tmp_path / "s", architectures=("UNet",), learning_rates=(1e-3,), batch_sizes=(8,),
                       seeds=(1,), test=True)
    add_confirmation(study, 4, lambda c: 0.8, lambda c: 0.7 + 0.01 * c.seed)
    cells = G.confirm_cells(study)
    for cell, status in zip(cells, ["ok", "ok", "diverged", "failed"]):
        path = experiment_paths(study, cell.name).results_json
        rec = load_results(path)
        rec["status"] = status
        rec["files"]["model"] = f"{cell.name}_model.keras"
        save_results(path, rec)
        (path.parent / rec["files"]["model"]).write_bytes(b"not run: TensorFlow is missing")
    monkeypatch.setattr(E, "tensorflow_missing", lambda: "TensorFlow/Keras is not importable here (test)")
    res = run_analysis(study_dir=study, log=lambda _: None, figures=False)["result"]
    arm = res.ensemble["architectures"][0]
    assert [m["cell"] for m in arm["members"]] == [cells[0].name, cells[1].name]
    assert [(x["cell"], x["status"]) for x in arm["left_out"]] == [(cells[2].name, "diverged"), (cells[3].name, "failed")]
    assert arm["reason"] == "TensorFlow/Keras is not importable here (test)"
    text = (study / REPORT_MD).read_text()
    assert (f"not scored: UNet: TensorFlow/Keras is not importable here (test); excluded: {cells[2].name} (diverged: "
            "counted as test IoU 0 in the comparison, no usable model)") in text


def test_a_summary_csv_analysis_says_why_there_is_no_ensemble(tmp_path):
    from mitoseg.report.write import run_analysis
    study = make_study(tmp_path / "s", architectures=("UNet",), learning_rates=(1e-3,), batch_sizes=(8,),
                       seeds=(1,), test=True)
    add_confirmation(study, 2, lambda c: 0.8, lambda c: 0.7)
    run_analysis(study_dir=study, log=lambda _: None, figures=False)
    out = run_analysis(summary_file=study / SUMMARY_CSV_NAME, output_dir=tmp_path / "out",
                       log=lambda _: None, figures=False)
    assert "not scored: the analysis read a summary CSV, not a study folder" in out["outputs"]["report_md"].read_text()


def test_members_on_different_test_slices_are_ensembled_per_fold(monkeypatch):
    """An ensemble averages models on the same images: with held-out slices per fold, one per fold."""
    from mitoseg.predict import ensemble as E

    def member(cell, fold, iou):
        return dict(cell=cell, test_iou=iou, test_set=["train.tif", [f"z={fold}"]], config={"threshold": 0.5})
    members = [member("a", 0, 0.5), member("b", 0, 0.7), member("c", 1, 0.6), member("d", 1, 0.8)]
    seen = []

    def fake_group(group, loaded):
        seen.append([m["cell"] for m in group])
        return dict(ensemble_iou={"a": 0.65, "c": 0.75}[group[0]["cell"]], members=[m["cell"] for m in group])
    monkeypatch.setattr(E, "score_group", fake_group)
    out = E.scored(members)
    assert seen == [["a", "b"], ["c", "d"]] and out["covers"] == E.COVERS_FOLDS
    assert out["ensemble_iou"] == pytest.approx(0.70) and out["single_iou_mean"] == pytest.approx(0.65)
    assert 0 <= out["single_ci_low"] < 0.65 < out["single_ci_high"] <= 1
