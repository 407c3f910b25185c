"""Layers whose fastest form depends on the backend, chosen when the model is traced."""

import flax.linen as nn
import jax


def Dense(*args, **kwargs) -> nn.Dense:  # pylint: disable=invalid-name  (a layer class stand-in)
  """`nn.Dense`; on the CPU backend, `cpu.Dense` (same values, a faster weight gradient)."""
  if jax.default_backend() == "cpu":
    from ditm_jax.cpu import dense  # pylint: disable=g-import-not-at-top  (CPU only)
    return dense.Dense(*args, **kwargs)
  return nn.Dense(*args, **kwargs)
