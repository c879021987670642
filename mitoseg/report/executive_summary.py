"""The report's executive summary: the answer first (the confirmation's decision, or why the grid alone
cannot give one), then the grid's selection named as what it is, the cell counts, failures and
degenerate cells. Words only; the numbers come from mitoseg.analysis.study_analysis.StudyAnalysis."""
from __future__ import annotations

from mitoseg.core import scores as checks
from mitoseg.report.cells import cells_sentence, why_none
from mitoseg.report.confirmation import CONFIRM_COMMAND, confirmation_summary, headline
from mitoseg.report.formats import NA, Doc, cfg_text, f3, fint, fp, pct
from mitoseg.core.scores import finite
from mitoseg.core.status import DIVERGED, FAILED, INTERRUPTED
from mitoseg.analysis.study_analysis import StudyAnalysis

LOST = (FAILED, DIVERGED, INTERRUPTED)   # the statuses of cells that ran without a model that learned, in report order

def sd_text(mean, sd, n) -> str:
    """"0.822 (SD 0.017, n=2 runs)": a mean with its labelled standard deviation over runs."""
    if not finite(mean):
        return NA
    return f"{f3(mean)} ({'SD ' + f3(sd) + ', ' if finite(sd) else ''}n={fint(n)} run{'s' if n != 1 else ''})"


def grid_sentence(res: StudyAnalysis) -> str:
    """What the grid selected, named as what it is (or why it selected nothing)."""
    m = res.metric
    best = res.overall_best
    if res.n_rows == 0:
        return "This summary holds confirmation runs only: there is no grid selection to report."
    if res.n_ok == 0:
        return f"**No grid cell finished successfully, so no configuration can be ranked{why_none(res)}.**"
    if res.soft_only:
        return ("**This summary holds only soft Jaccard scores, and the soft metric cannot separate learned from "
                "constant models:** a model that predicts mitochondria everywhere, or one that outputs the same "
                "probability for every pixel, gets a soft Jaccard close to that of a model that segments, so the "
                "configurations are not ranked here. Rerun the cells (or add the thresholded `best_val_iou` and "
                "`all_foreground_jaccard` columns) to compare them.")
    if best is None:
        return "**No configuration has a score, so none can be ranked.**"
    base = best["baseline"]
    if res.no_model_learned:
        if finite(base):
            detail = (f"the best {m.label}, {f3(best['score_mean'])} ({cfg_text(best)}), does not clearly beat the "
                      f"all-foreground baseline {f3(base)} (a model must reach {f3(checks.required_iou(base))})")
        else:
            detail = "the all-foreground baseline is unknown, so no score can be shown to beat it"
        return (f"**Warning: no model learned.** {detail[0].upper() + detail[1:]}; {res.n_degenerate} of "
                f"{res.n_ok} successful cells are degenerate. Every ranking below compares models that did not "
                f"learn to segment mitochondria.")
    text = (f"The grid's selection, on {res.selected_on} (the data it was selected on, so the score is optimistic): "
            f"{cfg_text(best)} with {m.label} {sd_text(best['score_mean'], best['score_std'], best['n_scored'])}, "
            f"against an all-foreground baseline of {f3(base)}.")
    if m.kind == "val" and finite(best.get("test_iou_mean")):
        text += (f" Its grid runs' test IoU (shown, not used for selection) is "
                 f"{sd_text(best['test_iou_mean'], best['test_iou_std'], best['n_test'])}.")
    return text


def grid_ranks(res: StudyAnalysis) -> bool:
    """The grid has a selected configuration that learned (else grid_sentence says why not)."""
    return bool(res.n_ok and not res.soft_only and res.overall_best is not None and not res.no_model_learned)


def opening(res: StudyAnalysis) -> str:
    """The report's first sentence: the comparison's result with confirmation runs; without them, that the
    grid alone cannot rank the architectures (or why the grid ranks nothing at all)."""
    if res.confirmation is not None:
        return "**" + headline(res.confirmation) + "**"
    if not grid_ranks(res):
        return grid_sentence(res)
    return ("**The grid alone cannot rank the architectures:** its scores are validation scores of the "
            "configurations selected on them, from one data split, so the best one is optimistic and no difference "
            f"between architectures is tested; compare them on fresh seeds and folds with `{CONFIRM_COMMAND}`.")


def comparison_sentence(comp: dict, what: str) -> str:
    """Winner vs runner-up (mitoseg.analysis.anova.compare_runs) in words: the two means and their difference
    come from the same runs (mitoseg.analysis.stats.run_scores); the Welch test is exploratory."""
    a, b = comp["winner"], comp["runner_up"]
    diff = f3(comp["diff"])
    head = (f"{cfg_text(a)} ({f3(a['score_mean'])}, n={fint(comp['n_a'])}) vs the runner-up {cfg_text(b)} "
            f"({f3(b['score_mean'])}, n={fint(comp['n_b'])}), difference {diff}")
    if comp["reason"]:
        return f"{what}: {head}. Whether this is a real difference cannot be judged: {comp['reason']}."
    test = f"exploratory Welch t-test {fp(comp['p'])}, not adjusted for the grid's other comparisons"
    if comp["clear"]:
        return f"{what}: {head}; the winner is ahead beyond seed noise ({test})."
    return f"{what}: {head}; this is within seed noise ({test}), so no winner can be called."


def selection_caveat(res: StudyAnalysis) -> str:
    """What follows "selected on <data>": said plainly when the data is the test set."""
    if res.metric.kind == "test":
        return (": the summary has no validation IoU, so selection and score use the same test data and the score "
                "is optimistic")
    return ""


def executive_summary(doc: Doc, res: StudyAnalysis, expected: int):
    """The answer first (mitoseg.report.confirmation.headline), then the grid's selection, the cell counts,
    the confirmation's detail, failures and degenerate cells."""
    doc.h(2, "Executive summary")
    doc.p(opening(res))
    conf = res.confirmation
    if conf is not None or grid_ranks(res):
        doc.p(grid_sentence(res))
    if res.n_rows:
        doc.p(cells_sentence(res, expected))
    summary = confirmation_summary(conf) if conf is not None else []
    n, counts = res.n_rows, res.counts
    if res.n_ok and not res.soft_only:
        comp = res.comparisons.get("architectures")
        if comp:
            summary.append(comparison_sentence(comp, f"Best architecture in the grid (on {res.selected_on}, the data it was "
                                                     f"selected on{selection_caveat(res)})"))
        elif len(res.best) == 1:
            summary.append(f"Only one architecture ({res.best.iloc[0]['architecture']}) has successful runs, so "
                           f"architectures cannot be compared.")
    fails = [f"{counts.get(s, 0)} of {n} cells {s} ({pct(counts.get(s, 0), n)})" for s in LOST if counts.get(s)]
    if fails:
        summary.append("Failures: " + "; ".join(fails) + ".")
    if res.n_ok and not res.soft_only:
        summary.append(f"Degenerate (did not learn): {res.n_degenerate} of {res.n_ok} successful cells "
                       f"({pct(res.n_degenerate, res.n_ok)}).")
    doc.ul(summary)
