"""The batch schedulers (Slurm, PBS Pro, Torque): which one runs us, the ids of an array job, the
"after the whole array" dependency, and the sbatch/qsub command lines of the array and of its
dependent analysis job.

The analysis job: the first element of an array that starts (an O_EXCL claim file in the study
folder, one per array job id) submits `run_analysis.sh` (written into the study folder; rerun it by
hand with `bash STUDY/run_analysis.sh`) with afterany semantics on the whole array:
Slurm `sbatch --dependency=afterany:<array id> --kill-on-invalid-dep=yes` (also under the
slurm-wlm-torque `qsub` wrapper: the element sees SLURM_* variables), PBS Pro
`qsub -W depend=afterany:<id>[].server`, Torque `qsub -W depend=afteranyarray:<id>[].server`.
`run_study.py submit` (`submit_study`) submits it itself and tells the elements not to
(MITOSEG_NO_ANALYSIS_JOB=1).

Standard library only (plus mitoseg.grid/io_utils/launcher/multi_cell/paths, stdlib-only too): an
array element runs it with the *host* Python before it starts the TensorFlow container.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

from . import grid as G
from .io_utils import atomic_write_text
from .commands import PBS_JOB, SLURM_JOB, STUDY, job_script, module_command
from .launcher import REPO_DIR, launcher, study_binds
from .multi_cell import ENV as K_ENV, array_size
from .paths import StudyPaths

PBS_SCRIPT = job_script(PBS_JOB)
SLURM_SCRIPT = job_script(SLURM_JOB)
NO_ANALYSIS_ENV = "MITOSEG_NO_ANALYSIS_JOB"
# The array index of an element: PBS Pro, Torque, Slurm (first one set wins).
SCHEDULER_INDEX_VARIABLES = ("PBS_ARRAY_INDEX", "PBS_ARRAYID", "SLURM_ARRAY_TASK_ID")
# The element's own array variables must not leak into the (non-array) analysis job.
_ARRAY_VARS = frozenset(SCHEDULER_INDEX_VARIABLES) | {"SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_COUNT",
                                                      "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
                                                      "SLURM_ARRAY_TASK_STEP", "PBS_ARRAY_ID"}


# --- inside a job: the scheduler and the array's ids ---------------------------------------------
def task_index_from_env(environ=None) -> Optional[int]:
    """PBS Pro's PBS_ARRAY_INDEX, Torque's PBS_ARRAYID or Slurm's SLURM_ARRAY_TASK_ID, else None."""
    environ = os.environ if environ is None else environ
    for var in SCHEDULER_INDEX_VARIABLES:
        value = environ.get(var)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"${var}={value!r} is not an integer array index") from None
    return None


def scheduler_of(environ=None) -> Optional[str]:
    """'slurm' (also under slurm-wlm-torque's qsub wrapper), 'torque', 'pbspro' or None."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID"):
        return "slurm"
    if env.get("PBS_JOBID"):
        return "torque" if env.get("PBS_ARRAYID") not in (None, "") else "pbspro"
    return None


def _pbs_id_parts(job_id: str) -> tuple[str, str]:
    """'1234[5].server' / '1234[].server' / '1234.server' -> ('1234', '.server')."""
    m = re.match(r"^\s*(\d+)(?:\[[^\]]*\])?(\.\S*)?\s*$", job_id or "")
    if not m:
        raise ValueError(f"cannot parse PBS job id {job_id!r}")
    return m.group(1), m.group(2) or ""


def _slurm_array_id(env) -> str:
    return env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"]   # SLURM_JOB_ID: a non-array job


def _pbs_array_id(env) -> Optional[str]:
    return env.get("PBS_ARRAY_ID") or env.get("PBS_JOBID")


def array_job_key(environ=None) -> Optional[str]:
    """An id shared by every element of one array submission (None outside a scheduler).

    Slurm: SLURM_ARRAY_JOB_ID (else SLURM_JOB_ID for a non-array job). PBS Pro / Torque:
    PBS_ARRAY_ID or PBS_JOBID with the element's [index] removed. A server/cluster name is kept
    so ids from two clusters sharing a file system cannot collide."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID"):
        cluster = env.get("SLURM_CLUSTER_NAME")
        return f"slurm_{_slurm_array_id(env)}" + (f".{cluster}" if cluster else "")
    pbs = _pbs_array_id(env)
    if pbs:
        num, server = _pbs_id_parts(pbs)
        return f"pbs_{num}{server}"
    return None


def dependency_spec(scheduler: str, job_id: str, array: bool = True) -> str:
    """'after every element of job `job_id` ended, whatever its exit status' in the scheduler's
    words: Slurm afterany:<id>; PBS afterany:<num>[].server (PBS Pro) or afteranyarray:<num>[].server
    (Torque) for an array, afterany:<num>.server for a plain job."""
    if scheduler == "slurm":
        return f"afterany:{job_id}"
    num, server = _pbs_id_parts(job_id)
    if not array:
        return f"afterany:{num}{server}"
    return f"afterany:{num}[]{server}" if scheduler == "pbspro" else f"afteranyarray:{num}[]{server}"


def dependency_target(environ=None) -> Optional[tuple[str, str]]:
    """(scheduler, dependency spec on the array this job belongs to), or None outside a scheduler."""
    env = os.environ if environ is None else environ
    sched = scheduler_of(env)
    if sched is None:
        return None
    if sched == "slurm":
        return sched, dependency_spec(sched, _slurm_array_id(env))
    job_id = _pbs_array_id(env)
    return sched, dependency_spec(sched, job_id, array="[" in job_id)


# --- command lines ---------------------------------------------------------------------------------
def detect_scheduler() -> Optional[str]:
    """'slurm' when sbatch exists, else 'pbspro'/'torque' from `qsub --version`, else None."""
    if shutil.which("sbatch"):
        return "slurm"
    if shutil.which("qsub"):
        try:
            out = subprocess.run(["qsub", "--version"], capture_output=True, text=True, timeout=30)
            text = (out.stdout + out.stderr).lower()
        except (OSError, subprocess.SubprocessError):
            text = ""
        return "pbspro" if "pbs_version" in text else "torque"
    return None


def scheduler_name(choice: str) -> str:
    """--scheduler pbs -> pbspro or torque as detected (pbspro when qsub is absent, e.g. --dry-run)."""
    if choice != "pbs":
        return choice
    found = detect_scheduler()
    return found if found in ("pbspro", "torque") else "pbspro"


def array_submit_command(scheduler: str, first: int, last: int, env_vars: str, extra_args: list[str]) -> list[str]:
    """The array job `first`-`last` of the job script, with `env_vars` ('A=1,B=2') exported."""
    if scheduler == "slurm":
        return ["sbatch", "--parsable", f"--array={first}-{last}", f"--export=ALL,{env_vars}",
                f"--chdir={REPO_DIR}", *extra_args, str(SLURM_SCRIPT)]
    return ["qsub", "-V", "-v", env_vars, "-J" if scheduler == "pbspro" else "-t", f"{first}-{last}",
            *extra_args, str(PBS_SCRIPT)]


def analysis_submit_command(scheduler: str, dependency: str, script: Path, study_dir) -> list[str]:
    log = StudyPaths(Path(study_dir).resolve()).analysis_log(slurm=scheduler == "slurm")
    if scheduler == "slurm":
        extra = shlex.split(os.environ.get("MITOSEG_ANALYSIS_SBATCH_ARGS", "--cpus-per-task=1 --mem=4G --time=02:00:00"))
        return ["sbatch", "--parsable", f"--dependency={dependency}", "--kill-on-invalid-dep=yes",
                "--job-name=mitoseg_analysis", f"--output={log}", f"--chdir={REPO_DIR}", *extra, str(script)]
    extra = shlex.split(os.environ.get("MITOSEG_ANALYSIS_QSUB_ARGS",
                                       "-l select=1:ncpus=1:mem=8gb" if scheduler == "pbspro" else "-l nodes=1:ppn=1"))
    return ["qsub", "-W", f"depend={dependency}", "-N", "mitoseg_analysis", "-j", "oe", "-o", str(log),
            "-l", "walltime=02:00:00", *extra, str(script)]


def parse_job_id(output: str) -> str:
    """sbatch --parsable ('12' or '12;cluster') / qsub ('1234.server', '1234[].server')."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    if not lines:
        raise ValueError("the scheduler printed no job id")
    return lines[-1].split(";")[0].split()[-1]


# --- the analysis job ------------------------------------------------------------------------------
def write_analysis_script(study_dir, environ=None) -> Path:
    """STUDY/run_analysis.sh: what the dependent job runs; also for rerunning by hand."""
    study_dir = Path(study_dir).resolve()
    prefix, _ = launcher(environ, binds=study_binds(G.load_study_grid(study_dir).fixed.get("data_dir"), study_dir))
    cmd = " ".join(shlex.quote(a) for a in module_command(prefix, STUDY, "analyze", "--study-dir", study_dir))
    text = ("#!/bin/bash\n"
            "# Analysis of this study, run by the scheduler after the whole array (afterany).\n"
            f"# Rerun by hand: bash {shlex.quote(str(StudyPaths(study_dir).analysis_script))}\n"
            f"cd {shlex.quote(str(REPO_DIR))} || exit 2\n"
            f"exec {cmd}\n")
    path = StudyPaths(study_dir).analysis_script
    atomic_write_text(path, text)
    path.chmod(0o755)
    return path


def submit_analysis_job(study_dir, scheduler: str, dependency: str, environ=None,
                        log: Callable[[str], None] = print) -> Optional[str]:
    """Submit STUDY/run_analysis.sh after `dependency`; record it in STUDY/analysis_job.json.
    Returns the job id, or None (with a message) when the submission failed."""
    script = write_analysis_script(study_dir, environ)
    cmd = analysis_submit_command(scheduler, dependency, script, study_dir)
    sub_env = {k: v for k, v in os.environ.items() if k not in _ARRAY_VARS}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=sub_env)
    except (OSError, subprocess.SubprocessError) as err:
        log(f"warning: could not submit the analysis job ({err}); run it by hand: bash {script}")
        return None
    if proc.returncode != 0:
        log(f"warning: could not submit the analysis job: {' '.join(cmd)} exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()}; run it by hand: bash {script}")
        return None
    job_id = parse_job_id(proc.stdout)
    atomic_write_text(StudyPaths(study_dir).analysis_job, json.dumps(
        {"job_id": job_id, "scheduler": scheduler, "dependency": dependency, "script": str(script),
         "command": cmd, "submitted_at": _dt.datetime.now().isoformat(timespec="seconds")}, indent=2) + "\n")
    log(f"analysis job {job_id} submitted ({dependency}); it runs {script}")
    return job_id


def claim_analysis_submission(study_dir, key: str) -> bool:
    """True for exactly one caller per (study, array job): an O_EXCL claim file."""
    path = StudyPaths(study_dir).analysis_claim(key)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()} {_dt.datetime.now().isoformat(timespec='seconds')}\n")
    return True


def submit_analysis_from_element(study_dir, env: dict, log: Callable[[str], None] = print) -> None:
    """In an array element: submit the analysis job after this array, unless `run_study.py submit`
    does it ($MITOSEG_NO_ANALYSIS_JOB) or another element of the same array already claimed it."""
    dep = dependency_target(env)
    key = array_job_key(env)
    if dep and key and not env.get(NO_ANALYSIS_ENV) and claim_analysis_submission(study_dir, key):
        submit_analysis_job(study_dir, dep[0], dep[1], env, log)


# --- submission from a login node ------------------------------------------------------------------
def submit_study(study_dir: Path, grid: G.GridConfig, scheduler: str, extra_args: list[str],
                 log: Callable[[str], None] = print, dry_run: bool = False,
                 indices: Optional[tuple[int, int]] = None, cells_per_gpu: int = 1) -> dict:
    """Submit the array (range = the grid, ceil(grid / K) elements of K cells with cells_per_gpu = K,
    or `indices` = (first, last), e.g. the confirmation cells) and the dependent analysis job.
    Returns their ids."""
    if indices and cells_per_gpu > 1:
        raise ValueError("--cells-per-gpu applies to the grid's own cells, not to a confirmation range")
    study_dir = Path(study_dir).resolve()
    G.init_study(study_dir, grid)
    first, last = indices or (0, array_size(grid.size, cells_per_gpu) - 1)
    env_vars = f"STUDY_DIR={study_dir},{NO_ANALYSIS_ENV}=1,{K_ENV}={cells_per_gpu}"
    cmd = array_submit_command(scheduler, first, last, env_vars, extra_args)
    log("submitting: " + " ".join(shlex.quote(c) for c in cmd))
    if dry_run:
        return {"array": None, "analysis": None, "command": cmd}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO_DIR), timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"submission failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    array_id = parse_job_id(proc.stdout)
    log(f"array job {array_id}: {last - first + 1} elements ({first}-{last}) into {study_dir}")
    analysis = submit_analysis_job(study_dir, scheduler, dependency_spec(scheduler, array_id), None, log)
    return {"array": array_id, "analysis": analysis, "command": cmd}
