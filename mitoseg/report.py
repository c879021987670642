"""Markdown / plain-text report and machine-readable JSON from the dict of mitoseg.stats.analyze.

Every number is formatted from the analysis; a missing value prints as "n/a" (never NaN), and a
test that could not run prints its reason. The same block list renders to Markdown and to text.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from . import checks
from .paths import FIG_BASELINE, FIG_BEST, FIG_COMPREHENSIVE, FIG_CONFIRMATION, FIG_CURVES, FIG_HEATMAPS
from .stats import ALPHA, FACTORS, OVERFIT_RELATIVE_GAP, finite

NA = "n/a"


# --- formatting ----------------------------------------------------------------------------------
def f3(x, digits: int = 3) -> str:
    return f"{float(x):.{digits}f}" if finite(x) else NA


def fg(x) -> str:
    return f"{float(x):g}" if finite(x) else NA


def fint(x) -> str:
    return str(int(round(float(x)))) if finite(x) else NA


def fp(p) -> str:
    if not finite(p):
        return NA
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def pct(a, b) -> str:
    return f"{100.0 * a / b:.0f}%" if b else NA


def mean_sd_n(mean, sd, n, digits=3) -> str:
    if not finite(mean):
        return NA
    s = f3(mean, digits)
    if finite(sd):
        s += f" +- {f3(sd, digits)}"
    return s + f" (n={fint(n)})"


def clean_text(text) -> str:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = re.sub(r"\bnan\b", "not-a-number", str(text), flags=re.IGNORECASE)
    return text.replace("|", "/").replace("\n", " ")


def cfg_text(row) -> str:
    return f"{row['architecture']} (lr {fg(row['learning_rate'])}, batch {fint(row['batch_size'])})"


# --- document blocks -----------------------------------------------------------------------------
class Doc:
    def __init__(self):
        self.blocks = []

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def ul(self, items):
        items = [i for i in items if i]
        if items:
            self.blocks.append(("ul", items))

    def table(self, headers, rows):
        self.blocks.append(("table", headers, [[clean_text(c) if isinstance(c, str) else str(c) for c in r] for r in rows]))

    def img(self, path, caption):
        self.blocks.append(("img", path, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "table":
                lines = ["| " + " | ".join(b[1]) + " |", "|" + "|".join("---" for _ in b[1]) + "|"]
                lines += ["| " + " | ".join(r) + " |" for r in b[2]]
                out.append("\n".join(lines))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        return "\n\n".join(out) + "\n"

    def text(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                t = b[2].upper() if b[1] <= 2 else b[2]
                out.append(t + "\n" + ("=" if b[1] == 1 else "-") * len(t))
            elif b[0] == "p":
                out.append(b[1].replace("**", ""))
            elif b[0] == "ul":
                out.append("\n".join(f"  * {i.replace('**', '')}" for i in b[1]))
            elif b[0] == "table":
                widths = [max(len(str(x)) for x in [h] + [r[i] for r in b[2]]) for i, h in enumerate(b[1])]
                fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
                out.append("\n".join([fmt(b[1]), fmt(["-" * w for w in widths])] + [fmt(r) for r in b[2]]))
            elif b[0] == "img":
                out.append(f"[figure {b[1]}] {b[2]}")
        return "\n\n".join(out).replace("`", "") + "\n"


# --- content -------------------------------------------------------------------------------------
def cells_sentence(res: dict, expected: int) -> str:
    c = res["counts"]
    finished = res["n_finished"]
    parts = [f"{c[s]} {s}" for s in ("ok", "failed", "diverged", "interrupted") if c.get(s)]
    s = f"{finished} of {expected} cells are in ({', '.join(parts) if parts else 'none finished'})"
    extra = []
    if c.get("unreadable"):
        extra.append(f"{c['unreadable']} with an unreadable results file")
    if c.get("missing"):
        extra.append(f"{c['missing']} missing (not started, still running, or killed)")
    others = {k: v for k, v in c.items() if k not in ("ok", "failed", "diverged", "interrupted", "unreadable", "missing")}
    extra += [f"{v} with status '{k}'" for k, v in others.items()]
    return s + ("; " + ", ".join(extra) if extra else "") + "."


def opening(res: dict) -> str:
    m = res["metric"]
    best = res["overall_best"]
    if res["n_ok"] == 0:
        return "**No cell finished successfully, so no configuration can be ranked.**"
    if res["soft_only"]:
        return ("**This summary holds only soft Jaccard scores, and the soft metric cannot separate learned from "
                "constant models:** a model that predicts mitochondria everywhere, or one that outputs the same "
                "probability for every pixel, gets a soft Jaccard close to that of a model that segments, so the "
                "configurations are not ranked here. Rerun the cells (or add the thresholded `best_val_iou` and "
                "`all_foreground_jaccard` columns) to compare them.")
    if best is None:
        return "**No configuration has a score, so none can be ranked.**"
    base = best["baseline"]
    if res["no_model_learned"]:
        if finite(base):
            detail = (f"the best {m.label}, {f3(best['score_mean'])} ({cfg_text(best)}), does not clearly beat the "
                      f"all-foreground baseline {f3(base)} (a model must reach {f3(checks.required_iou(base))})")
        else:
            detail = f"the all-foreground baseline is unknown, so no score can be shown to beat it"
        return (f"**Warning: no model learned.** {detail[0].upper() + detail[1:]}; {res['n_degenerate']} of "
                f"{res['n_ok']} successful cells are degenerate. Every ranking below compares models that did not "
                f"learn to segment mitochondria.")
    text = (f"The best configuration is {cfg_text(best)} with {m.label} "
            f"{mean_sd_n(best['score_mean'], best['score_std'], best['n_ok'])}, against an all-foreground baseline of "
            f"{f3(base)} (selected on {res['selected_on']}).")
    if m.kind == "val" and finite(best.get("test_iou_mean")):
        text += (f" Its held-out test IoU, not used for selection, is "
                 f"{mean_sd_n(best['test_iou_mean'], best['test_iou_std'], best['n_test'])}.")
    return text


def comparison_sentence(comp: dict, what: str) -> str:
    a, b = comp["winner"], comp["runner_up"]
    diff = f3(comp["diff"])
    head = (f"{cfg_text(a)} ({f3(a['score_mean'])}, n={fint(a['n_ok'])}) vs the runner-up {cfg_text(b)} "
            f"({f3(b['score_mean'])}, n={fint(b['n_ok'])}), difference {diff}")
    if comp["reason"]:
        return f"{what}: {head}. Whether this is a real difference cannot be judged: {comp['reason']}."
    if comp["clear"]:
        return f"{what}: {head}; the winner is ahead beyond seed noise (Welch t-test {fp(comp['p'])})."
    return (f"{what}: {head}; this is within seed noise (Welch t-test {fp(comp['p'])}), so no winner can be "
            f"called.")


def anova_rows(results) -> list:
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
    if res["table"] is None:
        doc.p(f"{title}: not computed: {res['reason']}.")
        return
    doc.p(f"{title} (ordinary least squares with all interactions, type II sums of squares):")
    rows = []
    for _, r in res["table"].iterrows():
        rows.append([r["source"], fint(r["df"]), f3(r["sum_sq"], 4),
                     f"{r['F']:.2f}" if finite(r["F"]) else "", fp(r["p"]) if finite(r["p"]) else ""])
    doc.table(["source", "df", "sum of squares", "F", "p"], rows)


def ci_text(lo, hi) -> str:
    return f"95 % CI {f3(lo)} to {f3(hi)}" if finite(lo) and finite(hi) else "no interval (fewer than 2 runs)"


def arm_text(a: dict) -> str:
    return (f"{cfg_text(a)}: mean test IoU {f3(a['test_iou_mean'])} ({ci_text(a['ci_low'], a['ci_high'])}, "
            f"n={a['n_scored']} seeds)")


def confirmation_summary(conf: dict) -> list:
    """The executive summary's lines on the confirmation runs: the verdicts first."""
    if conf["reason"]:
        return [f"Architecture comparison on the confirmation runs: not possible: {conf['reason']}."]
    lines = [f"Architecture comparison on fresh seeds (confirmation runs, test set): {p['verdict']}"
             for p in conf["pairs"]]
    lines.append("Per architecture: " + "; ".join(arm_text(a) for a in conf["arms"] if a["n_scored"]) + ".")
    flawed = [f"{a['n_degenerate']} of {a['n_scored']} {a['architecture']}" for a in conf["arms"] if a["n_degenerate"]]
    failed = [f"{a['n_not_ok']} {a['architecture']}" for a in conf["arms"] if a["n_not_ok"]]
    if flawed:
        lines.append(f"Degenerate confirmation runs (did not learn; kept in the means): {', '.join(flawed)}.")
    if failed:
        lines.append(f"Confirmation runs without a score (failed, diverged or missing): {', '.join(failed)}.")
    if finite(conf["min_detectable_difference"]):
        d = conf["mdd_detail"]
        lines.append(f"With {d['runs_per_architecture']} runs per architecture, the smallest difference these runs "
                     f"could detect (power {conf['power']:g}, alpha {conf['alpha']:g}) is "
                     f"{f3(conf['min_detectable_difference'])} test IoU.")
    return lines


def confirmation_section(doc: Doc, res: dict):
    doc.h(2, "Architecture comparison on fresh seeds (confirmation stage)")
    conf, runs = res.get("confirmation"), res.get("confirm_df")
    if conf is None:
        doc.p("No confirmation runs in this study. The ranking above is on the validation data the configurations "
              "were selected on; to compare the architectures on the test set, rerun each architecture's selected "
              "configuration with fresh seeds: `python run_study.py confirm --study-dir STUDY --seeds 3` "
              "(`--scheduler pbs|slurm` for the cluster).")
        return
    doc.p("Each architecture's validation-selected configuration, retrained with seeds the grid did not use, scored "
          "on the held-out test slices. Failed runs have no score and are not in the means; degenerate runs are "
          "(they are outcomes of the configuration).")
    doc.table(["architecture", "learning rate", "batch size", "runs (scored)", "seeds", "mean test IoU",
               "95% CI over seeds", "std", "mean val IoU", "degenerate"],
              [[a["architecture"], fg(a["learning_rate"]), fint(a["batch_size"]), f"{a['n_runs']} ({a['n_scored']})",
                ", ".join(str(x) for x in a["seeds"]) or NA, f3(a["test_iou_mean"]),
                f"{f3(a['ci_low'])} to {f3(a['ci_high'])}", f3(a["test_iou_std"]), f3(a["val_iou_mean"]),
                str(a["n_degenerate"])] for a in conf["arms"]])
    if conf["reason"]:
        doc.p(f"Pairwise comparison not computed: {conf['reason']}.")
    else:
        doc.table(["A", "B", "mean A - B", "95% CI (Welch)", "p (Welch)", "p Holm-adjusted",
                   "bootstrap 95% CI (seeds x slices, paired on slices)", "detectable (power 0.8)", "verdict"],
                  [[p["a"], p["b"], f3(p["diff_mean"]), f"{f3(p['ci_low'])} to {f3(p['ci_high'])}", fp(p["p"]),
                    fp(p["p_adjusted"]),
                    f"{f3(p['bootstrap']['ci_low'])} to {f3(p['bootstrap']['ci_high'])} ({p['bootstrap']['n_slices']} "
                    f"slices)" if p["bootstrap"] else "no per-slice scores", f3(p["min_detectable_difference"]),
                    p["verdict"]] for p in conf["pairs"]])
    rows = []
    for _, r in runs.sort_values(["architecture", "seed"], na_position="last").iterrows():
        rows.append([str(r["experiment_id"]), r["architecture"], fg(r["learning_rate"]), fint(r["batch_size"]),
                     fint(r["seed"]), r["status"], f3(r["test_iou"]), f3(r["best_val_iou"]),
                     ("yes" if r["degenerate"] else "no") if r["success"] else "", clean_text(r["error"])[:120]])
    doc.p("Every confirmation run:")
    doc.table(["experiment", "architecture", "lr", "batch", "seed", "status", "test IoU", "val IoU", "degenerate",
               "error"], rows)


def build_document(res: dict, source: str, expected: int, figures: dict, out_dir: Path) -> Doc:
    m = res["metric"]
    df, ok, best, stable, configs = res["df"], res["ok"], res["best"], res["stable"], res["configs"]
    doc = Doc()
    doc.h(1, "Hyperparameter optimisation report")
    doc.p(f"Source: `{source}`. Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}. Headline metric: "
          f"{m.label} ({m.note}).")

    # executive summary
    doc.h(2, "Executive summary")
    doc.p(opening(res))
    doc.p(cells_sentence(res, expected))
    summary = []
    n = res["n_rows"]
    conf = res.get("confirmation")
    if conf is not None:
        summary += confirmation_summary(conf)
    if res["n_ok"] and not res["soft_only"]:
        comp = res["comparisons"].get("architectures")
        if comp:
            summary.append(comparison_sentence(comp, "Best architecture in the grid (on validation, the data it was "
                                                     "selected on)"))
            if conf is None:
                summary.append("No confirmation runs yet, so the architectures are not compared on the test set: "
                               "`python run_study.py confirm --study-dir STUDY --seeds 3` reruns each architecture's "
                               "selected configuration with fresh seeds.")
        elif len(best) == 1:
            summary.append(f"Only one architecture ({best.iloc[0]['architecture']}) has successful runs, so "
                           f"architectures cannot be compared.")
    fails = [f"{res['counts'].get(s, 0)} of {n} cells {s} ({pct(res['counts'].get(s, 0), n)})"
             for s in ("failed", "diverged", "interrupted") if res["counts"].get(s)]
    if fails:
        summary.append("Failures: " + "; ".join(fails) + ".")
    if res["n_ok"] and not res["soft_only"]:
        summary.append(f"Degenerate (did not learn): {res['n_degenerate']} of {res['n_ok']} successful cells "
                       f"({pct(res['n_degenerate'], res['n_ok'])}).")
    doc.ul(summary)

    # key findings
    doc.h(2, "Key findings")
    findings = []
    if not res["soft_only"]:
        for arch, notes in res["edges"].items():
            for note in notes:
                findings.append(f"{arch}: {note}.")
        for arch, o in res["overfitting"].items():
            if not finite(o["gap"]):
                continue
            text = (f"{arch} best configuration: final val loss minus train loss = {f3(o['gap'], 4)}"
                    f" ({pct(o['relative'], 1) if finite(o['relative']) else NA} of the train loss)")
            if finite(o["epochs_to_best"]) and finite(o["epochs_run"]):
                text += f"; best epoch {fint(o['epochs_to_best'])} of {fint(o['epochs_run'])} run"
            text += ("; signs of overfitting" if o["flag"] else "; no sign of overfitting by this rule") + "."
            findings.append(text)
    for f, r in res["anova"].items():
        if r["reason"] is None and r["p"] < ALPHA:
            findings.append(f"The {r['name']} has a significant effect on the score (one-way ANOVA {fp(r['p'])}, "
                            f"eta squared {f3(r['eta_sq'])}).")
    computed = [r for r in res["anova"].values() if r["reason"] is None]
    if computed and all(r["p"] >= ALPHA for r in computed):
        findings.append("No factor has a significant effect on the score in one-way ANOVA at alpha "
                        f"{ALPHA} ({', '.join(r['name'] + ' ' + fp(r['p']) for r in computed)}).")
    if len(stable):
        s0 = stable.iloc[0]
        findings.append(f"Steadiest validation loss: {cfg_text(s0)}, stability {f3(s0['stability_mean'], 4)}.")
    if not res["has_seeds"] and res["n_ok"]:
        findings.append("Every configuration has at most one successful run, so run-to-run noise is unknown and "
                        "differences between configurations cannot be tested against it.")
    doc.ul(findings or ["No finding can be stated from the data in."])

    # optimal configuration
    doc.h(2, "Optimal configuration per architecture")
    if res["soft_only"]:
        doc.p("Not determined: the soft Jaccard cannot tell a learned model from a constant one (see the "
              "executive summary). The complete results table below lists every cell.")
    elif best.empty:
        doc.p("Not determined: no configuration has a successful run.")
    else:
        rows = []
        for _, r in best.iterrows():
            learned = "no (degenerate)" if r["degenerate"] else (
                "yes" if finite(r["baseline"]) and r["score_mean"] >= checks.required_iou(r["baseline"]) else
                "unclear" if not finite(r["baseline"]) else "no")
            rows.append([r["architecture"], fg(r["learning_rate"]), fint(r["batch_size"]),
                         mean_sd_n(r["score_mean"], r["score_std"], r["n_ok"]),
                         mean_sd_n(r["test_iou_mean"], r["test_iou_std"], r["n_test"]), f3(r["baseline"]), learned,
                         f3(r["stability_mean"], 4), str(r["best_run"])])
        doc.p(f"Each architecture's configuration with the highest mean {m.label} over its successful, "
              f"non-degenerate runs (selected on {res['selected_on']}). The test column is shown, not used for "
              f"selection.")
        doc.table(["architecture", "learning rate", "batch size", f"{m.label} mean +- std (n)",
                   "test IoU mean +- std (n), not used for selection", "all-foreground baseline", "learned",
                   "val-loss stability", "best run"], rows)

    confirmation_section(doc, res)

    # effects
    doc.h(2, "Hyperparameter effects")
    doc.p(f"Mean +- standard deviation (number of successful runs) of the {m.label} and of the val-loss stability "
          f"per level, pooled over the other factors.")
    for factor, name in FACTORS.items():
        e, s = res["effects"][factor], res["stability_effects"][factor]
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

    # figures
    doc.h(2, "Figures")
    captions = {
        FIG_HEATMAPS: f"Mean {m.label} and val-loss stability per learning rate x batch size for each "
                                 "architecture; hatched cells have no successful run (status shown), red frames "
                                 "mark degenerate configurations.",
        FIG_COMPREHENSIVE: f"{m.label} and stability vs learning rate and batch size (mean +- standard "
                                      "error over runs), score vs stability of every run, and score per architecture; "
                                      "the red dashed line is the all-foreground baseline.",
        FIG_BEST: "Best configuration of each architecture: score (error bar = "
                                              "standard error over seeds) and stability.",
        FIG_CURVES: "Loss and scores per epoch of the best run of each architecture.",
        FIG_BASELINE: "This study's best configurations against the baseline study's: score and "
                                   "stability side by side, with the improvement factors.",
        FIG_CONFIRMATION: "Confirmation runs (fresh seeds): the test IoU of every run (dots) and each "
                                       "architecture's mean with its 95 % t interval over seeds.",
    }
    if not figures:
        doc.p("Figures were not drawn in this run (--no-figures).")
    for name, value in figures.items():
        if isinstance(value, Path):
            doc.img(name, captions.get(name, name))
        else:
            doc.p(f"`{name}` not produced: {value}.")

    # per architecture
    doc.h(2, "Detailed results per architecture")
    for arch in sorted(df["architecture"].unique()):
        doc.h(3, arch)
        sub = df[df["architecture"] == arch]
        c = sub["status"].value_counts()
        items = [f"cells: {len(sub)} ({', '.join(f'{v} {k}' for k, v in c.items())})"]
        b = best[best["architecture"] == arch]
        st = stable[stable["architecture"] == arch]
        if len(b) and not res["soft_only"]:
            r = b.iloc[0]
            items.append(f"best performance: lr {fg(r['learning_rate'])}, batch {fint(r['batch_size'])}: "
                         f"{m.label} {mean_sd_n(r['score_mean'], r['score_std'], r['n_ok'])}, stability "
                         f"{f3(r['stability_mean'], 4)}")
        if len(st):
            r = st.iloc[0]
            items.append(f"best stability: lr {fg(r['learning_rate'])}, batch {fint(r['batch_size'])}: stability "
                         f"{f3(r['stability_mean'], 4)}, {m.label} {f3(r['score_mean'])}")
        comp = res["comparisons"].get(arch)
        if comp and not res["soft_only"]:
            items.append(comparison_sentence(comp, "best vs second configuration"))
        deg = sub[sub["success"] & sub["degenerate"]]
        if len(deg):
            items.append("degenerate runs: " + "; ".join(f"{r['experiment_id']} ({clean_text(r['degenerate_reason'])})"
                                                         for _, r in deg.iterrows()))
        doc.ul(items)

    # statistics
    doc.h(2, "Statistics")
    doc.p(f"All tests use the {m.label} of successful runs. Eta squared = between-level sum of squares / total sum "
          f"of squares.")
    doc.h(3, "One-way ANOVA per factor")
    doc.table(["factor", "F", "p", "eta squared", "note"], anova_rows(res["anova"].values()))
    doc.h(3, "Two- and three-way ANOVA with interactions")
    for arch, r in res["two_way"].items():
        factorial_block(doc, r, f"{arch}: learning rate x batch size")
    factorial_block(doc, res["three_way"], "All architectures: architecture x learning rate x batch size")
    doc.h(3, "Tukey HSD between architectures")
    t = res["tukey"]
    if t["table"] is None:
        doc.p(f"Not computed: {t['reason']}.")
    else:
        doc.table(["architecture A", "architecture B", "mean B - A", "adjusted p", "95% interval", "different"],
                  [[r["group1"], r["group2"], f3(r["meandiff"], 4), fp(r["p_adj"]),
                    f"{f3(r['lower'], 4)} to {f3(r['upper'], 4)}", "yes" if r["reject"] else "no"]
                   for _, r in t["table"].iterrows()])
    doc.h(3, "Correlation of metrics (Pearson, successful runs)")
    cr = res["correlation"]
    if cr["table"] is None:
        doc.p(f"Not computed: {cr['reason']}.")
    else:
        tab = cr["table"]
        doc.table(["metric"] + list(tab.columns),
                  [[i] + [f"{v:+.2f}" if finite(v) else NA for v in tab.loc[i]] for i in tab.index])
        doc.p(f"`score` is the headline {m.label}.")

    # baseline
    doc.h(2, "Comparison with the baseline study")
    bl = res.get("baseline")
    if bl is None:
        doc.p("No baseline summary was given (`--baseline_summary CSV`).")
    elif bl["rows"] is None:
        doc.p(f"Not computed: {bl['reason']}.")
    else:
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

    # definitions
    doc.h(2, "Metric definitions")
    doc.ul([
        "validation IoU (`best_val_iou`): foreground intersection over union of the best epoch's model on the "
        "validation slices, probabilities thresholded at 0.5.",
        "test IoU (`test_iou`): the same on held-out test slices, when present.",
        "soft Jaccard (`best_val_jaccard`): Jaccard on probabilities with +1 smoothing, as in the original study; "
        "it is not a segmentation score and cannot separate learned from constant models.",
        "all-foreground baseline (`all_foreground_jaccard`): the IoU of predicting mitochondria at every pixel.",
        f"degenerate: IoU below baseline + max({checks.MIN_MARGIN}, {checks.RELATIVE_MARGIN} x baseline), or "
        f"predicted foreground fraction below {checks.MIN_FOREGROUND_FRACTION} or above "
        f"{checks.MAX_FOREGROUND_FRACTION} (rule in `mitoseg/checks.py`, recomputed from the summary columns).",
        "val-loss stability (`val_loss_stability`): sample standard deviation of the validation loss over the last "
        "10 epochs; lower is steadier.",
        "overfitting gap (`overfitting_gap`): final validation loss minus final training loss; flagged as signs of "
        f"overfitting when above {OVERFIT_RELATIVE_GAP:.0%} of the training loss.",
        f"winner within noise: the best configuration's successful seeds against the runner-up's, Welch t-test at "
        f"alpha {ALPHA}; with one run per configuration the noise is unknown and no winner is called on it.",
        "selection: each architecture's configuration with the highest mean validation IoU over its successful, "
        "non-degenerate grid runs (`mitoseg.stats.select_configs`, the one rule the report, figures, confirmation "
        "stage and predict.py use); test scores never select.",
        "confirmation runs (stage `confirm`): the selected configurations retrained with seeds the study had not "
        "used; the architecture comparison uses only their test IoU (95 % t interval over seeds; differences with "
        "a Welch interval and Welch t-test, p-values Holm-adjusted over the pairs; detectable difference and seeds "
        "needed from a two-sample t-test power analysis at power 0.8).",
    ])

    # limitations
    doc.h(2, "Limitations")
    lim = [cells_sentence(res, expected)]
    if res["n_ok"]:
        er = ok["epochs_run"].dropna()
        if len(er):
            lim.append(f"Successful runs trained for {fint(er.min())} to {fint(er.max())} epochs (early stopping "
                       f"or the epoch budget)." if er.min() != er.max() else
                       f"Every successful run trained for {fint(er.min())} epochs.")
        runs = configs.loc[configs["n_ok"] > 0, "n_ok"]
        if len(runs):
            lim.append(f"Successful runs per configuration: {fint(runs.min())} to {fint(runs.max())}."
                       + ("" if res["has_seeds"] else " With one run per configuration, run-to-run noise is unknown."))
    if m.kind == "test":
        lim.append("The summary has no validation IoU, so configurations are selected on the test score itself and "
                   "the best test IoU is an optimistic estimate; an independent set would be needed for an unbiased "
                   "one.")
    elif m.kind == "val":
        lim.append("The grid's scores of the selected configurations are optimistic (the maximum of noisy "
                   "validation means); the confirmation runs on fresh seeds are the unbiased estimate.")
    if res["soft_only"]:
        lim.append("Only soft scores are available; no statement about segmentation quality can be made.")
    lost = sum(res["counts"].get(s, 0) for s in ("failed", "diverged", "interrupted", "unreadable", "missing"))
    if lost:
        lim.append(f"{lost} of {n} cells have no usable result, so the means above exclude them; configurations "
                   f"with fewer successful runs weigh less reliably.")
    doc.ul(lim)

    # complete table
    doc.h(2, "Complete results")
    rows = []
    for _, r in df.sort_values(["architecture", "learning_rate", "batch_size", "seed"], na_position="last").iterrows():
        rows.append([str(r["experiment_id"]), r["architecture"], fg(r["learning_rate"]), fint(r["batch_size"]),
                     fint(r["seed"]), r["status"], f3(r["score"]),
                     f3(r["test_iou"]) if m.column != "test_iou" else "(headline)", f3(r["best_val_jaccard"]),
                     f3(r["baseline"]), ("yes" if r["degenerate"] else "no") if r["success"] else "",
                     f3(r["stability"], 4), fint(r["epochs_run"]), clean_text(r["error"])[:120]])
    doc.p("The grid's cells (the confirmation runs are listed in their own section).")
    doc.table(["experiment", "architecture", "lr", "batch", "seed", "status", m.label,
               "test IoU (not used for selection)", "soft Jaccard", "all-foreground baseline", "degenerate",
               "stability", "epochs", "error"], rows)
    return doc


# --- JSON ----------------------------------------------------------------------------------------
def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, pd.DataFrame):
        return [_jsonable(r) for r in x.to_dict(orient="records")]
    if isinstance(x, pd.Series):
        return _jsonable(x.to_dict())
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def summary_json(res: dict, source: str, expected: int, figures: dict) -> dict:
    m = res["metric"]
    cfg_cols = ["architecture", "learning_rate", "batch_size", "n_runs", "n_ok", "score_mean", "score_std",
                "score_sem", "stability_mean", "baseline", "degenerate", "best_run"]

    def test_entry(r):
        return {k: r[k] for k in ("name", "F", "p", "eta_sq", "df_between", "df_within", "reason")}

    comps = {}
    for key, c in res["comparisons"].items():
        comps[key] = dict(winner=cfg_text(c["winner"]), runner_up=cfg_text(c["runner_up"]), difference=c["diff"],
                          n_winner=c["n_a"], n_runner_up=c["n_b"], p_welch=c["p"], beyond_noise=c["clear"],
                          reason=c["reason"])
    out = dict(
        source=source, generated=_dt.datetime.now().isoformat(timespec="seconds"),
        metric=dict(column=m.column, label=m.label, kind=m.kind, note=m.note),
        cells=dict(expected=expected, rows=res["n_rows"], finished=res["n_finished"], successful=res["n_ok"],
                   by_status=res["counts"]),
        flags=dict(
            no_model_learned=res["no_model_learned"], soft_only=res["soft_only"], has_seeds=res["has_seeds"],
            degenerate_cells=res["n_degenerate"],
            degenerate_fraction_of_successful=(res["n_degenerate"] / res["n_ok"]) if res["n_ok"] else None,
            failed_fraction=res["counts"].get("failed", 0) / res["n_rows"],
            diverged_fraction=res["counts"].get("diverged", 0) / res["n_rows"],
            edge_of_grid=res["edges"], overfitting=res["overfitting"]),
        best_configurations=None if res["soft_only"] else res["best"][cfg_cols],
        most_stable_configurations=res["stable"][cfg_cols],
        winner_vs_runner_up=comps,
        effects={f: res["effects"][f] for f in FACTORS},
        stability_effects={f: res["stability_effects"][f] for f in FACTORS},
        tests=dict(
            one_way_anova={f: test_entry(r) for f, r in res["anova"].items()},
            two_way_anova={a: dict(table=r["table"], reason=r["reason"]) for a, r in res["two_way"].items()},
            three_way_anova=dict(table=res["three_way"]["table"], reason=res["three_way"]["reason"]),
            tukey_architectures=res["tukey"],
            correlation=dict(table=None if res["correlation"]["table"] is None else
                             res["correlation"]["table"].to_dict(), reason=res["correlation"]["reason"])),
        baseline_comparison=None if res.get("baseline") is None else res["baseline"],
        best_per_architecture=best_per_architecture_json(res),
        architecture_comparison=comparison_json(res.get("confirmation")),
        min_detectable_difference=(None if res.get("confirmation") is None
                                   else res["confirmation"]["min_detectable_difference"]),
        confirmation=confirmation_json(res.get("confirmation")),
        figures={k: (str(v.name) if isinstance(v, Path) else f"not produced: {v}") for k, v in figures.items()},
    )
    return _jsonable(out)


def best_per_architecture_json(res: dict) -> list:
    """The validation-selected configuration of each architecture ([] for a soft-only summary)."""
    if res["soft_only"]:
        return []
    kind = res["metric"].kind
    out = []
    for _, r in res["selection"].iterrows():
        val = (r["val_iou_mean"], r["val_iou_std"]) if kind == "val" else (None, None)
        test = (r["test_iou_mean"], r["test_iou_std"])
        out.append(dict(architecture=r["architecture"], learning_rate=r["learning_rate"],
                        batch_size=r["batch_size"], selected_on=res["selected_on"], n_runs=r["n_runs"],
                        val_iou_mean=val[0], val_iou_std=val[1], test_iou_mean=test[0], test_iou_std=test[1],
                        n_test=r["n_test"], degenerate=r["degenerate"], best_run=r["best_run"]))
    return out


PAIR_FIELDS = ("a", "b", "diff_mean", "ci_low", "ci_high", "p_adjusted", "verdict", "p", "n_a", "n_b", "mean_a",
               "mean_b", "significant", "min_detectable_difference", "seeds_needed", "target_difference",
               "pooled_sd", "bootstrap", "reason")


def comparison_json(conf: Optional[dict]) -> list:
    if conf is None:
        return []
    return [{k: p[k] for k in PAIR_FIELDS} for p in conf["pairs"]]


def confirmation_json(conf: Optional[dict]) -> Optional[dict]:
    if conf is None:
        return None
    return dict(architectures=conf["arms"], reason=conf["reason"], alpha=conf["alpha"], power=conf["power"],
                runs=conf["n_rows"], by_status=conf["counts"], min_detectable_difference_detail=conf["mdd_detail"])


def render(res: dict, source: str, expected: int, figures: dict, out_dir: Path) -> tuple[str, str, str]:
    """(markdown, text, json text)."""
    doc = build_document(res, source, expected, figures, out_dir)
    js = json.dumps(summary_json(res, source, expected, figures), indent=2, allow_nan=False) + "\n"
    return doc.markdown(), doc.text(), js
