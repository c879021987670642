"""The report's words on the confirmation stage (mitoseg.comparison): the executive summary's lines
and the section with every confirmation run. Verdicts first, then the numbers behind them.
"""
from __future__ import annotations

from .comparison import POWER
from .report_format import NA, Doc, cfg_text, ci_text, clean_text, f3, fg, fint, fp
from .stats import finite
from .study_analysis import StudyAnalysis

NO_CONFIRMATION = ("No confirmation runs in this study. The ranking above is on the validation data the configurations "
                   "were selected on; to compare the architectures on the test set, rerun each architecture's selected "
                   "configuration with fresh seeds: `python run_study.py confirm --study-dir STUDY --seeds 3` "
                   "(`--scheduler pbs|slurm` for the cluster).")


def arm_text(a: dict) -> str:
    """One architecture's confirmation runs in words."""
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


def confirmation_section(doc: Doc, res: StudyAnalysis):
    """Each architecture's confirmation runs, the pairwise comparison, and every run."""
    doc.h(2, "Architecture comparison on fresh seeds (confirmation stage)")
    conf = res.confirmation
    if conf is None:
        doc.p(NO_CONFIRMATION)
        return
    doc.p(f"Each architecture's configuration selected on {res.selected_on}, retrained with seeds the grid did not "
          "use, scored on the held-out test slices. Failed runs have no score and are not in the means; degenerate runs are "
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
                   "bootstrap 95% CI (seeds x slices, paired on slices)", f"detectable (power {POWER:g})", "verdict"],
                  [pair_row(p) for p in conf["pairs"]])
    rows = []
    for _, r in res.confirm_df.sort_values(["architecture", "seed"], na_position="last").iterrows():
        rows.append([str(r["experiment_id"]), r["architecture"], fg(r["learning_rate"]), fint(r["batch_size"]),
                     fint(r["seed"]), r["status"], f3(r["test_iou"]), f3(r["best_val_iou"]),
                     ("yes" if r["degenerate"] else "no") if r["success"] else "", clean_text(r["error"])[:120]])
    doc.p("Every confirmation run:")
    doc.table(["experiment", "architecture", "lr", "batch", "seed", "status", "test IoU", "val IoU", "degenerate",
               "error"], rows)


def pair_row(p: dict) -> list:
    """One row of the pairwise comparison table."""
    boot = p["bootstrap"]
    return [p["a"], p["b"], f3(p["diff_mean"]), f"{f3(p['ci_low'])} to {f3(p['ci_high'])}", fp(p["p"]),
            fp(p["p_adjusted"]),
            f"{f3(boot['ci_low'])} to {f3(boot['ci_high'])} ({boot['n_slices']} slices)" if boot
            else "no per-slice scores", f3(p["min_detectable_difference"]), p["verdict"]]
