"""The architecture comparison (mitoseg/comparison.py) against scipy/statsmodels on known data, and
hidden-answer fake studies: validation and test rankings that disagree (selection must follow
validation), confirmation runs with a built-in difference and with none (the verdicts must say so)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mitoseg import comparison as K
from mitoseg.analysis import REPORT_MD, SUMMARY_JSON, run_analysis
from mitoseg.stats import select_configs
from mitoseg.study_analysis import analyze
from mitoseg.summary import SummaryError, load_summary, normalize_summary
from tests.fixtures_results import add_confirmation, make_study

A = np.array([0.81, 0.83, 0.80, 0.84, 0.82])
B = np.array([0.78, 0.80, 0.77, 0.79])
GRID3 = dict(architectures=["UNet", "Attention_UNet", "Attention_ResUNet"], learning_rates=[1e-3, 5e-3],
             batch_sizes=[8], seeds=[42])


def quiet(_):
    pass


# --- the statistics against the libraries ---------------------------------------------------------
def test_mean_ci_is_the_t_interval():
    got = K.mean_ci(A)
    lo, hi = sps.t.interval(0.95, len(A) - 1, loc=A.mean(), scale=sps.sem(A))
    assert got["mean"] == pytest.approx(A.mean()) and got["n"] == 5
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
    one = K.mean_ci([0.5, float("nan")])
    assert one["n"] == 1 and math.isnan(one["ci_low"])


def test_welch_interval_and_p_value():
    got = K.welch(A, B)
    assert got["p"] == pytest.approx(sps.ttest_ind(A, B, equal_var=False).pvalue, rel=1e-12)
    va, vb = A.var(ddof=1) / len(A), B.var(ddof=1) / len(B)
    dof = (va + vb) ** 2 / (va ** 2 / (len(A) - 1) + vb ** 2 / (len(B) - 1))
    half = sps.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert got["diff"] == pytest.approx(A.mean() - B.mean())
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((got["diff"] - half, got["diff"] + half), rel=1e-9)
    assert K.welch([0.8], B)["reason"].startswith("needs at least 2 runs")
    assert "same score" in K.welch([0.8, 0.8], [0.7, 0.7])["reason"]


def test_holm_matches_multipletests_and_by_hand():
    from statsmodels.stats.multitest import multipletests
    p = [0.01, 0.04, 0.03, float("nan")]
    got = K.holm(p)
    assert got[:3] == pytest.approx(list(multipletests(p[:3], method="holm")[1]))
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06])   # 3 x 0.01; max(2 x 0.03, .) ; 1 x 0.04 -> 0.06 (monotone)
    assert math.isnan(got[3])


def test_detectable_difference_and_seeds_needed_from_power_analysis():
    from statsmodels.stats.power import TTestIndPower
    sd = 0.01
    mdd = K.detectable_difference(4, 4, sd)
    # at that difference the two-sample t-test has exactly power 0.8
    assert TTestIndPower().power(effect_size=mdd / sd, nobs1=4, alpha=0.05, ratio=1.0) == pytest.approx(0.8, abs=1e-6)
    n = K.seeds_needed(0.01, sd)
    assert TTestIndPower().power(effect_size=1.0, nobs1=n, alpha=0.05) >= 0.8
    assert TTestIndPower().power(effect_size=1.0, nobs1=n - 1, alpha=0.05) < 0.8
    assert K.detectable_difference(1, 4, sd) != K.detectable_difference(1, 4, sd)   # NaN: not computable
    assert K.seeds_needed(0.0, sd) is None


def test_slice_bootstrap_paired_on_slices():
    rng = np.random.default_rng(1)
    difficulty = np.array([-0.2, 0.1, 0.05, 0.05])        # large shared slice effect
    a = 0.80 + difficulty + rng.normal(0, 0.003, (4, 4))
    b = 0.77 + difficulty + rng.normal(0, 0.003, (4, 4))
    boot = K.slice_bootstrap(a, b)
    assert boot["ci_low"] < a.mean() - b.mean() < boot["ci_high"]
    assert boot["ci_low"] > 0.02          # paired on slices, the shared difficulty cancels
    assert boot == K.slice_bootstrap(a, b)   # reproducible


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
    assert "No confirmation runs yet" in md
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


def test_built_in_difference_is_called(tmp_path):
    study, js, md = _confirmed_study(tmp_path, {"Attention_UNet": 0.06})
    pairs = {(p["a"], p["b"]): p for p in js["architecture_comparison"]}
    assert len(pairs) == 3
    for other in ("UNet", "Attention_ResUNet"):
        p = pairs[("Attention_UNet", other)]
        assert p["verdict"].startswith(f"Attention_UNet beats {other} by ")
        assert 0 < p["ci_low"] < p["diff_mean"] < p["ci_high"] and p["p_adjusted"] < 0.05
        assert abs(p["diff_mean"] - 0.06) < 0.03
        assert set(p) >= {"a", "b", "diff_mean", "ci_low", "ci_high", "p_adjusted", "verdict"}
    null = [p for p in js["architecture_comparison"] if "Attention_UNet" not in (p["a"], p["b"])][0]
    assert "no difference detected" in null["verdict"] and "power 0.8" in null["verdict"]
    assert js["min_detectable_difference"] > 0
    summary = md.split("## Executive summary")[1].split("## Key findings")[0]
    assert "Attention_UNet beats UNet by" in summary and "95 % CI" in summary
    # numbers in the JSON are those of the libraries on the summary CSV's confirmation rows
    csv = pd.read_csv(study / "hyperparameter_summary.csv")
    conf = csv[csv["stage"] == "confirm"]
    a = conf.loc[conf["architecture"] == "Attention_UNet", "test_iou"].to_numpy()
    b = conf.loc[conf["architecture"] == "UNet", "test_iou"].to_numpy()
    p = pairs[("Attention_UNet", "UNet")]
    assert p["diff_mean"] == pytest.approx(a.mean() - b.mean())
    raw = [sps.ttest_ind(conf.loc[conf["architecture"] == x["a"], "test_iou"],
                         conf.loc[conf["architecture"] == x["b"], "test_iou"], equal_var=False).pvalue
           for x in js["architecture_comparison"]]
    from statsmodels.stats.multitest import multipletests
    assert [x["p_adjusted"] for x in js["architecture_comparison"]] == pytest.approx(
        list(multipletests(raw, method="holm")[1]))
    assert p["bootstrap"] is not None and p["bootstrap"]["n_slices"] == 4


def test_no_difference_is_not_called(tmp_path):
    study, js, md = _confirmed_study(tmp_path, {}, slices=False, figures=True)
    assert (study / "architecture_comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "![Confirmation runs" in md
    assert len(js["architecture_comparison"]) == 3
    for p in js["architecture_comparison"]:
        assert "beats" not in p["verdict"] and p["verdict"].count("no difference detected") == 1
        assert "smallest difference that could be detected (power 0.8) is" in p["verdict"]
        assert "seeds per architecture would be needed" in p["verdict"]
        assert p["ci_low"] < 0 < p["ci_high"] and p["bootstrap"] is None
        assert p["min_detectable_difference"] == pytest.approx(K.detectable_difference(4, 4, p["pooled_sd"]))
    assert " beats " not in md.split("## Executive summary")[1].split("## Key findings")[0]


def test_identical_runs_and_single_seeds():
    rows = [dict(architecture=a, learning_rate=1e-3, batch_size=8, seed=s, best_val_iou=0.8, test_iou=0.8,
                 stage="confirm", status="ok") for a in ("UNet", "Attention_UNet") for s in (1, 2, 3)]
    grid = [dict(architecture=a, learning_rate=1e-3, batch_size=8, seed=0, best_val_iou=0.8) for a in ("UNet", "Attention_UNet")]
    res = analyze(normalize_summary(pd.DataFrame(grid + rows)))
    assert res.confirmation["pairs"][0]["verdict"].startswith("UNet vs Attention_UNet: no difference detected") \
        or res.confirmation["pairs"][0]["verdict"].startswith("Attention_UNet vs UNet: no difference detected")
    one = [r for r in rows if r["seed"] == 1]
    res1 = analyze(normalize_summary(pd.DataFrame(grid + one)))
    assert "cannot be judged: needs at least 2 runs of each" in res1.confirmation["pairs"][0]["verdict"]


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
    assert res.n_rows == 3 and res.confirmation["pairs"][0]["verdict"].startswith("Attention_UNet beats UNet")
    out = run_analysis(summary_file=path, output_dir=tmp_path / "out", log=quiet, figures=False)
    assert "Attention_UNet beats UNet" in (tmp_path / "out" / REPORT_MD).read_text()
    assert out["result"].best.iloc[0]["learning_rate"] == 1e-3
    bad = pd.DataFrame(rows).assign(stage="final")
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SummaryError, match="column stage holds 'final'"):
        load_summary(tmp_path / "bad.csv")


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
