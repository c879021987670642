"""cell: one training run, one exp_ folder. Its life from top to bottom (run): the lock (lock), its
data prepared in one call (inputs), the Keras set-up (keras_setup: tf.data, compiled model, the
variables fit needs), the architectures (models), the epoch end (epoch_end: validation, best model,
history CSV, early stop), resume (resume), the test scores (inference, metrics) and its record
(record), its log (log), TensorBoard (tensorboard_log), the recorded environment (environment), and
the pre-flight trial of one step per architecture (preflight).

May import: core, data. Needs TensorFlow/Keras (quiet_tf and the lock need only the standard library)."""
