"""Model shapes, registry, heads, channels, parameter counts, and save/load with the focal loss."""
import numpy as np
import pytest

import models

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
    counts = models.parameter_counts(base_filters=4, depth=3, input_shape=(32, 32, 1))
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
    from mitoseg.metrics import keras_soft_jaccard
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
