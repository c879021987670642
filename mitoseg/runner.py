"""Run a study: the scheduler side (array elements, study folder, dependent analysis job) and
the local runner (a whole grid, a subset or only the missing cells on one machine).

Everything here uses only the standard library (plus mitoseg.grid/config/io_utils/results, which
are stdlib-only too), because an array element runs it with the *host* Python before it starts the
TensorFlow container.

How one submission agrees on one study folder (`resolve_study_dir`):

1. `$STUDY_DIR` when given (`qsub -v STUDY_DIR=...`, `sbatch --export=ALL,STUDY_DIR=...`, or set by
   `run_study.py submit`);
2. else the array job id (`$SLURM_ARRAY_JOB_ID`; PBS: `$PBS_ARRAY_ID`, or `$PBS_JOBID` such as
   `1234[5].server` -> `1234.server`) names a pointer file `.mitoseg_jobs/<id>` in the submit
   folder. The first element to run creates a new `hyperparameter_optimization_YYYYMMDD_HHMMSS/`
   and publishes its name with an atomic `link()` (fails if the pointer exists), so every other
   element of the same array reads the same name; a loser removes the folder it made;
3. outside a scheduler: a new timestamped folder.

The analysis job: the first element of an array that starts (an O_EXCL claim file in the study
folder, one per array job id) submits `run_analysis.sh` (written into the study folder; rerun it by
hand with `bash STUDY/run_analysis.sh`) with afterany semantics on the whole array:
Slurm `sbatch --dependency=afterany:<array id> --kill-on-invalid-dep=yes` (also under the
slurm-wlm-torque `qsub` wrapper: the element sees SLURM_* variables), PBS Pro
`qsub -W depend=afterany:<id>[].server`, Torque `qsub -W depend=afteranyarray:<id>[].server`.
`run_study.py submit` submits it itself and tells the elements not to (MITOSEG_NO_ANALYSIS_JOB=1).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import grid as G
from .io_utils import atomic_write_text
from .paths import POINTER_DIR, REPORT_MD, REPORT_TXT, SUMMARY_CSV_NAME, StudyPaths, new_study_dir
from .results import ResultsError, load_results
from .status import DONE_STATUSES, FAILED

REPO_DIR = Path(__file__).resolve().parent.parent
TRAIN_ONE = REPO_DIR / "train_one.py"
RUN_STUDY = REPO_DIR / "run_study.py"
ANALYZE_SCRIPT = REPO_DIR / "analyze_hyperparameter_results.py"
PBS_SCRIPT = REPO_DIR / "pbs_hyperparameter_optimization.sh"
SLURM_SCRIPT = REPO_DIR / "slurm_hyperparameter_optimization.sh"
BUSY_STATE = "running elsewhere"   # train_one.py exit 4: another process holds the cell's lock
EXIT_BUSY = 4
CONTAINER_ENV = "TF_CONTAINER"          # path of the Singularity/Apptainer TensorFlow image
EXAMPLE_CONTAINER = "/apps/containers/tensorflow_2.16.1-cuda_12.5.0_24.06.sif"  # example only, site-specific
NO_ANALYSIS_ENV = "MITOSEG_NO_ANALYSIS_JOB"


# --- scheduler environment ------------------------------------------------------------------------
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


def array_job_key(environ=None) -> Optional[str]:
    """An id shared by every element of one array submission (None outside a scheduler).

    Slurm: SLURM_ARRAY_JOB_ID (else SLURM_JOB_ID for a non-array job). PBS Pro / Torque:
    PBS_ARRAY_ID or PBS_JOBID with the element's [index] removed. A server/cluster name is kept
    so ids from two clusters sharing a file system cannot collide."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID"):
        jid = env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"]
        cluster = env.get("SLURM_CLUSTER_NAME")
        return f"slurm_{jid}" + (f".{cluster}" if cluster else "")
    pbs = env.get("PBS_ARRAY_ID") or env.get("PBS_JOBID")
    if pbs:
        num, server = _pbs_id_parts(pbs)
        return f"pbs_{num}{server}"
    return None


def dependency_target(environ=None) -> Optional[tuple[str, str]]:
    """(scheduler, dependency spec) meaning 'after every element of this array ended, whatever
    its exit status', or None outside a scheduler."""
    env = os.environ if environ is None else environ
    sched = scheduler_of(env)
    if sched == "slurm":
        return sched, f"afterany:{env.get('SLURM_ARRAY_JOB_ID') or env['SLURM_JOB_ID']}"
    if sched in ("pbspro", "torque"):
        num, server = _pbs_id_parts(env.get("PBS_ARRAY_ID") or env["PBS_JOBID"])
        is_array = "[" in (env.get("PBS_ARRAY_ID") or env.get("PBS_JOBID", ""))
        if not is_array:
            return sched, f"afterany:{num}{server}"
        return sched, (f"afterany:{num}[]{server}" if sched == "pbspro" else f"afteranyarray:{num}[]{server}")
    return None


# --- the study folder -----------------------------------------------------------------------------
def create_new_study_dir(root=".", now: Optional[_dt.datetime] = None) -> Path:
    """mkdir a fresh hyperparameter_optimization_<stamp>/ (never an existing one: on a clash the
    stamp moves on by one second)."""
    now = now or _dt.datetime.now()
    Path(root).mkdir(parents=True, exist_ok=True)
    for i in range(3600):
        path = new_study_dir(root, now + _dt.timedelta(seconds=i))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a new study folder in {root}")


def resolve_study_dir(root=".", environ=None, now: Optional[_dt.datetime] = None) -> tuple[Path, str]:
    """(study folder, how it was chosen). See the module docstring."""
    env = os.environ if environ is None else environ
    root = Path(root)
    given = env.get("STUDY_DIR")
    if given:
        path = Path(given)
        return (path if path.is_absolute() else root / path), "$STUDY_DIR"
    key = array_job_key(env)
    if key is None:
        return create_new_study_dir(root, now), "new (no scheduler array id)"
    pointer = root / POINTER_DIR / key
    if pointer.exists():
        return root / pointer.read_text().strip(), f"pointer {pointer}"
    pointer.parent.mkdir(parents=True, exist_ok=True)
    study = create_new_study_dir(root, now)
    tmp = pointer.with_name(f".{key}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(study.name + "\n")
    try:
        os.link(tmp, pointer)   # atomic: exactly one element publishes its folder
        how = f"new, published in {pointer}"
    except FileExistsError:
        try:
            study.rmdir()
        except OSError:
            pass
        study, how = root / pointer.read_text().strip(), f"pointer {pointer}"
    finally:
        tmp.unlink(missing_ok=True)
    return study, how


def base_grid(grid_config: Optional[str] = None, data_dir: Optional[str] = None,
              demo: bool = False) -> G.GridConfig:
    """The grid a new study is created with: a JSON file, the demo grid or the default one;
    `data_dir` (e.g. $DATA_DIR) fills fixed.data_dir when the grid does not name one."""
    if grid_config:
        grid = G.load_user_grid(grid_config)
    else:
        grid = G.demo_grid() if demo else G.default_grid()
    if data_dir and grid.fixed.get("data_dir") and G.absolute_path(data_dir) != grid.fixed["data_dir"]:
        raise ValueError(f"--data-dir/$DATA_DIR {G.absolute_path(data_dir)} contradicts data_dir "
                         f"{grid.fixed['data_dir']} in {grid_config}; give only one")
    if data_dir and not grid.fixed.get("data_dir"):   # absolute: cells run in another folder
        grid = G.GridConfig.from_dict({**grid.to_dict(), "fixed": {**grid.fixed, "data_dir": G.absolute_path(data_dir)}})
    return grid


# --- cell state -----------------------------------------------------------------------------------
def cell_record(study_dir, cell: G.Cell) -> Optional[dict]:
    path = StudyPaths(study_dir).exp(cell.name).find_results_json()
    if not path.exists():
        return None
    try:
        return load_results(path)
    except ResultsError:
        return None


def cell_state(study_dir, cell: G.Cell) -> str:
    """ok | diverged | failed | interrupted (from the results JSON), started (files but no
    results: running, or killed hard), missing (nothing yet)."""
    record = cell_record(study_dir, cell)
    if record is not None:
        return record["status"]
    return "started" if StudyPaths(study_dir).exp(cell.name).exp_dir.exists() else "missing"


def parse_cells(spec: str, size: int) -> list[int]:
    """'0,3-5' -> [0, 3, 4, 5]; every index must be inside the grid."""
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad cell range {part!r}; use e.g. 0,3-5")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= size:
            raise ValueError(f"cell range {part!r} is outside the grid (0..{size - 1})")
        out.extend(i for i in range(lo, hi + 1) if i not in out)
    if not out:
        raise ValueError("no cells selected")
    return out


def select_cells(grid: G.GridConfig, spec: Optional[str] = None,
                 architectures: Optional[Iterable[str]] = None) -> list[G.Cell]:
    chosen = G.cells(grid)
    if spec:
        wanted = set(parse_cells(spec, grid.size))
        chosen = [c for c in chosen if c.index in wanted]
    if architectures:
        archs = set(architectures)
        unknown = archs - set(grid.architectures)
        if unknown:
            raise ValueError(f"architecture(s) not in the grid: {', '.join(sorted(unknown))}")
        chosen = [c for c in chosen if c.architecture in archs]
    return chosen


# --- launching train_one.py -----------------------------------------------------------------------
def container_runtime() -> Optional[str]:
    for name in ("apptainer", "singularity"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def study_binds(data_dir=None, study_dir=None) -> list[str]:
    """Host folders a cell reads or writes: the code, the study, the data. Apptainer mounts only the
    home and current folders by default, so anything else (a /scratch study, a /data stack) is
    invisible inside the container unless bound."""
    wanted = [REPO_DIR, study_dir, data_dir]
    out: list[str] = []
    for path in wanted:
        if path:
            text = str(Path(path).resolve())
            if text not in out:
                out.append(text)
    return out


def launcher(environ=None, binds: Iterable[str] = ()) -> tuple[list[str], Optional[str]]:
    """(command prefix that runs Python in the training environment, warning or None).

    $TF_CONTAINER set and present + apptainer/singularity found:
    `<runtime> exec --nv [--bind A,B] IMAGE python` (the image's Python: $CONTAINER_PYTHON, default
    `python`; $APPTAINER_BIND, if set, is honoured by apptainer itself). Otherwise this Python, with
    a warning."""
    env = os.environ if environ is None else environ
    image = env.get(CONTAINER_ENV)
    plain = [sys.executable]
    if not image:
        return plain, (f"warning: ${CONTAINER_ENV} is not set; running with {sys.executable} "
                       f"(set it to your TensorFlow image, e.g. {EXAMPLE_CONTAINER})")
    if not Path(image).is_file():
        return plain, f"warning: ${CONTAINER_ENV}={image} not found; running with {sys.executable}"
    runtime = container_runtime()
    if runtime is None:
        return plain, (f"warning: ${CONTAINER_ENV}={image} is set but neither apptainer nor singularity "
                       f"is on PATH (module load apptainer?); running with {sys.executable}")
    bind = ["--bind", ",".join(binds)] if binds else []
    return [runtime, "exec", "--nv", *bind, image, env.get("CONTAINER_PYTHON", "python")], None


def train_command(study_dir, index: int, prefix: Optional[list] = None, force: bool = False) -> list[str]:
    prefix = prefix or [sys.executable]
    cmd = [*prefix, str(TRAIN_ONE), "--study-dir", str(study_dir), "--task-index", str(index)]
    return cmd + (["--force"] if force else [])


def _run_forwarding_signals(cmd: list[str], **kw) -> int:
    """Run cmd; SIGTERM/SIGINT sent to us (walltime, scancel, qdel) are passed on, so train_one.py
    can save its state and exit 3 (interrupted). SIGUSR1 (a pre-walltime warning, e.g.
    `#SBATCH --signal=B:USR1@300`) is passed on as SIGTERM."""
    proc = subprocess.Popen(cmd, **kw)
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    previous = {}

    def forward(signum, _frame):
        try:
            proc.send_signal(signal.SIGTERM if signum == signal.SIGUSR1 else signum)
        except OSError:
            pass
    for sig in handled:
        try:
            previous[sig] = signal.signal(sig, forward)
        except (ValueError, OSError):  # not the main thread
            pass
    try:
        return proc.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- the analysis job -----------------------------------------------------------------------------
def analysis_command(study_dir, python: Optional[list] = None) -> list[str]:
    """The analysis of a study (analyze_hyperparameter_results.py)."""
    python = python or [sys.executable]
    return [*python, str(ANALYZE_SCRIPT), "--study-dir", str(study_dir)]


def write_analysis_script(study_dir, environ=None) -> Path:
    """STUDY/run_analysis.sh: what the dependent job runs; also for rerunning by hand."""
    study_dir = Path(study_dir).resolve()
    prefix, _ = launcher(environ, binds=study_binds(G.load_study_grid(study_dir).fixed.get("data_dir"), study_dir))
    cmd = " ".join(shlex.quote(a) for a in [*prefix, str(RUN_STUDY), "analyze", "--study-dir", str(study_dir)])
    text = ("#!/bin/bash\n"
            "# Analysis of this study, run by the scheduler after the whole array (afterany).\n"
            f"# Rerun by hand: bash {shlex.quote(str(StudyPaths(study_dir).analysis_script))}\n"
            f"cd {shlex.quote(str(REPO_DIR))} || exit 2\n"
            f"exec {cmd}\n")
    path = StudyPaths(study_dir).analysis_script
    atomic_write_text(path, text)
    path.chmod(0o755)
    return path


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


def submit_analysis_job(study_dir, scheduler: str, dependency: str, environ=None,
                        log: Callable[[str], None] = print) -> Optional[str]:
    """Submit STUDY/run_analysis.sh after `dependency`; record it in STUDY/analysis_job.json.
    Returns the job id, or None (with a message) when the submission failed."""
    script = write_analysis_script(study_dir, environ)
    cmd = analysis_submit_command(scheduler, dependency, script, study_dir)
    # The element's own array variables must not leak into the (non-array) analysis job.
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


_ARRAY_VARS = frozenset({"SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                         "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP", "PBS_ARRAY_INDEX", "PBS_ARRAY_ID",
                         "PBS_ARRAYID"})


def claim_analysis_submission(study_dir, key: str) -> bool:
    """True for exactly one caller per (study, array job): an O_EXCL claim file."""
    path = Path(study_dir) / f".analysis_claim_{key}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()} {_dt.datetime.now().isoformat(timespec='seconds')}\n")
    return True


# --- one array element ----------------------------------------------------------------------------
def run_element(index: Optional[int] = None, root=".", grid_config: Optional[str] = None,
                environ=None, log: Callable[[str], None] = print, cells_per_gpu: Optional[int] = None) -> int:
    """What a job script runs: study folder, grid, the analysis job (first element only), then
    train_one.py for this element's cell in the container (K cells at once with cells_per_gpu /
    $CELLS_PER_GPU = K, see mitoseg/multi_cell.py). Returns train_one.py's exit code."""
    from . import multi_cell
    env = dict(os.environ if environ is None else environ)
    try:
        k = multi_cell.cells_per_gpu(cells_per_gpu, env)
    except ValueError as err:
        log(f"error: {err}")
        return 2
    if index is None:
        index = G.task_index_from_env(env)
    if index is None:
        log("error: no array index: pass --task-index or run as an array job "
            f"({', '.join('$' + v for v in G.SCHEDULER_INDEX_VARIABLES)})")
        return 2
    grid_config = grid_config or env.get("GRID_CONFIG") or None
    study, how = resolve_study_dir(root, env)
    study = study.resolve()
    try:
        requested = base_grid(grid_config, env.get("DATA_DIR"))
        G.check_flags_against_study(study, requested, grid_config and f"$GRID_CONFIG/--grid-config {grid_config}",
                                    env.get("DATA_DIR"))
        grid = G.init_study(study, requested)
        from .identity import check_study   # settings only: the data is checked per cell by train_one.py
        check_study(study, grid)
    except ValueError as err:
        log(f"error: {err}")
        return 2
    log(f"study {study} ({how}); grid of {grid.size} cells; this element: index {index}"
        + (f", {k} cells per element" if k > 1 else ""))
    try:
        if k > 1:
            indices = multi_cell.element_cells(index, k, grid.size)
        else:
            G.study_cell_at(study, grid, index)   # a grid cell, or a confirmation cell after the grid
    except ValueError as err:
        log(f"error: {err}" + ("" if k > 1 else f"; the array range must be 0-{grid.size - 1} (python run_study.py "
                                                 "list --size), or the range that run_study.py confirm printed"))
        return 2
    dep = dependency_target(env)
    key = array_job_key(env)
    if dep and key and not env.get(NO_ANALYSIS_ENV) and claim_analysis_submission(study, key):
        submit_analysis_job(study, dep[0], dep[1], env, log)
    prefix, warning = launcher(env, binds=study_binds(grid.fixed.get("data_dir"), study))
    if warning:
        log(warning)
    child_env = {**env, "STUDY_DIR": str(study)}
    if k > 1:
        cmds = {i: train_command(study, i, prefix) for i in indices}
        for i, cmd in cmds.items():
            log(f"running cell {i}: " + " ".join(shlex.quote(c) for c in cmd))
        sys.stdout.flush()
        return multi_cell.run_cells(cmds, child_env, log)
    cmd = train_command(study, index, prefix)
    log("running: " + " ".join(shlex.quote(c) for c in cmd))
    sys.stdout.flush()
    return _run_forwarding_signals(cmd, env=child_env)


# --- submission from a login node -----------------------------------------------------------------
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


def submit_study(study_dir: Path, grid: G.GridConfig, scheduler: str, extra_args: list[str],
                 log: Callable[[str], None] = print, dry_run: bool = False,
                 indices: Optional[tuple[int, int]] = None, cells_per_gpu: int = 1) -> dict:
    """Submit the array (range = the grid, ceil(grid / K) elements of K cells with cells_per_gpu = K,
    or `indices` = (first, last), e.g. the confirmation cells) and the dependent analysis job.
    Returns their ids."""
    from .multi_cell import ENV as K_ENV, array_size
    if indices and cells_per_gpu > 1:
        raise ValueError("--cells-per-gpu applies to the grid's own cells, not to a confirmation range")
    study_dir = Path(study_dir).resolve()
    G.init_study(study_dir, grid)
    first, last = indices or (0, array_size(grid.size, cells_per_gpu) - 1)
    env_vars = f"STUDY_DIR={study_dir},{NO_ANALYSIS_ENV}=1,{K_ENV}={cells_per_gpu}"
    if scheduler == "slurm":
        cmd = ["sbatch", "--parsable", f"--array={first}-{last}", f"--export=ALL,{env_vars}",
               f"--chdir={REPO_DIR}", *extra_args, str(SLURM_SCRIPT)]
    else:
        cmd = ["qsub", "-V", "-v", env_vars, "-J" if scheduler == "pbspro" else "-t", f"{first}-{last}",
               *extra_args, str(PBS_SCRIPT)]
    log("submitting: " + " ".join(shlex.quote(c) for c in cmd))
    if dry_run:
        return {"array": None, "analysis": None, "command": cmd}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO_DIR), timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"submission failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    array_id = parse_job_id(proc.stdout)
    log(f"array job {array_id}: {last - first + 1} elements ({first}-{last}) into {study_dir}")
    if scheduler == "slurm":
        dep = f"afterany:{array_id}"
    else:
        num, server = _pbs_id_parts(array_id)
        dep = f"afterany:{num}[]{server}" if scheduler == "pbspro" else f"afteranyarray:{num}[]{server}"
    analysis = submit_analysis_job(study_dir, scheduler, dep, None, log)
    return {"array": array_id, "analysis": analysis, "command": cmd}


# --- local runner ---------------------------------------------------------------------------------
def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_score(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_local(study_dir, grid: G.GridConfig, chosen: list[G.Cell], jobs: int = 1, force: bool = False,
              log: Callable[[str], None] = print) -> dict:
    """Train the chosen cells (skipping finished ones unless force) with up to `jobs` train_one.py
    subprocesses at once. A failed cell never stops the others. Returns {index: row}."""
    study_dir = Path(study_dir).resolve()
    G.init_study(study_dir, grid)
    logs_dir = StudyPaths(study_dir).local_logs
    logs_dir.mkdir(exist_ok=True)
    rows: dict[int, dict] = {}
    todo = []
    for cell in chosen:
        state = cell_state(study_dir, cell)
        if state in DONE_STATUSES and not force:
            rec = cell_record(study_dir, cell) or {}
            rows[cell.index] = dict(cell=cell, state=state, note="finished earlier, skipped",
                                    iou=rec.get("best_val_iou"), baseline=rec.get("all_foreground_jaccard"),
                                    epochs=rec.get("epochs_run"), seconds=None, code=None)
        else:
            todo.append(cell)
    total = len(todo)
    skipped = len(chosen) - total
    log(f"study {study_dir}: {len(chosen)} cell(s) selected, {skipped} already finished, {total} to run, "
        f"{jobs} at a time")
    start = time.monotonic()
    running: dict[int, tuple] = {}
    queue = list(todo)
    done = 0
    finished_secs: list = []
    prefix = [sys.executable]
    env = {**os.environ, "STUDY_DIR": str(study_dir)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if jobs > 1:   # share the cores instead of every process starting one thread per core
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
            env.setdefault(var, threads)
    try:
        while queue or running:
            while queue and len(running) < max(1, jobs):
                cell = queue.pop(0)
                out = open(logs_dir / f"{cell.name}.out", "ab")
                proc = subprocess.Popen(train_command(study_dir, cell.index, prefix, force), stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        cwd=str(REPO_DIR))
                running[cell.index] = (cell, proc, out, time.monotonic())
            time.sleep(0.2)
            for idx in list(running):
                cell, proc, out, t0 = running[idx]
                code = proc.poll()
                if code is None:
                    continue
                out.close()
                del running[idx]
                done += 1
                rec = cell_record(study_dir, cell) or {}
                state = rec.get("status") or (FAILED if code else cell_state(study_dir, cell))
                if code == EXIT_BUSY:
                    state, rec = BUSY_STATE, {}
                note = rec.get("error") or ("" if code in (0, None) else f"exit {code}; see {logs_dir / (cell.name + '.out')}")
                if code == EXIT_BUSY:
                    note = "another process is training it; not started here"
                elif code and not rec:
                    note = _last_error_line(logs_dir / f"{cell.name}.out") or note
                rows[idx] = dict(cell=cell, state=state, note=note or "", iou=rec.get("best_val_iou"),
                                 baseline=rec.get("all_foreground_jaccard"), epochs=rec.get("epochs_run"),
                                 seconds=time.monotonic() - t0, code=code)
                elapsed = time.monotonic() - start
                finished_secs.append(rows[idx]["seconds"])
                left = total - done
                # mean cell time x cells left, spread over the parallel slots
                eta = sum(finished_secs) / len(finished_secs) * left / max(1, min(jobs, left)) if left else 0.0
                log(f"[{done}/{total}] {cell.name}: {state}  best_val_iou {fmt_score(rec.get('best_val_iou'))} "
                    f"(all-foreground {fmt_score(rec.get('all_foreground_jaccard'))})  "
                    f"cell {fmt_duration(rows[idx]['seconds'])}  elapsed {fmt_duration(elapsed)}  "
                    f"ETA {fmt_duration(eta)}" + (f"  [{note}]" if state not in DONE_STATUSES and note else ""))
    except KeyboardInterrupt:
        for cell, proc, out, _ in running.values():
            proc.send_signal(signal.SIGTERM)
        for cell, proc, out, _ in running.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            out.close()
        raise
    return rows


def _last_error_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for ln in reversed(lines):
        if ln.lower().startswith("error") or "Error" in ln:
            return ln.strip()[:200]
    return lines[-1].strip()[:200] if lines else ""


def results_table(rows: dict) -> str:
    head = f"{'idx':>3}  {'cell':<44} {'status':<11} {'val IoU':>7} {'all-fg':>6} {'epochs':>6} {'time':>8}  note"
    lines = [head, "-" * len(head)]
    for idx in sorted(rows):
        r = rows[idx]
        lines.append(f"{idx:>3}  {r['cell'].name:<44} {r['state']:<11} {fmt_score(r['iou']):>7} "
                     f"{fmt_score(r['baseline']):>6} {str(r['epochs'] if r['epochs'] is not None else '-'):>6} "
                     f"{fmt_duration(r['seconds']):>8}  {r['note']}")
    return "\n".join(lines)


def study_rows(study_dir, grid: G.GridConfig) -> dict:
    rows = {}
    for cell in G.study_cells(study_dir, grid):
        rec = cell_record(study_dir, cell) or {}
        rows[cell.index] = dict(cell=cell, state=cell_state(study_dir, cell), note=rec.get("error") or "",
                                iou=rec.get("best_val_iou"), baseline=rec.get("all_foreground_jaccard"),
                                epochs=rec.get("epochs_run"), seconds=rec.get("total_time_s"), code=None)
    return rows


def run_analysis(study_dir, log: Callable[[str], None] = print) -> int:
    """Run the analysis of a study; returns its exit code."""
    cmd = analysis_command(Path(study_dir).resolve())
    log("analysis: " + " ".join(shlex.quote(c) for c in cmd))
    sys.stdout.flush()
    return subprocess.call(cmd, cwd=str(REPO_DIR))


def report_path(study_dir) -> Optional[Path]:
    for name in (REPORT_MD, REPORT_TXT, SUMMARY_CSV_NAME):
        p = StudyPaths(study_dir).output(name)
        if p.exists():
            return p
    return None
