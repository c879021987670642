"""Folds of the data split (issue 25): the split rule, fold cells and their names, the confirmation plan
with folds and sesoi (version 2; version 1 still read), per-slice confusion counts (results schema 3;
versions 1 and 2 still load), the summary's fold and test_slice_counts columns, and one tiny real run of
fold 1 of 2."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mitoseg.study import confirm as C
from mitoseg.core import grid as G
from mitoseg.cell import inference, metrics
from mitoseg.cell.inputs import hold_out_test_slices, train_val_slices
from mitoseg.core.config import ConfigError, TrainConfig
from mitoseg.data.stacks import Volume
from mitoseg.core.identity import check_study
from mitoseg.core.errors import DataError
from mitoseg.data.patches import fold_split, split_slices
from mitoseg.core.paths import StudyPaths, cell_name, parse_cell_name
from mitoseg.core.results import ResultsError, empty_record, load_results, save_results
from mitoseg.analysis.summary import build_summary, normalize_summary, SummaryError
from tests.fixtures_results import add_confirmation, make_study, record_for

ROOT = Path(__file__).resolve().parents[1]
GRID = dict(architectures=["UNet", "Attention_UNet"], learning_rates=[1e-3, 5e-3], batch_sizes=[8], seeds=[1])


def quiet(_):
    pass


# --- the split ------------------------------------------------------------------------------------------
def _old_split(n, val_fraction, position):
    """split_slices before folds existed (commit 1933160), kept verbatim as the reference of fold 0."""
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    starts = {"start": 0, "middle": (n - n_val) // 2, "end": n - n_val}
    val = np.arange(starts[position], starts[position] + n_val)
    return np.setdiff1d(np.arange(n), val), val


def _old_held_out(n, test_fraction, val_fraction, position):
    """(train, val, test) in stack indices as the code before folds split a stack without testing.tif."""
    rest, test = _old_split(n, test_fraction, "start")
    train, val = _old_split(len(rest), val_fraction, position)
    return rest[train], rest[val], test


CASES = [(n, vf, pos, tf) for n in (2, 3, 7, 20, 24, 33, 165) for vf in (0.1, 0.2, 0.5) for pos in ("start", "middle", "end")
         for tf in (0.0, 0.15) if not (tf and n < 3)]


@pytest.mark.parametrize("n, vf, pos, tf", CASES)
def test_fold_0_is_the_split_before_folds(n, vf, pos, tf):
    want = _old_held_out(n, tf, vf, pos) if tf else (*_old_split(n, vf, pos), np.array([], int))
    for n_folds in (1, 2, 3):
        try:
            got = fold_split(n, vf, pos, tf, 0, n_folds)
        except DataError:
            assert n_folds > 1   # only more folds than the stack holds are refused
            continue
        for a, b in zip(got, want):
            assert a.tolist() == b.tolist()
    if not tf:
        assert [a.tolist() for a in split_slices(n, vf, pos)] == [a.tolist() for a in want[:2]]


def _contiguous(block):
    return block.tolist() == list(range(block[0], block[0] + len(block)))


def _placeable(n, vf, pos, tf, n_folds):
    """Brute force: can fold 0's blocks (the split before folds) be shifted to n_folds - 1 more places where
    no block is cut by the stack's end and no two folds share a validation (or test) slice?"""
    train, val, test = fold_split(n, vf, pos, tf, 0, 1)
    blocks = [(b[0], len(b)) for b in (val, test) if len(b)]
    fits = [s for s in range(1, n) if all((a + s) % n + length <= n for a, length in blocks)]
    for shifts in itertools.combinations(fits, n_folds - 1):
        covered = [[(a + s) % n + i for s in (0, *shifts) for i in range(length)] for a, length in blocks]
        if all(len(set(c)) == len(c) for c in covered):
            return True
    return False


@pytest.mark.parametrize("n, vf, pos, tf", [c for c in CASES if c[0] >= 20])
def test_folds_move_contiguous_blocks_that_never_overlap(n, vf, pos, tf):
    for n_folds in (2, 3, 5) if n < 100 else (2, 3):
        try:
            folds = [fold_split(n, vf, pos, tf, k, n_folds) for k in range(n_folds)]
        except DataError:
            assert not _placeable(n, vf, pos, tf, n_folds)   # refused only where the stack does not allow it
            continue
        for train, val, test in folds:
            assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(n))   # a partition
            assert _contiguous(val) and (not len(test) or _contiguous(test)) and len(train)
        vals = np.concatenate([v for _, v, _ in folds])
        tests = np.concatenate([t for _, _, t in folds])
        assert len(set(vals.tolist())) == len(vals) and len(set(tests.tolist())) == len(tests)
        assert len({tuple(v) for _, v, _ in folds}) == n_folds


def test_a_fold_count_the_stack_cannot_hold_is_refused_in_one_line():
    assert len(fold_split(20, 0.1, "end", 0.0, 9, 10)[1]) == 2     # 10 blocks of 2 slices fit 20 slices
    with pytest.raises(DataError) as err:
        fold_split(20, 0.1, "end", 0.0, 0, 11, source="training.tif")
    text = str(err.value)
    assert "\n" not in text and text.startswith("training.tif: 20 slices cannot hold 11 folds") and "at most 10" in text
    with pytest.raises(DataError, match="fold must be in 0 .. 1"):
        fold_split(20, 0.1, "end", 0.0, 2, 2)


def _volume(n):
    images = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32) / n
    return Volume(images, np.ones((n, 4, 4), np.uint8), [f"training.tif[z={z}]" for z in range(n)], "training.tif")


def test_a_held_out_test_block_moves_with_the_fold():
    config = TrainConfig(data_dir="/x", test_fraction=0.1, val_fraction=0.1, fold=1, n_folds=2)
    train, test = hold_out_test_slices(_volume(24), config)
    assert test.slice_names == ["training.tif[z=12]", "training.tif[z=13]"] and test.source == "training.tif slices 12..13"
    assert train.source == "training.tif slices 0..11, 14..23"
    _, val = train_val_slices(train, config)
    assert [train.slice_names[i] for i in val] == ["training.tif[z=10]", "training.tif[z=11]"]
    train0, test0 = hold_out_test_slices(_volume(24), TrainConfig(data_dir="/x", test_fraction=0.1))
    _, val0 = train_val_slices(train0, TrainConfig(data_dir="/x", test_fraction=0.1))
    assert test0.source == "training.tif slices 0..1" and train0.source == "training.tif slices 2..23"
    assert val0.tolist() == [20, 21]    # as before folds: indices into the 22 remaining slices


def test_fold_settings_are_checked():
    with pytest.raises(ConfigError, match="fold must be in 0 .. n_folds-1 = 1, got 2"):
        TrainConfig(fold=2, n_folds=2).validate()
    with pytest.raises(ConfigError, match="n_folds must be >= 1"):
        TrainConfig(n_folds=0).validate()
    assert TrainConfig().to_dict()["fold"] == 0 and TrainConfig().to_dict()["n_folds"] == 1
    with pytest.raises(ValueError, match="fixed settings may not set fold"):
        G.GridConfig(fixed={"fold": 1})


# --- cells and names ------------------------------------------------------------------------------------
def test_fold_cell_names_round_trip():
    name = cell_name(12, "UNet", 1e-3, 8, 43, 1)
    assert name == "exp_12_UNet_lr0.001_bs8_seed43_fold1"
    assert parse_cell_name(name) == dict(architecture="UNet", learning_rate=1e-3, batch_size=8, seed=43, fold=1,
                                         task_index=12)
    assert "fold" not in parse_cell_name(cell_name(3, "Attention_ResUNet", 1e-4, 16, 7))
    cell = G.Cell(12, "UNet", 1e-3, 8, 43, stage="confirm", fold=0, n_folds=2)
    assert cell.name == "exp_12_UNet_lr0.001_bs8_seed43_fold0"
    assert G.Cell(12, "UNet", 1e-3, 8, 43, stage="confirm").name == "exp_12_UNet_lr0.001_bs8_seed43"
    config = G.Cell(12, "UNet", 1e-3, 8, 43, stage="confirm", fold=1, n_folds=2).train_config(G.GridConfig())
    assert (config.fold, config.n_folds) == (1, 2)


# --- the plan -------------------------------------------------------------------------------------------
def _study(tmp_path):
    return make_study(tmp_path / "s", history=False, test=True, **GRID)


def test_plan_with_folds_and_sesoi(tmp_path):
    study = _study(tmp_path)
    plan = C.plan_confirmation(study, 2, folds=2, sesoi=0.02, log=quiet)
    assert plan["plan_version"] == 2 and plan["folds"] == 2 and plan["sesoi"] == 0.02
    assert [(c["seed"], c["fold"]) for c in plan["cells"][:4]] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    cells = G.confirm_cells(study)
    assert len(cells) == 8 and [c.index for c in cells] == list(range(4, 12))
    assert cells[1].name == "exp_05_UNet_lr0.001_bs8_seed2_fold1" and cells[1].train_config(G.GridConfig()).fold == 1
    assert G.load_confirm_plan(study)["sesoi"] == 0.02
    assert "2 fresh seeds (2, 3) x 2 folds of the data split = 8 cells" in C.describe(plan)
    assert "sesoi) 0.02" in C.describe(plan)
    assert C.plan_confirmation(study, 2, folds=2, sesoi=0.02, log=quiet) == plan
    more = C.plan_confirmation(study, 3, folds=2, sesoi=0.02, log=quiet)   # a new seed on both folds
    assert [(c["seed"], c["fold"]) for c in more["cells"][8:]] == [(4, 0), (4, 1), (4, 0), (4, 1)]
    for kw, flag in ((dict(folds=3, sesoi=0.02), "--folds 2"), (dict(folds=2, sesoi=0.01), "--sesoi 0.02"),
                     (dict(folds=2, sesoi=0.02, top=2), "--top 1")):
        with pytest.raises(ValueError, match=f"confirm_config.json was planned with {flag}") as err:
            C.plan_confirmation(study, 3, log=quiet, **kw)
        assert "\n" not in str(err.value)
    for kw in (dict(folds=0), dict(sesoi=0.0), dict(sesoi=1.5)):
        with pytest.raises(ValueError, match="--folds|--sesoi"):
            C.plan_confirmation(study, 3, log=quiet, **kw)


def test_a_fold_count_the_data_cannot_hold_is_refused_before_planning(tmp_path):
    study = make_study(tmp_path / "s", history=False, **GRID)
    grid = G.load_study_grid(study)
    grid.fixed.update(synthetic_slices=12, synthetic_size=64, val_fraction=0.25)
    grid.save(StudyPaths(study).grid_config)
    with pytest.raises(ValueError) as err:
        C.plan_confirmation(study, 1, folds=5, log=quiet)
    assert str(err.value) == ("--folds 5: the built-in synthetic data: 12 slices cannot hold 5 folds whose blocks "
                              "(3 val slices) do not overlap; at most 4 fit (fewer folds, or a smaller fraction)")
    assert not StudyPaths(study).confirm_config.exists()
    assert len(C.plan_confirmation(study, 1, folds=4, log=quiet)["cells"]) == 8
    # data without testing.tif: the whole stack (test block included) is what the folds share
    from tests.fixtures_data import write_synthetic_dataset
    data = write_synthetic_dataset(tmp_path / "data", n_slices=16, height=64, width=64, with_test=False)
    study = make_study(tmp_path / "real", history=False, **GRID)
    grid = G.load_study_grid(study)
    grid.fixed.update(data_dir=str(data), test_fraction=0.25, val_fraction=0.2)
    grid.save(StudyPaths(study).grid_config)
    with pytest.raises(ValueError, match=f"--folds 5: {data}: 16 slices cannot hold 5 folds whose blocks \\(4 test "
                                         "and 2 val slices\\) do not overlap; at most 4 fit"):
        C.plan_confirmation(study, 1, folds=5, log=quiet)


def test_a_version_1_plan_reads_as_one_fold_and_sesoi_0_01(tmp_path):
    study = _study(tmp_path)
    add_confirmation(study, 2, val_fn=lambda c: 0.8, test_fn=lambda c: 0.8)
    path = StudyPaths(study).confirm_config
    plan = json.loads(path.read_text())
    for key in ("folds", "sesoi"):
        plan.pop(key)
    for cell in plan["cells"]:
        cell.pop("fold")
    path.write_text(json.dumps(dict(plan, plan_version=1)))
    loaded = G.load_confirm_plan(study)
    assert (loaded["folds"], loaded["sesoi"]) == (1, 0.01)
    assert [c.fold for c in G.confirm_cells(study)] == [0] * 4 and G.confirm_cells(study)[0].name.endswith("_seed2")
    df, _ = build_summary(study)
    assert (df["fold"] == 0).all() and (df["status"] == "ok").all()
    with pytest.raises(ValueError, match="planned with --folds 1, not 2"):
        C.plan_confirmation(study, 2, folds=2, log=quiet)
    path.write_text(json.dumps(dict(plan, folds=0)))
    with pytest.raises(ValueError, match="folds must be an integer >= 1"):
        G.load_confirm_plan(study)


def test_a_finished_fold_cell_is_skipped_only_with_its_own_fold(tmp_path):
    study = _study(tmp_path)
    C.plan_confirmation(study, 1, folds=2, log=quiet)
    grid = G.load_study_grid(study)
    cell = G.confirm_cells(study)[1]
    paths = StudyPaths(study).exp(cell.name)
    paths.exp_dir.mkdir()
    record = dict(record_for(cell, iou=0.8), config=dict(cell.train_config(grid).to_dict(), fold=0))
    save_results(paths.results_json, record)
    with pytest.raises(ValueError, match=f"finished cell {cell.name} was trained with other settings .*fold 0 -> 1"):
        check_study(study, grid)
    save_results(paths.results_json, dict(record, config=cell.train_config(grid).to_dict()))
    check_study(study, grid)


def test_confirm_cli_submits_every_fold_cell(tmp_path):
    study = _study(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "run_study.py"), *args], capture_output=True, text=True,
                              cwd=str(ROOT), env=env, timeout=300)
    for bad, word in (("--folds", "0"), ("--sesoi", "1.5")):
        r = run("confirm", "--study-dir", str(study), "--seeds", "2", bad, word, "--scheduler", "slurm", "--dry-run")
        assert r.returncode == 2 and "error:" in r.stdout + r.stderr and bad in r.stdout + r.stderr
    r = run("confirm", "--study-dir", str(study), "--seeds", "2", "--folds", "3", "--sesoi", "0.02",
            "--scheduler", "slurm", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--array=4-15" in next(ln for ln in r.stdout.splitlines() if ln.startswith("array job ("))
    assert "x 3 folds of the data split = 12 cells" in r.stdout
    r = run("local", "--study-dir", str(study), "--confirm-folds", "2")
    assert r.returncode == 2 and "--confirm-folds needs --confirm-seeds" in r.stderr


# --- per-slice counts and results schema 3 --------------------------------------------------------------
class Threshold:
    def predict(self, x, batch_size=8, verbose=0):
        return np.asarray(x[..., :1], np.float32)


def test_slice_counts_agree_with_the_recorded_iou():
    rng = np.random.default_rng(1)
    images = rng.random((4, 40, 40), dtype=np.float32)
    masks = (rng.random((4, 40, 40)) > 0.6).astype(np.uint8)
    masks[2], images[2] = 0, 0.1        # nothing to find, nothing found: IoU 1 by the metrics' rule
    masks[3] = 0                        # nothing to find, something found: IoU 0
    res = inference.evaluate_volume(Threshold(), images, masks, inference.Tiling(16))
    for s, m, im in zip(res["slices"], masks, images):
        assert all(type(s[k]) is int for k in ("tp", "fp", "fn"))
        assert (s["tp"], s["fp"], s["fn"]) == metrics.confusion_counts(m, im, 0.5)
        union = s["tp"] + s["fp"] + s["fn"]
        assert s["iou"] == (s["tp"] / union if union else 1.0) == pytest.approx(metrics.foreground_iou(m, im))
    assert res["slices"][2]["iou"] == 1.0 and res["slices"][2]["tp"] + res["slices"][2]["fp"] == 0
    assert res["slices"][3]["iou"] == 0.0 and res["slices"][3]["fp"] > 0
    tp, fp, fn = (sum(s[k] for s in res["slices"]) for k in ("tp", "fp", "fn"))
    assert tp / (tp + fp + fn) == pytest.approx(res["iou"])     # pooled over slices = the headline test IoU
    assert sum(s["tp"] + s["fn"] for s in res["slices"]) == int(masks.sum())


def _record(slices, version=3):
    return empty_record(schema_version=version, experiment_id="x", status="ok", architecture="UNet", learning_rate=1e-3,
                        batch_size=8, seed=1, started_at="t", finished_at="t", test={"iou": 0.5, "slices": slices})


def test_results_schema_3_needs_the_counts_and_versions_1_and_2_still_load(tmp_path):
    path = tmp_path / "r.json"
    counted = [{"name": "a", "iou": 0.5, "dice": 2 / 3, "tp": 5, "fp": 3, "fn": 2}]
    save_results(path, _record(counted))
    assert load_results(path)["schema_version"] == 3
    for bad in ({"tp": 5, "fp": 3}, {"tp": 5, "fp": -1, "fn": 2}, {"tp": 5.0, "fp": 3, "fn": 2},
                {"tp": True, "fp": 3, "fn": 2}):
        with pytest.raises(ResultsError, match=r"test.slices\[0\] must have tp, fp and fn"):
            save_results(path, _record([{"name": "a", "iou": 0.5, "dice": 2 / 3, **bad}]))
    with pytest.raises(ResultsError, match="config.fold must be an integer >= 0, got '1'"):
        save_results(path, dict(_record(counted), config={"fold": "1"}))
    path.write_text(json.dumps(_record([{"name": "a", "iou": 0.5, "dice": 2 / 3}], version=2)))
    assert load_results(path)["schema_version"] == 2
    old = _record(None, version=1)
    old["test"] = {"iou": 0.5}
    path.write_text(json.dumps(old))
    assert load_results(path)["schema_version"] == 1


# --- the summary ----------------------------------------------------------------------------------------
def test_summary_has_the_fold_and_the_slice_counts(tmp_path):
    study = _study(tmp_path)
    add_confirmation(study, 1, val_fn=lambda c: 0.8, test_fn=lambda c: 0.8)
    plan_path = StudyPaths(study).confirm_config
    df, _ = build_summary(study)
    assert df.columns[-3:].tolist() == ["fold", "test_slice_counts", "threshold"] and (df["fold"] == 0).all()
    counts = json.loads(df["test_slice_counts"].iloc[0])
    iou = json.loads(df["test_slice_iou"].iloc[0])
    assert [c[0] for c in counts] == list(iou)
    assert all(tp / (tp + fp + fn) == pytest.approx(iou[name], abs=1e-12) for name, tp, fp, fn in counts)
    out = normalize_summary(df, "s")
    assert out["fold"].dtype.kind == "i" and isinstance(out["test_slice_counts"].iloc[0], str)
    # a hand-made CSV: without the column every row is fold 0; empty cells too; a fold is an integer >= 0
    hand = pd.DataFrame({"architecture": ["UNet"] * 3, "learning_rate": [1e-3] * 3, "batch_size": [8] * 3,
                         "test_iou": [0.8, 0.7, 0.6]})
    assert normalize_summary(hand)["fold"].tolist() == [0, 0, 0]
    assert normalize_summary(hand.assign(fold=[1, None, "2"]))["fold"].tolist() == [1, 0, 2]
    assert normalize_summary(hand.assign(fold=["1", "", "2.0"]))["fold"].tolist() == [1, 0, 2]
    for bad in ([1, -1, 0], [0.5, 0, 0], ["a", 0, 0]):
        with pytest.raises(SummaryError, match="column fold holds"):
            normalize_summary(hand.assign(fold=bad), "hand.csv")
    assert plan_path.exists()


def test_a_fold_cells_row_carries_its_fold(tmp_path):
    study = _study(tmp_path)
    C.plan_confirmation(study, 1, folds=2, log=quiet)
    df, _ = build_summary(study)
    confirm = df[df["stage"] == "confirm"]
    assert confirm["fold"].tolist() == [0, 1, 0, 1] and (confirm["status"] == "missing").all()
    cell = G.confirm_cells(study)[1]
    paths = StudyPaths(study).exp(cell.name)
    paths.exp_dir.mkdir()
    save_results(paths.results_json, dict(record_for(cell, iou=0.8), config=cell.train_config(G.GridConfig()).to_dict()))
    df, _ = build_summary(study)
    row = df[df["experiment_id"] == cell.name].iloc[0]
    assert row["fold"] == 1 and row["status"] == "ok"


# --- one tiny real run ----------------------------------------------------------------------------------
@pytest.mark.oldest
def test_train_one_fold_1_of_2_records_its_split_and_counts(tmp_path):
    from tests.fixtures_data import write_synthetic_dataset
    data = write_synthetic_dataset(tmp_path / "data", n_slices=16, height=64, width=64, with_test=False)
    args = ["--arch", "UNet", "--lr", "1e-3", "--batch-size", "4", "--seed", "5", "--epochs", "1", "--patch-size", "32",
            "--base-filters", "4", "--depth", "3", "--data-dir", str(data), "--test-fraction", "0.25",
            "--val-fraction", "0.2", "--fold", "1", "--n-folds", "2", "--out-dir", str(tmp_path / "runs")]
    proc = subprocess.run([sys.executable, str(ROOT / "train_one.py"), *args], capture_output=True, text=True,
                          cwd=str(ROOT), env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tmp_path / "runs" / "exp_UNet_lr0.001_bs4_seed5_fold1"
    record = load_results(exp / f"{exp.name}_results.json")
    assert record["schema_version"] == 3 and (record["config"]["fold"], record["config"]["n_folds"]) == (1, 2)
    split = record["data"]
    assert (split["fold"], split["n_folds"]) == (1, 2)
    # 16 slices: fold 0 tests on 0..3 and validates on 14..15; fold 1 moves both by 8 slices
    assert split["test_slice_names"] == [f"training.tif[z={z}]" for z in range(8, 12)]
    assert split["val_slice_names"] == ["training.tif[z=6]", "training.tif[z=7]"]
    assert len(split["train_slices"]) == 10
    for s in record["test"]["slices"]:
        union = s["tp"] + s["fp"] + s["fn"]
        assert s["iou"] == (s["tp"] / union if union else 1.0)
    assert "data (fold 1 of 2)" in (exp / "training_log.txt").read_text()
