"""What a model needs from a data set without its data: how texts become tokens, and the
shapes of a training batch. NumPy only, no TensorFlow (for `ditm_jax.retrieve`)."""

import numpy as np

from ditm_jax.data import demo
from ditm_jax.data import records
from ditm_jax.data import tokenizer
from ditm_jax.data import vocab as vocab_lib


def demo_text_tooling(config, train_captions):
  """(vocab_size, encode): the BERT checkpoint's tokenizer, or a word vocabulary of the
  training captions."""
  if config.model.text == "bert":
    wordpiece = tokenizer.load_tokenizer(config.model.bert_path, config.data.max_tokens)
    return wordpiece.vocab_size, wordpiece.ids_and_lengths
  vocab = vocab_lib.Vocab.build(train_captions)
  return len(vocab), lambda captions: vocab.encode(captions, config.data.max_tokens)


def text_tooling(config):
  """(vocab_size, encode(texts) -> (tokens, lengths)) of the data set, as its runs tokenise,
  without reading images or starting an input pipeline (`ditm_jax.retrieve`)."""
  if config.data.name == "demo":
    d = config.data
    captions = demo.make_split(d.world_seed, 1, d.num_train, feature_dim=d.feature_dim,
                               num_regions=d.num_regions, noise=d.noise).captions  # as generate
    return demo_text_tooling(config, captions)
  return records.text_tooling(records.read_manifest(config.data.dir, config), config)


def example_batch(config, rows):
  """A batch of zeros in the shapes of a training batch of `rows` images (initialisation)."""
  image = "pixels" if config.model.image == "vit" else "regions"
  return zeros_batch(config, rows, config.data.max_tokens, image,
                            (config.data.num_regions, config.data.feature_dim))


def zeros_batch(config, rows, max_tokens, image, feature_shape):
  """A training batch of `rows` images of zeros: the shapes, for model initialisation.

  `image` is 'regions' (features of `feature_shape` (R, F)) or 'pixels' (data.image_size).
  """
  n = rows * config.data.captions_per_image
  batch = {"tokens": np.zeros((n, max_tokens), np.int32),
           "token_mask": np.arange(max_tokens)[None, :] < np.ones((n, 1)),
           "desc": np.zeros(n, np.float32), "image_ids": np.arange(rows, dtype=np.int32)}
  if image == "pixels":
    s = config.data.image_size
    batch["pixels"] = np.zeros((rows, s, s, 3), np.uint8)
  else:
    r, f = feature_shape
    batch["regions"] = np.zeros((rows, r, f), np.float32)
    batch["region_mask"] = np.ones((rows, r), bool)
  return batch
