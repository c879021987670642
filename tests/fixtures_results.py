"""Fixture studies for the analysis tests: real results files written with save_results(empty_record(...))."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mitoseg.core.grid import GridConfig, cells
from mitoseg.core.paths import GRID_CONFIG_NAME, experiment_paths
from mitoseg.core.results import empty_record, save_results

ALL_FG = 0.07  # all-foreground IoU of the fixture validation slices (as in the original data)
ARCH_EFFECT = {"UNet": 0.0, "Attention_UNet": 0.05, "Attention_ResUNet": 0.02}
LR_EFFECT = {1e-4: -0.10, 1e-3: 0.05, 5e-3: 0.03, 1e-2: -0.02}
BS_EFFECT = {8: 0.02, 16: 0.0, 32: -0.01}


def seed_noise(seed: int, index: int) -> float:
    return float(np.random.default_rng(seed * 1000 + index).normal(0, 0.01))


def learned_iou(cell) -> float:
    return 0.70 + ARCH_EFFECT[cell.architecture] + LR_EFFECT[cell.learning_rate] + BS_EFFECT[cell.batch_size] \
        + seed_noise(cell.seed, cell.index)


def record_for(cell, status="ok", iou=None, all_fg=ALL_FG, pred_fg=0.08, test=None, epochs=12, degenerate=None):
    iou = learned_iou(cell) if iou is None and status == "ok" else iou
    rec = empty_record(
        experiment_id=cell.name, status=status, architecture=cell.architecture,
        learning_rate=float(cell.learning_rate), batch_size=int(cell.batch_size), seed=int(cell.seed),
        task_index=cell.index, epochs_run=epochs, files={"history": f"{cell.name}_history.csv"},
        started_at="2026-01-01T00:00:00", finished_at="2026-01-01T01:00:00",
    )
    if status == "ok":
        train_loss = 0.05 + 0.01 * (cell.index % 3)
        rec.update(best_epoch=epochs - 2, epochs_to_best=epochs - 2, best_val_iou=iou, best_val_dice=2 * iou / (1 + iou),
                   best_val_jaccard=0.2 + 0.1 * iou, val_predicted_foreground_fraction=pred_fg,
                   final_val_loss=train_loss + 0.02, final_train_loss=train_loss, overfitting_gap=0.02,
                   val_loss_stability=0.01 + 0.002 * (cell.index % 4), foreground_fraction=ALL_FG,
                   all_foreground_jaccard=all_fg, all_background_jaccard=0.0, training_time_s=100.0 + cell.index,
                   total_time_s=120.0 + cell.index, test=test)
        reason = None
        if degenerate is None:
            from mitoseg.core.scores import degenerate_reason
            reason = degenerate_reason(iou, all_fg, pred_fg)
        rec.update(degenerate=reason is not None, degenerate_reason=reason)
    elif status == "diverged":
        rec.update(error="loss became NaN in epoch 3", diverged_epoch=3, epochs_run=3)
    else:
        rec.update(error="RuntimeError: out of memory", epochs_run=0)
    return rec


def write_history(exp_dir: Path, name: str, epochs: int = 12, final_iou: float = 0.7):
    ep = np.arange(1, epochs + 1)
    frac = ep / epochs
    df = pd.DataFrame(dict(epoch=ep, loss=0.3 * (1 - frac) + 0.05, val_loss=0.3 * (1 - frac) + 0.07,
                           jaccard=0.1 + 0.2 * frac, val_jaccard=0.1 + 0.15 * frac, iou=final_iou * frac,
                           val_iou=final_iou * frac * 0.95, val_dice=final_iou * frac, learning_rate=1e-3,
                           time_s=10.0))
    df.to_csv(exp_dir / f"{name}_history.csv", index=False)


SLICE_OFFSETS = (-0.03, 0.01, 0.02, 0.0)   # per-slice difficulty shared by every model (mean 0)


SLICE_UNION = 10 ** 8   # tp + fp + fn of every fixture test slice: pooled IoU = mean slice IoU (to 1e-8)


def slice_counts(name: str, iou: float) -> dict:
    """A schema-3 test slice with pixel counts whose IoU is `iou` (to 1e-8) and Dice follows from them."""
    tp = int(round(iou * SLICE_UNION))
    fp = (SLICE_UNION - tp) // 2
    fn = SLICE_UNION - tp - fp
    return dict(name=name, iou=tp / SLICE_UNION, dice=2 * tp / (2 * tp + fp + fn), tp=tp, fp=fp, fn=fn)


def test_scores(t: float, all_fg: float = ALL_FG, slices: bool = True) -> dict:
    """A results `test` dict with IoU t (and per-slice scores with counts whose mean, and pooled IoU, is t)."""
    out = dict(iou=t, dice=2 * t / (1 + t), precision=0.8, recall=0.8, iou_at_val_threshold=t, val_threshold=0.5,
               all_foreground_jaccard=all_fg, foreground_fraction=all_fg, n_slices=len(SLICE_OFFSETS), tta=False)
    if slices:
        out["slices"] = [slice_counts(f"testing.tif[z={k}]", t + o) for k, o in enumerate(SLICE_OFFSETS)]
    return out


def make_study(root: Path, architectures=("UNet", "Attention_UNet"), learning_rates=(1e-4, 1e-3, 1e-2),
               batch_sizes=(8, 16), seeds=(1, 2), special=None, iou_fn=None, all_fg=ALL_FG, history=True,
               test=False, test_fn=None) -> Path:
    """Write a study. `special` maps cell name -> "failed" | "diverged" | "degenerate" | "missing" |
    "running" | "corrupt" | "foreign". With test=True every learned cell gets test scores: test_fn(cell)
    when given, else its validation IoU - 0.02."""
    special = special or {}
    study = Path(root)
    study.mkdir(parents=True, exist_ok=True)
    grid = GridConfig(architectures=list(architectures), learning_rates=list(learning_rates),
                      batch_sizes=list(batch_sizes), seeds=list(seeds))
    grid.save(study / GRID_CONFIG_NAME)
    for cell in cells(grid):
        kind = special.get(cell.name, "ok")
        paths = experiment_paths(study, cell.name)
        if kind == "missing":
            continue
        paths.exp_dir.mkdir(parents=True, exist_ok=True)
        if kind == "running":
            continue
        if kind == "corrupt":
            paths.results_json.write_text('{"schema_version": 1, "status": "ok", "best_val')
            continue
        if kind == "foreign":
            paths.results_json.write_text(json.dumps({"schema_version": 99, "status": "ok"}))
            continue
        iou = iou_fn(cell) if iou_fn else None
        if kind == "degenerate":
            iou = all_fg + 0.01
        test_scores = None
        if test and kind in ("ok", "degenerate"):
            t = test_fn(cell) if test_fn else (iou if iou is not None else learned_iou(cell)) - 0.02
            test_scores = test_scores_for(t, all_fg)
        status = kind if kind in ("failed", "diverged") else "ok"
        rec = record_for(cell, status=status, iou=iou, all_fg=all_fg, test=test_scores)
        save_results(paths.results_json, rec)
        if history and status == "ok":
            write_history(paths.exp_dir, cell.name, final_iou=rec["best_val_iou"])
    return study


def test_scores_for(t, all_fg=ALL_FG):
    return test_scores(t, all_fg)


def add_confirmation(study: Path, seeds: int, val_fn, test_fn, top: int = 1, special=None, slices=True,
                     allow_incomplete=False) -> dict:
    """Plan the confirmation stage of a fixture study (the real planner) and write a results file for
    each of its cells: validation IoU val_fn(cell), test IoU test_fn(cell). `special` maps a cell
    name to "failed" | "missing"."""
    from mitoseg.study.confirm import plan_confirmation
    from mitoseg.core.grid import confirm_cells
    special = special or {}
    plan = plan_confirmation(study, seeds, top, allow_incomplete=allow_incomplete, log=lambda _: None)
    for cell in confirm_cells(study):
        kind = special.get(cell.name, "ok")
        if kind == "missing":
            continue
        paths = experiment_paths(study, cell.name)
        paths.exp_dir.mkdir(parents=True, exist_ok=True)
        if kind == "failed":
            save_results(paths.results_json, record_for(cell, status="failed"))
            continue
        rec = record_for(cell, iou=val_fn(cell), test=test_scores(test_fn(cell), slices=slices))
        save_results(paths.results_json, rec)
    return plan


def name_of(study_grid_kwargs: dict, architecture, lr, bs, seed=None) -> str:
    grid = GridConfig(**study_grid_kwargs)
    for cell in cells(grid):
        if (cell.architecture, cell.learning_rate, cell.batch_size) == (architecture, lr, bs) and \
                (seed is None or cell.seed == seed):
            return cell.name
    raise KeyError((architecture, lr, bs, seed))
