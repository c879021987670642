"""Setup verification: PASS/WARN/FAIL rows, exit codes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mitoseg.core import grid as G
from mitoseg.study import verify as V
from tests.fixtures_data import write_synthetic_dataset

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)

REPO = Path(__file__).resolve().parent.parent
TINY = dict(epochs=1, patch_size=32, base_filters=4, depth=3)


def grid_for(data_dir=None, **kw) -> G.GridConfig:
    return G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8, 16],
                        fixed=dict(TINY, data_dir=str(data_dir) if data_dir else None, **kw))


def scripts(tmp_path, pbs_range="0-1", slurm_range="0-1"):
    pbs = tmp_path / "pbs.sh"
    pbs.write_text(f"#!/bin/bash\n#PBS -N x\n#PBS -J {pbs_range}\ncd .\n")
    slurm = tmp_path / "slurm.sh"
    slurm.write_text(f"#!/bin/bash\n#SBATCH --array={slurm_range}\ncd .\n")
    return pbs, slurm


def by_check(rows):
    return {r.check: r for r in rows}


@pytest.fixture(scope="module")
def good_data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data"), n_slices=6, height=96, width=96)


def test_good_synthetic_dataset_passes(tmp_path, good_data):
    pbs, slurm = scripts(tmp_path)
    rows = V.run_checks(grid_for(good_data), tmp_path / "out", pbs, slurm, environ={}, env_probe=False)
    got = by_check(rows)
    for name in ("dataset files", "image/mask shapes", "masks binary", "foreground fraction", "patches",
                 "output folder", "array range (pbs.sh)", "array range (slurm.sh)"):
        assert got[name].status == V.PASS, (name, got[name].detail)
    assert "6 slices of 96x96" in got["image/mask shapes"].detail
    # 6 slices, val fraction 0.1 -> 5 train + 1 val slice, 3x3 patches of 32 each
    assert got["patches"].detail.startswith("45 train + 9 val patches of 32x32")
    assert got["container image"].status == V.WARN  # no TF_CONTAINER
    assert not any(r.status == V.FAIL for r in rows)
    assert "0 FAIL" in V.format_table(rows)


def _write_stack(folder: Path, masks: np.ndarray):
    import tifffile
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 255, masks.shape, dtype=np.uint8)
    # 4 slices: minisblack, else tifffile declares the 4 planes RGBA (refused as ambiguous: tests/test_image_files.py)
    tifffile.imwrite(folder / "training.tif", images, photometric="minisblack")
    tifffile.imwrite(folder / "training_groundtruth.tif", masks, photometric="minisblack")
    return folder


def test_bad_mask_values_fail_and_exit_non_zero(tmp_path):
    masks = np.zeros((4, 64, 64), np.uint8)
    masks[:, 10:30, 10:30] = 255
    masks[:, 40:50, 40:50] = 3          # not binary
    data = _write_stack(tmp_path / "bad", masks)
    rows = V.run_checks(grid_for(data), tmp_path, env_probe=False, environ={})
    row = by_check(rows)["dataset"]
    assert row.status == V.FAIL and "training_groundtruth.tif" in row.detail
    r = subprocess.run([sys.executable, str(REPO / "run_study.py"), "verify", "--skip-env-probe", "--data-dir", str(data),
                        "--output-root", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^dataset\s+FAIL", r.stdout, re.M) and "FAIL: fix the FAIL rows" in r.stdout


def test_missing_files_and_implausible_foreground(tmp_path):
    (tmp_path / "empty").mkdir()
    assert by_check(V.check_dataset(grid_for(tmp_path / "empty")))["dataset"].status == V.FAIL
    masks = np.zeros((4, 64, 64), np.uint8)
    masks[:, :50, :] = 1                # 78 % foreground
    data = _write_stack(tmp_path / "fg", masks)
    assert by_check(V.check_dataset(grid_for(data)))["foreground fraction"].status == V.WARN
    small = grid_for(data, patch_size=128)
    assert by_check(V.check_dataset(small))["patches"].status == V.FAIL


def test_an_array_range_that_submit_sets_is_a_note_not_a_fail(tmp_path):
    pbs, slurm = scripts(tmp_path, pbs_range="0-35", slurm_range="0-3")
    got = by_check(V.check_array_ranges(grid_for(), pbs, slurm))
    assert got["array range (pbs.sh)"].status == V.PASS
    assert "submit sets the range 0-1 itself" in got["array range (pbs.sh)"].detail
    assert "#PBS -J 0-35 is used only by a plain qsub" in got["array range (pbs.sh)"].detail
    assert got["array range (slurm.sh)"].status == V.PASS and "plain sbatch" in got["array range (slurm.sh)"].detail
    pbs.write_text("#!/bin/bash\ncd .\n")
    assert "no '#PBS -J 0-N' line" in by_check(V.check_array_ranges(grid_for(), pbs, None))["array range (pbs.sh)"].detail
    # the real scripts against the default grid
    default = by_check(V.check_array_ranges(G.default_grid(), REPO / "pbs_hyperparameter_optimization.sh",
                                            REPO / "slurm_hyperparameter_optimization.sh"))
    assert {r.status for r in default.values()} == {V.PASS}
    assert all(" = 36 cells" in r.detail for r in default.values())


def test_container_rows(tmp_path):
    assert V.check_container({"TF_CONTAINER": str(tmp_path / "nope.sif")})[0].status == V.FAIL
    assert V.check_container({})[0].status == V.WARN


def test_disk_estimate(tmp_path, monkeypatch):
    grid = grid_for()
    params = {"UNet": 1_000_000}
    assert by_check(V.check_output(tmp_path, grid, params))["free disk"].status == V.PASS
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    row = by_check(V.check_output(tmp_path, grid, params))["free disk"]
    assert row.status == V.FAIL and "needs" in row.detail


def test_trial_trains_saves_and_predicts_every_architecture_of_the_study(tmp_path, good_data):
    grid = G.GridConfig(architectures=["UNet", "Attention_ResUNet"], learning_rates=[1e-3], batch_sizes=[4, 8],
                        fixed=dict(TINY, data_dir=str(good_data)))
    pbs, slurm = scripts(tmp_path, pbs_range="0-3", slurm_range="0-3")
    rows = V.run_checks(grid, tmp_path / "out", pbs, slurm, environ={})
    got = by_check(rows)
    assert got["training environment"].status == V.PASS
    for mod in ("tensorflow", "keras", "numpy", "tifffile", "focal_loss", "statsmodels"):
        assert got[f"import {mod}"].status == V.PASS and got[f"import {mod}"].detail[0].isdigit()
    assert got["GPU"].status in (V.PASS, V.WARN)   # WARN on this CPU-only machine
    for arch in grid.architectures:
        detail = got[f"trial {arch}"].detail
        assert got[f"trial {arch}"].status == V.PASS, detail
        assert re.search(r"s/step at batch 8, [\d.]+ s/step at batch 4; peak RSS", detail), detail
        assert "saved, reloaded, predicted a tile" in detail
    assert "trial Attention_UNet" not in got                 # only the study's architectures
    assert got["time estimate"].status == V.PASS and "longest cell" in got["time estimate"].detail
    assert got["walltime (slurm.sh)"].status == V.WARN       # the test script has no --time line
    assert not any(r.status == V.FAIL for r in rows), V.format_table(rows)
    assert V.format_table(rows).endswith("ready to submit.")


def test_estimate_and_walltime_rules():
    trial = {"n_train_patches": 100, "n_val_patches": 10, "startup_s": 5.0, "predict_per_patch_s": 0.01,
             "step_s": {"16": 1.6, "8": 1.2}}
    # batch 16: 7 steps x 1.6 s; batch 8: 13 steps x 1.2 s; batch 12: per image halfway (0.125 s)
    assert V.estimate_cell_seconds(trial, 16, 2) == pytest.approx(5 + 2 * (7 * 1.6 + 0.1))
    assert V.estimate_cell_seconds(trial, 8, 2) == pytest.approx(5 + 2 * (13 * 1.2 + 0.1))
    assert V.estimate_cell_seconds(trial, 12, 1) == pytest.approx(5 + 9 * 12 * 0.125 + 0.1)
    assert V.parse_walltime("02:00:00") == 7200 and V.parse_walltime("1-00:30:00") == 88200
    assert V.parse_walltime("90") == 5400 and V.parse_walltime("30:00") == 1800


@pytest.mark.parametrize("longest, gpus, status, words", [
    (3 * 3600, ["GPU:0"], V.FAIL, "shorter than the longest cell"),
    (3 * 3600, [], V.WARN, "shorter than the longest cell"),        # a CPU estimate says little about a GPU job
    (5000, ["GPU:0"], V.WARN, "less than 2x margin"),
    (60, ["GPU:0"], V.WARN, "over 20x the longest cell"),
    (600, ["GPU:0"], V.PASS, "for a longest cell of 10m00s"),
])
def test_walltime_against_the_estimate(tmp_path, longest, gpus, status, words):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --array=0-1\n#SBATCH --time=02:00:00\n")
    row = by_check(V.check_walltime({0: 1.0, 1: float(longest)}, gpus, slurm_script=script))["walltime (job.sh)"]
    assert row.status == status and words in row.detail, row.detail


def test_the_shipped_job_scripts_ask_for_the_same_walltime():
    pbs = V.script_walltime(REPO / "pbs_hyperparameter_optimization.sh", "pbs")
    slurm = V.script_walltime(REPO / "slurm_hyperparameter_optimization.sh", "slurm")
    assert pbs == slurm == 2 * 3600


BROKEN_OPTIMIZER = """#!/bin/sh
# a training environment in which every optimizer step raises
exec {python} -c 'import runpy, sys, keras
def boom(self, *a, **k):
    raise RuntimeError("injected: the optimizer step is broken here")
keras.optimizers.Adam.apply = boom
module = sys.argv[2]                       # called as: python -m MODULE ARGS...
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)' "$@"
"""


def test_an_environment_whose_optimizer_step_raises_is_never_ready(tmp_path, good_data):
    """Through the container path (stand-in apptainer, tests/bin): the image's `python` is a wrapper
    whose Adam raises on every step. Every trial row must FAIL and the verdict must not be ready."""
    broken = tmp_path / "python"
    broken.write_text(BROKEN_OPTIMIZER.replace("{python}", sys.executable))
    broken.chmod(0o755)
    image = tmp_path / "tf.sif"
    image.write_text("image")
    env = {**os.environ, "PATH": f"{REPO / 'tests' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "TF_CONTAINER": str(image), "STANDIN_CONTAINER_PYTHON": str(broken), "DATA_DIR": str(good_data),
           "GRID_CONFIG": str(_grid_file(tmp_path, good_data)), "STANDIN_APPTAINER_LOG": str(tmp_path / "calls.log")}
    r = subprocess.run([sys.executable, str(REPO / "run_study.py"), "verify", "--output-root", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^trial UNet\s+FAIL\s+RuntimeError: injected: the optimizer step is broken here", r.stdout, re.M), r.stdout
    assert "ready to submit" not in r.stdout.replace("before submitting", "")
    # which Python and TensorFlow/Keras the trial ran with: the container's, and said so
    assert re.search(rf"^training environment\s+PASS\s+trained with Python \d+\.\d+\.\d+ .*TensorFlow \d.*Keras \d.*"
                     rf"container {re.escape(str(image))} \(from \$TF_CONTAINER\) via .*apptainer", r.stdout, re.M), r.stdout
    call = json.loads((tmp_path / "calls.log").read_text().splitlines()[0])
    assert call["image"] == str(image) and str(good_data.resolve()) in call["binds"]


def _grid_file(tmp_path, data) -> Path:
    path = tmp_path / "grid.json"
    G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[4],
                 fixed=dict(TINY, data_dir=str(data))).save(path)
    return path


def test_pbs_setup_verification_script_runs_the_checks(tmp_path, good_data):
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(good_data)}
    env.pop("TF_CONTAINER", None)
    r = subprocess.run(["bash", str(REPO / "pbs_setup_verification.sh"), "--skip-env-probe",
                        "--output-root", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    # default grid: 256 px patches do not fit the 96 px synthetic slices -> FAIL, exit 1
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^patches\s+FAIL", r.stdout, re.M)
    assert re.search(r"^array range \(pbs_hyperparameter_optimization.sh\)\s+PASS", r.stdout, re.M)
    env.pop("DATA_DIR")
    r = subprocess.run(["bash", str(REPO / "pbs_setup_verification.sh"), "--skip-env-probe",
                        "--output-root", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "0 FAIL" in r.stdout, r.stdout + r.stderr


def test_patch_counts_are_the_cells_own(tmp_path):
    """The pre-flight counts the patches a cell will train on: with --test-fraction and no test stack the
    held-out slices are not training patches (counted against cell_data.prepare_arrays itself)."""
    from mitoseg.cell.inputs import load_cell_data, prepare_arrays
    from mitoseg.core.config import TrainConfig
    data = write_synthetic_dataset(tmp_path / "d", n_slices=8, height=96, width=64, with_test=False)
    for test_fraction in (0.0, 0.25):
        grid = grid_for(data, test_fraction=test_fraction)
        row = by_check(V.check_dataset(grid))["patches"]
        split = prepare_arrays(load_cell_data(TrainConfig.from_dict(grid.fixed))[0],
                               TrainConfig.from_dict(grid.fixed))["split"]
        assert row.detail.startswith(f"{split['n_train_patches']} train + {split['n_val_patches']} val patches"), row
