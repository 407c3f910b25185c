"""The in-memory training source (`Split`, the demo) and a split's evaluation arrays.

Which images and captions a step sees follows `plan`: image order is a fresh permutation per
epoch, seeded by (seed, epoch), and the K captions of each image and its region drop are drawn
from (seed, step), all with NumPy generators. Every process builds only its rows of the global
batch.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from ditm_jax.data import packing_stats
from ditm_jax.data import plan
from ditm_jax.data import tfdata

_PERMUTATION, _SLOTS, _REGION_DROP = range(3)  # NumPy random streams: [seed, stream, index]


@dataclasses.dataclass
class Split:
  """A split in memory: per-image features, per-caption tokens and descriptiveness."""
  features: np.ndarray  # (N, R, F) float32 regions (array or memmap), or (N, S, S, 3) uint8 pixels
  tokens: np.ndarray  # (N * C, L) int32, image-major
  lengths: np.ndarray  # (N * C,) int32 valid tokens per caption
  desc: np.ndarray  # (N * C,) float32 descriptiveness in [0, 1]
  image_ids: np.ndarray  # (N,) int64
  captions: list  # (N * C,) caption texts
  captions_per_image: int  # C

  image_key: str = "regions"  # batch key of `features`: 'regions' (N, R, F) or 'pixels'

  @property
  def num_images(self):
    return len(self.image_ids)

  @property
  def num_regions(self):
    """Regions per image (None for pixels)."""
    return self.features.shape[1] if self.image_key == "regions" else None

  def caption_sum_counts(self, max_tokens):
    """`packing_stats.caption_sum_counts` of this split's caption lengths."""
    return packing_stats.caption_sum_counts(
        self.lengths.reshape(-1, self.captions_per_image), max_tokens)

  def batches(self, config, start_step, process_index=0, process_count=1):
    """This host's numpy batches of steps start_step..config.total_steps."""
    return train_dataset(self, config, start_step, process_index,
                         process_count).as_numpy_iterator()

  def step_image_ids(self, config, step):
    """The image ids of global step `step` (to name a batch that failed)."""
    images, _ = sample(config.seed, step, self.num_images, config.batch_size,
                       self.captions_per_image, config.data.captions_per_image)
    return self.image_ids[images]


def sample(seed, step, num_images, batch_size, captions_per_image, k):
  """Image indices (B,) and caption slots (B, K) of global step `step`."""
  rows = plan.first_row(step, batch_size) + np.arange(batch_size)
  epoch, within = plan.epoch_offset(rows, num_images)
  images = np.empty(batch_size, np.int64)
  for e in np.unique(epoch):  # at most two epochs meet in one batch
    perm = np.random.default_rng([seed, _PERMUTATION, e]).permutation(num_images)
    images[epoch == e] = perm[within[epoch == e]]
  noise = np.random.default_rng([seed, _SLOTS, step]).random((batch_size, captions_per_image))
  return images, plan.caption_slots(-noise, k)  # keys -u: the captions of smallest u


def region_keep_mask(seed, step, batch_size, num_regions, drop_rate):
  """(B, R) bool: `plan.region_keep` of this step's uniforms (all kept when the rate is 0)."""
  if drop_rate <= 0:
    return np.ones((batch_size, num_regions), bool)
  uniforms = np.random.default_rng([seed, _REGION_DROP, step]).random((batch_size, num_regions))
  return plan.region_keep(uniforms, drop_rate)


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


def train_dataset(split, config, start_step, process_index=0, process_count=1):
  """tf.data pipeline of this host's part of the batches for steps start..total."""
  k = config.data.captions_per_image
  if k > split.captions_per_image:
    raise ValueError(f"config.data.captions_per_image={k} exceeds the {split.captions_per_image} "
                     "captions per image in the data; lower it")
  rows = plan.host_rows(config.batch_size, process_index, process_count)
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
  return tfdata.untuned(ds.map(to_dict).prefetch(config.data.prefetch))


def _host_batch(split, config, step, rows):
  images, slots = sample(config.seed, step, split.num_images, config.batch_size,
                         split.captions_per_image, config.data.captions_per_image)
  keep = region_keep_mask(config.seed, step, config.batch_size, split.features.shape[1],
                          config.data.region_drop)
  return make_batch(split, images[rows], slots[rows], keep[rows],
                    max_tokens=config.data.max_tokens)


def eval_arrays(split, max_tokens):
  """All images (with full region masks) and all captions of a split, as numpy."""
  tokens = split.tokens[:, :max_tokens]
  lengths = np.minimum(split.lengths, max_tokens)
  texts = {"tokens": tokens,
           "token_mask": np.arange(tokens.shape[1])[None, :] < lengths[:, None]}
  if split.image_key == "pixels":
    return {"pixels": split.features}, texts
  regions = np.asarray(split.features, np.float32)
  return {"regions": regions, "region_mask": np.ones(regions.shape[:2], bool)}, texts
