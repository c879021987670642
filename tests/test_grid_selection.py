"""The grid side of the analysis: which runs count (one rule for both stages), the selection on
them, the winner-vs-runner-up sentence, the wording of what was selected on, the figures and the
exploratory label of the grid's tests. Pure pandas/matplotlib: nothing trains."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mitoseg.report import figures as plots
from mitoseg.report.write import run_analysis
from mitoseg.core.paths import FIG_BEST, FIG_HEATMAPS, REPORT_MD
from mitoseg.report.document import render
from mitoseg.analysis.stats import DIVERGED_SCORE, counted_runs, select_configs
from mitoseg.analysis.study_analysis import analyze
from mitoseg.analysis.summary import normalize_summary

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)

BASE = 0.07   # all-foreground IoU: a run below 0.12 did not learn


def run(arch, lr, seed, val, status="ok", test=None, stage="grid", bs=8):
    row = dict(architecture=arch, learning_rate=lr, batch_size=bs, seed=seed, status=status, stage=stage,
               all_foreground_jaccard=BASE, val_predicted_foreground_fraction=0.08, val_loss_stability=0.01)
    row.update(best_val_iou=val if status == "ok" else np.nan)
    if test is not None:
        row.update(test_iou=test if status == "ok" else np.nan, test_all_foreground_jaccard=BASE)
    return row


def summary(rows) -> pd.DataFrame:
    return normalize_summary(pd.DataFrame(rows))


def section(md: str, title: str) -> str:
    """The text of the report's `## title...` section, up to the next `## `."""
    start = md.index("## " + title)
    end = md.find("\n## ", start + 3)
    return md[start:] if end < 0 else md[start:end]


def quiet(_):
    pass


# --- one rule: every finished run counts ------------------------------------------------------------
def test_a_configuration_that_failed_to_learn_once_does_not_beat_a_steady_one():
    rows = [run("UNet", 1e-3, s, v) for s, v in ((1, 0.82), (2, 0.82), (3, 0.08))]   # 1 of 3 did not learn
    rows += [run("UNet", 5e-3, s, 0.80) for s in (1, 2, 3)]                          # 3 of 3 learned
    rows += [run("UNet", 1e-2, s, v) for s, v in ((1, 0.85), (2, 0.85))] + [run("UNet", 1e-2, 3, None, "diverged")]
    rows += [run("UNet", 5e-3, 9, 0.99, stage="confirm")]                              # not selection data
    sel = select_configs(summary(rows), top=3)
    assert list(sel["learning_rate"]) == [5e-3, 1e-3, 1e-2]
    means = dict(zip(sel["learning_rate"], sel["score_mean"]))
    assert means[5e-3] == pytest.approx(0.80)
    assert means[1e-3] == pytest.approx((0.82 + 0.82 + 0.08) / 3)                    # 0.573: the degenerate run counts
    assert means[1e-2] == pytest.approx((0.85 + 0.85 + DIVERGED_SCORE) / 3)          # the diverged run counts as 0
    by_lr = sel.set_index("learning_rate")
    assert by_lr.loc[1e-3, "n_runs"] == 3 and by_lr.loc[1e-3, "n_degenerate"] == 1
    assert by_lr.loc[1e-2, "n_diverged"] == 1 and not by_lr.loc[1e-2, "degenerate"]


def test_failed_cells_do_not_count_and_a_configuration_that_never_learned_is_flagged():
    rows = [run("UNet", 1e-3, 1, 0.80), run("UNet", 1e-3, 2, None, "failed"),
            run("UNet", 5e-3, 1, 0.08), run("UNet", 5e-3, 2, None, "diverged")]
    df = summary(rows)
    counted = counted_runs(df, "best_val_iou")
    assert sorted(counted["status"]) == ["diverged", "ok", "ok"]
    assert list(counted.loc[counted["status"] == "diverged", "outcome"]) == [DIVERGED_SCORE]
    sel = select_configs(df, top=2).set_index("learning_rate")
    assert sel.loc[1e-3, "n_runs"] == 1 and sel.loc[1e-3, "score_mean"] == pytest.approx(0.80)
    assert sel.loc[5e-3, "degenerate"] and sel.loc[5e-3, "score_mean"] == pytest.approx(0.04)


def test_winner_sentence_numbers_come_from_the_same_runs():
    rows = [run("Attention_UNet", 1e-3, s, v) for s, v in ((1, 0.90), (2, 0.90), (3, 0.08))]
    rows += [run("Attention_UNet", 5e-3, s, v) for s, v in ((1, 0.80), (2, 0.79), (3, 0.81))]
    rows += [run("UNet", 1e-3, s, v) for s, v in ((1, 0.76), (2, 0.78), (3, 0.77))]
    res = analyze(summary(rows))
    md, _, _ = render(res, "x", res.n_rows, {})
    for comp in res.comparisons.values():
        a, b = comp["winner"], comp["runner_up"]
        assert comp["diff"] == pytest.approx(a["score_mean"] - b["score_mean"])
        assert comp["diff"] > 0
        assert (f"({a['score_mean']:.3f}, n={comp['n_a']}) vs the runner-up" in md
                and f"({b['score_mean']:.3f}, n={comp['n_b']}), difference {comp['diff']:.3f}" in md)
    assert res.comparisons["Attention_UNet"]["winner"]["learning_rate"] == 5e-3


# --- selected on what ------------------------------------------------------------------------------
def test_a_summary_without_validation_iou_says_it_selected_on_test():
    rows = [dict(run(a, lr, s, None, test=t), best_val_iou=np.nan)
            for a, lr, s, t in (("UNet", 1e-3, 1, 0.80), ("UNet", 1e-3, 2, 0.78), ("UNet", 1e-2, 1, 0.70),
                                ("Attention_UNet", 1e-3, 1, 0.75), ("Attention_UNet", 1e-3, 2, 0.74))]
    res = analyze(summary(rows))
    assert res.metric.kind == "test"
    md, _, _ = render(res, "x", res.n_rows, {})
    assert "on validation, the data it was selected on" not in md and "validation-selected" not in md
    assert "on test, the data it was selected on" in md
    best = section(md, "Optimal configuration")
    assert "not used for selection" not in best and "optimistic" in best
    assert "selects on test (optimistic)" in md


# --- figures ---------------------------------------------------------------------------------------
@pytest.fixture
def captured(monkeypatch):
    """The figures plots.* would save, kept open for inspection (name -> Figure)."""
    figs = {}

    def keep(fig, path):
        figs[path.name] = fig
        return path
    monkeypatch.setattr(plots, "_save", keep)
    yield figs
    plots.plt.close("all")


def soft_summary() -> pd.DataFrame:
    rows = [dict(architecture=a, learning_rate=1e-2, batch_size=8, seed=1, success=True, best_val_jaccard=j,
                 val_loss_stability=0.05) for a, j in (("UNet", 0.070), ("Attention_UNet", 0.070),
                                                       ("Attention_ResUNet", 0.067))]
    return normalize_summary(pd.DataFrame(rows))


def test_soft_only_is_not_ranked_in_the_figure_and_degenerate_is_unknown(tmp_path, captured):
    res = analyze(soft_summary())
    assert res.soft_only
    reason = plots.plot_best_configs(res, tmp_path / FIG_BEST)
    assert isinstance(reason, str) and reason.startswith("not drawn") and FIG_BEST not in captured
    md, _, _ = render(res, "x", res.n_rows, {FIG_BEST: reason})
    rows = [line for line in section(md, "Complete results").splitlines() if "| ok |" in line]
    assert len(rows) == 3 and all("unknown (no thresholded IoU)" in line and "| no |" not in line for line in rows)


def test_no_error_bar_from_a_single_run(tmp_path, captured):
    rows = [run("UNet", 1e-3, 1, 0.80), run("Attention_UNet", 1e-3, 1, 0.75), run("Attention_UNet", 1e-3, 2, 0.77)]
    res = analyze(summary(rows))
    plots.plot_best_configs(res, tmp_path / FIG_BEST)
    ax = captured[FIG_BEST].axes[0]
    bars = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == 1                         # Attention_UNet (n=2) only
    texts = [t.get_text() for t in ax.texts]
    assert any("(n=1, no error bar)" in t for t in texts)
    assert any("(n=2)" in t for t in texts)


def test_heatmaps_share_one_colour_scale_per_metric(tmp_path, captured):
    rows = []
    for arch, shift in (("UNet", 0.0), ("Attention_UNet", 0.03), ("Attention_ResUNet", -0.05)):
        for lr, v in ((1e-3, 0.79), (1e-2, 0.70)):
            rows += [dict(run(arch, lr, s, v + shift + 0.002 * s), val_loss_stability=0.01 * (1 + shift + s))
                     for s in (1, 2)]
    res = analyze(summary(rows))
    plots.plot_heatmaps(res, tmp_path / FIG_HEATMAPS)
    fig = captured[FIG_HEATMAPS]
    axes = np.asarray([ax for ax in fig.axes if ax.images]).reshape(3, 2)
    for col, name in ((0, "score_mean"), (1, "stability_mean")):
        clims = {ax.images[0].get_clim() for ax in axes[:, col]}
        assert len(clims) == 1
        lo, hi = clims.pop()
        assert (lo, hi) == pytest.approx((res.configs[name].min(), res.configs[name].max()))


# --- the grid's tests are exploratory; every +- says what it is ------------------------------------------
def test_grid_statistics_are_exploratory_and_every_plus_minus_is_labelled(tmp_path):
    rows = [run(a, lr, s, 0.70 + 0.05 * (a == "UNet") + 0.03 * (lr == 1e-3) + 0.01 * s)
            for a in ("UNet", "Attention_UNet") for lr in (1e-3, 1e-2) for s in (1, 2, 3)]
    rows += [run("UNet", 1e-2, 4, None, "diverged")]
    res = analyze(summary(rows))
    md, _, _ = render(res, "x", res.n_rows, {})
    stats = section(md, "Statistics of the grid (exploratory)")
    assert "exploratory" in stats and "not adjusted" in stats
    assert "One-way ANOVA per factor" in stats and "F(" in stats   # the appendix keeps its one-way ANOVAs
    assert "exploratory Welch t-test" in md
    assert "1 diverged cell(s) count in the means above as runs that did not learn (IoU 0)" in md
    grid_parts = "".join(section(md, t) for t in ("Key findings", "Optimal configuration", "Hyperparameter effects",
                                                  "Detailed results", "Statistics", "Limitations"))
    plus_minus = re.findall(r"\+-[^|(]{0,12}", grid_parts)
    assert plus_minus and all(re.search(r"\b(SD|SE|CI)\b", m) for m in plus_minus), plus_minus


def test_analysis_of_a_soft_summary_reports_the_figure_as_not_drawn(tmp_path):
    path = tmp_path / "soft.csv"
    soft_summary().to_csv(path, index=False)
    out = run_analysis(summary_file=path, output_dir=tmp_path / "out", log=quiet)
    assert not isinstance(out["figures"][FIG_BEST], type(tmp_path))
    md = (tmp_path / "out" / REPORT_MD).read_text()
    assert f"`{FIG_BEST}` not produced: not drawn" in md


def test_the_selected_configuration_says_in_how_many_runs_it_learned():
    rows = [run("UNet", 1e-3, s, 0.90) for s in (1, 2)] + [run("UNet", 1e-3, 3, None, "diverged")]
    rows += [run("UNet", 1e-2, s, 0.50) for s in (1, 2, 3)]
    res = analyze(summary(rows))
    md, _, _ = render(res, "x", res.n_rows, {})
    row = [line for line in section(md, "Optimal configuration").splitlines() if line.startswith("| UNet")][0]
    assert "| 0.600 +- 0.520 SD (n=3) |" in row and "| yes (2 of 3 runs learned) |" in row
