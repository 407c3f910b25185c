"""Packed towers: opt-in speed wrappers of the plain towers (`model.text_token_capacity`,
`model.region_capacity` > 0), with the same parameters and the same values.

A packed tower runs its row-wise layers on the valid positions only (`packing.Packing`), in
a buffer of `capacity` x B x L rows; a batch with more valid positions than fit runs padded,
so results never depend on the capacity, only speed does. `pack`: None decides per batch on
device (`nn.cond`); True packs (the caller has checked that the batch fits); False never
packs. `select_packing` makes that decision once for a whole train step or embedding call.
"""
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ditm_jax.models import encoders
from ditm_jax.models import packing


class PackedRegionEncoder(encoders.RegionEncoder):
  """`RegionEncoder` whose linear + MLP run on the kept regions only."""
  capacity: float = 0.85
  pack: bool | None = None

  @nn.compact
  def __call__(self, regions, mask):
    def project(mdl, regions, rows):
      if rows is None:
        return self.project(mdl, regions)
      return rows.unpack(self.project(mdl, rows.pack(regions.astype(self.dtype))), *mask.shape)
    x = packing.packed_or_padded(self, project, mask, self.capacity, regions, pack=self.pack)
    return self.pool(self, x, mask)

  def packed_masks(self) -> dict[str, float]:
    """{batch entry: fraction} of the mask this tower packs (`select_packing`)."""
    return {"region_mask": self.capacity}


class PackedBertTextEncoder(encoders.BertTextEncoder):
  """`BertTextEncoder` whose BERT and projection run on the valid tokens only."""
  capacity: float = 0.75
  pack: bool | None = None

  @nn.compact
  def __call__(self, tokens, mask):
    x = packing.packed_or_padded(self, self.encode, mask, self.capacity, tokens, mask,
                                 pack=self.pack)
    return self.pool(self, x, mask)

  def packed_masks(self) -> dict[str, float]:
    """{batch entry: fraction} of the mask this tower packs (`select_packing`)."""
    return {"token_mask": self.capacity}


def select_packing(model: nn.Module, fn: Callable[[nn.Module], Any], batch: Mapping[str, Any],
                   shards: int = 1) -> Any:
  """`fn(model')`, `model'` being `model` with its packed towers packing (when every packed
  mask of `batch` fits, on each of the `shards` devices that embed its row blocks) or padded.

  One `lax.cond` for the whole of `fn` (the forward and backward passes of a train step), in
  place of each tower's own `nn.cond`. Both branches compute the same values. `batch` holds
  global arrays, so the predicate is the same on every device and process. A model without
  packed towers (or whose buffers would not be smaller than the batch) gives `fn(model)`.
  """
  packers = {name: getattr(model, name) for name in ("image_tower", "text_tower")
             if hasattr(getattr(model, name), "packed_masks")}
  masks = {k: f for tower in packers.values() for k, f in tower.packed_masks().items()
           if k in batch and packing.packs((batch[k].shape[0] // shards, batch[k].shape[1]), f)}
  if not masks:
    return fn(model)

  def variant(pack):
    return model.clone(**{name: tower.clone(pack=pack) for name, tower in packers.items()})
  all_fit = functools.reduce(jnp.logical_and, [packing.fits(batch[k], f, shards)
                                               for k, f in masks.items()])
  return jax.lax.cond(all_fit, lambda: fn(variant(True)), lambda: fn(variant(False)))
