"""Word-level vocabulary for the light (BiGRU) text encoder."""

import collections
import json
import re

import numpy as np

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def words(text):
  """Lower-cased word tokens of a caption."""
  return _WORD.findall(text.lower())


class Vocab:
  """Maps words to ids; 0 is padding, 1 is unknown."""

  def __init__(self, itos):
    self.itos = list(itos)
    self.stoi = {w: i for i, w in enumerate(self.itos)}

  @classmethod
  def build(cls, captions, min_count=1):
    counts = collections.Counter(w for c in captions for w in words(c))
    kept = sorted(w for w, n in counts.items() if n >= min_count)
    return cls(["<pad>", "<unk>"] + kept)

  def __len__(self):
    return len(self.itos)

  def encode(self, captions, max_len):
    """(N, max_len) int32 ids and (N,) int32 lengths (at least 1, truncated to max_len)."""
    ids = np.zeros((len(captions), max_len), np.int32)
    lengths = np.zeros(len(captions), np.int32)
    for n, c in enumerate(captions):
      toks = [self.stoi.get(w, UNK) for w in words(c)][:max_len] or [UNK]
      ids[n, :len(toks)] = toks
      lengths[n] = len(toks)
    return ids, lengths

  def to_json(self):
    return json.dumps(self.itos)

  @classmethod
  def from_json(cls, text):
    return cls(json.loads(text))
