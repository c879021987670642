"""`run_study.py export`: each architecture's chosen model(s) as one self-contained folder.

BUNDLE/<architecture>/ holds copies of the member models and BUNDLE_JSON: per member its input scaling
(results `data.scaling`), decision threshold and provenance; the tiling; the study's summary of the
configuration. `predict.py --bundle` needs nothing else: the study may be moved or deleted.
Members: the confirmation plan's rank-1 configuration of the architecture with every finished ok
confirmation run; without a confirmation stage, the grid's selection (stats.select_configs) with its
best run, said so in `source`. The folder is written only when its content changes; a folder that is
or holds an input is refused, a different existing bundle without --overwrite too.
"""
from __future__ import annotations

import filecmp
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from mitoseg.core import grid as G
from mitoseg.core.paths import BUNDLE_JSON, SUMMARY_JSON, StudyPaths
from mitoseg.core.cell_state import read_cell
from mitoseg.core.status import OK
from mitoseg.core.version import version_info

BUNDLE_VERSION = 1


class ExportError(ValueError):
    """One user-facing line."""


def confirmed_members(study: Path, arch: str) -> tuple[Optional[dict], list[tuple[str, dict]]]:
    """(rank-1 configuration of the plan, [(cell name, record)] of its ok confirmation runs); (None, [])
    without a confirmation plan."""
    plan = G.load_confirm_plan(study)
    if plan is None:
        return None, []
    config = next((c for c in plan["configs"] if c["architecture"] == arch and c.get("rank", 1) == 1), None)
    if config is None:
        return None, []
    members = []
    for cell in G.confirm_cells(study):
        if (cell.architecture, cell.learning_rate, cell.batch_size) != (arch, config["learning_rate"],
                                                                      config["batch_size"]):
            continue
        read = read_cell(StudyPaths(study).exp(cell.name).exp_dir)   # not trained (yet) or unreadable: no run
        if read.state == OK:
            members.append((cell.name, read.record))
    return config, members


def selected_member(study: Path) -> dict:
    """{arch: (cell name, record)} of the grid's selection (no confirmation stage)."""
    from mitoseg.predict.best_runs import best_per_architecture
    from mitoseg.predict.model import PredictError
    try:
        best = best_per_architecture(study)
    except PredictError as err:
        raise ExportError(str(err)) from None
    return {arch: (exp_dir.name, rec) for arch, (rec, exp_dir, _) in best.items()}


def study_summary(study: Path, arch: str, confirmed: bool) -> Optional[dict]:
    """The analysis' numbers of this architecture's configuration (confirmation arm, else its grid
    selection), or None when the study has no readable analysis_summary.json."""
    try:
        summary = json.loads(StudyPaths(study).output(SUMMARY_JSON).read_text())
    except (OSError, ValueError):
        return None
    rows = ((summary.get("confirmation") or {}).get("architectures") if confirmed
            else summary.get("best_per_architecture")) or []
    row = next((r for r in rows if r.get("architecture") == arch), None)
    return None if row is None else dict(row, stage="confirmation" if confirmed else "grid")


def member_entry(name: str, record: dict) -> dict:
    test = record.get("test") or {}
    config = record["config"]
    threshold = test.get("val_threshold")
    return dict(cell=name, model=record["files"]["model"], scaling=(record.get("data") or {}).get("scaling"),
                threshold=threshold if threshold is not None else config.get("threshold", 0.5),
                threshold_from="test.val_threshold" if threshold is not None else "config.threshold",
                seed=record["seed"], fold=config.get("fold", 0), best_val_iou=record["best_val_iou"],
                test_iou=test.get("iou"), degenerate=record["degenerate"],
                code=(record.get("environment") or {}).get("code"),
                packages=(record.get("environment") or {}).get("packages"))


def bundle_manifest(study: Path, arch: str, members: list, source: str, confirmed: bool) -> dict:
    record = members[0][1]
    first = record["config"]
    entries = [member_entry(name, rec) for name, rec in members]
    return dict(bundle_version=BUNDLE_VERSION, architecture=arch, learning_rate=record["learning_rate"],
                batch_size=record["batch_size"], source=source,
                # The members' own thresholds were each chosen on their validation slices; the ensemble
                # has none of its own, so it uses their mean.
                threshold=sum(e["threshold"] for e in entries) / len(entries), threshold_rule="mean of the members'",
                tiling=dict(patch_size=first.get("patch_size"), overlap=0.5, tta=bool(first.get("test_tta"))),
                summary=study_summary(study, arch, confirmed), members=entries,
                provenance=dict(study=str(study), cells=[e["cell"] for e in entries], exported_by=version_info()))


def member_files(study: Path, members: list) -> dict:
    """{model file name: its path} of the members; ExportError naming a member whose model is not recorded
    (a hand-made record) or was deleted, before anything is written."""
    files = {}
    for name, rec in members:
        exp_dir = StudyPaths(study).exp(name).exp_dir
        model = (rec.get("files") or {}).get("model")
        if not model or not (exp_dir / model).is_file():
            what = f"its model file {model} is missing" if model else "its results record no model file (files.model)"
            raise ExportError(f"{exp_dir}: {what}; nothing exported")
        files[model] = exp_dir / model
    return files


def plan_bundles(study: Path, archs: Optional[list]) -> tuple[dict, list[str]]:
    """({arch: (manifest, {file name: source model path})}, lines to print)."""
    lines, out = [], {}
    confirmed = G.load_confirm_plan(study) is not None
    grid_pick = {} if confirmed else selected_member(study)
    if not confirmed:
        lines.append("no confirmation stage: exporting each architecture's grid selection with its best run")
    known = G.load_study_grid(study).architectures
    unknown = [a for a in archs or () if a not in known]
    if unknown:
        raise ExportError(f"--arch {unknown[0]}: not an architecture of this study ({', '.join(known)})")
    for arch in archs or known:
        if confirmed:
            config, members = confirmed_members(study, arch)
            source = "confirmation: the plan's rank-1 configuration, every finished ok run"
        else:
            members = [grid_pick[arch]] if arch in grid_pick else []
            source = "grid selection (no confirmation stage): the best run of the selected configuration"
        if not members:
            lines.append(f"warning: {arch}: no finished ok {'confirmation' if confirmed else 'grid'} run; not exported")
            continue
        degenerate = [name for name, rec in members if rec["degenerate"]]
        if degenerate:   # kept: the plan's runs are the configuration's honest sample, not hand-picked
            lines.append(f"warning: {arch}: {len(degenerate)} member(s) did not learn (degenerate): {', '.join(degenerate)}")
        files = member_files(study, members)
        out[arch] = (bundle_manifest(study, arch, members, source, confirmed), files)
    if not out:
        raise ExportError(f"{study}: nothing to export ({'; '.join(lines) or 'no architecture'})")
    return out, lines


def check_not_an_input(out: Path, study: Path, models) -> None:
    """A bundle folder that is, holds or lies inside the study (or a model) would be written over an input."""
    out = out.resolve()
    for what, path in [("the study", study), *(("the model", m) for m in models)]:
        path = Path(path).resolve()
        if out == path or out in path.parents or path in out.parents:
            raise ExportError(f"--output-dir {out} {'is' if out == path else 'overlaps'} {what} {path}: "
                              "a bundle is never written over an input; choose a folder outside the study")


def unchanged(dest: Path, text: str, files: dict) -> bool:
    """True when `dest` already holds exactly this bundle (manifest and model bytes)."""
    try:
        present = {p.name for p in dest.iterdir()}
        return (present == {BUNDLE_JSON, *files} and (dest / BUNDLE_JSON).read_text() == text
                and all(filecmp.cmp(src, dest / name, shallow=False) for name, src in files.items()))
    except OSError:
        return False


def refusal(dest: Path, overwrite: bool) -> Optional[str]:
    """Why an existing, different `dest` must not be replaced (None: it may)."""
    if not dest.exists():
        return None
    if not dest.is_dir():
        return f"{dest} exists and is not a folder"
    if not (dest / BUNDLE_JSON).exists() and any(dest.iterdir()):
        return f"{dest} exists and is not a bundle (no {BUNDLE_JSON}); choose another --output-dir"
    return None if overwrite else f"{dest} holds a different bundle; add --overwrite to replace it"


def write_bundle(dest: Path, text: str, files: dict) -> None:
    """Build the folder beside `dest`, then swap it in: an interrupted export never leaves a half bundle."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp"))
    for name, src in files.items():
        shutil.copy2(src, tmp / name)
    (tmp / BUNDLE_JSON).write_text(text)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old)
    else:
        tmp.rename(dest)


def export_study(study, out, archs: Optional[list] = None, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Write OUT/<arch>/ for each architecture; returns {arch: "written" | "unchanged"}."""
    study, out = Path(study), Path(out)
    if not StudyPaths(study).grid_config.exists():
        raise ExportError(f"--study-dir {study}: not a study folder (no {StudyPaths(study).grid_config.name})")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--output-dir {out} is a file, not a folder; name a folder outside the study")
    bundles, lines = plan_bundles(study.resolve(), archs)
    for line in lines:
        log(line)
    check_not_an_input(out, study, [src for _, files in bundles.values() for src in files.values()])
    texts = {arch: json.dumps(manifest, indent=2, sort_keys=True) + "\n" for arch, (manifest, _) in bundles.items()}
    done = {arch: "unchanged" for arch, (_, files) in bundles.items() if unchanged(out / arch, texts[arch], files)}
    problems = [p for arch in bundles if arch not in done for p in [refusal(out / arch, overwrite)] if p]
    if problems:   # checked for every architecture before anything is written
        raise ExportError("; ".join(problems))
    for arch, (manifest, files) in bundles.items():
        if arch not in done:
            write_bundle(out / arch, texts[arch], files)
            done[arch] = "written"
        log(f"{arch}: {out / arch}: {done[arch]}" + (" (same content; nothing rewritten)" if done[arch] == "unchanged"
            else f" ({len(files)} model(s): {', '.join(m['cell'] for m in manifest['members'])}; "
                 f"threshold {manifest['threshold']:.3f})"))
    return done
