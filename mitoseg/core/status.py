"""How a cell ends: the status words its results JSON may hold, which of them are finished, and
the exit codes of every command, train_one.py's included (read by the runners, which may lack
numpy: stdlib only).

A finished cell ("ok" or "diverged": a NaN loss is a result, not an accident) is never retrained
unless asked; "failed" and "interrupted" cells are rerun by every runner. The states of a cell without a
readable results file, and the words `status` and `local` print, follow them.
"""
OK = "ok"
DIVERGED = "diverged"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (OK, DIVERGED, FAILED, INTERRUPTED)   # every status a results JSON may hold
DONE_STATUSES = (OK, DIVERGED)                   # finished: no runner trains the cell again (the others: rerun)

# A cell as read from its exp_ folder (mitoseg/cell_state.read_cell), besides the statuses above. One word per
# state: a cell without a result is STARTED (an exp_ folder) or MISSING (none) when read; `status` tells a
# STARTED cell RUNNING or STALLED by the clock, `local` says STALLED (its process ended without a record), and the
# report, which reads results and not progress, says MISSING for every cell without one.
UNREADABLE = "unreadable"   # a results file that load_results refuses
STARTED = "started"         # an exp_ folder without a results file: the files alone cannot say if a process trains it
MISSING = "missing"         # no exp_ folder (never started); in the report: no result at all
RUNNING = "running"         # status: started, a file written within the stall limit (a live lock on another node
                            # cannot be seen from here, and probing one could make a starting cell exit busy)
STALLED = "stalled"         # started, nothing training it: status: no write within the stall limit; local: its
                            # process ended without a results file
FINISHED = "finished"       # status: ok or diverged
FOREIGN = "foreign"         # status: the cell's folder holds another cell's results (mitoseg/core/membership.py)
BUSY = "running elsewhere"      # train_one.py exited EXIT_BUSY: another process holds the cell's lock


# Exit codes of every command (run_study.py / mitoseg-study, train_one.py / mitoseg-train,
# analyze_hyperparameter_results.py / mitoseg-analyze, predict.py / mitoseg-predict, models.py):
#   0  done: a cell ok or diverged (a result, not an accident); every cell finished; verify: no FAIL;
#      status: no cell failed
#   1  something ran and failed: a cell's exception (recorded in its results JSON), cells of a local
#      run that did not finish, a FAIL row of verify, `status` with at least one failed cell
#   2  bad input, refused before anything ran: a flag, a grid value, the data, a Python older than 3.8
#      or a package this command needs (one line names the pip extra)
#   3  interrupted by SIGTERM (walltime, preemption): the resume backup is kept, a rerun continues
#   4  busy: another process holds the cell's lock (mitoseg/cell/lock.py); nothing was done
#   5  the scheduler: no sbatch/qsub found, or it refused the submission; nothing was queued
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 3
EXIT_BUSY = 4
EXIT_SCHEDULER = 5


def is_done(status) -> bool:
    """True for a finished cell (see the module docstring)."""
    return status in DONE_STATUSES
