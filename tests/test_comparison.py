"""The architecture decision (mitoseg/analysis/decision.py, mitoseg/analysis/comparison.py): its statistics against
scipy/statsmodels where a closed form exists, the decision rule calibrated by simulated studies with
known answers (item 9 of issue 25), and fake studies and hand-made CSVs through the whole analysis."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mitoseg.analysis import comparison as K
from mitoseg.analysis import decision as D
from mitoseg.report.write import REPORT_MD, SUMMARY_JSON, run_analysis
from mitoseg.report.confirmation import verdict
from mitoseg.analysis.study_analysis import analyze
from mitoseg.analysis.summary import SummaryError, load_summary, normalize_summary
from tests.fixtures_results import add_confirmation, make_study

GRID3 = dict(architectures=["UNet", "Attention_UNet", "Attention_ResUNet"], learning_rates=[1e-3, 5e-3],
             batch_sizes=[8], seeds=[42])


def quiet(_):
    pass


# --- the statistics against the libraries ---------------------------------------------------------
def _table(values_by_fold, counts_by_fold=None, names_by_fold=None):
    """A fold table (mitoseg.analysis.comparison.fold_table's shape) from plain lists."""
    out = {}
    for k, vals in values_by_fold.items():
        counts = counts_by_fold[k] if counts_by_fold else [None] * len(vals)
        out[k] = (np.asarray(vals, float), counts, names_by_fold[k] if names_by_fold else None)
    return out


def test_winner_vs_runner_up_is_scipys_welch_test():
    """The one Welch t-test (mitoseg.analysis.anova.compare_runs): scipy's ttest_ind(equal_var=False), NaN runs left out,
    and "clear" only for a difference in the winner's favour below alpha."""
    from mitoseg.analysis.anova import ALPHA, compare_runs
    a, b = [0.80, 0.82, 0.81, np.nan], [0.70, 0.74, 0.69, 0.75]
    got = compare_runs(np.array(a), np.array(b))
    want = sps.ttest_ind(a[:3], b, equal_var=False)
    assert got["p"] == pytest.approx(want.pvalue, rel=1e-12) and (got["n_a"], got["n_b"]) == (3, 4)
    assert got["diff"] == pytest.approx(np.mean(a[:3]) - np.mean(b)) and got["clear"] is bool(want.pvalue < ALPHA)
    assert compare_runs(np.array(b), np.array(a[:3]))["clear"] is False   # the runner-up above: never clear
    assert compare_runs(np.array([0.8]), np.array(b))["reason"].startswith("one run per configuration")
    assert "identical" in compare_runs(np.array([0.8, 0.8]), np.array([0.7, 0.7]))["reason"]


def test_combine_is_the_dersimonian_laird_hartung_knapp_model_of_statsmodels():
    from statsmodels.stats.meta_analysis import combine_effects
    d = np.array([0.05, 0.01, 0.04, -0.02])
    v = np.array([0.0002, 0.0003, 0.0001, 0.0004])
    got = D.combine(d, v, 0.0)
    ref = combine_effects(d, v, method_re="dl")
    assert float(got.estimate) == pytest.approx(ref.mean_effect_re, rel=1e-10)
    assert float(got.tau2) == pytest.approx(ref.tau2, rel=1e-10)
    # folds disagree (q > 1): the Hartung-Knapp variance of statsmodels, t on K - 1 df
    assert float(got.var) == pytest.approx(ref.sd_eff_w_re_hksj ** 2, rel=1e-10) and float(got.df) == 3
    # folds agree better than their within-fold noise (q < 1): never narrower than the random-effects variance
    got = D.combine(np.array([0.020, 0.021, 0.019]), np.array([0.001] * 3), 0.0)
    q = 1000 * 2e-6 / 2    # sum w (d - mean)^2 / (K - 1): 1000 times smaller than the within-fold noise implies
    assert float(got.tau2) == 0 and float(got.var) == pytest.approx(0.001 / 3) and q * 0.001 / 3 < float(got.var)
    # vectorised: rows are independent studies
    rows = D.combine(np.stack([d, d[::-1]]), np.stack([v, v[::-1]]), 0.0)
    assert rows.estimate == pytest.approx([ref.mean_effect_re] * 2)


def test_one_fold_without_slices_is_the_pooled_two_sample_t_test():
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW
    a, b = [0.81, 0.83, 0.80, 0.84, 0.82], [0.78, 0.80, 0.77, 0.79]
    e = K.estimate(_table({0: a}), _table({0: b}))
    got = D.decide(e["estimate"], e["var"], e["df"], 1, 0.01, 0.05)
    assert got["p"] == pytest.approx(sps.ttest_ind(a, b, equal_var=True).pvalue, rel=1e-9)
    lo, hi = CompareMeans(DescrStatsW(np.array(a)), DescrStatsW(np.array(b))).tconfint_diff(usevar="pooled")
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
    assert got["decision"] == D.A_BETTER and e["seed_df"] == 7
    # three pairs: the interval at 1 - 0.05/3 and the p-value x 3 (Bonferroni, as statsmodels multipletests)
    from statsmodels.stats.multitest import multipletests
    three = D.decide(e["estimate"], e["var"], e["df"], 3, 0.01, 0.05)
    lo3, hi3 = CompareMeans(DescrStatsW(np.array(a)), DescrStatsW(np.array(b))).tconfint_diff(
        alpha=0.05 / 3, usevar="pooled")
    assert (three["ci_low"], three["ci_high"]) == pytest.approx((lo3, hi3), rel=1e-9)
    assert three["p_adjusted"] == pytest.approx(multipletests([got["p"], 0.5, 0.9], method="bonferroni")[1][0])


def test_architecture_mean_is_the_t_interval_clipped_to_zero_one():
    from statsmodels.stats.weightstats import DescrStatsW
    x = [0.81, 0.83, 0.80]
    e = K.estimate(_table({0: x}))
    lo, hi = D.interval(e["estimate"], e["var"], e["df"], 0.95)
    assert (lo, hi) == pytest.approx(DescrStatsW(np.array(x)).tconfint_mean(), rel=1e-9)
    rows = [dict(architecture="UNet", learning_rate=1e-3, batch_size=8, seed=s, test_iou=v, stage="confirm")
            for s, v in ((1, 0.99), (2, 0.80), (3, 0.97))]
    arm = analyze(normalize_summary(pd.DataFrame(rows))).confirmation["arms"][0]
    assert arm["ci_high"] == 1.0 and 0 <= arm["ci_low"] < arm["test_iou_mean"]   # the t interval reaches 1.09


def test_block_bootstrap_resamples_contiguous_blocks_of_pooled_counts():
    rng = np.random.default_rng(0)
    idx = D.block_indices(8, 500, rng)
    assert idx.shape == (500, 8) and D.block_length(8) == 2
    assert np.all(np.diff(idx.reshape(500, 4, 2), axis=2) == 1)     # pairs of adjacent slices
    counts = np.array([[[90, 10, 0], [0, 0, 10], [50, 50, 0]]], float)   # pooled IoU 140/210, slice mean 0.5
    assert D.pooled_iou_resamples(counts, np.array([[0, 1, 2]]))[0, 0] == pytest.approx(140 / 210)
    assert D.pooled_iou_resamples(np.zeros((1, 2, 3)), np.array([[0, 1]]))[0, 0] == 1.0   # nothing there
    assert D.image_df(5) == 1 and D.image_df(8) == 3 and D.image_df(27) == 8


def test_shared_slice_difficulty_cancels_in_the_paired_bootstrap():
    names = tuple(f"z{j}" for j in range(8))
    fg = np.full(8, 1000.0)
    difficulty = np.array([-0.3, -0.2, 0.1, 0.1, 0.05, 0.05, 0.1, 0.1])

    def runs(level):
        counts = [np.stack([fg * (level + difficulty + d), np.zeros(8), fg * (1 - level - difficulty - d)], 1)
                  for d in (-0.002, 0.0, 0.002)]
        return ([c[:, 0].sum() / fg.sum() for c in counts], counts)

    (va, ca), (vb, cb) = runs(0.7), runs(0.65)
    e = K.estimate(_table({0: va}, {0: ca}, {0: names}), _table({0: vb}, {0: cb}, {0: names}))
    assert e["estimate"] == pytest.approx(0.05) and e["img_var"] < 1e-8   # the same slices for both: paired
    alone = K.estimate(_table({0: va}, {0: ca}, {0: names}))
    assert alone["img_var"] > 1e-3   # one architecture's mean does depend on which slices were drawn


def test_power_of_the_rule_matches_the_t_test_closed_form_on_one_fold():
    from statsmodels.stats.power import TTestIndPower
    sd = 0.01
    spread = D.Spread(seed_var=sd ** 2, img_var=0.0, img_df=1e6, tau2=0.0, shared_images=False)
    mdd = D.min_detectable(D.simulated_noise(spread, 1, 4, 1, 0.05, n_sim=20000), 0.8)
    exact = TTestIndPower().solve_power(nobs1=4, alpha=0.05, power=0.8, ratio=1.0) * sd
    assert mdd == pytest.approx(exact, rel=0.04)
    with_pairs = D.min_detectable(D.simulated_noise(spread, 1, 4, 3, 0.05, n_sim=20000), 0.8)
    exact3 = TTestIndPower().solve_power(nobs1=4, alpha=0.05 / 3, power=0.8, ratio=1.0) * sd
    assert with_pairs == pytest.approx(exact3, rel=0.04) and with_pairs > mdd   # the test actually used
    need = D.runs_needed(spread, 0.01, 1, 1, 0.05, 0.8)
    n_exact = math.ceil(TTestIndPower().solve_power(effect_size=1.0, alpha=0.05, power=0.8))
    assert need["folds"] == 1 and abs(need["seeds"] - n_exact) <= 1 and need["reason"] is None


def test_runs_needed_says_why_not():
    def spread(img_var=0.0, img_df=1e6, tau2=0.0):
        return D.Spread(seed_var=1e-4, img_var=img_var, img_df=img_df, tau2=tau2, shared_images=False)

    images = D.runs_needed(spread(img_var=0.02 ** 2, img_df=3), 0.01, 1, 3, 0.05, 0.8)
    assert images["runs"] is None and "test images" in images["reason"] and "not more seeds" in images["reason"]
    folds = D.runs_needed(spread(tau2=0.05 ** 2), 0.01, 2, 3, 0.05, 0.8)
    assert folds["runs"] is None and "varies between folds" in folds["reason"]
    ok = D.runs_needed(spread(tau2=0.002 ** 2), 0.01, 3, 1, 0.05, 0.8)
    assert ok["runs"] == ok["folds"] * ok["seeds"] and ok["folds"] >= 3


# --- the decision rule on simulated studies with known answers (item 9) ----------------------------------
def _study(rng, folds=3, seeds=3, n=8, delta=0.0, seed_sd=0.01, slice_sd=0.02, inter_sd=0.0, level_sd=0.0,
           fold_effects=None, shared=False):
    """Fold tables of architectures A and B with per-slice counts. Slice IoU = 0.75 + fold level + slice
    difficulty (both) + the true difference (A) +- an architecture x slice interaction + seed noise."""
    tabs = ({}, {})
    common = rng.normal(0, slice_sd, n), rng.normal(0, inter_sd, n)
    names = tuple(f"t{j}" for j in range(n))
    for k in range(folds):
        level = rng.normal(0, level_sd)
        difficulty, inter = common if shared else (rng.normal(0, slice_sd, n), rng.normal(0, inter_sd, n))
        effect = delta if fold_effects is None else fold_effects[k]
        fg = rng.integers(800, 1200, n).astype(float)
        for tab, shift in ((tabs[0], effect + inter / 2), (tabs[1], -inter / 2)):
            iou = np.clip(0.75 + level + difficulty + shift + rng.normal(0, seed_sd, (seeds, 1)), 0.01, 0.99)
            counts = [np.stack([fg * r, np.zeros(n), fg * (1 - r)], 1) for r in iou]
            tab[k] = (np.array([c[:, 0].sum() / fg.sum() for c in counts]), counts,
                      names if shared else tuple(f"{k}_{x}" for x in names))
    return tabs


def _rates(n_rep=200, seed=0, n_pairs=1, sesoi=0.01, fold_effects=None, **kw):
    """Decision frequencies of the rule, and how often two naive rules call a difference: the old one
    (Welch over every run, folds and slices ignored) and a fixed-effect combination of the folds."""
    rng = np.random.default_rng(seed)
    decisions, old, fixed = [], 0, 0
    for rep in range(n_rep):
        effects = None if fold_effects is None else rng.permutation(fold_effects)
        a, b = _study(rng, fold_effects=effects, **kw)
        e = K.estimate(a, b, seed=rep, n_boot=300)
        decisions.append(D.decide(e["estimate"], e["var"], e["df"], n_pairs, sesoi, 0.05)["decision"])
        runs_a, runs_b = (np.concatenate([t[k][0] for k in t]) for t in (a, b))
        old += sps.ttest_ind(runs_a, runs_b, equal_var=False).pvalue * n_pairs < 0.05
        w = 1 / np.asarray(e["fold_vars"])
        fixed += abs((w * e["fold_estimates"]).sum() / w.sum()) > 1.96 / math.sqrt(w.sum())
    decisions = np.array(decisions)
    rates = {d: float(np.mean(decisions == d)) for d in (D.A_BETTER, D.B_BETTER, D.EQUIVALENT, D.UNDECIDED)}
    return rates, old / n_rep, fixed / n_rep


def test_simulated_real_difference_is_detected():
    rates, old, _ = _rates(delta=0.04, folds=3, seeds=3)
    assert rates[D.A_BETTER] >= 0.85 and rates[D.B_BETTER] == 0


def test_simulated_no_difference_keeps_the_false_positive_rate():
    for folds in (1, 3):
        rates, _, _ = _rates(seed=folds, delta=0.0, folds=folds, seeds=3)
        assert rates[D.A_BETTER] + rates[D.B_BETTER] <= 0.10


def test_simulated_shared_test_slices_count_their_variance_once():
    """Every fold scored on the same test slices (a shared testing.tif): the architecture x slice
    interaction is common to all folds, so it must not average out over folds."""
    rates, old, _ = _rates(seed=7, delta=0.0, folds=3, seeds=3, shared=True, inter_sd=0.03)
    assert rates[D.A_BETTER] + rates[D.B_BETTER] <= 0.10 and old >= 0.3
    a, b = _study(np.random.default_rng(0), folds=2, shared=True)
    e = K.estimate(a, b, n_boot=300)
    assert e["shared_images"] and "the same 8 test slices in every fold" in K.covers(e)


def test_stated_detectable_difference_is_detected_with_power_about_0_8_by_the_full_rule():
    """The power calculation simulates a normal approximation of the rule; the full rule (block bootstrap
    of per-slice counts) must detect the difference it states with power close to 0.8 (issue 25: the
    old stated difference was detected with power 0.41)."""
    spread = D.Spread(seed_var=0.01 ** 2, img_var=0.03 ** 2 / 8, img_df=D.image_df(8), tau2=0.0, shared_images=False)
    for folds, seeds in ((3, 3), (1, 4)):
        mdd = D.min_detectable(D.simulated_noise(spread, folds, seeds, 1, 0.05), 0.8)
        rates, _, _ = _rates(seed=11, delta=mdd, folds=folds, seeds=seeds, inter_sd=0.03)
        assert 0.65 <= rates[D.A_BETTER] <= 0.95


def test_simulated_equivalent_pair_is_called_equivalent():
    rates, _, _ = _rates(delta=0.0, folds=5, seeds=4, seed_sd=0.003, slice_sd=0.01, inter_sd=0.002)
    assert rates[D.EQUIVALENT] >= 0.9


def test_simulated_seed_stable_but_slice_inconsistent_difference_is_not_called():
    """One data split, seeds agree to 0.002, but which architecture wins depends on the slice: the old
    rule (seeds only) calls a winner most of the time, the rule that resamples slices does not."""
    rates, old, _ = _rates(delta=0.0, folds=1, seeds=5, seed_sd=0.002, inter_sd=0.06)
    assert rates[D.A_BETTER] + rates[D.B_BETTER] <= 0.10 and old >= 0.6


def test_simulated_fold_consistent_difference_under_large_fold_spread_is_detected():
    """The level moves by SD 0.1 between folds, the difference (0.03) does not: blocking on folds finds it,
    the old rule (every run as independent) drowns it in the fold spread."""
    rates, old, _ = _rates(delta=0.03, folds=4, seeds=3, level_sd=0.1)
    assert rates[D.A_BETTER] >= 0.8 and old <= 0.3


def test_simulated_sign_flipping_difference_is_not_called():
    """A ahead by 0.05 on three folds, behind by 0.05 on the fourth: no win. A fixed-effect combination of
    the folds (within-fold noise only) would call it nearly always."""
    rates, _, fixed = _rates(fold_effects=(0.05, 0.05, 0.05, -0.05), folds=4, seeds=3, seed_sd=0.005,
                             slice_sd=0.01)
    assert rates[D.A_BETTER] + rates[D.B_BETTER] <= 0.05 and fixed >= 0.8


# --- hidden-answer studies --------------------------------------------------------------------------
def _disagreeing_study(tmp_path):
    """lr 1e-3 best on validation (0.86) but worse on test (0.72) than lr 5e-3 (val 0.80, test 0.85)."""
    return make_study(tmp_path / "s", history=False, test=True,
                      iou_fn=lambda c: 0.86 if c.learning_rate == 1e-3 else 0.80,
                      test_fn=lambda c: 0.72 if c.learning_rate == 1e-3 else 0.85, **GRID3)


def test_selection_follows_validation_when_test_disagrees(tmp_path):
    study = _disagreeing_study(tmp_path)
    run_analysis(study_dir=study, log=quiet, figures=False)
    js = json.loads((study / SUMMARY_JSON).read_text())
    best = {b["architecture"]: b for b in js["best_per_architecture"]}
    assert set(best) == set(GRID3["architectures"])
    for b in best.values():
        assert b["learning_rate"] == 1e-3 and b["selected_on"] == "validation"
        assert b["val_iou_mean"] == pytest.approx(0.86) and b["test_iou_mean"] == pytest.approx(0.72)
        assert b["n_runs"] == 1 and b["val_iou_std"] is None and b["test_iou_std"] is None
        assert set(b) >= {"architecture", "learning_rate", "batch_size", "selected_on", "n_runs", "val_iou_mean",
                          "val_iou_std", "test_iou_mean", "test_iou_std"}
    md = (study / REPORT_MD).read_text()
    assert "lr 0.005" not in md.split("## Optimal configuration per architecture")[1].split("## ")[0]
    assert "Best architecture in the grid (on validation, the data it was selected on)" in md
    assert js["architecture_comparison"] == [] and js["min_detectable_difference"] is None
    assert "**The grid alone cannot rank the architectures:**" in md.split("## Executive summary")[1].split("\n\n")[1]
    assert "python run_study.py confirm --study-dir STUDY --seeds 3 --folds 2" in md
    # the confirmation stage confirms the validation winner
    plan = add_confirmation(study, 2, val_fn=lambda c: 0.85, test_fn=lambda c: 0.80 + 0.001 * c.seed)
    assert {c["learning_rate"] for c in plan["configs"]} == {1e-3}


def _confirmed_study(tmp_path, effect, seeds=4, noise=0.01, slices=True, figures=False):
    study = make_study(tmp_path / "c", history=False, test=True, iou_fn=lambda c: 0.85 - 0.05 * (c.learning_rate > 1e-3),
                       **GRID3)

    def test_fn(c):
        return 0.80 + effect.get(c.architecture, 0.0) + float(
            np.random.default_rng(c.seed * 31 + len(c.architecture)).normal(0, noise))
    add_confirmation(study, seeds, val_fn=lambda c: 0.85, test_fn=test_fn, slices=slices)
    run_analysis(study_dir=study, log=quiet, figures=figures)
    return study, json.loads((study / SUMMARY_JSON).read_text()), (study / REPORT_MD).read_text()


def _first_paragraph(md: str) -> str:
    return md.split("## Executive summary")[1].strip().split("\n\n")[0]


def test_built_in_difference_is_called(tmp_path):
    study, js, md = _confirmed_study(tmp_path, {"Attention_UNet": 0.06})
    pairs = {(p["a"], p["b"]): p for p in js["architecture_comparison"]}
    assert len(pairs) == 3
    for other in ("UNet", "Attention_ResUNet"):
        p = pairs[("Attention_UNet", other)]
        assert p["decision"] == "a_better" and p["significant"]
        assert verdict(p).startswith(f"Attention_UNet is better than {other}: the adjusted interval")
        assert 0 < p["ci_low"] < p["diff_mean"] < p["ci_high"] and p["p_adjusted"] < 0.05
        assert abs(p["diff_mean"] - 0.06) < 0.03 and p["n_pairs"] == 3 and "Bonferroni over 3 pairs" in verdict(p)
    null = [p for p in js["architecture_comparison"] if "Attention_UNet" not in (p["a"], p["b"])][0]
    assert null["decision"] == "undecided" and "power 0.8" in verdict(null)
    assert js["min_detectable_difference"] > 0
    first = _first_paragraph(md)
    assert first.startswith("**On the test IoU of the confirmation runs, 4 runs per architecture on 1 fold, 3 pairs")
    assert "Attention_UNet is detectably better than UNet" in first
    # on one fold without per-slice counts the rule is the pooled two-sample t-test, Bonferroni x 3
    csv = pd.read_csv(study / "hyperparameter_summary.csv")
    conf = csv[csv["stage"] == "confirm"]
    a = conf.loc[conf["architecture"] == "Attention_UNet", "test_iou"].to_numpy()
    b = conf.loc[conf["architecture"] == "UNet", "test_iou"].to_numpy()
    p = pairs[("Attention_UNet", "UNet")]
    assert p["diff_mean"] == pytest.approx(a.mean() - b.mean())
    raw = sps.ttest_ind(a, b, equal_var=True).pvalue
    if "runs only" in p["covers"]:
        assert p["p"] == pytest.approx(raw, rel=1e-9) and p["p_adjusted"] == pytest.approx(min(1, 3 * raw))
    else:   # per-slice counts: the test images widen the interval (the fixture's counts round each slice IoU
        assert p["p"] >= raw * (1 - 1e-5)   # to 1e-8, so the pooled IoU is the test IoU only to that precision)


def test_no_difference_is_not_called(tmp_path):
    study, js, md = _confirmed_study(tmp_path, {}, slices=False, figures=True)
    assert (study / "architecture_comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "![Confirmation runs" in md
    assert len(js["architecture_comparison"]) == 3
    for p in js["architecture_comparison"]:
        assert p["decision"] == "undecided" and " is better than " not in verdict(p)
        assert "these runs would detect a difference of" in verdict(p) and "runs only" in p["covers"]
        assert p["ci_low"] < 0 < p["ci_high"] and p["runs_needed"]["runs"] or p["runs_needed"]["reason"]
    first = _first_paragraph(md)
    assert first.startswith("**No architecture is detectably better (test IoU of the confirmation runs")
    assert "equivalence within +-0.01 is not established" in first and "runs per architecture" in first
    summary = md.split("## Executive summary")[1].split("## Key findings")[0]
    assert "on validation" in summary.strip().split("\n\n")[1] and "raises the false-positive rate" in summary
    assert "+- " not in summary.replace("+-0.01", "")   # every +- is labelled


def test_identical_runs_and_single_seeds():
    rows = [dict(architecture=a, learning_rate=1e-3, batch_size=8, seed=s, best_val_iou=0.8, test_iou=0.8,
                 stage="confirm", status="ok") for a in ("UNet", "Attention_UNet") for s in (1, 2, 3)]
    grid = [dict(architecture=a, learning_rate=1e-3, batch_size=8, seed=0, best_val_iou=0.8) for a in ("UNet", "Attention_UNet")]
    res = analyze(normalize_summary(pd.DataFrame(grid + rows)))
    pair = res.confirmation["pairs"][0]
    assert pair["decision"] == "undecided" and "every run gave the same score" in verdict(pair)
    one = [r for r in rows if r["seed"] == 1]
    res1 = analyze(normalize_summary(pd.DataFrame(grid + one)))
    assert "cannot be judged: needs at least 2 runs of each" in verdict(res1.confirmation["pairs"][0])


def test_confirmation_rows_from_a_hand_made_csv(tmp_path):
    rows = []
    rng = np.random.default_rng(3)
    for arch, lr, v in (("UNet", 1e-3, 0.85), ("UNet", 5e-3, 0.80), ("Attention_UNet", 1e-3, 0.84)):
        rows.append(dict(architecture=arch, learning_rate=lr, batch_size=8, seed=1, best_val_iou=v, test_iou=v - 0.02))
    for arch, mean in (("UNet", 0.80), ("Attention_UNet", 0.90)):
        for seed in (2, 3, 4):
            rows.append(dict(architecture=arch, learning_rate=1e-3, batch_size=8, seed=seed, stage="Confirm",
                             test_iou=mean + rng.normal(0, 0.005)))
    path = tmp_path / "hand.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    res = analyze(load_summary(path))
    assert res.n_rows == 3 and verdict(res.confirmation["pairs"][0]).startswith("Attention_UNet is better than UNet")
    out = run_analysis(summary_file=path, output_dir=tmp_path / "out", log=quiet, figures=False)
    assert "Attention_UNet is detectably better than UNet" in _first_paragraph((tmp_path / "out" / REPORT_MD).read_text())
    assert out["result"].best.iloc[0]["learning_rate"] == 1e-3
    bad = pd.DataFrame(rows).assign(stage="final")
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SummaryError, match="column stage holds 'final'"):
        load_summary(tmp_path / "bad.csv")


def _counts_text(level: float, n: int = 6, fold: int = 0, shift=None) -> str:
    shift = np.zeros(n) if shift is None else shift
    return json.dumps([[f"f{fold}_z{j}", int(1000 * (level + shift[j])), 50, int(1000 * (1 - level - shift[j]))]
                       for j in range(n)])


def test_confirmation_only_csv_with_folds_and_slice_counts(tmp_path):
    """No grid rows at all: the comparison needs no selection. Two folds with their own test slices."""
    rows = []
    rng = np.random.default_rng(4)
    for arch, level in (("UNet", 0.70), ("Attention_UNet", 0.78)):
        for fold in (0, 1):
            for seed in (1, 2, 3):
                text = _counts_text(level + 0.05 * fold + rng.normal(0, 0.005), fold=fold)
                counts = K.parse_counts(text)[1]
                rows.append(dict(architecture=arch, learning_rate=1e-3, batch_size=8, seed=seed, fold=fold,
                                 stage="confirm", test_iou=counts[:, 0].sum() / counts.sum(), test_slice_counts=text))
    path = tmp_path / "confirm_only.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    run_analysis(summary_file=path, output_dir=tmp_path / "out", log=quiet, figures=False)
    js = json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())
    (pair,) = js["architecture_comparison"]
    assert pair["folds"] == [0, 1] and "2 folds (data splits) and the test images" in pair["covers"]
    assert pair["decision"] in ("a_better", "undecided") and pair["a"] == "Attention_UNet"
    assert len(pair["fold_differences"]) == 2 and js["confirmation"]["sesoi"] == 0.01
    md = (tmp_path / "out" / REPORT_MD).read_text()
    assert "confirmation runs only" in md
    for arm in js["confirmation"]["architectures"]:
        assert 0 <= arm["ci_low"] <= arm["test_iou_mean"] <= arm["ci_high"] <= 1
    # the counts alone define the pooled IoU: a CSV without test_iou gives the same comparison
    pd.DataFrame(rows).drop(columns="test_iou").assign(best_val_iou=0.8).to_csv(path, index=False)
    again = analyze(load_summary(path)).confirmation["pairs"][0]
    assert again["diff_mean"] == pytest.approx(pair["diff_mean"]) and again["decision"] == pair["decision"]


def test_top_k_representative_is_the_grid_rank_1_not_the_confirmation_runs_choice():
    grid = [dict(architecture="UNet", learning_rate=lr, batch_size=8, seed=1, best_val_iou=v, test_iou=v)
            for lr, v in ((1e-3, 0.85), (5e-3, 0.80))]
    grid.append(dict(architecture="Attention_UNet", learning_rate=1e-3, batch_size=8, seed=1, best_val_iou=0.8,
                     test_iou=0.8))
    confirm = [dict(architecture="UNet", learning_rate=lr, batch_size=8, seed=s, best_val_iou=v, test_iou=v,
                    stage="confirm") for lr, v in ((1e-3, 0.70), (5e-3, 0.95)) for s in (2, 3, 4)]
    confirm += [dict(architecture="Attention_UNet", learning_rate=1e-3, batch_size=8, seed=s, best_val_iou=0.8,
                     test_iou=0.8 + 0.001 * s, stage="confirm") for s in (2, 3, 4)]
    res = analyze(normalize_summary(pd.DataFrame(grid + confirm)))
    unet = [a for a in res.confirmation["arms"] if a["architecture"] == "UNet"][0]
    assert unet["learning_rate"] == 1e-3 and unet["test_iou_mean"] == pytest.approx(0.70)
    alone = analyze(normalize_summary(pd.DataFrame(confirm)))   # no grid rows: no unbiased way to pick one
    assert [a["architecture"] for a in alone.confirmation["arms"]] == ["Attention_UNet"]
    assert "UNet has 2 confirmed configurations" in alone.confirmation["notes"][0]


def test_top_2_study_is_represented_by_the_plans_rank_1(tmp_path):
    study = make_study(tmp_path / "top2", history=False, test=True,
                       iou_fn=lambda c: 0.85 - 0.05 * (c.learning_rate > 1e-3), **GRID3)
    # the rank-2 configuration's confirmation runs score higher on validation and test: not a reason to pick it
    plan = add_confirmation(study, 2, top=2, val_fn=lambda c: 0.95 if c.learning_rate > 1e-3 else 0.70,
                            test_fn=lambda c: (0.90 if c.learning_rate > 1e-3 else 0.75) + 0.001 * c.seed)
    assert {(c["learning_rate"], c["rank"]) for c in plan["configs"]} == {(1e-3, 1), (5e-3, 2)}
    run_analysis(study_dir=study, log=quiet, figures=False)
    arms = json.loads((study / SUMMARY_JSON).read_text())["confirmation"]["architectures"]
    assert len(arms) == 3 and all(a["learning_rate"] == 1e-3 and a["test_iou_mean"] < 0.8 for a in arms)


def test_diverged_runs_count_as_zero_and_failed_runs_are_left_out():
    rows = [dict(architecture=a, learning_rate=1e-3, batch_size=8, seed=s, test_iou=0.8 + 0.01 * s, stage="confirm",
                 status="ok") for a in ("UNet", "Attention_UNet") for s in (1, 2, 3)]
    rows.append(dict(architecture="UNet", learning_rate=1e-3, batch_size=8, seed=4, stage="confirm", status="diverged"))
    rows.append(dict(architecture="UNet", learning_rate=1e-3, batch_size=8, seed=5, stage="confirm", status="failed"))
    conf = analyze(normalize_summary(pd.DataFrame(rows))).confirmation
    unet = [a for a in conf["arms"] if a["architecture"] == "UNet"][0]
    assert unet["n_runs"] == 5 and unet["n_scored"] == 4 and unet["n_diverged"] == 1 and unet["n_not_ok"] == 1
    assert unet["test_iou_mean"] == pytest.approx((0.81 + 0.82 + 0.83 + 0.0) / 4)
    assert 0 <= unet["ci_low"] and unet["ci_high"] <= 1


def test_sesoi_flag_reaches_the_decision(tmp_path):
    from analyze_hyperparameter_results import main
    rows = [dict(architecture=a, learning_rate=1e-3, batch_size=8, seed=s, test_iou=0.8 + 0.002 * (s % 3),
                 stage="confirm") for a in ("UNet", "Attention_UNet") for s in range(1, 9)]
    path = tmp_path / "eq.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert main(["--summary_file", str(path), "--no-figures", "--sesoi", "0.05"]) == 0
    js = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert js["confirmation"]["sesoi"] == 0.05 and js["architecture_comparison"][0]["decision"] == "equivalent"
    assert "equivalent within +-0.05" in js["architecture_comparison"][0]["verdict"]
    assert main(["--summary_file", str(path), "--no-figures", "--sesoi", "2"]) == 2


def test_one_confirmed_architecture_and_failed_runs(tmp_path):
    study = make_study(tmp_path / "one", history=False, test=True, **dict(GRID3, architectures=["UNet"]))
    add_confirmation(study, 3, val_fn=lambda c: 0.85, test_fn=lambda c: 0.8 + 0.01 * (c.seed % 3),
                     special={"exp_03_UNet_lr0.001_bs8_seed44": "failed"})
    run_analysis(study_dir=study, log=quiet, figures=False)
    js = json.loads((study / SUMMARY_JSON).read_text())
    assert js["architecture_comparison"] == []
    arms = js["confirmation"]["architectures"]
    assert arms[0]["n_runs"] == 3 and arms[0]["n_scored"] == 2 and arms[0]["n_not_ok"] == 1
    assert "a comparison needs two" in (study / REPORT_MD).read_text()
