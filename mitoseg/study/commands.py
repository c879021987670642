"""How the project's own programs are started as child processes, and where its job scripts are,
the same from a clone and from an installed package (pip install .).

Children run as `python -m mitoseg.cli.<name>` with the folder holding the `mitoseg` package
(launcher.REPO_DIR: the clone, or site-packages) first on PYTHONPATH, so the host Python, a
container's Python (apptainer passes the environment on; the folder is bound) and any working
folder find the same code. The job scripts live at the top of a clone (users `qsub` them by hand);
a wheel carries copies in mitoseg/jobs/ (setup.py puts them there).

Standard library only (an array element runs it with the host Python).
"""
from __future__ import annotations

import os
from pathlib import Path

from mitoseg.study.launcher import REPO_DIR

STUDY = "mitoseg.cli.study"
TRAIN = "mitoseg.cli.train"
ANALYZE = "mitoseg.cli.analyze"
JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"   # mitoseg/jobs/ of a wheel
PBS_JOB = "pbs_hyperparameter_optimization.sh"
SLURM_JOB = "slurm_hyperparameter_optimization.sh"
CONTAINER_PYTHONPATH = ("APPTAINERENV_PYTHONPATH", "SINGULARITYENV_PYTHONPATH")


def module_command(python: list, module: str, *args) -> list[str]:
    """`python -m module args` (python: the interpreter, or a container prefix ending in one)."""
    return [*python, "-m", module, *(str(a) for a in args)]


def code_env(environ=None) -> dict:
    """The environment for a child that imports mitoseg: REPO_DIR first on PYTHONPATH, and on the
    container's own PYTHONPATH when one is set for it (APPTAINERENV_/SINGULARITYENV_PYTHONPATH
    replaces PYTHONPATH inside the container)."""
    env = dict(os.environ if environ is None else environ)
    for var in ("PYTHONPATH", *(v for v in CONTAINER_PYTHONPATH if env.get(v))):
        rest = [p for p in env.get(var, "").split(os.pathsep) if p and p != str(REPO_DIR)]
        env[var] = os.pathsep.join([str(REPO_DIR), *rest])
    return env


def job_script(name: str) -> Path:
    """A job script: the installed copy (mitoseg/jobs/, in a wheel), else the clone's own."""
    installed = JOBS_DIR / name
    return installed if installed.is_file() else REPO_DIR / name
