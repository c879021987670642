"""The report's words on the confirmation stage (mitoseg.analysis.comparison): the executive summary's opening
sentence and lines, each pair's verdict sentence, and the section with every confirmation run. The answer first, then the numbers
behind it.
"""
from __future__ import annotations

from mitoseg.analysis.comparison import POWER
from mitoseg.analysis.decision import A_BETTER, B_BETTER, EQUIVALENT
from mitoseg.report.formats import NA, Doc, cfg_text, clean_text, f3, fg, fint, fp
from mitoseg.core.status import DIVERGED
from mitoseg.analysis.study_analysis import StudyAnalysis

CONFIRM_COMMAND = "python run_study.py confirm --study-dir STUDY --seeds 3 --folds 2"
NO_CONFIRMATION = ("No confirmation runs in this study. The ranking above is on the validation data the configurations "
                   "were selected on; to compare the architectures on the test set, rerun each architecture's selected "
                   f"configuration with fresh seeds on several data splits: `{CONFIRM_COMMAND}` "
                   "(`--scheduler pbs|slurm` for the cluster).")
RETEST_WARNING = ("Adding runs after seeing this result and testing again raises the false-positive rate: decide the "
                  "number of runs beforehand (a new confirmation plan) or correct for the repeated look.")


def _design(conf: dict) -> str:
    """The design in words, e.g. "4 runs per architecture on 2 folds" (from the compared architectures)."""
    arms = [a for a in conf["arms"] if a["n_scored"]]
    runs = sorted({a["n_scored"] for a in arms})
    folds = sorted({len(a["folds"]) for a in arms})
    return (f"{'/'.join(map(str, runs))} runs per architecture on {'/'.join(map(str, folds))} "
            f"fold{'s' if folds != [1] else ''}")


def runs_needed_text(need: dict, sesoi: float) -> str:
    """How many runs would detect sesoi, or why no number can be given."""
    if need is None:
        return "the runs needed cannot be computed"
    if need["runs"] is None:
        return f"no number of runs can be given for a difference of {sesoi:g}: {need['reason']}"
    design = (f"{need['folds']} folds x {need['seeds']} seeds" if need["folds"] > 1 else
              f"{need['seeds']} seeds on this one data split")
    return (f"about {need['runs']} runs per architecture ({design}) would be needed to detect a difference of "
            f"{sesoi:g} with power {POWER:g}")


def headline(conf: dict) -> str:
    """The executive summary's first sentence: the comparison's result."""
    if conf["reason"]:
        return f"The architectures cannot be compared on the confirmation runs: {conf['reason']}."
    pairs, sesoi = conf["pairs"], conf["sesoi"]
    wins = [p for p in pairs if p["decision"] in (A_BETTER, B_BETTER)]
    equal = [p for p in pairs if p["decision"] == EQUIVALENT]
    basis = (f"test IoU of the confirmation runs, {_design(conf)}, {conf['n_pairs']} pair"
             f"{'s' if conf['n_pairs'] > 1 else ''} with Bonferroni-adjusted intervals")
    if wins:
        text = f"On the {basis}: " + "; ".join(_win_text(p) for p in wins)
    else:
        text = f"No architecture is detectably better ({basis})"
    if len(equal) == len(pairs):
        text += f"; every pair is equivalent within +-{sesoi:g}"
    elif equal:
        text += "; equivalent within +-{:g}: {}".format(sesoi, ", ".join(f"{p['a']} and {p['b']}" for p in equal))
    elif not wins:
        text += f"; equivalence within +-{sesoi:g} is not established"
    if len(wins) + len(equal) < len(pairs):
        text += "; " + runs_needed_text(conf["runs_needed"], sesoi)
    return text + "."


def _win_text(p: dict) -> str:
    win, lose = (p["a"], p["b"]) if p["decision"] == A_BETTER else (p["b"], p["a"])
    sign = 1 if p["decision"] == A_BETTER else -1
    lo, hi = sorted((sign * p["ci_low"], sign * p["ci_high"]))
    return (f"{win} is detectably better than {lose}, by {f3(sign * p['diff_mean'])} test IoU "
            f"({100 * p['ci_level']:.1f} % CI {f3(lo)} to {f3(hi)})")


def arm_text(a: dict) -> str:
    """One architecture's confirmation runs in words."""
    ci = f"95 % CI {f3(a['ci_low'])} to {f3(a['ci_high'])}" if a["covers"] else "no interval (too few runs)"
    return f"{cfg_text(a)}: mean test IoU {f3(a['test_iou_mean'])} ({ci}; n={a['n_scored']} runs)"


def confirmation_summary(conf: dict) -> list:
    """The executive summary's lines on the confirmation runs after the headline: each pair's decision,
    the architectures' means, the runs that count, the power and the warning on adding runs."""
    scored = [arm_text(a) for a in conf["arms"] if a["n_scored"]]
    arms = ["Per architecture: " + "; ".join(scored) + "."] if scored else []
    if conf["reason"]:
        return arms + conf["notes"]
    lines = [f"`{p['decision']}`: {verdict(p)}" for p in conf["pairs"]] + arms
    lines += conf["notes"]
    flawed = [f"{a['n_degenerate']} of {a['n_scored']} {a['architecture']}" for a in conf["arms"] if a["n_degenerate"]]
    diverged = [f"{a['n_diverged']} {a['architecture']}" for a in conf["arms"] if a["n_diverged"]]
    failed = [f"{a['n_not_ok']} {a['architecture']}" for a in conf["arms"] if a["n_not_ok"]]
    if flawed:
        lines.append(f"Degenerate confirmation runs (did not learn; counted with their score): {', '.join(flawed)}.")
    if diverged:
        lines.append(f"Diverged confirmation runs (counted as test IoU 0, the score of predicting no mitochondria): "
                     f"{', '.join(diverged)}.")
    if failed:
        lines.append(f"Confirmation runs left out (failed, interrupted or missing: not outcomes of the configuration): "
                     f"{', '.join(failed)}.")
    lines.append(power_text(conf))
    return lines


def power_text(conf: dict) -> str:
    """The detectable difference of the rule at these runs, with the uncertainty of the spread."""
    judged = [p for p in conf["pairs"] if not p["reason"]]
    if not judged:
        return "No detectable difference can be computed (see the pairs above). " + RETEST_WARNING
    worst = max(judged, key=lambda p: p["min_detectable_difference"] or 2.0)
    mdd, rng = worst["min_detectable_difference"], worst["mdd_range"]
    if mdd is None:
        text = (f"With {_design(conf)}, no difference up to 1 IoU would be detected with power {POWER:g} "
                f"for {worst['a']} vs {worst['b']}")
    else:
        text = (f"With {_design(conf)}, the decision rule detects a difference of {f3(mdd)} test IoU with power "
                f"{POWER:g} (alpha {conf['alpha']:g}, Bonferroni over {conf['n_pairs']} "
                f"pair{'s' if conf['n_pairs'] > 1 else ''}; the least sensitive pair, {worst['a']} vs {worst['b']})")
    if rng:
        sd = f"the seed SD ({f3(worst['pooled_sd'])}, {worst['seed_df']} degrees of freedom)"
        if all(x is None for x in rng):
            text += f"; nor at either 95 % confidence limit of {sd}"
        else:
            lo, hi = (f3(x) if x is not None else "more than 1" for x in rng)
            text += f"; {lo} to {hi} at the 95 % confidence limits of {sd}"
    if len(worst["folds"]) > 1:
        text += (f"; the fold-to-fold SD of the difference ({f3(worst['fold_sd'])}) rests on {len(worst['folds'])} "
                 f"folds, {len(worst['folds']) - 1} degree{'s' if len(worst['folds']) > 2 else ''} of freedom")
    return (text + ". Computed by simulating the same rule (normal approximation; seed and image variances drawn "
                   "on their degrees of freedom). " + RETEST_WARNING)


def confirmation_section(doc: Doc, res: StudyAnalysis):
    """Each architecture's confirmation runs, the pairwise decisions, and every run."""
    doc.h(2, "Architecture comparison on fresh seeds and folds (confirmation stage)")
    conf = res.confirmation
    if conf is None:
        doc.p(NO_CONFIRMATION)
        return
    doc.p(f"Each architecture's configuration selected on {res.selected_on} (the grid's rank 1), retrained with seeds the grid "
          "did not use on each fold (data split), scored on the held-out test slices by IoU pooled over the test "
          "pixels. Degenerate runs count with their score, diverged runs as IoU 0; failed, interrupted or missing "
          f"runs are left out. Smallest difference that matters (sesoi): {conf['sesoi']:g}.")
    doc.table(["architecture", "learning rate", "batch size", "runs (counted)", "fold ids", "seeds", "mean test IoU",
               "95% CI (clipped to [0, 1])", "SD over runs", "mean val IoU", "degenerate", DIVERGED],
              [[a["architecture"], fg(a["learning_rate"]), fint(a["batch_size"]), f"{a['n_runs']} ({a['n_scored']})",
                ", ".join(map(str, a["folds"])) or NA, ", ".join(str(x) for x in a["seeds"]) or NA,
                f3(a["test_iou_mean"]), f"{f3(a['ci_low'])} to {f3(a['ci_high'])}", f3(a["test_iou_std"]),
                f3(a["val_iou_mean"]), str(a["n_degenerate"]), str(a["n_diverged"])] for a in conf["arms"]])
    if conf["reason"]:
        doc.p(f"Pairwise comparison not computed: {conf['reason']}.")
    else:
        doc.table(["A", "B", "mean A - B", "adjusted CI", "per-fold A - B", "fold SD", "p (raw; x pairs)",
                   f"detectable (power {POWER:g})", "decision", "verdict"], [pair_row(p) for p in conf["pairs"]])
        doc.p(power_text(conf))
    for line in ensemble_lines(res.ensemble):
        doc.p(line)
    rows = []
    for _, r in res.confirm_df.sort_values(["architecture", "seed"], na_position="last").iterrows():
        rows.append([str(r["experiment_id"]), r["architecture"], fg(r["learning_rate"]), fint(r["batch_size"]),
                     fint(r["fold"]) if "fold" in r and r["fold"] == r["fold"] else "0", fint(r["seed"]),
                     r["status"], f3(r["test_iou"]), f3(r["best_val_iou"]),
                     ("yes" if r["degenerate"] else "no") if r["success"] else "", clean_text(r["error"])[:120]])
    doc.p("Every confirmation run:")
    doc.table(["experiment", "architecture", "lr", "batch", "fold", "seed", "status", "test IoU", "val IoU",
               "degenerate", "error"], rows)


def ensemble_arm_text(a: dict) -> str:
    """One architecture's ensemble: its number beside the single runs', or why there is none; the runs left out."""
    notes = [f"{g['test_set']}: {f3(g['ensemble_iou'])} vs {f3(g['single_iou_mean'])} ({len(g['members'])} runs)"
             for g in a.get("groups") or [] if len(a["groups"]) > 1]
    if a["left_out"]:
        notes.append("excluded: " + ", ".join(f"{x['cell']} ({x['why']})" for x in a["left_out"]))
    if a["reason"]:
        text = f"{a['architecture']}: {a['reason']}"
    else:
        # the t-interval resamples the runs only: it says so, the test images are fixed in both numbers
        ci = (f"95 % CI {f3(a['single_ci_low'])} to {f3(a['single_ci_high'])} over the runs, not the test images, "
              "clipped to [0, 1]" if a["single_ci_low"] is not None
              else "no interval")
        text = (f"{a['architecture']}: ensemble of {len(a['members'])} runs: test IoU {f3(a['ensemble_iou'])} vs "
                f"single runs {f3(a['single_iou_mean'])} ({ci}; the same runs), at threshold {a['threshold']:g}; "
                f"{a['covers']}")
    return text + "".join(f"; {x}" for x in notes)


def ensemble_lines(ens) -> list:
    """The ensemble of each architecture's confirmation runs (mitoseg.predict.ensemble), or why it was not scored."""
    if ens is None:
        return []
    head = "Ensemble of the confirmation runs (mean probability of the members; not part of the comparison above)"
    if ens["reason"]:
        return [f"{head}: not scored: {ens['reason']}."]
    arms = ens["architectures"]
    if all(a["reason"] for a in arms):   # one line, not one per architecture, when none has a number
        return [f"{head}: not scored: " + "; ".join(ensemble_arm_text(a) for a in arms) + "."]
    return [f"{head}:"] + [("not scored: " if a["reason"] else "") + ensemble_arm_text(a) + "." for a in arms]


def pair_row(p: dict) -> list:
    """One row of the pairwise comparison table."""
    return [p["a"], p["b"], f3(p["diff_mean"]),
            f"{100 * p['ci_level']:.1f} % CI {f3(p['ci_low'])} to {f3(p['ci_high'])} ({p['adjustment']})",
            ", ".join(f3(x) for x in p["fold_differences"]) or NA, f3(p["fold_sd"]),
            f"{fp(p['p'])}; {fp(p['p_adjusted'])}", f3(p["min_detectable_difference"]), p["decision"], verdict(p)]


def verdict(p: dict) -> str:
    """A pair's verdict sentence (mitoseg.analysis.comparison's pair dict): the decision, and why."""
    a, b, sesoi = p["a"], p["b"], p["sesoi"]
    if p["reason"]:
        return f"{a} vs {b}: undecided, cannot be judged: {p['reason']}."
    ci = (f"{a} - {b} = {f3(p['diff_mean'])}, {100 * p['ci_level']:.1f} % CI {f3(p['ci_low'])} to "
          f"{f3(p['ci_high'])}, {p['adjustment']}; {fp(p['p'])}, adjusted {fp(p['p_adjusted'])[2:]}; the interval "
          f"covers {p['covers']}")
    if p["decision"] in (A_BETTER, B_BETTER):
        win, lose = (a, b) if p["decision"] == A_BETTER else (b, a)
        text = f"{win} is better than {lose}: the adjusted interval of the difference excludes 0 ({ci})."
        if -sesoi <= p["ci_low"] and p["ci_high"] <= sesoi:
            text += f" The whole interval lies within +-{sesoi:g}, smaller than the difference declared to matter."
    elif p["decision"] == EQUIVALENT:
        text = (f"{a} and {b} are equivalent within +-{sesoi:g}: the adjusted interval of the difference lies inside "
                f"+-{sesoi:g} ({ci}).")
    else:
        mdd = p["min_detectable_difference"]
        text = (f"{a} vs {b}: undecided: the adjusted interval of the difference includes 0 and reaches beyond "
                f"+-{sesoi:g}, so neither a difference nor equivalence is shown ({ci}); these runs would detect a "
                + (f"difference of {f3(mdd)} with power {POWER:g}." if mdd is not None else
                   f"difference with power {POWER:g} only if it exceeded 1 IoU, i.e. never."))
    return text
