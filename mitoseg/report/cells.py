"""The report's count of cells: how many of the expected cells are in, by status, the grid's and the
confirmation stage's apart, and why none succeeded."""
from __future__ import annotations

from mitoseg.core.status import DIVERGED, FAILED, INTERRUPTED, MISSING, OK, STATUSES, UNREADABLE
from mitoseg.analysis.study_analysis import StudyAnalysis


def cells_sentence(res: StudyAnalysis, expected: int) -> str:
    """How many of the expected cells are in, by status (the confirmation stage's apart)."""
    confirm = res.confirm_df
    what = "grid cells" if len(confirm) else "cells"
    s = _counts_sentence(res.counts, res.n_finished, expected, what)
    if len(confirm):
        counts = confirm["status"].value_counts().to_dict()
        s += "; confirmation stage: " + _counts_sentence(counts, int(confirm["status"].isin(STATUSES).sum()),
                                                          len(confirm), "cells")
    return s + "."


def _counts_sentence(c: dict, n_finished: int, expected: int, what: str) -> str:
    parts = [f"{c[s]} {s}" for s in (OK, FAILED, DIVERGED, INTERRUPTED) if c.get(s)]
    s = f"{n_finished} of {expected} {what} are in ({', '.join(parts) if parts else 'none finished'})"
    extra = []
    if c.get(UNREADABLE):
        extra.append(f"{c[UNREADABLE]} with an unreadable results file")
    if c.get(MISSING):
        extra.append(f"{c[MISSING]} missing (not started, still running, or killed)")
    others = {k: v for k, v in c.items() if k not in (*STATUSES, UNREADABLE, MISSING)}
    extra += [f"{v} with status '{k}'" for k, v in others.items()]
    return s + ("; " + ", ".join(extra) if extra else "")


def why_none(res: StudyAnalysis) -> str:
    """Why no row succeeded, in words: the statuses of the rows (", all 3 failed")."""
    counts = {k: v for k, v in res.counts.items() if v}
    if not counts:
        return ""
    return ": " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
