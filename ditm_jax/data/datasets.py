"""Data sets by name: each returns the training split, evaluation splits and text tooling."""

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from ditm_jax import descriptiveness
from ditm_jax.data import demo
from ditm_jax.data import pipeline
from ditm_jax.data import vocab as vocab_lib


@dataclasses.dataclass
class Data:
  """What the trainer needs from a data set."""
  train: pipeline.Split
  splits: dict  # name -> pipeline.Split, for evaluation and export
  vocab_size: int
  encode_text: Callable  # list[str] -> (tokens (N, L) int32, lengths (N,) int32)
  scorer: Any  # a fitted descriptiveness.Descriptiveness
  relevance: dict = dataclasses.field(default_factory=dict)  # split -> graded relevance fn
  scenes: Optional[dict] = None  # demo only: split -> scene attributes, for display


def load(config) -> Data:
  """The data set named by `config.data.name`."""
  loaders = {"demo": load_demo}
  if config.data.name not in loaders:
    raise ValueError(f"config.data.name={config.data.name!r} is not known; "
                     f"use one of {sorted(loaders)}")
  return loaders[config.data.name](config)


def load_demo(config) -> Data:
  """Generates the procedural demo world (DESIGN §8) from `config.data`."""
  d = config.data
  raw = demo.generate(d.world_seed, d.num_train, d.num_test, d.feature_dim,
                      num_regions=d.num_regions, noise=d.noise)
  vocab = vocab_lib.Vocab.build(raw["train"].captions)
  scorer = descriptiveness.fit(raw["train"].captions, stop_words=config.descriptiveness.stop_words,
                               normalize=config.descriptiveness.normalize)

  def encode(captions):
    return vocab.encode(captions, d.max_tokens)

  def to_split(s):
    tokens, lengths = encode(s.captions)
    return pipeline.Split(features=s.features, tokens=tokens, lengths=lengths,
                          desc=scorer.score(s.captions).astype(np.float32),
                          image_ids=s.image_ids, captions=s.captions,
                          captions_per_image=demo.NUM_LEVELS)

  splits = {name: to_split(s) for name, s in raw.items()}
  return Data(train=splits["train"], splits=splits, vocab_size=len(vocab), encode_text=encode,
              scorer=scorer, relevance={name: (lambda s=s: demo.relevance(s))
                                        for name, s in raw.items()},
              scenes={name: s.scenes for name, s in raw.items()})
