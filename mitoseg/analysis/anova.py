"""The significance tests of the analysis on the scores of the runs that count (mitoseg.analysis.stats.counted_runs;
the correlations: the successful runs). Exploratory: the grid selects on the same scores. No file I/O here.

One-way ANOVA per factor (scipy), factorial ANOVA with interactions and Tukey HSD between the
architectures (statsmodels), the Pearson correlation of the metrics, and the Welch t-test of a
winner against its runner-up. Each test returns a plain dict whose `reason` says in words why it
could not be computed (then its numbers are NaN or None).
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from mitoseg.core.errors import error_line
from mitoseg.core.scores import finite
from mitoseg.analysis.stats import FACTORS

ALPHA = 0.05
CORRELATION_METRICS = ["score", "best_val_iou", "best_val_jaccard", "test_iou", "final_val_loss", "final_train_loss",
                       "overfitting_gap", "val_loss_stability", "epochs_to_best", "training_time_s"]


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
        res["reason"] = f"only one {name} level has runs that count" if groups else "no runs that count"
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
    factors' levels has at least 2 runs; else a reason in words."""
    names = " x ".join(FACTORS.get(f, f) for f in factors)
    res = dict(factors=factors, name=names, table=None, reason=None)
    sub = ok[ok[value].notna()].dropna(subset=factors)
    single = [FACTORS.get(f, f) for f in factors if sub[f].nunique() < 2]
    if single:
        res["reason"] = f"only one level of {', '.join(single)} among the runs that count"
        return res
    counts = sub.groupby(factors).size()
    n_combos = int(np.prod([sub[f].nunique() for f in factors]))
    if len(counts) < n_combos or counts.min() < 2:
        have = int((counts >= 2).sum())
        res["reason"] = (f"needs at least 2 runs that count in each of the {n_combos} combinations; "
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
        res["reason"] = f"statsmodels could not fit the model ({error_line(err, 160)})"
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
        res["reason"] = "only one architecture has runs that count"
        return res
    if counts.min() < 2:
        res["reason"] = "needs at least 2 runs that count per architecture"
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
