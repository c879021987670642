"""The study grid: its axes and fixed settings, validated, and the cells it expands to.

Cells are numbered in a fixed order (architecture, then learning rate, then batch size, then
seed), so an array index always maps to the same cell and the mapping can be printed
(`run_study.py list`, `list_grid`). File and folder names are mitoseg/core/paths.py's.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mitoseg.core.config import ARCHITECTURES, TrainConfig, value_requirement
from mitoseg.core.errors import error_line
from mitoseg.core.io_utils import atomic_write_text
from mitoseg.core.paths import StudyPaths, cell_name
from mitoseg.core.results import budget_problems
from mitoseg.core.status import EXIT_BAD_INPUT, EXIT_OK

COMMENT_KEY = "_comment"    # free text in a grid JSON (examples/); ignored, not saved into the study
STAGES = ("grid", "confirm")


class GridError(ValueError):
    """An invalid grid: the first problem as the message (one line), every problem in `problems`
    (the pre-flight check lists them all as FAIL rows)."""

    def __init__(self, problems: list[str], where: Optional[str] = None):
        self.problems = [f"{where}: {p}" for p in problems] if where else list(problems)
        more = (f" (and {len(problems) - 1} more problem{'s' * (len(problems) > 2)})" if len(problems) > 1 else "")
        super().__init__(self.problems[0] + more)


_DEFAULT_AXES = {"architectures": list(ARCHITECTURES), "learning_rates": [1e-4, 5e-4, 1e-3, 5e-3], "batch_sizes": [8, 16, 32], "seeds": [42]}


@dataclass
class GridConfig:
    # Scientific hyperparameter: the architecture. Nuisance ones, optimised away per architecture:
    # learning rate and batch size. Seeds repeat every cell to measure run-to-run noise.
    architectures: list = field(default_factory=lambda: list(_DEFAULT_AXES["architectures"]))
    learning_rates: list = field(default_factory=lambda: list(_DEFAULT_AXES["learning_rates"]))
    batch_sizes: list = field(default_factory=lambda: list(_DEFAULT_AXES["batch_sizes"]))
    seeds: list = field(default_factory=lambda: list(_DEFAULT_AXES["seeds"]))
    fixed: dict = field(default_factory=dict)   # settings shared by every cell (any TrainConfig field but the four above)
    retry_budget: Optional[int] = None   # mitoseg.core.results.retry_budget; not a training setting (None: unset)

    def __post_init__(self):
        problems = grid_problems(dataclasses.asdict(self))
        if problems:
            raise GridError(problems)

    @property
    def size(self) -> int:
        return len(self.architectures) * len(self.learning_rates) * len(self.batch_sizes) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "retry_budget" or v is not None}   # unset: unsaved

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GridConfig":
        values = dict(values)
        comment = values.pop(COMMENT_KEY, None)   # JSON has no comments: a grid file may carry this key
        if comment is not None and not (isinstance(comment, str) or
                                        (isinstance(comment, list) and all(isinstance(c, str) for c in comment))):
            raise GridError([f"{COMMENT_KEY} must be a string or a list of strings"])
        if _unknown_keys(values):   # every problem, as __post_init__ would list them (it cannot run)
            raise GridError(grid_problems(values))
        return cls(**values)

    @classmethod
    def load(cls, path) -> "GridConfig":
        path = Path(path)
        try:
            return cls.from_dict(read_grid_json(path))
        except GridError as err:
            raise GridError(err.problems, f"{path}: not a valid grid config") from None
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a valid grid config ({err})") from None

    def save(self, path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


# --- paths given by the user -----------------------------------------------------------------------
def absolute_path(path) -> str:
    """A path from a command line, an environment variable or a grid file, made absolute against the
    user's working directory NOW (a relative path would otherwise be read later against another folder,
    e.g. the repository, where a train_one.py process runs)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def with_absolute_paths(grid: GridConfig, base) -> GridConfig:
    """The grid with its data_dir absolute: a relative one is read against the folder `base`."""
    data_dir = grid.fixed.get("data_dir")
    if not data_dir:
        return grid
    resolved = absolute_path(os.path.join(base, os.path.expanduser(str(data_dir))))
    return GridConfig.from_dict({**grid.to_dict(), "fixed": {**grid.fixed, "data_dir": resolved}})


def load_user_grid(path) -> GridConfig:
    """A grid file given by the user: validated, a relative data_dir in it read against the file's own
    folder (where its author wrote it from; as a path inside a file, not one typed on a command line)."""
    return with_absolute_paths(GridConfig.load(path), base=os.path.dirname(absolute_path(path)))


def grid_differences(old: GridConfig, new: GridConfig, limit: int = 3) -> list[str]:
    """'learning_rates [0.001] -> [0.001, 0.005]'-style phrases for the axes and fixed settings that differ."""
    a, b = old.to_dict(), new.to_dict()
    a.update({f"fixed.{k}": v for k, v in a.pop("fixed").items()})
    b.update({f"fixed.{k}": v for k, v in b.pop("fixed").items()})
    diffs = [f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
             if a.get(k, "(unset)") != b.get(k, "(unset)")]
    return diffs[:limit] + ([f"{len(diffs) - limit} more"] if len(diffs) > limit else [])


def check_flags_against_study(study_dir, requested: GridConfig, grid_flag: Optional[str] = None,
                              data_dir: Optional[str] = None) -> None:
    """ValueError (one line) when flags given for an EXISTING study contradict its grid_config.json:
    a --grid-config (or --demo) whose grid differs, or a --data-dir other than the study's data folder.
    Flags that agree with the study are fine; a study never silently ignores what it was told."""
    path = StudyPaths(study_dir).grid_config
    if not path.exists():
        return
    existing = GridConfig.load(path)
    if grid_flag and requested.to_dict() != existing.to_dict():
        raise ValueError(f"{grid_flag} differs from the existing study's {path} "
                         f"({'; '.join(grid_differences(existing, requested))}); omit it to continue the study "
                         "as it is, or start a new study")
    if data_dir and not grid_flag:
        current = existing.fixed.get("data_dir")
        if current is None or absolute_path(current) != absolute_path(data_dir):
            raise ValueError(f"--data-dir {absolute_path(data_dir)} contradicts the existing study's {path} "
                             f"(data_dir {current!r}); omit it to continue the study, or start a new study")


def _no_repeated_keys(pairs):
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:   # json.loads would silently keep the last one
        raise ValueError(f"key {', '.join(map(repr, repeated))} appears more than once")
    return dict(pairs)


def read_grid_json(path) -> dict:
    """The JSON of a grid file; ValueError for a key written twice (a slip JSON itself accepts)."""
    return json.loads(Path(path).read_text(), object_pairs_hook=_no_repeated_keys)


def check_absolute_data_dir(grid: "GridConfig", where) -> None:
    """A study's data_dir must be absolute: a relative one is read against whatever folder a cell runs in."""
    data_dir = grid.fixed.get("data_dir")
    if data_dir and not os.path.isabs(data_dir):
        raise ValueError(f"{where}: data_dir {data_dir!r} is relative, so every cell would read it against the "
                         "folder it happens to run in; write the absolute path")


# axis -> the cell field it sets; what each value must be is TrainConfig's rule (config.value_requirement)
_AXES = {"architectures": "architecture", "learning_rates": "learning_rate", "batch_sizes": "batch_size",
         "seeds": "seed"}


def _unknown_keys(values: dict) -> list[str]:
    """The one check of a grid file's keys: a problem line per key GridConfig does not know."""
    known = {f.name for f in dataclasses.fields(GridConfig)}
    return [f"unknown grid key {k!r} (known: {', '.join(sorted(known))})" for k in sorted(set(values) - known)]


def grid_problems(values: dict) -> list[str]:
    """Every problem of a grid (as read from JSON), one line each; [] for a valid grid. Types are never coerced: "false"
    is not false, 4.9 is not a batch size, a repeated value would make two identical cells. `verify` lists them as FAIL rows."""
    if not isinstance(values, dict):
        return [f"a grid config must be a JSON object, got {type(values).__name__}"]
    problems = _unknown_keys(values)
    problems += budget_problems(values.get("retry_budget"))
    for axis, name in _AXES.items():
        items = values.get(axis, _DEFAULT_AXES[axis])
        if not isinstance(items, list) or not items:
            problems.append(f"{axis} must be a non-empty list, got {items!r}")
            continue
        wants = [value_requirement(name, v) for v in items]
        problems += [(f"unknown architecture {v!r} in grid; choose from {', '.join(ARCHITECTURES)}"
                      if axis == "architectures" else f"{axis}[{i}] must be {want}, got {v!r}")
                     for i, (v, want) in enumerate(zip(items, wants)) if want]
        repeated = sorted({repr(v) for i, (v, want) in enumerate(zip(items, wants)) if v in items[:i] and not want})
        if repeated:
            problems.append(f"{axis} repeats {', '.join(repeated)} (two identical cells)")
        elif axis == "learning_rates":
            problems += _same_folder_names(items)
    fixed = values.get("fixed", {})
    if not isinstance(fixed, dict):
        return problems + [f"fixed must be a JSON object, got {fixed!r}"]
    clash = sorted(set(_AXES.values()) & set(fixed))
    if clash:
        problems.append(f"fixed settings may not set grid axes: {clash}")
    fold_keys = sorted({"fold", "n_folds"} & set(fixed))   # the cell sets them: grid cells fold 0 of 1, confirm the plan's
    if fold_keys:
        problems.append(f"fixed settings may not set {', '.join(fold_keys)} (run_study.py confirm --folds sets them)")
    clash += fold_keys
    try:
        config = TrainConfig.from_dict({k: v for k, v in fixed.items() if k not in clash})
    except (TypeError, ValueError) as err:
        return problems + [f"fixed: {err}"]
    return problems + [f"fixed.{text}" for _, text in config.problems()]


def _same_folder_names(rates: list) -> list[str]:
    """Two learning rates that print alike (1e-3 and 0.0010000001 are both lr0.001) would share a cell folder."""
    shown = {}
    for v in rates:
        if value_requirement("learning_rate", v) is None:   # the bad ones are named as such already
            shown.setdefault(f"{v:g}", []).append(v)
    return [f"learning_rates {' and '.join(map(repr, vs))} give the same folder name (lr{k}); write values that "
            "differ in their first 6 significant digits" for k, vs in shown.items() if len(vs) > 1]


def default_grid() -> GridConfig:
    """The full study: 3 architectures x 4 learning rates x 3 batch sizes = 36 cells, 30 epochs."""
    return GridConfig()


def demo_grid(data_dir: Optional[str] = None) -> GridConfig:
    """A CPU-sized study on the built-in synthetic data: 3 architectures x 2 learning rates at batch 8, 4 epochs.
    Width 16: width 8 at lr 1e-3 predicted no foreground after 12 epochs, width 16 passed IoU 0.85 within 2.
    No batch 16: it never won a selection in 6 epochs; its 6 cells doubled the grid (bench/results/demo_workers_*)."""
    return GridConfig(
        learning_rates=[1e-3, 5e-3], batch_sizes=[8],
        fixed=dict(epochs=4, patch_size=64, base_filters=16, depth=4, data_dir=data_dir,
                   synthetic_slices=20, synthetic_size=192),
    )


@dataclass(frozen=True)
class Cell:
    index: int
    architecture: str
    learning_rate: float
    batch_size: int
    seed: int
    n_seeds: int = 1
    stage: str = "grid"     # "confirm": a rerun of a selected configuration with a fresh seed
    fold: int = 0           # the data split's fold (confirmation plans with --folds K > 1)
    n_folds: int = 1

    @property
    def name(self) -> str:
        """Folder name, e.g. exp_04_UNet_lr0.0001_bs8 (plus _seed7 when the grid repeats seeds, and
        always for a confirmation cell; plus _fold1 in a plan of more than one fold)."""
        with_seed = self.n_seeds > 1 or self.stage == "confirm"
        return cell_name(self.index, self.architecture, self.learning_rate, self.batch_size,
                         self.seed if with_seed else None, self.fold if self.n_folds > 1 else None)

    def train_config(self, grid: GridConfig) -> TrainConfig:
        return TrainConfig.from_dict({**grid.fixed, "architecture": self.architecture,
                                      "learning_rate": float(self.learning_rate),
                                      "batch_size": int(self.batch_size), "seed": int(self.seed),
                                      "fold": int(self.fold), "n_folds": int(self.n_folds),
                                      "task_index": self.index})


def cells(grid: GridConfig) -> list[Cell]:
    combos = itertools.product(grid.architectures, grid.learning_rates, grid.batch_sizes, grid.seeds)
    return [Cell(i, a, float(lr), int(bs), int(s), len(grid.seeds)) for i, (a, lr, bs, s) in enumerate(combos)]


# --- the confirmation stage's cells: indices after the grid's ---------------------------------------
PLAN_KEYS = ("top", "seeds_per_config", "seeds", "configs", "cells")


PLAN_DEFAULTS = {"folds": 1, "sesoi": 0.01}   # what a version-1 plan (before folds and sesoi) means


def load_confirm_plan(study_dir) -> Optional[dict]:
    """STUDY/confirm_config.json (mitoseg/study/confirm.py), checked, a version-1 plan as PLAN_DEFAULTS; None without it."""
    path = StudyPaths(study_dir).confirm_config
    if not path.exists():
        return None
    try:
        plan = json.loads(path.read_text())
        missing = [k for k in PLAN_KEYS if k not in plan]
        plan = {**PLAN_DEFAULTS, **plan}
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a valid confirmation plan ({error_line(err)})") from None
    folds, sesoi = plan["folds"], plan["sesoi"]
    problem = (f"missing {', '.join(missing)}" if missing else
               f"folds must be an integer >= 1, got {folds!r}" if type(folds) is not int or folds < 1 else
               f"sesoi must be a number in (0, 1), got {sesoi!r}" if type(sesoi) not in (int, float) or not 0 < sesoi < 1
               else None)
    if problem:
        raise ValueError(f"{path}: not a valid confirmation plan ({problem})")
    return plan


def confirm_cells(study_dir) -> list[Cell]:
    """The cells listed in STUDY/confirm_config.json (none without the file). Their indices follow
    the grid's, so one array index names one cell of the study whichever stage it belongs to."""
    plan = load_confirm_plan(study_dir)
    if plan is None:
        return []
    try:
        return [Cell(int(r["index"]), str(r["architecture"]), float(r["learning_rate"]), int(r["batch_size"]),
                     int(r["seed"]), stage="confirm", fold=int(r.get("fold", 0)), n_folds=plan["folds"])
                for r in plan["cells"]]
    except (ValueError, KeyError, TypeError) as err:
        path = StudyPaths(study_dir).confirm_config
        raise ValueError(f"{path}: not a valid confirmation plan ({error_line(err)})") from None


def study_cells(study_dir, grid: GridConfig) -> list[Cell]:
    """Every cell of a study: the grid's, then the confirmation stage's."""
    return cells(grid) + confirm_cells(study_dir)


def study_cell_at(study_dir, grid: GridConfig, index: int) -> Cell:
    """The cell of a study at an array index: a grid cell below grid.size, else a confirmation cell."""
    if 0 <= index < grid.size:
        return cells(grid)[index]
    extra = confirm_cells(study_dir)
    for cell in extra:
        if cell.index == index:
            return cell
    span = f", confirmation cells {extra[0].index}..{extra[-1].index}" if extra else ""
    raise ValueError(f"array index {index} is outside the grid (0..{grid.size - 1}, {grid.size} cells{span})")


# --- the study folder's grid ------------------------------------------------------------------------
def init_study(study_dir, grid: GridConfig) -> GridConfig:
    """Create the study folder with its grid config, or reuse it; an existing grid always wins,
    so resubmitting into a study can never silently change what its cells mean."""
    config_path = StudyPaths(study_dir).grid_config
    if config_path.exists():
        return GridConfig.load(config_path)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(config_path)
    return grid


def load_study_grid(study_dir) -> GridConfig:
    path = StudyPaths(study_dir).grid_config
    if not path.exists():
        raise ValueError(f"{path}: no grid config; is {study_dir} a study folder?")
    return GridConfig.load(path)


# --- run_study.py list: print the grid ----------------------------------------------------------------------------
def _cell_line(cell: Cell) -> str:
    return (f"{cell.index:>5}  {cell.architecture:<18} {cell.learning_rate:>8g} {cell.batch_size:>5} "
            f"{cell.seed:>5}  {cell.name}")


def list_grid(study_dir=None, grid_config=None, demo: bool = False, size_only: bool = False) -> int:
    """Print a grid (a study's, a file's, the demo's or the default one): array index -> cell, with a
    study's confirmation cells after the grid's. Exit code 2 (one line) for an unreadable grid."""
    try:
        if study_dir:
            grid = load_study_grid(study_dir)
        elif grid_config:
            grid = load_user_grid(grid_config)
        else:
            grid = demo_grid() if demo else default_grid()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if size_only:
        print(grid.size)
        return EXIT_OK
    print(f"{grid.size} cells: {len(grid.architectures)} architectures x {len(grid.learning_rates)} "
          f"learning rates x {len(grid.batch_sizes)} batch sizes x {len(grid.seeds)} seeds")
    print("fixed: " + json.dumps(grid.fixed, sort_keys=True))
    print(f"{'index':>5}  {'architecture':<18} {'lr':>8} {'batch':>5} {'seed':>5}  folder")
    for cell in cells(grid):
        print(_cell_line(cell))
    extra = confirm_cells(study_dir) if study_dir else []
    if extra:
        print(f"confirmation stage ({StudyPaths(study_dir).confirm_config.name}): {len(extra)} cells, "
              f"indices {extra[0].index}-{extra[-1].index}")
        for cell in extra:
            print(_cell_line(cell))
    return EXIT_OK
