"""The headline metric, the per-configuration aggregates and THE selection rule, on a summary
DataFrame (see mitoseg.analysis.summary.load_summary): no file I/O here.

`counted_runs` is the one rule for which runs make a configuration's outcome, in both stages (every
finished run: a degenerate run with its own low score, a diverged run as not learned with
DIVERGED_SCORE). `select_configs` is where "best" is decided on those runs (the report, the
figures, the confirmation stage and predict.py all ask it); the other functions describe the grid (means per configuration, the
steadiest configuration, effects per factor level, edges of the grid, a baseline study). Missing
values are NaN or None, and a `reason` string says in words why something cannot be computed.
The significance tests are in mitoseg.analysis.anova; mitoseg.analysis.study_analysis.analyze runs everything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from mitoseg.core.scores import finite
from mitoseg.core.config import TrainConfig
from mitoseg.core.status import DIVERGED

FACTORS = {"learning_rate": "learning rate", "batch_size": "batch size", "architecture": "architecture"}
CONFIG_KEYS = ["architecture", "learning_rate", "batch_size"]


@dataclass(frozen=True)
class Metric:
    column: str             # summary column used as the headline score
    label: str              # words for the report
    baseline_column: Optional[str]   # all-foreground IoU on the same slices, or None
    kind: str               # "test" | "val" | "soft"
    note: str               # why this metric was chosen
    threshold: str = ""     # the probability threshold(s) of the thresholded scores, e.g. "0.5" (thresholds())


def thresholds(df: pd.DataFrame) -> str:
    """The recorded probability thresholds of the successful runs ("0.5", or "0.4, 0.5" for a summary that
    mixes them); a summary without them (an older CSV): TrainConfig's default, the one threshold before
    the setting existed."""
    ok = df[df["success"]]
    values = sorted({float(t) for t in ok["threshold"].dropna()}) if "threshold" in ok else []
    return ", ".join(f"{t:g}" for t in values or [TrainConfig.threshold])


def choose_metric(df: pd.DataFrame) -> Metric:
    """Thresholded validation IoU whenever the summary has it (selection and every ranking use it; test
    scores are then only shown); test IoU only for a summary without validation IoU (then test scores do
    select, and the report says the score is optimistic); else soft Jaccard."""
    ok = df[df["success"]]
    n_test = int(ok["test_iou"].notna().sum())
    at = thresholds(df)
    words = f"threshold{'s' * (',' in at)} {at}"
    if df["best_val_iou"].notna().any():
        note = "thresholded validation IoU of the best epoch; every selection and ranking uses it"
        if n_test:
            note += (f"; held-out test IoU ({n_test} of {len(ok)} successful cells) is shown for the selected "
                     f"configurations and per cell, never used to select")
        return Metric("best_val_iou", f"validation IoU ({words})", "all_foreground_jaccard", "val", note, at)
    if df["test_iou"].notna().any():
        return Metric("test_iou", f"test IoU ({words}, held-out slices)", "test_all_foreground_jaccard", "test",
                      f"only test scores are present ({n_test} cells)", at)
    return Metric("best_val_jaccard", "soft validation Jaccard", None, "soft",
                  "the summary holds only soft (probability) Jaccard scores")


def add_score(df: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """Columns score, baseline (all-foreground IoU on the same slices) and stability (the degenerate flag
    is the summary's: mitoseg.analysis.summary.normalize_summary decides it against the headline's baseline)."""
    df = df.copy()
    df["score"] = df[metric.column].astype(float)
    df["baseline"] = df[metric.baseline_column].astype(float) if metric.baseline_column else np.nan
    df["stability"] = df["val_loss_stability"].astype(float)
    return df


# --- the runs that count --------------------------------------------------------------------------
# A diverged run (NaN loss) finished without a model the pipeline evaluates: it counts as a run that
# did not learn, with IoU 0 (a NaN probability is above no threshold: no pixel is marked foreground).
DIVERGED_SCORE = 0.0


def counted_runs(df: pd.DataFrame, column: str = "score") -> pd.DataFrame:
    """THE rule for which runs make a configuration's outcome, in both stages: every finished run.

    An ok run counts with its own `column` score, a degenerate one too (failing to learn is an
    outcome of the configuration); a diverged run counts as not learned, scored DIVERGED_SCORE.
    Failed, interrupted, missing or unreadable cells have no outcome yet (they are rerun), and an ok
    run without a `column` score measured nothing. Returns those rows with `outcome` (the score that
    counts) and `learned` (False for a degenerate or diverged run)."""
    diverged = df["status"] == DIVERGED
    rows = df[(df["success"] & df[column].notna()) | diverged].copy()
    is_div = rows["status"] == DIVERGED
    rows["outcome"] = np.where(is_div, DIVERGED_SCORE, rows[column].astype(float))
    rows["learned"] = ~is_div & ~rows["degenerate"].astype(bool)
    return rows


# --- aggregation ---------------------------------------------------------------------------------
def _sem(values) -> float:
    values = np.asarray([v for v in values if finite(v)], dtype=float)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) >= 2 else np.nan


def aggregate_configs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (architecture, learning rate, batch size): runs, successes, the score's mean/std/sem
    over the runs that count (counted_runs: n_scored of them, diverged ones as DIVERGED_SCORE), mean
    stability and the other means over successful runs, the all-foreground baseline, statuses and the
    best run."""
    rows = []
    placed = df.dropna(subset=["learning_rate", "batch_size"])
    for (arch, lr, bs), grp in placed.groupby(CONFIG_KEYS, sort=True):
        ok = grp[grp["success"] & grp["score"].notna()]
        counted = counted_runs(grp)
        scores = counted["outcome"].to_numpy(float)
        best_run = ok.loc[ok["score"].idxmax()] if len(ok) else None
        statuses = grp["status"].value_counts()
        rows.append(dict(
            architecture=arch, learning_rate=float(lr), batch_size=int(bs), n_runs=len(grp), n_ok=len(ok),
            n_scored=len(counted), n_diverged=int((counted["status"] == DIVERGED).sum()),
            score_mean=float(scores.mean()) if len(scores) else np.nan,
            score_std=float(scores.std(ddof=1)) if len(scores) >= 2 else np.nan,
            score_sem=_sem(scores),
            stability_mean=float(ok["stability"].mean()) if ok["stability"].notna().any() else np.nan,
            baseline=float(grp["baseline"].mean()) if grp["baseline"].notna().any() else np.nan,
            degenerate=bool(len(counted)) and not counted["learned"].any(),
            n_degenerate=int(ok["degenerate"].sum()),
            status_text=", ".join(f"{n} {s}" for s, n in statuses.items()),
            overfitting_gap=float(ok["overfitting_gap"].mean()) if ok["overfitting_gap"].notna().any() else np.nan,
            final_train_loss=float(ok["final_train_loss"].mean()) if ok["final_train_loss"].notna().any() else np.nan,
            epochs_to_best=float(ok["epochs_to_best"].mean()) if ok["epochs_to_best"].notna().any() else np.nan,
            epochs_run=float(ok["epochs_run"].mean()) if ok["epochs_run"].notna().any() else np.nan,
            best_run=None if best_run is None else best_run["experiment_id"],
            best_run_dir=None if best_run is None else best_run["exp_dir"],
        ))
    cols = ["architecture", "learning_rate", "batch_size", "n_runs", "n_ok", "n_scored", "n_diverged", "score_mean",
            "score_std", "score_sem", "stability_mean", "baseline", "degenerate", "n_degenerate", "status_text",
            "overfitting_gap", "final_train_loss", "epochs_to_best", "epochs_run", "best_run", "best_run_dir"]
    return pd.DataFrame(rows, columns=cols)


SELECTION_COLUMN = "best_val_iou"
SELECTION_COLUMNS = ["architecture", "learning_rate", "batch_size", "rank", "n_runs", "score_mean", "score_std",
                     "score_sem", "test_iou_mean", "test_iou_std", "n_test", "degenerate", "n_degenerate",
                     "n_diverged", "best_run", "best_run_dir", "seeds"]


def _selection_row(arch, lr, bs, grp: pd.DataFrame, column: str) -> dict:
    """One configuration's counted runs (counted_runs of `column`) summarised for select_configs."""
    score = grp["outcome"].to_numpy(float)
    test = counted_runs(grp, "test_iou")["outcome"].to_numpy(float) if "test_iou" in grp else np.array([])
    scored = grp[grp[column].notna() & grp["success"]]
    best_run = scored.loc[scored[column].idxmax()] if len(scored) else grp.iloc[0]
    return dict(
        architecture=arch, learning_rate=float(lr), batch_size=int(bs), n_runs=len(grp),
        score_mean=float(score.mean()), score_std=float(score.std(ddof=1)) if len(score) >= 2 else np.nan,
        score_sem=_sem(score), test_iou_mean=float(test.mean()) if len(test) else np.nan,
        test_iou_std=float(test.std(ddof=1)) if len(test) >= 2 else np.nan, n_test=len(test),
        degenerate=not grp["learned"].any(), n_degenerate=int((grp["success"] & grp["degenerate"]).sum()),
        n_diverged=int((grp["status"] == DIVERGED).sum()), best_run=best_run["experiment_id"],
        best_run_dir=best_run["exp_dir"], seeds=sorted(int(x) for x in grp["seed"].dropna()) if "seed" in grp else [])


def select_configs(df: pd.DataFrame, top: int = 1, column: str = SELECTION_COLUMN,
                   stage: Optional[str] = "grid") -> pd.DataFrame:
    """THE rule for "best" (the report, the figures, the confirmation stage and predict.py call it).

    Per architecture, the `top` configurations (learning rate, batch size) with the highest mean
    `column` over the runs that count (counted_runs: every finished run of `stage`, "grid" by default,
    None = every row; a degenerate run with its own score, a diverged one as DIVERGED_SCORE):
    score_mean/score_std/score_sem are of `column`. `column` is validation IoU for the confirmation
    stage and predict.py; the analysis passes its headline metric (choose_metric), which is test IoU
    only for a summary without validation IoU and soft Jaccard for one with only soft scores.
    `degenerate`: no counted run of the configuration learned. Test scores of the same runs (counted by
    the same rule) are carried along (test_iou_*); they select only when `column` is test IoU.
    Ties: more runs first, then the smaller learning rate and batch size."""
    rows = df if stage is None or "stage" not in df.columns else df[df["stage"] == stage]
    rows = counted_runs(rows.dropna(subset=["learning_rate", "batch_size"]), column)
    out = []
    for arch, runs in rows.groupby("architecture", sort=True):
        ranked = [_selection_row(arch, lr, bs, grp, column)
                  for (lr, bs), grp in runs.groupby(["learning_rate", "batch_size"], sort=True)]
        ranked.sort(key=lambda r: (-r["score_mean"], -r["n_runs"], r["learning_rate"], r["batch_size"]))
        for rank, r in enumerate(ranked[:max(1, int(top))], start=1):
            out.append(dict(r, rank=rank))
    table = pd.DataFrame(out, columns=SELECTION_COLUMNS)
    return table.sort_values(["rank", "score_mean"], ascending=[True, False]).reset_index(drop=True)


def best_from_selection(configs: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """The aggregate_configs rows of the selected configurations (in selection order) with the
    selection's numbers (the same counted runs) and the test scores beside them; here `n_ok` is the
    number of runs behind score_mean (n_scored)."""
    rows = []
    for _, sel in selection.iterrows():
        row = configs[config_mask(configs, sel)].iloc[0].to_dict()
        row.update(score_mean=sel["score_mean"], score_std=sel["score_std"], score_sem=sel["score_sem"],
                   n_ok=sel["n_runs"], n_scored=sel["n_runs"], degenerate=sel["degenerate"],
                   best_run=sel["best_run"], best_run_dir=sel["best_run_dir"], test_iou_mean=sel["test_iou_mean"],
                   test_iou_std=sel["test_iou_std"], n_test=sel["n_test"], rank=sel["rank"])
        rows.append(row)
    cols = list(configs.columns) + ["test_iou_mean", "test_iou_std", "n_test", "rank"]
    return pd.DataFrame(rows, columns=cols)


def most_stable_configs(configs: pd.DataFrame) -> pd.DataFrame:
    """Per architecture, the configuration with the lowest mean val-loss stability (a description of
    the grid, not a selection: "best" is select_configs)."""
    usable = configs[configs["stability_mean"].notna()]
    if usable.empty:
        return usable
    idx = usable.sort_values(["stability_mean", "n_ok"], ascending=[True, False]).groupby("architecture", sort=False).head(1)
    return idx.sort_values("stability_mean").reset_index(drop=True)


def factor_effects(ok: pd.DataFrame, value: str = "score") -> dict:
    """factor -> DataFrame(level, mean, std, n) over successful runs."""
    out = {}
    for factor in FACTORS:
        sub = ok[ok[value].notna() & ok[factor].notna()]
        if sub.empty:
            out[factor] = pd.DataFrame(columns=["level", "mean", "std", "n"])
            continue
        g = sub.groupby(factor)[value]
        out[factor] = pd.DataFrame({"level": list(g.mean().index), "mean": g.mean().to_numpy(),
                                    "std": g.std(ddof=1).to_numpy(), "n": g.size().to_numpy()})
    return out


def config_mask(df: pd.DataFrame, cfg) -> pd.Series:
    """The rows of configuration cfg (architecture, learning rate, batch size)."""
    return ((df["architecture"] == cfg["architecture"]) & np.isclose(df["learning_rate"], cfg["learning_rate"])
            & (df["batch_size"] == cfg["batch_size"]))


def run_scores(df: pd.DataFrame, cfg) -> np.ndarray:
    """The scores of configuration cfg's runs that count (counted_runs: the runs behind its mean)."""
    return counted_runs(df[config_mask(df, cfg)])["outcome"].to_numpy(float)


def edge_notes(df: pd.DataFrame, cfg) -> list:
    """Sentences for a best configuration at the edge of the grid."""
    notes = []
    for col, name in (("learning_rate", "learning rate"), ("batch_size", "batch size")):
        levels = sorted(df.loc[df["architecture"] == cfg["architecture"], col].dropna().unique())
        v = cfg[col]
        if len(levels) < 2:
            notes.append(f"only one {name} ({v:g}) was tried")
        elif math.isclose(v, levels[0]):
            notes.append(f"the best {name} {v:g} is the smallest in the grid; the optimum may lie below it")
        elif math.isclose(v, levels[-1]):
            notes.append(f"the best {name} {v:g} is the largest in the grid; the optimum may lie above it")
    return notes


def baseline_comparison(current: pd.DataFrame, cur_best: pd.DataFrame, baseline: pd.DataFrame) -> dict:
    """Per architecture in both studies: score and stability of the baseline study's best configuration
    against this study's best configuration, on a metric both summaries have."""
    res = dict(rows=None, metric=None, reason=None)
    for col in ("best_val_iou", "best_val_jaccard"):
        if current[col].notna().any() and baseline[col].notna().any():
            res["metric"] = col
            break
    if res["metric"] is None:
        res["reason"] = "the two summaries share no score column (best_val_iou or best_val_jaccard)"
        return res
    col = res["metric"]
    bl = add_score(baseline, Metric(col, col, "all_foreground_jaccard" if col == "best_val_iou" else None,
                                    "val" if col == "best_val_iou" else "soft", ""))
    cu = add_score(current, Metric(col, col, None, "soft", ""))
    bl_best = best_from_selection(aggregate_configs(bl), select_configs(bl, 1, col, stage=None))
    rows = []
    for _, cfg in cur_best.iterrows():
        arch = cfg["architecture"]
        b = bl_best[bl_best["architecture"] == arch]
        if b.empty:
            continue
        b = b.iloc[0]
        cur_scores = run_scores(cu, cfg)
        cur_stab = cu.loc[config_mask(cu, cfg) & cu["success"], "stability"]
        c_score = float(np.nanmean(cur_scores)) if np.isfinite(cur_scores).any() else np.nan
        c_stab = float(cur_stab.mean()) if cur_stab.notna().any() else np.nan
        rows.append(dict(
            architecture=arch, baseline_lr=b["learning_rate"], baseline_bs=b["batch_size"], baseline_n=b["n_ok"],
            baseline_score=b["score_mean"], baseline_stability=b["stability_mean"],
            baseline_degenerate=bool(b["degenerate"]) if col == "best_val_iou" else None,
            lr=cfg["learning_rate"], bs=cfg["batch_size"], n=int(np.isfinite(cur_scores).sum()),
            score=c_score, stability=c_stab,
            score_factor=c_score / b["score_mean"] if finite(c_score) and finite(b["score_mean"]) and b["score_mean"] > 0 else np.nan,
            stability_factor=(b["stability_mean"] / c_stab if finite(c_stab) and finite(b["stability_mean"]) and c_stab > 0
                              else np.nan)))
    if not rows:
        res["reason"] = "no architecture has successful runs in both studies"
        return res
    res["rows"] = pd.DataFrame(rows)
    return res
