"""Which architecture, and how sure? The comparison of the confirmation runs (no file I/O here).

The confirmation stage (mitoseg/confirm.py) reruns each architecture's validation-selected
configuration with fresh seeds; these runs were used for nothing else, so their test scores are
an unbiased estimate. Per architecture: the mean test IoU with a 95 % t interval over seeds. Per
pair: the difference of the means with a Welch 95 % interval and a Welch t-test, the p-values
Holm-adjusted over the pairs, and a verdict. When every run has per-slice test scores on the same
slices, a bootstrap over seeds and test slices (slices resampled jointly for both architectures,
i.e. paired on slices) adds a second interval that also covers the choice of test slices.

Why the Welch interval leads: with 2-5 seeds per architecture a bootstrap over seeds can take only
a handful of distinct values and is too narrow; the t interval is exact for normal seed noise.
Every number comes from scipy / statsmodels (tested against them in tests/test_comparison.py).
"""
from __future__ import annotations

import itertools
import json
import math
import warnings
from typing import Optional

import numpy as np
import pandas as pd

from .anova import ALPHA
from .report_format import f3, fp
from .stats import config_mask, select_configs

POWER = 0.8
N_BOOTSTRAP = 4000
BOOTSTRAP_SEED = 0            # the bootstrap is reproducible: the same runs give the same interval
MIN_TARGET_DIFFERENCE = 0.005  # seeds-needed is quoted for at least half an IoU point (an observed 0.0001 would need millions)


def _finite(values) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def mean_ci(values, alpha: float = ALPHA) -> dict:
    """Mean, sample std, n and the (1 - alpha) t interval of the mean (statsmodels DescrStatsW)."""
    x = _finite(values)
    out = dict(n=len(x), mean=float(x.mean()) if len(x) else np.nan,
               std=float(x.std(ddof=1)) if len(x) >= 2 else np.nan, ci_low=np.nan, ci_high=np.nan)
    if len(x) >= 2:
        from statsmodels.stats.weightstats import DescrStatsW
        lo, hi = DescrStatsW(x).tconfint_mean(alpha=alpha)
        out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def pooled_sd(a, b) -> float:
    a, b = _finite(a), _finite(b)
    dof = len(a) + len(b) - 2
    if len(a) < 2 or len(b) < 2:
        return np.nan
    return math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / dof)


def welch(a, b, alpha: float = ALPHA) -> dict:
    """mean(a) - mean(b), its Welch (1 - alpha) interval (statsmodels CompareMeans) and the Welch
    t-test p-value (scipy); a reason instead when it cannot be computed."""
    a, b = _finite(a), _finite(b)
    out = dict(diff=float(a.mean() - b.mean()) if len(a) and len(b) else np.nan, ci_low=np.nan, ci_high=np.nan,
               p=np.nan, reason=None)
    if len(a) < 2 or len(b) < 2:
        out["reason"] = f"needs at least 2 runs of each (have {len(a)} and {len(b)})"
    elif a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        out["reason"] = "every seed gave the same score, so the noise cannot be estimated"
    else:
        from scipy import stats as sps
        from statsmodels.stats.weightstats import CompareMeans, DescrStatsW
        lo, hi = CompareMeans(DescrStatsW(a), DescrStatsW(b)).tconfint_diff(alpha=alpha, usevar="unequal")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = sps.ttest_ind(a, b, equal_var=False).pvalue
        out.update(ci_low=float(lo), ci_high=float(hi), p=float(p))
    return out


def holm(pvalues, alpha: float = ALPHA) -> list:
    """Holm-adjusted p-values (statsmodels multipletests); NaN stays NaN and is not counted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        from statsmodels.stats.multitest import multipletests
        out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return [float(v) for v in out]


def detectable_difference(n_a: int, n_b: int, sd: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true difference a two-sample t-test with these run counts finds with `power`
    (statsmodels TTestIndPower, in IoU units = Cohen's d x pooled sd)."""
    if n_a < 2 or n_b < 2 or not (sd >= 0):
        return np.nan
    from statsmodels.stats.power import TTestIndPower
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = TTestIndPower().solve_power(effect_size=None, nobs1=n_a, alpha=alpha, power=power, ratio=n_b / n_a)
    return float(np.ravel(d)[0]) * sd


def seeds_needed(difference: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> Optional[int]:
    """Runs per architecture a two-sample t-test needs to find `difference` with `power`."""
    if not (difference > 0) or not (sd > 0):
        return None
    from statsmodels.stats.power import TTestIndPower
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = TTestIndPower().solve_power(effect_size=difference / sd, nobs1=None, alpha=alpha, power=power, ratio=1.0)
    n = float(np.ravel(n)[0])
    return int(math.ceil(n)) if math.isfinite(n) else None


def slice_bootstrap(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA, n_boot: int = N_BOOTSTRAP,
                    seed: int = BOOTSTRAP_SEED) -> dict:
    """a, b: (runs, slices) per-slice test IoU on the same slices. Each resample draws runs of each
    architecture independently and one set of slices shared by both (paired on slices); the
    statistic is the difference of the mean per-slice IoU. Percentile interval."""
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.shape[0], (n_boot, a.shape[0]))
    ib = rng.integers(0, b.shape[0], (n_boot, b.shape[0]))
    js = rng.integers(0, a.shape[1], (n_boot, a.shape[1]))
    stat_a = a[ia[:, :, None], js[:, None, :]].mean(axis=(1, 2))
    stat_b = b[ib[:, :, None], js[:, None, :]].mean(axis=(1, 2))
    lo, hi = np.percentile(stat_a - stat_b, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return dict(diff=float(a.mean() - b.mean()), ci_low=float(lo), ci_high=float(hi), n_boot=n_boot,
                n_slices=int(a.shape[1]))


def _slice_matrix(runs: pd.DataFrame) -> Optional[tuple[list, np.ndarray]]:
    """(slice names, runs x slices IoU) when every run has per-slice scores on the same slices."""
    if "test_slice_iou" not in runs or runs["test_slice_iou"].isna().any() or not len(runs):
        return None
    try:
        maps = [json.loads(v) if isinstance(v, str) else dict(v) for v in runs["test_slice_iou"]]
    except (ValueError, TypeError):
        return None
    names = sorted(maps[0])
    if not names or any(sorted(m) != names for m in maps):
        return None
    mat = np.array([[m[n] for n in names] for m in maps], dtype=float)
    return (names, mat) if np.isfinite(mat).all() else None


# --- the comparison --------------------------------------------------------------------------------
def representatives(confirm: pd.DataFrame) -> pd.DataFrame:
    """Per architecture, the confirmed configuration that stands for it: the only one (--top 1), or
    with --top K the one with the best mean validation IoU over its confirmation runs (the one rule)."""
    rows = []
    for arch, grp in confirm.dropna(subset=["learning_rate", "batch_size"]).groupby("architecture", sort=True):
        configs = grp[["learning_rate", "batch_size"]].drop_duplicates()
        if len(configs) == 1:   # nothing to choose (also for a hand-made CSV without validation scores)
            rows.append(dict(architecture=arch, learning_rate=float(configs.iloc[0]["learning_rate"]),
                             batch_size=int(configs.iloc[0]["batch_size"])))
            continue
        chosen = select_configs(grp, top=1, stage=None)
        if len(chosen):
            rows.append(chosen.iloc[0][["architecture", "learning_rate", "batch_size"]].to_dict())
    return pd.DataFrame(rows, columns=["architecture", "learning_rate", "batch_size"])


def compare_architectures(confirm: pd.DataFrame, alpha: float = ALPHA, power: float = POWER) -> dict:
    """Everything the report says about the confirmation runs (rows of stage "confirm")."""
    res = dict(arms=[], pairs=[], min_detectable_difference=np.nan, mdd_detail=None, reason=None, alpha=alpha,
               power=power, n_rows=len(confirm), counts=confirm["status"].value_counts().to_dict())
    reps = representatives(confirm)
    arms = {}
    for _, cfg in reps.iterrows():
        runs = confirm[config_mask(confirm, cfg)]
        ok = runs[runs["success"] & runs["test_iou"].notna()]
        stats = mean_ci(ok["test_iou"], alpha)
        arms[cfg["architecture"]] = dict(
            architecture=cfg["architecture"], learning_rate=cfg["learning_rate"], batch_size=cfg["batch_size"],
            n_runs=len(runs), n_scored=stats["n"], n_not_ok=int((~runs["success"]).sum()),
            n_degenerate=int(ok["degenerate"].astype(bool).sum()), seeds=sorted(int(s) for s in ok["seed"].dropna()),
            test_iou_mean=stats["mean"], test_iou_std=stats["std"], ci_low=stats["ci_low"], ci_high=stats["ci_high"],
            val_iou_mean=float(ok["best_val_iou"].mean()) if ok["best_val_iou"].notna().any() else np.nan,
            scores=ok["test_iou"].to_numpy(float), slices=_slice_matrix(ok))
    scored = sorted((a for a in arms.values() if a["n_scored"]), key=lambda a: -a["test_iou_mean"])
    res["arms"] = [{k: v for k, v in a.items() if k not in ("scores", "slices")} for a in
                   sorted(arms.values(), key=lambda a: -a["test_iou_mean"] if a["n_scored"] else math.inf)]
    if len(confirm) and not confirm["test_iou"].notna().any():
        res["reason"] = ("the confirmation runs have no held-out test scores (give the data a testing.tif, or "
                         "--test-fraction)")
        return res
    if len(scored) < 2:
        res["reason"] = (f"{len(scored)} architecture(s) have confirmation runs with test scores; a comparison "
                         f"needs two")
        return res
    pairs = [_pair(a, b, alpha, power) for a, b in itertools.combinations(scored, 2)]
    for pair, p_adj in zip(pairs, holm([p["p"] for p in pairs], alpha)):
        pair["p_adjusted"] = p_adj
        pair["verdict"], pair["significant"] = _verdict(pair, alpha, power)
    res["pairs"] = pairs
    sds = [a["scores"] for a in scored if a["n_scored"] >= 2]
    n_min = min(a["n_scored"] for a in scored)
    if len(sds) == len(scored) and n_min >= 2:
        sd = math.sqrt(sum((len(x) - 1) * x.var(ddof=1) for x in sds) / sum(len(x) - 1 for x in sds))
        res["min_detectable_difference"] = detectable_difference(n_min, n_min, sd, alpha, power)
        res["mdd_detail"] = dict(power=power, alpha=alpha, runs_per_architecture=n_min, pooled_sd=sd,
                                 method="two-sample t-test (statsmodels TTestIndPower), pooled within-architecture "
                                        "sd of the confirmation runs' test IoU, the smallest run count")
    return res


def _pair(a: dict, b: dict, alpha: float, power: float) -> dict:
    w = welch(a["scores"], b["scores"], alpha)
    sd = pooled_sd(a["scores"], b["scores"])
    mdd = detectable_difference(a["n_scored"], b["n_scored"], sd, alpha, power)
    target = max(abs(w["diff"]), MIN_TARGET_DIFFERENCE) if math.isfinite(w["diff"]) else np.nan
    boot = None
    if a["slices"] is not None and b["slices"] is not None and a["slices"][0] == b["slices"][0]:
        boot = slice_bootstrap(a["slices"][1], b["slices"][1], alpha)
    return dict(a=a["architecture"], b=b["architecture"], n_a=a["n_scored"], n_b=b["n_scored"],
                mean_a=a["test_iou_mean"], mean_b=b["test_iou_mean"], diff_mean=w["diff"], ci_low=w["ci_low"],
                ci_high=w["ci_high"], p=w["p"], p_adjusted=np.nan, reason=w["reason"], pooled_sd=sd,
                min_detectable_difference=mdd, target_difference=target,
                seeds_needed=seeds_needed(target, sd, alpha, power) if math.isfinite(target) else None,
                bootstrap=boot, verdict=None, significant=None)


def _verdict(p: dict, alpha: float, power: float) -> tuple[str, Optional[bool]]:
    a, b = p["a"], p["b"]
    if p["reason"] and p["pooled_sd"] == 0 and p["diff_mean"] == 0:
        return (f"{a} vs {b}: no difference detected: every run of both scored test IoU {f3(p['mean_a'])}, so "
                f"the seed noise is zero here and no detectable difference can be computed."), False
    if p["reason"]:
        return f"{a} vs {b}: cannot be judged: {p['reason']}.", None
    ci = f"95 % CI {f3(p['ci_low'])} to {f3(p['ci_high'])}"
    pa = fp(p["p_adjusted"])
    if p["p_adjusted"] < alpha and p["ci_low"] > 0:
        text = (f"{a} beats {b} by {f3(p['diff_mean'])} test IoU ({ci}; Holm-adjusted {pa}; "
                f"n = {p['n_a']} and {p['n_b']} seeds).")
        boot = p["bootstrap"]
        if boot and boot["ci_low"] <= 0:
            text += (f" Resampling the {boot['n_slices']} test slices as well, the interval "
                     f"({f3(boot['ci_low'])} to {f3(boot['ci_high'])}) includes 0: the lead may not hold on "
                     f"other slices.")
        return text, True
    seeds = p["seeds_needed"]
    need = (f"about {seeds} seeds per architecture would be needed for {f3(p['target_difference'])}"
            if seeds else f"no number of seeds can be given for {f3(p['target_difference'])}")
    if p["ci_low"] > 0:   # the unadjusted interval excludes 0, the multiplicity-adjusted test does not
        pa += " - the unadjusted interval excludes 0, but not beyond the correction for the pairs compared"
    return (f"{a} vs {b}: no difference detected (difference {f3(p['diff_mean'])}, {ci}, Holm-adjusted {pa}); "
            f"with these runs (n = {p['n_a']} and {p['n_b']} seeds) the smallest difference that could be detected "
            f"(power {power:g}) is {f3(p['min_detectable_difference'])} - {need}."), False
