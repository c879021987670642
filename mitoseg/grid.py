"""The study grid and every output path: the one place that decides names and folders.

A study is a folder `hyperparameter_optimization_YYYYMMDD_HHMMSS/` holding `grid_config.json`
(the resolved grid, written once) and one `exp_*` folder per cell. Cells are numbered in a fixed
order (architecture, then learning rate, then batch size, then seed), so an array index always
maps to the same cell and the mapping can be printed (`python -m mitoseg.grid`).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import ARCHITECTURES, TrainConfig
from .io_utils import atomic_write_text

GRID_CONFIG_NAME = "grid_config.json"
STUDY_PREFIX = "hyperparameter_optimization_"
SUMMARY_CSV_NAME = "hyperparameter_summary.csv"
COMMENT_KEY = "_comment"    # free text in a grid JSON (examples/); ignored, not saved into the study
CACHE_DIR_NAME = ".cache"   # decoded stacks and patches shared by a study's cells (mitoseg/cache.py)


@dataclass
class GridConfig:
    # Scientific hyperparameter: the architecture. Nuisance ones, optimised away per architecture:
    # learning rate and batch size. Seeds repeat every cell to measure run-to-run noise.
    architectures: list = field(default_factory=lambda: list(ARCHITECTURES))
    learning_rates: list = field(default_factory=lambda: [1e-4, 5e-4, 1e-3, 5e-3])
    batch_sizes: list = field(default_factory=lambda: [8, 16, 32])
    seeds: list = field(default_factory=lambda: [42])
    # Fixed settings shared by every cell (any TrainConfig field except the four above).
    fixed: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("architectures", "learning_rates", "batch_sizes", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"grid {name} is empty")
        for arch in self.architectures:
            if arch not in ARCHITECTURES:
                raise ValueError(f"unknown architecture {arch!r} in grid; choose from {', '.join(ARCHITECTURES)}")
        cell_keys = {"architecture", "learning_rate", "batch_size", "seed"}
        clash = cell_keys & set(self.fixed)
        if clash:
            raise ValueError(f"fixed settings may not set grid axes: {sorted(clash)}")
        TrainConfig.from_dict(dict(self.fixed)).validate()  # unknown keys / bad values fail here

    @property
    def size(self) -> int:
        return len(self.architectures) * len(self.learning_rates) * len(self.batch_sizes) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GridConfig":
        values = dict(values)
        comment = values.pop(COMMENT_KEY, None)   # JSON has no comments: a grid file may carry this key
        if comment is not None and not (isinstance(comment, str) or
                                        (isinstance(comment, list) and all(isinstance(c, str) for c in comment))):
            raise ValueError(f"{COMMENT_KEY} must be a string or a list of strings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown grid keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path) -> "GridConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a valid grid config ({err})") from None

    def save(self, path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


def default_grid() -> GridConfig:
    """The full study: 3 architectures x 4 learning rates x 3 batch sizes = 36 cells, 30 epochs."""
    return GridConfig()


def demo_grid(data_dir: Optional[str] = None) -> GridConfig:
    """A CPU-sized study on the built-in synthetic data: all 3 architectures, 2 x 2 nuisance grid.
    Width 16 (not 8): measured here, width 8 at lr 1e-3 still predicted no foreground after 12
    epochs, while width 16 passed IoU 0.85 within 2 epochs."""
    return GridConfig(
        learning_rates=[1e-3, 5e-3], batch_sizes=[8, 16],
        fixed=dict(epochs=6, patch_size=64, base_filters=16, depth=4, data_dir=data_dir,
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

    @property
    def name(self) -> str:
        """Folder name, e.g. exp_04_UNet_lr0.0001_bs8 (plus _seed7 when the grid repeats seeds)."""
        name = f"exp_{self.index:02d}_{self.architecture}_lr{self.learning_rate:g}_bs{self.batch_size}"
        return name + (f"_seed{self.seed}" if self.n_seeds > 1 else "")

    def train_config(self, grid: GridConfig) -> TrainConfig:
        return TrainConfig.from_dict({**grid.fixed, "architecture": self.architecture,
                                      "learning_rate": float(self.learning_rate),
                                      "batch_size": int(self.batch_size), "seed": int(self.seed),
                                      "task_index": self.index})


def cells(grid: GridConfig) -> list[Cell]:
    combos = itertools.product(grid.architectures, grid.learning_rates, grid.batch_sizes, grid.seeds)
    return [Cell(i, a, float(lr), int(bs), int(s), len(grid.seeds)) for i, (a, lr, bs, s) in enumerate(combos)]


def cell_at(grid: GridConfig, index: int) -> Cell:
    if not 0 <= index < grid.size:
        raise ValueError(f"array index {index} is outside the grid (0..{grid.size - 1}, {grid.size} cells)")
    return cells(grid)[index]


# --- array index from the scheduler ---------------------------------------------------------------
SCHEDULER_INDEX_VARIABLES = ("PBS_ARRAY_INDEX", "PBS_ARRAYID", "SLURM_ARRAY_TASK_ID")


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


# --- paths ------------------------------------------------------------------------------------------
def new_study_dir(root=".", now: Optional[_dt.datetime] = None) -> Path:
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d_%H%M%S")
    return Path(root) / f"{STUDY_PREFIX}{stamp}"


def init_study(study_dir, grid: GridConfig) -> GridConfig:
    """Create the study folder with its grid config, or reuse it; an existing grid always wins,
    so resubmitting into a study can never silently change what its cells mean."""
    study_dir = Path(study_dir)
    config_path = study_dir / GRID_CONFIG_NAME
    if config_path.exists():
        existing = GridConfig.load(config_path)
        return existing
    study_dir.mkdir(parents=True, exist_ok=True)
    grid.save(config_path)
    return grid


def study_cache_dir(study_dir) -> Path:
    return Path(study_dir) / CACHE_DIR_NAME


def load_study_grid(study_dir) -> GridConfig:
    path = Path(study_dir) / GRID_CONFIG_NAME
    if not path.exists():
        raise ValueError(f"{path}: no grid config; is {study_dir} a study folder?")
    return GridConfig.load(path)


@dataclass(frozen=True)
class ExperimentPaths:
    """Every file of one cell's exp_ folder."""
    exp_dir: Path

    @property
    def name(self) -> str:
        return self.exp_dir.name

    @property
    def log(self) -> Path:
        return self.exp_dir / "training_log.txt"

    @property
    def history_csv(self) -> Path:
        return self.exp_dir / f"{self.name}_history.csv"

    def model(self, save_format: str = "keras") -> Path:
        return self.exp_dir / f"{self.name}_model.{'hdf5' if save_format == 'hdf5' else 'keras'}"

    @property
    def results_json(self) -> Path:
        return self.exp_dir / f"{self.name}_results.json"

    @property
    def backup_dir(self) -> Path:
        """Keras BackupAndRestore state: lets a killed cell continue from its last finished epoch."""
        return self.exp_dir / "backup"

    @property
    def train_state(self) -> Path:
        return self.exp_dir / "train_state.json"

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard event files of the cell (`tensorboard --logdir STUDY` finds them)."""
        return self.exp_dir / "tensorboard"


def experiment_paths(out_dir, name: str) -> ExperimentPaths:
    return ExperimentPaths(Path(out_dir) / name)


def standalone_name(config: TrainConfig) -> str:
    """Folder name for a cell run by hand, outside a grid."""
    return f"exp_{config.architecture}_lr{config.learning_rate:g}_bs{config.batch_size}_seed{config.seed}"


# --- CLI: print the grid ----------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mitoseg.grid",
                                     description="List the study grid: array index -> cell.")
    parser.add_argument("--study-dir", help="list the grid saved in this study folder")
    parser.add_argument("--grid-config", help="list the grid in this JSON file")
    parser.add_argument("--demo", action="store_true", help="list the CPU demo grid")
    parser.add_argument("--size", action="store_true", help="print only the number of cells")
    args = parser.parse_args(argv)
    try:
        if args.study_dir:
            grid = load_study_grid(args.study_dir)
        elif args.grid_config:
            grid = GridConfig.load(args.grid_config)
        else:
            grid = demo_grid() if args.demo else default_grid()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.size:
        print(grid.size)
        return 0
    print(f"{grid.size} cells: {len(grid.architectures)} architectures x {len(grid.learning_rates)} "
          f"learning rates x {len(grid.batch_sizes)} batch sizes x {len(grid.seeds)} seeds")
    print("fixed: " + json.dumps(grid.fixed, sort_keys=True))
    print(f"{'index':>5}  {'architecture':<18} {'lr':>8} {'batch':>5} {'seed':>5}  folder")
    for cell in cells(grid):
        print(f"{cell.index:>5}  {cell.architecture:<18} {cell.learning_rate:>8g} {cell.batch_size:>5} "
              f"{cell.seed:>5}  {cell.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
