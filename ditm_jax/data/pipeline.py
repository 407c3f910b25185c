"""Input pipeline: B images x K captions per step, deterministic given (seed, step).

Which images and captions a step sees is a pure function of (seed, step): image
order is a fresh permutation per epoch, seeded by (seed, epoch), and the K captions
of each image are drawn without replacement, seeded by (seed, step). So a resumed
run sees exactly the batches of an uninterrupted one, with nothing to replay, and
every process builds only its own rows of the global batch.
"""

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class Split:
  """A split in memory: per-image features, per-caption tokens and descriptiveness."""
  features: np.ndarray  # (N, R, F) float32 (an array or a read-only memmap)
  tokens: np.ndarray  # (N * C, L) int32, image-major
  lengths: np.ndarray  # (N * C,) int32 valid tokens per caption
  desc: np.ndarray  # (N * C,) float32 descriptiveness in [0, 1]
  image_ids: np.ndarray  # (N,) int64
  captions: list  # (N * C,) caption texts
  captions_per_image: int  # C

  @property
  def num_images(self):
    return len(self.image_ids)


def sample(seed, step, num_images, batch_size, captions_per_image, k):
  """Image indices (B,) and caption slots (B, K) of global step `step`."""
  pos = step * batch_size + np.arange(batch_size)
  epoch, within = np.divmod(pos, num_images)
  images = np.empty(batch_size, np.int64)
  for e in np.unique(epoch):  # at most two epochs meet in one batch
    perm = np.random.default_rng([seed, 0, e]).permutation(num_images)
    images[epoch == e] = perm[within[epoch == e]]
  noise = np.random.default_rng([seed, 1, step]).random((batch_size, captions_per_image))
  slots = np.argsort(noise, axis=1)[:, :k]
  return images, slots


def region_keep_mask(seed, step, batch_size, num_regions, drop_rate):
  """(B, R) bool: regions kept after dropping each with probability `drop_rate`."""
  if drop_rate <= 0:
    return np.ones((batch_size, num_regions), bool)
  drop = np.random.default_rng([seed, 2, step]).random((batch_size, num_regions)) < drop_rate
  drop[:, 0] &= ~drop.all(axis=1)  # keep at least one region
  return ~drop


def make_batch(split, images, slots, region_mask, *, max_tokens):
  """Numpy batch for the given images, caption slots (B, K) and region masks."""
  c = split.captions_per_image
  caps = (images[:, None] * c + slots).reshape(-1)  # image-major
  regions = np.asarray(split.features[images], np.float32)
  tokens = split.tokens[caps, :max_tokens]
  lengths = np.minimum(split.lengths[caps], max_tokens)
  return {
      "regions": regions,
      "region_mask": region_mask,
      "tokens": tokens.astype(np.int32),
      "token_mask": np.arange(tokens.shape[1])[None, :] < lengths[:, None],
      "desc": split.desc[caps].astype(np.float32),
      "image_ids": split.image_ids[images].astype(np.int32),
  }


def host_rows(global_rows, process_index, process_count):
  """This process's contiguous share of `global_rows` rows."""
  per = global_rows // process_count
  return slice(process_index * per, (process_index + 1) * per)


def train_dataset(split, config, start_step, process_index=0, process_count=1):
  """tf.data pipeline of this host's part of the batches for steps start..total."""
  b, k = config.batch_size, config.data.captions_per_image
  if k > split.captions_per_image:
    raise ValueError(f"config.data.captions_per_image={k} exceeds the {split.captions_per_image} "
                     "captions per image in the data; lower it")
  rows = host_rows(b, process_index, process_count)
  probe = _host_batch(split, config, 0, rows)
  names = sorted(probe)

  def build(step):
    batch = _host_batch(split, config, int(step), rows)
    return [batch[n] for n in names]

  def to_dict(*arrays):
    return dict(zip(names, arrays))

  ds = tf.data.Dataset.range(start_step, config.total_steps)
  ds = ds.map(lambda s: tf.numpy_function(build, [s], [tf.as_dtype(probe[n].dtype) for n in names],
                                          stateful=False),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.map(to_dict).prefetch(config.data.prefetch)
  return ds


def _host_batch(split, config, step, rows):
  images, slots = sample(config.seed, step, split.num_images, config.batch_size,
                         split.captions_per_image, config.data.captions_per_image)
  keep = region_keep_mask(config.seed, step, config.batch_size, split.features.shape[1],
                          config.data.region_drop)
  return make_batch(split, images[rows], slots[rows], keep[rows],
                    max_tokens=config.data.max_tokens)


def eval_arrays(split, max_tokens):
  """All images (with full region masks) and all captions of a split, as numpy."""
  regions = np.asarray(split.features, np.float32)
  tokens = split.tokens[:, :max_tokens]
  lengths = np.minimum(split.lengths, max_tokens)
  return (
      {"regions": regions, "region_mask": np.ones(regions.shape[:2], bool)},
      {"tokens": tokens, "token_mask": np.arange(tokens.shape[1])[None, :] < lengths[:, None]},
  )
