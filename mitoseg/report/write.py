"""The analysis pipeline: study folder or summary CSV -> summary CSV, figures, reports (no TensorFlow)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from mitoseg.analysis.comparison import DEFAULT_SESOI
from mitoseg.predict.ensemble import ensemble_scores
from mitoseg.core.io_utils import atomic_write_text, same_file
from mitoseg.core.paths import REPORT_MD, REPORT_TXT, SUMMARY_CSV_NAME, SUMMARY_JSON
from mitoseg.report.figures import make_figures
from mitoseg.report.document import render
from mitoseg.analysis.study_analysis import analyze
from mitoseg.analysis.summary import SummaryError, load_summary, study_summary, write_summary_csv


def _refuse_overwriting_inputs(out_dir: Path, summary_file, baseline_summary) -> None:
    """SummaryError before anything is written when an output of the analysis is one of its input CSVs
    (the --summary_file itself is only ever re-read, never rewritten: see below)."""
    for name in (SUMMARY_CSV_NAME, REPORT_MD, REPORT_TXT, SUMMARY_JSON):
        target = out_dir / name
        for flag, path in (("--summary_file", summary_file), ("--baseline_summary", baseline_summary)):
            if path is None or not same_file(target, path):
                continue
            if flag == "--summary_file" and name == SUMMARY_CSV_NAME:
                continue
            raise SummaryError(f"{flag} {path} is the analysis output {target}: refusing to overwrite an input; "
                               "choose another --output-dir")


def confirm_plan(study_dir) -> Optional[dict]:
    """The study's confirmation plan (None without a study folder or a plan); SummaryError if unreadable."""
    if study_dir is None:
        return None
    from mitoseg.core.grid import load_confirm_plan
    try:
        return load_confirm_plan(study_dir)
    except ValueError as err:
        raise SummaryError(str(err)) from None


def study_sesoi(plan: Optional[dict], sesoi) -> float:
    """The smallest IoU difference that matters: --sesoi, else the confirmation plan's, else the default;
    SummaryError unless 0 < sesoi < 1."""
    if sesoi is None and plan:
        sesoi = plan.get("sesoi")
    sesoi = DEFAULT_SESOI if sesoi is None else sesoi
    if not 0 < float(sesoi) < 1:
        raise SummaryError(f"--sesoi {sesoi}: the smallest IoU difference that matters must lie between 0 and 1")
    return float(sesoi)


def run_analysis(study_dir=None, summary_file=None, output_dir=None, baseline_summary=None,
                 log: Callable[[str], None] = print, figures: bool = True, sesoi=None) -> dict:
    """Run everything; returns {"outputs": {name: path}, "figures": {...}, "result": StudyAnalysis}.
    sesoi: the smallest IoU difference between architectures that matters (None: the confirmation
    plan's, else DEFAULT_SESOI). Raises SummaryError (one line) for bad input."""
    if (study_dir is None) == (summary_file is None):
        raise SummaryError("give either a study folder (--study-dir) or a summary CSV (--summary_file)")
    plan = confirm_plan(study_dir)
    sesoi = study_sesoi(plan, sesoi)
    outputs = {}
    out_dir = Path(output_dir) if output_dir else Path(study_dir) if study_dir is not None else Path(summary_file).parent
    if out_dir.exists() and not out_dir.is_dir():
        flag = "--output-dir" if output_dir else "--study-dir"   # the flag the folder came from
        raise SummaryError(f"{flag} {out_dir} is a file, not a folder; name a folder")
    _refuse_overwriting_inputs(out_dir, summary_file, baseline_summary)
    if study_dir is not None:
        study_dir = Path(study_dir)
        log(f"Reading results of {study_dir} ...")
        df_raw, df, inv = study_summary(study_dir)
        expected = inv.expected
        csv_path = write_summary_csv(df_raw, out_dir / SUMMARY_CSV_NAME, log)
        outputs["summary_csv"] = csv_path
        log(f"  {len(df_raw)} rows ({', '.join(f'{v} {k}' for k, v in inv.counts.items())}) -> {csv_path}")
        if inv.confirm_expected:
            log(f"  {inv.confirm_expected} of them are confirmation runs (stage confirm)")
        if inv.foreign_note:
            log(f"  note: {inv.foreign_note}")
        # only the training-curves figure reads more of the study (the best runs' history files)
        history_root = study_dir
        source = str(study_dir)
    else:
        summary_file = Path(summary_file)
        log(f"Reading summary {summary_file} ...")
        df = load_summary(summary_file, log)
        expected = int((df["stage"] == "grid").sum())
        target = out_dir / SUMMARY_CSV_NAME
        if not same_file(target, summary_file):
            outputs["summary_csv"] = write_summary_csv(df, target, log)
        history_root = summary_file.parent
        source = str(summary_file)
        log(f"  {len(df)} rows")
    baseline = None
    if baseline_summary is not None:
        log(f"Reading baseline summary {baseline_summary} ...")
        baseline = load_summary(baseline_summary, log)
    log("Computing statistics ...")
    # the plan's ranks (fixed when it was made) choose each architecture's representative under --top K
    res = analyze(df, baseline, sesoi, plan["configs"] if plan else None)
    log(f"  headline metric: {res.metric.label}")
    res = dataclasses.replace(res, ensemble=ensemble_scores(study_dir, res.confirm_df, plan, out_dir / SUMMARY_JSON, log))
    if figures:
        log(f"Drawing figures into {out_dir} ...")
        figures = make_figures(res, out_dir, history_root)
    else:
        figures = {}
    for name, value in figures.items():
        log(f"  {name}: {'written' if isinstance(value, Path) else 'skipped (' + str(value) + ')'}")
    log("Writing reports ...")
    md, txt, js = render(res, source, expected, figures)
    for key, name, text in (("report_md", REPORT_MD, md), ("report_txt", REPORT_TXT, txt), ("summary_json", SUMMARY_JSON, js)):
        atomic_write_text(out_dir / name, text)
        outputs[key] = out_dir / name
    if res.n_ok == 0:
        log("WARNING: no grid cell finished successfully ("
            + ", ".join(f"{v} {k}" for k, v in sorted(res.counts.items())) + "); configurations are not ranked")
    elif res.no_model_learned:
        log("WARNING: no model learned (best score does not clearly beat the all-foreground baseline)")
    elif res.soft_only:
        log("WARNING: only soft Jaccard scores; configurations are not ranked")
    log(f"Report: {outputs['report_md']}")
    return dict(outputs=outputs, figures=figures, result=res)
