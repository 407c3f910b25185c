"""tf.data options shared by the training and evaluation streams."""
import tensorflow as tf


def untuned(ds):
  """`ds` without tf.data's autotuning thread (every stream here is read to its end).

  Destroying a finished iterator waits for that thread, which held up process exit in
  multi-process runs; the maps keep num_parallel_calls=AUTOTUNE, which needs no tuner.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)
