"""Image and text towers. Each maps its inputs to L2-normalised (B, D) embeddings."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ditm_jax.models.gpo import GPO


def l2_normalize(x, eps=1e-8):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class RegionEncoder(nn.Module):
  """Precomputed regions (B, R, F): linear F->D plus a two-layer MLP residual, GPO."""
  embed_dim: int
  mlp_hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, regions, mask):
    x = regions.astype(self.dtype)
    linear = nn.Dense(self.embed_dim, dtype=self.dtype, name="fc")(x)
    h = nn.relu(nn.Dense(self.mlp_hidden, dtype=self.dtype, name="mlp_in")(x))
    h = nn.Dense(self.embed_dim, dtype=self.dtype, name="mlp_out")(h)
    return l2_normalize(GPO(name="gpo")(linear + h, mask))


class BiGRUTextEncoder(nn.Module):
  """Word embeddings -> bidirectional GRU (directions averaged) -> GPO over valid tokens."""
  vocab_size: int
  embed_dim: int
  word_dim: int = 300
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, mask):
    x = nn.Embed(self.vocab_size, self.word_dim, dtype=self.dtype, name="embed")(tokens)
    lengths = mask.sum(-1).astype(jnp.int32)
    gru = nn.Bidirectional(
        nn.RNN(nn.GRUCell(self.embed_dim, dtype=self.dtype)),
        nn.RNN(nn.GRUCell(self.embed_dim, dtype=self.dtype)),
        merge_fn=lambda a, b: (a + b) / 2, name="bigru")
    h = gru(x, seq_lengths=lengths)
    return l2_normalize(GPO(name="gpo")(h, mask))
