"""A prepared split read into memory, in image order, for evaluation and export."""
import os

import numpy as np
import tensorflow as tf

from ditm_jax.data import images
from ditm_jax.data import memory
from ditm_jax.data import records
from ditm_jax.data import tfdata


def read_split(directory, manifest, name, config):
  """A prepared split in memory, in image order (a `memory.Split`)."""
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
  return memory.Split(features=features, tokens=tokens.reshape(n * c, length),
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
      ex["jpeg"] = images.decode_images(ex["jpeg"], config.data.image_size)
    else:
      ex["regions"] = tf.io.decode_raw(ex["regions"], tf.float32)
    return ex

  ds = tf.data.TFRecordDataset(files).batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  return tfdata.untuned(ds)
