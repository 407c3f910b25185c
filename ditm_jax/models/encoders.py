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
from ditm_jax.models import packing as packing_lib
from ditm_jax.models import vit as vit_lib
from ditm_jax.models.gpo import GPO


def l2_normalize(x, eps=1e-8):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class RegionEncoder(nn.Module):
  """Precomputed regions (B, R, F): linear F->D plus a two-layer MLP residual, GPO.

  `region_capacity` > 0 runs the linear and MLP on the kept regions only (training drops
  `data.region_drop` of them), packed into that fraction of the B x R positions; a batch with
  more regions (evaluation keeps all) takes the padded path, so only speed depends on it.
  `pack`: None decides per batch on device (`nn.cond`); True packs (the caller has checked
  that the batch fits, as `model.select_packing` does); False never packs.
  """
  inputs: ClassVar[tuple[str, ...]] = ("regions", "region_mask")
  embed_dim: int
  mlp_hidden: int
  region_capacity: float = 0.0
  pack: bool | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, regions, mask):
    def project(mdl, regions, packing):
      x = regions.astype(self.dtype)
      x = x if packing is None else packing.pack(x)
      linear = layers.Dense(self.embed_dim, dtype=self.dtype, name="fc", parent=mdl)(x)
      h = nn.relu(layers.Dense(self.mlp_hidden, dtype=self.dtype, name="mlp_in", parent=mdl)(x))
      h = layers.Dense(self.embed_dim, dtype=self.dtype, name="mlp_out", parent=mdl)(h)
      return linear + h if packing is None else packing.unpack(linear + h, *mask.shape)
    x = packing_lib.packed_or_padded(self, project, mask, self.region_capacity, regions,
                                      pack=self.pack)
    return l2_normalize(GPO(dtype=self.dtype, name="gpo")(x, mask))

  def packed_masks(self) -> dict[str, float]:
    """{batch entry: fraction} of the mask this tower packs (`model.select_packing`)."""
    return {"region_mask": self.region_capacity}


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
  the BERT output, so a frozen BERT costs no backward pass.

  `token_capacity` > 0 runs BERT on the packed valid tokens only (`packing.Packing`): a
  buffer of that fraction of the B x L positions. A batch with more valid tokens than fit
  takes the padded path instead (`nn.cond`), so the result never depends on the capacity,
  only the speed does. 0 keeps the padded path alone. `pack`: None decides per batch on
  device (`nn.cond`); True packs (the caller has checked that the batch fits, as
  `model.select_packing` does); False never packs.
  """
  inputs: ClassVar[tuple[str, ...]] = ("tokens", "token_mask")
  backbone: ClassVar[str] = "bert"
  bert_config: bert_lib.BertConfig
  embed_dim: int
  freeze_backbone: bool = False
  token_capacity: float = 0.0
  pack: bool | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, mask):
    def encode(mdl, tokens, mask, packing):
      bert = bert_lib.BertModel(self.bert_config, dtype=self.dtype, name=self.backbone,
                                parent=mdl)
      h = bert(tokens, mask, packing=packing, unpack=False)  # packed: (C, hidden) rows
      if self.freeze_backbone:
        h = jax.lax.stop_gradient(h)
      # The projection is row-wise too, so it runs on the packed rows; padded, on (B*L, hidden)
      # rows (2-D: plain matmuls for the weight gradient, see transformer.Mlp).
      x = layers.Dense(self.embed_dim, dtype=self.dtype, name="fc", parent=mdl)(
          h.reshape(-1, h.shape[-1]))
      return x.reshape(*mask.shape, -1) if packing is None else packing.unpack(x, *mask.shape)
    x = packing_lib.packed_or_padded(self, encode, mask, self.token_capacity, tokens, mask,
                                      pack=self.pack)
    return l2_normalize(GPO(dtype=self.dtype, name="gpo")(x, mask))

  def packed_masks(self) -> dict[str, float]:
    """{batch entry: fraction} of the mask this tower packs (`model.select_packing`)."""
    return {"token_mask": self.token_capacity}


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
