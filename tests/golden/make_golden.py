"""Write the fixed study of tests/test_golden_analysis.py and its expected analysis outputs.

Run once, from the repository root, only when the analysis is meant to change its numbers:
    .venv/bin/python -m tests.golden.make_golden
The study (tests/golden/study/) is the input: 3 architectures x 3 learning rates x 2 batch sizes x
2 seeds with one failed, one diverged, one degenerate, one missing and one unreadable cell, test
scores, and a confirmation stage of 3 fresh seeds for the best configuration.
"""
import shutil
import tempfile
from pathlib import Path

from tests.fixtures_results import add_confirmation, make_study, name_of

HERE = Path(__file__).resolve().parent
GRID = dict(architectures=["UNet", "Attention_UNet", "Attention_ResUNet"], learning_rates=[1e-4, 1e-3, 1e-2],
            batch_sizes=[8, 16], seeds=[1, 2])


def main() -> None:
    from tests.test_golden_analysis import REPORTS, run_golden_analysis
    special = {name_of(GRID, "UNet", 1e-4, 16, 1): "failed",
               name_of(GRID, "Attention_ResUNet", 1e-2, 8, 2): "diverged",
               name_of(GRID, "Attention_UNet", 1e-4, 8, 2): "degenerate",
               name_of(GRID, "UNet", 1e-2, 16, 2): "missing",
               name_of(GRID, "Attention_ResUNet", 1e-4, 16, 1): "corrupt"}
    shutil.rmtree(HERE / "study", ignore_errors=True)
    study = make_study(HERE / "study", special=special, test=True, **GRID)
    add_confirmation(study, 3, val_fn=lambda c: 0.72 + 0.01 * (c.seed % 3),
                     test_fn=lambda c: 0.70 + 0.01 * (c.seed % 5), top=1, allow_incomplete=True)
    with tempfile.TemporaryDirectory() as tmp:
        csv, summary = run_golden_analysis(Path(tmp))
        (HERE / "expected_summary.csv").write_text(csv)
        (HERE / "expected_analysis_summary.json").write_text(summary)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in zip(REPORTS.values(), run_golden_analysis(Path(tmp), keys=tuple(REPORTS))):
            (HERE / name).write_text(text)


if __name__ == "__main__":
    main()
