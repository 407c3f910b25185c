"""Transformer encoder layer shared by BERT (post-LN) and ViT (pre-LN).

Computes what transformers' PyTorch layers compute, in float32 to their precision: attention
logits and softmax always in float32, other arithmetic in `dtype` (e.g. bfloat16), parameters in
`param_dtype`. Dropout draws from the 'dropout' RNG stream when `deterministic=False`.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ditm_jax.models import layers
from ditm_jax.models import packing as packing_lib

Dtype = Any

def _gelu(x: jax.Array) -> jax.Array:
  """Exact GELU as PyTorch computes it, x/2 (1 + erf(x/sqrt(2))).

  `jax.nn.gelu(approximate=False)` uses the erfc form, more accurate where x << 0 (values below
  1e-6 in magnitude; the two differ by at most 1e-6) and slower on XLA:CPU.
  """
  return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu,  # Exact (erf) GELU.
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation a Hugging Face config names by `hidden_act`."""
  if name not in _ACTIVATIONS:
    raise ValueError(f"hidden_act '{name}' is not supported; use one of {sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


class SelfAttention(nn.Module):
  """Multi-head self-attention; `mask` (B, L) marks the keys that may be attended to."""
  num_heads: int
  qkv_bias: bool = True
  dropout_rate: float = 0.0
  kernel_init: Callable[..., jax.Array] = nn.initializers.normal(0.02)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool,
               packing: packing_lib.Packing | None = None) -> jax.Array:
    """x: (B, L, F), or packed rows (C, F) of `mask`'s tokens when `packing` is given."""
    if packing is None:
      batch, length, features = x.shape
      split = lambda y: y.reshape(batch, length, self.num_heads, head_dim)
    else:  # Projections on the packed rows; the scores per sequence, padded.
      (batch, length), features = mask.shape, x.shape[-1]
      split = lambda y: packing.unpack(y, batch, length).reshape(
          batch, length, self.num_heads, head_dim)
    head_dim = features // self.num_heads
    dense = functools.partial(layers.Dense, features, kernel_init=self.kernel_init,
                              dtype=self.dtype, param_dtype=self.param_dtype)
    q = split(dense(use_bias=self.qkv_bias, name="query")(x))
    k = split(dense(use_bias=self.qkv_bias, name="key")(x))
    v = split(dense(use_bias=self.qkv_bias, name="value")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * head_dim**-0.5
    if mask is not None:  # Padded keys get zero weight (transformers adds finfo.min likewise).
      logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, features)
    return dense(name="out")(out if packing is None else packing.pack(out))


class Mlp(nn.Module):
  """Dense -> activation -> Dense."""
  hidden_features: int
  activation: str = "gelu"
  kernel_init: Callable[..., jax.Array] = nn.initializers.normal(0.02)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(layers.Dense, kernel_init=self.kernel_init, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    # (B*L, F) rows: with a 2-D operand XLA:CPU runs the weight gradients as plain matmuls,
    # where 3-D operands are first transposed into copies.
    flat = x.reshape(-1, x.shape[-1])
    h = activation(self.activation)(dense(self.hidden_features, name="fc1")(flat))
    return dense(x.shape[-1], name="fc2")(h).reshape(x.shape)


class EncoderLayer(nn.Module):
  """Attention and MLP blocks with residuals; `pre_norm` picks ViT (True) or BERT (False) order.

  Post-LN (BERT): x = LN(x + attn(x)); x = LN(x + mlp(x)).
  Pre-LN (ViT):   x = x + attn(LN(x)); x = x + mlp(LN(x)).
  """
  num_heads: int
  mlp_dim: int
  activation: str = "gelu"
  pre_norm: bool = False
  layer_norm_eps: float = 1e-12
  qkv_bias: bool = True
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  kernel_init: Callable[..., jax.Array] = nn.initializers.normal(0.02)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool,
               packing: packing_lib.Packing | None = None) -> jax.Array:
    """x: (B, L, F), or the packed rows (C, F) of `mask`'s tokens (see `Packing`)."""
    norm = functools.partial(layer_norm, self.layer_norm_eps, self.dtype, self.param_dtype)
    dropout = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    attention = SelfAttention(self.num_heads, self.qkv_bias, self.attention_dropout_rate,
                              self.kernel_init, self.dtype, self.param_dtype, name="attention")
    mlp = Mlp(self.mlp_dim, self.activation, self.kernel_init, self.dtype, self.param_dtype,
              name="mlp")
    if self.pre_norm:
      x = x + dropout(attention(norm("attention_norm")(x), mask, deterministic, packing))
      return x + dropout(mlp(norm("mlp_norm")(x)))
    x = norm("attention_norm")(x + dropout(attention(x, mask, deterministic, packing)))
    return norm("mlp_norm")(x + dropout(mlp(x)))


def layer_norm(epsilon: float, dtype: Dtype, param_dtype: Dtype,
               name: str | None = None) -> nn.LayerNorm:
  """LayerNorm as PyTorch computes it (two-pass variance, statistics in at least float32)."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, name=name)
