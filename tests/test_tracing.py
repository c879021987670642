"""The train step is traced once per cell: `build_fit_variables` creates the optimizer, loss and
metric variables before `fit`, so tf.function need not trace the whole step a second time (the
larger part of a demo cell's start-up; see bench/bench_startup.py). Not a timing test: it counts
traces, and the control case shows the count can fail."""
import numpy as np
import pytest

pytestmark = pytest.mark.oldest   # also run in the oldest supported stack (run_tests.sh)

keras = pytest.importorskip("keras")


def compiled_tiny_model():
    from mitoseg.config import TrainConfig
    from mitoseg.training import build_compiled_model
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
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)   # 4 steps
    return len(traces)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 1), dtype=np.float32)
    y = (rng.random((8, 32, 32, 1)) > 0.8).astype(np.float32)
    return x, y


def test_without_prebuild_keras_traces_the_step_twice(batch):
    # The control: if Keras ever builds these variables itself, this fails and the helper can go.
    assert fit_and_count_traces(compiled_tiny_model(), *batch) == 2


def test_build_fit_variables_leaves_one_trace(batch):
    from mitoseg.training import build_fit_variables
    model = compiled_tiny_model()
    build_fit_variables(model, batch[0][:1], batch[1][:1])
    assert model.optimizer.built
    assert all(float(np.sum(np.abs(v.numpy()))) == 0 for m in model.metrics for v in m.variables), \
        "metric state from the build example must be reset before fit"
    assert fit_and_count_traces(model, *batch) == 1


def test_prebuild_does_not_change_training(batch):
    """Same seed, same data: identical weights after one epoch with and without the prebuild (it
    runs the model in inference mode and creates zeroed optimizer slots, nothing else)."""
    from mitoseg.training import build_fit_variables
    plain = compiled_tiny_model()
    plain.fit(*batch, batch_size=4, epochs=1, verbose=0, shuffle=False)
    built = compiled_tiny_model()
    build_fit_variables(built, batch[0][:1], batch[1][:1])
    built.fit(*batch, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(plain.get_weights(), built.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
