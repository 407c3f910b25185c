"""Packing: run per-token (or per-region) layers on the valid positions of a padded batch only.

The primitives; the packed towers that use them are in `packed.py`.

A (B, L) mask's True positions are gathered into a buffer of C rows; row-wise layers (dense,
layer norm, MLP) run on those rows, and the results are scattered back to (B, L) with zeros
at the padding. Callers pick C as a fraction of B x L (`capacity`) and take their padded path
when a batch does not fit (`plan` reports it), so results never depend on C.
"""
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.custom_vjp
def _move_rows(x: jax.Array, index: jax.Array, inverse: jax.Array) -> jax.Array:
  """x[index] along axis 0 (zero rows where `index` is out of range).

  `inverse` undoes `index` on the rows it moves, so the gradient is the same kind of gather
  (`g[inverse]`) rather than a scatter-add, which XLA:CPU runs one element at a time.
  """
  return jnp.take(x, index, axis=0, mode="fill", fill_value=0)


def _move_rows_fwd(x, index, inverse):
  return _move_rows(x, index, inverse), (index, inverse)


def _move_rows_bwd(residual, g):
  index, inverse = residual
  return _move_rows(g, inverse, index), None, None


_move_rows.defvjp(_move_rows_fwd, _move_rows_bwd)


class Packing(NamedTuple):
  """Where the valid tokens of a (B, L) batch sit in a packed buffer of C rows.

  The valid tokens fill rows 0.. in order (row-major over B x L); the rest hold zeros.
  slot:   (B*L,) int32, the row of each position (C: none, for padding).
  source: (C,) int32, the position of each row (B*L: none, for an empty row).
  Packing runs per device: the train step and evaluation embed each device's rows inside a
  shard_map (`sharding.data_parallel`), so no token moves between devices.
  """
  slot: jax.Array
  source: jax.Array

  def pack(self, x: jax.Array) -> jax.Array:
    """(B, L, ...) -> (C, ...): the valid tokens' rows; empty rows are zero."""
    return _move_rows(x.reshape(-1, *x.shape[2:]), self.source, self.slot)

  def unpack(self, rows: jax.Array, batch: int, length: int) -> jax.Array:
    """(C, ...) -> (B, L, ...): each token's row back in place; padding is zero."""
    return _move_rows(rows, self.slot, self.source).reshape(batch, length, *rows.shape[1:])


def capacity(mask_shape: tuple[int, int], fraction: float) -> int:
  """Rows for `fraction` of a (B, L) batch's positions, rounded up to a multiple of 8."""
  positions = math.prod(mask_shape)
  return min(positions, -(-math.ceil(fraction * positions) // 8) * 8)


def packs(mask_shape: tuple[int, int], fraction: float) -> bool:
  """Whether `fraction` of a (B, L) batch's positions is a buffer smaller than the batch."""
  return 0 < capacity(mask_shape, fraction) < math.prod(mask_shape)


def fits(mask: jax.Array, fraction: float, shards: int = 1) -> jax.Array:
  """Whether each of `shards` equal row blocks of a (B, L) `mask` (each device's rows) has
  at most `capacity` True positions, the buffer that block packs into."""
  block = (mask.shape[0] // shards, mask.shape[1])
  counts = jnp.sum(mask.reshape(shards, -1), axis=1, dtype=jnp.int32)
  return jnp.all(counts <= capacity(block, fraction))


def plan(mask: jax.Array, rows: int) -> tuple[Packing, jax.Array]:
  """(Packing of `mask`'s True positions into `rows` rows, whether they all fit).

  Positions beyond `rows` are left out, so a caller must check `fits` (and take the padded
  path when it is False).
  """
  flat = mask.reshape(-1)
  slot = jnp.where(flat, jnp.cumsum(flat, dtype=jnp.int32) - 1, rows)
  source = jnp.full((rows,), flat.size, jnp.int32).at[slot].set(
      jnp.arange(flat.size, dtype=jnp.int32), mode="drop")
  fits = jnp.sum(flat) <= rows
  return Packing(jnp.minimum(slot, rows), source), fits


def packed_or_padded(mdl: nn.Module, fn: Callable[..., Any], mask: jax.Array, fraction: float,
                     *operands: Any, pack: bool | None = None) -> Any:
  """`fn(mdl, *operands, packing)` for `mask`'s positions packed into `fraction` of them.

  When a batch's valid positions do not fit, or `fraction` packs nothing (0, or a buffer as
  large as B x L), `fn(mdl, *operands, None)`, the padded computation, runs instead; `fn` must
  return the same shapes either way. Parameters that `fn` creates inside `mdl` are shared by
  both (`nn.cond`). With captured intermediates the padded form runs alone (the two layouts'
  intermediates differ in shape).

  `pack` True skips the check (the caller has made sure that the batch fits: `fits`) and
  False runs the padded form alone. The `nn.cond` of the default (None) costs time even when
  the fallback never runs, so the train step and evaluation decide once for the whole model
  (`packed.select_packing`).
  """
  if pack is False or not packs(mask.shape, fraction) or mdl.is_mutable_collection(
      "intermediates"):
    return fn(mdl, *operands, None)
  packing, all_fit = plan(mask, capacity(mask.shape, fraction))
  if pack:
    return fn(mdl, *operands, packing)
  return nn.cond(all_fit, lambda m, p, *ops: fn(m, *ops, p), lambda m, p, *ops: fn(m, *ops, None),
                 mdl, packing, *operands)
