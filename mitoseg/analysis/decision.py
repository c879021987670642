"""The statistics of the architecture decision: how sure, over seeds, folds and test images.

mitoseg/analysis/comparison.py turns the confirmation runs into per-fold estimates; this module combines them
and decides. The design (argued in Hyperparameter_Optimization_Strategy.md, "Deciding between
architectures"):

- within fold k the estimate is D_k (a difference of mean pooled test IoU, or one architecture's
  mean) with a within-fold variance from two sources: the seeds (a pooled seed variance with its
  degrees of freedom) and the test images (a moving-block bootstrap over the fold's slices, the
  same resampled slices for every run: adjacent EM slices are near-duplicates, so slices are drawn
  in contiguous blocks);
- folds are combined by a random-effects model (DerSimonian-Laird tau^2) with the Hartung-Knapp
  variance, truncated below at the ordinary random-effects variance, and a t quantile on K - 1
  degrees of freedom: folds that disagree widen the interval, and two folds give an honest but
  wide one; when every fold is scored on the same test slices (a shared testing.tif) the image
  variance is common to all folds and added once to the combined estimate;
- with one fold the interval is t-based with Satterthwaite degrees of freedom (seeds + images of
  that one data split);
- a pair is decided by its (1 - alpha/m) interval, Bonferroni over the m pairs compared.

`combine` is vectorised over leading axes so the power calculation can run the same rule on
thousands of simulated studies (tests/test_comparison.py checks it against statsmodels'
combine_effects and calibrates the decision by simulation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

A_BETTER, B_BETTER, EQUIVALENT, UNDECIDED = "a_better", "b_better", "equivalent", "undecided"
N_BOOT = 2000           # bootstrap resamples of the test slices per fold
BOOT_SEED = 0           # the same runs give the same interval
TINY = 1e-12            # a within-fold variance floor (exactly equal runs): keeps the weights finite


# --- test images: the moving-block bootstrap ----------------------------------------------------------
def block_length(n_slices: int) -> int:
    """n^(1/3) rounded (the usual order for a moving-block bootstrap of a mean, Hall et al. 1995)."""
    return max(1, int(round(n_slices ** (1 / 3))))


def block_indices(n_slices: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_slices) slice indices: contiguous blocks with random starts, cut to n_slices."""
    length = min(block_length(n_slices), n_slices)
    n_blocks = math.ceil(n_slices / length)
    starts = rng.integers(0, n_slices - length + 1, (n_boot, n_blocks))
    return (starts[:, :, None] + np.arange(length)).reshape(n_boot, -1)[:, :n_slices]


def pooled_iou_resamples(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """counts (runs, slices, 3) = tp, fp, fn per slice; idx (n_boot, slices) -> (runs, n_boot) pooled
    IoU = sum tp / sum (tp + fp + fn) over the resampled slices (1 when nothing is there and nothing
    was predicted, as mitoseg.cell.metrics.iou_from_counts)."""
    sums = counts[:, idx, :].sum(axis=2)
    union = sums.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, sums[..., 0] / np.where(union > 0, union, 1), 1.0)


# --- combining folds ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Combined:
    estimate: np.ndarray    # the combined estimate (shape of the leading axes)
    var: np.ndarray         # its variance
    df: np.ndarray          # degrees of freedom of its t quantile
    tau2: np.ndarray        # between-fold variance (DerSimonian-Laird; 0 with one fold)


def _satterthwaite(total, parts, dfs):
    """Welch-Satterthwaite degrees of freedom of total = sum of parts, each estimated on its dfs."""
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = sum(np.where(p > 0, p ** 2 / df, 0.0) for p, df in zip(parts, dfs))
        return np.where(denom > 0, total ** 2 / np.where(denom > 0, denom, 1.0), np.inf)


def image_df(n_slices: int) -> float:
    """Degrees of freedom of a block-bootstrap variance: the independent blocks in the slices, minus 1 (adjacent
    slices are near-duplicates, so 5 slices hold about 2 independent pieces of evidence, not 5)."""
    return max(1.0, n_slices // block_length(n_slices) - 1.0)


def combine(d, v_seed, v_img, v_shared=0.0, df_seed=np.inf, df_img=np.inf) -> Combined:
    """d, v_seed, v_img: (..., K) per-fold estimates and their seed and image variances; v_shared: image
    variance common to every fold (same test slices), added once; df_seed, df_img: degrees of freedom of
    the seed and image variances. K = 1: t with Satterthwaite df. K >= 2: DerSimonian-Laird random effects,
    Hartung-Knapp variance max(q, 1) / sum w (never narrower than the random-effects one), t on K - 1 df
    (Satterthwaite with the shared image variance)."""
    d = np.asarray(d, float)
    v_seed = np.broadcast_to(np.asarray(v_seed, float), d.shape)
    v_img = np.broadcast_to(np.asarray(v_img, float), d.shape)
    v_shared = np.asarray(v_shared, float)
    k = d.shape[-1]
    if k == 1:
        img = v_img[..., 0] + v_shared
        var = v_seed[..., 0] + img
        return Combined(d[..., 0], var, _satterthwaite(var, (v_seed[..., 0], img), (df_seed, df_img)),
                        np.zeros_like(var))
    v = np.maximum(v_seed + v_img, TINY)
    w = 1 / v
    sw = w.sum(-1)
    fixed = (w * d).sum(-1) / sw
    q_stat = (w * (d - fixed[..., None]) ** 2).sum(-1)
    tau2 = np.maximum(0.0, (q_stat - (k - 1)) / (sw - (w ** 2).sum(-1) / sw))
    w_re = 1 / (v + tau2[..., None])
    sw_re = w_re.sum(-1)
    est = (w_re * d).sum(-1) / sw_re
    q_hk = (w_re * (d - est[..., None]) ** 2).sum(-1) / (k - 1)
    var_hk = np.maximum(q_hk, 1.0) / sw_re
    var = var_hk + v_shared
    return Combined(est, var, _satterthwaite(var, (var_hk, v_shared), (k - 1.0, df_img)), tau2)


# --- the decision ------------------------------------------------------------------------------------
def interval(est, var, df, level: float):
    """(low, high) of the t interval at confidence `level`."""
    from scipy import stats as sps
    half = sps.t.ppf(0.5 + level / 2, df) * np.sqrt(var)
    return est - half, est + half


def decide(est: float, var: float, df: float, n_pairs: int, sesoi: float, alpha: float) -> dict:
    """One pair's decision from its combined estimate: the (1 - alpha/m) interval (Bonferroni over m
    pairs), the two-sided p-value (raw and x m), and a_better / b_better (the interval excludes 0),
    equivalent (the interval lies within +-sesoi, i.e. two one-sided tests at alpha/(2m), conservative)
    or undecided."""
    from scipy import stats as sps
    level = 1 - alpha / n_pairs
    lo, hi = interval(est, var, df, level)
    se = math.sqrt(var)
    p = float(2 * sps.t.sf(abs(est) / se, df)) if se > 0 else (0.0 if est != 0 else 1.0)
    if lo > 0:
        decision = A_BETTER
    elif hi < 0:
        decision = B_BETTER
    elif -sesoi <= lo and hi <= sesoi:
        decision = EQUIVALENT
    else:
        decision = UNDECIDED
    return dict(ci_low=float(max(lo, -1.0)), ci_high=float(min(hi, 1.0)), ci_level=level, p=p,
                p_adjusted=min(1.0, p * n_pairs), decision=decision)


# --- power: the same rule on simulated studies ---------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """The observed noise of a pair's difference, per fold: what a simulated study is drawn from."""
    seed_var: float         # variance of one run's pooled IoU around its fold's mean (pooled)
    img_var: float          # variance of a fold's difference from its test images (0 = not known)
    img_df: float           # its degrees of freedom (image_df)
    tau2: float             # between-fold variance of the difference (0 with one fold)
    shared_images: bool     # every fold is scored on the same test slices


N_SIM = 4000
SIM_SEED = 1


def simulated_noise(spread: Spread, folds: int, seeds: int, n_pairs: int, alpha: float,
                    n_sim: int = N_SIM, seed: int = SIM_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(estimate - true difference, interval half-width) of the decision rule on n_sim simulated
    studies with `folds` folds and `seeds` runs per architecture and fold: a normal approximation of
    the same rule, the seed and image variances drawn as scaled chi-square on their degrees of
    freedom. The rule calls a true difference delta when |delta + noise| > half-width; both are
    shift-invariant, so one draw serves every delta."""
    from scipy import stats as sps
    rng = np.random.default_rng(seed)
    shape = (n_sim, folds)
    s2 = spread.seed_var
    noise = (rng.normal(0, math.sqrt(spread.tau2), shape) + rng.normal(0, math.sqrt(2 * s2 / seeds), shape)
             + rng.normal(0, math.sqrt(spread.img_var), (n_sim, 1) if spread.shared_images else shape))
    df_seed = 2 * folds * (seeds - 1)
    s2_hat = s2 * rng.chisquare(df_seed, (n_sim, 1)) / df_seed
    shared = folds > 1 and spread.shared_images
    img_hat = spread.img_var * rng.chisquare(spread.img_df, (n_sim, 1)) / spread.img_df
    c = combine(noise, 2 * s2_hat / seeds, 0.0 if shared else img_hat, img_hat[:, 0] if shared else 0.0, df_seed,
                spread.img_df)
    half = sps.t.ppf(1 - alpha / (2 * n_pairs), c.df) * np.sqrt(c.var)
    return c.estimate, half


def power(delta: float, noise: tuple[np.ndarray, np.ndarray]) -> float:
    est, half = noise
    return float(np.mean(np.abs(delta + est) > half))


def min_detectable(noise: tuple[np.ndarray, np.ndarray], target: float) -> Optional[float]:
    """The smallest difference (IoU) detected with power `target`; None when even 1.0 is not."""
    if power(1.0, noise) < target:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if power(mid, noise) >= target else (mid, hi)
    return hi


MAX_FOLDS = 10
MAX_SEEDS = 200


def _fewest_seeds(spread: Spread, sesoi: float, folds: int, n_pairs: int, alpha: float, target: float):
    """The fewest seeds per fold (2..MAX_SEEDS) at which the rule detects sesoi with power `target`, or None
    (bisection: power grows with the seeds)."""
    def enough(s):
        return power(sesoi, simulated_noise(spread, folds, s, n_pairs, alpha, n_sim=2000)) >= target

    if not enough(MAX_SEEDS):
        return None
    lo, hi = 1, MAX_SEEDS
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return max(hi, 2)


def runs_needed(spread: Spread, sesoi: float, folds: int, n_pairs: int, alpha: float, target: float) -> dict:
    """The smallest design (folds x seeds per fold, per architecture) whose rule detects `sesoi` with
    power `target`, searched over folds >= the study's (only 1 when the study has one fold: the
    fold-to-fold spread is then unknown) and 2..MAX_SEEDS seeds; else why not."""
    fold_range = [1] if folds == 1 else range(folds, MAX_FOLDS + 1)
    designs = [(k, s) for k in fold_range for s in [_fewest_seeds(spread, sesoi, k, n_pairs, alpha, target)] if s]
    if designs:
        k, s = min(designs, key=lambda ks: (ks[0] * ks[1], ks[0]))
        return dict(runs=k * s, folds=k, seeds=s, reason=None)
    return dict(runs=None, folds=None, seeds=None, reason=_why_unreachable(spread, sesoi, folds))


def _why_unreachable(spread: Spread, sesoi: float, folds: int) -> str:
    if spread.img_var > 0 and (folds == 1 or spread.shared_images) and 2 * math.sqrt(spread.img_var) > sesoi:
        return (f"the sampling of the test images alone (SE {math.sqrt(spread.img_var):.3f} on one test set) is too "
                f"large for a difference of {sesoi:g}: more test images are needed (more folds with their own test "
                f"blocks, or a larger testing.tif), not more seeds")
    if folds > 1 and spread.tau2 > 0:
        return (f"the architectures' difference varies between folds (SD {math.sqrt(spread.tau2):.3f}, estimated from "
                f"{folds} folds), so more seeds cannot help and at that spread even {MAX_FOLDS} folds would not "
                f"suffice")
    if folds == 1:
        return (f"more than {MAX_SEEDS} seeds on this one data split would be needed; several folds (--folds) also "
                f"cover the data split")
    return f"more than {MAX_FOLDS} folds x {MAX_SEEDS} seeds per architecture would be needed"
