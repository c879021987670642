"""The confirmation stage: each architecture's validation-selected configuration(s), again, with fresh seeds.

Stage 1 (the grid) searches the nuisance hyperparameters on validation data; choosing the best of
many noisy scores makes the winner's score optimistic (the winner's curse). Stage 2 reruns the
chosen configuration of each architecture with seeds the study has never used, and only those
runs are compared on the test set (mitoseg/analysis/comparison.py).

`plan_confirmation` writes the plan once into STUDY/confirm_config.json: the selected
configurations (mitoseg.analysis.stats.select_configs, the one "best" rule), the seeds, the folds of the data
split (K > 1: each seed runs on K different validation/test blocks, mitoseg.data.patches.fold_split), the
smallest IoU difference that matters (sesoi), and one cell per (configuration, seed, fold) whose array
index follows the grid's (grid.size, grid.size + 1, ...).
From then on a confirmation cell is a study cell like any other: `train_one.py --task-index N`,
`run_study.py element`, the local runner and the job scripts run it unchanged (mitoseg.core.grid.
study_cell_at), finished cells are skipped, failed ones rerun, interrupted ones resume. Rerunning
the same command reuses the plan; asking for more seeds adds fresh ones to it.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Callable

from mitoseg.core import grid as G
from mitoseg.core.cell_state import read_cell
from mitoseg.core.io_utils import atomic_write_text
from mitoseg.core.paths import StudyPaths
from mitoseg.core.status import DONE_STATUSES

PLAN_VERSION = 2           # 2: folds (K data splits per seed) and sesoi; a version-1 plan reads as 1 fold, sesoi 0.01
# The demo's confirmation: 1 fresh seed x 3 folds of each architecture's winner (9 tiny cells): its
# comparison sees the data split's variance with 2 degrees of freedom between folds (2 folds x 2 seeds
# gave 1, and 3 more cells; bench/results/demo_workers_2026-12-05.md).
DEMO_CONFIRM_SEEDS = 1
DEMO_CONFIRM_FOLDS = 3


def used_seeds(study_dir, grid: G.GridConfig) -> set:
    """Every seed the study has used or planned: the grid's, the plan's and those recorded in the
    results of any exp_ folder (hand-run cells included)."""
    seeds = {int(s) for s in grid.seeds} | {c.seed for c in G.confirm_cells(study_dir)}
    for exp_dir in StudyPaths(study_dir).exp_dirs():
        record = read_cell(exp_dir).record
        try:
            seeds.add(int(record["seed"]))
        except (TypeError, ValueError):   # no readable record, or no integer seed in it
            continue
    return seeds


def fresh_seeds(used: set, n: int) -> list:
    """n seeds above every used one (consecutive), so no run repeats a seed of the study."""
    start = max(used) + 1 if used else 0
    return list(range(start, start + n))


def grid_selection(study_dir, top: int, allow_incomplete: bool = False):
    """(selection DataFrame, grid summary): the `top` validation-selected configurations per
    architecture; refused while grid cells are unfinished unless allow_incomplete."""
    from mitoseg.analysis.stats import select_configs
    from mitoseg.analysis.summary import study_summary
    _, df, _ = study_summary(study_dir)
    grid_rows = df[df["stage"] == "grid"]
    pending = grid_rows[~grid_rows["status"].isin(DONE_STATUSES)]
    if len(pending) and not allow_incomplete:
        states = pending["status"].value_counts().to_dict()
        raise ValueError(f"{study_dir}: {len(pending)} of {len(grid_rows)} grid cells are not finished "
                         f"({', '.join(f'{v} {k}' for k, v in states.items())}); finish the grid first "
                         f"(python run_study.py local --study-dir ..., or resubmit), or pass --allow-incomplete")
    selection = select_configs(df, top=top)
    if selection.empty:
        raise ValueError(f"{study_dir}: no grid cell finished with a validation IoU, so nothing can be selected")
    return selection, grid_rows


def _cells_for(configs: list, seeds: list, folds: int, start: int) -> list:
    """One planned cell per (configuration, seed, fold), numbered from `start` in that order."""
    cells = []
    for cfg in configs:
        for seed in seeds:
            for fold in range(folds):
                cell = G.Cell(start + len(cells), cfg["architecture"], float(cfg["learning_rate"]),
                              int(cfg["batch_size"]), int(seed), stage="confirm", fold=fold, n_folds=folds)
                cells.append(dict(index=cell.index, architecture=cell.architecture, learning_rate=cell.learning_rate,
                                  batch_size=cell.batch_size, seed=cell.seed, fold=fold, name=cell.name))
    return cells


def _check_request(seeds: int, top: int, folds: int, sesoi: float) -> None:
    if seeds < 1 or top < 1 or folds < 1:
        raise ValueError(f"--seeds, --top and --folds must be at least 1 (got {seeds}, {top} and {folds})")
    if not 0 < sesoi < 1:
        raise ValueError(f"--sesoi must be an IoU difference in (0, 1), got {sesoi}")


def check_against_plan(study_dir, seeds: int, top: int = 1, folds: int = 1, sesoi: float = 0.01) -> None:
    """ValueError (one line) when a request contradicts the study's existing confirmation plan: checked by
    `run_study.py local --confirm-seeds` before the grid trains, and by plan_confirmation. A rerun must ask
    for what the plan fixed: a different --top, --folds or --sesoi is a new study; fewer seeds are refused."""
    _check_request(seeds, top, folds, sesoi)
    plan = G.load_confirm_plan(study_dir)
    if plan is None:
        return
    path = StudyPaths(study_dir).confirm_config
    for flag, have, want in (("--top", plan["top"], top), ("--folds", plan["folds"], folds),
                             ("--sesoi", plan["sesoi"], sesoi)):
        if have != want:
            local = " (run_study.py local: --confirm-folds)" if flag == "--folds" else ""
            raise ValueError(f"{path} was planned with {flag} {have:g}, not {want:g}; rerun with {flag} {have:g}{local}, "
                             "or start a new study for another value")
    if seeds < plan["seeds_per_config"]:
        raise ValueError(f"{path} already plans {plan['seeds_per_config']} seeds per configuration; use "
                         f"--seeds {plan['seeds_per_config']} to continue it, or more to add seeds")
    # A plan edited by hand to a grid seed would rerun the very runs the selection was made on: not fresh evidence.
    reused = sorted({c.seed for c in G.confirm_cells(study_dir)} & {int(s) for s in G.load_study_grid(study_dir).seeds})
    if reused:
        raise ValueError(f"{path}: its seeds {', '.join(map(str, reused))} are seeds of the grid, so its runs would repeat "
                         "the grid's own (the selection's) runs; restore the plan's fresh seeds, or move the plan away "
                         "to plan anew")


def check_folds_fit(study_dir, grid: G.GridConfig, folds: int) -> None:
    """ValueError (one line) when the study's data cannot hold `folds` non-overlapping folds, before any
    cell is planned (each cell would fail alike). Reads the data through the study's cache."""
    if folds == 1:
        return
    from mitoseg.cell.inputs import load_cell_data
    from mitoseg.core.config import TrainConfig
    from mitoseg.core.errors import DataError
    from mitoseg.data.patches import fold_split
    config = TrainConfig.from_dict(dict(grid.fixed))
    try:
        train, test = load_cell_data(config, StudyPaths(study_dir).cache_dir)
        held_out = train.val_slices is not None   # the test block is cut from the same stack and moves too
        n = len(train.images) + (len(test.images) if held_out else 0)
        fold_split(n, config.val_fraction, config.val_position, config.test_fraction if held_out else 0.0,
                   0, folds, config.data_dir or "the built-in synthetic data")
    except DataError as err:
        raise ValueError(f"--folds {folds}: {err}") from None


def plan_confirmation(study_dir, seeds: int, top: int = 1, folds: int = 1, sesoi: float = 0.01,
                      allow_incomplete: bool = False, log: Callable[[str], None] = print, write: bool = True) -> dict:
    """Create (or reuse, or extend with more seeds) STUDY/confirm_config.json; returns the plan:
    `seeds` fresh seeds x `folds` data-split folds per selected configuration, and the smallest IoU
    difference that matters (`sesoi`) that the comparison decides with. `write=False` (a dry run):
    the plan is made and returned, the file left as it was."""
    check_against_plan(study_dir, seeds, top, folds, sesoi)
    study_dir = Path(study_dir)
    grid = G.load_study_grid(study_dir)
    plan = G.load_confirm_plan(study_dir)
    now = _dt.datetime.now().isoformat(timespec="seconds")
    if plan is not None:
        have = plan["seeds_per_config"]
        if seeds == have:
            log(f"confirmation plan {StudyPaths(study_dir).confirm_config} exists: reusing it")
            return plan
        new = fresh_seeds(used_seeds(study_dir, grid), seeds - have)
        plan["cells"] += _cells_for(plan["configs"], new, folds, grid.size + len(plan["cells"]))
        plan.update(plan_version=PLAN_VERSION, seeds=plan["seeds"] + new, seeds_per_config=seeds, updated_at=now)
        log(f"confirmation plan extended by seeds {', '.join(map(str, new))}")
    else:
        selection, grid_rows = grid_selection(study_dir, top, allow_incomplete)
        check_folds_fit(study_dir, grid, folds)
        for _, r in selection[selection["degenerate"]].iterrows():
            log(f"warning: {r['architecture']}: its selected configuration learned in none of its grid runs; "
                f"confirming it anyway")
        missing = sorted(set(grid.architectures) - set(selection["architecture"]))
        if missing:
            log(f"warning: no finished grid run with a score for {', '.join(missing)}: not confirmed")
        configs = [dict(architecture=r["architecture"], learning_rate=float(r["learning_rate"]),
                        batch_size=int(r["batch_size"]), rank=int(r["rank"]), n_runs=int(r["n_runs"]),
                        val_iou_mean=float(r["score_mean"])) for _, r in selection.iterrows()]
        configs.sort(key=lambda c: (grid.architectures.index(c["architecture"])
                                    if c["architecture"] in grid.architectures else 99, c["rank"]))
        new = fresh_seeds(used_seeds(study_dir, grid), seeds)
        plan = dict(plan_version=PLAN_VERSION, selected_on="validation", top=top, seeds_per_config=seeds,
                    seeds=new, folds=folds, sesoi=sesoi, created_at=now, updated_at=now, configs=configs,
                    cells=_cells_for(configs, new, folds, grid.size))
    if write:
        atomic_write_text(StudyPaths(study_dir).confirm_config, json.dumps(plan, indent=2) + "\n")
    return plan


def describe(plan: dict) -> str:
    cells = plan["cells"]
    folds = plan["folds"]
    lines = [f"confirmation stage: {len(plan['configs'])} configuration(s) x {plan['seeds_per_config']} fresh seeds "
             f"({', '.join(map(str, plan['seeds']))}) x {folds} fold{'s' * (folds > 1)} of the data split = "
             f"{len(cells)} cells, array indices {cells[0]['index']}-{cells[-1]['index']}; smallest IoU difference "
             f"that matters (sesoi) {plan['sesoi']:g}"]
    for c in plan["configs"]:
        lines.append(f"  {c['architecture']} lr {c['learning_rate']:g} batch {c['batch_size']} (rank {c['rank']}, "
                     f"validation IoU {c['val_iou_mean']:.3f} over {c['n_runs']} grid run(s))")
    return "\n".join(lines)
