"""train_one.py end to end: a real (tiny) training run, its files and JSON, skip-if-done, bad input."""
import csv
import re
from pathlib import Path

import numpy as np
import pytest

from mitoseg.core.scores import degenerate_reason
from mitoseg.core.results import load_results
from mitoseg.core.version import version_info
from tests.fixtures_train import TINY_CELL_ARGS, TINY_CELL_NAME, TINY_TRAIN_ARGS as TINY, run_train_one as run

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "lucchi_pp_subset"


def test_smoke_run_writes_every_file(tiny_cell):
    proc, exp = tiny_cell.proc, tiny_cell.exp
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    name = exp.name
    for f in ["training_log.txt", f"{name}_history.csv", f"{name}_model.keras", f"{name}_results.json"]:
        assert (exp / f).is_file(), f
    assert not (exp / "backup").exists()   # finished cells drop their resume state
    record = load_results(exp / f"{name}_results.json")
    assert all((exp / file).is_file() for file in record["files"].values()), record["files"]
    assert record["status"] == "ok" and record["error"] is None
    assert record["architecture"] == "Attention_UNet" and record["batch_size"] == 4 and record["seed"] == 3
    assert record["epochs_run"] == 2 and record["best_epoch"] in (1, 2)
    assert 0 <= record["best_val_iou"] <= 1 and 0 <= record["best_val_jaccard"] <= 1
    assert 0 < record["all_foreground_jaccard"] == pytest.approx(record["foreground_fraction"])
    assert record["overfitting_gap"] == pytest.approx(record["final_val_loss"] - record["final_train_loss"])
    with open(exp / f"{name}_history.csv") as f:
        val_losses = [float(row["val_loss"]) for row in csv.DictReader(f)]
    assert record["val_loss_stability"] == pytest.approx(np.std(val_losses[-10:], ddof=1))
    reason = degenerate_reason(record["best_val_iou"], record["all_foreground_jaccard"],
                               record["val_predicted_foreground_fraction"])
    assert record["degenerate"] == (reason is not None) and record["degenerate_reason"] == reason
    assert record["config"]["bn_momentum"] == 0.9 and record["config"]["head"] == "plain"
    assert record["config"]["attention_gate"] == "original"
    assert record["config"]["mixed_precision"] is False and record["config"]["jit_compile"] is False   # defaults
    split = record["data"]
    assert not set(split["train_slices"]) & set(split["val_slices"])
    assert split["val_slices"] == list(range(split["val_slices"][0], split["val_slices"][-1] + 1))
    assert record["environment"]["packages"]["tensorflow"] and record["environment"]["device"] == "CPU"
    code = record["environment"]["code"]   # the code that produced it (the checkout may change meanwhile)
    assert code["version"] == version_info()["version"] and re.fullmatch(r"[0-9a-f]{40}", code["git_commit"])
    assert isinstance(code["git_dirty"], bool)
    assert record["test"]["n_slices"] > 0 and 0 <= record["test"]["iou"] <= 1
    history = (exp / f"{name}_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,jaccard,iou,val_loss,val_jaccard,val_iou")
    assert len(history) == 3
    log = (exp / "training_log.txt").read_text()
    assert "epoch   2/2" in log and "all-foreground" in log
    after_header = log.split(" ===\n", 1)[1].splitlines()
    assert after_header and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S", ln) for ln in after_header), after_header


def test_saved_model_reloads_and_predicts(tiny_cell):
    import models
    exp = tiny_cell.exp
    model = models.load_model(exp / f"{exp.name}_model.keras")
    assert model.predict(np.zeros((1, 32, 32, 1), "float32"), verbose=0).shape == (1, 32, 32, 1)


def test_second_run_is_skipped(tiny_cell):
    exp = tiny_cell.exp
    before = (exp / f"{exp.name}_results.json").read_text()
    proc = run([*TINY_CELL_ARGS, "--out-dir", str(tiny_cell.out)])   # skipped: writes nothing
    assert proc.returncode == 0
    assert "already finished" in proc.stdout
    assert (exp / f"{exp.name}_results.json").read_text() == before


@pytest.mark.parametrize("args, message", [
    (["--arch", "VGG"], "invalid choice"),
    (["--lr", "abc"], "not a number"),
    (["--lr", "-1"], "positive"),
    (["--batch-size", "0"], "positive integer"),
    (["--data-dir", "/nonexistent/data"], "/nonexistent/data"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, args, message):
    proc = run([*args, "--out-dir", str(tmp_path / "runs"), *TINY])
    assert proc.returncode == 2
    errors = [l for l in (proc.stdout + proc.stderr).splitlines() if "error" in l.lower()]
    assert errors and message in errors[-1]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_grid_mode_uses_the_array_variable(tmp_path):
    from mitoseg.core import grid as G
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[4, 8],
                        fixed=dict(epochs=1, patch_size=32, base_filters=4, depth=3,
                                   synthetic_slices=10, synthetic_size=64))
    study = tmp_path / "study"
    G.init_study(study, grid)
    proc = run(["--study-dir", str(study)], env={"SLURM_ARRAY_TASK_ID": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = load_results(study / "exp_01_UNet_lr0.001_bs8" / "exp_01_UNet_lr0.001_bs8_results.json")
    assert record["task_index"] == 1 and record["batch_size"] == 8 and record["epochs_run"] == 1
    bad = run(["--study-dir", str(study), "--task-index", "5"])
    assert bad.returncode == 2 and "outside the grid" in bad.stderr


def test_real_subset_trains_one_epoch(tmp_path):
    if not REAL_DATA.is_dir():
        pytest.skip(f"real EM subset not found at {REAL_DATA}")
    proc = run(["--data-dir", str(REAL_DATA), "--arch", "UNet", "--lr", "1e-3", "--batch-size", "16",
                "--epochs", "1", "--patch-size", "128", "--base-filters", "4", "--depth", "3",
                "--out-dir", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = load_results(next(tmp_path.glob("exp_*/*_results.json")))
    assert record["data"]["n_slices"] == 33
    # The real foreground fraction (7.1 %) is the all-foreground baseline printed beside every score.
    assert 0.04 < record["all_foreground_jaccard"] < 0.12
    assert record["test"] is None      # the subset has no testing.tif


def _run_fingerprint(out: Path):
    exp = out / TINY_CELL_NAME
    record = load_results(exp / f"{exp.name}_results.json")
    assert record["config"]["deterministic"] is True
    history = (exp / f"{exp.name}_history.csv").read_text().splitlines()
    without_time = [",".join(line.split(",")[:-1]) for line in history]   # time_s is the last column
    return without_time, record["test"], record["best_val_iou"]


def test_deterministic_flag_gives_identical_runs(tiny_cell, tmp_path):
    """--deterministic (TensorFlow op determinism) is recorded, and a second run of the same cell and
    seed (in another process) produces the same history and the same held-out scores, bit for bit."""
    proc = run([*TINY_CELL_ARGS, "--out-dir", str(tmp_path)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert _run_fingerprint(tiny_cell.out) == _run_fingerprint(tmp_path)


@pytest.fixture(scope="module")
def gpu_options_run(tmp_path_factory):
    """One run with both GPU options (one process: jit-compiling costs most of a run)."""
    out = tmp_path_factory.mktemp("gpu_options")
    proc = run(["--mixed-precision", "--jit-compile", "--batch-size", "4", "--out-dir", str(out), *TINY])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = out / "exp_UNet_lr0.001_bs4_seed42"
    return exp, load_results(exp / f"{exp.name}_results.json")


@pytest.mark.parametrize("field", ["mixed_precision", "jit_compile"])
def test_gpu_options_run_on_cpu_and_are_recorded(gpu_options_run, field):
    """The cluster's GPU options still train (slowly) on a CPU and are saved in the results JSON
    (their default False is checked in the smoke run)."""
    _, record = gpu_options_run
    assert record["status"] == "ok" and record["config"][field] is True


def test_mixed_precision_model_still_outputs_float32(gpu_options_run):
    import models
    exp, _ = gpu_options_run
    probs = models.load_model(exp / f"{exp.name}_model.keras").predict(np.zeros((1, 32, 32, 1), "float32"), verbose=0)
    assert probs.dtype == np.float32


def test_hdf5_save_format_writes_an_hdf5_model_that_reloads(tmp_path):
    import h5py
    import models
    proc = run(["--save-format", "hdf5", "--batch-size", "4", "--out-dir", str(tmp_path), *TINY])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = tmp_path / "exp_UNet_lr0.001_bs4_seed42"
    record = load_results(exp / f"{exp.name}_results.json")
    assert record["status"] == "ok" and record["config"]["save_format"] == "hdf5"
    model_path = exp / record["files"]["model"]
    assert model_path.name == f"{exp.name}_model.hdf5" and h5py.is_hdf5(model_path)
    assert not list(exp.glob("*.keras"))
    probs = models.load_model(model_path).predict(np.zeros((1, 32, 32, 1), "float32"), verbose=0)
    assert probs.shape == (1, 32, 32, 1) and np.all((probs >= 0) & (probs <= 1))
    before = (exp / f"{exp.name}_results.json").read_text()
    again = run(["--save-format", "hdf5", "--batch-size", "4", "--out-dir", str(tmp_path), *TINY])
    assert again.returncode == 0 and "already finished" in again.stdout   # the hdf5 model counts as done
    assert (exp / f"{exp.name}_results.json").read_text() == before
