"""Which architecture, and how sure? The comparison of the confirmation runs (no file I/O here).

The confirmation stage (mitoseg/study/confirm.py) reruns each architecture's validation-selected
configuration with fresh seeds on K folds (data splits); these runs were used for nothing else, so
their test scores are an unbiased estimate. The quantity is the headline's: each run's test IoU
pooled over its test pixels (sum tp / sum (tp + fp + fn)), averaged over runs. Runs of one fold share
their data split, so architectures are compared within folds (a blocked design) and the folds are
combined by mitoseg.analysis.decision, whose interval covers seeds, folds and (with per-slice counts) the
sampling of test images. Each pair is decided: a_better / b_better / equivalent / undecided.

Which runs count: every confirmation run that finished is an outcome of its configuration. A
degenerate run (did not learn) counts with its score; a diverged run counts as test IoU 0 (the score
of predicting no mitochondria: it left no usable model). Failed, interrupted or missing runs are
not outcomes of the configuration (a crash, a kill, a run not made) and are left out, counted and
named in the report.
"""
from __future__ import annotations

import itertools
import json
import math
from typing import Optional

import numpy as np
import pandas as pd

from mitoseg.analysis import decision as D
from mitoseg.analysis.anova import ALPHA
from mitoseg.core.status import DIVERGED
from mitoseg.analysis.stats import config_mask
from mitoseg.analysis.stats import counted_runs as stats_counted_runs

POWER = 0.8
DEFAULT_SESOI = 0.01     # the smallest IoU difference that matters, unless the plan or --sesoi says otherwise


# --- the runs ----------------------------------------------------------------------------------------
def parse_counts(text) -> Optional[tuple[tuple, np.ndarray]]:
    """test_slice_counts (JSON list of [slice_name, tp, fp, fn]) -> (slice names, (slices, 3) array)."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        rows = json.loads(text)
        names = tuple(str(r[0]) for r in rows)
        counts = np.array([[float(r[1]), float(r[2]), float(r[3])] for r in rows], dtype=float)
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return (names, counts) if len(rows) and np.isfinite(counts).all() and (counts >= 0).all() else None


def pooled_from_counts(runs: pd.DataFrame) -> pd.Series:
    """Each run's test IoU pooled over its test pixels from test_slice_counts (NaN without counts)."""
    if "test_slice_counts" not in runs:
        return pd.Series(np.nan, index=runs.index)
    parsed = runs["test_slice_counts"].map(parse_counts)
    return parsed.map(lambda p: np.nan if p is None else D.pooled_iou_resamples(
        p[1][None], np.arange(len(p[0]))[None])[0, 0]).astype(float)


def counted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that count (mitoseg.analysis.stats.counted_runs, the one rule of both stages) scored by their pooled
    test IoU (from the per-slice counts when the run has them, else its test_iou), with columns fold,
    value (that score; DIVERGED_SCORE for a diverged run) and diverged."""
    scored = runs.assign(pooled_test_iou=pooled_from_counts(runs).fillna(runs["test_iou"].astype(float)))
    out = stats_counted_runs(scored, "pooled_test_iou")
    fold = pd.to_numeric(out["fold"], errors="coerce") if "fold" in out else pd.Series(0.0, index=out.index)
    out["fold"] = fold.fillna(0).astype(int)
    out["diverged"] = out["status"] == DIVERGED
    out["value"] = out["outcome"]
    return out


def fold_table(counted: pd.DataFrame) -> dict:
    """fold -> (values, per-run counts or None for a diverged run, slice names or None when a scored run
    lacks counts or the runs disagree on the slices)."""
    table = {}
    for fold, grp in counted.groupby("fold", sort=True):
        parsed = [None if dv else parse_counts(t) for dv, t in
                  zip(grp["diverged"], grp.get("test_slice_counts", pd.Series(None, index=grp.index)))]
        scored = [p for p, dv in zip(parsed, grp["diverged"]) if not dv]
        names = {p[0] for p in scored if p is not None}
        ok = len(names) == 1 and all(p is not None for p in scored)
        table[int(fold)] = (grp["value"].to_numpy(float), [p[1] if p else None for p in parsed],
                            names.pop() if ok else None)
    return table


def _resample_means(values_counts, idx) -> np.ndarray:
    """Mean pooled IoU over one arm's runs of a fold on each resample of its slices (diverged runs: 0)."""
    _, counts, _ = values_counts
    rows = [np.zeros(len(idx)) if c is None else D.pooled_iou_resamples(c[None], idx)[0] for c in counts]
    return np.mean(rows, axis=0)


# --- one estimate (an architecture's mean, or a pair's difference) over folds ------------------------------
def estimate(a: dict, b: Optional[dict] = None, seed: int = D.BOOT_SEED, n_boot: int = D.N_BOOT) -> dict:
    """Combine per-fold estimates (mean of a, or mean of a minus mean of b within each fold shared)."""
    folds = sorted(set(a) & set(b)) if b is not None else sorted(a)
    arms = [a] if b is None else [a, b]
    sign = [1.0] if b is None else [1.0, -1.0]
    d = np.array([sum(s * arm[k][0].mean() for s, arm in zip(sign, arms)) for k in folds])
    groups = [arm[k][0] for arm in arms for k in folds]
    seed_df = sum(len(g) - 1 for g in groups)
    seed_var = sum(((g - g.mean()) ** 2).sum() for g in groups) / seed_df if seed_df else 0.0
    v_seed = np.array([seed_var * sum(1 / len(arm[k][0]) for arm in arms) for k in folds])
    img_var, shared, n_slices = _image_variance(arms, sign, folds, seed, n_boot)
    v_img = np.zeros(len(folds)) if img_var is None or shared else img_var
    v_shared = float(img_var) if shared else 0.0
    img_df = min(D.image_df(n) for n in n_slices) if n_slices else np.inf
    c = D.combine(d, v_seed, v_img, v_shared, seed_df if seed_df else np.inf, img_df)
    return dict(estimate=float(c.estimate), var=float(c.var), df=float(c.df), tau2=float(c.tau2), folds=folds,
                fold_estimates=[float(x) for x in d], fold_vars=[float(x) for x in v_seed + v_img],
                seed_var=seed_var, seed_df=seed_df,
                img_var=None if img_var is None else float(np.mean(img_var)), img_df=img_df, shared_images=shared,
                n_slices=n_slices, runs_per_fold=min(len(arm[k][0]) for arm in arms for k in folds))


def _image_variance(arms, sign, folds, seed, n_boot):
    """(bootstrap variance of each fold's estimate from its test slices, or of their mean over folds when
    every fold has the same slices; shared?; slices per fold) - (None, False, None) without counts."""
    names = [arms[0][k][2] for k in folds]
    if any(n is None for n in names) or any(arm[k][2] != arms[0][k][2] for arm in arms for k in folds):
        return None, False, None
    rng = np.random.default_rng(seed)
    shared = len(folds) > 1 and len(set(names)) == 1
    common = D.block_indices(len(names[0]), n_boot, rng) if shared else None
    res = []
    for k, n in zip(folds, names):
        idx = common if shared else D.block_indices(len(n), n_boot, rng)
        res.append(sum(s * _resample_means(arm[k], idx) for s, arm in zip(sign, arms)))
    res = np.array(res)
    if shared:
        return float(res.mean(axis=0).var(ddof=1)), True, [len(n) for n in names]
    return res.var(axis=1, ddof=1), False, [len(n) for n in names]


def covers(e: dict) -> str:
    """What the interval covers, in words."""
    k = len(e["folds"])
    parts = ["seeds"] + ([f"{k} folds (data splits)"] if k > 1 else [])
    if e["img_var"] is None:
        return (", ".join(parts) + " (runs only: without per-slice counts the sampling of the test images is not "
                "covered)") + ("" if k > 1 else "; one data split only")
    slices = e["n_slices"]
    where = (f"the same {slices[0]} test slices in every fold" if e["shared_images"] else
             f"{'/'.join(map(str, sorted(set(slices))))} test slices per fold")
    text = ", ".join(parts) + f" and the test images (moving-block bootstrap over {where})"
    return text + ("" if k > 1 else "; one data split only")


# --- the comparison ----------------------------------------------------------------------------------
def representatives(confirm: pd.DataFrame, selection: Optional[pd.DataFrame]) -> tuple[pd.DataFrame, list]:
    """Per architecture, the confirmed configuration that stands for it, and notes on those left out.
    With one confirmed configuration: that one. With several (--top K): the rank-1 configuration of
    `selection` (the confirmation plan's ranked configurations, or mitoseg.analysis.stats.select_configs on the
    grid rows), fixed before the confirmation runs were made, so their test scores stay unbiased; never
    a choice on the confirmation runs' own scores."""
    rows, notes = [], []
    for arch, grp in confirm.dropna(subset=["learning_rate", "batch_size"]).groupby("architecture", sort=True):
        configs = grp[["learning_rate", "batch_size"]].drop_duplicates()
        if len(configs) > 1:
            sel = selection[(selection["architecture"] == arch) & (selection["rank"] == 1)] \
                if selection is not None and len(selection) else None
            if sel is None or sel.empty or not config_mask(grp, sel.iloc[0]).any():
                notes.append(f"{arch} has {len(configs)} confirmed configurations and no grid ranking among them "
                             f"to pick one without using the confirmation runs' own scores: not compared")
                continue
            configs = sel[["learning_rate", "batch_size"]]
        rows.append(dict(architecture=arch, learning_rate=float(configs.iloc[0]["learning_rate"]),
                         batch_size=int(configs.iloc[0]["batch_size"])))
    return pd.DataFrame(rows, columns=["architecture", "learning_rate", "batch_size"]), notes


def _arm(cfg, runs: pd.DataFrame, alpha: float) -> dict:
    counted = counted_runs(runs)
    ok = counted[~counted["diverged"]]
    table = fold_table(counted)
    arm = dict(architecture=cfg["architecture"], learning_rate=cfg["learning_rate"], batch_size=cfg["batch_size"],
               n_runs=len(runs), n_scored=len(counted), n_diverged=int(counted["diverged"].sum()),
               n_not_ok=len(runs) - len(counted), n_degenerate=int(ok["degenerate"].astype(bool).sum()),
               seeds=sorted(int(s) for s in counted["seed"].dropna()), folds=sorted(table),
               test_iou_mean=np.nan, test_iou_std=float(counted["value"].std(ddof=1)) if len(counted) >= 2 else np.nan,
               ci_low=np.nan, ci_high=np.nan, covers=None,
               val_iou_mean=float(ok["best_val_iou"].mean()) if ok["best_val_iou"].notna().any() else np.nan,
               table=table)
    if len(counted):
        e = estimate(table)
        arm["test_iou_mean"] = e["estimate"]
        if e["var"] > 0 and (len(e["folds"]) > 1 or e["seed_df"] > 0):
            lo, hi = D.interval(e["estimate"], e["var"], e["df"], 1 - alpha)
            arm.update(ci_low=float(max(lo, 0.0)), ci_high=float(min(hi, 1.0)), covers=covers(e))
    return arm


def compare_architectures(confirm: pd.DataFrame, selection: Optional[pd.DataFrame] = None,
                          sesoi: float = DEFAULT_SESOI, alpha: float = ALPHA, power: float = POWER) -> dict:
    """Everything the report says about the confirmation runs (rows of stage "confirm")."""
    res = dict(arms=[], pairs=[], min_detectable_difference=np.nan, runs_needed=None, reason=None, alpha=alpha,
               power=power, sesoi=sesoi, n_pairs=0, notes=[], n_rows=len(confirm),
               counts=confirm["status"].value_counts().to_dict())
    reps, res["notes"] = representatives(confirm, selection)
    arms = [_arm(cfg, confirm[config_mask(confirm, cfg)], alpha) for _, cfg in reps.iterrows()]
    arms.sort(key=lambda a: -a["test_iou_mean"] if a["n_scored"] else math.inf)
    res["arms"] = [{k: v for k, v in a.items() if k != "table"} for a in arms]
    scored = [a for a in arms if a["n_scored"]]
    if len(confirm) and not (confirm["test_iou"].notna() | pooled_from_counts(confirm).notna()).any():
        res["reason"] = ("the confirmation runs have no held-out test scores (give the data a testing.tif, or "
                         "--test-fraction)")
        return res
    if len(scored) < 2:
        res["reason"] = (f"{len(scored)} architecture(s) have confirmation runs with test scores; a comparison "
                         f"needs two")
        return res
    m = len(scored) * (len(scored) - 1) // 2
    res["n_pairs"] = m
    res["pairs"] = [_pair(a, b, m, sesoi, alpha, power) for a, b in itertools.combinations(scored, 2)]
    mdds = [p["min_detectable_difference"] for p in res["pairs"]]
    res["min_detectable_difference"] = max(mdds) if all(x is not None and math.isfinite(x) for x in mdds) else np.nan
    needs = [p["runs_needed"] for p in res["pairs"] if p["runs_needed"]]
    res["runs_needed"] = max(needs, key=lambda n: math.inf if n["runs"] is None else n["runs"]) if needs else None
    return res


def _pair(a: dict, b: dict, m: int, sesoi: float, alpha: float, power: float) -> dict:
    common = sorted(set(a["table"]) & set(b["table"]))
    out = dict(a=a["architecture"], b=b["architecture"], n_a=a["n_scored"], n_b=b["n_scored"],
               mean_a=a["test_iou_mean"], mean_b=b["test_iou_mean"], diff_mean=np.nan, ci_low=np.nan,
               ci_high=np.nan, ci_level=1 - alpha / m, p=np.nan, p_adjusted=np.nan, n_pairs=m,
               adjustment=f"Bonferroni over {m} pair{'s' if m > 1 else ''}", decision=D.UNDECIDED, significant=False,
               sesoi=sesoi, folds=common, covers=None, pooled_sd=np.nan, seed_df=0, fold_differences=[],
               fold_sd=np.nan, min_detectable_difference=None, mdd_range=None, runs_needed=None, reason=None)
    if not common:
        out["reason"] = "the two architectures share no fold"
        return out
    e = estimate(a["table"], b["table"])
    out.update(diff_mean=e["estimate"], covers=covers(e), pooled_sd=math.sqrt(e["seed_var"]), seed_df=e["seed_df"],
               fold_differences=e["fold_estimates"], fold_sd=math.sqrt(e["tau2"]))
    if len(common) == 1 and e["seed_df"] == 0:
        out["reason"] = "needs at least 2 runs of each architecture on a fold, or 2 folds"
    elif e["var"] <= D.TINY:
        out["reason"] = "every run gave the same score, so the noise cannot be estimated"
    else:
        out.update(D.decide(e["estimate"], e["var"], e["df"], m, sesoi, alpha))
        out["significant"] = out["decision"] in (D.A_BETTER, D.B_BETTER)
        out.update(_power(e, m, sesoi, alpha, power))
    return out


def _power(e: dict, m: int, sesoi: float, alpha: float, power: float) -> dict:
    """The detectable difference at these runs (and at the 95 % limits of the seed SD) and the runs needed
    for sesoi, by simulating the rule (mitoseg.analysis.decision.simulated_noise)."""
    from scipy import stats as sps
    k, s = len(e["folds"]), max(2, e["runs_per_fold"])
    spread = D.Spread(e["seed_var"], e["img_var"] or 0.0, min(e["img_df"], 1e6), e["tau2"], e["shared_images"])
    mdd = D.min_detectable(D.simulated_noise(spread, k, s, m, alpha), power)
    limits = None
    if e["seed_df"] > 0:
        df = e["seed_df"]
        chi = [sps.chi2.ppf(q, df) for q in (1 - alpha / 2, alpha / 2)]
        limits = [D.min_detectable(D.simulated_noise(D.Spread(e["seed_var"] * df / c, spread.img_var, spread.img_df,
                                                              spread.tau2, spread.shared_images), k, s, m, alpha),
                                   power)
                  for c in chi]
    return dict(min_detectable_difference=mdd, mdd_range=limits,
                runs_needed=D.runs_needed(spread, sesoi, k, m, alpha, power))
