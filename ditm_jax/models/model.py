"""The dual encoder: an image tower and a text tower chosen by config."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ditm_jax.models import encoders


class DualEncoder(nn.Module):
  """Holds both towers and the (log) temperature of the soft-target loss."""
  image_tower: nn.Module
  text_tower: nn.Module
  init_temperature: float = 0.05

  def setup(self):
    self.log_temperature = self.param(
        "log_temperature", lambda _: jnp.log(jnp.float32(self.init_temperature)))

  def __call__(self, batch):
    return self.embed_images(batch), self.embed_texts(batch), self.log_temperature

  def embed_images(self, batch):
    return self.image_tower(batch["regions"], batch["region_mask"])

  def embed_texts(self, batch):
    return self.text_tower(batch["tokens"], batch["token_mask"])


def build(config, vocab_size: int, dtype: Any = jnp.float32) -> DualEncoder:
  """The model described by `config.model` (towers chosen by name)."""
  m = config.model
  if m.image == "regions":
    image = encoders.RegionEncoder(embed_dim=m.embed_dim, mlp_hidden=m.mlp_hidden, dtype=dtype)
  else:
    raise ValueError(f"config.model.image={m.image!r} is not known; use 'regions'")
  if m.text == "bigru":
    text = encoders.BiGRUTextEncoder(vocab_size=vocab_size, embed_dim=m.embed_dim,
                                     word_dim=m.word_dim, dtype=dtype)
  else:
    raise ValueError(f"config.model.text={m.text!r} is not known; use 'bigru'")
  return DualEncoder(image_tower=image, text_tower=text,
                     init_temperature=config.loss.temperature)
