"""Data sets by name: each returns the training split, evaluation splits and text tooling."""

import collections.abc
import dataclasses
import json
import os
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from ditm_jax import descriptiveness
from ditm_jax.data import demo
from ditm_jax.data import eval_split
from ditm_jax.data import memory
from ditm_jax.data import records
from ditm_jax.data import stream
from ditm_jax.data import tooling


@dataclasses.dataclass
class Data:
  """What the trainer needs from a data set."""
  train: Any  # memory.Split or stream.RecordSplit: .batches(), .step_image_ids(), ...
  splits: collections.abc.Mapping  # name -> memory.Split, for evaluation and export
  vocab_size: int
  encode_text: Callable  # list[str] -> (tokens (N, L) int32, lengths (N,) int32)
  scorer: Any  # a fitted descriptiveness.Descriptiveness
  relevance: dict = dataclasses.field(default_factory=dict)  # split -> graded relevance fn
  scenes: Optional[dict] = None  # demo only: split -> scene attributes, for display


def load(config) -> Data:
  """The data set named by `config.data.name`."""
  loaders = {"demo": load_demo, "coco": load_prepared, "f30k": load_prepared,
             "prepared": load_prepared}
  if config.data.name not in loaders:
    raise ValueError(f"config.data.name={config.data.name!r} is not known; "
                     f"use one of {sorted(loaders)}")
  return loaders[config.data.name](config)


def load_demo(config) -> Data:
  """Generates the procedural demo world (DESIGN §8) from `config.data`."""
  d = config.data
  raw = demo.generate(d.world_seed, d.num_train, d.num_test, d.feature_dim,
                     num_regions=d.num_regions, noise=d.noise, num_dev=d.num_dev)
  scorer = descriptiveness.fit(raw["train"].captions, stop_words=config.descriptiveness.stop_words,
                               normalize=config.descriptiveness.normalize)
  vocab_size, encode = tooling.demo_text_tooling(config, raw["train"].captions)

  def to_split(s):
    tokens, lengths = encode(s.captions)
    return memory.Split(features=s.features, tokens=tokens, lengths=lengths,
                        desc=scorer.score(s.captions).astype(np.float32),
                        image_ids=s.image_ids, captions=s.captions,
                        captions_per_image=demo.NUM_LEVELS)

  splits = {name: to_split(s) for name, s in raw.items()}
  return Data(train=splits["train"], splits=splits, vocab_size=vocab_size, encode_text=encode,
              scorer=scorer, relevance={name: (lambda s=s: demo.relevance(s))
                                        for name, s in raw.items()},
              scenes={name: s.scenes for name, s in raw.items()})


def load_prepared(config) -> Data:
  """A directory written by `--mode=prepare` (`config.data.dir`), checked against the config.

  Training streams the train split's records; the other splits are read into memory the
  first time an evaluation asks for them.
  """
  directory = config.data.dir
  manifest = records.read_manifest(directory, config)
  with tf.io.gfile.GFile(os.path.join(directory, records.DESCRIPTIVENESS)) as f:
    scorer = descriptiveness.Descriptiveness.from_dict(json.load(f))
  vocab_size, encode = records.text_tooling(manifest, config)
  relevance = {name: (lambda name=name: records.read_relevance(directory, manifest, name))
               for name, info in manifest["splits"].items() if "relevance" in info}
  return Data(train=stream.RecordSplit(directory, manifest, manifest["train_split"]),
              splits=_LazySplits(directory, manifest, config), vocab_size=vocab_size,
              encode_text=encode, scorer=scorer, relevance=relevance)


class _LazySplits(collections.abc.Mapping):
  """Split name -> memory.Split, each read from its records on first use."""

  def __init__(self, directory, manifest, config):
    self._args = (directory, manifest, config)
    self._names = list(manifest["splits"])
    self._cache = {}

  def __getitem__(self, name):
    if name not in self._names:
      raise KeyError(name)
    if name not in self._cache:
      self._cache[name] = eval_split.read_split(self._args[0], self._args[1], name, self._args[2])
    return self._cache[name]

  def __iter__(self):
    return iter(self._names)

  def __len__(self):
    return len(self._names)
