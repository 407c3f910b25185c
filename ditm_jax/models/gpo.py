"""Generalized pooling operator (GPO, VSE-infinity).

Features are sorted per dimension (valid positions only, descending); pooling
weights over the sorted index come from a small bidirectional GRU run over sine
positional encodings of the index, so the pooling adapts to the set size.
The GRU runs in `dtype` (e.g. bfloat16) with float32 parameters and carry; the
pooling weights and the pooled features are float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def positional_encoding(length, dim):
  """(length, dim) sine/cosine encodings of positions 0..length-1."""
  pos = jnp.arange(length, dtype=jnp.float32)[:, None]
  div = jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32) * (-jnp.log(10000.0) / dim))
  pe = jnp.zeros((length, dim), jnp.float32)
  pe = pe.at[:, 0::2].set(jnp.sin(pos * div))
  return pe.at[:, 1::2].set(jnp.cos(pos * div))


class GPO(nn.Module):
  """Pools (B, N, D) features with validity mask (B, N) into (B, D)."""
  pe_dim: int = 32
  hidden: int = 32
  temperature: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, mask):
    b, n, _ = features.shape
    lengths = mask.sum(-1).astype(jnp.int32)
    pe = jnp.broadcast_to(positional_encoding(n, self.pe_dim), (b, n, self.pe_dim))
    cell = lambda: nn.GRUCell(self.hidden, dtype=self.dtype)
    gru = nn.Bidirectional(nn.RNN(cell()), nn.RNN(cell()), merge_fn=lambda a, c: (a + c) / 2)
    h = gru(pe.astype(self.dtype), seq_lengths=lengths)
    scores = nn.Dense(1, use_bias=False, dtype=self.dtype)(h)[..., 0].astype(jnp.float32)
    # Sorted index k is valid iff k < length: after a descending sort of masked
    # features the valid values come first.
    valid = jnp.arange(n)[None, :] < lengths[:, None]
    scores = jnp.where(valid, scores / self.temperature, -1e9)
    weights = jax.nn.softmax(scores, axis=-1)
    low = jnp.finfo(features.dtype).min
    sorted_feats = -jnp.sort(-jnp.where(mask[..., None], features, low), axis=1)
    sorted_feats = jnp.where(valid[..., None], sorted_feats, 0).astype(jnp.float32)
    return jnp.einsum("bn,bnd->bd", weights, sorted_feats)
