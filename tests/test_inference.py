"""Tiled whole-slice prediction (mitoseg.cell.inference): blending, edges, TTA, the `test` scores.

Stub models (objects with .predict) keep these fast and free of TensorFlow; the same blending with a
real tiny Keras model is tested in tests/test_predict.py.
"""
import numpy as np
import pytest

from mitoseg.cell import inference as inf
from mitoseg.cell import metrics

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)


class Identity:
    """Returns its input: blended output must equal the image everywhere, seams included."""

    def __init__(self):
        self.calls = []

    def predict(self, x, batch_size=8, verbose=0):
        self.calls.append(x.shape)
        return np.array(x[..., :1], dtype=np.float32)


class Constant:
    def __init__(self, value):
        self.value = value

    def predict(self, x, batch_size=8, verbose=0):
        return np.full(x.shape[:3] + (1,), self.value, np.float32)


class Orientation:
    """Not equivariant: output depends on the absolute tile orientation (a ramp along x)."""

    def predict(self, x, batch_size=8, verbose=0):
        ramp = np.linspace(0, 1, x.shape[2], dtype=np.float32)
        return np.broadcast_to(ramp[None, None, :, None], x.shape[:3] + (1,)).copy()


def _image(z, h, w, seed=0):
    return np.random.default_rng(seed).random((z, h, w), dtype=np.float32)


@pytest.mark.parametrize("shape,patch,overlap", [
    ((2, 64, 64), 32, 0.5),      # exact multiple
    ((1, 70, 53), 32, 0.5),      # neither side a multiple of the stride: last tile snapped to the edge
    ((1, 33, 97), 32, 0.25),
    ((2, 48, 48), 48, 0.5),      # one tile per slice
    ((1, 50, 41), 16, 0.0),      # no overlap
])
def test_identity_model_reproduces_image_exactly(shape, patch, overlap):
    img = _image(*shape)
    out = inf.predict_slices(Identity(), img, patch, overlap=overlap)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, img, atol=1e-6, rtol=0)


def test_identity_with_tta_and_three_channels():
    img = _image(1, 45, 61, seed=3)
    np.testing.assert_allclose(inf.predict_slices(Identity(), img, 16, tta=True), img, atol=1e-6)
    np.testing.assert_allclose(inf.predict_slices(Identity(), img, 16, channels=3), img, atol=1e-6)


def test_single_2d_slice_and_constant_model():
    out = inf.predict_slices(Constant(0.3), _image(1, 40, 40)[0], 16)
    assert out.shape == (1, 40, 40)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_tiles_cover_every_pixel_and_touch_edges():
    for size, patch, stride in [(70, 32, 16), (32, 32, 16), (100, 30, 7), (31, 8, 8)]:
        starts = inf._starts(size, patch, stride)
        assert starts[0] == 0 and starts[-1] == size - patch
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered.all()
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_slice_smaller_than_patch_is_an_error():
    with pytest.raises(ValueError, match="smaller than the patch size"):
        inf.predict_slices(Identity(), _image(1, 20, 40), 32)
    with pytest.raises(ValueError, match="overlap"):
        inf.predict_slices(Identity(), _image(1, 40, 40), 16, overlap=1.0)


@pytest.mark.parametrize("k", range(8))
def test_dihedral_undo_is_inverse(k):
    x = np.random.default_rng(k).random((3, 5, 5, 2))
    np.testing.assert_array_equal(inf._undo_dihedral(inf._dihedral(x, k), k), x)


def test_dihedral_transforms_are_the_eight_distinct_symmetries():
    x = np.arange(16, dtype=float).reshape(1, 4, 4, 1)
    seen = {inf._dihedral(x, k).tobytes() for k in range(8)}
    assert len(seen) == 8


def test_tta_undoes_each_transform_before_averaging():
    # An orientation-dependent model's TTA output is the mean over the 8 symmetries of its (undone)
    # output; for a ramp along x that mean is the same at every pixel of a tile (0.5).
    img = _image(1, 32, 32)
    plain = inf.predict_slices(Orientation(), img, 32)
    np.testing.assert_allclose(plain[0, 0], np.linspace(0, 1, 32), atol=1e-6)
    tta = inf.predict_slices(Orientation(), img, 32, tta=True)
    np.testing.assert_allclose(tta, 0.5, atol=1e-6)


def test_tta_calls_model_eight_times_per_slice():
    m = Identity()
    inf.predict_slices(m, _image(2, 32, 48), 32, tta=True)
    assert len(m.calls) == 16


def test_progress_callback():
    seen = []
    inf.predict_slices(Identity(), _image(3, 16, 16), 16, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_evaluate_volume_fields_and_values():
    rng = np.random.default_rng(0)
    masks = (rng.random((2, 40, 56)) < 0.2).astype(np.uint8)
    # "images" that are the masks: an identity model is then a perfect segmenter
    res = inf.evaluate_volume(Identity(), masks.astype(np.float32), masks, inf.Tiling(16), val_threshold=0.3)
    for key in ("iou", "dice", "precision", "recall", "soft_jaccard", "predicted_foreground_fraction",
                "val_threshold", "iou_at_val_threshold", "all_foreground_jaccard", "foreground_fraction",
                "n_slices", "tta", "threshold", "patch_size", "overlap"):
        assert key in res, key
    assert res["iou"] == pytest.approx(1.0) and res["dice"] == pytest.approx(1.0)
    assert res["iou_at_val_threshold"] == pytest.approx(1.0)
    assert res["n_slices"] == 2 and res["tta"] is False and res["val_threshold"] == 0.3
    assert res["all_foreground_jaccard"] == pytest.approx(metrics.trivial_baselines(masks)["all_foreground_jaccard"])
    # all-foreground model scores exactly the baseline; without val threshold the field is None
    allfg = inf.evaluate_volume(Constant(0.9), masks.astype(np.float32), masks, inf.Tiling(16))
    assert allfg["iou"] == pytest.approx(allfg["all_foreground_jaccard"])
    assert allfg["iou_at_val_threshold"] is None and allfg["predicted_foreground_fraction"] == 1.0
    scores, probs = inf.evaluate_volume(Constant(0.1), masks.astype(np.float32), masks, inf.Tiling(16, tta=True),
                                        return_probs=True)
    assert probs.shape == masks.shape and scores["iou"] == 0.0 and scores["tta"] is True


def test_evaluate_volume_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        inf.evaluate_volume(Identity(), np.zeros((1, 32, 32)), np.zeros((1, 32, 16)), inf.Tiling(16))


def test_model_patch_size_and_channels():
    class Fixed:
        input_shape = (None, 64, 64, 3)

    class Free:
        input_shape = (None, None, None, 1)

    class Rect:
        input_shape = (None, 64, 32, 1)

    assert inf.model_patch_size(Fixed()) == 64 and inf.model_channels(Fixed()) == 3
    assert inf.model_patch_size(Free(), default=128) == 128 and inf.model_channels(Free()) == 1
    with pytest.raises(ValueError, match="not square"):
        inf.model_patch_size(Rect())
