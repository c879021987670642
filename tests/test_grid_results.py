"""The grid (index <-> cell, names, scheduler variables) and the results JSON save/load pair."""
import json

import pytest

from mitoseg.study import submit as S
from mitoseg.core import grid as G
from mitoseg.core import results as R


def test_default_grid_is_36_cells_in_a_fixed_order():
    grid = G.default_grid()
    cells = G.cells(grid)
    assert grid.size == len(cells) == 36
    assert [c.index for c in cells] == list(range(36))
    assert cells[0].name == "exp_00_UNet_lr0.0001_bs8"
    assert cells[4].name == "exp_04_UNet_lr0.0005_bs16"
    assert cells[35].name == "exp_35_Attention_ResUNet_lr0.005_bs32"
    assert len({c.name for c in cells}) == 36


def test_seeds_multiply_the_grid_and_appear_in_names():
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8], seeds=[1, 2, 3])
    assert [c.name for c in G.cells(grid)] == ["exp_00_UNet_lr0.001_bs8_seed1", "exp_01_UNet_lr0.001_bs8_seed2",
                                               "exp_02_UNet_lr0.001_bs8_seed3"]


def test_cell_at_rejects_out_of_range(tmp_path):   # a study folder without a confirmation stage
    with pytest.raises(ValueError, match="outside the grid"):
        G.study_cell_at(tmp_path, G.default_grid(), 36)
    with pytest.raises(ValueError, match="outside the grid"):
        G.study_cell_at(tmp_path, G.default_grid(), -1)


@pytest.mark.parametrize("var", ["PBS_ARRAY_INDEX", "PBS_ARRAYID", "SLURM_ARRAY_TASK_ID"])
def test_index_from_each_scheduler(var):
    assert S.task_index_from_env({var: "7"}) == 7
    assert S.task_index_from_env({}) is None
    with pytest.raises(ValueError, match=var):
        S.task_index_from_env({var: "x"})


def test_cell_config_carries_fixed_settings():
    grid = G.demo_grid()
    config = G.cells(grid)[1].train_config(grid)
    assert config.epochs == grid.fixed["epochs"] and config.task_index == 1
    config.validate()


def test_grid_validation():
    with pytest.raises(ValueError, match="unknown architecture"):
        G.GridConfig(architectures=["VGG"])
    with pytest.raises(ValueError, match="unknown config keys"):
        G.GridConfig(fixed={"epoch": 3})
    with pytest.raises(ValueError, match="grid axes"):
        G.GridConfig(fixed={"learning_rate": 3})


def test_init_study_keeps_the_first_grid(tmp_path):
    study = tmp_path / "s"
    first = G.init_study(study, G.demo_grid())
    again = G.init_study(study, G.default_grid())
    assert again.to_dict() == first.to_dict()
    assert G.load_study_grid(study).size == first.size


def test_grid_listing_shows_every_cell(capsys):
    """run_study.py list prints the grid (list_grid; `python -m mitoseg.core.grid`, its duplicate, is gone)."""
    assert G.list_grid(size_only=True) == 0
    assert capsys.readouterr().out.strip() == "36"
    assert G.list_grid() == 0
    out = capsys.readouterr().out
    assert "exp_35_Attention_ResUNet_lr0.005_bs32" in out


def _record(**kw):
    return R.empty_record(experiment_id="exp_00_UNet_lr0.001_bs8", status="ok", architecture="UNet",
                          learning_rate=1e-3, batch_size=8, seed=42, started_at="t", finished_at="t", **kw)


def test_results_round_trip_and_nan_becomes_null(tmp_path):
    path = tmp_path / "r.json"
    R.save_results(path, _record(best_val_iou=0.8, final_val_loss=float("nan")))
    loaded = R.load_results(path)
    assert loaded["best_val_iou"] == 0.8 and loaded["final_val_loss"] is None
    assert set(R.FIELD_NAMES) <= set(loaded)


@pytest.mark.parametrize("mangle, message", [
    (lambda r: r.update(schema_version=0), "schema_version"),
    (lambda r: r.pop("best_val_iou"), "missing fields best_val_iou"),
    (lambda r: r.update(status="great"), "status"),
    (lambda r: r.update(batch_size="8"), "batch_size"),
    (lambda r: r.update(degenerate="no"), "degenerate"),
])
def test_load_rejects_foreign_or_edited_files(tmp_path, mangle, message):
    record = _record()
    mangle(record)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record))
    with pytest.raises(R.ResultsError, match=message):
        R.load_results(path)


def test_load_rejects_truncated_json(tmp_path):
    path = tmp_path / "r.json"
    R.save_results(path, _record())
    path.write_text(path.read_text()[:100])
    with pytest.raises(R.ResultsError, match="not valid JSON"):
        R.load_results(path)


def test_save_refuses_invalid_record(tmp_path):
    with pytest.raises(R.ResultsError):
        R.save_results(tmp_path / "r.json", {"schema_version": 1})
    assert not (tmp_path / "r.json").exists()


def test_a_config_recorded_with_the_retired_extra_key_still_matches_its_cell():
    # results JSONs written before TrainConfig.extra was removed hold "extra": {}
    from mitoseg.core.config import TrainConfig
    from mitoseg.core.identity import config_differences
    current = G.cells(G.default_grid())[0].train_config(G.default_grid()).to_dict()
    assert config_differences({**current, "extra": {}}, current) == []
    assert config_differences({**current, "epochs": 2}, current) == [f"epochs 2 -> {current['epochs']}"]
    with pytest.raises(ValueError, match="unknown config keys: extra"):
        TrainConfig.from_dict({"extra": {"meant": "something"}})


@pytest.mark.parametrize("axis, value, want", [
    ("learning_rates", 0, "a finite number > 0"), ("learning_rates", float("inf"), "a finite number > 0"),
    ("batch_sizes", 0, "an integer > 0"), ("batch_sizes", 2.0, "an integer > 0"),
    ("seeds", 2 ** 32, "an integer in 0 .. 2**32-1"), ("seeds", True, "an integer in 0 .. 2**32-1")])
def test_grid_axes_follow_the_settings_range_table(axis, value, want):
    """One range table (config._RANGES): a grid axis refuses exactly what TrainConfig refuses, in its words."""
    from mitoseg.core.config import TrainConfig
    assert f"{axis}[0] must be {want}, got {value!r}" in G.grid_problems({axis: [value]})
    field = {"learning_rates": "learning_rate", "batch_sizes": "batch_size", "seeds": "seed"}[axis]
    assert TrainConfig(**{field: value}).problems()


def test_unknown_grid_keys_one_message_however_read():
    """from_dict and grid_problems (the pre-flight's rows) name an unknown key in the same words, and list
    every other problem of the file beside it."""
    with pytest.raises(G.GridError) as err:
        G.GridConfig.from_dict({"seed": [1], "seeds": [-1]})
    assert err.value.problems == G.grid_problems({"seed": [1], "seeds": [-1]})
    assert len(err.value.problems) == 2 and err.value.problems[0].startswith("unknown grid key 'seed'")
