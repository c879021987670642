"""How a cell's model trains in Keras: the tf.data input pipeline, the compiled model, the training
variables built before `fit` (one trace instead of two), the seed and numeric policy, and the core
callbacks `fit` runs with (mitoseg/cell/run.py adds the TensorBoard ones). The cell's life cycle around
it (data, resume, results) is mitoseg/cell/run.py. TensorFlow and Keras are imported inside the
functions, so importing this module is cheap.
"""
from __future__ import annotations

import numpy as np

from mitoseg.cell import metrics, quiet_tf, resume
from mitoseg.core.config import TrainConfig


def start_keras() -> None:
    """Import Keras, with TensorFlow's C++ start-up lines kept out of the cell's log (quiet_tf: a no-op
    when train_one.py has installed it already, as it does before anything imports TensorFlow)."""
    quiet_tf.install()
    import keras  # noqa: F401 - imported here, before anything else of the cell touches TensorFlow


def seed_and_policy(config: TrainConfig) -> None:
    """The cell's seed, optional op determinism and optional mixed precision, before any model exists."""
    import keras
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")


def make_train_dataset(x, y, config: TrainConfig):
    """tf.data: shuffle (seeded), batch, optional flips/rot90 on image and mask together, prefetch.

    Only indices are shuffled; each batch is gathered from `x`/`y` (numpy arrays or the cache's
    memory maps), so the arrays are never copied whole into TensorFlow. The batches are the same
    as shuffling the examples themselves (same seed, same buffer size)."""
    import tensorflow as tf
    n = len(x)
    dtypes = (tf.as_dtype(x.dtype), tf.as_dtype(y.dtype))

    def gather(idx):
        return np.asarray(x[idx]), np.asarray(y[idx])

    def load(idx):
        bx, by = tf.numpy_function(gather, [idx], dtypes, stateful=False)
        bx.set_shape((None,) + tuple(x.shape[1:]))
        by.set_shape((None,) + tuple(y.shape[1:]))
        return bx, by

    ds = tf.data.Dataset.range(n).shuffle(n, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if config.augment:  # per example, so every patch of a batch gets its own transform
        def augment(img, msk):
            both = tf.concat([img, msk], axis=-1)
            k = tf.random.uniform([], 0, 4, dtype=tf.int32)
            both = tf.image.rot90(both, k)
            both = tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.image.flip_left_right(both), lambda: both)
            return both[..., :-1], both[..., -1:]
        ds = ds.unbatch().map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(config.batch_size)
        # unbatch() makes the length unknown: Keras would then run into the end of the data and warn
        # "Your input ran out of data" every epoch. The batch count is unchanged, so state it.
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-n // config.batch_size)))
    return ds.prefetch(tf.data.AUTOTUNE)


def build_compiled_model(config: TrainConfig):
    """The cell's model, compiled as every cell trains it: Adam with gradient-norm clipping, binary
    focal loss, and the soft Jaccard and thresholded IoU shown per batch."""
    import keras
    from focal_loss import BinaryFocalLoss

    from mitoseg.cell.models import build_model
    p = config.patch_size
    model = build_model(config.architecture, (p, p, config.input_channels), base_filters=config.base_filters,
                        depth=config.depth, dropout=config.dropout, batch_norm=config.batch_norm,
                        bn_momentum=config.bn_momentum, head=config.head,
                        attention_gate=config.attention_gate)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate, clipnorm=config.clipnorm),
                  loss=BinaryFocalLoss(gamma=config.focal_gamma),
                  metrics=[metrics.keras_soft_jaccard, metrics.keras_binary_iou(config.threshold)],
                  jit_compile=config.jit_compile)
    return model


def build_fit_variables(model, x_example, y_example) -> None:
    """Create every variable `fit` would create on its first step (optimizer slots, loss and metric
    trackers), eagerly on one example, then reset the metrics.

    Keras' TensorFlow trainer (without a distribution strategy) creates them inside the first trace
    of the train function; tf.function then traces the whole train step a second time because
    variables appeared. Building them first leaves one trace, about halving the time from `fit` to
    the first finished step of a demo cell (docs/benchmarks.md, Speed; `bench/bench_startup.py`)."""
    x = np.asarray(x_example, dtype="float32")
    y = np.asarray(y_example, dtype="float32")
    y_pred = model(x, training=False)   # training=False: BatchNorm statistics stay untouched
    model.compute_loss(x=x, y=y, y_pred=y_pred)   # no `training=`: Keras 3.3 lacks it; its default ignores it
    model.compute_metrics(x, y, y_pred, sample_weight=None)
    model.optimizer.build(model.trainable_variables)
    model.reset_metrics()


def fit_callbacks(validation, config: TrainConfig, backup_dir) -> list:
    """The callbacks `fit` runs with, the validation first so the others see its scores: learning-rate
    reduction on val_loss, stop on a NaN loss, and the resume backup of every finished epoch."""
    import keras
    return [
        validation,
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.reduce_lr_factor,
                                          patience=config.reduce_lr_patience, min_lr=config.min_lr, verbose=0),
        keras.callbacks.TerminateOnNaN(),
        resume.make_callback(backup_dir, lambda: validation.partial_epoch),
    ]
