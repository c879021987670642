"""Submitting a study to a batch scheduler (Slurm, PBS Pro, Torque: one object each in
mitoseg/study/schedulers.py, which holds every scheduler-specific word): which one runs us, the ids of an
array job, the "after the whole array" dependency, and the array and its dependent analysis job.

The analysis job: the first element of an array that starts (an O_EXCL claim file in the study
folder, one per array job id) submits `run_analysis.sh` (written into the study folder; rerun it by
hand with `bash STUDY/run_analysis.sh`) with afterany semantics on the whole array:
Slurm `sbatch --dependency=afterany:<array id> --kill-on-invalid-dep=yes` (also under the
slurm-wlm-torque `qsub` wrapper: the element sees SLURM_* variables), PBS Pro
`qsub -W depend=afterany:<id>[].server`, Torque `qsub -W depend=afteranyarray:<id>[].server`.
`run_study.py submit` (`submit_study`) submits it itself and tells the elements not to
(MITOSEG_NO_ANALYSIS_JOB=1).

Standard library only (plus mitoseg.core.grid/io_utils/launcher/multi_cell/paths/schedulers, stdlib-only too): an
array element runs it with the *host* Python before it starts the TensorFlow container.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

from mitoseg.core import env_vars as E
from mitoseg.core import grid as G
from mitoseg.study import site as S
from mitoseg.core.io_utils import atomic_write_text
from mitoseg.study.commands import STUDY, module_command
from mitoseg.study.launcher import REPO_DIR, launcher, study_binds
from mitoseg.study.multi_cell import ENV as K_ENV, array_size
from mitoseg.core.paths import StudyPaths
from mitoseg.study.schedulers import BATCH, INDEX_ORDER, PBSPRO, SLURM, get, parse_job_id, running_under
from mitoseg.core.results import RETRY_BUDGET_ENV, retry_budget

PBS_SCRIPT = PBSPRO.job_script
SLURM_SCRIPT = SLURM.job_script
NO_ANALYSIS_ENV = "MITOSEG_NO_ANALYSIS_JOB"
# "1": train_one.py retrains cells that used up their retry budget (`--retry-failed` of local and submit;
# an environment variable so that it reaches the array elements and the local pool alike).
RETRY_ENV = "MITOSEG_RETRY_FAILED"


def retry_failed_requested(environ=None) -> bool:
    return E.read(RETRY_ENV, environ) == "1"


# The array index of an element: PBS Pro, Torque, Slurm (first one set wins).
SCHEDULER_INDEX_VARIABLES = tuple(s.index_variable for s in INDEX_ORDER)
# The element's own array variables must not leak into the (non-array) analysis job.
_ARRAY_VARS = frozenset(v for s in BATCH for v in s.array_variables)


# --- inside a job: the scheduler and the array's ids ---------------------------------------------
def task_index_from_env(environ=None) -> Optional[int]:
    """PBS Pro's PBS_ARRAY_INDEX, Torque's PBS_ARRAYID or Slurm's SLURM_ARRAY_TASK_ID, else None."""
    for var in SCHEDULER_INDEX_VARIABLES:
        value = E.read(var, environ)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"${var}={value!r} is not an integer array index") from None
    return None


def scheduler_of(environ=None) -> Optional[str]:
    """'slurm' (also under slurm-wlm-torque's qsub wrapper), 'torque', 'pbspro' or None."""
    found = running_under(os.environ if environ is None else environ)
    return found.name if found else None


def array_job_key(environ=None) -> Optional[str]:
    """An id shared by every element of one array submission (None outside a scheduler).

    Slurm: SLURM_ARRAY_JOB_ID (else SLURM_JOB_ID for a non-array job). PBS Pro / Torque:
    PBS_ARRAY_ID or PBS_JOBID with the element's [index] removed. A server/cluster name is kept
    so ids from two clusters sharing a file system cannot collide."""
    env = os.environ if environ is None else environ
    return (SLURM if SLURM.in_job(env) else PBSPRO).array_key(env)   # PBS Pro and Torque share theirs


def dependency_spec(scheduler: str, job_id: str, array: bool = True) -> str:
    """'after every element of job `job_id` ended, whatever its exit status' in the scheduler's
    words: Slurm afterany:<id>; PBS afterany:<num>[].server (PBS Pro) or afteranyarray:<num>[].server
    (Torque) for an array, afterany:<num>.server for a plain job."""
    return get(scheduler).dependency(job_id, array)


def dependency_target(environ=None) -> Optional[tuple[str, str]]:
    """(scheduler, dependency spec on the array this job belongs to), or None outside a scheduler."""
    env = os.environ if environ is None else environ
    sched = running_under(env)
    return None if sched is None else (sched.name, sched.own_array_dependency(env))


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


def array_submit_command(scheduler: str, first: int, last: int, env_vars: str, extra_args: list[str],
                         site: Optional[S.SiteProfile] = None, study_dir=None, script: Optional[Path] = None) -> list[str]:
    """The array job `first`-`last` of the job script, with `env_vars` ('A=1,B=2') exported, the site
    profile's options (throttle, queue, account, resources, walltime, output into the log folder), then
    `extra_args` (given after `--`: the scheduler takes the last of a repeated option, so they win)."""
    site, sched = site or S.SiteProfile(), get(scheduler)
    logs = None if study_dir is None else S.log_dir(site, StudyPaths(Path(study_dir)).logs)
    rng = sched.array_range(first, last, site.array_throttle)
    opts = S.common_options(site, sched) + sched.resource_options(site)
    return sched.array_command(rng, env_vars, logs, opts, extra_args, script or sched.job_script)


def analysis_submit_command(scheduler: str, dependency: str, script: Path, study_dir,
                            site: Optional[S.SiteProfile] = None, extra_args: Optional[list] = None) -> list[str]:
    """The dependent analysis job: its own small request ($MITOSEG_ANALYSIS_SBATCH_ARGS / _QSUB_ARGS
    replaces it), the site profile's queue/account/extra_args, then the arguments given after `--` to
    submit (they win)."""
    site, sched = site or S.SiteProfile(), get(scheduler)
    log_dir = S.log_dir(site, StudyPaths(Path(study_dir).resolve()).logs)
    given = E.read(sched.analysis_args_env)   # set but empty: no request of its own
    own = shlex.split(sched.analysis_defaults if given is None else given)
    opts = [*own, *S.common_options(site, sched), *sched.without_array_options(extra_args or [])]
    return sched.analysis_command(dependency, log_dir, opts, script)


def module_lines(site: S.SiteProfile) -> str:
    return "".join(f"{line}\n" for line in site.modules)


def array_job_script(scheduler: str, site: S.SiteProfile, study_dir: Path, write: bool = True) -> Path:
    """The job script of the array: the repository's; with module lines in the site profile, a copy in
    the study with them run before the Python call (written unless `write` is False: a dry run)."""
    source = get(scheduler).job_script
    if not site.modules:
        return source
    target = StudyPaths(study_dir).array_job_script
    if write:
        lines = source.read_text().splitlines(keepends=True)
        at = next(i for i, ln in enumerate(lines) if ln.startswith("exec "))
        text = "".join(lines[:at]) + f"# module lines of the site profile {site.path}\n" + module_lines(site)
        atomic_write_text(target, text + "".join(lines[at:]))
        target.chmod(0o755)
    return target


# --- the analysis job ------------------------------------------------------------------------------
def analysis_script_text(study_dir: Path, grid: G.GridConfig, environ=None, site: Optional[S.SiteProfile] = None) -> str:
    """What STUDY/run_analysis.sh holds: the site's module lines, then the analysis in the training
    environment. ContainerError when a container is set but cannot be used (checked before anything is
    queued); with module lines the runtime may appear only after them, so it is looked up in the job."""
    site = site or S.SiteProfile()
    prefix, _ = launcher(environ, binds=study_binds(grid.fixed.get("data_dir"), study_dir), site=site,
                         need_runtime=not site.modules)
    cmd = " ".join(shlex.quote(a) for a in module_command(prefix, STUDY, "analyze", "--study-dir", study_dir))
    return ("#!/bin/bash\n"
            "# Analysis of this study, run by the scheduler after the whole array (afterany).\n"
            f"# Rerun by hand: bash {shlex.quote(str(StudyPaths(study_dir).analysis_script))}\n"
            + module_lines(site) +
            f"cd {shlex.quote(str(REPO_DIR))} || exit 2\n"
            f"exec {cmd}\n")


def write_analysis_script(study_dir, text: str) -> Path:
    """STUDY/run_analysis.sh: what the dependent job runs; also for rerunning by hand."""
    path = StudyPaths(study_dir).analysis_script
    atomic_write_text(path, text)
    path.chmod(0o755)
    return path


def submit_analysis_job(study_dir, scheduler: str, dependency: str, environ=None, log: Callable[[str], None] = print,
                        site: Optional[S.SiteProfile] = None, extra_args: Optional[list] = None) -> Optional[str]:
    """Submit STUDY/run_analysis.sh after `dependency`; record it in STUDY/analysis_job.json.
    Returns the job id, or None (with a message) when the submission failed."""
    study_dir = Path(study_dir).resolve()
    script = write_analysis_script(study_dir, analysis_script_text(study_dir, G.load_study_grid(study_dir), environ, site))
    cmd = analysis_submit_command(scheduler, dependency, script, study_dir, site, extra_args)
    S.log_dir(site or S.SiteProfile(), StudyPaths(study_dir).logs).mkdir(parents=True, exist_ok=True)
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


def submit_analysis_from_element(study_dir, env: dict, log: Callable[[str], None] = print,
                                 site: Optional[S.SiteProfile] = None) -> None:
    """In an array element: submit the analysis job after this array, unless `run_study.py submit`
    does it ($MITOSEG_NO_ANALYSIS_JOB) or another element of the same array already claimed it.
    Its extra arguments: the site profile's and $MITOSEG_ANALYSIS_SBATCH_ARGS / _QSUB_ARGS."""
    dep = dependency_target(env)
    key = array_job_key(env)
    if dep and key and not E.read(NO_ANALYSIS_ENV, env) and claim_analysis_submission(study_dir, key):
        submit_analysis_job(study_dir, dep[0], dep[1], env, log, site)


# --- submission from a login node ------------------------------------------------------------------
def _line(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def submit_study(study_dir: Path, grid: G.GridConfig, scheduler: str, extra_args: list[str],
                 log: Callable[[str], None] = print, dry_run: bool = False,
                 indices: Optional[tuple[int, int]] = None, cells_per_gpu: int = 1,
                 site: Optional[S.SiteProfile] = None, retry_failed: bool = False) -> dict:
    """Submit the array (range = the grid, ceil(grid / K) elements of K cells with cells_per_gpu = K,
    or `indices` = (first, last), e.g. the confirmation cells) and the dependent analysis job, both
    with the site profile's options and then `extra_args`. A dry run prints both lines and creates
    nothing. Returns their ids."""
    if indices and cells_per_gpu > 1:
        raise ValueError("--cells-per-gpu applies to the grid's own cells, not to a confirmation range")
    site = site or S.SiteProfile()
    study_dir = Path(study_dir).resolve()
    analysis_text = analysis_script_text(study_dir, grid, None, site)   # an unusable container: refused here
    first, last = indices or (0, array_size(grid.size, cells_per_gpu) - 1)
    # The study fixes the grid and the data: a GRID_CONFIG/DATA_DIR of the login shell (exported with the
    # rest of it) must neither replace nor contradict them in the elements.
    budget, budget_from = retry_budget(study_dir, site=site, grid=grid)   # resolved here: every element uses this number
    env_vars = (f"STUDY_DIR={study_dir},{NO_ANALYSIS_ENV}=1,{K_ENV}={cells_per_gpu},GRID_CONFIG=,"
                f"DATA_DIR={grid.fixed.get('data_dir') or ''},{RETRY_ENV}={'1' if retry_failed else ''},"
                f"{RETRY_BUDGET_ENV}={budget}") + (f",{S.SITE_ENV}={site.path}" if site.path else "")
    script = array_job_script(scheduler, site, study_dir, write=False)
    cmd = array_submit_command(scheduler, first, last, env_vars, extra_args, site, study_dir, script)
    if dry_run:
        acmd = analysis_submit_command(scheduler, get(scheduler).placeholder_dependency,
                                       StudyPaths(study_dir).analysis_script, study_dir, site, extra_args)
        log("dry run: nothing created or submitted")
        log(f"array job ({last - first + 1} elements): {_line(cmd)}")
        log(f"  retry budget: {budget} (from {budget_from}): a cell failed {budget} times is not retrained "
            "without --retry-failed")
        if site.modules:
            log(f"  ({script} = {Path(array_job_script(scheduler, S.SiteProfile(), study_dir)).name} with the "
                f"module lines {site.modules} before the Python call)")
        log(f"analysis job (after the whole array): {_line(acmd)}\n  running:\n" +
            "".join(f"    {ln}\n" for ln in analysis_text.splitlines()).rstrip())
        return {"array": None, "analysis": None, "command": cmd, "analysis_command": acmd}
    G.init_study(study_dir, grid)
    array_job_script(scheduler, site, study_dir)
    S.log_dir(site, StudyPaths(study_dir).logs).mkdir(parents=True, exist_ok=True)
    log("submitting: " + _line(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO_DIR), timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"submission failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    array_id = parse_job_id(proc.stdout)
    log(f"array job {array_id}: {last - first + 1} elements ({first}-{last}) into {study_dir}; "
        f"logs in {S.log_dir(site, StudyPaths(study_dir).logs)}")
    analysis = submit_analysis_job(study_dir, scheduler, dependency_spec(scheduler, array_id), None, log, site,
                                   extra_args)
    return {"array": array_id, "analysis": analysis, "command": cmd}
