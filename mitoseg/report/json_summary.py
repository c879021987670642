"""analysis_summary.json: the machine-readable numbers of a StudyAnalysis (mitoseg.analysis.study_analysis).

Every value is plain JSON: DataFrames become lists of records, numpy numbers Python numbers, and
a missing or infinite number null.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional

import pandas as pd

from mitoseg.report.confirmation import verdict
from mitoseg.report.formats import cfg_text
from mitoseg.core.results import json_clean
from mitoseg.analysis.stats import FACTORS
from mitoseg.core.status import DIVERGED, FAILED
from mitoseg.analysis.study_analysis import StudyAnalysis
from mitoseg.core.version import version_info

CONFIG_COLUMNS = ["architecture", "learning_rate", "batch_size", "n_runs", "n_ok", "n_scored", "n_diverged",
                  "score_mean", "score_std", "score_sem", "stability_mean", "baseline", "degenerate", "best_run"]
EXPLORATORY = ("exploratory: the grid's configurations are selected on the same scores and these p-values are not "
               "adjusted across tests; the confirmation runs compare the architectures")
PAIR_FIELDS = ("a", "b", "decision", "diff_mean", "ci_low", "ci_high", "ci_level", "p_adjusted", "adjustment",
               "n_pairs", "verdict", "p", "n_a", "n_b", "mean_a", "mean_b", "significant", "sesoi", "covers", "folds",
               "fold_differences", "fold_sd", "pooled_sd", "seed_df", "min_detectable_difference", "mdd_range",
               "runs_needed", "reason")


MDD_METHOD = ("the decision rule simulated (mitoseg.analysis.decision.simulated_noise: normal approximation, variances drawn "
              "on their degrees of freedom); the largest over the pairs")


def _plain(x):
    """A table as records, a Series as a dict, a path as text; anything else as it is."""
    if isinstance(x, pd.DataFrame):
        return x.to_dict(orient="records")
    if isinstance(x, pd.Series):
        return x.to_dict()
    return str(x) if isinstance(x, Path) else x


def jsonable(x):
    """x with every container, table and number turned into plain JSON values (NaN -> null:
    mitoseg.core.results.json_clean, the one cleaner)."""
    return json_clean(x, _plain)


def summary_json(res: StudyAnalysis, source: str, expected: int, figures: dict) -> dict:
    """The content of analysis_summary.json (figures: file name -> Path written, or why not)."""
    m = res.metric
    conf = res.confirmation
    out = dict(
        source=source, generated=_dt.datetime.now().isoformat(timespec="seconds"), code=version_info(),
        metric=dict(column=m.column, label=m.label, kind=m.kind, note=m.note),
        cells=dict(expected=expected, rows=res.n_rows, finished=res.n_finished, successful=res.n_ok,
                   by_status=res.counts),
        flags=flags_json(res),
        best_configurations=None if res.soft_only else res.best[CONFIG_COLUMNS],
        most_stable_configurations=res.stable[CONFIG_COLUMNS].assign(   # unknown without a thresholded IoU
            degenerate=lambda t: None if res.soft_only else t["degenerate"]),
        winner_vs_runner_up=comparisons_json(res.comparisons),
        effects={f: res.effects[f] for f in FACTORS},
        stability_effects={f: res.stability_effects[f] for f in FACTORS},
        tests=tests_json(res),
        baseline_comparison=res.baseline,
        best_per_architecture=best_per_architecture_json(res),
        architecture_comparison=comparison_json(conf),
        min_detectable_difference=None if conf is None else conf["min_detectable_difference"],
        confirmation=confirmation_json(conf),
        ensemble=res.ensemble,
        figures={k: (str(v.name) if isinstance(v, Path) else f"not produced: {v}") for k, v in figures.items()},
    )
    return jsonable(out)


def flags_json(res: StudyAnalysis) -> dict:
    """The warnings of the analysis: what a reader must know before trusting a ranking."""
    return dict(
        no_model_learned=res.no_model_learned, soft_only=res.soft_only, has_seeds=res.has_seeds,
        degenerate_cells=res.n_degenerate,
        degenerate_fraction_of_successful=(res.n_degenerate / res.n_ok) if res.n_ok else None,
        failed_fraction=res.counts.get(FAILED, 0) / res.n_rows if res.n_rows else None,
        diverged_fraction=res.counts.get(DIVERGED, 0) / res.n_rows if res.n_rows else None,
        edge_of_grid=res.edges, overfitting=res.overfitting)


def comparisons_json(comparisons: dict) -> dict:
    """Winner vs runner-up, across architectures and per architecture, with the configurations in words
    (exploratory, like every test of the grid)."""
    return {key: dict(winner=cfg_text(c["winner"]), runner_up=cfg_text(c["runner_up"]), difference=c["diff"],
                      n_winner=c["n_a"], n_runner_up=c["n_b"], p_welch=c["p"], beyond_noise=c["clear"],
                      reason=c["reason"], exploratory=True)
            for key, c in comparisons.items()}


def tests_json(res: StudyAnalysis) -> dict:
    """The ANOVAs, Tukey HSD and the correlation matrix."""
    def test_entry(r):
        return {k: r[k] for k in ("name", "F", "p", "eta_sq", "df_between", "df_within", "reason")}

    correlation = res.correlation
    return dict(
        note=EXPLORATORY,
        one_way_anova={f: test_entry(r) for f, r in res.anova.items()},
        two_way_anova={a: dict(table=r["table"], reason=r["reason"]) for a, r in res.two_way.items()},
        three_way_anova=dict(table=res.three_way["table"], reason=res.three_way["reason"]),
        tukey_architectures=res.tukey,
        correlation=dict(table=None if correlation["table"] is None else correlation["table"].to_dict(),
                         reason=correlation["reason"]))


def best_per_architecture_json(res: StudyAnalysis) -> list:
    """The selected configuration of each architecture, on `selected_on` ([] for a soft-only summary)."""
    if res.soft_only:
        return []
    kind = res.metric.kind
    out = []
    for _, r in res.selection.iterrows():
        val = (r["score_mean"], r["score_std"]) if kind == "val" else (None, None)
        test = (r["test_iou_mean"], r["test_iou_std"])
        out.append(dict(architecture=r["architecture"], learning_rate=r["learning_rate"],
                        batch_size=r["batch_size"], selected_on=res.selected_on, n_runs=r["n_runs"],
                        val_iou_mean=val[0], val_iou_std=val[1], test_iou_mean=test[0], test_iou_std=test[1],
                        n_test=r["n_test"], degenerate=r["degenerate"], n_degenerate=r["n_degenerate"],
                        n_diverged=r["n_diverged"], best_run=r["best_run"]))
    return out


def comparison_json(conf: Optional[dict]) -> list:
    """The pairwise comparisons of the confirmation runs ([] without confirmation runs)."""
    if conf is None:
        return []
    return [{k: verdict(p) if k == "verdict" else p[k] for k in PAIR_FIELDS} for p in conf["pairs"]]


def confirmation_json(conf: Optional[dict]) -> Optional[dict]:
    """The confirmation runs per architecture and their counts (None without confirmation runs)."""
    if conf is None:
        return None
    return dict(architectures=conf["arms"], reason=conf["reason"], notes=conf["notes"], alpha=conf["alpha"],
                power=conf["power"], sesoi=conf["sesoi"], n_pairs=conf["n_pairs"], runs=conf["n_rows"],
                by_status=conf["counts"], runs_needed=conf["runs_needed"],
                min_detectable_difference_method=MDD_METHOD)
