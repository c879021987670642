"""Metrics on tiny hand-computed arrays, the empty-mask rule, baselines, and the focal loss."""
import numpy as np
import pytest

from mitoseg.cell import metrics

TRUTH = np.array([[1, 1, 0, 0],
                  [1, 0, 0, 0]])
PROB = np.array([[0.9, 0.4, 0.6, 0.1],
                 [0.7, 0.2, 0.0, 0.3]])
# at 0.5: predicted = (0,0),(0,2),(1,0) -> tp=2 ((0,0),(1,0)), fp=1 ((0,2)), fn=1 ((0,1))


def test_thresholded_scores_by_hand():
    assert metrics.foreground_iou(TRUTH, PROB) == pytest.approx(2 / 4)
    assert metrics.foreground_dice(TRUTH, PROB) == pytest.approx(4 / 6)
    precision, recall = metrics.precision_recall(TRUTH, PROB)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 3)


def test_threshold_is_inclusive_and_configurable():
    assert metrics.foreground_iou([1, 0], [0.5, 0.49]) == 1.0
    assert metrics.foreground_iou(TRUTH, PROB, threshold=0.35) == pytest.approx(3 / 4)  # adds (0,1); (1,3)=0.3 no


def test_soft_jaccard_matches_original_formula():
    inter = (0.9 + 0.4 + 0.7)
    expected = (inter + 1) / (TRUTH.sum() + PROB.sum() - inter + 1)
    assert metrics.soft_jaccard(TRUTH, PROB) == pytest.approx(expected)


def test_empty_mask_rule():
    empty = np.zeros((3, 3))
    assert metrics.foreground_iou(empty, empty) == 1.0          # nothing to find, nothing found
    assert metrics.foreground_dice(empty, empty) == 1.0
    assert metrics.precision_recall(empty, empty) == (1.0, 1.0)
    some = empty.copy(); some[0, 0] = 1
    assert metrics.foreground_iou(some, empty) == 0.0           # missed everything
    assert metrics.foreground_iou(empty, some) == 0.0           # found something that is not there
    assert metrics.precision_recall(empty, some)[0] == 0.0


def test_trivial_baselines_equal_foreground_fraction():
    truth = np.zeros((10, 10)); truth[0, :7] = 1   # 7 of 100 pixels
    base = metrics.trivial_baselines(truth)
    assert base["foreground_fraction"] == pytest.approx(0.07)
    assert base["all_foreground_jaccard"] == pytest.approx(0.07)   # the broken study's "best" score
    assert base["all_background_jaccard"] == 0.0
    assert base["all_foreground_dice"] == pytest.approx(2 * 7 / 107)


def test_soft_jaccard_cannot_tell_a_constant_model_apart():
    """Why the headline is thresholded: a constant 0.5 model and a real one can score alike softly."""
    rng = np.random.default_rng(0)
    truth = (rng.random((64, 64)) < 0.07).astype(float)
    constant = np.full(truth.shape, 0.5)
    assert metrics.foreground_iou(truth, constant) == pytest.approx(truth.mean())  # all foreground at 0.5
    assert metrics.soft_jaccard(truth, constant) < 0.1


def test_score_all_and_best_threshold():
    scores = metrics.score_all(TRUTH, PROB)
    assert scores["iou"] == pytest.approx(0.5)
    assert scores["predicted_foreground_fraction"] == pytest.approx(3 / 8)
    thr, iou = metrics.best_threshold(TRUTH, PROB)
    assert iou >= scores["iou"]
    assert metrics.foreground_iou(TRUTH, PROB, thr) == pytest.approx(iou)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.foreground_iou(np.zeros(4), np.zeros(5))


def test_numpy_focal_loss_by_hand():
    # p_t = 0.9 for a positive at p=0.9: -(0.1)^2 * log(0.9)
    assert metrics.focal_loss([1], [0.9]) == pytest.approx(-(0.1 ** 2) * np.log(0.9))
    assert metrics.focal_loss([0], [0.9]) == pytest.approx(-(0.9 ** 2) * np.log(0.1))


def test_focal_loss_package_matches_numpy_formula():
    from focal_loss import BinaryFocalLoss
    rng = np.random.default_rng(1)
    y = (rng.random((4, 8, 8, 1)) < 0.3).astype("float32")
    p = rng.uniform(0.01, 0.99, size=y.shape).astype("float32")
    package = float(BinaryFocalLoss(gamma=2)(y, p))
    assert package == pytest.approx(metrics.focal_loss(y, p, gamma=2), rel=1e-4)


def test_keras_metrics_match_numpy():
    rng = np.random.default_rng(2)
    y = (rng.random((2, 8, 8, 1)) < 0.3).astype("float32")
    p = rng.random(y.shape).astype("float32")
    assert float(metrics.keras_soft_jaccard(y, p)) == pytest.approx(metrics.soft_jaccard(y, p), rel=1e-5)
    m = metrics.keras_binary_iou()
    m.update_state(y, p)
    assert float(m.result()) == pytest.approx(metrics.foreground_iou(y, p), rel=1e-5)
