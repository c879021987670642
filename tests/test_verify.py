"""Setup verification: PASS/WARN/FAIL rows, exit codes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mitoseg import grid as G
from mitoseg import verify as V
from mitoseg.data import write_synthetic_dataset

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
    tifffile.imwrite(folder / "training.tif", images)
    tifffile.imwrite(folder / "training_groundtruth.tif", masks)
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
    assert by_check(V.check_dataset(dict(TINY, data_dir=str(tmp_path / "empty"))))["dataset"].status == V.FAIL
    masks = np.zeros((4, 64, 64), np.uint8)
    masks[:, :50, :] = 1                # 78 % foreground
    data = _write_stack(tmp_path / "fg", masks)
    assert by_check(V.check_dataset(dict(TINY, data_dir=str(data))))["foreground fraction"].status == V.WARN
    small = dict(TINY, data_dir=str(data), patch_size=128)
    assert by_check(V.check_dataset(small))["patches"].status == V.FAIL


def test_mismatched_array_range_fails(tmp_path):
    pbs, slurm = scripts(tmp_path, pbs_range="0-35", slurm_range="0-3")
    got = by_check(V.check_array_ranges(grid_for(), pbs, slurm))
    assert got["array range (pbs.sh)"].status == V.FAIL and "grid has 2 cells" in got["array range (pbs.sh)"].detail
    assert got["array range (slurm.sh)"].status == V.FAIL
    pbs.write_text("#!/bin/bash\ncd .\n")
    assert by_check(V.check_array_ranges(grid_for(), pbs, None))["array range (pbs.sh)"].status == V.FAIL
    # the real scripts against the default grid
    default = by_check(V.check_array_ranges(G.default_grid(), REPO / "pbs_hyperparameter_optimization.sh",
                                            REPO / "slurm_hyperparameter_optimization.sh"))
    assert {r.status for r in default.values()} == {V.PASS}


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


def test_environment_probe_imports_packages_and_reports_cpu(tmp_path):
    rows, params = V.check_environment(dict(TINY), environ={})
    got = by_check(rows)
    assert got["training environment"].status == V.PASS
    for mod in ("tensorflow", "keras", "numpy", "tifffile", "focal_loss"):
        assert got[f"import {mod}"].status == V.PASS and got[f"import {mod}"].detail[0].isdigit()
    assert got["GPU"].status in (V.PASS, V.WARN)   # WARN on this CPU-only machine
    assert set(params) == {"UNet", "Attention_UNet", "Attention_ResUNet"} and all(v > 0 for v in params.values())



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
