"""The Markdown and plain-text report of a StudyAnalysis (mitoseg.analysis.study_analysis), section by section.

`build_document` calls one function per section, in the report's order; the confirmation and
statistics sections are in mitoseg.report.confirmation and mitoseg.report.statistics, the number
formatting and the Doc block list (one content, two formats) in mitoseg.report.formats, the JSON in
mitoseg.report.json_summary. Every number is formatted from the analysis.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from mitoseg.core import scores as checks
from mitoseg.analysis.anova import ALPHA
from mitoseg.analysis.comparison import POWER
from mitoseg.core.paths import FIG_BASELINE, FIG_BEST, FIG_COMPREHENSIVE, FIG_CONFIRMATION, FIG_CURVES, FIG_HEATMAPS
from mitoseg.report.confirmation import confirmation_section
from mitoseg.report.formats import NA, Doc, cfg_text, clean_text, f3, fg, fint, fp, mean_sd_n, pct
from mitoseg.report.cells import cells_sentence
from mitoseg.report.json_summary import summary_json
from mitoseg.report.statistics import baseline_section, effects_section, statistics_section
from mitoseg.core.scores import finite
from mitoseg.core.status import DIVERGED, FAILED, INTERRUPTED, MISSING, UNREADABLE
from mitoseg.analysis.stats import thresholds
from mitoseg.analysis.study_analysis import OVERFIT_RELATIVE_GAP, StudyAnalysis
from mitoseg.core.version import version_line

from mitoseg.report.executive_summary import comparison_sentence, executive_summary, selection_caveat


# --- findings and the selected configurations ----------------------------------------------------
def overfitting_findings(res: StudyAnalysis) -> list:
    """One sentence per architecture on its selected configuration's overfitting gap."""
    findings = []
    for arch, o in res.overfitting.items():
        if not finite(o["gap"]):
            continue
        text = (f"{arch} best configuration: final val loss minus train loss = {f3(o['gap'], 4)}"
                f" ({pct(o['relative'], 1) if finite(o['relative']) else NA} of the train loss)")
        if finite(o["epochs_to_best"]) and finite(o["epochs_run"]):
            text += f"; best epoch {fint(o['epochs_to_best'])} of {fint(o['epochs_run'])} run"
        text += ("; signs of overfitting" if o["flag"] else "; no sign of overfitting by this rule") + "."
        findings.append(text)
    return findings


def key_findings(doc: Doc, res: StudyAnalysis):
    """Edges of the grid, overfitting, significant factors, the steadiest configuration, seed noise."""
    doc.h(2, "Key findings")
    findings = []
    if not res.soft_only:
        for arch, notes in res.edges.items():
            findings += [f"{arch}: {note}." for note in notes]
        findings += overfitting_findings(res)
    for r in res.anova.values():
        if r["reason"] is None and r["p"] < ALPHA:
            findings.append(f"The {r['name']} has a significant effect on the score (exploratory one-way ANOVA "
                            f"{fp(r['p'])}, eta squared {f3(r['eta_sq'])}).")
    computed = [r for r in res.anova.values() if r["reason"] is None]
    if computed and all(r["p"] >= ALPHA for r in computed):
        findings.append("No factor has a significant effect on the score in exploratory one-way ANOVA at alpha "
                        f"{ALPHA} ({', '.join(r['name'] + ' ' + fp(r['p']) for r in computed)}).")
    if len(res.stable):
        s0 = res.stable.iloc[0]
        findings.append(f"Steadiest validation loss: {cfg_text(s0)}, stability {f3(s0['stability_mean'], 4)}.")
    if not res.has_seeds and res.n_ok:
        findings.append("Every configuration has at most one run that counts, so run-to-run noise is unknown and "
                        "differences between configurations cannot be tested against it.")
    doc.ul(findings or ["No finding can be stated from the data in."])


def learned_text(r) -> str:
    """Did a selected configuration learn (its mean beats the all-foreground baseline clearly), and in
    how many of its runs that count?"""
    n, learned = int(r["n_scored"]), int(r["n_scored"] - r["n_degenerate"] - r["n_diverged"])
    runs = f" ({learned} of {n} runs learned)" if learned < n else ""
    if r["degenerate"]:
        return "no (no run learned)"
    if not finite(r["baseline"]):
        return "unclear" + runs
    return ("yes" if r["score_mean"] >= checks.required_iou(r["baseline"]) else "no") + runs


RULE_WORDS = ("every finished run counts: a degenerate run with its own score, a diverged run as not learned with "
              "IoU 0; failed, interrupted and missing cells do not count")


def best_configurations(doc: Doc, res: StudyAnalysis):
    """The selected configuration of each architecture (mitoseg.analysis.stats.select_configs)."""
    m, best = res.metric, res.best
    doc.h(2, "Optimal configuration per architecture")
    if res.soft_only:
        doc.p("Not determined: the soft Jaccard cannot tell a learned model from a constant one (see the "
              "executive summary). The complete results table below lists every cell.")
        return
    if best.empty:
        doc.p("Not determined: no configuration has a successful run.")
        return
    on_test = m.kind == "test"
    rows = [[r["architecture"], fg(r["learning_rate"]), fint(r["batch_size"]),
             mean_sd_n(r["score_mean"], r["score_std"], r["n_ok"])]
            + ([] if on_test else [mean_sd_n(r["test_iou_mean"], r["test_iou_std"], r["n_test"])])
            + [f3(r["baseline"]), learned_text(r), f3(r["stability_mean"], 4), str(r["best_run"])]
            for _, r in best.iterrows()]
    doc.p(f"Each architecture's configuration with the highest mean {m.label} over its grid runs ({RULE_WORDS}); "
          f"selected on {res.selected_on}{selection_caveat(res)}."
          + (" The test column is shown, not used for selection." if not on_test else ""))
    doc.table(["architecture", "learning rate", "batch size", f"{m.label} mean +- SD (n)"]
              + ([] if on_test else ["test IoU mean +- SD (n), not used for selection"])
              + ["all-foreground baseline", "learned", "val-loss stability", "best run"], rows)


# --- figures and per-architecture details ---------------------------------------------------------
def figure_captions(label: str) -> dict:
    """Figure file name -> caption (label: the headline metric's words)."""
    return {
        FIG_HEATMAPS: f"Mean {label} (over the runs that count; one colour scale for every architecture) and "
                      "val-loss stability (one scale too) per learning rate x batch size; hatched cells have no "
                      "successful run (status shown), red frames mark configurations none of whose runs learned.",
        FIG_COMPREHENSIVE: f"{label} and stability vs learning rate and batch size (mean +- SE, the standard error "
                           "over runs), score vs stability of every successful run, and score per architecture; the "
                           "red dashed line is the all-foreground baseline.",
        FIG_BEST: "Selected configuration of each architecture: score (error bar = SE, the standard error over "
                  "runs; none where n=1) and stability.",
        FIG_CURVES: "Loss and scores per epoch of the best run of each architecture.",
        FIG_BASELINE: "This study's best configurations against the baseline study's: score and stability side by "
                      "side, with the improvement factors.",
        FIG_CONFIRMATION: "Confirmation runs (fresh seeds, each fold): the test IoU of every run (dots) and each "
                          "architecture's mean with its 95 % interval (seeds, folds and, with per-slice counts, test "
                          "images; clipped to [0, 1]). The decisions compare architectures within folds, so "
                          "overlapping intervals here do not by themselves mean undecided.",
    }


def figures_section(doc: Doc, res: StudyAnalysis, figures: dict):
    """Each figure drawn (figures: file name -> Path), or why it was not."""
    doc.h(2, "Figures")
    captions = figure_captions(res.metric.label)
    if not figures:
        doc.p("Figures were not drawn in this run (--no-figures).")
    for name, value in figures.items():
        if isinstance(value, Path):
            doc.img(name, captions.get(name, name))
        else:
            doc.p(f"`{name}` not produced: {value}.")


def per_architecture(doc: Doc, res: StudyAnalysis):
    """Per architecture: its cells, selected and steadiest configuration, best vs second, degenerate runs."""
    m, df, best, stable = res.metric, res.df, res.best, res.stable
    doc.h(2, "Detailed results per architecture")
    for arch in sorted(df["architecture"].unique()):
        doc.h(3, arch)
        sub = df[df["architecture"] == arch]
        c = sub["status"].value_counts()
        items = [f"cells: {len(sub)} ({', '.join(f'{v} {k}' for k, v in c.items())})"]
        b = best[best["architecture"] == arch]
        st = stable[stable["architecture"] == arch]
        if len(b) and not res.soft_only:
            r = b.iloc[0]
            items.append(f"selected: lr {fg(r['learning_rate'])}, batch {fint(r['batch_size'])}: "
                         f"{m.label} {mean_sd_n(r['score_mean'], r['score_std'], r['n_ok'])}, stability "
                         f"{f3(r['stability_mean'], 4)}")
        if len(st):
            r = st.iloc[0]
            items.append(f"best stability: lr {fg(r['learning_rate'])}, batch {fint(r['batch_size'])}: stability "
                         f"{f3(r['stability_mean'], 4)}, {m.label} {f3(r['score_mean'])}")
        comp = res.comparisons.get(arch)
        if comp and not res.soft_only:
            items.append(comparison_sentence(comp, "best vs second configuration"))
        deg = sub[sub["success"] & sub["degenerate"]]
        if len(deg):
            items.append("degenerate runs: " + "; ".join(f"{r['experiment_id']} ({clean_text(r['degenerate_reason'])})"
                                                         for _, r in deg.iterrows()))
        doc.ul(items)


# --- definitions, limitations, every cell ----------------------------------------------------------
def definitions(doc: Doc, res: StudyAnalysis):
    """What each metric and rule of the report means."""
    doc.h(2, "Metric definitions")
    doc.ul([
        "validation IoU (`best_val_iou`): foreground intersection over union of the best epoch's model on the "
        f"validation slices, probabilities thresholded at {res.metric.threshold or thresholds(res.df)}.",
        "test IoU (`test_iou`): the same on held-out test slices, when present.",
        "soft Jaccard (`best_val_jaccard`): Jaccard on probabilities with +1 smoothing, as in the original study; "
        "it is not a segmentation score and cannot separate learned from constant models.",
        "all-foreground baseline (`all_foreground_jaccard`): the IoU of predicting mitochondria at every pixel.",
        f"degenerate: IoU below baseline + max({checks.MIN_MARGIN}, {checks.RELATIVE_MARGIN} x baseline) (at most half "
        f"the way from the baseline to 1), or predicted foreground fraction below {checks.MIN_FOREGROUND_FRACTION} or "
        f"above {checks.MAX_FOREGROUND_FRACTION} where less is foreground (rule in `mitoseg/core/scores.py`, recomputed "
        "from the summary columns).",
        "val-loss stability (`val_loss_stability`): sample standard deviation of the validation loss over the last "
        "10 epochs; lower is steadier.",
        "overfitting gap (`overfitting_gap`): final validation loss minus final training loss; flagged as signs of "
        f"overfitting when above {OVERFIT_RELATIVE_GAP:.0%} of the training loss.",
        f"winner within noise (exploratory): the selected configuration's runs that count against the "
        f"runner-up's, Welch t-test at alpha {ALPHA}, not adjusted for the grid's other comparisons; with one run "
        f"per configuration the noise is unknown and no winner is called on it.",
        f"runs that count (both stages, `mitoseg.analysis.stats.counted_runs`): {RULE_WORDS}.",
        f"selection: each architecture's configuration with the highest mean {res.metric.label} over its grid runs "
        "that count (`mitoseg.analysis.stats.select_configs`, the one rule the report, figures, confirmation stage and "
        "predict.py use)" + ("; test scores never select." if res.metric.kind != "test" else
                             "; this summary has no validation IoU, so it selects on test (optimistic)."),
        "confirmation runs (stage `confirm`): the selected configurations retrained with seeds the study had not "
        "used, on one or more folds (data splits); the architecture comparison uses only their test IoU pooled over "
        "each run's test pixels. Per fold, the difference of the architectures' mean; its variance from the seeds "
        "and (with per-slice counts) a moving-block bootstrap of the test slices; folds combined by a random-effects "
        "model with the Hartung-Knapp correction; each pair decided by its interval at 1 - 0.05/m (Bonferroni over "
        "the m pairs): a_better / b_better when it excludes 0, equivalent when it lies within +-sesoi, else "
        f"undecided; the detectable difference (power {POWER:g}) and runs needed by simulating the same rule "
        "(mitoseg/analysis/decision.py; Hyperparameter_Optimization_Strategy.md).",
    ])


def limitations(doc: Doc, res: StudyAnalysis, expected: int):
    """Missing cells, epochs, runs per configuration, optimism of the selected scores."""
    m = res.metric
    doc.h(2, "Limitations")
    lim = [cells_sentence(res, expected)]
    if res.n_ok:
        er = res.ok["epochs_run"].dropna()
        if len(er):
            lim.append(f"Successful runs trained for {fint(er.min())} to {fint(er.max())} epochs (early stopping "
                       f"or the epoch budget)." if er.min() != er.max() else
                       f"Every successful run trained for {fint(er.min())} epochs.")
        runs = res.configs.loc[res.configs["n_scored"] > 0, "n_scored"]
        if len(runs):
            lim.append(f"Runs that count per configuration: {fint(runs.min())} to {fint(runs.max())}."
                       + ("" if res.has_seeds else " With one run per configuration, run-to-run noise is unknown."))
    if m.kind == "test":
        lim.append("The summary has no validation IoU, so configurations are selected on the test score itself and "
                   "the best test IoU is an optimistic estimate; an independent set would be needed for an unbiased "
                   "one.")
    elif m.kind == "val":
        lim.append("The grid's scores of the selected configurations are optimistic (the maximum of noisy "
                   "validation means); the confirmation runs on fresh seeds are the unbiased estimate.")
    if res.soft_only:
        lim.append("Only soft scores are available; no statement about segmentation quality can be made.")
    if res.counts.get(DIVERGED) and not res.soft_only:
        lim.append(f"{res.counts[DIVERGED]} diverged cell(s) count in the means above as runs that did not learn "
                   f"(IoU 0).")
    lost = sum(res.counts.get(s, 0) for s in (FAILED, INTERRUPTED, UNREADABLE, MISSING))
    if lost:
        lim.append(f"{lost} of {res.n_rows} cells have no result (failed, interrupted, unreadable or missing), so "
                   f"the means above exclude them; configurations with fewer runs weigh less reliably.")
    doc.ul(lim)


def degenerate_cell(res: StudyAnalysis, r) -> str:
    """The degenerate column of one cell: unknown without a thresholded IoU, a diverged cell as counted."""
    if r["status"] == DIVERGED:
        return "diverged: counts as 0"
    if not r["success"]:
        return ""
    if res.soft_only:
        return "unknown (no thresholded IoU)"
    return "yes" if r["degenerate"] else "no"


def complete_results(doc: Doc, res: StudyAnalysis):
    """Every grid cell, one row each."""
    m = res.metric
    doc.h(2, "Complete results")
    rows = []
    for _, r in res.df.sort_values(["architecture", "learning_rate", "batch_size", "seed"], na_position="last").iterrows():
        rows.append([str(r["experiment_id"]), r["architecture"], fg(r["learning_rate"]), fint(r["batch_size"]),
                     fint(r["seed"]), r["status"], f3(r["score"]),
                     f3(r["test_iou"]) if m.column != "test_iou" else "(headline)", f3(r["best_val_jaccard"]),
                     f3(r["baseline"]), degenerate_cell(res, r),
                     f3(r["stability"], 4), fint(r["epochs_run"]), clean_text(r["error"])[:120]])
    doc.p("The grid's cells (the confirmation runs are listed in their own section).")
    doc.table(["experiment", "architecture", "lr", "batch", "seed", "status", m.label,
               "test IoU (not used for selection)", "soft Jaccard", "all-foreground baseline", "degenerate",
               "stability", "epochs", "error"], rows)


# --- the document --------------------------------------------------------------------------------
def build_document(res: StudyAnalysis, source: str, expected: int, figures: dict) -> Doc:
    """The report, section by section (expected: the number of grid cells the study planned)."""
    doc = Doc()
    doc.h(1, "Hyperparameter optimisation report")
    doc.p(f"Source: `{source}`. Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by {version_line()}. "
          "Headline metric: "
          f"{res.metric.label} ({res.metric.note}).")
    executive_summary(doc, res, expected)
    key_findings(doc, res)
    best_configurations(doc, res)
    confirmation_section(doc, res)
    effects_section(doc, res)
    figures_section(doc, res, figures)
    per_architecture(doc, res)
    statistics_section(doc, res)
    baseline_section(doc, res)
    definitions(doc, res)
    limitations(doc, res, expected)
    complete_results(doc, res)
    return doc


def render(res: StudyAnalysis, source: str, expected: int, figures: dict) -> tuple[str, str, str]:
    """(markdown, text, json text)."""
    doc = build_document(res, source, expected, figures)
    js = json.dumps(summary_json(res, source, expected, figures), indent=2, allow_nan=False) + "\n"
    return doc.markdown(), doc.text(), js
