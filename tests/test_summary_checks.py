"""Hand-edited summary CSVs are checked like any input (mitoseg/analysis/summary_checks.py), and the analysis never
overwrites a summary CSV edited by hand without keeping it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mitoseg.core.paths import SUMMARY_CSV_NAME
from mitoseg.analysis.summary import SummaryError, load_summary
from tests.fixtures_results import make_study

REPO = Path(__file__).resolve().parents[1]
GRID = dict(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3, 1e-2], batch_sizes=[8], seeds=[1, 2])


def analyze(*args):
    return subprocess.run([sys.executable, str(REPO / "analyze_hyperparameter_results.py"), *map(str, args),
                           "--no-figures"], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    """The summary CSV of an 8-cell study, as the analysis writes it."""
    study = make_study(tmp_path_factory.mktemp("s") / "study", **GRID)
    proc = analyze("--study-dir", study)
    assert proc.returncode == 0, proc.stderr
    return pd.read_csv(study / SUMMARY_CSV_NAME, dtype=str, keep_default_na=False)


def write(tmp_path, df, name="edited.csv", sep=","):
    path = tmp_path / name
    df.to_csv(path, index=False, sep=sep)
    return path


def refused(path, *words):
    with pytest.raises(SummaryError) as err:
        load_summary(path)
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words), text
    return text


def test_names_differing_in_case_or_spaces_are_normalised_and_said(tmp_path, summary):
    df = summary.copy()
    df.loc[0, "architecture"] = "UNet "
    df.loc[1, "architecture"] = "unet"
    df.loc[2, "status"] = "OK"
    notes = []
    out = load_summary(write(tmp_path, df), notes.append)
    assert sorted(out["architecture"].unique()) == ["Attention_UNet", "UNet"]
    assert out.loc[2, "status"] == "ok" and out.loc[2, "success"]
    assert len(notes) == 1 and "'UNet ' -> 'UNet'" in notes[0] and "'OK' -> 'ok'" in notes[0]


def test_a_name_that_is_no_spelling_of_one_is_refused_naming_the_line(tmp_path, summary):
    df = summary.copy()
    df.loc[3, "architecture"] = "Attention UNet"
    refused(write(tmp_path, df), "line 5", "'Attention UNet'", "Attention_UNet")
    df = summary.copy()
    df.loc[0, "architecture"] = "NewNet"
    df.loc[1, "architecture"] = "newnet"
    refused(write(tmp_path, df), "'NewNet'", "'newnet'", "lines 2, 3")


def test_empty_rows_are_dropped_with_a_line(tmp_path, summary):
    df = pd.concat([summary, pd.DataFrame([[""] * summary.shape[1]] * 2, columns=summary.columns)], ignore_index=True)
    proc = analyze("--summary_file", write(tmp_path, df), "--output_dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "dropped 2 empty row(s) (line 10, 11)" in proc.stdout
    assert "| unknown |" not in (tmp_path / "out" / "hyperparameter_report.md").read_text()
    assert "8 rows" in proc.stdout


@pytest.mark.parametrize("value, words", [("0,8328", ["decimal comma", "0.8328"]), ("83.28%", ["percentage"]),
                                          ("83.28", ["outside [0, 1]", "percentage?"]), ("-0.1", ["outside [0, 1]"]),
                                          ("oops", ["not a number"])])
def test_scores_that_are_not_fractions_are_refused(tmp_path, summary, value, words):
    df = summary.copy()
    df.loc[4, "best_val_iou"] = value
    path = write(tmp_path, df)
    refused(path, "line 6", "best_val_iou", *words)
    proc = analyze("--summary_file", path, "--output_dir", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_rows_pasted_twice_are_refused(tmp_path, summary):
    refused(write(tmp_path, pd.concat([summary, summary.iloc[[2]]])), "lines 4 and 10", "same row")
    df = pd.concat([summary, summary.iloc[[2]].assign(best_val_iou="0.5")])
    refused(write(tmp_path, df), "experiment_id", "lines 4, 10")
    df = df.drop(columns="experiment_id")
    refused(write(tmp_path, df), "lines 4, 10", "same run")
    # the same run spelled another way (1e-3 for 0.001, 1.0 for 1, no fold for fold 0) was counted twice
    lr = float(summary.loc[2, "learning_rate"])
    again = summary.iloc[[2]].assign(experiment_id="", learning_rate=f"{lr:e}", seed=summary.loc[2, "seed"] + ".0",
                                     fold="", best_val_iou="0.99")
    refused(write(tmp_path, pd.concat([summary, again])), "lines 4, 10", "same run")


def test_a_csv_with_its_header_alone_is_refused_in_one_line(tmp_path, summary):
    # the duplicate check read the empty table's empty row mask as a list of columns: a KeyError traceback
    refused(write(tmp_path, summary.iloc[0:0]), "no cells at all")


def test_a_semicolon_csv_is_read(tmp_path, summary):
    notes = []
    out = load_summary(write(tmp_path, summary, sep=";"), notes.append)
    assert len(out) == len(summary) and out["best_val_iou"].notna().sum() == 8
    assert "';'" in notes[0]
    df = summary.copy()
    df["best_val_iou"] = df["best_val_iou"].str.replace(".", ",", regex=False)
    refused(write(tmp_path, df, sep=";"), "decimal comma")


def test_a_hand_edited_study_summary_is_kept_before_it_is_rewritten(tmp_path):
    study = make_study(tmp_path / "study", **GRID)
    assert analyze("--study-dir", study).returncode == 0
    csv = study / SUMMARY_CSV_NAME
    again = analyze("--study-dir", study)   # its own file: rewritten without a word
    assert again.returncode == 0 and "kept it" not in again.stdout and not list(study.glob("*.bak*"))
    edited = pd.read_csv(csv)
    edited["my_note"] = "checked by hand"
    edited.to_csv(csv, index=False)
    hand = csv.read_text()
    for n, backup in enumerate([f"{SUMMARY_CSV_NAME}.bak", f"{SUMMARY_CSV_NAME}.bak.2"]):
        proc = analyze("--study-dir", study)
        assert proc.returncode == 0, proc.stderr
        assert f"kept it as {backup}" in proc.stdout
        assert (study / backup).read_text() == hand
        assert "my_note" not in csv.read_text()
        csv.write_text(hand)
