"""Everything the figures and reports say about a study, computed once: `analyze` -> StudyAnalysis.

The grid's rows (stage "grid") are scored on the headline metric, aggregated over the runs that
count (mitoseg.analysis.stats.counted_runs, the one rule of both stages), selected on (mitoseg.analysis.stats.
select_configs, the one "best" rule) and tested (mitoseg.analysis.anova, exploratory: the grid selects on
the same scores); the confirmation rows (stage "confirm") go to mitoseg.analysis.comparison. No file I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from mitoseg.analysis.anova import compare_runs, correlation_matrix, factorial_anova, one_way_anova, tukey_architectures
from mitoseg.core.scores import required_iou
from mitoseg.analysis.comparison import DEFAULT_SESOI, compare_architectures
from mitoseg.analysis.stats import (FACTORS, Metric, add_score, aggregate_configs, baseline_comparison,
                                    best_from_selection, choose_metric, counted_runs, edge_notes, factor_effects, finite,
                                    most_stable_configs, run_scores, select_configs)
from mitoseg.core.status import STATUSES

OVERFIT_RELATIVE_GAP = 0.2   # final val loss more than 20 % above final train loss -> "signs of overfitting"
SELECTED_ON = {"val": "validation", "test": "test", "soft": "soft validation Jaccard"}   # Metric.kind -> words


@dataclass(frozen=True)
class StudyAnalysis:
    """The numbers of one study, computed once (frozen: the figures and reports only read them).
    Tables are DataFrames; a test or comparison is a dict whose `reason` says in words why it could
    not be computed (its numbers are then NaN or None)."""
    metric: Metric                   # the headline score (mitoseg.analysis.stats.choose_metric)
    df: pd.DataFrame                 # the grid's rows, with score, baseline and stability columns (add_score)
    ok: pd.DataFrame                 # the successful grid rows that have a score
    counted: pd.DataFrame            # the grid rows that count (counted_runs), `score` = the score counted
    configs: pd.DataFrame            # one row per configuration (aggregate_configs)
    selection: pd.DataFrame          # select_configs: each architecture's selected configuration
    best: pd.DataFrame               # the configs rows of the selection, in its order (best_from_selection)
    stable: pd.DataFrame             # each architecture's steadiest configuration (most_stable_configs)
    counts: dict[str, int]           # status -> number of grid rows
    n_rows: int                      # grid rows
    n_ok: int                        # successful grid rows
    n_degenerate: int                # successful grid rows that did not learn
    n_finished: int                  # grid rows with a status of mitoseg.core.status.STATUSES
    has_seeds: bool                  # some configuration has at least 2 runs that count
    soft_only: bool                  # the headline metric is the soft Jaccard: nothing is ranked
    overall_best: Optional[pd.Series]   # the first row of best (highest selected score), None without one
    no_model_learned: Optional[bool]    # the best score does not clearly beat the baseline (None: soft / no best)
    comparisons: dict[str, dict]     # "architectures" and each architecture -> winner_comparisons' dict
    edges: dict[str, list[str]]      # architecture -> sentences on its selected configuration at the grid's edge
    overfitting: dict[str, dict]     # architecture -> gap, relative, flag, epochs_to_best, epochs_run
    effects: dict[str, pd.DataFrame]             # factor -> DataFrame(level, mean, std, n) of the counted score
    stability_effects: dict[str, pd.DataFrame]   # factor -> the same for the val-loss stability
    anova: dict[str, dict]           # factor -> one_way_anova of the counted runs (exploratory, as the three below)
    two_way: dict[str, dict]         # architecture -> factorial_anova of learning rate x batch size
    three_way: dict                  # factorial_anova of architecture x learning rate x batch size
    tukey: dict                      # tukey_architectures
    correlation: dict                # correlation_matrix
    baseline: Optional[dict]         # baseline_comparison, None without a baseline summary
    selected_on: str                 # the data the selection used, in words
    confirm_df: pd.DataFrame         # the confirmation rows (stage "confirm"), maybe none
    confirmation: Optional[dict]     # compare_architectures of them, None without confirmation rows
    ensemble: Optional[dict] = None  # mitoseg.predict.ensemble.ensemble_scores (set by the pipeline: it reads the models)


def split_stages(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(grid rows, confirmation rows); either may be empty (a hand-made CSV of confirmation runs alone is
    compared as it is: the comparison needs no selection)."""
    confirm = df[df["stage"] == "confirm"] if "stage" in df.columns else df.iloc[:0]
    grid = df[df["stage"] != "confirm"] if "stage" in df.columns else df
    return grid, confirm


def winner_comparisons(df: pd.DataFrame, configs: pd.DataFrame, best: pd.DataFrame, metric: Metric) -> dict:
    """Winner vs runner-up, ranked by select_configs (the one rule): across architectures (the
    selected configuration of each) and, per architecture, its first against its second configuration.
    Each: winner and runner_up (best_from_selection rows) and compare_runs of the runs behind their
    means (run_scores), so the difference is the difference of the two means shown."""
    comparisons = {}
    if len(best) >= 2:
        a, b = best.iloc[0], best.iloc[1]
        comparisons["architectures"] = dict(winner=a, runner_up=b, **compare_runs(run_scores(df, a), run_scores(df, b)))
    top_two = best_from_selection(configs, select_configs(df, 2, metric.column))
    for arch, grp in top_two.groupby("architecture", sort=True):   # in rank order within each architecture
        if len(grp) >= 2:
            a, b = grp.iloc[0], grp.iloc[1]
            comparisons[arch] = dict(winner=a, runner_up=b, **compare_runs(run_scores(df, a), run_scores(df, b)))
    return comparisons


def overfitting(best: pd.DataFrame) -> dict:
    """architecture -> the overfitting gap of its selected configuration, and whether it is flagged."""
    out = {}
    for _, row in best.iterrows():
        gap, train = row["overfitting_gap"], row["final_train_loss"]
        rel = gap / train if finite(gap) and finite(train) and train > 0 else np.nan
        out[row["architecture"]] = dict(gap=gap, relative=rel, flag=bool(finite(rel) and rel > OVERFIT_RELATIVE_GAP),
                                        epochs_to_best=row["epochs_to_best"], epochs_run=row["epochs_run"])
    return out


def no_model_learned(overall: Optional[pd.Series], soft: bool, n_ok: int, n_deg: int) -> Optional[bool]:
    """True when every successful run is degenerate or the best score does not clearly beat the baseline."""
    if soft or overall is None:
        return None
    base = overall["baseline"]
    beats = finite(base) and overall["score_mean"] >= required_iou(base)
    return bool(n_ok and (n_deg == n_ok or not beats))


def analyze(df: pd.DataFrame, baseline: Optional[pd.DataFrame] = None, sesoi: float = DEFAULT_SESOI,
            plan_configs: Optional[list] = None) -> StudyAnalysis:
    """All numbers the figures and reports use, from a normalized summary DataFrame (and an optional
    baseline study's summary; sesoi: the smallest test IoU difference between architectures that matters;
    plan_configs: the confirmation plan's ranked configurations, else the grid's selection ranks them)."""
    df, confirm = split_stages(df)
    # a grid without a single success (its cells removed, or all failed) still has a headline metric when
    # the confirmation stage has runs: theirs, not the "soft" fallback of an empty table
    metric = choose_metric(df if df["success"].any() or confirm.empty else pd.concat([df, confirm]))
    df = add_score(df, metric)
    ok = df[df["success"] & df["score"].notna()].copy()
    counted = counted_runs(df).assign(score=lambda d: d["outcome"])
    configs = aggregate_configs(df)
    selection = select_configs(df, 1, metric.column)
    best = best_from_selection(configs, selection)
    n_ok = int(df["success"].sum())
    n_deg = int(df.loc[df["success"], "degenerate"].sum())
    seeds = configs["n_scored"].max() if len(configs) else 0
    soft = metric.kind == "soft"
    overall = best.iloc[0] if len(best) else None   # select_configs's order: the highest selected score first
    return StudyAnalysis(
        metric=metric, df=df, ok=ok, counted=counted, configs=configs, selection=selection, best=best,
        stable=most_stable_configs(configs), counts=df["status"].value_counts().to_dict(), n_rows=len(df),
        n_ok=n_ok, n_degenerate=n_deg, n_finished=int(df["status"].isin(STATUSES).sum()),
        has_seeds=bool(seeds and seeds >= 2), soft_only=soft, overall_best=overall,
        no_model_learned=no_model_learned(overall, soft, n_ok, n_deg),
        comparisons=winner_comparisons(df, configs, best, metric),
        edges={row["architecture"]: edge_notes(df, row) for _, row in best.iterrows()},
        overfitting=overfitting(best),
        effects=factor_effects(counted, "score"),
        stability_effects=factor_effects(ok[ok["stability"].notna()], "stability"),
        anova={f: one_way_anova(counted, f) for f in FACTORS},
        two_way={arch: factorial_anova(counted[counted["architecture"] == arch], ["learning_rate", "batch_size"])
                 for arch in sorted(counted["architecture"].unique())},
        three_way=factorial_anova(counted, ["architecture", "learning_rate", "batch_size"]),
        tukey=tukey_architectures(counted),
        correlation=correlation_matrix(ok),
        baseline=baseline_comparison(df, best, baseline) if baseline is not None else None,
        selected_on=SELECTED_ON[metric.kind],
        confirm_df=confirm,
        confirmation=compare_architectures(confirm, pd.DataFrame(plan_configs) if plan_configs else selection, sesoi)
        if len(confirm) else None)
