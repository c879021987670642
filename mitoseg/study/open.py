"""Which study a run works in: the folder every element of one submission agrees on, the grid a new
study is created with, and `open_study`, the one way every entry point opens a study (create or
reopen, with the checks each one asks for by name).

How one submission agrees on one study folder (`resolve_study_dir`):

1. `$STUDY_DIR` when given (`qsub -v STUDY_DIR=...`, `sbatch --export=ALL,STUDY_DIR=...`, or set by
   `run_study.py submit`);
2. else the array job id (`$SLURM_ARRAY_JOB_ID`; PBS: `$PBS_ARRAY_ID`, or `$PBS_JOBID` such as
   `1234[5].server` -> `1234.server`) names a pointer file `.mitoseg_jobs/<id>` in the submit
   folder. The first element to run creates a new `hyperparameter_optimization_YYYYMMDD_HHMMSS/`
   and publishes its name with an atomic `link()` (fails if the pointer exists), so every other
   element of the same array reads the same name; a loser removes the folder it made;
3. outside a scheduler: a new timestamped folder.

Standard library only (plus mitoseg.core.grid/identity/paths/scheduler): an array element runs it with the
*host* Python before it starts the TensorFlow container.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import Iterable, Optional

from mitoseg.core import env_vars as E
from mitoseg.core import grid as G
from mitoseg.core.identity import check_study
from mitoseg.core.paths import POINTER_DIR, StudyPaths, new_study_dir
from mitoseg.study.submit import array_job_key


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
    given = E.read("STUDY_DIR", env)
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
        grid = G.with_absolute_paths(G.GridConfig.from_dict({**grid.to_dict(), "fixed": {**grid.fixed,
                                                                                           "data_dir": data_dir}}),
                                     base=os.getcwd())
    return grid


def open_study(study_dir, requested: Optional[G.GridConfig] = None, given: Optional[str] = None,
               data_dir: Optional[str] = None, *, create: bool, check_cells: bool = True, check_data: bool = False,
               retrain: Iterable[int] = ()) -> G.GridConfig:
    """The grid of the study in `study_dir`; every refusal is a ValueError of one line, which each entry
    point prints as `error: ...`:
    - `requested` (the grid of --grid-config/--demo/$GRID_CONFIG, named by `given`) and `data_dir` must
      agree with an existing study (mitoseg.core.grid.check_flags_against_study);
    - a folder without grid_config.json becomes a study with `requested` only when `create` (else, or
      without `requested`, it is refused as no study folder): an existing grid always wins;
    - the study's data_dir must be absolute;
    - `check_cells`: every finished cell must still be a cell of the grid, with its settings and, with
      `check_data`, its data (mitoseg.core.identity.check_study; cells in `retrain` are exempt)."""
    if requested is not None:
        G.check_flags_against_study(study_dir, requested, given, data_dir)
    if create and requested is not None:
        G.init_study(study_dir, requested)
    grid = G.load_study_grid(study_dir)
    G.check_absolute_data_dir(grid, StudyPaths(study_dir).grid_config)
    if check_cells:
        check_study(study_dir, grid, retrain=retrain, check_data=check_data)
    return grid
