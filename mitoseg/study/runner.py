"""Run train_one.py for a study: one array element (what the job scripts run: the study folder,
the grid, the analysis job, then the element's cell(s) in the container) and the local runner (a
whole grid, a subset or only the missing cells on one machine, a few at a time).

Everything here uses only the standard library (plus mitoseg modules that are stdlib-only too),
because an array element runs it with the *host* Python before it starts the TensorFlow container.
The scheduler side lives in mitoseg/study/submit.py, the study folder in mitoseg/study/open.py, the
container in mitoseg/study/launcher.py, the printed rows in mitoseg/study/console.py.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from mitoseg.core import env_vars as E
from mitoseg.core import grid as G
from mitoseg.study import multi_cell
from mitoseg.study.console import cell_row, progress_line
from mitoseg.study import site
from mitoseg.study.commands import ANALYZE, TRAIN, code_env, module_command
from mitoseg.core.cell_state import CellState, read_cell
from mitoseg.study.launcher import REPO_DIR, ContainerError, launcher, probe_container, signals_forwarded, study_binds
from mitoseg.core.paths import REPORT_MD, REPORT_TXT, StudyPaths
from mitoseg.core.results import RETRY_BUDGET_ENV, retry_exhausted
from mitoseg.study.submit import (SCHEDULER_INDEX_VARIABLES, retry_failed_requested, submit_analysis_from_element,
                                  task_index_from_env)
from mitoseg.core.status import BUSY, DONE_STATUSES, EXIT_BAD_INPUT, EXIT_BUSY, FAILED, STALLED
from mitoseg.study.open import base_grid, open_study, resolve_study_dir
from mitoseg.study.workers import WorkerPool

WORKER_LOG = "workers"   # local_logs/workers.out: what a worker printed outside its cells (start-up)


# --- cell state -----------------------------------------------------------------------------------
def read_study_cell(study_dir, cell: G.Cell) -> CellState:
    """The cell's state and record, read by the one reader (mitoseg/core/cell_state.py)."""
    return read_cell(StudyPaths(study_dir).exp(cell.name).exp_dir)


def parse_cells(spec: str, size: int, extra: Iterable[int] = ()) -> list[int]:
    """'0,3-5' -> [0, 3, 4, 5]; every index must be a grid cell (0..size-1) or one of `extra` (the study's
    confirmation cells). An empty selection is an error, never "every cell"."""
    valid = set(range(size)) | set(extra)
    span = f"0..{size - 1}" + (f", confirmation cells {min(extra)}..{max(extra)}" if extra else "")
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"--cells: bad cell range {part!r}; use e.g. 0,3-5")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise ValueError(f"--cells: range {part!r} is reversed; write {hi}-{lo}")
        outside = [i for i in range(lo, hi + 1) if i not in valid]
        if outside:
            raise ValueError(f"--cells: {part!r} is outside the study's cells ({span})")
        out.extend(i for i in range(lo, hi + 1) if i not in out)
    if not out:
        raise ValueError(f"--cells {spec!r} selects no cell (an empty --cells is not 'every cell'; omit the flag "
                         "for every cell)")
    return out


def select_cells(grid: G.GridConfig, spec: Optional[str] = None, architectures: Optional[Iterable[str]] = None,
                 study_dir=None) -> list[G.Cell]:
    """The cells chosen by --cells and --arch: the grid's, or (named by --cells) the study's confirmation cells.
    None means "not given"; an empty value is an error."""
    chosen = G.cells(grid)
    if spec is not None:
        extra = G.confirm_cells(study_dir) if study_dir is not None and Path(study_dir).is_dir() else []
        wanted = set(parse_cells(spec, grid.size, [c.index for c in extra]))
        chosen = [c for c in chosen + extra if c.index in wanted]
    if architectures is not None:
        archs = {a.strip() for a in architectures}
        if "" in archs:
            raise ValueError("--arch '' names no architecture; omit the flag for every architecture")
        unknown = archs - set(grid.architectures)
        if unknown:
            raise ValueError(f"--arch: architecture(s) not in the grid: {', '.join(sorted(unknown))} "
                             f"(the grid has {', '.join(grid.architectures)})")
        chosen = [c for c in chosen if c.architecture in archs]
        if not chosen:
            raise ValueError("--cells and --arch together select no cell")
    return chosen


# --- launching train_one.py -----------------------------------------------------------------------
def train_command(study_dir, index: int, prefix: Optional[list] = None, force: bool = False) -> list[str]:
    prefix = prefix or [sys.executable]
    cmd = module_command(prefix, TRAIN, "--study-dir", study_dir, "--task-index", index)
    return cmd + (["--force"] if force else [])


def _run_forwarding_signals(cmd: list[str], **kw) -> int:
    """Run cmd with our stop signals passed on (launcher.signals_forwarded); its exit code."""
    proc = subprocess.Popen(cmd, **kw)
    with signals_forwarded([proc]):
        return proc.wait()


# --- one array element ----------------------------------------------------------------------------
def run_element(index: Optional[int] = None, root=".", grid_config: Optional[str] = None,
                environ=None, log: Callable[[str], None] = print, cells_per_gpu: Optional[int] = None) -> int:
    """What a job script runs: study folder, grid, the analysis job (first element only), then
    train_one.py for this element's cell in the container (K cells at once with cells_per_gpu /
    $CELLS_PER_GPU = K, see mitoseg/study/multi_cell.py). Returns train_one.py's exit code."""
    env = dict(os.environ if environ is None else environ)
    try:
        k = multi_cell.cells_per_gpu(cells_per_gpu, env)
    except ValueError as err:
        log(f"error: {err}")
        return EXIT_BAD_INPUT
    if index is None:
        index = task_index_from_env(env)
    if index is None:
        log("error: no array index: pass --task-index or run as an array job "
            f"({', '.join('$' + v for v in SCHEDULER_INDEX_VARIABLES)})")
        return EXIT_BAD_INPUT
    opened = _open_element_study(root, grid_config or E.read("GRID_CONFIG", env) or None, env, log)
    if opened is None:
        return EXIT_BAD_INPUT
    study, grid, how = opened
    log(f"study {study} ({how}); grid of {grid.size} cells; this element: index {index}"
        + (f", {k} cells per element" if k > 1 else "") + f"; data: {_data_source(grid, env, how.startswith('new'))}")
    try:
        if k > 1:
            indices = multi_cell.element_cells(index, k, grid.size)
        else:
            G.study_cell_at(study, grid, index)   # a grid cell, or a confirmation cell after the grid
    except ValueError as err:
        log(f"error: {err}" + ("" if k > 1 else f"; the array range must be 0-{grid.size - 1} (python run_study.py "
                                                 "list --size), or the range that run_study.py confirm printed"))
        return EXIT_BAD_INPUT
    prefix = _element_launcher(study, grid, env, log)
    if prefix is None:
        return EXIT_BAD_INPUT
    child_env = code_env({**env, "STUDY_DIR": str(study)})
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


def _element_launcher(study: Path, grid: G.GridConfig, env: dict, log: Callable[[str], None]) -> Optional[list]:
    """The site profile, the analysis job (first element only), and the training environment's command
    prefix: a container that is set must start its Python here, else one error line and None (nothing
    trains; never a fall-back to the host Python)."""
    try:
        profile = site.load_site(None, env)
        log(profile.describe())
        submit_analysis_from_element(study, env, log, profile)
        return training_launcher(study, grid, env, profile, log)
    except (ContainerError, site.SiteError) as err:
        log(f"error: {err}")
        return None


def training_launcher(study: Path, grid: G.GridConfig, env: dict, profile: site.SiteProfile,
                      log: Callable[[str], None]) -> list:
    """The command prefix that starts the cells' Python (mitoseg.study.launcher.launcher, with the study and
    data bound), said in one line; a container's Python must start (probe_container), else ContainerError."""
    prefix, how = launcher(env, binds=study_binds(grid.fixed.get("data_dir"), study), site=profile)
    log(how)
    if len(prefix) > 1:
        log("container " + probe_container(prefix, env))
    return prefix


def local_launcher(study: Path, grid: G.GridConfig, log: Callable[[str], None], environ=None) -> list:
    """`local`'s training environment: as an array element's (the container of $TF_CONTAINER or of the site
    profile, else this Python), so a container asked for is used or refused, never replaced by the host."""
    env = dict(os.environ if environ is None else environ)
    return training_launcher(Path(study), grid, env, site.load_site(None, env), log)


def _data_source(grid: G.GridConfig, env: dict, new_study: bool) -> str:
    """The study's data folder and where it came from, said in every element's log: a $DATA_DIR of the
    submitting shell (exported by `#PBS -V` / `--export=ALL`) makes a NEW study's data; for an existing
    study a contradicting one was refused before (check_flags_against_study)."""
    data = grid.fixed.get("data_dir")
    if not data:
        return "built-in synthetic data (the study names no data folder)"
    if new_study and E.read("DATA_DIR", env):
        return f"{data} (from $DATA_DIR of the submitting shell)"
    return f"{data} (the study's grid_config.json)"


def _open_element_study(root, grid_config: Optional[str], env: dict,
                        log: Callable[[str], None]) -> Optional[tuple[Path, G.GridConfig, str]]:
    """(study folder, its grid, how the folder was chosen), or None after the one-line error of
    mitoseg.study.open.open_study."""
    study, how = resolve_study_dir(root, env)
    study = study.resolve()
    try:
        requested = base_grid(grid_config, E.read("DATA_DIR", env))
        given = grid_config and f"$GRID_CONFIG/--grid-config {grid_config}"
        # settings only: the data is checked per cell by train_one.py
        grid = open_study(study, requested, given, E.read("DATA_DIR", env), create=True, check_data=False)
    except ValueError as err:
        log(f"error: {err}")
        return None
    return study, grid, how


# --- local runner ---------------------------------------------------------------------------------
def run_local(study_dir, grid: G.GridConfig, chosen: list[G.Cell], jobs: int = 1, force: bool = False,
              log: Callable[[str], None] = print, python: Optional[list] = None,
              pool: Optional[WorkerPool] = None) -> dict:
    """Train the chosen cells (skipping finished ones unless force), up to `jobs` at once in as many worker
    processes (mitoseg/study/workers.py: each imports TensorFlow once and trains cell after cell): those of
    `pool` (a caller's `local_pool`, kept across the grid and the confirmation stage), else of a pool of
    its own started by `python` (default: `local_launcher`'s). A failed cell never stops the others.
    Returns {index: row}."""
    study_dir = Path(study_dir).resolve()   # opened by the caller (mitoseg.study.open.open_study)
    budget, _ = site.resolved_retry_budget(study_dir)
    rows, queue = _skip_finished(study_dir, chosen, force, budget)
    kept = sum(r["state"] not in DONE_STATUSES for r in rows.values())
    jobs = pool.size if pool else jobs
    log(f"study {study_dir}: {len(chosen)} cell(s) selected, {len(rows) - kept} already finished, "
        + (f"{kept} failed {budget} times and not retried (--retry-failed), " if kept else "")
        + f"{len(queue)} to run, {jobs} at a time")
    if not queue:   # nothing to train, nothing to start
        return rows
    if pool is None:
        with local_pool(study_dir, grid, jobs, python, log) as own:
            return _train(study_dir, queue, rows, own, force, log)
    return _train(study_dir, queue, rows, pool, force, log)


def local_pool(study_dir, grid: G.GridConfig, jobs: int, python: Optional[list] = None,
               log: Callable[[str], None] = print) -> WorkerPool:
    """`jobs` worker processes for the study's cells, started by `python` (default: `local_launcher`'s)
    when a cell is given to them, with the study's retry budget in their environment."""
    study_dir = Path(study_dir).resolve()
    python = python or local_launcher(study_dir, grid, log)
    budget, _ = site.resolved_retry_budget(study_dir)
    paths = StudyPaths(study_dir)
    paths.local_logs.mkdir(exist_ok=True)
    env = {**_pool_env(study_dir, jobs), RETRY_BUDGET_ENV: str(budget)}   # its cells agree on the budget
    return WorkerPool(jobs, TRAIN, env, str(REPO_DIR), paths.local_log(WORKER_LOG), python)


def _train(study_dir: Path, queue: list[G.Cell], rows: dict, pool: WorkerPool, force: bool,
           log: Callable[[str], None]) -> dict:
    """Give the queued cells to the pool's workers as they free up; each ended cell's row into `rows`."""
    paths = StudyPaths(study_dir)
    progress = _Progress(len(queue), pool.size, log)
    try:
        while queue or pool.busy:
            while queue and pool.has_room():
                cell = queue.pop(0)
                argv = train_command(study_dir, cell.index, force=force)[3:]   # after `python -m TRAIN`
                pool.give(cell, argv, paths.local_log(cell.name))
            time.sleep(0.2)
            for cell, code, seconds, note in pool.ended():
                rows[cell.index] = _ended_row(study_dir, cell, code, seconds, note)
                progress.cell_ended(rows[cell.index])
    except KeyboardInterrupt:
        pool.stop()
        raise
    return rows


def _skip_finished(study_dir: Path, chosen: list[G.Cell], force: bool,
                   budget: Optional[int] = None) -> tuple[dict, list[G.Cell]]:
    """({index: row} of the finished cells that are skipped, the cells to train); budget: the retry
    budget (None: the study's, mitoseg.study.site.resolved_retry_budget)."""
    budget = site.resolved_retry_budget(study_dir)[0] if budget is None else budget
    rows: dict[int, dict] = {}
    todo = []
    retry = force or retry_failed_requested()
    for cell in chosen:
        read = read_study_cell(study_dir, cell)
        state, record = read.state, read.record
        if read.finished and not force:
            rows[cell.index] = cell_row(cell, state, record, "finished earlier, skipped")
        elif retry_exhausted(record, retry, budget):
            rows[cell.index] = cell_row(cell, state, record, f"failed {record['attempts']} times (budget "
                                        f"{budget}), not retried; --retry-failed trains it again")
        else:
            todo.append(cell)
    return rows, todo


def _pool_env(study_dir: Path, jobs: int) -> dict:
    env = code_env({**os.environ, "STUDY_DIR": str(study_dir)})
    if jobs > 1:   # share the cores instead of every process starting one thread per core
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
            env.setdefault(var, threads)
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")   # else the first worker takes the whole GPU
    return env


def _ended_row(study_dir: Path, cell: G.Cell, code: int, seconds: float, worker_note: str = "") -> dict:
    """The row of a cell whose train_one.py exited `code`: its results record, else why it has none
    (`worker_note`: its worker process died during it)."""
    log_file = StudyPaths(study_dir).local_log(cell.name)
    if code == EXIT_BUSY:
        return cell_row(cell, BUSY, {}, "another process is training it; not started here", seconds, code)
    rec = read_study_cell(study_dir, cell).record or {}
    # no record: the process has ended, so nothing trains the cell (STALLED), unless it exited with an error
    state = rec.get("status") or (FAILED if code else STALLED)
    note = rec.get("error") or ("" if code in (0, None) else f"exit {code}; see {log_file}")
    if code and not rec:
        note = "; ".join(filter(None, (worker_note, _last_error_line(log_file)))) or note
    return cell_row(cell, state, rec, note or "", seconds, code)


class _Progress:
    """Counts the cells that ended and prints a progress line with an ETA for each."""

    def __init__(self, total: int, jobs: int, log: Callable[[str], None]):
        self.total, self.jobs, self.log = total, jobs, log
        self.start = time.monotonic()
        self.seconds: list[float] = []

    def cell_ended(self, row: dict) -> None:
        self.seconds.append(row["seconds"])
        done = len(self.seconds)
        left = self.total - done
        # mean cell time x cells left, spread over the parallel slots
        eta = sum(self.seconds) / done * left / max(1, min(self.jobs, left)) if left else 0.0
        self.log(progress_line(done, self.total, row, time.monotonic() - self.start, eta))


def _last_error_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for ln in reversed(lines):
        if ln.lower().startswith("error") or "Error" in ln:
            return ln.strip()[:200]
    return lines[-1].strip()[:200] if lines else ""


# --- the analysis, run here -----------------------------------------------------------------------
def analysis_command(study_dir, python: Optional[list] = None) -> list[str]:
    """The analysis of a study (analyze_hyperparameter_results.py)."""
    python = python or [sys.executable]
    return module_command(python, ANALYZE, "--study-dir", study_dir)


def run_analysis_script(study_dir, log: Callable[[str], None] = print) -> int:
    """Run the analysis of a study; returns its exit code."""
    cmd = analysis_command(Path(study_dir).resolve())
    log("analysis: " + " ".join(shlex.quote(c) for c in cmd))
    sys.stdout.flush()
    return subprocess.call(cmd, cwd=str(REPO_DIR), env=code_env())


def report_path(study_dir) -> Optional[Path]:
    """The study's report (Markdown, else text), or None when the analysis wrote none: the summary CSV
    alone is not a report, and is never printed as one."""
    for name in (REPORT_MD, REPORT_TXT):
        p = StudyPaths(study_dir).output(name)
        if p.exists():
            return p
    return None
