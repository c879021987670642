"""Nothing silently wrong (issue 13): ordinary real-world files and slips must end in a correct result or in
ONE clear line (exit 2, nothing written, no input changed) - never in a wrong answer with exit 0.

Classes: images scaled by their values (not their type), multi-series TIFFs, unclear messages, paths
resolved against the user's folder, a cell's identity (settings + data), the study grid that cannot drift,
the cache fingerprint through symlinks, one runner per cell, and type/range validation at the edge.
Real `train_one.py` / `run_study.py` processes where a process is involved; bad input is caught before
TensorFlow is imported. Output safety of predict.py and its scaling: tests/test_predict.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mitoseg.study import submit as S
from mitoseg.core.errors import DataError
from mitoseg.core import paths as P
from mitoseg.data import stacks as D
from mitoseg.data.synthetic import make_synthetic_em
from mitoseg.core import grid as G

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
for _var in S.SCHEDULER_INDEX_VARIABLES:
    ENV.pop(_var, None)
TINY = ["--epochs", "1", "--patch-size", "32", "--base-filters", "4", "--depth", "3", "--batch-size", "4"]


def run(script, args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def the_error_line(proc) -> str:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines[-12:]
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_stack(folder: Path, images, masks, test=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "training.tif", images)
    tifffile.imwrite(folder / "training_groundtruth.tif", masks)
    if test is not None:
        tifffile.imwrite(folder / "testing.tif", test[0])
        tifffile.imwrite(folder / "testing_groundtruth.tif", test[1])
    return folder


@pytest.fixture(scope="module")
def em():
    return make_synthetic_em(6, 64, 64, seed=5)


# --- images scaled by their values --------------------------------------------------------------------
def test_8bit_data_in_any_container_is_the_same_input(tmp_path, em):
    images, masks = em
    loaded = {}
    for name, arr in (("uint8", images), ("uint16", images.astype(np.uint16)),
                      ("float32", images.astype(np.float32)), ("int32", images.astype(np.int32))):
        train, _ = D.load_dataset(write_stack(tmp_path / name, arr, masks))
        loaded[name] = train
        assert train.scaling["bits"] == 8 and train.scaling["divisor"] == 255
    for train in loaded.values():
        np.testing.assert_array_equal(train.images, loaded["uint8"].images)
    assert loaded["uint16"].images.max() > 0.5      # not near-black


def test_12bit_camera_data_uses_its_range(tmp_path, em):
    images, masks = em
    twelve = (images.astype(np.uint16) * 16)        # 0..4080
    train, _ = D.load_dataset(write_stack(tmp_path / "d", twelve, masks))
    assert train.scaling["bits"] == 12
    np.testing.assert_allclose(train.images, twelve / 4095, rtol=1e-6)


def test_uint8_training_beside_uint16_testing_share_one_scale(tmp_path, em):
    images, masks = em
    d = write_stack(tmp_path / "d", images, masks, test=(images.astype(np.uint16), masks))
    train, test = D.load_dataset(d)
    np.testing.assert_array_equal(test.images, train.images)


def test_dim_test_stack_of_the_same_camera_is_put_on_the_training_scale(tmp_path, em):
    images, masks = em
    twelve = images.astype(np.uint16) * 16
    dim = (images // 2).astype(np.uint16)           # max <= 127: 8-bit by its own values
    train, test = D.load_dataset(write_stack(tmp_path / "d", twelve, masks, test=(dim, masks)))
    assert test.scaling["divisor"] == train.scaling["divisor"] == 4095 and "scaled like training.tif" in test.scaling["note"]
    np.testing.assert_allclose(test.images, dim / 4095, rtol=1e-6)


def test_stacks_that_cannot_share_a_scale_are_refused(tmp_path, em):
    images, masks = em
    d = write_stack(tmp_path / "d", images, masks, test=(images.astype(np.uint16) * 16, masks))
    before = digests(d)
    out = tmp_path / "runs"
    proc = run("train_one.py", ["--data-dir", str(d), "--out-dir", str(out), *TINY])
    assert proc.returncode == 2
    line = the_error_line(proc)
    assert str(d / "testing.tif") in line and "cannot share one scale with training.tif" in line
    assert not out.exists() and digests(d) == before


def test_folder_slices_are_scaled_as_one_stack(tmp_path, em):
    images, masks = em
    twelve = images.astype(np.uint16) * 16
    twelve[2] //= 20                                # one dim slice: max < 256
    d = tmp_path / "folders"
    for sub, stack in (("images", twelve), ("masks", masks)):
        (d / sub).mkdir(parents=True)
        for z, sl in enumerate(stack):
            tifffile.imwrite(d / sub / f"s{z}.tif", sl)
    train, _ = D.load_dataset(d)
    assert train.scaling["bits"] == 12
    np.testing.assert_allclose(train.images[2], twelve[2] / 4095, rtol=1e-6)
    tifffile.imwrite(d / "images" / "s3.tif", images[3])    # one uint8 file among uint16 ones
    with pytest.raises(DataError, match="dtype uint8 differs from s0.tif"):
        D.load_dataset(d)


@pytest.mark.parametrize("values, why", [
    (np.linspace(-1, 1, 6 * 64 * 64).reshape(6, 64, 64).astype(np.float32), "negative grey values"),
    (np.linspace(0, 3.5, 6 * 64 * 64).reshape(6, 64, 64).astype(np.float32), "neither in [0, 1] nor whole grey levels"),
])
def test_float_images_outside_the_stated_rule_are_refused(tmp_path, em, values, why):
    d = write_stack(tmp_path / "d", values, em[1])
    with pytest.raises(DataError) as info:
        D.load_dataset(d)
    assert str(d / "training.tif") in str(info.value) and why in str(info.value)


def test_float_images_in_0_1_are_kept(tmp_path, em):
    images, masks = em
    floats = images.astype(np.float32) / 255
    train, _ = D.load_dataset(write_stack(tmp_path / "d", floats, masks))
    np.testing.assert_array_equal(train.images, floats)
    assert train.scaling["divisor"] == 1.0


# --- files read whole, and clear messages -------------------------------------------------------------
def test_multi_series_tiff_is_read_whole(tmp_path, em):
    images, masks = em
    d = tmp_path / "d"
    d.mkdir()
    for name, stack in (("training.tif", images), ("training_groundtruth.tif", masks)):
        tifffile.imwrite(d / name, stack[:4], photometric="minisblack")   # 4 slices, not RGBA planes
        tifffile.imwrite(d / name, stack[4:], append=True, photometric="minisblack")     # a second series
        assert len(tifffile.TiffFile(d / name).series) == 2
    train, _ = D.load_dataset(d)
    assert train.images.shape == (6, 64, 64)
    np.testing.assert_array_equal(train.masks, masks // 255)


def test_multi_series_tiff_of_other_shapes_is_refused(tmp_path, em):
    path = tmp_path / "mixed.tif"
    tifffile.imwrite(path, em[0])
    tifffile.imwrite(path, em[0][:, :32, :32], append=True)
    with pytest.raises(DataError) as info:
        D.read_tiff(path)
    assert str(path) in str(info.value) and "2 series of different slice shapes" in str(info.value)


def test_single_slice_stack_names_the_file(tmp_path, em):
    images, masks = em
    d = write_stack(tmp_path / "d", images[:1], masks[:1])
    proc = run("train_one.py", ["--data-dir", str(d), "--out-dir", str(tmp_path / "runs"), *TINY])
    assert proc.returncode == 2
    line = the_error_line(proc)
    assert str(d / "training.tif") in line and "at least 2 whole slices" in line
    assert "split_slices" not in line


def test_palette_png_mask_is_read_by_its_indices(tmp_path, em):
    from PIL import Image
    images, masks = em
    d = tmp_path / "d"
    for sub in ("images", "masks"):
        (d / sub).mkdir(parents=True)
    for z in range(len(images)):
        Image.fromarray(images[z]).save(d / "images" / f"s{z}.png")
        pal = Image.fromarray((masks[z] // 255).astype(np.uint8), mode="P")
        pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))   # index 1 drawn red
        pal.save(d / "masks" / f"s{z}.png")
    train, _ = D.load_dataset(d)
    np.testing.assert_array_equal(train.masks, masks // 255)


def test_colour_mask_is_refused_as_colour(tmp_path, em):
    images, masks = em
    d = tmp_path / "d"
    for sub in ("images", "masks"):
        (d / sub).mkdir(parents=True)
    import imageio.v3 as iio
    for z in range(len(images)):
        iio.imwrite(d / "images" / f"s{z}.png", images[z])
        rgb = np.zeros(masks[z].shape + (3,), np.uint8)
        rgb[..., 0] = masks[z]                                     # red on black
        iio.imwrite(d / "masks" / f"s{z}.png", rgb)
    with pytest.raises(DataError) as info:
        D.load_dataset(d)
    where, problem = str(info.value).split(": ", 1)
    assert where.endswith("s0.png") and problem.startswith("mask is a colour image")
    assert "85" not in problem   # no grey value of a colour-to-grey conversion (the path may hold digits)


# --- type and range validation at the edge ------------------------------------------------------------
@pytest.mark.parametrize("grid, expected", [
    ({"fixed": {"augment": "false"}}, "fixed.augment must be true or false"),
    ({"fixed": {"batch_norm": "no"}}, "fixed.batch_norm must be true or false"),
    ({"fixed": {"threshold": 1.5}}, "fixed.threshold must be in (0, 1), got 1.5"),
    ({"fixed": {"focal_gamma": -3}}, "fixed.focal_gamma must be >= 0"),
    ({"fixed": {"epochs": 2.5}}, "fixed.epochs must be an integer, got 2.5"),
    ({"fixed": {"data_dir": 7}}, "fixed.data_dir must be a string"),
    ({"batch_sizes": [4.9]}, "batch_sizes[0] must be an integer > 0, got 4.9"),
    ({"batch_sizes": [True]}, "batch_sizes[0] must be an integer > 0, got True"),
    ({"learning_rates": [1e-3, 0.001]}, "learning_rates repeats 0.001 (two identical cells)"),
    ({"learning_rates": [-1e-3]}, "learning_rates[0] must be a finite number > 0"),
    ({"learning_rates": ["1e-3"]}, "learning_rates[0] must be a finite number > 0, got '1e-3'"),
    ({"seeds": [-1]}, "seeds[0] must be an integer in 0 .. 2**32-1"),
    ({"architectures": "UNet"}, "architectures must be a non-empty list"),
    ({"architectures": ["UNet", "UNet"]}, "architectures repeats 'UNet'"),
    ({"fixed": {"data_dir": ""}}, "fixed.data_dir must be a folder path"),
    ('{"fixed": {"epochs": 1, "epochs": 2}}', "key 'epochs' appears more than once"),
])
def test_bad_grid_values_are_one_line_before_anything_is_created(tmp_path, grid, expected):
    path = tmp_path / "grid.json"
    path.write_text(grid if isinstance(grid, str) else json.dumps(grid))
    proc = run("run_study.py", ["local", "--grid-config", str(path), "--root", str(tmp_path / "root"), "--no-analysis"])
    assert proc.returncode == 2
    line = the_error_line(proc)
    assert str(path) in line and expected in line
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())
    # The pre-flight check lists the same problem as a FAIL row, before anything is queued.
    from mitoseg.study import verify
    rows = verify.check_grid_values(str(path))
    assert any(r.status == verify.FAIL and expected in r.detail for r in rows), rows


def test_verify_reports_every_bad_value_as_a_fail_row(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"learning_rates": [1e-3, -1], "fixed": {"augment": "false", "threshold": 2}}))
    proc = run("run_study.py", ["verify", "--grid-config", str(path), "--skip-env-probe"])
    assert proc.returncode == 2   # bad input, as for every other command
    fails = [line for line in proc.stdout.splitlines() if line.startswith("grid values  FAIL")]
    assert len(fails) == 3 and all(str(path) in line for line in fails), proc.stdout


@pytest.mark.parametrize("args, expected", [
    (["--seed", "-1"], "--seed: seed must be an integer in 0 .. 2**32-1, got -1"),
    (["--dropout", "1.5"], "--dropout: dropout must be in [0, 1), got 1.5"),
    (["--bn-momentum", "-0.5"], "--bn-momentum: bn_momentum must be in [0, 1]"),
    (["--val-fraction", "0"], "--val-fraction: val_fraction must be in (0, 1)"),
])
def test_bad_flag_values_name_the_flag(tmp_path, args, expected):
    out = tmp_path / "runs"
    proc = run("train_one.py", [*args, "--out-dir", str(out), *TINY, "--synthetic-slices", "6", "--synthetic-size", "64"])
    assert proc.returncode == 2
    assert expected in the_error_line(proc)
    assert not out.exists()


# --- the cache fingerprints what is read ----------------------------------------------------------------
def test_cache_follows_symlinked_folders(tmp_path, em):
    from mitoseg.core.layout import source_files
    from mitoseg.core.config import TrainConfig
    from mitoseg.cell.inputs import load_cell_data
    images, masks = em
    real = tmp_path / "real"
    for sub, stack in (("images", images), ("masks", masks)):
        (real / sub).mkdir(parents=True)
        for z, sl in enumerate(stack):
            tifffile.imwrite(real / sub / f"s{z}.tif", sl)
    data = tmp_path / "data"
    data.mkdir()
    for sub in ("images", "masks"):
        (data / sub).symlink_to(real / sub, target_is_directory=True)
    files = source_files(data)
    assert len(files) == 12 and all(f["real"].startswith(str(real)) for f in files)
    config = TrainConfig(data_dir=str(data), patch_size=32, depth=3)
    cache, messages = tmp_path / "cache", []
    train, _ = load_cell_data(config, cache)
    changed = masks.copy()
    changed[:, :8, :8] = 255                      # the masks change behind the symlink
    for z, sl in enumerate(changed):
        tifffile.imwrite(real / "masks" / f"s{z}.tif", sl)
    from mitoseg.data import cache as C
    again, _ = C.cached_volumes(cache, config, lambda: D.load_dataset(data), C.config_sources(config),
                                log=messages.append)
    assert any("source files changed" in m for m in messages), messages
    np.testing.assert_array_equal(again.masks, changed // 255)


# --- one runner per cell ----------------------------------------------------------------------------
HOLD = ("import sys, time; sys.path.insert(0, sys.argv[2]); from mitoseg.cell.lock import try_lock\n"
        "lock, _ = try_lock(sys.argv[1]); print('HELD' if lock else 'BUSY', flush=True); time.sleep(600)\n")


def _holder(exp_dir: Path) -> subprocess.Popen:
    exp_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(exp_dir), str(ROOT)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_cell_lock_is_exclusive_and_freed_by_a_kill(tmp_path):
    from mitoseg.cell.lock import try_lock
    exp = tmp_path / "exp_x"
    holder = _holder(exp)
    lock, who = try_lock(exp)
    assert lock is None and f"pid {holder.pid}" in who
    holder.kill()
    holder.wait()
    lock, _ = try_lock(exp)                         # a SIGKILLed holder leaves nothing stuck
    assert lock is not None
    assert try_lock(exp)[0] is None                 # held again, now by us
    lock.release()
    again, _ = try_lock(exp)
    assert again is not None
    again.release()


def test_second_runner_moves_on_while_a_cell_is_being_trained(tmp_path, em):
    d = write_stack(tmp_path / "d", *em)
    grid = tmp_path / "grid.json"
    G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[4],
                 fixed=dict(epochs=1, patch_size=32, base_filters=4, depth=3, data_dir=str(d))).save(grid)
    study = tmp_path / "study"
    cell = G.cells(G.GridConfig.load(grid))[0]
    holder = _holder(study / cell.name)              # another runner is training cell 0
    try:
        proc = run("run_study.py", ["local", "--study-dir", str(study), "--grid-config", str(grid), "--no-analysis"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "running elsewhere" in proc.stdout
        direct = run("train_one.py", ["--study-dir", str(study), "--task-index", "0"])
        assert direct.returncode == 4 and "another process is training this cell" in direct.stdout
        assert f"pid {holder.pid}" in direct.stdout
        assert not list(study.rglob("*_results.json")) and not (study / cell.name / "backup").exists()
    finally:
        holder.kill()
        holder.wait()


# --- a cell's identity includes its settings and data; paths mean what the user meant -------------------
@pytest.fixture(scope="module")
def hand_cell(tmp_path_factory, em):
    """One real 1-epoch cell trained by hand from the user's folder with a RELATIVE --data-dir."""
    user = tmp_path_factory.mktemp("user")
    write_stack(user / "data", *em)
    out = user / "runs"
    proc = run("train_one.py", ["--data-dir", "data", "--out-dir", str(out), *TINY], cwd=user)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = next(out.glob("exp_*"))
    return {"user": user, "out": out, "exp": exp, "log": proc.stdout, "results": exp / f"{exp.name}_results.json"}


def test_hand_cell_records_absolute_data_dir_scaling_and_fingerprint(hand_cell):
    rec = json.loads(hand_cell["results"].read_text())
    assert rec["config"]["data_dir"] == str(hand_cell["user"] / "data")
    assert rec["data"]["scaling"]["bits"] == 8 and rec["data"]["scaling"]["divisor"] == 255
    assert rec["data"]["data_fingerprint"]["files"] == 2
    assert "image scaling (training): " in hand_cell["log"] and "8-bit grey levels, / 255" in hand_cell["log"]


@pytest.mark.parametrize("change, expected", [
    (["--epochs", "2"], "epochs 1 -> 2"),
    (["--lr", "0.00100000001"], "learning_rate 0.001 -> 0.00100000001"),   # same folder name, other lr
    (["--data-dir", "COPY"], "data_dir"),
    (["--augment"], "augment False -> True"),
])
def test_finished_cell_with_other_settings_is_refused_not_skipped(hand_cell, change, expected):
    import shutil
    user = hand_cell["user"]
    if "COPY" in change:
        if not (user / "copy").exists():
            shutil.copytree(user / "data", user / "copy")
        change = ["--data-dir", "copy"]
    before = digests(hand_cell["exp"])
    args = ["--data-dir", "data", "--out-dir", str(hand_cell["out"]), *TINY]
    proc = run("train_one.py", [*args, *change], cwd=user)
    assert proc.returncode == 2, proc.stdout[-2000:]
    line = the_error_line(proc)
    assert str(hand_cell["exp"]) in line and expected in line and "--force" in line
    assert digests(hand_cell["exp"]) == before
    same = run("train_one.py", args, cwd=user)       # the same settings: skipped, exit 0
    assert same.returncode == 0 and "already finished (status ok); skipping" in same.stdout


def test_finished_cell_whose_data_changed_is_refused(tmp_path, em):
    d = write_stack(tmp_path / "data", *em)
    args = ["--data-dir", str(d), "--out-dir", str(tmp_path / "runs"), *TINY]
    assert run("train_one.py", args).returncode == 0
    masks = em[1].copy()
    masks[:, :6, :6] = 255                            # the ground truth is corrected afterwards
    tifffile.imwrite(d / "training_groundtruth.tif", masks)
    exp = next((tmp_path / "runs").glob("exp_*"))
    before = digests(exp)
    proc = run("train_one.py", args)
    assert proc.returncode == 2
    line = the_error_line(proc)
    assert str(exp) in line and "its data files changed since it finished" in line
    assert digests(exp) == before


def test_force_retrains_a_cell_with_other_settings(hand_cell):
    args = ["--data-dir", "data", "--out-dir", str(hand_cell["out"]), *TINY]
    proc = run("train_one.py", [*args, "--epochs", "2", "--force"], cwd=hand_cell["user"])
    assert proc.returncode == 0, proc.stdout[-2000:]
    rec = json.loads(hand_cell["results"].read_text())
    assert rec["config"]["epochs"] == 2 and rec["epochs_run"] == 2


def test_old_results_without_new_fields_still_load_and_skip(tmp_path, hand_cell):
    import shutil
    from mitoseg.core.results import load_results
    out = tmp_path / "runs"
    shutil.copytree(hand_cell["out"], out)
    rec_path = next(out.glob("exp_*/*_results.json"))
    rec = json.loads(rec_path.read_text())
    for key in ("scaling", "test_scaling", "data_fingerprint"):
        rec["data"].pop(key, None)
    rec_path.write_text(json.dumps(rec))
    assert load_results(rec_path)["status"] == "ok"
    proc = run("train_one.py", ["--data-dir", rec["config"]["data_dir"], "--out-dir", str(out), *TINY,
                                "--epochs", str(rec["config"]["epochs"])])
    assert proc.returncode == 0 and "no data fingerprint recorded" in proc.stdout


@pytest.fixture(scope="module")
def local_study(tmp_path_factory, em):
    """A 1-cell study run by `run_study.py local` from the user's folder with a relative --data-dir, while
    a different dataset sits at the same relative path inside the repository's folder of the runner."""
    user = tmp_path_factory.mktemp("user_study")
    write_stack(user / "data", *em)
    grid = user / "grid.json"
    G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[4],
                 fixed=dict(epochs=1, patch_size=32, base_filters=4, depth=3)).save(grid)
    study = user / "study"
    proc = run("run_study.py", ["local", "--study-dir", "study", "--grid-config", "grid.json", "--data-dir", "data",
                                "--no-analysis"], cwd=user)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"user": user, "study": study, "grid": grid}


def test_relative_data_dir_of_a_local_study_is_the_users_folder(local_study):
    stored = G.load_study_grid(local_study["study"])
    assert stored.fixed["data_dir"] == str(local_study["user"] / "data")
    rec = json.loads(next(local_study["study"].glob("exp_*/*_results.json")).read_text())
    assert rec["config"]["data_dir"] == str(local_study["user"] / "data") and rec["status"] == "ok"


def test_edited_grid_config_that_no_longer_matches_finished_cells_is_refused(local_study):
    path = local_study["study"] / P.GRID_CONFIG_NAME
    original = path.read_text()
    try:
        for edit, expected in ((lambda g: g["fixed"].update(epochs=2), "epochs 1 -> 2"),
                               (lambda g: g.update(learning_rates=[1e-4, 1e-3]), "is no cell of this grid")):
            grid = json.loads(original)
            edit(grid)
            path.write_text(json.dumps(grid))
            before = digests(local_study["study"])
            proc = run("run_study.py", ["local", "--study-dir", str(local_study["study"]), "--no-analysis"])
            assert proc.returncode == 2
            line = the_error_line(proc)
            assert str(path) in line and expected in line
            assert digests(local_study["study"]) == before
    finally:
        path.write_text(original)


@pytest.mark.parametrize("flags, expected", [
    (["--grid-config", "OTHER"], "differs from the existing study's"),
    (["--data-dir", "/elsewhere"], "--data-dir /elsewhere contradicts the existing study's"),
])
def test_flags_contradicting_an_existing_study_are_refused(local_study, tmp_path, flags, expected):
    if "OTHER" in flags:
        other = tmp_path / "other.json"
        G.GridConfig(architectures=["UNet"], learning_rates=[1e-3, 5e-3], batch_sizes=[4]).save(other)
        flags = ["--grid-config", str(other)]
    before = digests(local_study["study"])
    proc = run("run_study.py", ["local", "--study-dir", str(local_study["study"]), *flags, "--no-analysis"])
    assert proc.returncode == 2
    assert expected in the_error_line(proc)
    assert digests(local_study["study"]) == before
    # The same flags as the study's own are fine: the finished cell is skipped.
    same = run("run_study.py", ["local", "--study-dir", "study", "--grid-config", "grid.json", "--data-dir", "data",
                                "--no-analysis"], cwd=local_study["user"])
    assert same.returncode == 0 and "1 already finished, 0 to run" in same.stdout


def test_analysis_never_overwrites_its_input_csvs(tmp_path):
    from tests.fixtures_results import record_for
    from mitoseg.core.results import save_results
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-4, 1e-3], batch_sizes=[8])
    study = tmp_path / "study"
    G.init_study(study, grid)
    for cell in G.cells(grid):
        save_results(P.experiment_paths(study, cell.name).results_json, record_for(cell))
    baseline = study / P.SUMMARY_CSV_NAME               # a baseline CSV kept where the new summary goes
    baseline.write_text("architecture,learning_rate,batch_size,status,best_val_iou\nUNet,0.01,8,ok,0.07\n")
    before = baseline.read_bytes()
    proc = run("analyze_hyperparameter_results.py", ["--study-dir", str(study), "--baseline_summary", str(baseline),
                                                     "--no-figures"])
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--baseline_summary" in lines[0] and "refusing to overwrite an input" in lines[0]
    assert baseline.read_bytes() == before and not (study / "hyperparameter_report.md").exists()


def test_relative_data_dir_in_a_study_grid_is_refused(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / P.GRID_CONFIG_NAME).write_text(json.dumps({"architectures": ["UNet"], "learning_rates": [1e-3],
                                                         "batch_sizes": [4], "fixed": {"data_dir": "data"}}))
    for script, args in (("run_study.py", ["local", "--study-dir", str(study), "--no-analysis"]),
                         ("train_one.py", ["--study-dir", str(study), "--task-index", "0"])):
        proc = run(script, args)
        assert proc.returncode == 2
        assert "data_dir 'data' is relative" in the_error_line(proc)
    assert sorted(p.name for p in study.iterdir()) == [P.GRID_CONFIG_NAME]


def test_data_dir_that_is_a_file_says_so(tmp_path, em):
    d = write_stack(tmp_path / "d", *em)
    proc = run("train_one.py", ["--data-dir", str(d / "training.tif"), "--out-dir", str(tmp_path / "runs"), *TINY])
    assert proc.returncode == 2
    assert "training.tif: is a file, not a data folder" in the_error_line(proc)


@pytest.mark.parametrize("script, args, expected", [
    ("run_study.py", ["local", "--jobs", "0"], "argument --jobs/-j: '0' is neither a positive integer nor auto"),
    ("predict.py", ["--model", "m.keras", "--input", "a.tif", "--output", "b.tif", "--overlap", "1"],
     "--overlap must be in [0, 1), got 1.0"),
    ("predict.py", ["--threshold", "abc"], "argument --threshold: invalid float value: 'abc'"),
])
def test_bad_runner_and_predict_flags_are_one_line(tmp_path, script, args, expected):
    proc = run(script, args, cwd=tmp_path)
    assert proc.returncode == 2
    assert expected in the_error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_array_element_refuses_a_study_with_a_relative_data_dir(tmp_path):
    from mitoseg.study import runner as R
    study = tmp_path / "study"
    study.mkdir()
    (study / P.GRID_CONFIG_NAME).write_text(json.dumps({"architectures": ["UNet"], "learning_rates": [1e-3],
                                                         "batch_sizes": [4], "fixed": {"data_dir": "data"}}))
    logs = []
    assert R.run_element(0, tmp_path, environ={"STUDY_DIR": str(study), "PATH": os.environ["PATH"]},
                         log=logs.append) == 2
    assert len(logs) == 1 and logs[0].startswith("error: ") and "data_dir 'data' is relative" in logs[0]
