"""How a cell ends: the status words its results JSON may hold, which of them are finished, and
the exit codes of its train_one.py process (read by the runners, which may lack numpy: stdlib only).

A finished cell ("ok" or "diverged": a NaN loss is a result, not an accident) is never retrained
unless asked; "failed" and "interrupted" cells are rerun by every runner. The summary adds two
statuses of its own for cells without a readable results file.
"""
OK = "ok"
DIVERGED = "diverged"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (OK, DIVERGED, FAILED, INTERRUPTED)   # every status a results JSON may hold
DONE_STATUSES = (OK, DIVERGED)                   # finished: no runner trains the cell again (the others: rerun)

MISSING = "missing"         # summary rows: no results file (never ran, or still running)
UNREADABLE = "unreadable"   # summary rows: a results file that could not be read

# A cell as the runners and `run_study.py status` see it from outside, besides the statuses above
STARTED = "started"             # an exp_ folder without a results file: running, or killed hard
RUNNING = "running"             # status: training, its history growing
STALLED = "stalled"             # status: no write for longer than an epoch should take
FINISHED = "finished"           # status: ok or diverged
FOREIGN = "foreign"             # status: the cell's folder holds another cell's results (mitoseg/membership.py)
BUSY = "running elsewhere"      # train_one.py exited EXIT_BUSY: another process holds the cell's lock


# Exit codes: train_one.py's; the other scripts use EXIT_OK, EXIT_FAILED and EXIT_BAD_INPUT too
EXIT_OK = 0            # finished: ok, or diverged (a result, not an accident)
EXIT_FAILED = 1        # an exception: the failure is recorded in the results JSON
EXIT_BAD_INPUT = 2     # a flag, a grid or the data was refused before anything was trained
EXIT_INTERRUPTED = 3   # SIGTERM (walltime, preemption): the resume backup is kept
EXIT_BUSY = 4          # another process holds the cell's lock (mitoseg/cell_lock.py): nothing was done


def is_done(status) -> bool:
    """True for a finished cell (see the module docstring)."""
    return status in DONE_STATUSES
