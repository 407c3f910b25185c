"""`Dense`: nn.Dense whose weight gradient XLA:CPU runs as a plain row-major matmul (see the
package docstring)."""

import functools

import flax.linen as nn
import jax
from jax import lax


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
