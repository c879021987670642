"""Tests of the analysis: summary CSV, statistics (checked against independent computations), report lines."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mitoseg.cli import analyze as cli
from tests.fixtures_results import ALL_FG, make_study, name_of
from mitoseg.report.write import run_analysis
from mitoseg.core.scores import degenerate_reason, required_iou
from mitoseg.core.paths import REPORT_MD, REPORT_TXT, SUMMARY_CSV_NAME, SUMMARY_JSON
from mitoseg.report.document import render
from mitoseg.analysis.study_analysis import analyze
from mitoseg.analysis.summary import SUMMARY_COLUMNS, SummaryError, build_summary, load_summary, normalize_summary

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)

GRID = dict(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-4, 1e-3, 1e-2], batch_sizes=[8, 16],
            seeds=[1, 2])
NAN_RE = re.compile(r"\b(nan|inf)\b", re.IGNORECASE)


def specials():
    return {name_of(GRID, "UNet", 1e-4, 8, 1): "failed",
            name_of(GRID, "UNet", 1e-2, 16, 2): "diverged",
            name_of(GRID, "Attention_UNet", 1e-4, 16, 1): "degenerate",
            name_of(GRID, "Attention_UNet", 1e-2, 8, 2): "missing",
            name_of(GRID, "Attention_UNet", 1e-2, 16, 1): "corrupt",
            name_of(GRID, "Attention_UNet", 1e-2, 16, 2): "foreign",
            name_of(GRID, "UNet", 1e-4, 16, 2): "running"}


def quiet(_):
    pass


def assert_clean(*texts):
    for t in texts:
        assert not NAN_RE.search(t), NAN_RE.search(t).group(0) + " in: " + t[max(0, NAN_RE.search(t).start() - 200):][:400]


def executive_opening(md: str, paragraph: int = 0) -> str:
    after = md.split("## Executive summary", 1)[1].strip()
    return after.split("\n\n")[paragraph]


def report_from_csv(csv_path, baseline=None):
    res = analyze(load_summary(csv_path), baseline)
    md, txt, js = render(res, str(csv_path), res.n_rows, {})
    assert_clean(md, txt)
    json.loads(js)
    return res, md, txt, js


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The mixed study, analysed once end to end with figures (the slow part, shared)."""
    study = make_study(tmp_path_factory.mktemp("mixed") / "study", special=specials(), **GRID)
    out = run_analysis(study_dir=study, log=quiet)
    return study, out


# --- the degenerate rule --------------------------------------------------------------------------
def test_degenerate_rule():
    assert degenerate_reason(None, 0.07, 0.1) == "no score"
    assert degenerate_reason(0.5, float("nan"), 0.1) == "no score"
    assert degenerate_reason(0.07, 0.07, 0.5) == "IoU 0.07 is not clearly above the all-foreground baseline 0.07"
    assert degenerate_reason(0.119, 0.07, 0.1) is not None      # needs 0.07 + 0.05
    assert degenerate_reason(0.121, 0.07, 0.1) is None
    assert required_iou(0.3) == pytest.approx(0.45)              # relative margin wins above 0.1
    assert degenerate_reason(0.44, 0.3, 0.3) is not None
    assert degenerate_reason(0.9, 0.1, 0.0005) == "predicts (almost) no foreground"
    assert degenerate_reason(0.9, 0.1, 0.96) == "predicts (almost) everything as foreground"
    assert degenerate_reason(0.9, 0.1, None) is None


# --- summary CSV ----------------------------------------------------------------------------------
def test_summary_csv_one_row_per_cell(mixed):
    study, out = mixed
    csv = pd.read_csv(study / SUMMARY_CSV_NAME)
    assert list(csv.columns[:len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert len(csv) == 24
    counts = csv["status"].value_counts().to_dict()
    assert counts == {"ok": 18, "failed": 1, "diverged": 1, "missing": 2, "unreadable": 2}
    assert (csv["success"] == (csv["status"] == "ok")).all()
    by_id = csv.set_index("experiment_id")
    corrupt = by_id.loc[name_of(GRID, "Attention_UNet", 1e-2, 16, 1)]
    assert "not valid JSON" in corrupt["error"] and corrupt["architecture"] == "Attention_UNet"
    assert corrupt["learning_rate"] == 1e-2 and corrupt["batch_size"] == 16
    assert "schema_version" in by_id.loc[name_of(GRID, "Attention_UNet", 1e-2, 16, 2), "error"]
    assert "still running" in by_id.loc[name_of(GRID, "UNet", 1e-4, 16, 2), "error"]
    assert "not started" in by_id.loc[name_of(GRID, "Attention_UNet", 1e-2, 8, 2), "error"]
    deg = by_id.loc[name_of(GRID, "Attention_UNet", 1e-4, 16, 1)]
    assert deg["degenerate"] and deg["best_val_iou"] == pytest.approx(ALL_FG + 0.01)
    assert by_id["degenerate"].sum() == 1
    assert by_id.loc[name_of(GRID, "UNet", 1e-2, 16, 2), "error"].startswith("loss became")
    assert csv["test_iou"].isna().all() and "test_all_foreground_jaccard" in csv.columns
    # integers stay integers in the CSV text
    text = (study / SUMMARY_CSV_NAME).read_text()
    assert ",UNet,0.001,8," in text


def test_all_outputs_written_and_clean(mixed):
    study, out = mixed
    for name in (SUMMARY_CSV_NAME, "detailed_heatmaps.png", "comprehensive_analysis.png",
                 "best_configurations_comparison.png", "training_curves.png", REPORT_MD, REPORT_TXT, SUMMARY_JSON):
        assert (study / name).is_file() and (study / name).stat().st_size > 0, name
    assert not (study / "baseline_comparison.png").exists()
    md, txt = (study / REPORT_MD).read_text(), (study / REPORT_TXT).read_text()
    assert_clean(md, txt)
    assert "18 of 24 cells are in" not in md  # finished = ok + failed + diverged
    assert "20 of 24 cells are in (18 ok, 1 failed, 1 diverged); 2 with an unreadable results file, 2 missing" in md
    assert "no model learned" not in md.lower()
    js = json.loads((study / SUMMARY_JSON).read_text())
    assert js["cells"]["expected"] == 24 and js["cells"]["successful"] == 18
    assert js["flags"]["no_model_learned"] is False and js["flags"]["degenerate_cells"] == 1
    assert js["metric"]["column"] == "best_val_iou"
    for name in ("## Executive summary", "## Key findings", "## Optimal configuration per architecture",
                 "## Hyperparameter effects", "## Figures", "## Detailed results per architecture", "## Statistics",
                 "## Comparison with the baseline study", "## Metric definitions", "## Limitations",
                 "## Complete results"):
        assert name in md


def counted_by_hand(csv: pd.DataFrame, column: str = "best_val_iou") -> pd.DataFrame:
    """The runs that count, computed independently: every ok run with its score, every diverged run as 0."""
    rows = csv[csv["status"].isin(["ok", "diverged"])].copy()
    rows[column] = np.where(rows["status"] == "diverged", 0.0, rows[column])
    return rows


def test_best_configuration_and_tables_from_data(mixed):
    study, out = mixed
    csv = pd.read_csv(study / SUMMARY_CSV_NAME)
    counted = counted_by_hand(csv)
    means = counted.groupby(["architecture", "learning_rate", "batch_size"])["best_val_iou"].mean()
    arch, lr, bs = means.idxmax()
    md = (study / REPORT_MD).read_text()
    # without confirmation runs the report opens by saying the grid cannot rank the architectures
    assert executive_opening(md).startswith("**The grid alone cannot rank the architectures:**")
    assert "run_study.py confirm --study-dir STUDY --seeds 3 --folds 2" in executive_opening(md)
    grid = executive_opening(md, 1)
    assert grid.startswith(f"The grid's selection, on validation (the data it was selected on, so the score is "
                           f"optimistic): {arch} (lr {lr:g}, batch {bs})")
    assert f"{means.max():.3f} (SD " in grid
    # hyperparameter effects table: mean +- SD (n) per learning rate, over the runs that count
    g = counted.groupby("learning_rate")["best_val_iou"]
    for level, vals in g:
        assert f"| {level:g} | {vals.mean():.3f} +- {vals.std(ddof=1):.3f} SD (n={len(vals)}) |" in md
    # the all-foreground baseline is in the score table
    assert "all-foreground baseline" in md.split("## Optimal configuration per architecture")[1].split("##")[0]


def test_one_way_anova_against_independent_computation(mixed):
    study, out = mixed
    res = out["result"]
    csv = pd.read_csv(study / SUMMARY_CSV_NAME)
    ok = counted_by_hand(csv)   # the runs that count: the diverged run as 0
    assert (ok["status"] == "diverged").sum() == 1
    for factor in ("learning_rate", "batch_size", "architecture"):
        groups = [g["best_val_iou"].to_numpy() for _, g in ok.groupby(factor)]
        f, p = sps.f_oneway(*groups)
        y = ok["best_val_iou"].to_numpy()
        ss_total = ((y - y.mean()) ** 2).sum()
        ss_between = sum(len(g) * (g.mean() - y.mean()) ** 2 for g in groups)
        got = res.anova[factor]
        assert got["F"] == pytest.approx(f, rel=1e-9)
        assert got["p"] == pytest.approx(p, rel=1e-9)
        assert got["eta_sq"] == pytest.approx(ss_between / ss_total, rel=1e-9)
        k, n = len(groups), len(y)
        # F and eta squared agree through the identity F = (eta/(k-1)) / ((1-eta)/(n-k))
        eta = got["eta_sq"]
        assert got["F"] == pytest.approx((eta / (k - 1)) / ((1 - eta) / (n - k)), rel=1e-9)


def test_factorial_anova_and_tukey_with_seeds(tmp_path):
    grid = dict(GRID, seeds=[1, 2, 3])
    study = make_study(tmp_path / "s", history=False, **grid)
    df, _ = build_summary(study)
    res = analyze(normalize_summary(df))
    three = res.three_way
    assert three["reason"] is None
    table = three["table"].set_index("source")
    ok = res.ok
    y = ok["score"]
    # balanced design: type II SS of a main effect = sum n_level (mean_level - grand)^2
    for factor, name in (("architecture", "architecture"), ("learning_rate", "learning rate")):
        ss = sum(len(g) * (g.mean() - y.mean()) ** 2 for _, g in ok.groupby(factor)["score"])
        assert table.loc[name, "sum_sq"] == pytest.approx(ss, rel=1e-6)
    assert "architecture x learning rate x batch size" in table.index
    for arch, r in res.two_way.items():
        assert r["table"] is not None
    # Tukey HSD p-value against scipy's implementation
    groups = [ok.loc[ok["architecture"] == a, "score"].to_numpy() for a in sorted(ok["architecture"].unique())]
    scipy_p = sps.tukey_hsd(*groups).pvalue[0, 1]
    assert res.tukey["table"]["p_adj"].iloc[0] == pytest.approx(scipy_p, abs=1e-3)
    # seeds: the learning-rate effect (0.15 at noise 0.01) is beyond noise within each architecture
    comp = res.comparisons["UNet"]
    assert comp["reason"] is None and comp["n_a"] == 3
    md, txt, js = render(res, "x", res.n_rows, {})
    assert_clean(md, txt)
    assert "Two- and three-way ANOVA" in md and "type II" in md


def test_winner_beyond_noise_only_when_supported(tmp_path):
    grid = dict(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3], batch_sizes=[8], seeds=[1, 2, 3, 4])
    # big architecture gap (0.05) vs noise 0.01 -> beyond noise
    study = make_study(tmp_path / "a", history=False, **grid)
    df, _ = build_summary(study)
    res = analyze(normalize_summary(df))
    md, _, _ = render(res, "x", res.n_rows, {})
    assert "the winner is ahead beyond seed noise" in md
    # one seed: noise unknown, no winner claimed
    study1 = make_study(tmp_path / "b", history=False, **dict(grid, seeds=[1]))
    df1, _ = build_summary(study1)
    res1 = analyze(normalize_summary(df1))
    md1, txt1, _ = render(res1, "x", res1.n_rows, {})
    assert "beyond seed noise" not in md1
    assert "run-to-run noise is unknown" in md1
    assert_clean(md1, txt1)


# --- the degenerate warning -----------------------------------------------------------------------
def test_degenerate_warning_opens_summary(tmp_path):
    study = make_study(tmp_path / "deg", iou_fn=lambda c: ALL_FG + 0.005 * (c.index % 3), history=False, **GRID)
    out = run_analysis(study_dir=study, log=quiet, figures=False)
    md = (study / REPORT_MD).read_text()
    opening = executive_opening(md)
    assert opening.startswith("**Warning: no model learned.**")
    assert f"all-foreground baseline {ALL_FG:.3f}" in opening
    assert f"must reach {required_iou(ALL_FG):.3f}" in opening
    assert "24 of 24 successful cells are degenerate" in opening
    assert json.loads((study / SUMMARY_JSON).read_text())["flags"]["no_model_learned"] is True
    assert_clean(md, (study / REPORT_TXT).read_text())
    assert out["result"].no_model_learned is True


def test_degenerate_recomputed_from_edited_csv(mixed, tmp_path):
    study, _ = mixed
    csv = pd.read_csv(study / SUMMARY_CSV_NAME)
    ok_rows = csv.index[csv["status"] == "ok"]
    csv.loc[ok_rows, "best_val_iou"] = ALL_FG + 0.02        # user edits: nothing beats the baseline
    csv.loc[ok_rows, "degenerate"] = False                  # ... and a stale flag
    path = tmp_path / "edited.csv"
    csv.to_csv(path, index=False)
    df = load_summary(path)
    assert df.loc[df["success"], "degenerate"].all()
    res, md, _, _ = report_from_csv(path)
    assert executive_opening(md).startswith("**Warning: no model learned.**")


def test_test_scores_are_shown_but_never_select(tmp_path):
    study = make_study(tmp_path / "t", history=False, test=True, **GRID)
    df, _ = build_summary(study)
    assert df["test_iou"].notna().sum() == 24 and df["test_dice"].notna().all()
    res = analyze(normalize_summary(df))
    assert res.metric.column == "best_val_iou" and res.selected_on == "validation"
    md, txt, _ = render(res, "x", 24, {})
    assert "test IoU (shown, not used for selection)" in executive_opening(md, 1)
    assert "selected on the test score" not in md
    assert "test IoU (not used for selection)" in md.split("## Complete results")[1]
    assert_clean(md, txt)


# --- soft-only, CSV-only, baseline -----------------------------------------------------------------
def soft_csv(path: Path, archs=("UNet", "Attention_UNet"), lrs=(1e-2,), bss=(8,), seeds=(1,)):
    rows = []
    rng = np.random.default_rng(0)
    for a in archs:
        for lr in lrs:
            for bs in bss:
                for s in seeds:
                    rows.append(dict(architecture=a, learning_rate=lr, batch_size=bs, seed=s, success=True,
                                     best_val_jaccard=0.07 + rng.normal(0, 0.002),
                                     val_loss_stability=0.05 + rng.uniform(0, 0.01)))
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_soft_only_summary_is_not_ranked(tmp_path):
    path = soft_csv(tmp_path / "original.csv", lrs=(1e-3, 1e-2), bss=(8, 16))
    out_dir = tmp_path / "out"
    out = run_analysis(summary_file=path, output_dir=out_dir, log=quiet)
    md = (out_dir / REPORT_MD).read_text()
    opening = executive_opening(md)
    assert "soft metric cannot separate learned from constant models" in opening
    assert "The grid's selection" not in md
    assert "Not determined: the soft Jaccard" in md
    js = json.loads((out_dir / SUMMARY_JSON).read_text())
    assert js["flags"]["soft_only"] is True and js["best_configurations"] is None
    assert (out_dir / SUMMARY_CSV_NAME).is_file() and (out_dir / "detailed_heatmaps.png").is_file()
    assert not isinstance(out["figures"]["training_curves.png"], Path)   # no histories: skipped, no crash
    assert "training_curves.png` not produced" in md
    assert_clean(md, (out_dir / REPORT_TXT).read_text())


def test_csv_only_and_baseline_comparison(mixed, tmp_path):
    study, _ = mixed
    baseline = soft_csv(tmp_path / "baseline.csv", seeds=(1, 2))
    out_dir = tmp_path / "out"
    out = run_analysis(summary_file=study / SUMMARY_CSV_NAME, output_dir=out_dir, baseline_summary=baseline,
                       log=quiet)
    assert (out_dir / "baseline_comparison.png").is_file()
    assert isinstance(out["figures"]["training_curves.png"], Path)   # histories found next to the study CSV
    js = json.loads((out_dir / SUMMARY_JSON).read_text())
    rows = {r["architecture"]: r for r in js["baseline_comparison"]["rows"]}
    assert js["baseline_comparison"]["metric"] == "best_val_jaccard"
    base = pd.read_csv(baseline)
    cur = pd.read_csv(study / SUMMARY_CSV_NAME)
    for arch, r in rows.items():
        b_stab = base.loc[base["architecture"] == arch, "val_loss_stability"].mean()
        sel = cur[(cur["architecture"] == arch) & (cur["learning_rate"] == r["lr"]) & (cur["batch_size"] == r["bs"])
                  & (cur["status"] == "ok")]
        assert r["stability_factor"] == pytest.approx(b_stab / sel["val_loss_stability"].mean(), rel=1e-9)
        assert r["score_factor"] == pytest.approx(sel["best_val_jaccard"].mean() /
                                                  base.loc[base["architecture"] == arch, "best_val_jaccard"].mean(),
                                                  rel=1e-9)
    md = (out_dir / REPORT_MD).read_text()
    assert "score factor is not evidence of better segmentation" in md
    assert_clean(md)


# --- robustness ------------------------------------------------------------------------------------
def test_partial_study(tmp_path):
    grid = dict(GRID, seeds=[1])
    names = [name_of(grid, a, lr, bs) for a in grid["architectures"] for lr in grid["learning_rates"]
             for bs in grid["batch_sizes"]]
    study = make_study(tmp_path / "p", special={n: "missing" for n in names[3:]}, history=False, **grid)
    run_analysis(study_dir=study, log=quiet, figures=False)
    md = (study / REPORT_MD).read_text()
    assert "3 of 12 cells are in (3 ok); 9 missing" in md
    assert "Only one architecture (UNet) has successful runs" in md
    assert_clean(md, (study / REPORT_TXT).read_text())


def test_one_architecture_one_cell(tmp_path):
    one = dict(architectures=["Attention_ResUNet"], learning_rates=[1e-3], batch_sizes=[8], seeds=[1])
    study = make_study(tmp_path / "one", **one)
    out = run_analysis(study_dir=study, log=quiet)
    md = (study / REPORT_MD).read_text()
    assert "1 of 1 cells are in (1 ok)" in md
    assert "only one learning rate" in md and "Not computed: only one architecture has runs that count." in md
    assert "not computed: only one learning rate level has runs that count" in md
    assert_clean(md, (study / REPORT_TXT).read_text())
    assert all(isinstance(v, Path) for v in out["figures"].values())


def test_nan_rows_and_all_failed(tmp_path, mixed):
    study, _ = mixed
    csv = pd.read_csv(study / SUMMARY_CSV_NAME)
    csv.loc[0, ["learning_rate", "best_val_iou"]] = np.nan
    csv.loc[2, ["val_loss_stability", "all_foreground_jaccard", "final_val_loss"]] = np.nan
    csv.loc[3, "best_val_iou"] = np.nan   # (a row without architecture, or a score "oops": tests/test_summary_checks.py)
    path = tmp_path / "holes.csv"
    csv.to_csv(path, index=False)
    report_from_csv(path)
    failed = csv.assign(status="failed")
    failed.to_csv(tmp_path / "failed.csv", index=False)
    res, md, _, _ = report_from_csv(tmp_path / "failed.csv")
    assert executive_opening(md).startswith("**No grid cell finished successfully")
    out_dir = tmp_path / "f_out"
    run_analysis(summary_file=tmp_path / "failed.csv", output_dir=out_dir, log=quiet)   # figures must not crash
    assert_clean((out_dir / REPORT_MD).read_text())


def test_runs_without_a_stability_draw_their_figures_without_warnings(tmp_path, mixed):
    # one-epoch runs have no val-loss stability: its panels were empty and matplotlib warned on stderr
    study, _ = mixed
    csv = pd.read_csv(study / SUMMARY_CSV_NAME).assign(val_loss_stability=np.nan)
    csv.to_csv(tmp_path / "one_epoch.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_analysis(summary_file=tmp_path / "one_epoch.csv", output_dir=tmp_path / "o", log=quiet)
    assert isinstance(out["figures"]["comprehensive_analysis.png"], Path)
    # matplotlib names the line of our code that drew the empty legend (other libraries' deprecations aside)
    assert [str(w.message) for w in caught if w.filename.endswith("figures.py")] == []


def test_bad_input_exits_with_one_line(tmp_path, capsys):
    assert cli.main(["--study-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert cli.main(["--study-dir", str(tmp_path / "empty")]) == 2
    assert "no cells at all" in capsys.readouterr().err
    assert cli.main(["--summary-file", str(tmp_path / "empty")]) == 2   # was "does not exist"
    assert "is a folder, not a CSV file" in capsys.readouterr().err
    pd.DataFrame({"architecture": ["UNet"], "batch_size": [8], "best_val_iou": [0.5]}).to_csv(tmp_path / "x.csv", index=False)
    assert cli.main(["--summary_file", str(tmp_path / "x.csv")]) == 2
    assert "required columns missing: learning_rate" in capsys.readouterr().err
    pd.DataFrame({"architecture": ["UNet"], "learning_rate": [1e-3], "batch_size": [8]}).to_csv(tmp_path / "y.csv", index=False)
    assert cli.main(["--summary_file", str(tmp_path / "y.csv")]) == 2
    assert "no score column" in capsys.readouterr().err
    (tmp_path / "z.csv").write_text("architecture,learning_rate,batch_size,best_val_iou\n")
    assert cli.main(["--summary_file", str(tmp_path / "z.csv")]) == 2
    assert "no cells at all" in capsys.readouterr().err
    with pytest.raises(SummaryError):
        load_summary(tmp_path / "missing.csv")


def test_cli_prints_progress_and_report_path(tmp_path, capsys):
    study = make_study(tmp_path / "c", history=False, **dict(GRID, seeds=[1]))
    assert cli.main(["--study-dir", str(study), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "Reading results of" in out and f"Report: {study / REPORT_MD}" in out


def test_analysis_does_not_import_tensorflow():
    import subprocess
    import sys
    code = ("import sys, analyze_hyperparameter_results, mitoseg.report.write, mitoseg.analysis.summary, mitoseg.core.scores; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_degenerate_is_decided_once_in_the_summary_against_the_headlines_baseline():
    """A summary without validation IoU: the test-IoU rule flags a run in the summary itself, so the analysis
    (add_score no longer decides), the confirmation stage and predict.py read one flag, in both stages."""
    df = normalize_summary(pd.DataFrame(dict(
        architecture=["UNet"] * 3, learning_rate=[1e-3] * 3, batch_size=[8] * 3, status=["ok", "ok", "failed"],
        test_iou=[0.80, 0.08, np.nan], test_all_foreground_jaccard=[0.07] * 3, stage=["grid", "confirm", "grid"])))
    assert list(df["degenerate"]) == [False, True, False]
    assert df.loc[1, "degenerate_reason"] == degenerate_reason(0.08, 0.07)
    res = analyze(df)
    assert res.metric.kind == "test" and list(res.df["degenerate"]) == [False, False]


def test_the_report_names_the_recorded_threshold_not_a_fixed_one():
    """TrainConfig.threshold is a setting: the summary carries each run's, the headline and the definitions name
    it; a summary without the column (an older CSV) reads as TrainConfig's default 0.5."""
    rows = dict(architecture=["UNet", "UNet"], learning_rate=[1e-3, 1e-3], batch_size=[8, 8], status=["ok", "ok"],
                best_val_iou=[0.8, 0.82], all_foreground_jaccard=[0.07, 0.07])
    res = analyze(normalize_summary(pd.DataFrame(dict(rows, threshold=[0.4, 0.4]))))
    assert res.metric.label == "validation IoU (threshold 0.4)"
    md, _, _ = render(res, "s", 2, {})
    assert "probabilities thresholded at 0.4." in md and "threshold 0.5" not in md
    assert analyze(normalize_summary(pd.DataFrame(rows))).metric.label == "validation IoU (threshold 0.5)"
    assert "thresholds 0.4, 0.5" in analyze(normalize_summary(pd.DataFrame(dict(rows, threshold=[0.4, 0.5])))).metric.label
