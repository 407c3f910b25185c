"""Input pipeline: B images x K captions per step, deterministic given (seed, step).

Which images and captions a step sees is a pure function of (seed, step): image
order is a fresh permutation per epoch, seeded by (seed, epoch), and the K captions
of each image are drawn without replacement, seeded by (seed, step). So a resumed
run sees exactly the batches of an uninterrupted one, with nothing to replay, and
every process builds only its own rows of the global batch.

Two training sources share one interface (`batches`, `example_batch`,
`step_image_ids`): `Split`, a split in memory (the demo), and `RecordSplit`, the
TFRecord shards of a prepared directory (COCO, Flickr30K), streamed per host.
"""

import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf

from ditm_jax.data import records
from ditm_jax.data import packing_stats


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

  def example_batch(self, config, rows):
    """A batch of `rows` images, for shapes (model initialisation)."""
    images, slots = sample(0, 0, self.num_images, rows, self.captions_per_image,
                           config.data.captions_per_image)
    keep = region_keep_mask(0, 0, rows, self.features.shape[1], 0.0)
    return make_batch(self, images, slots, keep, max_tokens=config.data.max_tokens)

  def step_image_ids(self, config, step):
    """The image ids of global step `step` (to name a batch that failed)."""
    images, _ = sample(config.seed, step, self.num_images, config.batch_size,
                       self.captions_per_image, config.data.captions_per_image)
    return self.image_ids[images]


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
  return _untuned(ds.map(to_dict).prefetch(config.data.prefetch))


def _untuned(ds):
  """`ds` without tf.data's autotuning thread (every stream here is read to its end).

  Destroying a finished iterator waited for that thread (py-spy: the iterator's destructor
  in `UnboundedThreadPool::LogicalThreadWrapper`): in 4 of 7 timed two-process test runs one
  process sat ~35 s at exit, the other blocked in the distributed shutdown behind it; none
  did in 5 runs without the tuner. Maps keep num_parallel_calls=AUTOTUNE: a map of 0.1 s
  sleeps ran two at a time on 2 cores with and without the tuner, and the demo stream's rate
  was the same within noise (71-90k rows/s without, 71-106k with).
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


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


# ---------------------------------------------------------------- prepared records
#
# Prepared data (`ditm_jax.data.records`) is streamed from TFRecord shards, and what a step
# sees is still a pure function of (seed, process, step), so the step alone is the data
# position saved with a checkpoint:
#
# - each process reads its own shards (shard k goes to process k mod P) and sees its own
#   epochs of those images, in a shard order permuted per epoch by (seed, process, epoch);
# - the shard stream is cut into windows of `config.data.shuffle_window` images, each fully
#   permuted by (seed, process, epoch, window) (a shuffle buffer that can be restarted);
# - step s takes the images s*B..(s+1)*B-1 of that stream (B = batch_size / P), its K of C
#   captions, region drop and token drop drawn from (seed, process, s).
#
# A resumed run at step s computes its epoch and offset, skips whole shards by their counts
# in the manifest, reads at most one shard prefix plus one window to re-enter the stream, and
# then yields exactly the batches an uninterrupted run would; no iterator state is stored.

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

  def example_batch(self, config, rows):
    """A batch of `rows` images in the shapes of a training batch (zeros)."""
    m, k = self.manifest, config.data.captions_per_image
    n, length = rows * k, m["max_tokens"]
    batch = {"tokens": np.zeros((n, length), np.int32),
             "token_mask": np.arange(length)[None, :] < np.ones((n, 1)),
             "desc": np.zeros(n, np.float32), "image_ids": np.arange(rows, dtype=np.int32)}
    if m["image"] == "pixels":
      s = config.data.image_size
      batch["pixels"] = np.zeros((rows, s, s, 3), np.uint8)
    else:
      r, f = m["feature_shape"]
      batch["regions"] = np.zeros((rows, r, f), np.float32)
      batch["region_mask"] = np.ones((rows, r), bool)
    return batch

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
  b = config.batch_size // process_count
  files = split.files[process_index::process_count]
  counts = split.counts[process_index::process_count]
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

  position = start_step * b
  first_epoch, offset = divmod(position, n)
  last_epoch = (max(config.total_steps * b, 1) - 1) // n
  epochs = tf.data.Dataset.range(first_epoch, max(last_epoch, first_epoch) + 1)
  stream = epochs.map(lambda e: (e, tf.where(e == first_epoch, tf.constant(offset, tf.int64),
                                             tf.constant(0, tf.int64)))).flat_map(epoch)
  batches = stream.rebatch(b, drop_remainder=True)
  steps = tf.data.Dataset.range(start_step, config.total_steps)
  to_batch = functools.partial(_record_batch, manifest=split.manifest, config=config, base=base)
  ds = tf.data.Dataset.zip((steps, batches)).map(to_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                                 deterministic=True)
  return _untuned(ds.prefetch(d.prefetch))


def _record_batch(step, serialized, *, manifest, config, base):
  """Parsed training batch of step `step`: K of C captions, region and token drop."""
  d = config.data
  ex = tf.io.parse_example(serialized, records.feature_spec(manifest))
  b = tf.shape(serialized)[0]
  c, length, k = manifest["captions_per_image"], manifest["max_tokens"], d.captions_per_image
  seed = _fold(base, step)
  noise = tf.random.stateless_uniform(tf.stack([b, c]), seed=_fold(seed, _SLOTS))
  slots = tf.math.top_k(noise, k=k).indices  # (B, K), distinct
  tokens = tf.gather(tf.reshape(ex["tokens"], [-1, c, length]), slots, batch_dims=1)
  lengths = tf.reshape(tf.gather(ex["lengths"], slots, batch_dims=1), [-1])
  tokens, lengths = token_drop(tf.reshape(tokens, [-1, length]), lengths, d.token_drop,
                               _fold(seed, _TOKEN_DROP), manifest["tokenizer"])
  batch = {
      "tokens": tf.cast(tokens, tf.int32),
      "token_mask": tf.range(length)[None, :] < tf.cast(lengths, tf.int32)[:, None],
      "desc": tf.reshape(tf.gather(ex["desc"], slots, batch_dims=1), [-1]),
      "image_ids": tf.cast(ex["image_id"], tf.int32),
  }
  if manifest["image"] == "pixels":
    batch["pixels"] = decode_images(ex["jpeg"], d.image_size)
  else:
    r, f = manifest["feature_shape"]
    batch["regions"] = tf.reshape(tf.io.decode_raw(ex["regions"], tf.float32), [-1, r, f])
    drop = tf.random.stateless_uniform(tf.stack([b, r]), seed=_fold(seed, _REGION_DROP))
    drop = drop < d.region_drop
    first = drop[:, :1] & ~tf.reduce_all(drop, axis=1, keepdims=True)  # keep one region
    batch["region_mask"] = ~tf.concat([first, drop[:, 1:]], axis=1)
  return batch


def token_drop(tokens, lengths, rate, seed, tokenizer):
  """VSE-infinity-style caption augmentation: each token is hit with probability `rate`.

  A hit token is deleted (the rest move left) or, with equal chance, replaced by the
  tokenizer's mask id (<unk> for the word vocabulary, [MASK] for BERT). [CLS] and [SEP]
  (`keep_ends`) are never hit, and a caption keeps at least one token.

  Args:
    tokens: (N, L) int token ids, padded with the tokenizer's pad id.
    lengths: (N,) valid tokens per caption.
    rate: probability that a token is hit; 0 returns the inputs.
    seed: stateless seed, shape (2,).
    tokenizer: the manifest's tokenizer entry (pad_id, mask_id, keep_ends).

  Returns:
    (tokens (N, L), lengths (N,)) after the drop.
  """
  if rate <= 0:
    return tokens, lengths
  n, length = tf.shape(tokens)[0], tokens.shape[1]
  pos = tf.range(length, dtype=lengths.dtype)[None, :]
  valid = pos < lengths[:, None]
  eligible = valid
  if tokenizer["keep_ends"]:
    eligible &= (pos > 0) & (pos < lengths[:, None] - 1)
  u = tf.random.stateless_uniform(tf.stack([n, length]), seed=seed)
  hit = eligible & (u < rate)
  delete = hit & (u < rate / 2)
  tokens = tf.where(hit & ~delete, tf.cast(tokenizer["mask_id"], tokens.dtype), tokens)
  keep = valid & ~delete
  empty = ~tf.reduce_any(keep & eligible, axis=1, keepdims=True)  # all deleted: undo the first
  undo = empty & (tf.cumsum(tf.cast(eligible, tf.int32), axis=1) == 1) & eligible
  keep |= undo
  order = tf.argsort(tf.where(keep, pos, pos + length), axis=1, stable=True)  # kept first
  tokens = tf.gather(tokens, order, batch_dims=1)
  lengths = tf.reduce_sum(tf.cast(keep, lengths.dtype), axis=1)
  pad = tf.cast(tokenizer["pad_id"], tokens.dtype)
  return tf.where(pos < lengths[:, None], tokens, pad), lengths


def decode_images(jpegs, size):
  """uint8 (B, size, size, 3) RGB from encoded images, resized (antialiased) to a square."""

  def one(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, [size, size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return tf.map_fn(one, jpegs, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))


def read_split(directory, manifest, name, config):
  """A prepared split in memory, in image order, for evaluation and export (a Split)."""
  info = manifest["splits"][name]
  n, c, length = info["num_images"], manifest["captions_per_image"], manifest["max_tokens"]
  pixels = manifest["image"] == "pixels"
  if pixels:
    s = config.data.image_size
    features = np.zeros((n, s, s, 3), np.uint8)
  else:
    features = np.zeros((n, *manifest["feature_shape"]), np.float32)
  tokens = np.zeros((n, c, length), np.int32)
  lengths, desc = np.zeros((n, c), np.int32), np.zeros((n, c), np.float32)
  image_ids, captions = np.zeros(n, np.int64), [None] * n
  seen = np.zeros(n, bool)
  files = [os.path.join(directory, f) for f in info["shards"]]
  for ex in split_records(files, manifest, config).as_numpy_iterator():
    i = ex["index"]
    features[i] = ex["jpeg" if pixels else "regions"].reshape(features[i].shape)
    tokens[i] = ex["tokens"].reshape(-1, c, length)
    lengths[i], desc[i], image_ids[i], seen[i] = ex["lengths"], ex["desc"], ex["image_id"], True
    for j, caps in zip(i, ex["captions"]):
      captions[j] = [t.decode("utf-8") for t in caps]
  if not seen.all():
    raise ValueError(f"the {name} split in {directory} lacks {np.sum(~seen)} of its {n} images; "
                     "prepare it again")
  return Split(features=features, tokens=tokens.reshape(n * c, length),
               lengths=lengths.reshape(-1), desc=desc.reshape(-1), image_ids=image_ids,
               captions=[t for caps in captions for t in caps], captions_per_image=c,
               image_key="pixels" if pixels else "regions")


def split_records(files, manifest, config):
  """tf.data of a prepared split's examples, parsed, in batches of 256 (for `read_split`)."""
  pixels = manifest["image"] == "pixels"
  spec = records.feature_spec(manifest, with_captions=True)

  def parse(serialized):
    ex = tf.io.parse_example(serialized, spec)
    if pixels:
      ex["jpeg"] = decode_images(ex["jpeg"], config.data.image_size)
    else:
      ex["regions"] = tf.io.decode_raw(ex["regions"], tf.float32)
    return ex

  ds = tf.data.TFRecordDataset(files).batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  return _untuned(ds)
