"""Hand-edited summary CSVs: checked like any input when read, kept when the analysis would overwrite them.

A summary CSV is often opened in a spreadsheet and saved again: rows go empty, a name gains a trailing
space, a number is typed with a decimal comma or in percent, a block is pasted twice, the separator
becomes `;`. Each of these used to change the answer without a word. `read_checked` reads the text
(delimiter decided by the header), says in one line what it normalised (architecture and status
names differing only in case or surrounding spaces, empty rows) and refuses, naming the line, what it
cannot read unambiguously. `keep_hand_edits` keeps a summary CSV that differs from what the analysis
last wrote there as `<name>.bak` (numbered when one exists) before it is rewritten.
"""
from __future__ import annotations

import hashlib
import io
import math
import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from mitoseg.core.config import ARCHITECTURES
from mitoseg.core.paths import written_digest
from mitoseg.core.status import MISSING, STATUSES, UNREADABLE

EMPTY = ("", "nan", "na", "n/a", "none", "null")   # cells read as empty (any case)
UNIT_COLUMNS = ["best_val_jaccard", "best_val_iou", "best_val_dice", "test_iou", "test_dice",
                "test_all_foreground_jaccard", "all_foreground_jaccard", "foreground_fraction",
                "val_predicted_foreground_fraction"]   # scores and fractions: within [0, 1]
RUN_KEY = ["architecture", "learning_rate", "batch_size", "seed", "fold", "stage"]   # one run of a study
DELIMITERS = (",", ";", "\t")


class CsvProblem(ValueError):
    """One line naming the CSV line and the problem (the caller adds the file)."""


def _delimiter(text: str, required) -> str:
    """The separator of the header line that yields every required column (`,` when none does)."""
    header = text.splitlines()[0] if text.strip() else ""
    for delim in DELIMITERS:
        names = {c.strip().strip('"').strip() for c in header.split(delim)}
        if all(r in names for r in required):
            return delim
    return ","


def _empty(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        str(value).strip().lower() in EMPTY


def _line(i) -> int:
    return int(i) + 2   # the header is line 1


def _number_problem(text: str) -> Optional[str]:
    if re.fullmatch(r"[-+]?\d+,\d+", text):
        return f"{text!r} has a decimal comma; write {text.replace(',', '.')}"
    if text.endswith("%"):
        return f"{text!r} is a percentage; write it as a fraction"
    try:
        float(text)
    except ValueError:
        return f"{text!r} is not a number"
    return None


def _check_numbers(df: pd.DataFrame, numeric: list) -> None:
    problems = []
    for col in [c for c in numeric if c in df.columns]:
        for i, value in df[col].items():
            if _empty(value):
                continue
            text = str(value).strip()
            why = _number_problem(text)
            if why is None and col in UNIT_COLUMNS and not 0 <= float(text) <= 1:
                why = f"{text} is outside [0, 1]" + (" (a percentage?)" if 1 < float(text) <= 100 else "")
            if why:
                problems.append(f"line {_line(i)}, column {col}: {why}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CsvProblem(problems[0] + more)


def _canonical(values: pd.Series, known, what: str, say: Callable[[str], None]) -> pd.Series:
    """Names that differ from a known one (or, unknown, from each other) only by case or surrounding
    spaces, written as it; a name two spellings could mean is refused."""
    stripped = pd.Series([None if _empty(v) else str(v).strip() for v in values], index=values.index, dtype=object)
    spellings = {}
    for name in stripped.dropna().unique():
        spellings.setdefault(name.casefold(), set()).add(name)
    fixed = {}
    for key, names in spellings.items():
        target = [k for k in known if k.casefold() == key]
        if not target and len(names) > 1:
            lines = [str(_line(i)) for i, v in stripped.items() if v in names]
            raise CsvProblem(f"{what} {' / '.join(sorted(map(repr, names)))} (lines {', '.join(lines[:4])}) differ only "
                             "in case; write one spelling")
        fixed.update({n: target[0] if target else n for n in names})
    changed = sorted({(str(v), fixed[s]) for v, s in zip(values, stripped) if s is not None and str(v) != fixed[s]})
    if changed:
        say(f"{what} names read as {', '.join(f'{a!r} -> {b!r}' for a, b in changed[:4])}"
            + (f" and {len(changed) - 4} more" if len(changed) > 4 else ""))
    return pd.Series([None if s is None else fixed[s] for s in stripped], index=values.index, dtype=object)


def _check_architectures(arch: pd.Series) -> None:
    squash = {re.sub(r"[\s_-]", "", a).casefold(): a for a in ARCHITECTURES}
    for i, name in arch.items():
        if name is None:
            raise CsvProblem(f"line {_line(i)}: no architecture")
        near = squash.get(re.sub(r"[\s_-]", "", name).casefold())
        if near and near != name:
            raise CsvProblem(f"line {_line(i)}: architecture {name!r} is not {near!r} (spelled differently); "
                             f"write {near}")


def _run_value(column: str, value) -> str:
    """A run-key cell as the analysis reads it: numbers by value (1e-3 is 0.001, 1.0 is 1; a run spelled two ways
    was counted twice), an empty fold as 0, an empty stage as grid."""
    text = "" if _empty(value) else str(value).strip().lower()
    if not text:
        return {"fold": repr(0.0), "stage": "grid"}.get(column, "")
    try:
        return repr(float(text))
    except ValueError:
        return text


def _check_duplicates(df: pd.DataFrame) -> None:
    seen = {}
    for i, row in df.iterrows():
        key = tuple("" if _empty(v) else str(v).strip() for v in row)
        if key in seen:
            raise CsvProblem(f"lines {_line(seen[key])} and {_line(i)} are the same row (pasted twice?); remove one")
        seen[key] = i
    if "experiment_id" in df.columns:
        ids = df["experiment_id"].map(lambda v: None if _empty(v) else str(v).strip())
        dup = ids[ids.notna() & ids.duplicated(keep=False)]
        if len(dup):
            lines = [str(_line(i)) for i in dup.index if dup[i] == dup.iloc[0]]
            raise CsvProblem(f"experiment_id {dup.iloc[0]!r} appears on lines {', '.join(lines)}; one run, one row")
    key = [c for c in RUN_KEY if c in df.columns]
    if "seed" in key:
        # .loc with a boolean list: an empty frame's empty mask would otherwise be read as a list of columns
        runs = df.loc[[not _empty(v) for v in df["seed"]], key].apply(
            lambda r: tuple(_run_value(c, r[c]) for c in key), axis=1)
        dup = runs[runs.duplicated(keep=False)]
        if len(dup):
            lines = [str(_line(i)) for i in dup.index if dup[i] == dup.iloc[0]]
            raise CsvProblem(f"lines {', '.join(lines)} are the same run ({', '.join(key)}); one run, one row")


def read_checked(path: Path, required, numeric, say: Callable[[str], None]) -> pd.DataFrame:
    """The CSV's table, checked (see the module docstring): text cells, empties as NaN, names normalised.
    CsvProblem for what cannot be read unambiguously; UnicodeDecodeError/pandas errors pass through."""
    text = path.read_text(encoding="utf-8-sig")
    delim = _delimiter(text, required)
    if delim != ",":
        say(f"columns separated by {delim!r}")
    df = pd.read_csv(io.StringIO(text), sep=delim, dtype=str, keep_default_na=False, skip_blank_lines=False)
    df.columns = [str(c).strip() for c in df.columns]
    blank = df.apply(lambda r: all(_empty(v) for v in r), axis=1) if len(df) else pd.Series([], dtype=bool)
    if blank.any():
        say(f"dropped {int(blank.sum())} empty row(s) (line {', '.join(str(_line(i)) for i in blank[blank].index[:5])})")
        df = df[~blank]
    if "architecture" in df.columns:
        df["architecture"] = _canonical(df["architecture"], ARCHITECTURES, "architecture", say)
        _check_architectures(df["architecture"])
    if "status" in df.columns:
        df["status"] = _canonical(df["status"], (*STATUSES, MISSING, UNREADABLE), "status", say)
    _check_numbers(df, numeric)
    _check_duplicates(df)
    return df.apply(lambda col: col.map(lambda v: np.nan if _empty(v) else v))


# --- rewriting a summary CSV that was edited by hand -------------------------------------------------
def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def keep_hand_edits(path: Path, new_text: str, say: Callable[[str], None]) -> Optional[Path]:
    """Before `path` is rewritten with new_text: when it holds something else than what the analysis last
    wrote there (a hand edit, or a file of unknown origin), move it to <name>.bak (.bak.2, ... when taken)
    and say so. Returns the backup, or None."""
    if not path.is_file():
        return None
    old = path.read_text(errors="replace")
    digest = written_digest(path)
    ours = digest.is_file() and digest.read_text().strip() == _digest(old)
    if old == new_text or ours:
        return None
    backup = path.with_name(path.name + ".bak")
    n = 1
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}.bak.{n}")
    path.rename(backup)
    say(f"note: {path} differed from what the analysis last wrote there (edited by hand?); kept it as {backup.name}")
    return backup


def record_written(path: Path, text: str) -> None:
    """Remember what the analysis wrote into `path` (so a later run can tell a hand edit from its own file)."""
    written_digest(path).write_text(_digest(text) + "\n")
