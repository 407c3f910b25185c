"""What a model needs from a data set without its data: how texts become tokens, and the
shapes of a training batch. No input pipeline (`ditm_jax.retrieve` uses it too)."""

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
  """(vocab_size, encode(texts) -> (tokens, lengths)) of the data set, as its runs tokenise:
  the demo's vocabulary of its training captions, or a prepared directory's manifest."""
  if config.data.name == "demo":
    d = config.data
    captions = demo.make_split(d.world_seed, 1, d.num_train, feature_dim=d.feature_dim,
                               num_regions=d.num_regions, noise=d.noise).captions  # as generate
    return demo_text_tooling(config, captions)
  return records.text_tooling(records.read_manifest(config.data.dir, config), config)


def example_batch(config, rows):
  """A training batch of `rows` images of zeros, in the shapes `config` gives every source
  (prepared data is checked against them): for model initialisation."""
  d = config.data
  n = rows * d.captions_per_image
  batch = {"tokens": np.zeros((n, d.max_tokens), np.int32),
           "token_mask": np.ones((n, d.max_tokens), bool),
           "desc": np.zeros(n, np.float32), "image_ids": np.arange(rows, dtype=np.int32)}
  if config.model.image == "vit":
    batch["pixels"] = np.zeros((rows, d.image_size, d.image_size, 3), np.uint8)
  else:
    batch["regions"] = np.zeros((rows, d.num_regions, d.feature_dim), np.float32)
    batch["region_mask"] = np.ones((rows, d.num_regions), bool)
  return batch
