"""The results JSON: the one schema every part of the pipeline reads, with its save/load pair.

Each cell writes `<exp>_results.json` last, atomically. `load_results` refuses anything that is
not a complete file of this schema version, so a half-written, hand-mangled or foreign file can
never read as a finished cell. `RESULT_FIELDS` documents every field (the table in docs/outputs.md
is generated from it: `python -m mitoseg.core.results`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

from mitoseg.core.io_utils import atomic_write_text
from mitoseg.core.status import FAILED, STATUSES

SCHEMA_VERSION = 3
# Versions load_results accepts. Version 1 has no per-slice test scores (`test.slices`); version 2 has
# them without the confusion counts (tp, fp, fn), so its pooled test IoU cannot be resampled. Studies
# written by either stay analysable.
READABLE_VERSIONS = (1, 2, 3)
SLICE_COUNTS = ("tp", "fp", "fn")   # in every test.slices[i] from version 3 on

_NUM = (int, float, type(None))
_STR = (str, type(None))

# name, accepted types, description. Scores are computed on the validation slices, probabilities
# thresholded at config.threshold, unless named otherwise; "soft" scores use probabilities (the original study's jacard_coef).
# A cell whose results say failed this many times is skipped by a resubmission until the user passes
# --retry-failed: a deterministic failure (a bad setting, a model too big) must not burn GPU hours forever.
# The budget is a setting (retry_budget): see retry_budget() for where it is read; this is its default.
RETRY_BUDGET = 2
RETRY_BUDGET_ENV = "MITOSEG_RETRY_BUDGET"

RESULT_FIELDS: list[tuple[str, tuple, str]] = [
    ("schema_version", (int,), f"{SCHEMA_VERSION} (versions 1, without test.slices, and 2, without their tp/fp/fn, "
                               "still load)"),
    ("experiment_id", (str,), "the exp_ folder name, e.g. exp_04_UNet_lr0.0001_bs8"),
    ("status", (str,), "ok | diverged (NaN loss) | failed (exception, see error) | interrupted (SIGTERM; rerun resumes)"),
    ("error", _STR, "one-line error for failed/diverged/interrupted cells, else null"),
    ("architecture", (str,), "UNet | Attention_UNet | Attention_ResUNet"),
    ("learning_rate", (int, float), "initial Adam learning rate"),
    ("batch_size", (int,), "training batch size"),
    ("seed", (int,), "seed of Python, numpy, TensorFlow and the data shuffle"),
    ("task_index", (int, type(None)), "grid index of the cell, null for a hand-run cell"),
    ("config", (dict,), "the resolved TrainConfig (every setting, defaults included)"),
    ("data", (dict,), "data source, slice split (train/val/test slice indices), patch counts; image scaling (scaling, test_scaling; "
                      "their `reading` lists what reading the files converted, e.g. MINISWHITE inverted), data_fingerprint, and "
                      "`warnings`: one line per data warning, e.g. a mask more than half foreground, probably inverted "
                      "(older files may lack these); fold and n_folds of the split (files before schema 3: fold 0 of 1)"),
    ("epochs_run", (int,), "epochs completed (less than config.epochs after early stopping)"),
    ("best_epoch", (int, type(None)), "1-based epoch with the best val thresholded IoU (the saved model)"),
    ("epochs_to_best", (int, type(None)), "same as best_epoch; kept under the original study's name"),
    ("best_val_iou", _NUM, "HEADLINE during training: foreground IoU of the best model at config.threshold"),
    ("best_val_dice", _NUM, "foreground Dice of the best model at config.threshold"),
    ("best_val_precision", _NUM, "foreground precision of the best model"),
    ("best_val_recall", _NUM, "foreground recall of the best model"),
    ("best_val_jaccard", _NUM, "soft Jaccard (+1 smoothing) of the best model; for comparison with the original study only"),
    ("val_predicted_foreground_fraction", _NUM, "fraction of val pixels the best model calls foreground"),
    ("final_val_loss", _NUM, "focal loss on the val slices at the last epoch"),
    ("final_train_loss", _NUM, "focal loss on the training batches at the last epoch"),
    ("overfitting_gap", _NUM, "final_val_loss - final_train_loss"),
    ("val_loss_stability", _NUM, "sample std of val loss over the last 10 epochs (lower = steadier); null with < 2 epochs"),
    ("foreground_fraction", _NUM, "fraction of val pixels that are mitochondria"),
    ("all_foreground_jaccard", _NUM, "IoU of predicting foreground everywhere on the val slices (trivial baseline)"),
    ("all_background_jaccard", _NUM, "IoU of predicting background everywhere (0 unless the val masks are empty)"),
    ("degenerate", (bool,), "true when the model did not learn: IoU not clearly above the all-foreground baseline, or it predicts ~nothing / ~everything"),
    ("degenerate_reason", _STR, "why degenerate is true, else null"),
    ("diverged_epoch", (int, type(None)), "1-based epoch in which the loss became NaN, else null"),
    ("test", (dict, type(None)), "held-out test scores (whole slices, tiled) when a test volume was given, else null; "
                                 "test.slices lists {name, iou, dice} per test slice (schema 2) and its integer "
                                 "pixel counts tp, fp, fn at config.threshold (schema 3: iou = tp / (tp + fp + fn), "
                                 "1 when that is 0)"),
    ("training_time_s", _NUM, "seconds spent in training epochs, summed over the recorded epochs (resumed runs included)"),
    ("total_time_s", _NUM, "wall time of the whole cell: loading, training, evaluation"),
    ("started_at", (str,), "ISO time the (last) run of this cell started"),
    ("finished_at", (str,), "ISO time the results were written"),
    ("environment", (dict,), "code (version, git commit, modified), package versions, Python, host name, device"),
    ("files", (dict,), "file names (relative to the exp_ folder) of the log, history CSV and model"),
    ("attempts", (int,), "runs of this cell that wrote this file (a resumed or retried run adds 1, --force starts "
                         f"again at 1; older files without it read as 1); a cell failed retry_budget times (default "
                         f"{RETRY_BUDGET}) is not retried by a resubmission without --retry-failed"),
]
FIELD_NAMES = [name for name, _, _ in RESULT_FIELDS]


class ResultsError(ValueError):
    """A results file that must not be read as a finished cell; str() names the file and the problem."""


def json_clean(value: Any, plain: Optional[Callable[[Any], Any]] = None) -> Any:
    """THE NaN -> null cleaner of every JSON the project writes: JSON has no NaN/inf, so they are stored as
    null and every reader (not just Python's) can parse the file. Containers are cleaned throughout, numpy
    scalars become Python numbers; `plain` (if given) first turns other objects (tables, paths) into plain
    values (mitoseg.report.json_summary.jsonable)."""
    if plain is not None:
        value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_clean(v, plain) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(v, plain) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_clean(value.item(), plain)
    return value


def validate_results(record: dict, source: str = "results") -> dict:
    if not isinstance(record, dict):
        raise ResultsError(f"{source}: results must be a JSON object, got {type(record).__name__}")
    version = record.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        older = ", ".join(str(v) for v in READABLE_VERSIONS if v != SCHEMA_VERSION)
        raise ResultsError(f"{source}: schema_version {version!r} is not {SCHEMA_VERSION} (nor an older readable "
                           f"version: {older}); rerun the cell or convert the file")
    record.setdefault("attempts", 1)   # files written before the field existed
    missing = [name for name in FIELD_NAMES if name not in record]
    if missing:
        raise ResultsError(f"{source}: missing fields {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    for name, types, _ in RESULT_FIELDS:
        value = record[name]
        if isinstance(value, bool) and bool not in types:
            raise ResultsError(f"{source}: field {name} is a boolean, expected {'/'.join(t.__name__ for t in types)}")
        if not isinstance(value, types):
            raise ResultsError(f"{source}: field {name} has type {type(value).__name__}, expected "
                               f"{'/'.join(t.__name__ for t in types)}")
    if record["status"] not in STATUSES:
        raise ResultsError(f"{source}: status {record['status']!r} is not one of {', '.join(STATUSES)}")
    _validate_test_slices(record.get("test"), source, counts=version >= 3)
    if not _is_count(record["config"].get("fold", 0)):   # the summary's fold column is read from here
        raise ResultsError(f"{source}: config.fold must be an integer >= 0, got {record['config']['fold']!r}")
    return record


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _validate_test_slices(test, source: str, counts: bool) -> None:
    """test.slices, when present: a list of {name: str, iou: number/null, dice: number/null} and, with
    `counts` (schema 3), tp, fp, fn: integers >= 0."""
    if not isinstance(test, dict) or "slices" not in test:
        return
    slices = test["slices"]
    if not isinstance(slices, list):
        raise ResultsError(f"{source}: field test.slices has type {type(slices).__name__}, expected list")
    for i, item in enumerate(slices):
        ok = (isinstance(item, dict) and isinstance(item.get("name"), str)
              and all(isinstance(item.get(k), _NUM) and not isinstance(item.get(k), bool) for k in ("iou", "dice")))
        if not ok:
            raise ResultsError(f"{source}: test.slices[{i}] must be an object with name (str), iou and dice (numbers)")
        if counts and not all(_is_count(item.get(k)) for k in SLICE_COUNTS):
            raise ResultsError(f"{source}: test.slices[{i}] must have tp, fp and fn (integers >= 0) in schema version 3")


def save_results(path, record: dict) -> None:
    """Validate, then write atomically (temporary file + rename)."""
    record = json_clean(dict(record))
    validate_results(record, str(path))
    atomic_write_text(Path(path), json.dumps(record, indent=2, sort_keys=False) + "\n")


def load_results(path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ResultsError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:  # a binary/garbled file (read_text decodes before json sees it)
        raise ResultsError(f"{path}: not valid JSON (not UTF-8 text: byte {err.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except (UnicodeDecodeError, RecursionError) as err:
        raise ResultsError(f"{path}: not valid JSON ({type(err).__name__})") from None
    return validate_results(record, str(path))


def empty_record(**values) -> dict:
    """A record with every field present (None/defaults), updated with `values`."""
    record = {name: None for name in FIELD_NAMES}
    record.update(schema_version=SCHEMA_VERSION, degenerate=False, config={}, data={}, environment={},
                  files={}, epochs_run=0, attempts=1)
    record.update(values)
    return record


def markdown_table() -> str:
    rows = ["| field | type | meaning |", "|---|---|---|"]
    for name, types, text in RESULT_FIELDS:
        kinds = "/".join("null" if t is type(None) else t.__name__ for t in types)
        rows.append(f"| `{name}` | {kinds} | {text.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":   # docs/generate.py writes this table into docs/outputs.md
    print(markdown_table())


def budget_problems(value) -> list[str]:
    """[] for an unset (None) or valid retry_budget of a grid file, else the one problem."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return []
    return [f"retry_budget must be an integer >= 1 (failures before a resubmission stops retrying a cell), got {value!r}"]


def retry_budget(study_dir=None, environ=None, site=None, grid=None) -> tuple[int, str]:
    """(failures after which a resubmission stops retraining a cell, where that number comes from).

    The most specific setting wins: $MITOSEG_RETRY_BUDGET (this command; `submit` passes the number it
    resolved to its elements) > the study's grid file key retry_budget (this study) > the site profile's
    retry_budget (this cluster: `site`, the profile its caller found, mitoseg.study.site.resolved_retry_budget) > RETRY_BUDGET.
    `grid`: the study's grid when it is at hand (a new study has no grid file yet).
    ValueError (one line) for a bad environment value."""
    from mitoseg.core.env_vars import read
    text = (read(RETRY_BUDGET_ENV, environ) or "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"${RETRY_BUDGET_ENV} must be an integer >= 1, got {text!r}")
        return int(text), f"${RETRY_BUDGET_ENV}"
    from mitoseg.core.paths import StudyPaths
    if grid is None and study_dir is not None and StudyPaths(study_dir).grid_config.exists():
        from mitoseg.core.grid import load_study_grid
        grid = load_study_grid(study_dir)
    if grid is not None and grid.retry_budget is not None:
        return grid.retry_budget, "the grid's retry_budget"
    if site is not None and site.retry_budget is not None:
        return site.retry_budget, f"site profile {site.path}"
    return RETRY_BUDGET, "default"


def retry_exhausted(record: Optional[dict], retry_failed: bool = False, budget: int = RETRY_BUDGET) -> bool:
    """True when a resubmission must not retrain this cell: it failed `budget` times (retry_budget()) and
    the user did not pass --retry-failed."""
    return (not retry_failed and record is not None and record.get("status") == FAILED
            and record.get("attempts", 1) >= budget)
