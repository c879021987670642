"""The environment variables the project reads: one table (name, who reads it, what it means) and one
reader, `read`, which refuses a name not in the table, so every variable read is listed here.

`python -m mitoseg.core.env_vars` prints the table of the settings a user gives (docs/cluster.md
"Environment variables" is generated from it by docs/generate.py); the variables the schedulers set
inside a job are listed too, with their scheduler.

Standard library only: the array element and submit read it with the host Python.
"""
from __future__ import annotations

import os
import sys
from typing import NamedTuple, Optional


class Variable(NamedTuple):
    read_by: str
    meaning: str
    user: bool = True      # False: set by a scheduler inside a job, never by a user


_SCHED = "the elements (mitoseg/study/schedulers.py)"
# The user's settings, in the order docs/cluster.md lists them; a row may name several variables.
USER_ROWS = (
    (("MITOSEG_SITE",), "`submit`, `confirm`, `verify`, the elements",
     "the site profile when no `--site` is given; `submit` sets it for the elements"),
    (("TF_CONTAINER",), "the array elements, `submit` (for the analysis job's script), `verify`",
     "the TensorFlow image (`.sif`, sandbox folder or registry address); wins over the profile's `container`; "
     "unusable = exit 2"),
    (("CONTAINER_PYTHON",), "as `TF_CONTAINER`", "the Python inside the image (default `python`)"),
    (("PYTHON",), "the job scripts", "the host Python that runs `run_study.py` (default `python3`)"),
    (("DATA_DIR", "GRID_CONFIG"), "`local`, `submit`, `verify`, `list`, a new study's first element",
     "the data folder and grid JSON of a new study (a flag that contradicts them is refused); `submit` exports "
     "`GRID_CONFIG=` (empty) and `DATA_DIR=<the study's>` to its array"),
    (("STUDY_DIR",), "the elements",
     "the study an array writes into (`submit` sets it); `local`/`submit` without `--study-dir` do not read it "
     "and say so"),
    (("CELLS_PER_GPU",), "the elements", "cells per array element (`submit --cells-per-gpu` sets it)"),
    (("MITOSEG_ANALYSIS_SBATCH_ARGS", "MITOSEG_ANALYSIS_QSUB_ARGS"), "whoever submits the analysis job",
     "replace its own small request (see [What each job gets](#what-each-job-gets))"),
    (("MITOSEG_NO_ANALYSIS_JOB",), "the elements",
     "submit no analysis job (`submit` sets it: it submits the analysis itself)"),
    (("MITOSEG_RETRY_FAILED",), "the elements (`train_one.py`)",
     "`1`: retrain a cell that failed its retry budget (`submit --retry-failed` sets it; always exported, empty "
     "otherwise)"),
    (("MITOSEG_RETRY_BUDGET",), "`local`, `submit`, the elements (`train_one.py`)",
     "failures after which a resubmission stops retraining a cell; wins over the grid's and the site profile's "
     "`retry_budget` (default 2); `submit` and `local` pass the number they resolved to their cells"),
)
_SHOWN = {"MITOSEG_NO_ANALYSIS_JOB": "MITOSEG_NO_ANALYSIS_JOB=1"}   # the value that matters, in the docs
VARIABLES: dict[str, Variable] = {name: Variable(read_by, meaning) for names, read_by, meaning in USER_ROWS
                                  for name in names}
VARIABLES.update({
    "XDG_CONFIG_HOME": Variable("the site profile lookup", "the user's profile is $XDG_CONFIG_HOME/mitoseg/site.json"),
    "HOME": Variable("the site profile lookup", "without XDG_CONFIG_HOME: ~/.config/mitoseg/site.json"),
    "PATH": Variable("the launcher", "where apptainer / singularity are looked up"),
    "SLURM_JOB_ID": Variable(_SCHED, "Slurm: this job's id (a job of Slurm's)", False),
    "SLURM_ARRAY_JOB_ID": Variable(_SCHED, "Slurm: the array's job id", False),
    "SLURM_ARRAY_TASK_ID": Variable(_SCHED, "Slurm: the element's array index", False),
    "SLURM_CLUSTER_NAME": Variable(_SCHED, "Slurm: the cluster (keeps two clusters' ids apart)", False),
    "PBS_JOBID": Variable(_SCHED, "PBS Pro / Torque: this job's id, e.g. 1234[5].server", False),
    "PBS_ARRAY_ID": Variable(_SCHED, "PBS Pro: the array's job id", False),
    "PBS_ARRAY_INDEX": Variable(_SCHED, "PBS Pro: the element's array index", False),
    "PBS_ARRAYID": Variable(_SCHED, "Torque: the element's array index (also: a Torque job)", False),
})


def read(name: str, environ=None) -> Optional[str]:
    """$name from `environ` (default os.environ), as given (None when unset)."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not in mitoseg.core.env_vars.VARIABLES: add it to the table with its meaning")
    return (os.environ if environ is None else environ).get(name)


def markdown_table() -> str:
    """The user's settings as the table of docs/cluster.md."""
    lines = ["| variable | read by | what |", "|---|---|---|"]
    for names, read_by, meaning in USER_ROWS:
        shown = ", ".join(f"`{_SHOWN.get(n, n)}`" for n in names)
        lines.append(f"| {shown} | {read_by} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
