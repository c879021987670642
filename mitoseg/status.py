"""The status vocabulary: what a cell's results JSON may say, and which statuses are finished.

A finished cell ("ok" or "diverged": a NaN loss is a result, not an accident) is never retrained
unless asked; "failed" and "interrupted" cells are rerun by every runner. The summary adds two
statuses of its own for cells without a readable results file.
"""
OK = "ok"
DIVERGED = "diverged"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (OK, DIVERGED, FAILED, INTERRUPTED)   # every status a results JSON may hold
DONE_STATUSES = (OK, DIVERGED)                   # finished: no runner trains the cell again
LOST_STATUSES = (FAILED, INTERRUPTED)            # rerun by the next submission

MISSING = "missing"         # summary rows: no results file (never ran, or still running)
UNREADABLE = "unreadable"   # summary rows: a results file that could not be read


def is_done(status) -> bool:
    """True for a finished cell (see the module docstring)."""
    return status in DONE_STATUSES
