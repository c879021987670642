"""Images read by what their files declare (issue 21, mitoseg/data/image_files.py), one data layout per
folder (mitoseg/core/layout.py), masks named as probably inverted, the degenerate rule at high foreground,
and a batch larger than the training patches. Synthetic TIFF/PNG files written with tifffile/Pillow;
one tiny training run (`test_a_cell_logs_and_records_what_it_converted_and_warned`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mitoseg.data import stacks as D
from mitoseg.core.scores import degenerate_reason, required_iou
from mitoseg.data.image_files import read_image, read_tiff
from mitoseg.core.errors import DataError
from mitoseg.core.layout import detect_layout, source_files
from mitoseg.data.synthetic import make_synthetic_em

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
pytestmark = pytest.mark.oldest   # tifffile/Pillow decode these files: also run in the oldest stack (run_tests.sh)


@pytest.fixture(scope="module")
def em():
    return make_synthetic_em(6, 64, 64, seed=7)


def refused(path, what="image") -> str:
    with pytest.raises(DataError) as info:
        read_image(path, what)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path)), text
    return text


def read(path, what="image"):
    notes = []
    return read_image(path, what, notes), [text for _, text in notes]


def stack_folder(folder: Path, images, masks, test=None, **test_kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "training.tif", images, photometric="minisblack")
    tifffile.imwrite(folder / "training_groundtruth.tif", masks, photometric="minisblack")
    if test is not None:
        tifffile.imwrite(folder / "testing.tif", test[0], **({"photometric": "minisblack"} | test_kwargs))
        tifffile.imwrite(folder / "testing_groundtruth.tif", test[1], photometric="minisblack")
    return folder


# --- compression ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd", "packbits"])
def test_compressed_tiffs_read_as_their_pixels(tmp_path, em, compression):
    """Microscopes and Fiji often write LZW (or deflate) TIFFs: read through imagecodecs, the pixels are
    those of the uncompressed file (tifffile alone refuses LZW: "requires the 'imagecodecs' package")."""
    images, masks = em
    plain = tmp_path / "plain.tif"
    packed = tmp_path / f"{compression}.tif"
    tifffile.imwrite(plain, images, photometric="minisblack")
    tifffile.imwrite(packed, images, photometric="minisblack", compression=compression)
    assert tifffile.TiffFile(packed).pages[0].compression != tifffile.TiffFile(plain).pages[0].compression
    assert np.array_equal(read(packed)[0], read(plain)[0])


# --- photometric interpretation and bit depth ---------------------------------------------------------
@pytest.mark.parametrize("dtype, largest", [(np.uint8, 255), (np.uint16, 65535)])
def test_miniswhite_image_is_inverted_to_what_a_viewer_shows(tmp_path, em, dtype, largest):
    seen = em[0].astype(dtype) * (257 if dtype == np.uint16 else 1)
    tifffile.imwrite(tmp_path / "mw.tif", (largest - seen).astype(dtype), photometric="miniswhite")
    grey, notes = read(tmp_path / "mw.tif")
    np.testing.assert_array_equal(grey, seen)
    assert notes == [f"MINISWHITE (0 = white): inverted, value -> {largest} - value, to the grey a viewer shows"]


def test_miniswhite_mask_keeps_its_stored_labels(tmp_path, em):
    # ImageJ binary masks (inverting LUT) and tifffile's boolean masks are MINISWHITE with 255/True = foreground
    tifffile.imwrite(tmp_path / "m.tif", em[1], photometric="miniswhite")
    tifffile.imwrite(tmp_path / "b.tif", em[1] > 0)
    for name in ("m.tif", "b.tif"):
        labels, notes = read(tmp_path / name, "mask")
        np.testing.assert_array_equal(labels > 0, em[1] > 0)
        assert "labels read as stored" in notes[0]


def test_test_stack_stored_miniswhite_reads_as_the_same_grey_values(tmp_path, em):
    """Issue 21: the same pixels stored inverted (MINISWHITE) scored test IoU 0.001 instead of 0.70."""
    images, masks = em
    d = stack_folder(tmp_path / "d", images[:4], masks[:4], test=(255 - images[4:], masks[4:]),
                     photometric="miniswhite")
    train, test = D.load_dataset(d)
    np.testing.assert_array_equal(test.images, images[4:].astype(np.float32) / 255)
    assert test.scaling["reading"] == [f"{d / 'testing.tif'}: MINISWHITE (0 = white): inverted, value -> 255 - value, "
                                       "to the grey a viewer shows"]
    assert "reading" not in train.scaling
    lines = []
    from mitoseg.data.scaling import log_scaling
    log_scaling(train.scaling, test.scaling, lines.append)
    assert lines[1].startswith(f"reading (test): {d / 'testing.tif'}: MINISWHITE"), lines


def test_other_bit_depth_of_the_same_pixels_is_the_same_input_or_refused(tmp_path, em):
    images, masks = em
    same = {"float32 in [0, 1]": images[4:].astype(np.float32) / 255, "uint16 8-bit": images[4:].astype(np.uint16),
            "int16": images[4:].astype(np.int16)}
    for name, test in same.items():
        _, vol = D.load_dataset(stack_folder(tmp_path / name.replace(" ", "_"), images[:4], masks[:4], (test, masks[4:])))
        np.testing.assert_allclose(vol.images, images[4:] / 255, atol=1e-6, err_msg=name)
    d = stack_folder(tmp_path / "u16", images[:4], masks[:4], (images[4:].astype(np.uint16) * 257, masks[4:]))
    with pytest.raises(DataError, match="cannot share one scale"):
        D.load_dataset(d)


def test_unsupported_photometric_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "cmyk.tif", np.zeros((16, 16, 4), np.uint8), photometric="separated")
    assert "photometric interpretation SEPARATED is not supported" in refused(tmp_path / "cmyk.tif")


# --- samples per pixel, planar configuration, extra samples -------------------------------------------
def test_rgb_contiguous_and_separate_planes(tmp_path, em):
    grey = em[0][0]
    tifffile.imwrite(tmp_path / "c.tif", np.stack([grey] * 3, -1), photometric="rgb")
    tifffile.imwrite(tmp_path / "s.tif", np.stack([grey] * 3, 0), photometric="rgb", planarconfig="separate")
    for name in ("c.tif", "s.tif"):
        out, notes = read(tmp_path / name)
        np.testing.assert_array_equal(out, grey[None])
        assert notes == []
    colour = np.stack([grey, grey // 2, grey // 4], 0)
    tifffile.imwrite(tmp_path / "sc.tif", colour, photometric="rgb", planarconfig="separate")
    assert "separate planes that differ" in refused(tmp_path / "sc.tif")   # 3 slices or a colour image?
    tifffile.imwrite(tmp_path / "cc.tif", np.moveaxis(colour, 0, -1), photometric="rgb")
    out, notes = read(tmp_path / "cc.tif")
    np.testing.assert_array_equal(out[0], np.round(colour.astype(float).mean(0)).astype(np.uint8))
    assert notes == ["RGB image: grey = mean of R, G, B"]


@pytest.mark.parametrize("fmt", ["tif-rgba", "tif-grey-alpha", "tif-grey-alpha-separate", "png-la", "png-rgba"])
def test_mask_label_in_the_alpha_channel_is_read_from_there(tmp_path, em, fmt):
    """Issue 21: a white mask whose label is its alpha channel read as foreground everywhere."""
    label = em[1][0]
    white = np.full_like(label, 255)
    path = tmp_path / ("m.png" if fmt.startswith("png") else "m.tif")
    if fmt == "tif-rgba":
        tifffile.imwrite(path, np.stack([white] * 3 + [label], -1), photometric="rgb", extrasamples=["unassalpha"])
    elif fmt == "tif-grey-alpha":
        tifffile.imwrite(path, np.stack([white, label], -1), photometric="minisblack", extrasamples=["unassalpha"])
    elif fmt == "tif-grey-alpha-separate":
        tifffile.imwrite(path, np.stack([white, label], 0), photometric="minisblack", planarconfig="separate",
                         extrasamples=["unassalpha"])
    elif fmt == "png-la":
        Image.fromarray(np.stack([white, label], -1), mode="LA").save(path)
    else:
        Image.fromarray(np.stack([white] * 3 + [label], -1), mode="RGBA").save(path)
    labels, notes = read(path, "mask")
    np.testing.assert_array_equal(labels[0], label)
    assert notes == ["label read from the alpha channel (the grey/colour channels are constant)"]


def test_mask_with_different_labels_in_colour_and_alpha_is_refused(tmp_path, em):
    label = em[1][0]
    other = np.roll(label, 7, axis=1)
    Image.fromarray(np.stack([label, other], -1), mode="LA").save(tmp_path / "m.png")
    assert "another in its alpha channel" in refused(tmp_path / "m.png", "mask")


def test_image_alpha_is_not_intensity(tmp_path, em):
    grey = em[0][0]
    alpha = np.where(np.arange(64) < 32, 255, 128).astype(np.uint8)[None].repeat(64, 0)
    Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(tmp_path / "i.png")
    out, notes = read(tmp_path / "i.png")
    np.testing.assert_array_equal(out[0], grey)
    assert notes == ["alpha (opacity) channel ignored: it is not intensity"]


# --- ImageJ / OME axes: channels are not slices --------------------------------------------------------
def test_two_channel_mask_is_refused_not_read_as_foreground(tmp_path, em):
    label = em[1][:2]
    one_hot = np.stack([255 - label, label], 1)          # (z, c, y, x): background, foreground
    tifffile.imwrite(tmp_path / "m.tif", one_hot, imagej=True, metadata={"axes": "ZCYX"})
    text = refused(tmp_path / "m.tif", "mask")
    assert "2 channels (axes ZCYX) per pixel that differ" in text


@pytest.mark.parametrize("kind", ["imagej", "ome"])
def test_hyperstack_channels_are_not_slices(tmp_path, em, kind):
    images = em[0][:3]
    same = np.stack([images, images], 1)                  # ZCYX, two identical channels
    differ = np.stack([images, 255 - images], 1)
    kwargs = {"imagej": True} if kind == "imagej" else {"ome": True}
    tifffile.imwrite(tmp_path / "same.tif", same, metadata={"axes": "ZCYX"}, **kwargs)
    tifffile.imwrite(tmp_path / "differ.tif", differ, metadata={"axes": "ZCYX"}, **kwargs)
    tifffile.imwrite(tmp_path / "cyx.tif", differ[0], metadata={"axes": "CYX"}, **kwargs)
    out, notes = read(tmp_path / "same.tif")
    np.testing.assert_array_equal(out, images)            # 3 slices, not 6
    assert notes == ["2 identical channels (axes ZCYX) per pixel: read the first"]
    assert "2 channels (axes ZCYX) per pixel that differ" in refused(tmp_path / "differ.tif")
    assert "2 channels (axes CYX) per pixel that differ" in refused(tmp_path / "cyx.tif")


def test_time_series_of_z_stacks_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((3, 2, 16, 16), np.uint8), imagej=True, metadata={"axes": "TZYX"})
    assert "axes TZYX" in refused(tmp_path / "t.tif")


def test_predict_reads_a_hyperstack_by_its_axes(tmp_path, em, capsys):
    from mitoseg.cli import predict
    images = em[0][:3]
    tifffile.imwrite(tmp_path / "two.tif", np.stack([images, 255 - images], 1), imagej=True,
                     metadata={"axes": "ZCYX"})
    with pytest.raises(predict.PredictError, match=r"2 channels \(axes ZCYX\) per pixel that differ"):
        predict.read_stack(tmp_path / "two.tif")
    tifffile.imwrite(tmp_path / "mw.tif", 255 - images, photometric="miniswhite")
    got, _ = predict.read_stack(tmp_path / "mw.tif")
    np.testing.assert_array_equal(got, images / np.float32(255))
    assert "reading: " + str(tmp_path / "mw.tif") + ": MINISWHITE" in capsys.readouterr().out


# --- palettes -----------------------------------------------------------------------------------------
def _palette_tif(path, indices, colours):
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :len(colours)] = np.asarray(colours, np.uint16).T * 257
    tifffile.imwrite(path, indices, photometric="palette", colormap=cmap)


def test_palette_image_is_read_through_its_grey_map_or_refused(tmp_path, em):
    grey = em[0][0]
    cmap = np.tile((255 - np.arange(256, dtype=np.uint16)) * 257, (3, 1))   # an inverted grey map
    tifffile.imwrite(tmp_path / "p.tif", (255 - grey).astype(np.uint8), photometric="palette", colormap=cmap)
    out, notes = read(tmp_path / "p.tif")
    np.testing.assert_array_equal(out[0], grey)
    assert notes == ["palette image: read through its grey colour map"]
    _palette_tif(tmp_path / "c.tif", (grey > 128).astype(np.uint8), [(0, 0, 0), (255, 0, 0)])
    assert "colour map that is not grey" in refused(tmp_path / "c.tif")


def test_palette_mask_by_indices_colours_or_refused(tmp_path, em):
    label = (em[1][0] > 0).astype(np.uint8)
    _palette_tif(tmp_path / "ok.tif", label, [(0, 0, 0), (255, 0, 0)])            # index 1 drawn red
    np.testing.assert_array_equal(read(tmp_path / "ok.tif", "mask")[0][0], label)
    _palette_tif(tmp_path / "red.tif", label, [(255, 255, 255), (255, 0, 0)])     # red labels on white: by index
    np.testing.assert_array_equal(read(tmp_path / "red.tif", "mask")[0][0], label)
    _palette_tif(tmp_path / "rev.tif", label, [(255, 255, 255), (0, 0, 0)])       # index 1 drawn black on white
    assert "indices and colours disagree" in refused(tmp_path / "rev.tif", "mask")
    colours = [(0, 0, 0)] * 8
    colours[3], colours[7] = (0, 0, 0), (255, 255, 255)
    _palette_tif(tmp_path / "col.tif", np.where(label > 0, 7, 3).astype(np.uint8), colours)
    labels, notes = read(tmp_path / "col.tif", "mask")
    np.testing.assert_array_equal(labels[0], label)
    assert notes == ["palette mask read by its colours (black/white), not its indices [3, 7]"]


# --- the folder layout ---------------------------------------------------------------------------------
def test_two_candidates_for_one_role_are_refused_naming_both(tmp_path, em):
    d = stack_folder(tmp_path / "d", em[0][:4], em[1][:4])
    tifffile.imwrite(d / "training.tiff", em[0], photometric="minisblack")
    with pytest.raises(DataError) as info:
        detect_layout(d)
    assert str(info.value) == (f"{d}: two candidates for training.tif: training.tif and training.tiff; "
                               "keep one (move or rename the other)")
    assert source_files(d) == []


def test_stacks_beside_folders_are_refused_naming_both(tmp_path, em):
    d = stack_folder(tmp_path / "d", em[0][:4], em[1][:4])
    for sub in ("images", "masks"):
        (d / sub).mkdir()
    with pytest.raises(DataError) as info:
        D.load_dataset(d)
    assert str(info.value) == (f"{d}: holds two data layouts: training.tif (stacks) and images/ (folders of slices); "
                               "keep one (move the other out of this folder)")


def test_dangling_symlink_is_named_as_such(tmp_path, em):
    d = stack_folder(tmp_path / "d", em[0][:4], em[1][:4])
    (d / "training.tif").unlink()
    (d / "training.tif").symlink_to(tmp_path / "gone.tif")
    with pytest.raises(DataError) as info:
        D.load_dataset(d)
    assert str(info.value) == (f"{d / 'training.tif'}: is a dangling symbolic link (its target {tmp_path / 'gone.tif'} "
                               "does not exist)")
    folders = tmp_path / "f"
    (folders / "masks").mkdir(parents=True)
    (folders / "images").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match="images: is a dangling symbolic link"):
        D.load_dataset(folders)


# --- masks more than half foreground, the degenerate rule there, the batch size ------------------------
def test_mask_more_foreground_than_background_is_named_probably_inverted(tmp_path, em):
    images, masks = em
    train, _ = D.load_dataset(stack_folder(tmp_path / "d", images, 255 - masks))
    warnings = D.mask_warnings(train, None)
    assert len(warnings) == 1 and "probably inverted" in warnings[0] and train.source in warnings[0]
    assert D.mask_warnings(D.load_dataset(stack_folder(tmp_path / "ok", images, masks))[0], None) == []


def test_degenerate_rule_stays_reachable_at_high_foreground():
    assert required_iou(0.07) == pytest.approx(0.12) and required_iou(0.3) == pytest.approx(0.45)
    assert required_iou(0.5) == pytest.approx(0.75)            # the cap starts here
    assert required_iou(0.83) == pytest.approx(0.915)          # was 1.245: no model could reach it
    for base in np.linspace(0, 0.999, 50):
        assert base < required_iou(base) < 1
    assert degenerate_reason(0.976, 0.83, 0.84) is None        # issue 21: a good model on an 83 % mask
    assert degenerate_reason(0.85, 0.83, 0.9).startswith("IoU 0.85 is not clearly above")
    assert degenerate_reason(0.99, 0.97, 0.97) is None         # predicting ~everything is right there
    assert degenerate_reason(0.60, 0.30, 0.97) == "predicts (almost) everything as foreground"


def test_batch_larger_than_the_training_patches_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(ROOT / "train_one.py"), "--arch", "UNet", "--lr", "1e-3",
                           "--batch-size", "64", "--epochs", "1", "--patch-size", "32", "--base-filters", "4",
                           "--depth", "3", "--synthetic-slices", "8", "--synthetic-size", "64", "--out-dir", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "batch size 64 is larger than its 28 training patches" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_a_cell_logs_and_records_what_it_converted_and_warned(tmp_path):
    """The one training run: an inverted training mask and a MINISWHITE test stack."""
    images, masks = make_synthetic_em(8, 64, 64, seed=3)
    d = stack_folder(tmp_path / "d", images[:6], 255 - masks[:6], test=(255 - images[6:], 255 - masks[6:]),
                     photometric="miniswhite")
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(ROOT / "train_one.py"), "--arch", "UNet", "--lr", "1e-3",
                           "--batch-size", "4", "--epochs", "1", "--patch-size", "32", "--base-filters", "4",
                           "--depth", "3", "--data-dir", str(d), "--out-dir", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads(next(out.rglob("*_results.json")).read_text())
    warnings = record["data"]["warnings"]
    assert len(warnings) == 2 and all("probably inverted" in w for w in warnings)
    assert record["data"]["test_scaling"]["reading"][0].endswith("MINISWHITE (0 = white): inverted, value -> 255 - "
                                                                "value, to the grey a viewer shows")
    log = next(out.rglob("training_log.txt")).read_text()
    assert f"warning: {warnings[0]}" in log and "reading (test): " in log
    print("\n".join(line for line in log.splitlines() if line.startswith(("warning", "reading", "exp_"))))


def test_verify_fails_a_grid_whose_batch_exceeds_the_training_patches(tmp_path, em):
    from mitoseg.core import grid as G
    from mitoseg.study import verify as V
    d = stack_folder(tmp_path / "d", em[0], em[1])      # 6 slices of 64x64: 5 train slices x 4 patches of 32
    grid = G.GridConfig(architectures=["UNet"], learning_rates=[1e-3], batch_sizes=[8, 64],
                        fixed={"data_dir": str(d), "patch_size": 32, "depth": 3})
    row = next(r for r in V.check_dataset(grid) if r.check == "patches")
    assert row.status == V.FAIL and row.detail.endswith("; batch size 64 is larger: those cells are refused"), row


def test_predict_output_of_three_slices_reads_back_as_three_slices(tmp_path):
    from mitoseg.cli import predict
    probs = np.random.default_rng(0).random((3, 16, 20)).astype(np.float32)
    predict.write_tiff(tmp_path / "p.tif", probs)
    np.testing.assert_array_equal(read_tiff(tmp_path / "p.tif"), probs)
