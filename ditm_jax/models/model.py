"""The dual encoder: an image tower and a text tower chosen by config.

Towers: `config.model.image = 'regions' | 'vit'`, `config.model.text = 'bigru' | 'bert'`;
with a packing capacity above 0 the regions and BERT towers are their packed form
(`packed.py`, same parameters and values). Pretrained backbones
enter after the random initialisation: `pretrained_params(config)` loads them on the host and
`merge_pretrained(params, pretrained)` copies them into the initialised parameters, keeping
their shardings; a restored checkpoint is used as it is.
"""

import dataclasses
from typing import Any, Mapping

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ditm_jax import hub
from ditm_jax.models import bert as bert_lib
from ditm_jax.models import encoders
from ditm_jax.models import packed
from ditm_jax.models import vit as vit_lib

# Optimizer group -> parameter path of a pretrained backbone.
BACKBONES = {
    "text_backbone": ("text_tower", encoders.BertTextEncoder.backbone),
    "image_backbone": ("image_tower", encoders.ViTImageEncoder.backbone),
}

Path = tuple[str, ...]


class DualEncoder(nn.Module):
  """Holds both towers and the (log) temperature of the soft-target loss."""
  image_tower: nn.Module
  text_tower: nn.Module
  init_temperature: float = 0.05

  def setup(self):
    self.log_temperature = self.param(
        "log_temperature", lambda _: jnp.log(jnp.float32(self.init_temperature)))

  def __call__(self, batch):
    return self.embed_images(batch), self.embed_texts(batch), self.log_temperature

  def embed_images(self, batch):
    return self.image_tower(*_inputs(self.image_tower, batch))

  def embed_texts(self, batch):
    return self.text_tower(*_inputs(self.text_tower, batch))


def _inputs(tower, batch):
  missing = [k for k in tower.inputs if k not in batch]
  if missing:
    raise ValueError(f"{type(tower).__name__} reads batch entries {list(tower.inputs)}, the "
                     f"batch has {sorted(batch)}; the data and config.model do not match")
  return [batch[k] for k in tower.inputs]


def image_inputs(config) -> tuple[str, ...]:
  """The batch entries the image tower reads: ('regions', 'region_mask') or ('pixels',)."""
  return _image_tower_class(config.model.image).inputs


def _image_tower_class(name):
  towers = {"regions": encoders.RegionEncoder, "vit": encoders.ViTImageEncoder}
  if name not in towers:
    raise ValueError(f"config.model.image={name!r} is not known; use one of {sorted(towers)}")
  return towers[name]


def _checkpoint_path(config, field: str, tower: str) -> str:
  path = config.model[field]
  if not path:
    raise ValueError(
        f"config.model.{tower} needs config.model.{field}: a checkpoint directory "
        "(config.json + model.safetensors) or a Hugging Face hub name, e.g. "
        f"--config.model.{field}=bert-base-uncased")
  return path


def bert_config(config) -> bert_lib.BertConfig:
  """The architecture of the checkpoint at `config.model.bert_path` (reads config.json only)."""
  directory = hub.resolve_checkpoint_dir(_checkpoint_path(config, "bert_path", "text"))
  cfg = bert_lib.BertConfig.from_dict(hub.read_json(directory, "config.json"))
  if config.data.max_tokens > cfg.max_position_embeddings:
    raise ValueError(
        f"config.data.max_tokens={config.data.max_tokens} exceeds the "
        f"{cfg.max_position_embeddings} positions of the BERT checkpoint in {directory}; "
        f"set --config.data.max_tokens={cfg.max_position_embeddings} or less")
  return cfg


def vit_config(config) -> vit_lib.ViTConfig:
  """The architecture and pixel normalisation of the checkpoint at `config.model.vit_path`."""
  directory = hub.resolve_checkpoint_dir(_checkpoint_path(config, "vit_path", "image"))
  cfg = vit_lib.load_config(directory)
  size = config.data.image_size
  if size != cfg.image_size:
    raise ValueError(
        f"config.data.image_size={size} differs from the image_size {cfg.image_size} of the ViT "
        f"checkpoint in {directory}; set --config.data.image_size={cfg.image_size}")
  return cfg


def build(config, vocab_size: int, dtype: Any = jnp.float32) -> DualEncoder:
  """The model described by `config.model` (towers chosen by name), computing in `dtype`."""
  m = config.model
  if _image_tower_class(m.image) is encoders.RegionEncoder:
    image = encoders.RegionEncoder(embed_dim=m.embed_dim, mlp_hidden=m.mlp_hidden, dtype=dtype)
    if m.region_capacity > 0:
      image = packed.PackedRegionEncoder(**_fields(image), capacity=m.region_capacity)
  else:
    image = encoders.ViTImageEncoder(vit_config(config), embed_dim=m.embed_dim,
                                     freeze_backbone=m.freeze_image_backbone, dtype=dtype)
  if m.text == "bigru":
    text = encoders.BiGRUTextEncoder(vocab_size=vocab_size, embed_dim=m.embed_dim,
                                     word_dim=m.word_dim, dtype=dtype)
  elif m.text == "bert":
    text = encoders.BertTextEncoder(bert_config(config), embed_dim=m.embed_dim,
                                    freeze_backbone=m.freeze_text_backbone, dtype=dtype)
    if m.text_token_capacity > 0:
      text = packed.PackedBertTextEncoder(**_fields(text), capacity=m.text_token_capacity)
  else:
    raise ValueError(f"config.model.text={m.text!r} is not known; use 'bigru' or 'bert'")
  return DualEncoder(image_tower=image, text_tower=text,
                     init_temperature=config.loss.temperature)


def _fields(tower: nn.Module) -> dict[str, Any]:
  """The dataclass fields of an unbound tower (to build its packed form with the same)."""
  return {f.name: getattr(tower, f.name) for f in dataclasses.fields(tower)
          if f.name not in ("parent", "name")}


def backbone_group(path: Path) -> str | None:
  """'text_backbone' / 'image_backbone' for a parameter path inside a pretrained backbone."""
  for group, prefix in BACKBONES.items():
    if tuple(path[:len(prefix)]) == prefix:
      return group
  return None


def pretrained_params(config) -> dict[Path, Any]:
  """Host (NumPy, float32) parameters of the configured pretrained backbones, by path.

  `{('text_tower', 'bert'): ...}` when `model.text == 'bert'`, `{('image_tower', 'vit'): ...}`
  when `model.image == 'vit'`; empty for towers trained from scratch.
  """
  out = {}
  if config.model.text == "bert":
    _, out[BACKBONES["text_backbone"]] = bert_lib.load_pretrained(
        _checkpoint_path(config, "bert_path", "text"))
  if config.model.image == "vit":
    _, out[BACKBONES["image_backbone"]] = vit_lib.load_pretrained(
        _checkpoint_path(config, "vit_path", "image"))
  return out


def merge_pretrained(params: Mapping[str, Any], pretrained: Mapping[Path, Any]) -> dict:
  """`params` with the subtree at each path of `pretrained` replaced by its values.

  Each new leaf takes the dtype and sharding of the leaf it replaces (built shard by shard with
  `jax.make_array_from_callback`, so it works for any sharding and for several processes, each
  holding the same host values). Leaves outside those paths are returned as they are.

  Raises:
    ValueError: a path is missing, or the pretrained tree has other names or shapes.
  """
  flat = traverse_util.flatten_dict(dict(params))
  for prefix, subtree in pretrained.items():
    prefix = tuple(prefix)
    have = {k[len(prefix):]: v for k, v in flat.items() if k[:len(prefix)] == prefix}
    new = traverse_util.flatten_dict(dict(subtree))
    if not have:
      raise ValueError(f"No parameters at {'/'.join(prefix)} to load the pretrained weights into.")
    if set(have) != set(new):
      diff = sorted("/".join(k) for k in set(have) ^ set(new))
      raise ValueError(f"Pretrained weights for {'/'.join(prefix)} do not match the model's "
                       f"parameter names: {diff[:10]}")
    for key, old in have.items():
      value = np.asarray(new[key], dtype=old.dtype)
      if value.shape != old.shape:
        raise ValueError(f"Pretrained weight {'/'.join(prefix + key)} has shape {value.shape}, "
                         f"the model {old.shape}.")
      flat[prefix + key] = _like(value, old)
  return traverse_util.unflatten_dict(flat)


def _like(value: np.ndarray, old: Any) -> Any:
  """`value` as a global array with the sharding of `old` (a NumPy array if `old` is one)."""
  sharding = getattr(old, "sharding", None)
  if sharding is None:
    return value
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
