"""The (seed, step) sampling plan: the rules every training source follows, written once.

A step's batch is a pure function of (seed, step), so a resumed run sees exactly the batches
of an uninterrupted one with nothing to replay. The two sources draw their random numbers
differently (`memory`: NumPy generators; `stream`: stateless TensorFlow), and published runs
depend on those numbers, so what they share is the rules that turn numbers into a batch:

- step s reads rows s*B..(s+1)*B-1 of an endless stream of epochs of N images (`first_row`,
  `epoch_offset`);
- an image's K captions are the K of its C whose random keys are largest (`caption_slots`);
- each region drops with probability p, and region 0 stays when all of an image's regions
  drop (`region_keep`; `packing_stats.kept_regions_pmf` is its distribution);
- every process builds only its share of the batch (`rows_per_host`, `host_rows`,
  `host_shards`).

The array rules take NumPy arrays or TensorFlow tensors and give the same numbers for both;
this module itself needs NumPy only.
"""
import numpy as np


def first_row(step, rows_per_step):
  """Index of the first row of step `step` in its source's endless stream of rows."""
  return step * rows_per_step


def epoch_offset(row, num_images):
  """(epoch, position within it) of stream row `row` (ints or arrays): N rows per epoch."""
  return divmod(row, num_images)


def caption_slots(keys, k):
  """(B, K) indices of the K largest of each row of `keys` (B, C), largest first: distinct."""
  if isinstance(keys, np.ndarray):
    return np.argsort(-keys, axis=1)[:, :k]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.math.top_k(keys, k=k).indices


def region_keep(uniforms, rate):
  """(B, R) bool: region r of image b is kept unless uniforms[b, r] < rate.

  When every region of an image would drop, region 0 stays, so no image is empty.
  """
  drop = uniforms < rate
  if isinstance(drop, np.ndarray):
    every = drop.all(axis=1, keepdims=True)
    first = np.arange(drop.shape[1]) == 0
  else:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    every = tf.reduce_all(drop, axis=1, keepdims=True)
    first = tf.range(tf.shape(drop)[1]) == 0
  return ~drop | (first & every)


def rows_per_host(global_rows, process_count):
  """Rows of a step that each of `process_count` processes builds."""
  return global_rows // process_count


def host_rows(global_rows, process_index, process_count):
  """This process's contiguous share of `global_rows` rows."""
  per = rows_per_host(global_rows, process_count)
  return slice(process_index * per, (process_index + 1) * per)


def host_shards(shards, process_index, process_count):
  """This process's shards of a list: shard j goes to process j mod P."""
  return shards[process_index::process_count]
