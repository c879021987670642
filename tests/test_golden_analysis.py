"""The analysis of a fixed study gives the same summary CSV and the same analysis_summary.json as
when the expected files were written (tests/golden/make_golden.py): a redesign may move code, not
change a number."""
import json
import shutil
from pathlib import Path

from mitoseg.analysis import run_analysis

GOLDEN = Path(__file__).resolve().parent / "golden"
PLACEHOLDER = "<STUDY>"


def numbers(summary_json: str) -> dict:
    """analysis_summary.json without its time stamp."""
    values = json.loads(summary_json)
    values.pop("generated")
    return values


def run_golden_analysis(tmp: Path, edit=None) -> tuple[str, str]:
    """Analyse a copy of the fixed study (after edit(copy), if given); (summary CSV text,
    analysis_summary.json text) with the copy's path replaced by a placeholder."""
    study = tmp / "study"
    shutil.copytree(GOLDEN / "study", study)
    if edit:
        edit(study)
    out = run_analysis(study_dir=study, log=lambda _: None)["outputs"]
    texts = (Path(out["summary_csv"]).read_text(), Path(out["summary_json"]).read_text())
    return tuple(t.replace(str(study), PLACEHOLDER) for t in texts)


def test_fixed_study_gives_the_recorded_summary_and_numbers(tmp_path):
    csv, summary = run_golden_analysis(tmp_path)
    assert csv == (GOLDEN / "expected_summary.csv").read_text()
    assert numbers(summary) == numbers((GOLDEN / "expected_analysis_summary.json").read_text())


def test_one_changed_score_changes_both_outputs(tmp_path):
    def edit(study):
        path = sorted(study.glob("exp_*/*_results.json"))[0]
        record = json.loads(path.read_text())
        record["best_val_iou"] = round(record["best_val_iou"] + 0.1, 6)
        path.write_text(json.dumps(record))
    csv, summary = run_golden_analysis(tmp_path, edit)
    assert csv != (GOLDEN / "expected_summary.csv").read_text()
    assert numbers(summary) != numbers((GOLDEN / "expected_analysis_summary.json").read_text())
