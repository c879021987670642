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

from mitoseg import data as D
from mitoseg import grid as G

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
for _var in G.SCHEDULER_INDEX_VARIABLES:
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
    return D.make_synthetic_em(6, 64, 64, seed=5)


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
    with pytest.raises(D.DataError, match="dtype uint8 differs from s0.tif"):
        D.load_dataset(d)


@pytest.mark.parametrize("values, why", [
    (np.linspace(-1, 1, 6 * 64 * 64).reshape(6, 64, 64).astype(np.float32), "negative grey values"),
    (np.linspace(0, 3.5, 6 * 64 * 64).reshape(6, 64, 64).astype(np.float32), "neither in [0, 1] nor whole grey levels"),
])
def test_float_images_outside_the_stated_rule_are_refused(tmp_path, em, values, why):
    d = write_stack(tmp_path / "d", values, em[1])
    with pytest.raises(D.DataError) as info:
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
        tifffile.imwrite(d / name, stack[:4])
        tifffile.imwrite(d / name, stack[4:], append=True)     # a second series
        assert len(tifffile.TiffFile(d / name).series) == 2
    train, _ = D.load_dataset(d)
    assert train.images.shape == (6, 64, 64)
    np.testing.assert_array_equal(train.masks, masks // 255)


def test_multi_series_tiff_of_other_shapes_is_refused(tmp_path, em):
    path = tmp_path / "mixed.tif"
    tifffile.imwrite(path, em[0])
    tifffile.imwrite(path, em[0][:, :32, :32], append=True)
    with pytest.raises(D.DataError) as info:
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
    with pytest.raises(D.DataError) as info:
        D.load_dataset(d)
    assert "s0.png: mask is a colour image" in str(info.value) and "85" not in str(info.value)
