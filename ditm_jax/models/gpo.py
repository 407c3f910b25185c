"""Generalized pooling operator (GPO, VSE-infinity).

Features are sorted per dimension (valid positions only, descending); pooling
weights over the sorted index come from a small bidirectional GRU run over sine
positional encodings of the index, so the pooling adapts to the set size.
The GRU runs in `dtype` (e.g. bfloat16) with float32 parameters and carry; the
pooling weights and the pooled features are float32.

The weighted sum over the sorted values is computed without sorting: each value's
descending rank among its set is counted by comparisons (`descending_ranks`, ties
broken by position), and value i contributes `x_i * w[rank_i]`. That is the same sum
(and the same gradients: d/dx_i = w[rank_i]) as `sort_pool`, the sort-based reference
form, without XLA:CPU's slow comparator sort (`python -m ditm_jax.bench`, "GPO fwd+bwd").
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
    # The weights depend on a set's size only: with fewer possible sizes (0..n) than sets,
    # the GRU runs once per size and each set takes its size's row (the same values; the
    # parameters' gradients are summed in another order).
    by_size = n + 1 < b
    sizes = jnp.arange(n + 1, dtype=jnp.int32) if by_size else lengths
    pe = jnp.broadcast_to(positional_encoding(n, self.pe_dim), (sizes.shape[0], n, self.pe_dim))
    cell = lambda: nn.GRUCell(self.hidden, dtype=self.dtype)
    gru = nn.Bidirectional(nn.RNN(cell()), nn.RNN(cell()), merge_fn=lambda a, c: (a + c) / 2)
    h = gru(pe.astype(self.dtype), seq_lengths=sizes)
    scores = nn.Dense(1, use_bias=False, dtype=self.dtype)(h)[..., 0].astype(jnp.float32)
    # Sorted index k is valid iff k < length: after a descending sort of masked
    # features the valid values come first.
    valid = jnp.arange(n)[None, :] < sizes[:, None]
    scores = jnp.where(valid, scores / self.temperature, -1e9)
    weights = jax.nn.softmax(scores, axis=-1)
    if by_size:
      weights = weights[lengths]
    return rank_pool(features, mask, weights)


def descending_ranks(features, mask):
  """(B, N, D) integers: the 0-based descending rank of each value within its set.

  Masked positions rank after every valid one; equal values are ordered by position,
  so every rank 0..N-1 appears once per (b, d). The count runs as a loop over the N
  positions (one fused compare-and-add per step): written as one expression, XLA fuses
  the comparisons into the consumer's gather and recomputes them per element. The ranks
  are uint8 for N <= 256 (int32 beyond), a quarter of the memory traffic per step, and four
  positions per loop step (`unroll`) read and write the counts a quarter as often.
  """
  n = features.shape[1]
  low = jnp.finfo(features.dtype).min
  x = jax.lax.stop_gradient(jnp.where(mask[..., None], features, low))
  position = jnp.arange(n)[None, :, None]

  def count(j, ranks):
    xj = jax.lax.dynamic_slice_in_dim(x, j, 1, axis=1)
    ahead = jnp.where(j < position, xj >= x, xj > x)
    return ranks + ahead.astype(ranks.dtype)

  dtype = jnp.uint8 if n <= 256 else jnp.int32
  # The first step outside the loop: its zeros fuse into it rather than fill a carry.
  return jax.lax.fori_loop(1, n, count, count(0, jnp.zeros(x.shape, dtype)), unroll=4)


def rank_pool(features, mask, weights):
  """sum_k weights[b, k] * (k-th largest valid value of features[b, :, d]), float32."""
  ranks = descending_ranks(features, mask)
  values = jnp.where(mask[..., None], features, 0).astype(jnp.float32)
  return _pool_by_rank(values, ranks, weights)


# Sets up to this size take their weights by a chain of selects (below); larger ones gather.
_SELECT_MAX = 64


def _weights_by_rank(weights, ranks):
  """(B, N, D): weights[b, ranks[b, i, d]], the weight of each value.

  For N <= 64 a chain of N compare-and-selects in one fused loop: for a vmapped gather,
  XLA:CPU writes every (b, rank) index pair to memory before gathering.
  """
  n = weights.shape[1]
  if n > _SELECT_MAX:
    return jax.vmap(lambda w, r: w[r])(weights, ranks)
  out = jnp.zeros(ranks.shape, weights.dtype)
  for k in range(n):
    out = jnp.where(ranks == k, weights[:, k, None, None], out)
  return out


def _add_by_rank(y, ranks):
  """(B, N): sum of y[b, i, d] over the (i, d) with ranks[b, i, d] == k, for each k.

  One scatter-add per set (`lax.map` over the batch): a vmapped scatter would first write
  every (b, rank) index pair to memory.
  """
  n = y.shape[1]
  add = lambda yr: jnp.zeros((n,), y.dtype).at[yr[1].ravel()].add(yr[0].ravel())
  return jax.lax.map(add, (y, ranks))


@jax.custom_vjp
def _pool_by_rank(values, ranks, weights):
  """sum_i values[b, i, d] * weights[b, ranks[b, i, d]] over i: (B, D).

  The backward pass reuses the forward's per-value weights for the values' gradient
  (autodiff would rebuild them) and adds each value's share to its rank's weight with one
  scatter-add per set.
  """
  return jnp.sum(values * _weights_by_rank(weights, ranks), axis=1)


def _pool_by_rank_fwd(values, ranks, weights):
  per_value = _weights_by_rank(weights, ranks)
  return jnp.sum(values * per_value, axis=1), (values, ranks, per_value)


def _pool_by_rank_bwd(residual, g):
  values, ranks, per_value = residual
  g = g[:, None, :]
  return g * per_value, None, _add_by_rank(values * g, ranks)


_pool_by_rank.defvjp(_pool_by_rank_fwd, _pool_by_rank_bwd)


def sort_pool(features, mask, weights):
  """The reference form of `rank_pool`: sort each dimension, then weight the sorted index."""
  valid = jnp.arange(features.shape[1])[None, :] < mask.sum(-1)[:, None]
  low = jnp.finfo(features.dtype).min
  sorted_feats = -jnp.sort(-jnp.where(mask[..., None], features, low), axis=1)
  sorted_feats = jnp.where(valid[..., None], sorted_feats, 0).astype(jnp.float32)
  return jnp.einsum("bn,bnd->bd", weights, sorted_feats)
