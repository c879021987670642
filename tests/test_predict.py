"""predict.py: probability/mask stacks, overlays of a study's best models, one-line errors.

Uses an untrained tiny model saved to a tmp folder (fast); the pipeline, not the quality, is tested.
"""
import json

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
keras = pytest.importorskip("keras")

from mitoseg.cli import predict  # noqa: E402
from mitoseg.cell import inference  # noqa: E402
from mitoseg.core.config import TrainConfig  # noqa: E402
from mitoseg.core.results import empty_record, save_results  # noqa: E402
from models import build_model  # noqa: E402

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)

PATCH = 32


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = build_model("UNet", (PATCH, PATCH, 1), base_filters=4, depth=3)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    gt = ((rng.random((3, 40, 50)) < 0.2) * 255).astype(np.uint8)
    # 3 slices: minisblack, else tifffile declares the 3 planes RGB (refused as ambiguous: tests/test_image_files.py)
    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack")
    tifffile.imwrite(tmp_path / "gt.tif", gt, photometric="minisblack")
    return tmp_path


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return [line for line in err if line.startswith("error:")]


def test_probabilities_then_mask(model_path, stack, capsys):
    out = stack / "probs.tif"
    assert predict.main(["--model", str(model_path), "--input", str(stack / "in.tif"), "--output", str(out),
                         "--quiet"]) == 0
    probs = tifffile.imread(out)
    assert probs.dtype == np.float32 and probs.shape == (3, 40, 50)
    assert np.all((probs >= 0) & (probs <= 1))
    mask_out = stack / "mask.tif"
    assert predict.main(["--model", str(model_path), "--input", str(stack / "in.tif"), "--output", str(mask_out),
                         "--mask", "--threshold", "0.5", "--quiet"]) == 0
    mask = tifffile.imread(mask_out)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, probs >= 0.5)
    assert not list(stack.glob(".*tmp*")), "temporary files left behind"
    assert "wrote" in capsys.readouterr().out


def test_tta_and_ground_truth_overlay(model_path, stack, capsys):
    png = stack / "view.png"
    assert predict.main(["--model", str(model_path), "--input", str(stack / "in.tif"), "--output",
                         str(stack / "p.tif"), "--tta", "--ground-truth", str(stack / "gt.tif"),
                         "--overlay", str(png), "--n-slices", "2", "--quiet"]) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "IoU" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing_model", "bad_model", "missing_input", "bad_tiff", "wrong_patch",
                                  "too_small", "no_args", "bad_suffix", "overlay_without_gt"])
def test_one_line_errors(case, model_path, stack, capsys):
    args = ["--model", str(model_path), "--input", str(stack / "in.tif"), "--output", str(stack / "o.tif")]
    if case == "missing_model":
        args[1] = str(stack / "nope.keras")
        expect = "model file not found"
    elif case == "bad_model":
        (stack / "bad.keras").write_bytes(b"not a model")
        args[1] = str(stack / "bad.keras")
        expect = "bad.keras: not a Keras model (a .keras model is a zip archive"
    elif case == "missing_input":
        args[3] = str(stack / "nope.tif")
        expect = "file not found"
    elif case == "bad_tiff":
        (stack / "bad.tif").write_bytes(b"II*\x00garbage")
        args[3] = str(stack / "bad.tif")
        expect = "cannot read TIFF"
    elif case == "wrong_patch":
        args += ["--patch-size", "64"]
        expect = "does not fit the model"
    elif case == "too_small":
        tifffile.imwrite(stack / "small.tif", np.zeros((2, 20, 20), np.uint8))
        args[3] = str(stack / "small.tif")
        expect = f"{stack / 'small.tif'}: slice side 20 is smaller than the patch size"   # the file is named
    elif case == "no_args":
        args = []
        expect = "missing --model"
    elif case == "bad_suffix":
        args[5] = str(stack / "o.png")
        expect = "must be a .tif"
    else:
        args += ["--overlay", str(stack / "x.png")]
        expect = "needs --ground-truth"
    assert predict.main(args + ["--quiet"]) == predict.EXIT_BAD_INPUT
    lines = _err_line(capsys)
    assert len(lines) == 1 and expect in lines[0], lines
    assert not (stack / "o.tif").exists()


# --- never overwrite an input (issue 13) -----------------------------------------------------------
def _digests(folder):
    import hashlib
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("case", ["output_is_input", "output_is_ground_truth", "overlay_is_input",
                                  "output_via_symlink", "output_via_hardlink", "output_via_dotdot",
                                  "output_is_model", "overlay_is_output", "existing_output"])
def test_outputs_never_replace_inputs(case, model_path, stack, capsys):
    import os
    m = stack / "m.keras"
    m.write_bytes(model_path.read_bytes())
    inp, gt = stack / "in.tif", stack / "gt.tif"
    args = {"--model": m, "--input": inp, "--output": stack / "o.tif"}
    expect = "is the same file as"
    if case == "output_is_input":
        args["--output"] = inp
    elif case == "output_is_ground_truth":
        args.update({"--ground-truth": gt, "--output": gt})
    elif case == "overlay_is_input":
        (stack / "in.png").symlink_to(inp)
        args.update({"--ground-truth": gt, "--overlay": stack / "in.png"})
    elif case == "output_via_symlink":
        (stack / "link.tif").symlink_to(inp)
        args["--output"] = stack / "link.tif"
    elif case == "output_via_hardlink":
        os.link(inp, stack / "hard.tif")
        args["--output"] = stack / "hard.tif"
    elif case == "output_via_dotdot":
        (stack / "sub").mkdir()
        args["--output"] = stack / "sub" / ".." / "in.tif"
    elif case == "output_is_model":
        (stack / "model.tif").symlink_to(m)
        args["--output"] = stack / "model.tif"
    elif case == "overlay_is_output":
        args.update({"--ground-truth": gt, "--output": stack / "o.png.tif", "--overlay": stack / "x.png"})
        (stack / "x.png").symlink_to(stack / "o.png.tif")
        expect = "name the same file"
    else:
        tifffile.imwrite(stack / "o.tif", np.zeros((1, 4, 4), np.uint8))
        expect = "already exists; add --overwrite to replace it"
    before = _digests(stack)
    argv = [str(x) for kv in args.items() for x in kv] + ["--quiet"]
    assert predict.main(argv) == predict.EXIT_BAD_INPUT
    lines = _err_line(capsys)
    assert len(lines) == 1 and expect in lines[0], lines
    assert _digests(stack) == before, "an input or an existing file was changed"
    if case == "existing_output":   # --overwrite replaces an earlier output, and only that
        assert predict.main(argv + ["--overwrite"]) == 0
        assert tifffile.imread(stack / "o.tif").dtype == np.float32
        assert _digests(stack)["in.tif"] == before["in.tif"]


def test_overwrite_never_allows_replacing_an_input(model_path, stack, capsys):
    before = _digests(stack)
    argv = ["--model", str(model_path), "--input", str(stack / "in.tif"), "--output", str(stack / "in.tif"),
            "--overwrite", "--quiet"]
    assert predict.main(argv) == predict.EXIT_BAD_INPUT
    assert "is the same file as --input" in _err_line(capsys)[0]
    assert _digests(stack) == before


def test_study_overlays_need_overwrite_to_replace(model_path, tmp_path, capsys):
    study = tmp_path / "study"
    _fake_cell(study, "exp_00_UNet_lr0.001_bs8", "UNet", model_path, val_iou=0.9)
    assert predict.main(["--study-dir", str(study), "--overlays", "--n-slices", "1"]) == 0
    png = study / "overlays" / "overlay_UNet.png"
    first = png.read_bytes()
    capsys.readouterr()
    assert predict.main(["--study-dir", str(study), "--overlays", "--n-slices", "1"]) == predict.EXIT_BAD_INPUT
    assert "overlay_UNet.png already exists; add --overwrite" in _err_line(capsys)[0]
    assert png.read_bytes() == first
    assert predict.main(["--study-dir", str(study), "--overlays", "--n-slices", "1", "--overwrite"]) == 0


def _fake_cell(study, name, arch, model_path, val_iou, test_iou=None, status="ok"):
    exp = study / name
    exp.mkdir(parents=True)
    (exp / f"{name}_model.keras").write_bytes(model_path.read_bytes())
    cfg = TrainConfig(architecture=arch, patch_size=PATCH, base_filters=4, depth=3, synthetic_slices=4,
                      synthetic_size=64)
    rec = empty_record(experiment_id=name, status=status, architecture=arch, learning_rate=1e-3, batch_size=8,
                       seed=42, config=cfg.to_dict(), best_val_iou=val_iou, started_at="2026-01-01T00:00:00",
                       finished_at="2026-01-01T00:01:00", files={"model": f"{name}_model.keras"},
                       test=None if test_iou is None else {"iou": test_iou})
    save_results(exp / f"{name}_results.json", rec)


def test_study_overlays_pick_best_per_architecture(model_path, tmp_path, capsys):
    study = tmp_path / "study"
    _fake_cell(study, "exp_00_UNet_lr0.001_bs8", "UNet", model_path, val_iou=0.9, test_iou=0.5)
    _fake_cell(study, "exp_01_UNet_lr0.0001_bs8", "UNet", model_path, val_iou=0.6, test_iou=0.7)
    _fake_cell(study, "exp_02_UNet_lr0.01_bs8", "UNet", model_path, val_iou=0.99, test_iou=0.99, status="failed")
    _fake_cell(study, "exp_03_Attention_UNet_lr0.001_bs8", "Attention_UNet", model_path, val_iou=0.4)
    _fake_cell(study, "exp_04_Attention_UNet_lr0.0001_bs8", "Attention_UNet", model_path, val_iou=0.8)
    (study / "exp_05_broken").mkdir()
    (study / "exp_05_broken" / "exp_05_broken_results.json").write_text(json.dumps({"x": 1}))
    assert predict.main(["--study-dir", str(study), "--overlays", "--n-slices", "2"]) == 0
    out = capsys.readouterr().out
    assert "UNet: exp_00_UNet_lr0.001_bs8 (selected on val IoU" in out     # validation selects, not test
    assert "exp_01_UNet" not in out                                        # its better test IoU does not count
    assert "Attention_UNet: exp_04_Attention_UNet_lr0.0001_bs8 (selected on val IoU" in out
    for arch in ("UNet", "Attention_UNet"):
        png = study / "overlays" / f"overlay_{arch}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_study_without_finished_cells(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert predict.main(["--study-dir", str(tmp_path / "empty"), "--overlays"]) == predict.EXIT_BAD_INPUT
    assert "no finished" in _err_line(capsys)[0]
    assert predict.main(["--study-dir", str(tmp_path / "none"), "--overlays"]) == predict.EXIT_BAD_INPUT
    assert "study folder not found" in _err_line(capsys)[0]


def test_real_keras_model_blends_without_seams():
    """(mitoseg.cell.inference with a real Keras model; here because this file imports Keras anyway.)
    A tiny Keras model whose output is a per-pixel function of its input (1x1 conv, fixed
    weights, sigmoid): tiled prediction must equal the same function applied to the whole slice."""
    inp = keras.Input((16, 16, 1))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(4.0),
                              bias_initializer=keras.initializers.Constant(-2.0))(inp)
    model = keras.Model(inp, out)
    img = np.random.default_rng(5).random((1, 37, 29), dtype=np.float32)
    expected = 1 / (1 + np.exp(-(4 * img - 2)))
    got = inference.predict_slices(model, img, inference.model_patch_size(model), tta=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_traced_model_predicts_as_keras_and_one_architecture_is_loaded_once(tmp_path):
    """mitoseg.predict.model.traced_model (the analysis' ensemble): Keras' predict numbers, bit for bit, on
    the tiles predict_slices cuts (full batches, a smaller last one; with TTA, rotated views); a second file
    of the same architecture only loads its weights into the first one's model; another architecture, or
    an archive whose weights cannot be read (one line naming it), loads on its own."""
    import zipfile
    from mitoseg.predict.model import PredictError, traced_model
    paths = []
    for seed, name in ((0, "UNet"), (1, "UNet"), (0, "Attention_UNet")):
        keras.backend.clear_session()   # the layer names of a fresh process, as each cell's
        keras.utils.set_random_seed(seed)
        paths.append(tmp_path / f"{name}_{seed}.keras")
        build_model(name, (PATCH, PATCH, 1), base_filters=4, depth=3).save(paths[-1])
    img = np.random.default_rng(1).random((2, 50, 40), dtype=np.float32)   # 3 x 2 tiles of 32: batches of 4, 2
    loaded, used, probs = {}, [], []
    for path in paths:
        traced = traced_model(path, loaded)
        used.append(traced)
        for tta in (False, True):
            expected = inference.predict_slices(keras.models.load_model(path, compile=False), img, PATCH,
                                                batch_size=4, tta=tta)
            got = inference.predict_slices(traced, img, PATCH, batch_size=4, tta=tta)
            np.testing.assert_array_equal(got, expected)
        probs.append(got)
    assert used[0] is used[1] and used[2] is not used[0] and len(loaded) == 2
    assert not np.array_equal(probs[0], probs[1])   # the second file's weights, not the first's
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(paths[0]) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.namelist():
            dst.writestr(item, src.read(item)[:100] if item.endswith(".h5") else src.read(item))
    with pytest.raises(PredictError, match=f"^{broken}: cannot load model"):
        traced_model(broken, loaded)
    assert len(loaded) == 1   # the shared model's weights may be partly overwritten: it is not used again


# --- the model's recorded scaling (issue 13) ---------------------------------------------------------
def _cell_with_scaling(tmp_path, model_path, scaling):
    exp = tmp_path / "exp_UNet_lr0.001_bs8_seed42"
    exp.mkdir()
    model = exp / f"{exp.name}_model.keras"
    model.write_bytes(model_path.read_bytes())
    rec = empty_record(experiment_id=exp.name, status="ok", architecture="UNet", learning_rate=1e-3, batch_size=8,
                       seed=42, started_at="s", finished_at="f", files={"model": model.name},
                       data={} if scaling is None else {"scaling": scaling})
    save_results(exp / f"{exp.name}_results.json", rec)
    return model


def test_same_grey_values_in_any_container_give_the_same_prediction(model_path, tmp_path, capsys):
    from mitoseg.data import scaling
    grey = np.random.default_rng(1).integers(0, 256, (2, 40, 40)).astype(np.uint8)
    model = _cell_with_scaling(tmp_path, model_path, scaling.image_scaling(grey))
    outs = []
    for name, arr in (("u8", grey), ("u16", grey.astype(np.uint16)), ("f32", grey.astype(np.float32))):
        tifffile.imwrite(tmp_path / f"{name}.tif", arr)
        assert predict.main(["--model", str(model), "--input", str(tmp_path / f"{name}.tif"),
                             "--output", str(tmp_path / f"p_{name}.tif"), "--quiet"]) == 0
        outs.append(tifffile.imread(tmp_path / f"p_{name}.tif"))
        out = capsys.readouterr().out
        assert "input scaling: " in out and "8-bit grey levels, / 255" in out and "the model was trained on" in out
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_input_that_cannot_share_the_models_scale_is_refused(model_path, tmp_path, capsys):
    from mitoseg.data import scaling
    twelve_bit = scaling.image_scaling(np.array([0, 4000], np.uint16))
    model = _cell_with_scaling(tmp_path, model_path, twelve_bit)
    tifffile.imwrite(tmp_path / "u8.tif", np.full((1, 40, 40), 200, np.uint8))
    args = ["--model", str(model), "--input", str(tmp_path / "u8.tif"), "--output", str(tmp_path / "o.tif"), "--quiet"]
    assert predict.main(args) == predict.EXIT_BAD_INPUT
    line = _err_line(capsys)
    assert len(line) == 1 and "u8.tif" in line[0] and "cannot share one scale" in line[0], line
    assert not (tmp_path / "o.tif").exists()
    # A dim stack of the model's own type is put on the model's scale (/4095), not stretched to 8 bits.
    dim = np.full((1, 40, 40), 200, np.uint16)
    tifffile.imwrite(tmp_path / "dim.tif", dim)
    args[3] = str(tmp_path / "dim.tif")
    assert predict.main(args) == 0
    assert "12-bit grey levels, / 4095 (by its values 8-bit, scaled like" in capsys.readouterr().out


def test_model_without_recorded_scaling_says_so(model_path, tmp_path, capsys):
    model = _cell_with_scaling(tmp_path, model_path, None)   # an older results JSON: no data.scaling
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((1, 40, 40), np.uint16))
    assert predict.main(["--model", str(model), "--input", str(tmp_path / "in.tif"), "--output",
                         str(tmp_path / "o.tif"), "--quiet"]) == 0
    assert "records no image scaling" in capsys.readouterr().out


def test_a_truncated_results_json_beside_the_model_is_named_not_called_absent(model_path, tmp_path, capsys):
    from mitoseg.data import scaling
    model = _cell_with_scaling(tmp_path, model_path, scaling.image_scaling(np.zeros((1, 4, 4), np.uint8)))
    results = next(model.parent.glob("*_results.json"))
    results.write_text(results.read_text()[:200])   # cut off mid-write
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((1, 40, 40), np.uint8))
    assert predict.main(["--model", str(model), "--input", str(tmp_path / "in.tif"), "--output",
                         str(tmp_path / "o.tif"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "the results JSON beside it is unreadable" in out and "no results JSON of this model" not in out
