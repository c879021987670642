"""Statistics and checks on a summary DataFrame (see mitoseg.summary.load_summary): no file I/O here.

Every function returns plain dicts / DataFrames whose missing values are NaN or None, and a
`reason` string in words whenever a test cannot be computed. `analyze(df)` runs everything the
report needs and returns one dict.
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats as sps

from .checks import degenerate_reason, required_iou

FACTORS = {"learning_rate": "learning rate", "batch_size": "batch size", "architecture": "architecture"}
CONFIG_KEYS = ["architecture", "learning_rate", "batch_size"]
ALPHA = 0.05
OVERFIT_RELATIVE_GAP = 0.2   # final val loss more than 20 % above final train loss -> "signs of overfitting"
CORRELATION_METRICS = ["score", "best_val_iou", "best_val_jaccard", "test_iou", "final_val_loss", "final_train_loss",
                       "overfitting_gap", "val_loss_stability", "epochs_to_best", "training_time_s"]


@dataclass(frozen=True)
class Metric:
    column: str             # summary column used as the headline score
    label: str              # words for the report
    baseline_column: Optional[str]   # all-foreground IoU on the same slices, or None
    kind: str               # "test" | "val" | "soft"
    note: str               # why this metric was chosen


def finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def choose_metric(df: pd.DataFrame) -> Metric:
    """Thresholded validation IoU whenever the summary has it (selection and every ranking use it;
    test scores are only shown); test IoU only for a summary without validation IoU; else soft Jaccard."""
    ok = df[df["success"]]
    n_test = int(ok["test_iou"].notna().sum())
    if df["best_val_iou"].notna().any():
        note = "thresholded validation IoU of the best epoch; every selection and ranking uses it"
        if n_test:
            note += (f"; held-out test IoU ({n_test} of {len(ok)} successful cells) is shown for the selected "
                     f"configurations and per cell, never used to select")
        return Metric("best_val_iou", "validation IoU (threshold 0.5)", "all_foreground_jaccard", "val", note)
    if df["test_iou"].notna().any():
        return Metric("test_iou", "test IoU (threshold 0.5, held-out slices)", "test_all_foreground_jaccard", "test",
                      f"only test scores are present ({n_test} cells)")
    return Metric("best_val_jaccard", "soft validation Jaccard", None, "soft",
                  "the summary holds only soft (probability) Jaccard scores")


def add_score(df: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """Columns score, baseline (all-foreground IoU on the same slices) and stability; degenerate
    recomputed against the headline metric's baseline when that is the test set."""
    df = df.copy()
    df["score"] = df[metric.column].astype(float)
    df["baseline"] = df[metric.baseline_column].astype(float) if metric.baseline_column else np.nan
    df["stability"] = df["val_loss_stability"].astype(float)
    if metric.kind == "test":
        reasons = [degenerate_reason(s, b, None) if ok else None
                   for ok, s, b in zip(df["success"], df["score"], df["baseline"])]
        val_deg = df["degenerate"].astype(bool)
        df["degenerate"] = [bool(r) or bool(v) for r, v in zip(reasons, val_deg)]
        df["degenerate_reason"] = [r or v for r, v in zip(reasons, df["degenerate_reason"])]
    return df


# --- aggregation ---------------------------------------------------------------------------------
def _sem(values) -> float:
    values = np.asarray([v for v in values if finite(v)], dtype=float)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) >= 2 else np.nan


def aggregate_configs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (architecture, learning rate, batch size): runs, successes, score mean/std/sem over
    successful seeds, mean stability, the all-foreground baseline, statuses and the best run."""
    rows = []
    placed = df.dropna(subset=["learning_rate", "batch_size"])
    for (arch, lr, bs), grp in placed.groupby(CONFIG_KEYS, sort=True):
        ok = grp[grp["success"] & grp["score"].notna()]
        scores = ok["score"].to_numpy(float)
        best_run = ok.loc[ok["score"].idxmax()] if len(ok) else None
        statuses = grp["status"].value_counts()
        rows.append(dict(
            architecture=arch, learning_rate=float(lr), batch_size=int(bs), n_runs=len(grp), n_ok=len(ok),
            score_mean=float(scores.mean()) if len(scores) else np.nan,
            score_std=float(scores.std(ddof=1)) if len(scores) >= 2 else np.nan,
            score_sem=_sem(scores),
            stability_mean=float(ok["stability"].mean()) if ok["stability"].notna().any() else np.nan,
            baseline=float(grp["baseline"].mean()) if grp["baseline"].notna().any() else np.nan,
            degenerate=bool(len(ok)) and bool(ok["degenerate"].all()),
            n_degenerate=int(ok["degenerate"].sum()),
            status_text=", ".join(f"{n} {s}" for s, n in statuses.items()),
            overfitting_gap=float(ok["overfitting_gap"].mean()) if ok["overfitting_gap"].notna().any() else np.nan,
            final_train_loss=float(ok["final_train_loss"].mean()) if ok["final_train_loss"].notna().any() else np.nan,
            epochs_to_best=float(ok["epochs_to_best"].mean()) if ok["epochs_to_best"].notna().any() else np.nan,
            epochs_run=float(ok["epochs_run"].mean()) if ok["epochs_run"].notna().any() else np.nan,
            best_run=None if best_run is None else best_run["experiment_id"],
            best_run_dir=None if best_run is None else best_run["exp_dir"],
        ))
    cols = ["architecture", "learning_rate", "batch_size", "n_runs", "n_ok", "score_mean", "score_std", "score_sem",
            "stability_mean", "baseline", "degenerate", "n_degenerate", "status_text", "overfitting_gap",
            "final_train_loss", "epochs_to_best", "epochs_run", "best_run", "best_run_dir"]
    return pd.DataFrame(rows, columns=cols)


SELECTION_COLUMN = "best_val_iou"
SELECTION_COLUMNS = ["architecture", "learning_rate", "batch_size", "rank", "n_runs", "val_iou_mean", "val_iou_std",
                     "val_iou_sem", "test_iou_mean", "test_iou_std", "n_test", "degenerate", "best_run", "best_run_dir",
                     "seeds"]


def select_configs(df: pd.DataFrame, top: int = 1, column: str = SELECTION_COLUMN,
                   stage: Optional[str] = "grid") -> pd.DataFrame:
    """THE rule for "best" (the report, the figures, the confirmation stage and predict.py call it).

    Per architecture, the `top` configurations (learning rate, batch size) with the highest mean
    `column` (validation IoU) over their successful, non-degenerate runs of `stage` ("grid" by default;
    None = every row). An architecture none of whose runs learned is ranked on its degenerate runs and
    flagged `degenerate`. Test scores of the same runs are carried along for display, never used.
    Ties: more runs first, then the smaller learning rate and batch size."""
    rows = df if stage is None or "stage" not in df.columns else df[df["stage"] == stage]
    rows = rows[rows["success"] & rows[column].notna()].dropna(subset=["learning_rate", "batch_size"])
    out = []
    for arch, runs in rows.groupby("architecture", sort=True):
        learned = runs[~runs["degenerate"].astype(bool)]
        use = learned if len(learned) else runs
        ranked = []
        for (lr, bs), grp in use.groupby(["learning_rate", "batch_size"], sort=True):
            val = grp[column].to_numpy(float)
            test = grp["test_iou"].dropna().to_numpy(float) if "test_iou" in grp else np.array([])
            best_run = grp.loc[grp[column].idxmax()]
            ranked.append(dict(
                architecture=arch, learning_rate=float(lr), batch_size=int(bs), n_runs=len(grp),
                val_iou_mean=float(val.mean()), val_iou_std=float(val.std(ddof=1)) if len(val) >= 2 else np.nan,
                val_iou_sem=_sem(val), test_iou_mean=float(test.mean()) if len(test) else np.nan,
                test_iou_std=float(test.std(ddof=1)) if len(test) >= 2 else np.nan, n_test=len(test),
                degenerate=not len(learned), best_run=best_run["experiment_id"], best_run_dir=best_run["exp_dir"],
                seeds=sorted(int(x) for x in grp["seed"].dropna()) if "seed" in grp else []))
        ranked.sort(key=lambda r: (-r["val_iou_mean"], -r["n_runs"], r["learning_rate"], r["batch_size"]))
        for rank, r in enumerate(ranked[:max(1, int(top))], start=1):
            out.append(dict(r, rank=rank))
    table = pd.DataFrame(out, columns=SELECTION_COLUMNS)
    return table.sort_values(["rank", "val_iou_mean"], ascending=[True, False]).reset_index(drop=True)


def best_from_selection(configs: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """The aggregate_configs rows of the selected configurations (in selection order), their score
    columns replaced by the selection's (non-degenerate runs), with the test scores beside them."""
    rows = []
    for _, sel in selection.iterrows():
        m = ((configs["architecture"] == sel["architecture"]) & np.isclose(configs["learning_rate"], sel["learning_rate"])
             & (configs["batch_size"] == sel["batch_size"]))
        row = configs[m].iloc[0].to_dict()
        row.update(score_mean=sel["val_iou_mean"], score_std=sel["val_iou_std"], score_sem=sel["val_iou_sem"],
                   n_ok=sel["n_runs"], degenerate=sel["degenerate"], best_run=sel["best_run"],
                   best_run_dir=sel["best_run_dir"], test_iou_mean=sel["test_iou_mean"],
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


# --- tests ---------------------------------------------------------------------------------------
def eta_squared(values, groups) -> float:
    """SS_between / SS_total by hand."""
    values = np.asarray(values, dtype=float)
    groups = np.asarray(groups)
    grand = values.mean()
    ss_total = float(((values - grand) ** 2).sum())
    ss_between = float(sum(len(values[groups == g]) * (values[groups == g].mean() - grand) ** 2
                           for g in pd.unique(groups)))
    return ss_between / ss_total if ss_total > 0 else np.nan


def one_way_anova(ok: pd.DataFrame, factor: str, value: str = "score") -> dict:
    sub = ok[ok[value].notna() & ok[factor].notna()]
    groups = [g[value].to_numpy(float) for _, g in sub.groupby(factor)]
    name = FACTORS.get(factor, factor)
    res = dict(factor=factor, name=name, k=len(groups), n=len(sub), F=np.nan, p=np.nan, eta_sq=np.nan,
               df_between=len(groups) - 1, df_within=len(sub) - len(groups), reason=None)
    if len(groups) < 2:
        res["reason"] = f"only one {name} level has successful runs" if groups else f"no successful runs"
    elif len(sub) - len(groups) < 1:
        res["reason"] = (f"too few observations ({len(sub)} runs in {len(groups)} {name} levels: "
                         f"no within-group variation to test against)")
    elif float(np.var(sub[value].to_numpy(float))) == 0.0:
        res["reason"] = "all scores are identical"
    elif all(float(np.var(g)) == 0.0 for g in groups):
        res["reason"] = "no variation within any level (every level has identical scores), so F is undefined"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f, p = sps.f_oneway(*groups)
        res.update(F=float(f), p=float(p), eta_sq=eta_squared(sub[value], sub[factor]))
    return res


def factorial_anova(ok: pd.DataFrame, factors: list, value: str = "score") -> dict:
    """ANOVA with all interactions (statsmodels ols + anova_lm, type II) when every combination of the
    factors' levels has at least 2 successful runs; else a reason in words."""
    names = " x ".join(FACTORS.get(f, f) for f in factors)
    res = dict(factors=factors, name=names, table=None, reason=None)
    sub = ok[ok[value].notna()].dropna(subset=factors)
    single = [FACTORS.get(f, f) for f in factors if sub[f].nunique() < 2]
    if single:
        res["reason"] = f"only one level of {', '.join(single)} among successful runs"
        return res
    counts = sub.groupby(factors).size()
    n_combos = int(np.prod([sub[f].nunique() for f in factors]))
    if len(counts) < n_combos or counts.min() < 2:
        have = int((counts >= 2).sum())
        res["reason"] = (f"needs at least 2 successful runs in each of the {n_combos} combinations; "
                         f"{have} have that (repeat cells with more seeds to test interactions)")
        return res
    try:
        from statsmodels.formula.api import ols
        from statsmodels.stats.anova import anova_lm
        data = pd.DataFrame({"y": sub[value].astype(float)})
        terms = []
        for i, f in enumerate(factors):
            data[f"f{i}"] = sub[f].astype(str).to_numpy()
            terms.append(f"C(f{i})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ols("y ~ " + " * ".join(terms), data=data).fit()
            table = anova_lm(model, typ=2)
    except Exception as err:  # noqa: BLE001 - statsmodels raises many kinds; report in words
        res["reason"] = f"statsmodels could not fit the model ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        return res
    rename = {f"C(f{i})": FACTORS.get(f, f) for i, f in enumerate(factors)}
    rows = []
    for term, r in table.iterrows():
        label = " x ".join(rename.get(t, t) for t in str(term).split(":"))
        rows.append(dict(source=label, df=float(r["df"]), sum_sq=float(r["sum_sq"]),
                         F=float(r["F"]) if finite(r.get("F")) else np.nan,
                         p=float(r["PR(>F)"]) if finite(r.get("PR(>F)")) else np.nan))
    res["table"] = pd.DataFrame(rows)
    if res["table"].loc[res["table"]["source"] != "Residual", "F"].isna().all():
        res["reason"] = "no residual variation (seeds gave identical scores), so F is undefined"
        res["table"] = None
    return res


def tukey_architectures(ok: pd.DataFrame, value: str = "score") -> dict:
    sub = ok[ok[value].notna()]
    res = dict(table=None, reason=None)
    counts = sub.groupby("architecture").size()
    if len(counts) < 2:
        res["reason"] = "only one architecture has successful runs"
        return res
    if counts.min() < 2:
        res["reason"] = "needs at least 2 successful runs per architecture"
        return res
    if float(sub[value].var(ddof=1)) == 0 or (sub.groupby("architecture")[value].var(ddof=1).fillna(0) == 0).all():
        res["reason"] = "no variation within architectures, so the test is undefined"
        return res
    from statsmodels.stats.multicomp import pairwise_tukeyhsd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = pairwise_tukeyhsd(sub[value].astype(float).to_numpy(), sub["architecture"].astype(str).to_numpy(),
                              alpha=ALPHA)
    # TukeyHSDResults' public attributes; pairs in the order of its summary table (i < j over groupsunique)
    names = [str(g) for g in t.groupsunique]
    pairs = list(itertools.combinations(range(len(names)), 2))
    confint = np.asarray(t.confint, float)
    res["table"] = pd.DataFrame(dict(group1=[names[i] for i, _ in pairs], group2=[names[j] for _, j in pairs],
                                     meandiff=np.asarray(t.meandiffs, float), p_adj=np.asarray(t.pvalues, float),
                                     lower=confint[:, 0], upper=confint[:, 1],
                                     reject=np.asarray(t.reject, bool)))
    return res


def correlation_matrix(ok: pd.DataFrame) -> dict:
    cols = [c for c in dict.fromkeys(CORRELATION_METRICS) if c in ok.columns]
    usable = [c for c in cols if ok[c].notna().sum() >= 3
              and ok[c].std(ddof=0) > 1e-9 * max(1.0, float(ok[c].abs().max()))]
    # drop exact duplicates of the headline score (score is a copy of one metric column)
    usable = [c for c in usable if c == "score" or not ok[c].equals(ok["score"])]
    if len(ok) < 3 or len(usable) < 2:
        return dict(table=None, reason=f"needs at least 3 successful runs and 2 varying metrics "
                                       f"({len(ok)} runs, {len(usable)} varying metrics)")
    return dict(table=ok[usable].astype(float).corr(method="pearson", min_periods=3), reason=None)


def compare_runs(a: np.ndarray, b: np.ndarray) -> dict:
    """Is sample a (the winner) above sample b beyond run-to-run noise? Welch t-test when both have >= 2."""
    a = np.asarray([x for x in a if finite(x)], float)
    b = np.asarray([x for x in b if finite(x)], float)
    res = dict(n_a=len(a), n_b=len(b), diff=float(a.mean() - b.mean()) if len(a) and len(b) else np.nan,
               p=np.nan, clear=None, reason=None)
    if len(a) < 2 or len(b) < 2:
        res["reason"] = "one run per configuration, so run-to-run noise is unknown"
    elif a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        res["reason"] = "the seeds gave identical scores, so noise cannot be estimated"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, p = sps.ttest_ind(a, b, equal_var=False)
        res.update(p=float(p), clear=bool(p < ALPHA and res["diff"] > 0))
    return res


def _runs_of(df: pd.DataFrame, cfg) -> np.ndarray:
    m = ((df["architecture"] == cfg["architecture"]) & np.isclose(df["learning_rate"], cfg["learning_rate"])
         & (df["batch_size"] == cfg["batch_size"]) & df["success"])
    return df.loc[m, "score"].to_numpy(float)


def edge_notes(df: pd.DataFrame, cfg) -> list:
    """Sentences for a best configuration at the edge of the grid."""
    notes = []
    for col, name in (("learning_rate", "learning rate"), ("batch_size", "batch size")):
        levels = sorted(df.loc[df["architecture"] == cfg["architecture"], col].dropna().unique())
        v = cfg[col]
        if len(levels) < 2:
            notes.append(f"only one {name} ({v:g}) was tried")
        elif len(levels) >= 2 and math.isclose(v, levels[0]):
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
        cur_scores = _runs_of(cu, cfg)
        cur_stab = cu.loc[(cu["architecture"] == arch) & np.isclose(cu["learning_rate"], cfg["learning_rate"])
                          & (cu["batch_size"] == cfg["batch_size"]) & cu["success"], "stability"]
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


# --- everything ----------------------------------------------------------------------------------
def analyze(df: pd.DataFrame, baseline: Optional[pd.DataFrame] = None) -> dict:
    """All numbers the figures and reports use, from a normalized summary DataFrame. The grid rows
    (stage "grid") are selected on and tested; the confirmation rows go to mitoseg.comparison."""
    from .comparison import compare_architectures
    confirm = df[df["stage"] == "confirm"] if "stage" in df.columns else df.iloc[:0]
    df = df[df["stage"] != "confirm"] if "stage" in df.columns else df
    if df.empty:
        from .summary import SummaryError
        raise SummaryError("the summary has confirmation rows only (stage confirm); the grid's rows are needed "
                           "to select on")
    metric = choose_metric(df)
    df = add_score(df, metric)
    ok = df[df["success"] & df["score"].notna()].copy()
    configs = aggregate_configs(df)
    selection = select_configs(df, 1, metric.column)
    best = best_from_selection(configs, selection)
    stable = most_stable_configs(configs)
    counts = df["status"].value_counts().to_dict()
    n = len(df)
    n_ok = int(df["success"].sum())
    n_deg = int(df.loc[df["success"], "degenerate"].sum())
    out = dict(metric=metric, df=df, ok=ok, configs=configs, best=best, stable=stable, counts=counts,
               n_rows=n, n_ok=n_ok, n_degenerate=n_deg, n_finished=int(df["status"].isin(
                   ["ok", "diverged", "failed", "interrupted"]).sum()))
    seeds = configs["n_ok"].max() if len(configs) else 0
    out["has_seeds"] = bool(seeds and seeds >= 2)
    # degenerate verdict on the headline metric
    soft = metric.kind == "soft"
    out["soft_only"] = soft
    overall = best.sort_values("score_mean", ascending=False).iloc[0] if len(best) else None
    out["overall_best"] = overall
    if soft or overall is None:
        out["no_model_learned"] = None
    else:
        base = overall["baseline"]
        beats = finite(base) and overall["score_mean"] >= required_iou(base)
        out["no_model_learned"] = bool(n_ok and (n_deg == n_ok or not beats))
    # winner vs runner-up: across architectures (best config of each) and, per architecture, between configs
    comparisons = {}
    if len(best) >= 2:
        a, b = best.iloc[0], best.iloc[1]
        comparisons["architectures"] = dict(winner=a, runner_up=b, **compare_runs(_runs_of(df, a), _runs_of(df, b)))
    for arch, grp in configs[configs["score_mean"].notna()].groupby("architecture"):
        grp = grp.sort_values("score_mean", ascending=False)
        if len(grp) >= 2:
            a, b = grp.iloc[0], grp.iloc[1]
            comparisons[arch] = dict(winner=a, runner_up=b, **compare_runs(_runs_of(df, a), _runs_of(df, b)))
    out["comparisons"] = comparisons
    out["edges"] = {row["architecture"]: edge_notes(df, row) for _, row in best.iterrows()}
    out["overfitting"] = {}
    for _, row in best.iterrows():
        gap, train = row["overfitting_gap"], row["final_train_loss"]
        rel = gap / train if finite(gap) and finite(train) and train > 0 else np.nan
        out["overfitting"][row["architecture"]] = dict(gap=gap, relative=rel,
                                                       flag=bool(finite(rel) and rel > OVERFIT_RELATIVE_GAP),
                                                       epochs_to_best=row["epochs_to_best"], epochs_run=row["epochs_run"])
    out["effects"] = factor_effects(ok, "score")
    out["stability_effects"] = factor_effects(ok[ok["stability"].notna()], "stability")
    out["anova"] = {f: one_way_anova(ok, f) for f in FACTORS}
    out["two_way"] = {arch: factorial_anova(ok[ok["architecture"] == arch], ["learning_rate", "batch_size"])
                      for arch in sorted(ok["architecture"].unique())}
    out["three_way"] = factorial_anova(ok, ["architecture", "learning_rate", "batch_size"])
    out["tukey"] = tukey_architectures(ok)
    out["correlation"] = correlation_matrix(ok)
    out["baseline"] = baseline_comparison(df, best, baseline) if baseline is not None else None
    out["selection"] = selection
    out["selected_on"] = {"val": "validation", "test": "test", "soft": "soft validation Jaccard"}[metric.kind]
    out["confirm_df"] = confirm
    out["confirmation"] = compare_architectures(confirm) if len(confirm) else None
    return out
