"""The prepared-data format: TFRecord shards of images with their captions, and a manifest.

A prepared directory (written by `ditm_jax.data.prepare`) holds

  manifest.json             counts, shard files, tokenizer, settings and their hash
  descriptiveness.json      the descriptiveness fit on the training captions (idf, CDF knots)
  {split}-00000-of-00004.tfrecord ...

One `tf.train.Example` per image, with all of its C captions:

  index      int64        position of the image in its split (0..N-1)
  image_id   int64        the data set's image id
  regions    bytes        float32 (R, F) little-endian region features   (image = 'regions')
  jpeg       bytes        the encoded image file                          (image = 'pixels')
  tokens     int64 (C*L)  token ids, padded with the tokenizer's pad id to L = max_tokens
  lengths    int64 (C)    valid tokens of each caption
  desc       float (C)    descriptiveness of each caption, in [0, 1]
  captions   bytes (C)    the caption texts, UTF-8

The training split is written round-robin (image i to shard i mod S), so every shard is a
uniform sample of the split; the other splits are one shard in image order.
"""

import functools
import hashlib
import json
import os

import numpy as np

FORMAT = "ditm_jax.prepared/1"
MANIFEST = "manifest.json"
DESCRIPTIVENESS = "descriptiveness.json"


def settings(config, tokenizer_fingerprint=None):
  """What the prepared data depends on, from `config`; training checks it against the manifest.

  Args:
    config: the run config (`config.data`, `config.model.text`, `config.descriptiveness`).
    tokenizer_fingerprint: for text='bert', `fingerprint(tokenizer)` of the WordPiece vocabulary.
  """
  d = config.data
  text = config.model.text
  if text not in ("bigru", "bert"):
    raise ValueError(f"config.model.text={text!r} is not known; use 'bigru' or 'bert'")
  image = "pixels" if config.model.image == "vit" else "regions"
  out = {
      "format": FORMAT,
      "train_split": split_names(config)[0],
      "image": image,
      "text": text,
      "max_tokens": int(d.max_tokens),
      "stop_words": config.descriptiveness.stop_words,
      "normalize": config.descriptiveness.normalize,
  }
  if image == "regions":
    out["feature_shape"] = [int(d.num_regions), int(d.feature_dim)]
  if text == "bert":
    out["tokenizer_fingerprint"] = tokenizer_fingerprint
  return out


def settings_hash(values):
  return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def split_names(config):
  """The split names of `config.data.splits` ('train,dev,test'), with the train split first."""
  names = [s.strip() for s in config.data.splits.split(",") if s.strip()]
  if not names or len(set(names)) != len(names):
    raise ValueError(f"config.data.splits={config.data.splits!r} must name distinct splits, "
                     "comma-separated, e.g. 'train,dev,testall'")
  if config.data.train_split not in names:
    raise ValueError(f"config.data.train_split={config.data.train_split!r} is not among "
                     f"config.data.splits={config.data.splits!r}; add it")
  return [config.data.train_split] + [s for s in names if s != config.data.train_split]


def fingerprint(hf_tokenizer):
  """A short hash of a WordPiece vocabulary (token -> id)."""
  vocab = sorted(hf_tokenizer.get_vocab().items())
  return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def shard_names(split, num_shards):
  return [f"{split}-{k:05d}-of-{num_shards:05d}.tfrecord" for k in range(num_shards)]


def example(index, image_id, tokens, lengths, desc, captions, *, regions=None, jpeg=None):
  """One image and its C captions as a serialized tf.train.Example."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))
  byts = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v))
  feature = {
      "index": ints([int(index)]),
      "image_id": ints([int(image_id)]),
      "tokens": ints(np.asarray(tokens, np.int64).reshape(-1)),
      "lengths": ints(np.asarray(lengths, np.int64)),
      "desc": tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(desc, np.float32))),
      "captions": byts([c.encode("utf-8") for c in captions]),
  }
  if regions is not None:
    feature["regions"] = byts([np.ascontiguousarray(regions, "<f4").tobytes()])
  if jpeg is not None:
    feature["jpeg"] = byts([jpeg])
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec(manifest, with_captions=False):
  """tf.io.parse_example spec of the records described by `manifest`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  c, length = manifest["captions_per_image"], manifest["max_tokens"]
  spec = {
      "index": tf.io.FixedLenFeature([], tf.int64),
      "image_id": tf.io.FixedLenFeature([], tf.int64),
      "tokens": tf.io.FixedLenFeature([c * length], tf.int64),
      "lengths": tf.io.FixedLenFeature([c], tf.int64),
      "desc": tf.io.FixedLenFeature([c], tf.float32),
      "regions" if manifest["image"] == "regions" else "jpeg": tf.io.FixedLenFeature([], tf.string),
  }
  if with_captions:
    spec["captions"] = tf.io.FixedLenFeature([c], tf.string)
  return spec


def relevance_file(split):
  """The prepared file of a split's graded truth: (M, 3) int64 (image, caption, grade)."""
  return f"{split}_relevance.npy"


def read_relevance(directory, manifest, split):
  """(N_img, N_cap) float32 graded relevance of a prepared split that carries it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  info = manifest["splits"][split]
  with tf.io.gfile.GFile(os.path.join(directory, info["relevance"]), "rb") as f:
    triples = np.load(f)
  out = np.zeros((info["num_images"], info["num_captions"]), np.float32)
  out[triples[:, 0], triples[:, 1]] = triples[:, 2]
  return out


def read_manifest(directory, config=None):
  """The manifest of a prepared directory; checked against `config` when given.

  Raises:
    FileNotFoundError: the directory or its manifest is missing.
    ValueError: the manifest is unreadable or was made with other settings than `config`'s.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = os.path.join(directory, MANIFEST)
  how = ("run prepare first: python -m ditm_jax.main --config=<config> --mode=prepare "
         "--config.data.raw_dir=<raw data> --config.data.dir=" + str(directory))
  if not directory:
    raise ValueError("config.data.dir is empty; pass --config.data.dir=<prepared directory> "
                     "(made by --mode=prepare)")
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} does not exist, so {directory} is not prepared data "
                            f"(or prepare did not finish); {how}")
  try:
    with tf.io.gfile.GFile(path) as f:
      manifest = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); delete {directory} and {how}") from None
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}; "
                     f"delete {directory} and {how}")
  if config is not None:
    check_settings(manifest, config, path)
  return manifest


def check_settings(manifest, config, path):
  """Raises ValueError naming every setting where `manifest` and `config` differ."""
  fingerprint_now = None
  if config.model.text == "bert":
    fingerprint_now = fingerprint(_bert_tokenizer(config).hf_tokenizer)
  want = settings(config, fingerprint_now)
  have = manifest["settings"]
  missing = [s for s in split_names(config) if s not in manifest["splits"]]
  if missing:
    raise ValueError(f"{path} has no split(s) {missing}; prepared are {list(manifest['splits'])}"
                     ": set --config.data.splits to those, or prepare again with these splits")
  if settings_hash(want) == manifest["settings_hash"]:
    return
  diffs = [f"{k}: prepared {have.get(k)!r}, config {want.get(k)!r}"
           for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
  raise ValueError(f"{path} does not match the config ({'; '.join(diffs)}); set the config "
                   "fields to the prepared values, or prepare again into a new "
                   "--config.data.dir with this config")


def _bert_tokenizer(config):
  if not config.model.bert_path:
    raise ValueError("config.model.text='bert' needs --config.model.bert_path=<checkpoint "
                     "directory or hub name> for its tokenizer")
  return _load_tokenizer(str(config.model.bert_path), config.data.max_tokens)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path, max_tokens):
  from ditm_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
  return tokenizer.load_tokenizer(path, max_length=max_tokens)


def text_tooling(manifest, config):
  """(vocab_size, encode(captions) -> (tokens (N, L) int32, lengths (N,) int32))."""
  t = manifest["tokenizer"]
  length = manifest["max_tokens"]
  if t["kind"] == "bigru":
    from ditm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
    vocab = vocab_lib.Vocab(t["vocab"])
    return len(vocab), lambda captions: vocab.encode(captions, length)
  tok = _bert_tokenizer(config)
  return tok.vocab_size, lambda captions: tok.ids_and_lengths(list(captions))
