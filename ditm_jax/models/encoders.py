"""Image and text towers. Each maps its inputs to L2-normalised float32 (B, D) embeddings.

Every tower computes in `dtype` (float32, or bfloat16 for mixed precision) with float32
parameters, and names the batch entries it reads in `inputs`. Towers with a pretrained
backbone keep it in the submodule named by `backbone`, so its parameters live at
`params[<tower>][<backbone>]` and can be replaced by an imported checkpoint.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ditm_jax.models import bert as bert_lib
from ditm_jax.models import layers
from ditm_jax.models import vit as vit_lib
from ditm_jax.models.gpo import GPO


def l2_normalize(x, eps=1e-8):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class RegionEncoder(nn.Module):
  """Precomputed regions (B, R, F): linear F->D plus a two-layer MLP residual, GPO.

  `packing.PackedRegionEncoder` runs the same layers on the kept regions only (opt-in).
  """
  inputs: ClassVar[tuple[str, ...]] = ("regions", "region_mask")
  embed_dim: int
  mlp_hidden: int
  dtype: Any = jnp.float32

  def project(self, mdl: nn.Module, x: jax.Array) -> jax.Array:
    """The row-wise layers (parameters under `mdl`): rows (..., F) -> (..., D)."""
    x = x.astype(self.dtype)
    linear = layers.Dense(self.embed_dim, dtype=self.dtype, name="fc", parent=mdl)(x)
    h = nn.relu(layers.Dense(self.mlp_hidden, dtype=self.dtype, name="mlp_in", parent=mdl)(x))
    return linear + layers.Dense(self.embed_dim, dtype=self.dtype, name="mlp_out", parent=mdl)(h)

  def pool(self, mdl: nn.Module, x: jax.Array, mask: jax.Array) -> jax.Array:
    return l2_normalize(GPO(dtype=self.dtype, name="gpo", parent=mdl)(x, mask))

  @nn.compact
  def __call__(self, regions, mask):
    return self.pool(self, self.project(self, regions), mask)


class BiGRUTextEncoder(nn.Module):
  """Word embeddings -> bidirectional GRU (directions averaged) -> GPO over valid tokens.

  In bfloat16 the GRU's matmuls run in bfloat16 while its carry stays float32.
  """
  inputs: ClassVar[tuple[str, ...]] = ("tokens", "token_mask")
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
    return l2_normalize(GPO(dtype=self.dtype, name="gpo")(h, mask))


class BertTextEncoder(nn.Module):
  """WordPiece ids (B, L) -> BERT -> linear hidden->D -> GPO over valid tokens -> L2 norm.

  The valid tokens are those of `mask` (B, L), i.e. [CLS], the WordPieces and [SEP], as in
  VSE-infinity. Dropout is off (deterministic BERT). `freeze_backbone` stops the gradient at
  the BERT output, so a frozen BERT costs no backward pass. `packing.PackedBertTextEncoder`
  runs BERT on the valid tokens only (opt-in).
  """
  inputs: ClassVar[tuple[str, ...]] = ("tokens", "token_mask")
  backbone: ClassVar[str] = "bert"
  bert_config: bert_lib.BertConfig
  embed_dim: int
  freeze_backbone: bool = False
  dtype: Any = jnp.float32

  def encode(self, mdl: nn.Module, tokens: jax.Array, mask: jax.Array, packing=None) -> jax.Array:
    """BERT and the projection (parameters under `mdl`): (B, L) ids -> (B, L, D) features.

    `packing` (a `packing.Packing` of `mask`) runs both on the valid tokens only.
    """
    bert = bert_lib.BertModel(self.bert_config, dtype=self.dtype, name=self.backbone,
                              parent=mdl)
    h = bert(tokens, mask, packing=packing, unpack=False)  # packed: (C, hidden) rows
    if self.freeze_backbone:
      h = jax.lax.stop_gradient(h)
    # Row-wise, on 2-D rows (plain matmuls for the weight gradient, see transformer.Mlp).
    x = layers.Dense(self.embed_dim, dtype=self.dtype, name="fc", parent=mdl)(
        h.reshape(-1, h.shape[-1]))
    return x.reshape(*mask.shape, -1) if packing is None else packing.unpack(x, *mask.shape)

  def pool(self, mdl: nn.Module, x: jax.Array, mask: jax.Array) -> jax.Array:
    return l2_normalize(GPO(dtype=self.dtype, name="gpo", parent=mdl)(x, mask))

  @nn.compact
  def __call__(self, tokens, mask):
    return self.pool(self, self.encode(self, tokens, mask), mask)


class ViTImageEncoder(nn.Module):
  """Pixels (B, S, S, 3) -> ViT -> linear hidden->D -> GPO over patch tokens -> L2 norm.

  `pixels` are raw RGB values in [0, 255] (uint8, or float), already resized to the
  checkpoint's `image_size` S; the tower rescales and normalises them with the checkpoint's
  own mean and std (`vit.normalize_pixels`). The CLS token is left out of the pooling: GPO
  pools the set of patch tokens, as it pools regions. `freeze_backbone` stops the gradient at
  the ViT output.
  """
  inputs: ClassVar[tuple[str, ...]] = ("pixels",)
  backbone: ClassVar[str] = "vit"
  vit_config: vit_lib.ViTConfig
  embed_dim: int
  freeze_backbone: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    images = vit_lib.normalize_pixels(pixels, self.vit_config)
    h = vit_lib.ViTModel(self.vit_config, dtype=self.dtype, name=self.backbone)(images)
    if self.freeze_backbone:
      h = jax.lax.stop_gradient(h)
    patches = layers.Dense(self.embed_dim, dtype=self.dtype, name="fc")(h[:, 1:])
    mask = jnp.ones(patches.shape[:2], bool)
    return l2_normalize(GPO(dtype=self.dtype, name="gpo")(patches, mask))
