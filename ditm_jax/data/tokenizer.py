"""WordPiece tokenisation for the BERT text encoder, from a checkpoint's own tokenizer files."""
import os
from typing import Sequence

import numpy as np

from ditm_jax import hub


class Tokenizer:
  """Texts -> {'input_ids', 'attention_mask'}: int32 (N, max_length), padded and truncated.

  Lower-casing and special tokens ([CLS] ... [SEP]) are as the checkpoint's tokenizer files say.
  """

  def __init__(self, hf_tokenizer, max_length: int):
    if max_length < 2:
      raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}.")
    self.hf_tokenizer = hf_tokenizer
    self.max_length = max_length

  @property
  def vocab_size(self) -> int:
    return len(self.hf_tokenizer)

  @property
  def pad_token_id(self) -> int:
    return self.hf_tokenizer.pad_token_id

  def __call__(self, texts: str | Sequence[str]) -> dict[str, np.ndarray]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    encoded = self.hf_tokenizer(texts, padding="max_length", truncation=True,
                                max_length=self.max_length, return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int32),
            "attention_mask": encoded["attention_mask"].astype(np.int32)}

  def ids_and_lengths(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, max_length) int32, lengths (N,) int32): the (tokens, lengths) of a data split.

    Valid tokens ([CLS], WordPieces, [SEP]) come first, so `lengths` gives the attention mask.
    """
    encoded = self(texts)
    return encoded["input_ids"], encoded["attention_mask"].sum(-1).astype(np.int32)


def load_tokenizer(path_or_name: str | os.PathLike, max_length: int) -> Tokenizer:
  """The tokenizer of a checkpoint directory (vocab.txt / tokenizer.json) or hub model name."""
  directory = hub.resolve_checkpoint_dir(path_or_name)
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  try:
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory))
  except (OSError, ValueError) as err:
    raise hub.CheckpointError(
        f"No usable tokenizer in {directory} (needs tokenizer.json or vocab.txt with "
        f"tokenizer_config.json): {err}") from err
  return Tokenizer(hf_tokenizer, max_length)
