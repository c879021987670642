"""Every file and folder name of a study and of its cells: the one place that decides them.

A study is a folder `hyperparameter_optimization_YYYYMMDD_HHMMSS/` holding `grid_config.json`
(the resolved grid, written once), one `exp_*` folder per cell and the analysis outputs.
`StudyPaths(study_dir)` names the study's files, `ExperimentPaths(exp_dir)` a cell's; the names
of the cells themselves (`exp_04_UNet_lr0.0001_bs8`) are made and parsed here too. Inside the two
folders named here that hold entries of their own, the entries are named by their owners: the resume
backup's (`ExperimentPaths.backup_dir`) by mitoseg/cell/resume.py, the data cache's
(`StudyPaths.cache_dir`) by mitoseg/data/cache.py.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

STUDY_PREFIX = "hyperparameter_optimization_"
EXP_PREFIX = "exp_"
POINTER_DIR = ".mitoseg_jobs"   # array job id -> study folder, in the submit folder (mitoseg/study/open.py)
GRID_CONFIG_NAME = "grid_config.json"
CONFIRM_CONFIG_NAME = "confirm_config.json"
CACHE_DIR_NAME = ".cache"
ANALYSIS_SCRIPT_NAME = "run_analysis.sh"

# The analysis outputs: summary CSV, reports and figures, written into the study (or --output_dir).
SUMMARY_CSV_NAME = "hyperparameter_summary.csv"
REPORT_MD = "hyperparameter_report.md"
REPORT_TXT = "comprehensive_analysis_report.txt"
SUMMARY_JSON = "analysis_summary.json"
BUNDLE_JSON = "bundle.json"   # the manifest of an exported model bundle (mitoseg/study/export.py)
FIG_HEATMAPS = "detailed_heatmaps.png"
FIG_COMPREHENSIVE = "comprehensive_analysis.png"
FIG_BEST = "best_configurations_comparison.png"
FIG_CURVES = "training_curves.png"
FIG_BASELINE = "baseline_comparison.png"
FIG_CONFIRMATION = "architecture_comparison.png"

_EXP_NAME_RE = re.compile(r"^exp_(?:(?P<index>\d+)_)?(?P<arch>[A-Za-z_]+?)_lr(?P<lr>[0-9.eE+-]+)_bs(?P<bs>\d+)"
                          r"(?:_seed(?P<seed>-?\d+))?(?:_fold(?P<fold>\d+))?$")


# --- cell names -------------------------------------------------------------------------------------
def cell_name(index: Optional[int], architecture: str, learning_rate: float, batch_size: int,
              seed: Optional[int] = None, fold: Optional[int] = None) -> str:
    """exp_04_UNet_lr0.0001_bs8, plus _seed7 when a seed is given and _fold1 when a fold is (a plan of
    more than one fold names every fold, 0 included); index None: a cell run by hand."""
    prefix = EXP_PREFIX if index is None else f"{EXP_PREFIX}{index:02d}_"
    name = f"{prefix}{architecture}_lr{learning_rate:g}_bs{batch_size}"
    return name + ("" if seed is None else f"_seed{seed}") + ("" if fold is None else f"_fold{fold}")


def parse_cell_name(name: str) -> dict:
    """architecture, learning_rate, batch_size, seed, fold and task_index from an exp_ folder name (or {});
    seed and fold only when the name has them."""
    match = _EXP_NAME_RE.match(name)
    if not match:
        return {}
    out = {"architecture": match["arch"], "batch_size": int(match["bs"])}
    try:
        out["learning_rate"] = float(match["lr"])
    except ValueError:
        pass
    if match["seed"] is not None:
        out["seed"] = int(match["seed"])
    if match["fold"] is not None:
        out["fold"] = int(match["fold"])
    if match["index"] is not None:
        out["task_index"] = int(match["index"])
    return out


def new_study_dir(root=".", now: Optional[_dt.datetime] = None) -> Path:
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d_%H%M%S")
    return Path(root) / f"{STUDY_PREFIX}{stamp}"


# --- one cell's folder ------------------------------------------------------------------------------
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

    def results_files(self) -> list[Path]:
        """Every *_results.json in the folder, sorted (a folder renamed by hand keeps its files' names)."""
        return sorted(self.exp_dir.glob("*_results.json")) if self.exp_dir.is_dir() else []

    def find_results_json(self) -> Path:
        """The one lookup rule of every reader (mitoseg/core/cell_state.py): the results file named after the
        folder (`results_json`, the one a cell writes), else the folder's first *_results.json (a folder
        renamed by hand keeps its files' names), else the expected name (which does not exist)."""
        if not self.results_json.exists() and self.results_files():
            return self.results_files()[0]
        return self.results_json

    @property
    def lock(self) -> Path:
        """Held (flock) while a process trains the cell (mitoseg/cell/lock.py)."""
        return self.exp_dir / ".cell.lock"

    @property
    def backup_dir(self) -> Path:
        """The resume backup (mitoseg.cell.resume): lets a killed cell continue from its last finished epoch."""
        return self.exp_dir / "backup"

    @property
    def train_state(self) -> Path:
        """The file of a cell's epoch state (mitoseg.cell.epoch_end.new_train_state), read back on resume."""
        return self.exp_dir / "train_state.json"

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard event files of the cell (`tensorboard --logdir STUDY` finds them)."""
        return self.exp_dir / "tensorboard"


def experiment_paths(out_dir, name: str) -> ExperimentPaths:
    return ExperimentPaths(Path(out_dir) / name)


# --- the study folder -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyPaths:
    """Every study-level file: configs, cache, analysis outputs, job files, logs of local runs."""
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def grid_config(self) -> Path:
        return self.root / GRID_CONFIG_NAME

    @property
    def confirm_config(self) -> Path:
        """The confirmation stage's cells (mitoseg/study/confirm.py writes it)."""
        return self.root / CONFIRM_CONFIG_NAME

    @property
    def cache_dir(self) -> Path:
        """Decoded stacks and patches shared by the study's cells (mitoseg/data/cache.py)."""
        return self.root / CACHE_DIR_NAME

    @property
    def preflight(self) -> Path:
        """The pre-flight trial `local --jobs auto` ran for this study, with the settings it ran at
        (mitoseg/study/auto_jobs.py): its peak memory sizes the number of cells at once."""
        return self.root / "preflight.json"

    @property
    def analysis_script(self) -> Path:
        """The analysis command as a script: what the dependent job runs, rerunnable by hand."""
        return self.root / ANALYSIS_SCRIPT_NAME

    @property
    def analysis_job(self) -> Path:
        """The submitted analysis job: id, scheduler, dependency, command."""
        return self.root / "analysis_job.json"

    @property
    def logs(self) -> Path:
        """The scheduler jobs' output (array elements, analysis), unless the site profile names a log_dir."""
        return self.root / "logs"

    @property
    def array_job_script(self) -> Path:
        """The job script submitted when the site profile has module lines: the repository's, with them."""
        return self.root / "array_job.sh"

    @staticmethod
    def analysis_log(log_dir: Path, slurm: bool = False) -> Path:
        """The analysis job's output in `log_dir` (Slurm fills in the job id for %j)."""
        return Path(log_dir) / ("analysis_job_%j.log" if slurm else "analysis_job.log")

    @staticmethod
    def array_log(log_dir: Path, scheduler: str) -> Path:
        """The array elements' output: Slurm one file per element (%A array id, %a index); PBS/Torque
        the folder (they name each element's file after the job)."""
        return Path(log_dir) / "mitoseg_hpo_%A_%a.out" if scheduler == "slurm" else Path(log_dir)

    @property
    def local_logs(self) -> Path:
        """The output of the cells run by `run_study.py local` (`local_log`)."""
        return self.root / "local_logs"

    def local_log(self, name: str) -> Path:
        """What cell `name`'s train_one.py printed when `run_study.py local` ran it (appended)."""
        return self.local_logs / f"{name}.out"

    def analysis_claim(self, key: str) -> Path:
        """Created once (O_EXCL) by the element that submits the analysis job of array job `key`."""
        return self.root / f".analysis_claim_{key}"

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    def output(self, name: str) -> Path:
        """An analysis output (SUMMARY_CSV_NAME, REPORT_MD, a figure, ...) in this folder."""
        return self.root / name

    def exp(self, name: str) -> ExperimentPaths:
        return experiment_paths(self.root, name)

    def exp_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"{EXP_PREFIX}*") if p.is_dir())



def written_digest(path) -> Path:
    """Beside an analysis output: the sha256 of what the analysis last wrote into it (mitoseg/analysis/summary_checks.py)."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256")


def overlay_name(architecture: str) -> str:
    return f"overlay_{architecture}.png"
