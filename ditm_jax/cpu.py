"""CPU-only speed helpers, imported only where JAX runs on its CPU backend.

- `keep_freed_memory`: XLA:CPU allocates each execution's temporaries as one large block
  from worker threads, which glibc serves with a fresh `mmap` and returns with `munmap`, so
  every step faults in its temporaries again. Telling glibc to keep freed memory in the
  process lets the block be reused from step to step. It must run before JAX starts its
  backend (the entry points call it first thing); `DITM_KEEP_FREED_MEMORY=0` skips it.
- `Dense`: `nn.Dense` whose weight gradient x^T g runs as a plain row-major matmul (the
  narrower operand transposed into a copy first), which XLA:CPU runs faster than autodiff's
  form when the two widths differ. Values and the other gradients are unchanged; only the
  weight gradient's summation order differs. `models.layers.Dense` picks it on CPU only.

Measurements: `python -m ditm_jax.bench` (ditm_jax/bench/README.md).
"""

import ctypes
import functools
import os
import sys

import flax.linen as nn
import jax
from jax import lax

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory (see the module docstring); True if it did."""
  if os.environ.get("DITM_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  (glibc only)
  except (OSError, AttributeError):
    return False
  # Later threads share the main arena; no request is served by mmap; no trimming (-1 is
  # SIZE_MAX once glibc widens it).
  return bool(libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0)
              and libc.mallopt(_M_TRIM_THRESHOLD, -1))


def weight_gradient(x: jax.Array, g: jax.Array, precision=None) -> jax.Array:
  """x^T g for rows x (N, K) and output gradients g (N, M): the (K, M) weight gradient."""
  rows = (((0,), (0,)), ((), ()))
  k, m = x.shape[1], g.shape[1]
  if jax.default_backend() != "cpu" or k == m:
    return lax.dot_general(x, g, rows, precision=precision)
  barrier = lax.optimization_barrier  # keeps XLA from folding the copy back into the dot
  if m < k:
    return barrier(lax.dot(barrier(g.T), x, precision=precision)).T
  return lax.dot(barrier(x.T), g, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _apply(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
  return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _apply_fwd(x, kernel, precision):
  # symbolic_zeros: each primal says whether it is differentiated, so the input gradient
  # (of the regions, say) is neither computed nor counted by `flops.matmul_flops`.
  x_grad = x.perturbed
  x, kernel = x.value, kernel.value
  return _apply(x, kernel, precision), (x, kernel, x_grad)


def _apply_bwd(precision, residual, g):
  x, kernel, x_grad = residual
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return None, None
  dx = None
  if x_grad:
    dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())),
                         precision=precision).astype(x.dtype)
  dw = weight_gradient(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]), precision)
  return dx, dw.astype(kernel.dtype)


_apply.defvjp(_apply_fwd, _apply_bwd, symbolic_zeros=True)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general`, with `weight_gradient`'s backward pass for a dense layer's product."""
  (lhs_contract, rhs_contract), batch = dimension_numbers
  if (rhs.ndim != 2 or preferred_element_type is not None or lhs.dtype != rhs.dtype
      or tuple(lhs_contract) != (lhs.ndim - 1,) or tuple(rhs_contract) != (0,)
      or any(map(len, batch))):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  return _apply(lhs, rhs, precision)


Dense = functools.partial(nn.Dense, dot_general=dot_general)
