"""ViT image backbone in Flax that imports Hugging Face checkpoints.

`ViTModel(config).apply({'params': params}, images)` takes normalised float images (B, H, W, C),
NHWC, with H = W = `config.image_size`, and returns transformers' PyTorch
`ViTModel(...).last_hidden_state`: (B, 1 + num_patches, hidden), the CLS token first, after the
final LayerNorm. `preprocess_images` makes such inputs from uint8 RGB images: bilinear resize to
`image_size`, `x * rescale_factor` (1/255), then `(x - image_mean) / image_std`, with mean and std
from the checkpoint's `preprocessor_config.json`, or 0.5 / 0.5 when it has none.
"""
import dataclasses
import os
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ditm_jax import hub
from ditm_jax.models import hf_import
from ditm_jax.models import transformer

# transformers >= 5 names layers in memory like this; checkpoints on disk use the older names.
_RENAMES = (
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
)


def _square(value, name: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise hub.CheckpointError(f"Only square {name} is supported, config.json has {value}.")
    value = value[0]
  return int(value)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """ViT hyper-parameters as in a Hugging Face `config.json` (defaults: ViT-B/16 at 224), plus
  the normalisation of its `preprocessor_config.json`."""
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  layer_norm_eps: float = 1e-12
  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  qkv_bias: bool = True
  initializer_range: float = 0.02
  rescale_factor: float = 1 / 255  # uint8 -> [0, 1].
  image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}.")
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size "
                       f"{self.patch_size}.")
    transformer.activation(self.hidden_act)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size)**2

  @classmethod
  def from_dict(cls, config: dict[str, Any],
                preprocessor: dict[str, Any] | None = None) -> "ViTConfig":
    """From `config.json` and, if given, `preprocessor_config.json` contents."""
    if config.get("model_type", "vit") != "vit":
      raise hub.CheckpointError(
          f"config.json has model_type '{config['model_type']}'; this module reads ViT only.")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in config.items() if k in fields}
    for key in ("image_size", "patch_size"):
      if key in kwargs:
        kwargs[key] = _square(kwargs[key], key)
    if preprocessor:
      if not preprocessor.get("do_rescale", True):
        kwargs["rescale_factor"] = 1.0
      elif "rescale_factor" in preprocessor:
        kwargs["rescale_factor"] = float(preprocessor["rescale_factor"])
      if not preprocessor.get("do_normalize", True):
        kwargs["image_mean"], kwargs["image_std"] = (0.0,), (1.0,)
      else:
        for key in ("image_mean", "image_std"):
          if key in preprocessor:
            kwargs[key] = tuple(float(v) for v in np.atleast_1d(preprocessor[key]))
    return cls(**kwargs)


class ViTModel(nn.Module):
  """Vision Transformer: patch embedding, CLS token, pre-LN encoder, final LayerNorm.

  Attributes:
    config: the architecture.
    dtype: compute dtype (float32 matches PyTorch; bfloat16 for speed). Softmax is float32.
    param_dtype: parameter dtype, float32 by default.
  """
  config: ViTConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
    """Encodes normalised images (B, H, W, C) into (B, 1 + num_patches, hidden) tokens."""
    cfg = self.config
    want = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if tuple(images.shape[1:]) != want:
      raise ValueError(f"Images of shape {images.shape[1:]} given, the model takes {want} (NHWC); "
                       "resize with preprocess_images.")
    init = nn.initializers.normal(cfg.initializer_range)
    x = nn.Conv(cfg.hidden_size, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2,
                padding="VALID", kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype,
                name="patch_embed")(images.astype(self.dtype))
    x = x.reshape(x.shape[0], -1, cfg.hidden_size)  # Patches in row-major order.
    cls_token = self.param("cls_token", init, (1, 1, cfg.hidden_size), self.param_dtype)
    positions = self.param("position_embeddings", init, (1, cfg.num_patches + 1, cfg.hidden_size),
                           self.param_dtype)
    cls_token = jnp.broadcast_to(cls_token.astype(self.dtype), (x.shape[0], 1, cfg.hidden_size))
    x = jnp.concatenate([cls_token, x], axis=1) + positions.astype(self.dtype)
    x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
    for i in range(cfg.num_hidden_layers):
      x = transformer.EncoderLayer(
          num_heads=cfg.num_attention_heads, mlp_dim=cfg.intermediate_size,
          activation=cfg.hidden_act, pre_norm=True, layer_norm_eps=cfg.layer_norm_eps,
          qkv_bias=cfg.qkv_bias, dropout_rate=cfg.hidden_dropout_prob,
          attention_dropout_rate=cfg.attention_probs_dropout_prob, kernel_init=init,
          dtype=self.dtype, param_dtype=self.param_dtype, name=f"layer_{i}")(
              x, None, deterministic)
    return transformer.layer_norm(cfg.layer_norm_eps, self.dtype, self.param_dtype,
                                  "final_norm")(x)


def _hf_names(config: ViTConfig) -> dict[str, Any]:
  """Flax parameter tree -> (PyTorch name without 'vit.', transform)."""
  names = {
      "patch_embed": {
          "kernel": ("embeddings.patch_embeddings.projection.weight", hf_import.CONV),
          "bias": ("embeddings.patch_embeddings.projection.bias", hf_import.SAME)},
      "cls_token": ("embeddings.cls_token", hf_import.SAME),
      "position_embeddings": ("embeddings.position_embeddings", hf_import.SAME),
      "final_norm": hf_import.layer_norm("layernorm"),
  }
  for i in range(config.num_hidden_layers):
    hf = f"encoder.layer.{i}"
    attention = {
        "query": hf_import.linear(f"{hf}.attention.attention.query"),
        "key": hf_import.linear(f"{hf}.attention.attention.key"),
        "value": hf_import.linear(f"{hf}.attention.attention.value"),
        "out": hf_import.linear(f"{hf}.attention.output.dense"),
    }
    if not config.qkv_bias:
      for proj in ("query", "key", "value"):
        del attention[proj]["bias"]
    names[f"layer_{i}"] = {
        "attention_norm": hf_import.layer_norm(f"{hf}.layernorm_before"),
        "attention": attention,
        "mlp_norm": hf_import.layer_norm(f"{hf}.layernorm_after"),
        "mlp": {"fc1": hf_import.linear(f"{hf}.intermediate.dense"),
                "fc2": hf_import.linear(f"{hf}.output.dense")},
    }
  return names


def _dummy_images(config: ViTConfig) -> jax.Array:
  return jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)


def convert_params(state_dict: dict[str, np.ndarray], config: ViTConfig
                   ) -> tuple[dict[str, Any], hf_import.ImportReport]:
  """PyTorch-named tensors (with or without 'vit.') -> (float32 Flax params, import report).

  Reads the on-disk names (`encoder.layer.N.attention.attention.query`, ...) and the in-memory
  names of transformers >= 5 (`layers.N.attention.q_proj`, `mlp.fc1`, ...).

  Raises:
    hub.CheckpointError: naming every missing or mis-shaped weight.
  """
  module = ViTModel(config)
  expected = jax.eval_shape(module.init, jax.random.key(0), _dummy_images(config))["params"]
  return hf_import.convert_state_dict(state_dict, _hf_names(config), expected, prefix="vit",
                                      renames=_RENAMES)


def init_params(config: ViTConfig, rng: jax.Array, dtype: Any = jnp.float32
                ) -> tuple[ViTModel, dict[str, Any]]:
  """A randomly initialised (module, float32 params), weights ~ N(0, initializer_range)."""
  module = ViTModel(config, dtype=dtype)
  return module, jax.jit(module.init)(rng, _dummy_images(config))["params"]


def load_config(directory: str | os.PathLike) -> ViTConfig:
  """The ViTConfig of a checkpoint directory (config.json + optional preprocessor_config.json)."""
  directory = pathlib.Path(directory)
  return ViTConfig.from_dict(hub.read_json(directory, "config.json"),
                             hub.read_json(directory, "preprocessor_config.json", False))


def load_pretrained(path_or_name: str | os.PathLike, dtype: Any = jnp.float32
                    ) -> tuple[ViTModel, dict[str, Any]]:
  """Loads a Hugging Face ViT checkpoint as (module computing in `dtype`, float32 params).

  `module.config` carries the checkpoint's image normalisation for `preprocess_images`.

  Raises:
    hub.CheckpointError: the checkpoint cannot be found or a needed weight is missing.
  """
  directory = hub.resolve_checkpoint_dir(path_or_name)
  config = load_config(directory)
  params, report = convert_params(hf_import.read_state_dict(directory), config)
  hf_import.log_report(directory, report)
  return ViTModel(config, dtype=dtype), params


def normalize_pixels(pixels: jax.Array | np.ndarray, config: ViTConfig) -> jax.Array:
  """Raw RGB values in [0, 255] (uint8 or float, channels last) -> float32 model input.

  Computes `(x * rescale_factor - image_mean) / image_std` with the checkpoint's values.
  """
  mean = jnp.asarray(config.image_mean, jnp.float32)
  std = jnp.asarray(config.image_std, jnp.float32)
  return (jnp.asarray(pixels).astype(jnp.float32) * config.rescale_factor - mean) / std


def preprocess_images(images: np.ndarray | Sequence[np.ndarray], config: ViTConfig) -> jax.Array:
  """uint8 RGB images -> normalised float32 model input (B, S, S, C), S = config.image_size.

  Each image (H, W, C) or (H, W) (grey, repeated to C channels) is resized with bilinear
  interpolation (`jax.image.resize`, half-pixel centres, antialiased when shrinking, like PIL's
  bilinear resize that Hugging Face's ViTImageProcessor uses, without its rounding to uint8),
  then normalised by `normalize_pixels`.
  """
  size, channels = config.image_size, config.num_channels
  out = []
  for image in images:
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, channels):
      raise ValueError(f"Expected images (H, W, {channels}) or (H, W), got shape {image.shape}.")
    image = np.broadcast_to(image, image.shape[:2] + (channels,))
    resized = jax.image.resize(jnp.asarray(image, jnp.float32), (size, size, channels),
                               method="bilinear", antialias=True)
    out.append(normalize_pixels(resized, config))
  return jnp.stack(out)
