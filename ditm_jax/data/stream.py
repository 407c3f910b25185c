"""The streamed training source (`RecordSplit`): a prepared directory's TFRecord shards.

What a step sees is a pure function of (seed, process, step), with stateless TensorFlow
randomness, so the step alone is the data position saved with a checkpoint (rules in `plan`):

- each process reads its own shards (`plan.host_shards`) and sees its own epochs of those
  images, in a shard order permuted per epoch by (seed, process, epoch);
- the shard stream is cut into windows of `config.data.shuffle_window` images, each fully
  permuted by (seed, process, epoch, window) (a shuffle buffer that can be restarted);
- step s takes the images s*B..(s+1)*B-1 of that stream (B = batch_size / P), its K of C
  captions, region drop and token drop drawn from (seed, process, s).

A resumed run at step s computes its epoch and offset, skips whole shards by their counts
in the manifest, reads at most one shard prefix plus one window to re-enter the stream, and
then yields exactly the batches an uninterrupted run would; no iterator state is stored.
"""
import functools
import os

import tensorflow as tf

from ditm_jax.data import augment
from ditm_jax.data import images
from ditm_jax.data import plan
from ditm_jax.data import records
from ditm_jax.data import tfdata

_FILE_ORDER, _WINDOW, _SLOTS, _REGION_DROP, _TOKEN_DROP = range(5)  # random streams


def _fold(seed, *values):
  for v in values:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(v, tf.int64))
  return seed


class RecordSplit:
  """The training split of a prepared directory, streamed from its TFRecord shards."""

  def __init__(self, directory, manifest, name):
    self.directory = directory
    self.manifest = manifest
    self.name = name
    info = manifest["splits"][name]
    self.files = [os.path.join(directory, f) for f in info["shards"]]
    self.counts = list(info["shard_counts"])
    self.num_images = info["num_images"]
    self.captions_per_image = manifest["captions_per_image"]
    self.num_regions = manifest["feature_shape"][0] if manifest["image"] == "regions" else None

  def caption_sum_counts(self, max_tokens):
    """`packing_stats.caption_sum_counts` as `prepare` recorded it (None in older manifests)."""
    counts = self.manifest["splits"][self.name].get("caption_sum_counts")
    return counts if max_tokens == self.manifest["max_tokens"] else None

  def batches(self, config, start_step, process_index=0, process_count=1):
    """This host's numpy batches of steps start_step..config.total_steps."""
    return record_dataset(self, config, start_step, process_index,
                          process_count).as_numpy_iterator()

  def step_image_ids(self, config, step):
    """Image ids of process 0's rows at global step `step` (to name a batch that failed)."""
    import jax  # pylint: disable=g-import-not-at-top
    ds = record_dataset(self, config, step, 0, jax.process_count())
    return next(ds.take(1).as_numpy_iterator())["image_ids"]


def record_dataset(split, config, start_step, process_index=0, process_count=1):
  """tf.data of this host's batches for steps start_step..total_steps (see above)."""
  d = config.data
  if config.batch_size % process_count:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                     f"{process_count} processes")
  if len(split.files) < process_count:
    raise ValueError(f"the {split.name} split of {split.directory} has {len(split.files)} "
                     f"shard(s), fewer than the {process_count} processes; prepare again with "
                     f"--config.data.train_shards={process_count} or more")
  k, c = d.captions_per_image, split.captions_per_image
  if k > c:
    raise ValueError(f"config.data.captions_per_image={k} exceeds the {c} captions per image "
                     "in the data; lower it")
  b = plan.rows_per_host(config.batch_size, process_count)
  files = plan.host_shards(split.files, process_index, process_count)
  counts = plan.host_shards(split.counts, process_index, process_count)
  n = sum(counts)
  window = max(1, min(d.shuffle_window, n))
  base = tf.constant([config.seed, process_index], tf.int64)
  host_files = tf.constant(files)
  host_counts = tf.constant(counts, tf.int64)

  def epoch(e, skip):
    """The shuffled records of epoch `e`, less the first `skip`, in windows."""
    order = tf.random.experimental.stateless_shuffle(
        tf.range(len(files), dtype=tf.int64), seed=_fold(base, _FILE_ORDER, e))
    names, sizes = tf.gather(host_files, order), tf.gather(host_counts, order)
    first_window = skip // window
    first = first_window * window  # records before the first window read
    ends = tf.cumsum(sizes)
    shard = tf.searchsorted(ends, tf.reshape(first, [1]), side="right")[0]
    within = first - (ends[shard] - sizes[shard])
    serialized = tf.data.TFRecordDataset(names[shard:], buffer_size=8 << 20).skip(within)
    windows = serialized.batch(window).enumerate(start=first_window)

    def shuffle(j, w):
      w = tf.random.experimental.stateless_shuffle(w, seed=_fold(base, _WINDOW, e, j))
      return w[tf.where(j == first_window, skip - first, 0):]
    return windows.map(shuffle)

  first_epoch, offset = plan.epoch_offset(plan.first_row(start_step, b), n)
  last_epoch, _ = plan.epoch_offset(max(plan.first_row(config.total_steps, b), 1) - 1, n)
  epochs = tf.data.Dataset.range(first_epoch, max(last_epoch, first_epoch) + 1)
  stream = epochs.map(lambda e: (e, tf.where(e == first_epoch, tf.constant(offset, tf.int64),
                                             tf.constant(0, tf.int64)))).flat_map(epoch)
  batches = stream.rebatch(b, drop_remainder=True)
  steps = tf.data.Dataset.range(start_step, config.total_steps)
  to_batch = functools.partial(_record_batch, manifest=split.manifest, config=config, base=base)
  ds = tf.data.Dataset.zip((steps, batches)).map(to_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                                 deterministic=True)
  return tfdata.untuned(ds.prefetch(d.prefetch))


def _record_batch(step, serialized, *, manifest, config, base):
  """Parsed training batch of step `step`: K of C captions, region and token drop."""
  d = config.data
  ex = tf.io.parse_example(serialized, records.feature_spec(manifest))
  b = tf.shape(serialized)[0]
  c, length, k = manifest["captions_per_image"], manifest["max_tokens"], d.captions_per_image
  seed = _fold(base, step)
  noise = tf.random.stateless_uniform(tf.stack([b, c]), seed=_fold(seed, _SLOTS))
  slots = plan.caption_slots(noise, k)  # (B, K), distinct
  tokens = tf.gather(tf.reshape(ex["tokens"], [-1, c, length]), slots, batch_dims=1)
  lengths = tf.reshape(tf.gather(ex["lengths"], slots, batch_dims=1), [-1])
  tokens, lengths = augment.token_drop(tf.reshape(tokens, [-1, length]), lengths, d.token_drop,
                                       _fold(seed, _TOKEN_DROP), manifest["tokenizer"])
  batch = {
      "tokens": tf.cast(tokens, tf.int32),
      "token_mask": tf.range(length)[None, :] < tf.cast(lengths, tf.int32)[:, None],
      "desc": tf.reshape(tf.gather(ex["desc"], slots, batch_dims=1), [-1]),
      "image_ids": tf.cast(ex["image_id"], tf.int32),
  }
  if manifest["image"] == "pixels":
    batch["pixels"] = images.decode_images(ex["jpeg"], d.image_size)
  else:
    r, f = manifest["feature_shape"]
    batch["regions"] = tf.reshape(tf.io.decode_raw(ex["regions"], tf.float32), [-1, r, f])
    uniforms = tf.random.stateless_uniform(tf.stack([b, r]), seed=_fold(seed, _REGION_DROP))
    batch["region_mask"] = plan.region_keep(uniforms, d.region_drop)
  return batch
