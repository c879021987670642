"""Model shapes, registry, heads, channels, parameter counts, and save/load with the focal loss."""
import numpy as np
import pytest

import models
from mitoseg.cell import models as design  # the builders; `models` is the interface users import

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)


@pytest.mark.parametrize("name", list(models.MODEL_REGISTRY))
def test_output_shape_and_range(name):
    model = models.build_model(name, (32, 32, 1), base_filters=4, depth=3)
    out = model.predict(np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32), verbose=0)
    assert out.shape == (2, 32, 32, 1)
    assert np.all((out >= 0) & (out <= 1))


def test_three_channel_input():
    model = models.build_model("Attention_UNet", (32, 32, 3), base_filters=4, depth=3)
    assert model.input_shape == (None, 32, 32, 3)


def test_architectures_differ():
    counts = {name: models.build_model(name, (32, 32, 1), base_filters=4, depth=3).count_params()
              for name in models.MODEL_REGISTRY}
    assert counts["UNet"] < counts["Attention_UNet"] < counts["Attention_ResUNet"]
    layer_types = lambda n: {type(l).__name__ for l in models.build_model(n, (32, 32, 1), base_filters=4, depth=3).layers}
    assert "Multiply" not in layer_types("UNet")
    assert "Multiply" in layer_types("Attention_UNet")       # attention gates
    assert "Add" in layer_types("Attention_ResUNet")          # residual shortcuts


def test_default_width_is_the_original_64_to_1024():
    model = models.build_model("UNet", (256, 256, 1))
    widths = [l.filters for l in model.layers if type(l).__name__ == "Conv2D"]
    assert max(widths) == 1024 and widths[0] == 64
    assert 30e6 < model.count_params() < 32e6   # the standard 31M-parameter U-Net


def test_heads():
    plain = models.build_model("UNet", (32, 32, 1), base_filters=4, depth=3, head="plain")
    original = models.build_model("UNet", (32, 32, 1), base_filters=4, depth=3, head="bn_sigmoid")
    assert type(plain.layers[-2]).__name__ == "Conv2D"
    assert type(original.layers[-2]).__name__ == "BatchNormalization"


def test_bn_momentum_is_applied():
    model = models.build_model("UNet", (32, 32, 1), base_filters=4, depth=3, bn_momentum=0.8)
    moms = {l.momentum for l in model.layers if type(l).__name__ == "BatchNormalization"}
    assert moms == {0.8}


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown architecture"):
        models.build_model("ResNet", (32, 32, 1))
    with pytest.raises(ValueError, match="divisible"):
        models.build_model("UNet", (36, 36, 1), base_filters=4, depth=4)


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_save_and_load_with_focal_loss(tmp_path, suffix):
    import keras
    from focal_loss import BinaryFocalLoss
    from mitoseg.cell.metrics import keras_soft_jaccard
    model = models.build_model("Attention_UNet", (32, 32, 1), base_filters=4, depth=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=1.0), loss=BinaryFocalLoss(gamma=2),
                  metrics=[keras_soft_jaccard])
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    path = tmp_path / f"m.{suffix}"
    model.save(path)
    for compile in (False, True):
        again = models.load_model(path, compile=compile)
        np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_cli_prints_parameter_counts(capsys):
    assert models.main(["--base-filters", "4", "--depth", "3", "--patch-size", "32"]) == 0
    out = capsys.readouterr().out
    for name in models.MODEL_REGISTRY:
        assert name in out


# Counted from the original study's 224_225_226_models.py (bnsreenu/python_for_microscopists),
# rebuilt outside this repo at its setting: 256x256x1, 64 base filters, 5 levels, BatchNorm on,
# BatchNorm-before-sigmoid head. Literal here so an edit to models.ORIGINAL_PARAMETERS cannot hide drift.
ORIGINAL = {"UNet": 31_401_349, "Attention_UNet": 37_333_513, "Attention_ResUNet": 39_089_097}
AT_THE_ORIGINAL = dict(base_filters=64, depth=5, batch_norm=True, head="bn_sigmoid")


def _biases_dropped_before_batchnorm(model):
    """Filters of our bias-less convs, each checked to feed a BatchNorm (whose shift replaces the bias)."""
    import keras
    convs = [l for l in model.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
    bn_inputs = {id(l.input) for l in model.layers if isinstance(l, keras.layers.BatchNormalization)}
    biasless = [l for l in convs if not l.use_bias]
    assert all(id(l.output) in bn_inputs for l in biasless), "a bias-less conv that no BatchNorm follows"
    return sum(l.filters for l in biasless)


@pytest.mark.parametrize("name", list(ORIGINAL))
def test_parameter_counts_are_the_originals(name):
    model = models.build_model(name, (256, 256, 1), **AT_THE_ORIGINAL)
    dropped = _biases_dropped_before_batchnorm(model)
    assert 0 < dropped < 10_000
    assert model.count_params() + dropped == ORIGINAL[name]
    assert models.ORIGINAL_PARAMETERS[name] == ORIGINAL[name]
    assert f"{model.count_params():,d}" in design.__doc__ and f"{ORIGINAL[name]:,d}" in design.__doc__


def _layers(model, kind):
    return [l for l in model.layers if type(l).__name__ == kind]


def test_original_gate_structure():
    model = models.build_model("Attention_UNet", (64, 64, 1), base_filters=8, depth=4)
    transposed = _layers(model, "Conv2DTranspose")
    assert sorted(l.filters for l in transposed) == [8, 16, 32]   # one per gate, at its level's width
    assert all(l.kernel_size == (3, 3) and l.strides == (1, 1) for l in transposed)
    assert {l.interpolation for l in _layers(model, "UpSampling2D")} == {"nearest"}
    theta = [l for l in _layers(model, "Conv2D") if l.kernel_size == (2, 2)]
    assert len(theta) == 3 and all(l.strides == (2, 2) for l in theta)


def test_legacy_gate_is_an_explicit_option():
    kw = dict(base_filters=8, depth=4)
    legacy = models.build_model("Attention_UNet", (64, 64, 1), attention_gate="legacy", **kw)
    assert not _layers(legacy, "Conv2DTranspose")
    assert "bilinear" in {l.interpolation for l in _layers(legacy, "UpSampling2D")}
    default = models.build_model("Attention_UNet", (64, 64, 1), **kw)
    assert default.count_params() - legacy.count_params() == sum(9 * f * f + f for f in (8, 16, 32))
    with pytest.raises(ValueError, match="attention_gate"):
        models.build_model("Attention_UNet", (64, 64, 1), attention_gate="bilinear", **kw)


def test_original_gate_keeps_its_batchnorm_without_batch_norm():
    model = models.build_model("Attention_UNet", (32, 32, 1), base_filters=4, depth=3, batch_norm=False)
    assert len(_layers(model, "BatchNormalization")) == 2   # one per gate, as in the original


def test_cli_prints_the_originals_counts_beside_ours(capsys):
    assert models.main([]) == 0
    out = capsys.readouterr().out
    for name, count in ORIGINAL.items():
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{count:,d}" in row and row.rstrip().endswith("yes")


def test_gate_is_recorded_and_old_records_still_load(tmp_path):
    from mitoseg.core.config import TrainConfig
    from mitoseg.core.grid import GridConfig, cells
    from mitoseg.core.results import load_results, save_results
    from mitoseg.analysis.summary import build_summary
    from tests.fixtures_results import make_study, record_for
    assert TrainConfig().to_dict()["attention_gate"] == "original"
    with pytest.raises(ValueError, match="attention_gate"):
        TrainConfig(attention_gate="bilinear").validate()
    study = make_study(tmp_path / "s", architectures=("Attention_UNet",), learning_rates=(1e-3,),
                       batch_sizes=(8,), seeds=(1,), history=False)
    cell = cells(GridConfig(architectures=["Attention_UNet"], learning_rates=[1e-3], batch_sizes=[8], seeds=[1]))[0]
    # the cell's own settings, as written before the field existed (a study counts only its own cells)
    old_config = {k: v for k, v in record_for(cell)["config"].items() if k != "attention_gate"}
    path = next(study.glob("exp_*/*_results.json"))
    save_results(path, {**record_for(cell), "config": old_config})   # as written before the field existed
    record = load_results(path)
    assert "attention_gate" not in record["config"]
    assert TrainConfig.from_dict(record["config"]).validate()
    df, _ = build_summary(study)
    assert list(df["status"]) == ["ok"]
