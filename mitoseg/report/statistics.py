"""The report's statistics sections: hyperparameter effects per factor level, the tests of
mitoseg.analysis.anova (ANOVAs, Tukey HSD, correlations) and the comparison with a baseline study.

The grid's tests are exploratory (the grid selects on the same scores, nothing adjusts across
them); a test that could not run prints its reason instead of numbers.
"""
from __future__ import annotations

from mitoseg.analysis.anova import ALPHA
from mitoseg.report.formats import NA, Doc, f3, fg, fint, fp, mean_sd_n
from mitoseg.core.scores import finite
from mitoseg.analysis.stats import FACTORS
from mitoseg.analysis.study_analysis import StudyAnalysis


def effects_section(doc: Doc, res: StudyAnalysis):
    """Score and stability per level of each factor, pooled over the other factors."""
    m = res.metric
    doc.h(2, "Hyperparameter effects")
    doc.p(f"Mean +- SD (standard deviation; n = number of runs) per level, pooled over the other factors: the "
          f"{m.label} over the runs that count (diverged runs as 0) and the val-loss stability over successful "
          f"runs.")
    for factor, name in FACTORS.items():
        e, s = res.effects[factor], res.stability_effects[factor]
        if e.empty:
            doc.p(f"{name}: no successful run.")
            continue
        rows = []
        for _, r in e.iterrows():
            sr = s[s["level"] == r["level"]]
            st = mean_sd_n(sr.iloc[0]["mean"], sr.iloc[0]["std"], sr.iloc[0]["n"], 4) if len(sr) else NA
            level = fg(r["level"]) if factor == "learning_rate" else (fint(r["level"]) if factor == "batch_size"
                                                                       else str(r["level"]))
            rows.append([level, mean_sd_n(r["mean"], r["std"], r["n"]), st])
        doc.table([name, m.label, "val-loss stability"], rows)


def anova_rows(results) -> list:
    """The one-way ANOVA table's rows, one per factor."""
    rows = []
    for r in results:
        if r["reason"]:
            rows.append([r["name"], NA, NA, NA, f"not computed: {r['reason']}"])
        else:
            sig = "significant" if r["p"] < ALPHA else "not significant"
            rows.append([r["name"], f"F({r['df_between']}, {r['df_within']}) = {r['F']:.2f}", fp(r["p"]),
                         f3(r["eta_sq"]), f"{sig} at alpha {ALPHA}; {r['k']} levels, {r['n']} runs"])
    return rows


def factorial_block(doc: Doc, res: dict, title: str):
    """One factorial ANOVA (mitoseg.analysis.anova.factorial_anova) as a table, or why it was not computed."""
    if res["table"] is None:
        doc.p(f"{title}: not computed: {res['reason']}.")
        return
    doc.p(f"{title} (ordinary least squares with all interactions, type II sums of squares):")
    rows = []
    for _, r in res["table"].iterrows():
        rows.append([r["source"], fint(r["df"]), f3(r["sum_sq"], 4),
                     f"{r['F']:.2f}" if finite(r["F"]) else "", fp(r["p"]) if finite(r["p"]) else ""])
    doc.table(["source", "df", "sum of squares", "F", "p"], rows)


def statistics_section(doc: Doc, res: StudyAnalysis):
    """The one-way, two- and three-way ANOVAs, Tukey HSD between architectures and the correlations:
    exploratory, and the report says so."""
    m = res.metric
    doc.h(2, "Statistics of the grid (exploratory)")
    doc.p(f"These tests describe the grid and are exploratory, not a confirmatory comparison: the grid's "
          f"configurations are selected on the same {res.selected_on} scores, and the p-values below are not "
          f"adjusted for the number of tests in this section (Tukey HSD adjusts only over its own pairs of "
          f"architectures). Which architecture is better is answered by the confirmation runs on fresh seeds. "
          f"The tests use the {m.label} of the runs that count (every finished run; diverged runs as 0). Eta "
          f"squared = between-level sum of squares / total sum of squares.")
    doc.h(3, "One-way ANOVA per factor")
    doc.table(["factor", "F", "p", "eta squared", "note"], anova_rows(res.anova.values()))
    doc.h(3, "Two- and three-way ANOVA with interactions")
    for arch, r in res.two_way.items():
        factorial_block(doc, r, f"{arch}: learning rate x batch size")
    factorial_block(doc, res.three_way, "All architectures: architecture x learning rate x batch size")
    doc.h(3, "Tukey HSD between architectures")
    t = res.tukey
    if t["table"] is None:
        doc.p(f"Not computed: {t['reason']}.")
    else:
        doc.table(["architecture A", "architecture B", "mean B - A", "adjusted p", "95% CI (Tukey)", "different"],
                  [[r["group1"], r["group2"], f3(r["meandiff"], 4), fp(r["p_adj"]),
                    f"{f3(r['lower'], 4)} to {f3(r['upper'], 4)}", "yes" if r["reject"] else "no"]
                   for _, r in t["table"].iterrows()])
    doc.h(3, "Correlation of metrics (Pearson, successful runs)")
    cr = res.correlation
    if cr["table"] is None:
        doc.p(f"Not computed: {cr['reason']}.")
    else:
        tab = cr["table"]
        doc.table(["metric"] + list(tab.columns),
                  [[i] + [f"{v:+.2f}" if finite(v) else NA for v in tab.loc[i]] for i in tab.index])
        doc.p(f"`score` is the headline {m.label}.")


def baseline_section(doc: Doc, res: StudyAnalysis):
    """This study's best configurations against a baseline study's (--baseline_summary)."""
    doc.h(2, "Comparison with the baseline study")
    bl = res.baseline
    if bl is None:
        doc.p("No baseline summary was given (`--baseline_summary CSV`).")
        return
    if bl["rows"] is None:
        doc.p(f"Not computed: {bl['reason']}.")
        return
    doc.p(f"Both studies compared on `{bl['metric']}` (each architecture's best configuration by that metric in "
          f"the baseline study; this study's best configuration). Score factor = this study / baseline (higher "
          f"is better); stability factor = baseline / this study (above 1 = steadier now).")
    rows = []
    for _, r in bl["rows"].iterrows():
        rows.append([r["architecture"], f"lr {fg(r['baseline_lr'])}, bs {fint(r['baseline_bs'])} (n={fint(r['baseline_n'])})",
                     f3(r["baseline_score"]), f3(r["baseline_stability"], 4),
                     f"lr {fg(r['lr'])}, bs {fint(r['bs'])} (n={fint(r['n'])})", f3(r["score"]),
                     f3(r["stability"], 4), f3(r["score_factor"], 2), f3(r["stability_factor"], 2)])
    doc.table(["architecture", "baseline config", "baseline score", "baseline stability", "this study config",
               "score", "stability", "score factor", "stability factor"], rows)
    if bl["metric"] == "best_val_jaccard":
        doc.p("The comparison uses the soft Jaccard because the baseline summary has no thresholded IoU; the soft "
              "metric cannot show whether either model learned, so the score factor is not evidence of better "
              "segmentation.")
    elif bl["rows"]["baseline_degenerate"].fillna(False).astype(bool).any():
        archs = ", ".join(bl["rows"].loc[bl["rows"]["baseline_degenerate"].fillna(False).astype(bool), "architecture"])
        doc.p(f"The baseline study's best configuration is degenerate for: {archs}.")
