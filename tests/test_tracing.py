"""The train step is traced once per cell: `build_fit_variables` creates the optimizer, loss and
metric variables before `fit`, so tf.function need not trace the whole step a second time (the
larger part of a demo cell's start-up; see bench/bench_startup.py). Not a timing test: it counts
traces, and the control case shows the count can fail."""
import numpy as np
import pytest

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)

keras = pytest.importorskip("keras")


def compiled_tiny_model():
    from mitoseg.core.config import TrainConfig
    from mitoseg.cell.keras_setup import build_compiled_model
    keras.utils.set_random_seed(0)
    return build_compiled_model(TrainConfig(patch_size=32, base_filters=4, depth=3))


def fit_and_count_traces(model, x, y) -> int:
    """Python runs `train_step` only while tf.function traces it; the graph runs without it."""
    traces = []
    original = model.train_step

    def counting_train_step(data):
        traces.append(1)
        return original(data)
    model.train_step = counting_train_step
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)   # 2 steps
    return len(traces)


@pytest.fixture(scope="module")
def fitted():
    """The same seed and data fitted for one epoch without and with the prebuild: each a model build,
    a trace and a fit, shared by the three tests below (this module also runs in the oldest stack)."""
    from mitoseg.cell.keras_setup import build_fit_variables
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 1), dtype=np.float32)
    y = (rng.random((8, 32, 32, 1)) > 0.8).astype(np.float32)
    plain = compiled_tiny_model()
    plain_traces = fit_and_count_traces(plain, x, y)
    built = compiled_tiny_model()
    build_fit_variables(built, x[:1], y[:1])
    state = dict(optimizer_built=built.optimizer.built,
                 metric_sum=sum(float(np.sum(np.abs(v.numpy()))) for m in built.metrics for v in m.variables))
    built_traces = fit_and_count_traces(built, x, y)
    return dict(plain=plain, plain_traces=plain_traces, built=built, built_traces=built_traces, **state)


def test_without_prebuild_keras_traces_the_step_twice(fitted):
    # The control: if Keras ever builds these variables itself, this fails and the helper can go.
    assert fitted["plain_traces"] == 2


def test_build_fit_variables_leaves_one_trace(fitted):
    assert fitted["optimizer_built"]
    assert fitted["metric_sum"] == 0, "metric state from the build example must be reset before fit"
    assert fitted["built_traces"] == 1


def test_prebuild_does_not_change_training(fitted):
    """Same seed, same data: identical weights after one epoch with and without the prebuild (it
    runs the model in inference mode and creates zeroed optimizer slots, nothing else)."""
    for a, b in zip(fitted["plain"].get_weights(), fitted["built"].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
