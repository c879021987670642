"""Analyse a hyperparameter study: summary CSV, figures, statistics and reports.

    python analyze_hyperparameter_results.py --study-dir hyperparameter_optimization_YYYYMMDD_HHMMSS
    python analyze_hyperparameter_results.py --summary-file hyperparameter_summary.csv --output-dir out
    ... --baseline-summary original_study/hyperparameter_summary.csv
(the original script's --summary_file, --output_dir, --baseline_summary are accepted too)

Outputs (default: the study folder, or the CSV's folder): hyperparameter_summary.csv,
detailed_heatmaps.png, comprehensive_analysis.png, best_configurations_comparison.png,
training_curves.png, baseline_comparison.png (with a baseline), hyperparameter_report.md,
comprehensive_analysis_report.txt, analysis_summary.json.
"""
from __future__ import annotations

import sys

from mitoseg.cli.args import OneLineParser, add_flag, add_version, missing_extra


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    add_version(parser)
    src = parser.add_mutually_exclusive_group(required=True)   # the seeds' underscore spellings: hidden aliases
    add_flag(src, "--study-dir", "--study_dir", help="study folder with grid_config.json and exp_* folders")
    add_flag(src, "--summary-file", "--summary_file", help="a hyperparameter_summary.csv (analysis from the CSV alone)")
    add_flag(parser, "--output-dir", "--output_dir", help="where to write (default: the study folder / the CSV's folder)")
    add_flag(parser, "--baseline-summary", "--baseline_summary",
             help="summary CSV of a baseline study (e.g. the original lr 1e-2, batch 8 runs)")
    parser.add_argument("--sesoi", type=float, default=None,
                        help="smallest test IoU difference between architectures that matters (equivalence margin; "
                             "default: the confirmation plan's, else 0.01)")
    parser.add_argument("--no-figures", action="store_true", help="write the CSV and reports only (faster)")
    args = parser.parse_args(argv)
    from mitoseg.core.status import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
    try:
        from mitoseg.report.write import run_analysis
        from mitoseg.analysis.summary import SummaryError
    except ImportError as err:
        print(missing_extra(err, "analysis"), file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        run_analysis(args.study_dir, args.summary_file, args.output_dir, args.baseline_summary,
                     figures=not args.no_figures, sesoi=args.sesoi)
    except SummaryError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:   # a full disk, a read-only folder: what could not be written, in one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: the analysis could not write its outputs ({where}{err.strerror or err})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
