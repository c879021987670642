"""The analysis of a fixed study gives the same summary CSV, the same analysis_summary.json and the
same Markdown and text reports as when the expected files were written (tests/golden/make_golden.py):
a redesign may move code, not change a number or a word."""
import json
import re
import shutil
from pathlib import Path

from mitoseg.report.write import run_analysis

GOLDEN = Path(__file__).resolve().parent / "golden"
PLACEHOLDER = "<STUDY>"
STUDY_PATH_LENGTH = 100   # a fixed length (under 120): the reports cut error messages, which start with it, to 120 characters
TIME_PLACEHOLDER = "Generated <TIME> by <CODE>."
REPORTS = {"report_md": "expected_report.md", "report_txt": "expected_report.txt"}


def numbers(summary_json: str) -> dict:
    """analysis_summary.json without its time stamp and the code's version and commit."""
    values = json.loads(summary_json)
    values.pop("generated")
    values.pop("code")
    return values


def run_golden_analysis(tmp: Path, edit=None, keys=("summary_csv", "summary_json")) -> tuple:
    """Analyse a copy of the fixed study (after edit(copy), if given); the texts of the outputs
    `keys` (default: summary CSV, analysis_summary.json) with the copy's path replaced by a
    placeholder and the reports' time stamp and code version (mitoseg/core/version.py) by others."""
    study = tmp / "study".ljust(STUDY_PATH_LENGTH - len(str(tmp)) - 1, "_")
    assert len(str(study)) == STUDY_PATH_LENGTH, f"temporary folder {tmp} too long for the fixed study path"
    shutil.copytree(GOLDEN / "study", study)
    if edit:
        edit(study)
    out = run_analysis(study_dir=study, log=lambda _: None)["outputs"]
    texts = [Path(out[key]).read_text().replace(str(study), PLACEHOLDER) for key in keys]
    stamp = r"Generated \d{4}-\d\d-\d\d \d\d:\d\d by mitoseg-hpo [^(]*\([^)]*\)\."
    return tuple(re.sub(stamp, TIME_PLACEHOLDER, t) for t in texts)


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


def test_fixed_study_gives_the_recorded_reports(tmp_path):
    md, txt = run_golden_analysis(tmp_path, keys=tuple(REPORTS))
    assert TIME_PLACEHOLDER in md and TIME_PLACEHOLDER in txt
    assert md == (GOLDEN / REPORTS["report_md"]).read_text()
    assert txt == (GOLDEN / REPORTS["report_txt"]).read_text()
